//! The replay record on the broker and in Redis: reading the replays stream into the
//! [`Ledger`] and the chain's links, and appending a record at its place in the chain.
//!
//! Appending is serialised across every process by a lock in Redis, and the chain's head
//! (number, digest, time of the last record) is kept there too, so two replays running at once
//! link one after the other instead of forking. A record is written in three steps under the
//! lock: it is put aside in Redis as `pending`, appended to the stream (sealed, confirmed), and
//! then becomes the head. A process that dies between the steps leaves `pending` behind; the
//! next appender appends it again (a copy with the same digest, which verification counts as
//! a harmless duplicate) before its own, so a crash never forks the chain. When Redis has no
//! head (a new install, or Redis lost it), it is recovered from the stream.
use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands, Script};
use serde::Deserialize;
use shared::seal::{digest, Keyring};
use std::ops::ControlFlow;
use std::time::Duration;

use crate::audit::{Checkpoint, Ledger, ReplayRecord};
use crate::chain::{ChainReport, Head, Horizon, Link, Place, GENESIS_PREV};
use crate::filter::Start;
use crate::store::{Store, StreamEntry};
use crate::DlqError;

/// How long one append may hold the lock; a holder that dies frees it after this.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// How long an appender waits for the lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// What a record of the replays stream says about its place, read without the rest.
#[derive(Deserialize)]
struct PlaceHead {
    envelope: String,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev: Option<String>,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

/// An entry of the replays stream: its link, and the replay part it is (if it is one).
pub fn link_of(e: &StreamEntry, keyring: Option<&Keyring>) -> (Link, Option<ReplayRecord>) {
    let head: Option<PlaceHead> = serde_json::from_slice(&e.body).ok();
    let place = head.as_ref().and_then(|h| match (h.seq, &h.prev) {
        (Some(seq), Some(prev)) => Some(Place {
            seq,
            prev: prev.clone(),
        }),
        _ => None,
    });
    let link = Link {
        offset: e.offset,
        digest: digest(&e.body),
        seal: keyring.map(|k| k.verify(&e.body, e.meta.seal.as_deref())),
        place,
        at: head
            .as_ref()
            .and_then(|h| h.at)
            .or(e.meta.timestamp)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
        checkpoint: head
            .as_ref()
            .is_some_and(|h| h.envelope == <Checkpoint as shared::envelope::Envelope>::KIND),
    };
    let record = shared::envelope::decode::<ReplayRecord>(&e.body).ok();
    (link, record)
}

/// Reads the whole replays stream: the ledger (only trusted parts mark letters) and every
/// entry's link, in stream order. An absent stream is an empty record.
pub async fn read(store: &Store) -> Result<(Ledger, Vec<Link>), DlqError> {
    let replays = store.topology().replays();
    let mut parts = Vec::new();
    let mut links = Vec::new();
    if store.exists(&replays).await? {
        store
            .scan(&replays, Start::First, |e| {
                let (link, record) = link_of(&e, store.keyring());
                if let Some(r) = record {
                    let trusted = link.seal.as_ref().is_none_or(|v| v.is_verified());
                    parts.push((r, trusted));
                }
                links.push(link);
                ControlFlow::Continue(())
            })
            .await?;
    }
    Ok((Ledger::from_records(parts), links))
}

/// Verifies the chain of the replays stream against the head Redis keeps.
pub async fn verify(store: &Store, trail: &Appender) -> Result<ChainReport, DlqError> {
    let (_, links) = read(store).await?;
    let head = trail.head().await?;
    let horizon = trail.horizon(store.topology().stream_max_age());
    Ok(crate::chain::verify(&links, head.as_ref(), horizon))
}

/// The last good link of a stream's chain, as a head.
pub fn head_of(links: &[Link]) -> Option<Head> {
    let report = crate::chain::verify(
        links,
        None,
        crate::chain::Horizon {
            now: Utc::now(),
            max_age: chrono::Duration::days(365 * 1000),
            checkpoint_every: chrono::Duration::zero(),
        },
    );
    let (seq, digest, offset) = report.tip?;
    let at = links.iter().find(|l| l.offset == offset)?.at;
    Some(Head { seq, digest, at })
}

/// Appends records at their place in the chain (see the module doc).
#[derive(Debug, Clone)]
pub struct Appender {
    redis: shared::store::Store,
    checkpoint_every: Duration,
    host: String,
}

// KEYS[1] head. ARGV: prev digest, seq, digest, at. Makes the record the head if the head is
// still the record it links to (or there is none and it is the genesis).
const COMMIT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'digest')
if (cur == false and ARGV[1] == ARGV[5]) or cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'digest', ARGV[3], 'at', ARGV[4])
  redis.call('HDEL', KEYS[1], 'pending')
  return 1
