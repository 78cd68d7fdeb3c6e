//! The Redis connection pool and key naming. Every key Switchboard writes starts with the
//! configured prefix; the modules that own a kind of key (idempotency, conversations, rate
//! limits, tokens) build their keys through [`Store::key`] and never by hand.
use crate::config::RedisConfig;
use deadpool_redis::{Config as PoolConfig, Connection, Pool, PoolConfig as Sizing, Runtime};

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

/// A clonable handle on the Redis pool with the key prefix.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    prefix: String,
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
        Ok(Self {
            pool,
            prefix: cfg.prefix.clone(),
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

    pub async fn conn(&self) -> Result<Connection, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Whether Redis answers a PING (`/readyz`).
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
