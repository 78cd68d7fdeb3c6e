//! The Redis connections and key naming. Every key Switchboard writes starts with the
//! configured prefix; the modules that own a kind of key (idempotency, conversations, rate
//! limits, tokens) build their keys through [`Store::key`] and never by hand.
//!
//! Connections come from a deadpool-redis pool, but a pool checks every reused connection with
//! an `UNWATCH`+`PING` round trip, which would double the cost of each command on the hot paths.
//! The connections are multiplexed (any number of tasks may pipeline commands over one), so the
//! store takes a few out of the pool once and hands out clones; a background check replaces one
//! that stops answering (after a Redis restart), so callers see errors for about a second at
//! most — errors they already handle by waiting.
use crate::config::RedisConfig;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::{Config as PoolConfig, Pool, PoolConfig as Sizing, Runtime};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A connection to Redis: clone it freely, commands from many tasks are pipelined over it.
pub type Connection = MultiplexedConnection;

/// Connections kept out of the pool and shared (round robin).
const SHARED_CONNECTIONS: usize = 4;
/// How often the shared connections are checked, and how long a check may take.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis: {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

/// A clonable handle on the Redis connections with the key prefix.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    prefix: String,
    shared: Arc<Shared>,
}

struct Shared {
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
    checking: Mutex<bool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Store {
    /// Builds the pool; connections are made lazily, so this does not fail when Redis is down.
    pub fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let mut pc = PoolConfig::from_url(cfg.url.expose());
        pc.pool = Some(Sizing {
            timeouts: deadpool_redis::Timeouts {
                wait: Some(std::time::Duration::from_secs(5)),
                create: Some(std::time::Duration::from_secs(5)),
                recycle: Some(std::time::Duration::from_secs(5)),
            },
            ..Sizing::new(cfg.pool_size.max(1))
        });
        let pool = pc
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let slots = (0..SHARED_CONNECTIONS.min(cfg.pool_size.max(1)))
            .map(|_| Mutex::new(None))
            .collect();
        Ok(Self {
            pool,
            prefix: cfg.prefix.clone(),
            shared: Arc::new(Shared {
                slots,
                next: AtomicUsize::new(0),
                checking: Mutex::new(false),
            }),
        })
    }

    /// `prefix:part:part…`
    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A shared connection (taken from the pool on first use).
    pub async fn conn(&self) -> Result<Connection, StoreError> {
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.shared.slots.len();
        if let Some(c) = lock(&self.shared.slots[i]).clone() {
            return Ok(c);
        }
        // Taken out of the pool for good: it is shared from now on, never recycled.
        let conn = deadpool_redis::Connection::take(self.pool.get().await?);
        *lock(&self.shared.slots[i]) = Some(conn.clone());
        self.start_health_check();
        Ok(conn)
    }

    /// Starts (once) the task that drops shared connections that stopped answering.
    fn start_health_check(&self) {
        {
            let mut started = lock(&self.shared.checking);
            if *started {
                return;
            }
            *started = true;
        }
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_EVERY);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                for slot in &shared.slots {
                    let Some(mut c) = lock(slot).clone() else {
                        continue;
                    };
                    let ping = deadpool_redis::redis::cmd("PING");
                    let answered =
                        tokio::time::timeout(HEALTH_EVERY, ping.query_async::<String>(&mut c))
                            .await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tracing::warn!("a Redis connection stopped answering; replacing it");
                        *lock(slot) = None;
                    }
                }
            }
        });
    }

    /// Whether Redis answers a PING.
    pub async fn ping(&self) -> bool {
        let Ok(mut c) = self.conn().await else {
            return false;
        };
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
