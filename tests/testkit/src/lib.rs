//! The one test kit for the real RabbitMQ and Redis that every test crate shares: a
//! [`Fixture`] gives a test its own prefix (queues `<prefix>.…`, keys `<prefix>:…`), stores on
//! it (one pool per call, as separate processes would have), and removes every key under the
//! prefix and every queue it was told about when it is dropped — also when the test panics,
//! since drop runs while unwinding. The removal is blocking, over fresh connections on a thread
//! of its own, so it works from inside any runtime and while the test's own connections are
//! cut or closed. It must never panic (a panic while unwinding aborts the test binary): what
//! it cannot remove it reports on stderr.
//!
//! It does not start servers or roles; the e2e harness (`tests/e2e/common.rs`) and the fault
//! suite build on it.
#![forbid(unsafe_code)]

use deadpool_redis::redis;
use lapin::options::QueueDeleteOptions;
use shared::config::RedisConfig;
use shared::store::Store;
use shared::topology::Topology;
use shared::Secret;
use std::sync::Mutex;
use std::time::Duration;

/// The machine's RabbitMQ, as the tests reach it.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The machine's Redis, as the tests reach it.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The broker's address, for tests that put a proxy in front of it.
pub const BROKER_ADDR: &str = "127.0.0.1:5672";

/// How long the removal may take before it gives up (a broker that is away).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A prefix no other test (or run) uses: `<kind>-<uuid v7>`.
pub fn unique_prefix(kind: &str) -> String {
    format!("{kind}-{}", uuid::Uuid::now_v7().simple())
}

/// A test's own prefix on the shared broker and Redis, cleaned on drop.
#[derive(Debug)]
pub struct Fixture {
    prefix: String,
    queues: Mutex<Vec<String>>,
}

impl Fixture {
    /// A fresh prefix `<kind>-<uuid>`.
    pub fn new(kind: &str) -> Self {
        Self {
            prefix: unique_prefix(kind),
            queues: Mutex::new(Vec::new()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A store on this prefix with its own pool of 16 (each call: another "process").
    pub fn store(&self) -> Store {
        self.store_with_pool(16)
    }

    /// A store on this prefix with its own pool of `pool_size` connections.
    pub fn store_with_pool(&self, pool_size: usize) -> Store {
        store_on(&self.prefix, pool_size)
    }

    /// A store on this prefix that encrypts with `key` and also opens what `previous` encrypted
    /// (`[redis] encryption_key`, `previous_encryption_keys`).
    pub fn store_with_keys(&self, key: Option<&str>, previous: &[&str]) -> Store {
        match Store::new(&RedisConfig {
            url: Secret::new(REDIS_URL),
            prefix: self.prefix.clone(),
            pool_size: 4,
            response_timeout: std::time::Duration::from_secs(5),
            sentinel: None,
            encryption_key: key.map(Secret::new),
            previous_encryption_keys: previous.iter().map(|k| Secret::new(*k)).collect(),
        }) {
            Ok(store) => store,
            Err(e) => panic!("a store on {REDIS_URL}: {e}"),
        }
    }

    /// Removes `queue` too when dropped.
    pub fn own_queue(&self, queue: impl Into<String>) {
        self.lock_queues().push(queue.into());
    }

    /// Removes every queue and stream of `topology` (all of them, whether declared or not) when
    /// dropped.
    pub fn own_topology(&self, topology: &Topology) {
        self.lock_queues().extend(topology.all_queues());
    }

    /// Removes the keys and the owned queues now (also done on drop; doing it twice is fine).
    pub fn clean(&self) {
        let queues = self.lock_queues().clone();
        let prefix = self.prefix.clone();
        let cleaner = std::thread::Builder::new()
            .name(format!("testkit-clean-{prefix}"))
            .spawn(move || clean_blocking(&prefix, &queues));
        match cleaner.map(|t| t.join()) {
            Ok(Ok(problems)) => {
                for p in problems {
                    eprintln!("testkit: {}: {p}", self.prefix);
                }
            }
            Ok(Err(_)) => eprintln!("testkit: {}: the cleanup thread panicked", self.prefix),
            Err(e) => eprintln!("testkit: {}: no cleanup thread: {e}", self.prefix),
        }
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.clean();
    }
}

/// A store on the machine's Redis under any `prefix` (to look at what another fixture owns).
pub fn store_on(prefix: &str, pool_size: usize) -> Store {
    match Store::new(&RedisConfig {
        url: Secret::new(REDIS_URL),
        prefix: prefix.to_owned(),
        pool_size,
        response_timeout: std::time::Duration::from_secs(5),
        sentinel: None,
        encryption_key: None,
        previous_encryption_keys: Vec::new(),
    }) {
        Ok(store) => store,
        Err(e) => panic!("a store on {REDIS_URL}: {e}"),
    }
}

/// Every key under the store's prefix (`KEYS <prefix>:*`), through its pool.
pub async fn keys(store: &Store) -> Vec<String> {
    let mut c = match store.conn().await {
        Ok(c) => c,
        Err(e) => panic!("a Redis connection: {e}"),
    };
    redis::cmd("KEYS")
        .arg(format!("{}:*", store.prefix()))
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("KEYS: {e}"))
}

/// Whether `queue` exists on the broker (a passive declare over a fresh connection).
pub async fn queue_exists(queue: &str) -> bool {
    let conn = match lapin::Connection::connect(AMQP_URL, Default::default()).await {
        Ok(c) => c,
        Err(e) => panic!("a broker connection: {e}"),
    };
    let ch = match conn.create_channel().await {
        Ok(c) => c,
        Err(e) => panic!("a channel: {e}"),
    };
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .is_ok();
    let _ = conn.close(200, "ok".into()).await;
    found
}

/// Deletes the keys under `prefix` and the `queues`, each on its own; returns what failed.
fn clean_blocking(prefix: &str, queues: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = delete_keys(prefix) {
        problems.push(format!("Redis keys not removed: {e}"));
    }
    if !queues.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match runtime {
            Ok(rt) => {
                let deleted = rt.block_on(async {
                    tokio::time::timeout(CLEANUP_TIMEOUT, delete_queues(queues)).await
                });
                match deleted {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => problems.push(format!("queues not removed: {e}")),
                    Err(_) => {
                        problems.push(format!("queues not removed within {CLEANUP_TIMEOUT:?}"))
                    }
                }
            }
            Err(e) => problems.push(format!("no runtime for the queue removal: {e}")),
        }
    }
    problems
}

fn delete_keys(prefix: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(REDIS_URL)?;
    let mut c = client.get_connection_with_timeout(CLEANUP_TIMEOUT)?;
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut c)?;
    for chunk in found.chunks(500) {
        redis::cmd("DEL").arg(chunk).query::<()>(&mut c)?;
    }
    Ok(())
}

/// One fresh connection; a queue the broker refuses to delete closes only its channel, so the
/// next queue gets a new one.
async fn delete_queues(queues: &[String]) -> lapin::Result<()> {
    let conn = lapin::Connection::connect(AMQP_URL, Default::default()).await?;
    let mut channel = conn.create_channel().await?;
    let mut first_error = None;
    for q in queues {
        if let Err(e) = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            first_error.get_or_insert(e);
            channel = conn.create_channel().await?;
        }
    }
    let _ = conn.close(200, "ok".into()).await;
    first_error.map_or(Ok(()), Err)
}