end
return 0
"#;

// KEYS[1] lock. ARGV: token. Frees the lock if it is still ours.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl Appender {
    pub fn new(redis: shared::store::Store, checkpoint_every: Duration, host: String) -> Self {
        Self {
            redis,
            checkpoint_every,
            host,
        }
    }

    /// What verification measures a cut start against: now, the streams' retention and how
    /// often checkpoints are written.
    pub fn horizon(&self, max_age: Duration) -> Horizon {
        let d = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Horizon {
            now: Utc::now(),
            max_age: d(max_age),
            checkpoint_every: d(self.checkpoint_every),
        }
    }

    fn head_key(&self) -> String {
        self.redis.key(&["audit", "trail"])
    }

    /// The head Redis keeps (`None`: none kept).
    pub async fn head(&self) -> Result<Option<Head>, DlqError> {
        let mut c = self.redis.conn().await.map_err(redis_err)?;
        let (seq, dig, at): (Option<u64>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.head_key())
            .arg(&["seq", "digest", "at"])
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        Ok(match (seq, dig, at) {
            (Some(seq), Some(digest), Some(at)) => Some(Head {
                seq,
                digest,
                at: at.parse().unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            }),
            _ => None,
        })
    }

    /// Appends the record `make(seq, prev)` returns, at the chain's next place; a checkpoint
    /// goes first when the last record is older than `checkpoint_every`.
    pub async fn append(
        &self,
        store: &Store,
        make: impl FnOnce(u64, &str) -> Vec<u8>,
    ) -> Result<(), DlqError> {
        let token = self.lock().await?;
        let result = async {
            let mut head = self.settled_head(store).await?;
            if self.checkpoint_due(head.as_ref()) {
                head = Some(
                    self.write(store, head.as_ref(), |seq, prev| self.checkpoint(seq, prev))
                        .await?,
                );
            }
            self.write(store, head.as_ref(), make).await.map(|_| ())
        }
        .await;
        self.unlock(&token).await;
        result
    }

    /// Appends a checkpoint if the last record is older than `checkpoint_every` (the console
    /// calls this on a timer, so a chain record stays near the retention horizon).
    pub async fn checkpoint_if_due(&self, store: &Store) -> Result<bool, DlqError> {
        let token = self.lock().await?;
        let result = async {
            let head = self.settled_head(store).await?;
            if head.is_none() || !self.checkpoint_due(head.as_ref()) {
                return Ok(false);
            }
            self.write(store, head.as_ref(), |seq, prev| self.checkpoint(seq, prev))
                .await
                .map(|_| true)
        }
        .await;
        self.unlock(&token).await;
        result
    }

    fn checkpoint_due(&self, head: Option<&Head>) -> bool {
        let every =
            chrono::Duration::from_std(self.checkpoint_every).unwrap_or(chrono::Duration::MAX);
        head.is_some_and(|h| Utc::now() - h.at >= every)
    }

    fn checkpoint(&self, seq: u64, prev: &str) -> Vec<u8> {
        shared::envelope::encode(&Checkpoint {
            seq,
            prev: prev.to_owned(),
            at: Utc::now(),
            host: self.host.clone(),
        })
    }

    /// The head, after finishing a record a dead appender left pending, and recovered from
    /// the stream when Redis has none.
    async fn settled_head(&self, store: &Store) -> Result<Option<Head>, DlqError> {
        let mut c = self.redis.conn().await.map_err(redis_err)?;
        let pending: Option<Vec<u8>> = c
            .hget(self.head_key(), "pending")
            .await
            .map_err(redis_err)?;
        let mut head = self.head().await?;
        if head.is_none() {
            let (_, links) = read(store).await?;
            head = head_of(&links);
            if let Some(h) = &head {
                self.set_head(h).await?;
            }
        }
        if let Some(body) = pending {
            let place: PlaceHead = serde_json::from_slice(&body).map_err(|e| {
                DlqError::Broker(format!("a pending replay record is unreadable: {e}"))
            })?;
            let prev = place.prev.unwrap_or_default();
            let linked = head.as_ref().map_or(GENESIS_PREV, |h| h.digest.as_str()) == prev;
            if linked {
                store.append(&store.topology().replays(), &body).await?;
                let h = Head {
                    seq: place.seq.unwrap_or(0),
                    digest: digest(&body),
                    at: place.at.unwrap_or_else(Utc::now),
                };
                self.commit(&prev, &h).await?;
                head = Some(h);
            } else {
                // Already the head's predecessor or older: it made it; drop it.
                let _: () = c
                    .hdel(self.head_key(), "pending")
                    .await
                    .map_err(redis_err)?;
            }
        }
        Ok(head)
    }

    /// Writes one record after `head`: pending in Redis, appended, then the head.
    async fn write(
        &self,
        store: &Store,
        head: Option<&Head>,
        make: impl FnOnce(u64, &str) -> Vec<u8>,
    ) -> Result<Head, DlqError> {
        let (seq, prev) = match head {
            Some(h) => (h.seq + 1, h.digest.as_str()),
            None => (0, GENESIS_PREV),
        };
        let body = make(seq, prev);
        let mut c = self.redis.conn().await.map_err(redis_err)?;
        let _: () = c
            .hset(self.head_key(), "pending", &body)
            .await
            .map_err(redis_err)?;
        store.append(&store.topology().replays(), &body).await?;
        let new = Head {
            seq,
            digest: digest(&body),
            at: Utc::now(),
        };
        self.commit(prev, &new).await?;
        Ok(new)
    }

    async fn commit(&self, prev: &str, h: &Head) -> Result<(), DlqError> {
        let mut c = self.redis.conn().await.map_err(redis_err)?;
        let done: i64 = Script::new(COMMIT)
            .key(self.head_key())
            .arg(prev)
            .arg(h.seq)
            .arg(&h.digest)
            .arg(h.at.to_rfc3339())
            .arg(GENESIS_PREV)
            .invoke_async(&mut c)
            .await
            .map_err(redis_err)?;
        if done == 1 {
            Ok(())
        } else {
            Err(DlqError::Broker(format!("replay record {} was appended after another writer moved the chain's head (the lock expired mid-append): `switchboard dlq audit --verify` shows the fork", h.seq)))
        }
    }

    async fn set_head(&self, h: &Head) -> Result<(), DlqError> {
        let mut c = self.redis.conn().await.map_err(redis_err)?;
        let _: () = redis::cmd("HSET")
            .arg(self.head_key())
            .arg("seq")
            .arg(h.seq)
            .arg("digest")
            .arg(&h.digest)
            .arg("at")
            .arg(h.at.to_rfc3339())
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn lock(&self) -> Result<String, DlqError> {
        let key = self.redis.key(&["audit", "trail", "lock"]);
        let token = uuid::Uuid::now_v7().to_string();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let mut c = self.redis.conn().await.map_err(redis_err)?;
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
            if got.is_some() {
                return Ok(token);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DlqError::Broker(format!(
                    "another process held the replay record's lock for over {}s",
                    LOCK_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn unlock(&self, token: &str) {
        if let Ok(mut c) = self.redis.conn().await {
            let _: Result<i64, _> = Script::new(UNLOCK)
                .key(self.redis.key(&["audit", "trail", "lock"]))
                .arg(token)
                .invoke_async(&mut c)
                .await;
        }
    }
}

fn redis_err(e: impl std::fmt::Display) -> DlqError {
    DlqError::Redis(e.to_string())
}
