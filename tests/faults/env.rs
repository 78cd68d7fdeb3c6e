//! The fault suite's own RabbitMQ node and Redis server, so that stopping a broker or wiping a
//! Redis disturbs nothing but this suite: a node named `faults-<pid>-<n>@localhost` with its own
//! AMQP and distribution ports, config, plugins file, Mnesia, logs and Erlang cookie (its `HOME`
//! is the temp dir), and a `redis-server` on its own port without persistence. Both run as
//! children of the test process and can be stopped and started again on the same ports and
//! data directory, which is what a restart fault needs.
//!
//! Teardown is a guard: [`Isolated`]'s `Drop` stops both (also when a test panics; the temp dir is
//! then kept for its logs). A watchdog shell process kills whatever is left — the node, Redis and
//! any role registered with [`Isolated::register_pid`] — if the test process itself dies without
//! unwinding (SIGKILL, Ctrl-C).
//!
//! The node does not use `rabbitmqctl`: the Debian wrapper in `/usr/sbin` switches to the
//! `rabbitmq` user, and a CLI started with the server's `RABBITMQ_*` environment competes for its
//! listener port. The server script stops the node gracefully on SIGTERM, which is all a restart
//! needs. The shared `epmd` (port 4369) is the one thing the node has in common with others.
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a node may take to boot (a fresh one takes about 6 s here, a restart about 4 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A private RabbitMQ node and Redis server.
pub struct Isolated {
    dir: PathBuf,
    pub amqp_port: u16,
    dist_port: u16,
    pub redis_port: u16,
    node: String,
    rabbit: Mutex<Option<Child>>,
    redis: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
}

/// A port nobody listens on now, never handed out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port")
            .port();
        let mut g = given.lock().unwrap_or_else(|p| p.into_inner());
        if g.insert(port) {
            return port;
        }
    }
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

fn redis_server() -> String {
    program("FAULTS_REDIS_SERVER", &["redis-server"])
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Waits for a child to exit; kills it (and `also`, a pid it left behind) after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration, also: Option<u32>) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                if let Some(pid) = also {
                    signal(pid, "-KILL");
                }
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Isolated {
    /// Starts a node and a Redis on free ports under a new temp dir; blocks until both answer.
    pub fn start() -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("switchboard-faults-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        // Nothing plugged in: no management listener to collide with, and a faster boot.
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq.conf"), "loopback_users.guest = true\n")?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let env = Self {
            amqp_port: free_port(),
            dist_port: free_port(),
            redis_port: free_port(),
            node: format!("faults-{pid}-{n}@localhost"),
            rabbit: Mutex::new(None),
            redis: Mutex::new(None),
            watchdog: Mutex::new(None),
            dir,
        };
        env.start_watchdog()?;
        env.start_redis()?;
        env.start_broker()?;
        Ok(env)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// Kills every pid file's process once the test process is gone, then removes the dir.
    fn start_watchdog(&self) -> anyhow::Result<()> {
        let script = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 1; done; \
             for f in '{dir}'/*.pid; do [ -f \"$f\" ] && kill -9 $(cat \"$f\") 2>/dev/null; done; \
             rm -rf '{dir}'",
            test = std::process::id(),
            dir = self.dir.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// Makes the watchdog kill `pid` if the test process dies (roles started by a test).
    pub fn register_pid(&self, name: &str, pid: u32) {
        let _ = std::fs::write(self.dir.join(format!("{name}.pid")), pid.to_string());
    }

    pub fn unregister_pid(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.pid")));
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs().join(name))?)
    }

    /// Starts the node (again, on the same ports and Mnesia dir) and waits until it takes AMQP.
    pub fn start_broker(&self) -> anyhow::Result<()> {
        let mut slot = self.rabbit.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::ensure!(slot.is_none(), "the node is already running");
        let out = self.log_file("rabbitmq.out")?;
        let d = |p: &str| self.dir.join(p);
        let mut cmd = Command::new(rabbitmq_server());
        // A clean environment: nothing of the machine's RABBITMQ_* or ERL_* settings leaks in.
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.node)
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
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", rabbitmq_server()))?;
        self.register_pid("rabbit-script", child.id());
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while !port_open(self.amqp_port) {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!(
                    "the RabbitMQ node exited during boot ({status}); see {}",
                    self.logs().display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("the RabbitMQ node did not boot within {BOOT_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        *slot = Some(child);
        Ok(())
    }

    /// Stops the node gracefully (SIGTERM to the server script, which stops the VM) and waits
    /// until it is gone.
    pub fn stop_broker(&self) {
        let taken = self.rabbit.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            let beam = std::fs::read_to_string(self.dir.join("rabbit.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            signal(child.id(), "-TERM");
            wait_exit(&mut child, STOP_TIMEOUT, beam);
            // The script waits for the VM, but make sure the listener is gone before returning.
            let deadline = Instant::now() + STOP_TIMEOUT;
            while port_open(self.amqp_port) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.unregister_pid("rabbit-script");
            self.unregister_pid("rabbit");
        }
    }

    /// Kills the node's VM with SIGKILL, as a crash or an OOM kill would, and waits for it.
    pub fn kill_broker(&self) {
        let taken = self.rabbit.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            if let Some(beam) = std::fs::read_to_string(self.dir.join("rabbit.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                signal(beam, "-KILL");
            }
            // The server script only waits for the VM; it ends with it.
            wait_exit(&mut child, STOP_TIMEOUT, None);
            let _ = std::fs::remove_file(self.dir.join("rabbit.pid"));
            self.unregister_pid("rabbit-script");
        }
    }

    /// Starts Redis (again: empty, since nothing is persisted) and waits until it answers PING.
    pub fn start_redis(&self) -> anyhow::Result<()> {
        let mut slot = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::ensure!(slot.is_none(), "redis is already running");
        let port = self.redis_port.to_string();
        let pidfile = self.dir.join("redis.pid");
        let logfile = self.logs().join("redis.log");
        let mut child = Command::new(redis_server())
            .args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--logfile")
            .arg(&logfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", redis_server()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.redis_pong() {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!("redis-server exited at start ({status})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("redis-server did not answer within 20s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *slot = Some(child);
        Ok(())
    }

    fn redis_pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.redis_port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Stops Redis with SIGTERM (no save configured: everything it held is gone).
    pub fn stop_redis(&self) {
        let taken = self.redis.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            signal(child.id(), "-TERM");
            wait_exit(&mut child, STOP_TIMEOUT, None);
            self.unregister_pid("redis");
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        self.stop_broker();
        self.stop_redis();
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = w.kill();
            let _ = w.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "faults: the isolated broker's and Redis' files and the roles' logs are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
