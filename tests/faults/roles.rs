//! Switchboard's roles as real child processes of the `switchboard` binary, the way they are
//! deployed: each with its own broker connection and Redis pool, so a SIGKILL takes down exactly
//! what a crash would. Logs go to a file per role in the isolated dir (kept when a test fails).
//! Worker and dispatcher get an admin port of their own, read for `/readyz` and for the
//! `switchboard_in_flight` gauge (messages taken and not yet settled), which tells the suite
//! when a kill lands mid-call and when a drain is over.
use crate::env::{free_port, Isolated};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// One role process.
pub struct RoleProc {
    pub role: &'static str,
    /// `role-N`: its pid file and log file name.
    pub name: String,
    child: Child,
    /// The admin listener (worker, dispatcher) or the ingress listener.
    pub port: u16,
    env: Arc<Isolated>,
    http: reqwest::Client,
    alive: bool,
}

impl RoleProc {
    /// Starts `switchboard --config <config> <role>`; the ingress listens where the config says
    /// (`ingress_port`), the others get a fresh admin port.
    pub fn spawn(
        env: &Arc<Isolated>,
        config: &Path,
        role: &'static str,
        name: String,
        ingress_port: u16,
    ) -> Self {
        let port = if role == "ingress" {
            ingress_port
        } else {
            free_port()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.logs().join(format!("{name}.log")))
            .expect("role log file");
        let admin = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(config)
            .arg(role)
            // The ingress's admin listener (metrics) is not read here: any free port.
            .env("SWITCHBOARD_INGRESS__ADMIN_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_WORKER__ADMIN_LISTEN", &admin)
            .env("SWITCHBOARD_DISPATCHER__ADMIN_LISTEN", &admin)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn switchboard");
        env.register_pid(&name, child.id());
        Self {
            role,
            name,
            child,
            port,
            env: env.clone(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
            alive: true,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies on the spot, mid-whatever.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.alive = false;
        self.env.unregister_pid(&self.name);
    }

    /// SIGTERM, then waits for the graceful exit (killed after `grace`).
    pub async fn terminate(&mut self, grace: Duration) {
        if !self.alive {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + grace;
        while matches!(self.child.try_wait(), Ok(None)) {
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.wait();
        self.alive = false;
        self.env.unregister_pid(&self.name);
    }

    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// `/readyz` answers 200: the process is up and connected to the broker.
    pub async fn ready(&self) -> bool {
        self.alive
            && self
                .http
                .get(format!("http://127.0.0.1:{}/readyz", self.port))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
    }

    /// A counter of this process summed per value of `label` (e.g. the worker's outcomes);
    /// empty when the process is gone or does not answer.
    pub async fn counter_by(&self, metric: &str, label: &str) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        if !self.alive {
            return out;
        }
        let Some(text) = self.metrics().await else {
            return out;
        };
        let key = format!("{label}=\"");
        for line in text
            .lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
        {
            let Some(value) = line
                .split(&key)
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            else {
                continue;
            };
            let n = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            match out.iter_mut().find(|(k, _)| k == value) {
                Some((_, total)) => *total += n,
                None => out.push((value.to_owned(), n)),
            }
        }
        out.sort();
        out
    }

    async fn metrics(&self) -> Option<String> {
        self.http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Messages this process has taken and not yet settled (`None`: no answer).
    pub async fn in_flight(&self) -> Option<u64> {
        if !self.alive {
            return Some(0);
        }
        let text = self.metrics().await?;
        let wanted = format!("role=\"{}\"", self.role);
        let value = text
            .lines()
            .filter(|l| l.starts_with("switchboard_in_flight{") && l.contains(&wanted))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .next()
            // The gauge appears with the first message; before that nothing is in flight.
            .unwrap_or(0.0);
        Some(value.max(0.0) as u64)
    }
}

impl Drop for RoleProc {
    fn drop(&mut self) {
        if self.alive {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.env.unregister_pid(&self.name);
        }
    }
}
