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

impl SeenKeys {
    /// The event's own dedup key, and, when `by_body`, the body's hash too: the same signed body
    /// under another delivery id is then a retry.
    pub fn of(store: &Store, source_id: &str, dedup_key: &str, by_body: Option<&[u8]>) -> Self {
        let mut keys = vec![store.key(&["seen", source_id, dedup_key])];
        if let Some(body) = by_body {
            let hash = hex::encode(Sha256::digest(body));
            keys.push(store.key(&["seen-body", source_id, &hash]));
        }
        let origin = serde_json::json!({"source": source_id, "dedup_key": dedup_key});
        Self(keys, origin.to_string())
    }

    /// The id of the event first kept under any of these keys.
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

    /// Remembers the event under every key for `ttl`, and its origin under its id.
    pub async fn remember(
        &self,
        store: &Store,
        event_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = store.conn().await?;
        let mut pipe = redis::pipe();
        self.add_to(&mut pipe, store, event_id, ttl);
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Adds what `remember` writes to `pipe` (the door writer puts many events in one).
    pub fn add_to(&self, pipe: &mut redis::Pipeline, store: &Store, event_id: &str, ttl: Duration) {
        let secs = ttl.as_secs().max(1);
        for key in &self.0 {
            pipe.cmd("SET")
                .arg(key)
                .arg(event_id)
                .arg("EX")
                .arg(secs)
                .ignore();
        }
        pipe.cmd("SET")
            .arg(store.key(&["event", event_id]))
            .arg(&self.1)
            .arg("EX")
            .arg(secs)
            .ignore();
    }
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
