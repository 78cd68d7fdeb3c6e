//! Private `redis-server` processes of the fault suite: a plain server, a replica, or a Sentinel
//! (`redis-server --sentinel`), each a child of the test process on its own port, without
//! persistence, in the suite's temp dir. A Sentinel rewrites its config file, so each gets a
//! file of its own.
use crate::env::{signal, wait_exit};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn redis_server() -> String {
    std::env::var("FAULTS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// One redis-server process; `args` are passed again on every start.
pub struct RedisServer {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
    /// A config file (Sentinels) or none.
    config: Option<PathBuf>,
    args: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    pub fn new(dir: &Path, name: &str, port: u16, args: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            port,
            dir: dir.to_owned(),
            config: None,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            child: Mutex::new(None),
        }
    }

    /// A Sentinel watching `master_port` as `master_name`, with `quorum` Sentinels needed to
    /// agree that the master is down.
    pub fn sentinel(
        dir: &Path,
        name: &str,
        port: u16,
        master_name: &str,
        master_port: u16,
        quorum: u32,
    ) -> anyhow::Result<Self> {
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\n\
                 sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 10000\n\
                 sentinel parallel-syncs {master_name} 1\n"
            ),
        )?;
        let mut s = Self::new(dir, name, port, &["--sentinel"]);
        s.config = Some(config);
        Ok(s)
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join(format!("{}.pid", self.name))
    }

    /// Starts the server and waits until it answers PING.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::ensure!(slot.is_none(), "{} is already running", self.name);
        let port = self.port.to_string();
        let mut cmd = Command::new(redis_server());
        if let Some(config) = &self.config {
            cmd.arg(config);
        }
        let mut child = cmd
            .args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(self.pidfile())
            .arg("--logfile")
            .arg(self.dir.join("logs").join(format!("{}.log", self.name)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", redis_server()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pong(self.port) {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!("{} exited at start ({status})", self.name);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("{} did not answer within 20s", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *slot = Some(child);
        Ok(())
    }

    /// SIGTERM (no save configured: everything it held is gone) and waits for the exit.
    pub fn stop(&self) {
        self.end("-TERM");
    }

    /// SIGKILL, as a crash would, and waits for the exit.
    pub fn kill(&self) {
        self.end("-KILL");
    }

    fn end(&self, sig: &str) {
        let taken = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            signal(child.id(), sig);
            wait_exit(&mut child, STOP_TIMEOUT, None);
            let _ = std::fs::remove_file(self.pidfile());
        }
    }

    /// One command, answered as text (the first line of the reply, or every bulk string of
    /// an array reply joined by spaces); `None` if the server does not answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(500),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        // Replies here are small; read until a short pause.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&got);
        let words: Vec<&str> = text
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
            .map(|l| l.trim_start_matches([':', '+']))
            .collect();
        Some(words.join(" "))
    }
}

fn pong(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}
