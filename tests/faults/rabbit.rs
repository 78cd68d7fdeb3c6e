//! One private RabbitMQ node of the fault suite, alone or as a member of a private cluster: its
//! own name (`faults-<pid>-<n>-<i>@localhost`), AMQP and distribution ports, config, plugins
//! file, Mnesia, logs and Erlang cookie (its `HOME` is its directory). It runs as a child of the
//! test process and can be stopped gracefully, killed, and started again on the same ports and
//! Mnesia dir.
//!
//! The node is run through the real server script, not `rabbitmqctl` or the Debian wrapper in
//! `/usr/sbin` (which switches to the `rabbitmq` user); the server script stops the node
//! gracefully on SIGTERM. Cluster members find each other by classic-config peer discovery and
//! share one cookie; the CLI is used only to ask a running cluster about itself
//! ([`Node::ctl`]), with a clean environment so that it does not compete for the node's ports.
use crate::env::{free_port, port_open, signal, wait_exit};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a node may take to boot (a fresh one takes about 6 s here, a restart about 4 s; a
/// cluster member waits for its peers too).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

fn program(env_var: &str, candidates: &[&str]) -> String {
    if let Ok(p) = std::env::var(env_var) {
        return p;
    }
    for c in candidates {
        if Path::new(c).exists() {
            return (*c).to_owned();
        }
    }
    candidates.last().copied().unwrap_or_default().to_owned()
}

/// The real server script, not the Debian wrapper that `su`s to the `rabbitmq` user.
fn rabbitmq_server() -> String {
    program(
        "FAULTS_RABBITMQ_SERVER",
        &["/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"],
    )
}

fn rabbitmqctl() -> String {
    program(
        "FAULTS_RABBITMQCTL",
        &["/usr/lib/rabbitmq/bin/rabbitmqctl", "rabbitmqctl"],
    )
}

impl Node {
    /// Prepares (does not start) node `name` under `dir`; `peers` are every member's name when
    /// it is part of a cluster (empty: a node on its own), `cookie` their shared secret.
    pub fn prepare(
        dir: PathBuf,
        name: String,
        peers: &[String],
        cookie: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        // Nothing plugged in: no management listener to collide with, and a faster boot.
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let mut conf = String::from("loopback_users.guest = true\n");
        if !peers.is_empty() {
            conf.push_str("cluster_formation.peer_discovery_backend = classic_config\n");
            for (i, p) in peers.iter().enumerate() {
                conf.push_str(&format!(
                    "cluster_formation.classic_config.nodes.{} = {p}\n",
                    i + 1
                ));
            }
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf)?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let cookie_file = dir.join(".erlang.cookie");
        std::fs::write(&cookie_file, cookie)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie_file, std::fs::Permissions::from_mode(0o400))?;
        Ok(Self {
            name,
            amqp_port: free_port(),
            dist_port: free_port(),
            dir,
            child: Mutex::new(None),
        })
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn beam_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("rabbit.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Starts the node (again, on the same ports and Mnesia dir) without waiting for it;
    /// `pidfile` is where the suite's watchdog finds the script's pid.
    pub fn spawn(&self, pidfile: &Path) -> anyhow::Result<()> {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::ensure!(slot.is_none(), "node {} is already running", self.name);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs().join("rabbitmq.out"))?;
        let d = |p: &str| self.dir.join(p);
        let mut cmd = Command::new(rabbitmq_server());
        // A clean environment: nothing of the machine's RABBITMQ_* or ERL_* settings leaks in.
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.logs())
            .env("RABBITMQ_PID_FILE", d("rabbit.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        if let Ok(lang) = std::env::var("LANG") {
            cmd.env("LANG", lang);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", rabbitmq_server()))?;
        std::fs::write(pidfile, child.id().to_string())?;
        *slot = Some(child);
        Ok(())
    }

    /// Waits until the node takes AMQP connections.
    pub fn wait_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while !port_open(self.amqp_port) {
            {
                let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
                let Some(child) = slot.as_mut() else {
                    anyhow::bail!("node {} is not running", self.name);
                };
                if let Ok(Some(status)) = child.try_wait() {
                    slot.take();
                    anyhow::bail!(
                        "node {} exited during boot ({status}); see {}",
                        self.name,
                        self.logs().display()
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    slot.take();
                    anyhow::bail!("node {} did not boot within {BOOT_TIMEOUT:?}", self.name);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops the node gracefully (SIGTERM to the server script, which stops the VM) and waits
    /// until it is gone.
    pub fn stop(&self) {
        let taken = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            let beam = self.beam_pid();
            signal(child.id(), "-TERM");
            wait_exit(&mut child, STOP_TIMEOUT, beam);
            // The script waits for the VM, but make sure the listener is gone before returning.
            let deadline = Instant::now() + STOP_TIMEOUT;
            while port_open(self.amqp_port) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills the node's VM with SIGKILL, as a crash or an OOM kill would, and waits for it.
    pub fn kill(&self) {
        let taken = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            if let Some(beam) = self.beam_pid() {
                signal(beam, "-KILL");
            }
            // The server script only waits for the VM; it ends with it.
            wait_exit(&mut child, STOP_TIMEOUT, None);
            let _ = std::fs::remove_file(self.dir.join("rabbit.pid"));
        }
    }

    /// `rabbitmqctl -q -n <this node> <args>`: its output, or why not.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("timeout")
            .arg("60")
            .arg(rabbitmqctl())
            .args(["-q", "-n", &self.name])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "LANG",
                std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
            )
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many nodes of its cluster are running, as this node sees it.
    pub fn running_nodes(&self) -> Option<usize> {
        self.ctl(&["eval", "length(rabbit_nodes:all_running())."])
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The node that leads quorum queue `queue` (`rabbitmqctl list_queues name leader`).
    pub fn queue_leader(&self, queue: &str) -> Option<String> {
        let out = self
            .ctl(&["list_queues", "name", "leader", "--formatter", "json"])
            .ok()?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
        rows.iter()
            .find(|r| r["name"] == queue)
            .and_then(|r| r["leader"].as_str())
            .map(str::to_owned)
    }
}
