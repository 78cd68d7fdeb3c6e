//! A streamed reply's record in Redis: `stream:<job id>` (a hash: `message`, `epoch`, `seq`,
//! `final`, `fallback`), kept as long as a split answer's part progress, and the lock
//! `streaming:<job id>` held while one request touches the message. Writes that order updates
//! are one Lua script each, so an update never moves the record backwards even if its lock
//! lapsed. This module never sends anything.
use crate::target::parts::PROGRESS_TTL;
use deadpool_redis::redis::{self, AsyncCommands, Script};
use shared::store::{Store, StoreError};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// What the record says about a reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The platform's id of the message (or card) that grows.
    pub message: Option<String>,
    /// The order `(epoch, seq)` of the last update applied.
    pub applied: Option<(i64, u64)>,
    /// The final answer is in the chat.
    pub finished: bool,
    /// Streaming failed for this reply: its final answer goes as a single message.
    pub fell_back: bool,
}

/// The record of one reply job.
pub struct Record<'a> {
    store: &'a Store,
    key: String,
    lock: String,
    /// Who holds the lock: unique per holder, so only the holder releases it.
    holder: String,
}

// KEYS[1] record. ARGV: epoch, seq, message ('' to keep), ttl_ms. Advances the applied order
// (and sets the message) only if the update is newer than the one recorded.
const APPLIED: &str = r#"
local e = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '-1')
local s = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
local ne, ns = tonumber(ARGV[1]), tonumber(ARGV[2])
if ne < e or (ne == e and ns <= s) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

// KEYS[1] record. ARGV: field, ttl_ms. Sets a flag; 1 if it was not set before.
const FLAG: &str = r#"
local was = redis.call('HSETNX', KEYS[1], ARGV[1], '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return was
"#;

// KEYS[1] lock. ARGV: holder. Releases the lock if it is still ours.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl<'a> Record<'a> {
    pub fn of(store: &'a Store, job_id: Uuid) -> Self {
        let id = job_id.to_string();
        Self {
            store,
            key: store.key(&["stream", &id]),
            lock: store.key(&["streaming", &id]),
            holder: Uuid::now_v7().to_string(),
        }
    }

    /// Takes the reply's lock for `ttl`; `false`: another request is touching the message.
    pub async fn lock(&self, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.store.conn().await?;
        let got: Option<String> = redis::cmd("SET")
            .arg(&self.lock)
            .arg(&self.holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(got.is_some())
    }

    /// Releases the lock if it is still ours; if Redis cannot, it lapses after its ttl.
    pub async fn unlock(&self) {
        if let Ok(mut conn) = self.store.conn().await {
            let _: Result<i64, _> = Script::new(UNLOCK)
                .key(&self.lock)
                .arg(&self.holder)
                .invoke_async(&mut conn)
                .await;
        }
    }

    pub async fn read(&self) -> Result<StreamState, StoreError> {
        let mut conn = self.store.conn().await?;
        let h: HashMap<String, String> = conn.hgetall(&self.key).await?;
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
        let applied = match (num("epoch"), num("seq")) {
            (Some(e), Some(s)) if s >= 0 => Some((e, s as u64)),
            _ => None,
        };
        Ok(StreamState {
            message: h.get("message").filter(|m| !m.is_empty()).cloned(),
            applied,
            finished: h.contains_key("final"),
            fell_back: h.contains_key("fallback"),
        })
    }

    /// Records an applied update (and the message it created); `false`: a newer one was.
    pub async fn applied(
        &self,
        order: (i64, u64),
        created: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.store.conn().await?;
        let ok: i64 = Script::new(APPLIED)
            .key(&self.key)
            .arg(order.0)
            .arg(order.1)
            .arg(created.unwrap_or(""))
            .arg(PROGRESS_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(ok == 1)
    }

    /// The final answer is in: later updates are dropped.
    pub async fn finished(&self) -> Result<(), StoreError> {
        self.flag("final").await.map(|_| ())
    }

    /// Streaming failed for this reply; `true` the first time (say so once in the log).
    pub async fn fell_back(&self) -> Result<bool, StoreError> {
        self.flag("fallback").await
    }

    async fn flag(&self, field: &str) -> Result<bool, StoreError> {
        let mut conn = self.store.conn().await?;
        let was: i64 = Script::new(FLAG)
            .key(&self.key)
            .arg(field)
            .arg(PROGRESS_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(was == 1)
    }
}
