//! The Redis connections and key naming. Every key Switchboard writes starts with the
//! configured prefix; the modules that own a kind of key (idempotency, conversations, rate
//! limits, tokens) build their keys through [`Store::key`] and never by hand.
//!
//! A key's parts come from platform bodies and headers (chat ids, sender ids, dedup keys), which
//! the sender chooses. [`key_part`] encodes each part so that it never holds the separator `:`
//! (nor `%`, the escape, nor `*`, which marks our own "every sender" part), so the parts of a key
//! can always be told apart again: distinct tuples of parts never give one key (`"a:b"`,`"c"` is
//! not `"a"`,`"b:c"`; a sender `victim:turn` cannot name anyone's lock). The encoding is
//! percent-escaping of those three characters only: a part without them — every id the platforms
//! issue today — is written as it is, so the keys stored by earlier versions keep their names.
//!
//! Connections come from a deadpool-redis pool, but a pool checks every reused connection with
//! an `UNWATCH`+`PING` round trip, which would double the cost of each command on the hot paths.
//! The connections are multiplexed (any number of tasks may pipeline commands over one), so the
//! store takes a few out of the pool once and hands out clones; a background check replaces one
//! that stops answering (after a Redis restart), so callers see errors for about a second at
//! most — errors they already handle by waiting.
//!
//! Every connection waits `[redis] response_timeout` (default 5 s) for a reply, not redis-rs's
//! own 500 ms: on a loaded machine a command Redis executes a little late would otherwise fail,
//! and its caller could not tell whether it ran (the worker's claims give back such a claim by
//! a token they made; see `worker::idempotency`).
//!
//! With Redis Sentinel (`[redis.sentinel]`) the connections go to whichever server the Sentinels
//! name as master, and the check asks each shared connection for its `ROLE`: a connection to a
//! server that is no longer the master (it died, or a failover demoted it) is dropped, so the
//! next command reaches the new master.
use crate::config::RedisConfig;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::IntoConnectionInfo;
use deadpool_redis::sentinel;
use deadpool_redis::{Config as PoolConfig, Pool, PoolConfig as Sizing, Runtime};
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A connection to Redis: clone it freely, commands from many tasks are pipelined over it.
pub type Connection = MultiplexedConnection;

/// Connections kept out of the pool and shared (round robin).
const SHARED_CONNECTIONS: usize = 4;
/// How often the shared connections are checked, and how long a check may take.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Why Redis could not be used (clonable: one round trip's error may answer many callers).
#[derive(Debug, Clone, thiserror::Error)]
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

/// Where new connections come from: one server, or the master the Sentinels name.
#[derive(Clone)]
enum Pools {
    Direct(Pool),
    Sentinel(sentinel::Pool),
}

impl Pools {
    /// A connection of its own out of the pool, waiting `response_timeout` for each reply.
    async fn take(&self, response_timeout: Duration) -> Result<MultiplexedConnection, StoreError> {
        let mut conn = match self {
            Pools::Direct(p) => deadpool_redis::Connection::take(p.get().await?),
            Pools::Sentinel(p) => sentinel::Connection::take(
                p.get().await.map_err(|e| StoreError::Pool(e.to_string()))?,
            ),
        };
        conn.set_response_timeout(response_timeout);
        Ok(conn)
    }

    fn is_sentinel(&self) -> bool {
        matches!(self, Pools::Sentinel(_))
    }
}

