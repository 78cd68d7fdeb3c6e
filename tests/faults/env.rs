//! The fault suite's own RabbitMQ node(s) and Redis server(s), so that stopping a broker or
//! wiping a Redis disturbs nothing but this suite. The usual shape is one node
//! (`faults-<pid>-<n>-1@localhost`, see `rabbit`) and one `redis-server` (see `redis`); a
//! [`Shape`] can ask for a 3-node RabbitMQ cluster instead, and for Redis Sentinel (a master,
//! one replica and three Sentinels). Everything runs as children of the test process and can be
//! stopped and started again on the same ports and data directory, which is what a restart
//! fault needs.
//!
//! Teardown is a guard: [`Isolated`]'s `Drop` stops everything (also when a test panics; the temp
//! dir is then kept for its logs). A watchdog shell process kills whatever is left — the nodes,
//! the Redis servers and any role registered with [`Isolated::register_pid`] — if the test
//! process itself dies without unwinding (SIGKILL, Ctrl-C). The shared `epmd` (port 4369) is the
//! one thing the nodes have in common with others.
use crate::rabbit::Node;
use crate::redis::RedisServer;
use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What a fault runs on.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// RabbitMQ nodes: 1, or 3 for a cluster.
    pub nodes: usize,
    /// Redis Sentinel (master, replica, three Sentinels) instead of one plain server.
    pub sentinel: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            nodes: 1,
            sentinel: false,
        }
    }
}

/// The name the suite's Sentinels monitor the master under.
pub const MASTER_NAME: &str = "faults";

/// The private RabbitMQ node(s) and Redis server(s) of one fault.
pub struct Isolated {
    dir: PathBuf,
    pub nodes: Vec<Node>,
    /// The plain server, or the first master under Sentinel.
    pub redis: RedisServer,
    /// Under Sentinel: the replica, then the three Sentinels.
    pub replica: Option<RedisServer>,
    pub sentinels: Vec<RedisServer>,
    pub redis_port: u16,
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

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Waits for a child to exit; kills it (and `also`, a pid it left behind) after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration, also: Option<u32>) {
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
    /// Starts what `shape` asks for; blocks until every node and server answers (and a
    /// cluster's nodes run as one cluster).
    pub fn start_shaped(shape: Shape) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("switchboard-faults-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        let names: Vec<String> = (1..=shape.nodes)
            .map(|i| format!("faults-{pid}-{n}-{i}@localhost"))
            .collect();
        let peers = if shape.nodes > 1 {
            names.clone()
        } else {
            Vec::new()
        };
        let cookie = format!("FAULTS{pid}X{n}COOKIE");
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let node_dir = if shape.nodes > 1 {
                    dir.join(format!("node{}", i + 1))
                } else {
                    dir.clone()
                };
                Node::prepare(node_dir, name.clone(), &peers, &cookie)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let redis_port = free_port();
        let (redis, replica, sentinels) = if shape.sentinel {
            let master = RedisServer::new(&dir, "redis-master", redis_port, &[]);
            let replica_port = free_port();
            let replica_of = redis_port.to_string();
            let replica = RedisServer::new(
                &dir,
                "redis-replica",
                replica_port,
                &["--replicaof", "127.0.0.1", &replica_of],
            );
            let sentinels = (1..=3)
                .map(|i| {
                    RedisServer::sentinel(
                        &dir,
                        &format!("sentinel-{i}"),
                        free_port(),
                        MASTER_NAME,
                        redis_port,
                        2,
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            (master, Some(replica), sentinels)
        } else {
            (
                RedisServer::new(&dir, "redis", redis_port, &[]),
                None,
                Vec::new(),
            )
        };
        let env = Self {
            nodes,
            redis,
            replica,
            sentinels,
            redis_port,
            watchdog: Mutex::new(None),
            dir,
        };
        env.start_watchdog()?;
        env.redis.start()?;
        if let Some(r) = &env.replica {
            r.start()?;
        }
        for s in &env.sentinels {
            s.start()?;
        }
        env.start_cluster()?;
        Ok(env)
    }

    /// Boots the node(s): a cluster's first node alone, then the others, which join it; then
    /// waits until every member runs in the one cluster.
    fn start_cluster(&self) -> anyhow::Result<()> {
        let Some(first) = self.nodes.first() else {
            anyhow::bail!("no RabbitMQ node");
        };
        self.start_node(0)?;
        for i in 1..self.nodes.len() {
            self.nodes[i].spawn(&self.node_pidfile(i))?;
        }
        for node in &self.nodes[1..] {
            node.wait_up()?;
        }
        if self.nodes.len() > 1 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while first.running_nodes() != Some(self.nodes.len()) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the {} nodes did not form one cluster; see {}",
                    self.nodes.len(),
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Every node's URL, as `broker.url` lists them.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::amqp_url).collect()
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// The Sentinels' URLs (empty without Sentinel).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// Kills every pid file's process once the test process is gone, then removes the dir.
    fn start_watchdog(&self) -> anyhow::Result<()> {
        let script = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 1; done; \
             for f in '{dir}'/*.pid '{dir}'/node*/*.pid; do [ -f \"$f\" ] && kill -9 $(cat \"$f\") 2>/dev/null; done; \
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

    fn node_pidfile(&self, i: usize) -> PathBuf {
        self.dir.join(format!("rabbit-script-{}.pid", i + 1))
    }

    /// Starts node `i` (again, on the same ports and Mnesia dir) and waits until it takes AMQP.
    pub fn start_node(&self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].spawn(&self.node_pidfile(i))?;
        self.nodes[i].wait_up()
    }

    /// Stops node `i` gracefully and waits until it is gone.
    pub fn stop_node(&self, i: usize) {
        self.nodes[i].stop();
        let _ = std::fs::remove_file(self.node_pidfile(i));
    }

    /// Kills node `i`'s VM with SIGKILL, as a crash or an OOM kill would, and waits for it.
    pub fn kill_node(&self, i: usize) {
        self.nodes[i].kill();
        let _ = std::fs::remove_file(self.node_pidfile(i));
    }

    /// The single-node faults' names for the same.
    pub fn start_broker(&self) -> anyhow::Result<()> {
        self.start_node(0)
    }

    pub fn stop_broker(&self) {
        self.stop_node(0)
    }

    pub fn kill_broker(&self) {
        self.kill_node(0)
    }

    /// Starts Redis (again: empty, since nothing is persisted) and waits until it answers PING.
    pub fn start_redis(&self) -> anyhow::Result<()> {
        self.redis.start()
    }

    /// Stops Redis with SIGTERM (no save configured: everything it held is gone).
    pub fn stop_redis(&self) {
        self.redis.stop()
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        // The last node to stop would be the first that must start again: stop in reverse.
        for i in (0..self.nodes.len()).rev() {
            self.stop_node(i);
        }
        for s in &self.sentinels {
            s.stop();
        }
        if let Some(r) = &self.replica {
            r.stop();
        }
        self.redis.stop();
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
                "faults: the isolated brokers' and Redis' files and the roles' logs are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
