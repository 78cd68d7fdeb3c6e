//! What the door remembers in Redis, and nothing else: which events were kept (door dedup, keyed
//! by the platform's own id and, for a source whose captured requests stay valid forever, also by
//! the signed body), each kept event's source and platform id under its event id (so the
//! auditors' console finds an event by either id), and which body each body-free signature
//! vouched for (DingTalk). Keys are
//! built here and only here; the doors (ingress, connector) decide what a Redis failure means.
use crate::platform::BodyFreeSignature;
use deadpool_redis::redis;
use sha2::{Digest, Sha256};
use shared::store::{Store, StoreError};
use std::time::Duration;

/// The keys under which a kept event is remembered at the door, and what its event id's own
/// record (`event:{id}`) says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenKeys(Vec<String>, String);

/// What `event:{id}` says of a kept event: where it came from and under which platform id.
#[derive(serde::Serialize)]
struct Origin<'a> {
    dedup_key: &'a str,
    source: &'a str,
}

impl SeenKeys {
    /// The event's own dedup key, and, when `by_body`, the body's hash too: the same signed body
    /// under another delivery id is then a retry.
    pub fn of(store: &Store, source_id: &str, dedup_key: &str, by_body: Option<&[u8]>) -> Self {
        let mut keys = Vec::with_capacity(1 + usize::from(by_body.is_some()));
        keys.push(store.key(&["seen", source_id, dedup_key]));
        if let Some(body) = by_body {
            let hash = hex::encode(Sha256::digest(body));
            keys.push(store.key(&["seen-body", source_id, &hash]));
        }
        let origin = Origin {
            dedup_key,
            source: source_id,
        };
        // Two strings: nothing in them can fail to serialize.
        let origin = serde_json::to_string(&origin).unwrap_or_default();
        Self(keys, origin)
    }

    /// The id of the event first kept under any of these keys (one round trip of its own;
    /// `crate::door_rounds` shares one among many requests).
    pub async fn first(&self, store: &Store) -> Result<Option<String>, StoreError> {
        let mut conn = store.conn().await?;
        let found: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&self.0)
            .query_async(&mut conn)
            .await?;
        Ok(found.into_iter().flatten().next())
    }

    /// The door keys themselves.
    pub fn keys(&self) -> &[String] {
        &self.0
    }

    /// Remembers the event under every key for `ttl`, and its origin under its id: one
    /// pipeline of its own (`crate::door_rounds` shares one among many events).
    pub async fn remember(
        &self,
        store: &Store,
        event_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        add_remember(&mut pipe, store, self, event_id, ttl.as_secs().max(1));
        let mut conn = store.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

/// Adds one kept event's markers to `pipe`: `SET … EX secs` of its door keys and of its
/// `event:{id}` record (one `OK` each, for the caller to pass over: marking them ignored costs
/// the pipeline a hash-set insert each). Pipelined SETs, not a script: Redis spent about a fifth
/// more CPU per request running the same SETs from Lua (docs/PERFORMANCE.md, "Issue 18, fourth
/// round").
pub fn add_remember(
    pipe: &mut redis::Pipeline,
    store: &Store,
    seen: &SeenKeys,
    event_id: &str,
    secs: u64,
) {
    for key in &seen.0 {
        pipe.add_command(set_ex(key, event_id, secs));
    }
    pipe.add_command(set_ex(&store.key(&["event", event_id]), &seen.1, secs));
}

/// `SET key value EX secs`, sized once.
fn set_ex(key: &str, value: &str, secs: u64) -> redis::Cmd {
    // "SET", "EX" and up to 20 digits.
    let mut set = redis::Cmd::with_capacity(5, key.len() + value.len() + 25);
    set.arg("SET").arg(key).arg(value).arg("EX").arg(secs);
    set
}

/// What a body-free signature was to the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Never seen: it now vouches for this body.
    First,
    /// Seen with this same body (the platform's retry): the door dedup decides.
    SameBody,
    /// Seen with another body: a replayed signature.
    OtherBody,
}

/// Binds a body-free signature to `body` for as long as it is valid, or says what it was bound
/// to already.
pub async fn claim_signature(
    store: &Store,
    source_id: &str,
    signature: &BodyFreeSignature,
    body: &[u8],
) -> Result<Claim, StoreError> {
    let key = store.key(&["sign", source_id, &signature.id]);
    let hash = hex::encode(Sha256::digest(body));
    let mut conn = store.conn().await?;
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(&hash)
        .arg("NX")
        .arg("PX")
        .arg(
            u64::try_from(signature.valid_for.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        )
        .query_async(&mut conn)
        .await?;
    if set.is_some() {
        return Ok(Claim::First);
    }
    // The value never changes once set, so reading it after the refused SET is no race.
    let bound: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    Ok(match bound {
        Some(b) if b == hash => Claim::SameBody,
        Some(_) => Claim::OtherBody,
        // Expired in between: the signature is no longer valid by the platform's window either.
        None => Claim::OtherBody,
    })
}

/// A store for tests: Redis at `url`, keys under `prefix` (connections are made lazily).
#[cfg(test)]
pub(crate) fn test_store(url: &str, prefix: &str) -> Store {
    Store::new(&shared::config::RedisConfig {
        url: shared::Secret::new(url),
        prefix: prefix.to_owned(),
        pool_size: 4,
        sentinel: None,
        encryption_key: None,
        previous_encryption_keys: Vec::new(),
        response_timeout: Duration::from_secs(5),
    })
    .expect("store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_event_record_names_its_source_and_platform_id_as_json() {
        let store = test_store("redis://127.0.0.1:6379", "test-door");
        for (source, key) in [("hooks", "d-1"), ("s\"1", "k:\\\n\u{1F600}")] {
            let seen = SeenKeys::of(&store, source, key, None);
            // What the console reads; byte for byte what `json!` wrote before.
            let record = serde_json::json!({"source": source, "dedup_key": key}).to_string();
            assert_eq!(seen.1, record);
        }
    }
}