/// A clonable handle on the Redis connections with the key prefix.
#[derive(Clone)]
pub struct Store {
    pool: Pools,
    prefix: String,
    vault: crate::vault::Vault,
    response_timeout: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    /// Connections handed out so far (round robin over `slots`).
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
        let sizing = Sizing {
            timeouts: deadpool_redis::Timeouts {
                wait: Some(std::time::Duration::from_secs(5)),
                create: Some(std::time::Duration::from_secs(5)),
                recycle: Some(std::time::Duration::from_secs(5)),
            },
            ..Sizing::new(cfg.pool_size.max(1))
        };
        let pool = match &cfg.sentinel {
            None => {
                let mut pc = PoolConfig::from_url(cfg.url.expose());
                pc.pool = Some(sizing);
                Pools::Direct(
                    pc.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| StoreError::Pool(e.to_string()))?,
                )
            }
            Some(s) => {
                // The master's credentials and database come from `url`; its host is the
                // Sentinels' answer.
                let master = cfg.url.expose().into_connection_info()?;
                let mut pc = sentinel::Config::from_urls(
                    s.urls
                        .iter()
                        .map(|u| u.expose().to_owned())
                        .collect::<Vec<_>>(),
                    s.master_name.clone(),
                    sentinel::SentinelServerType::Master,
                )
                .with_node_connection_info(Some(
                    sentinel::SentinelNodeConnectionInfo {
                        tls_mode: None,
                        redis_connection_info: Some(master.redis_settings().clone().into()),
                    },
                ));
                pc.pool = Some(sizing);
                Pools::Sentinel(
                    pc.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| StoreError::Pool(e.to_string()))?,
                )
            }
        };
        let slots = (0..SHARED_CONNECTIONS.min(cfg.pool_size.max(1)))
            .map(|_| Mutex::new(None))
            .collect();
        Ok(Self {
            pool,
            prefix: cfg.prefix.clone(),
            vault: cfg.vault(),
            response_timeout: cfg.response_timeout,
            shared: Arc::new(Shared {
                slots,
                next: AtomicUsize::new(0),
                checking: Mutex::new(false),
            }),
        })
    }

    /// `prefix:part:part…`, every part encoded by [`key_part`].
    pub fn key(&self, parts: &[&str]) -> String {
        // Sized once: the parts without escapes, the usual case, fit without growing.
        let size = self.prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>();
        let mut k = String::with_capacity(size);
        k.push_str(&self.prefix);
        for p in parts {
            k.push(':');
            k.push_str(&key_part(p));
        }
        k
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Seals and opens the values worth stealing (`[redis] encryption_key`).
    pub fn vault(&self) -> &crate::vault::Vault {
        &self.vault
    }

    /// A shared connection (taken from the pool on first use).
    pub async fn conn(&self) -> Result<Connection, StoreError> {
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.shared.slots.len();
        if let Some(c) = lock(&self.shared.slots[i]).clone() {
            return Ok(c);
        }
        // Taken out of the pool for good: it is shared from now on, never recycled. Boxed: the
        // pool's wait and connect are large state machines, needed once per slot, and unboxed they
        // would size every future that asks for a connection (every Redis step of every event).
        let conn = Box::pin(self.pool.take(self.response_timeout)).await?;
        *lock(&self.shared.slots[i]) = Some(conn.clone());
        self.start_health_check();
        Ok(conn)
    }

    /// How many times [`Store::conn`] handed out a connection since the store was built. Callers
    /// that take one per command or script they send (the worker's records and conversations
    /// do) make this their Redis round trips: what a test counts to bound a path's round trips.
    pub fn round_trips(&self) -> u64 {
        self.shared.next.load(Ordering::Relaxed) as u64
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
        let sentinel = self.pool.is_sentinel();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_EVERY);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                for slot in &shared.slots {
                    let Some(mut c) = lock(slot).clone() else {
                        continue;
                    };
                    let healthy = tokio::time::timeout(HEALTH_EVERY, check(&mut c, sentinel)).await;
                    match healthy {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => {
                            tracing::warn!("the Redis server is no longer the master; reconnecting through the Sentinels");
                            *lock(slot) = None;
                        }
                        _ => {
                            tracing::warn!("a Redis connection stopped answering; replacing it");
                            *lock(slot) = None;
                        }
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

/// One part of a key (or of any name joined with `:` from ids a sender chooses, such as the
/// Dify `user`), encoded so that it holds no `:` and no `*`: `%` → `%25`, `:` → `%3A`,
/// `*` → `%2A`. Injective, and the identity on parts without those characters.
pub fn key_part(part: &str) -> Cow<'_, str> {
    // Bytes, not chars: the three are ASCII, which never occurs inside a multi-byte character.
    if memchr::memchr3(b':', b'%', b'*', part.as_bytes()).is_none() {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '*' => out.push_str("%2A"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Parts joined with `:`, each encoded by [`key_part`] (a name outside Redis built the same way).
pub fn join_parts(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| key_part(p))
        .collect::<Vec<_>>()
        .join(":")
}

/// One health check: PING answers; under Sentinel, also still the master (`ROLE`).
async fn check(
    c: &mut MultiplexedConnection,
    sentinel: bool,
) -> Result<bool, deadpool_redis::redis::RedisError> {
    if !sentinel {
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(c)
            .await?;
        return Ok(true);
    }
    let role: deadpool_redis::redis::Value =
        deadpool_redis::redis::cmd("ROLE").query_async(c).await?;
    Ok(is_master(&role))
}

/// Whether a `ROLE` reply says master (its first element; RESP2 and RESP3 spellings).
fn is_master(role: &deadpool_redis::redis::Value) -> bool {
    use deadpool_redis::redis::Value;
    match role {
        Value::Array(items) => {
            matches!(
                items.first(),
                Some(Value::BulkString(b)) if b.as_slice() == b"master"
            ) || matches!(
                items.first(),
                Some(Value::SimpleString(s)) if s == "master"
            )
        }
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_redis::redis::Value;

    fn store() -> Store {
        Store::new(&RedisConfig {
            url: crate::Secret::new("redis://127.0.0.1:6379"),
            prefix: "p".into(),
            pool_size: 1,
            response_timeout: Duration::from_secs(5),
            sentinel: None,
            encryption_key: None,
            previous_encryption_keys: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn parts_without_separators_are_written_as_they_are() {
        let s = store();
        assert_eq!(s.key(&["conv", "src", "c1", "u1"]), "p:conv:src:c1:u1");
        // Ids the platforms issue: base64, underscores, dots, UUIDs.
        for id in [
            "cidAbC+/x==",
            "ou_7d8a",
            "1712345678.000100",
            "0190a3c4-0000-7000-8000-0000000000aa",
        ] {
            assert_eq!(key_part(id), id);
        }
    }

    #[test]
    fn distinct_tuples_never_give_one_key() {
        let s = store();
        assert_eq!(s.key(&["conv", "a:b", "c"]), "p:conv:a%3Ab:c");
        assert_ne!(s.key(&["conv", "a:b", "c"]), s.key(&["conv", "a", "b:c"]));
        assert_ne!(
            s.key(&["conv", "src", "c", "victim:turn"]),
            s.key(&["conv", "src", "c", "victim", "turn"])
        );
        assert_ne!(s.key(&["x", "%3A"]), s.key(&["x", ":"]));
        assert_ne!(s.key(&["x", "*"]), s.key(&["x", "%2A"]));
        assert_eq!(key_part("*"), "%2A");
        // Multi-byte characters pass as they are, beside an escape or not.
        assert_eq!(key_part("群聊ü😀"), "群聊ü😀");
        assert_eq!(key_part("群:聊%😀*"), "群%3A聊%25😀%2A");
        // Exhaustively over short strings of the characters that matter: the encoding is
        // injective and its output never holds a separator.
        let alphabet = ['a', ':', '%', '*', '3', 'A'];
        let mut words = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = words
                .iter()
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            words.extend(longer);
        }
        words.sort();
        words.dedup();
        let mut seen = std::collections::HashMap::new();
        for w in &words {
            let e = key_part(w).into_owned();
            assert!(!e.contains(':') && !e.contains('*'), "{w:?} -> {e:?}");
            if let Some(other) = seen.insert(e.clone(), w.clone()) {
                panic!("{w:?} and {other:?} both give {e:?}");
            }
        }
        assert_eq!(join_parts(&["src", "group:c1"]), "src:group%3Ac1");
        assert_ne!(
            join_parts(&["src", "group:c1"]),
            join_parts(&["src", "group", "c1"])
        );
    }

    #[test]
    fn only_a_master_role_keeps_its_connections() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let cases = [
            (
                Value::Array(vec![bulk("master"), Value::Int(0), Value::Array(vec![])]),
                true,
            ),
            (
                Value::Array(vec![Value::SimpleString("master".into())]),
                true,
            ),
            (
                Value::Array(vec![bulk("slave"), bulk("127.0.0.1"), Value::Int(6379)]),
                false,
            ),
            (
                Value::Array(vec![bulk("sentinel"), Value::Array(vec![])]),
                false,
            ),
            (Value::Nil, false),
        ];
        for (reply, master) in cases {
            assert_eq!(is_master(&reply), master, "{reply:?}");
        }
    }

    #[test]
    fn asking_for_a_connection_is_a_small_future() {
        // Every Redis step of every event holds this future while it waits; unboxed, the pool's
        // wait-and-connect made it 10,016 bytes (rustc 1.95), copied with every such step.
        let s = store();
        let asking = s.conn();
        let size = std::mem::size_of_val(&asking);
        assert!(size <= 256, "Store::conn's future is {size} bytes");
    }
}
