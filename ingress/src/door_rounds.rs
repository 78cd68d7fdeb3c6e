//! The door's Redis work for many requests at once, in one round trip: the reads of the requests
//! that this process's memory (`crate::recent`) did not answer (which event was first kept under
//! the request's door keys, `crate::door::SeenKeys::first`) and the markers of the events kept
//! since the last round trip (`crate::door::SeenKeys::remember`, written behind the answer: no
//! request waits for them). Whatever is queued goes as one pipeline (`shared::batch`: never
//! waiting to fill a batch; what is queued behind a batch in flight goes when it is answered or
//! after `PATIENCE`): the markers' `SET … EX`, then one MGET for every read's keys. A read
//! answers exactly what the read alone would have given it (the first event found under its own
//! keys, or the round trip's error, which it would have got alone too); what an error means is
//! the caller's business. Reads and markers share a round trip because each one costs the
//! process and Redis a write, a read and the wake-ups between tasks, more than the commands
//! themselves (docs/PERFORMANCE.md, "Issue 18, eighth round" and "ninth round").
//!
//! A marker that is never written (Redis down, the process killed with markers queued) only
//! loses a door dedup: it is counted (`markers_lost`) and logged here; a retry that reaches
//! another process before the marker did is enqueued again and the worker's idempotency record
//! answers it, and this process still knows the event (`crate::recent`).
//!
//! Bounded: at most `QUEUE` reads and markers wait and `IN_FLIGHT` batches are out; past that a
//! read goes alone, at once, and a marker is handed back to the caller, who writes it itself
//! (the answer waits, as it did before markers went behind it). `settle` waits for what is
//! queued, for a graceful stop.
use crate::door::{self, SeenKeys};
use deadpool_redis::redis;
use shared::batch::{Batcher, Limits, Round};
use shared::store::{Store, StoreError};
use std::time::Duration;

/// Reads and markers that may wait for a batch.
pub const QUEUE: usize = 4_096;
/// Reads and markers in one round trip at most.
pub const BATCH: usize = 512;
/// How long what is queued behind a batch in flight waits for it before going on its own.
pub const PATIENCE: Duration = Duration::from_millis(2);
/// Batches out at once at most.
pub const IN_FLIGHT: usize = 4;
/// The most markers this process may hold unwritten: the queue and the batches out.
/// `crate::recent::CAPACITY` exceeds it, so a key whose marker is not yet in Redis is still known.
pub const UNWRITTEN_AT_MOST: usize = QUEUE + IN_FLIGHT * BATCH;

/// The answer of one read: the id of the event first kept under its keys.
pub type Answer = Result<Option<String>, StoreError>;

/// One kept event's markers.
#[derive(Debug)]
pub struct Marker {
    pub seen: SeenKeys,
    pub event_id: String,
}

/// What one request queues.
#[derive(Debug)]
enum DoorAsk {
    /// Which event was first kept under these door keys?
    Read(Vec<String>),
    /// Remember this kept event (nobody waits for it).
    Remember(Marker),
}

/// Door reads and markers answered by one pipeline.
struct DoorRound {
    store: Store,
    ttl: Duration,
    /// The counter of markers never written.
    lost: &'static str,
}

impl Round for DoorRound {
    type Ask = DoorAsk;
    /// A read's answer; nothing for a marker.
    type Answer = Option<String>;

    async fn run(&self, asks: Vec<DoorAsk>) -> Result<Vec<Option<String>>, StoreError> {
        let secs = self.ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        let mut mget = redis::cmd("MGET");
        let (mut markers, mut reads) = (0_u64, 0_usize);
        for ask in &asks {
            match ask {
                DoorAsk::Remember(m) => {
                    door::add_remember(&mut pipe, &self.store, &m.seen, &m.event_id, secs);
                    markers += 1;
                }
                DoorAsk::Read(keys) => {
                    mget.arg(keys);
                    reads += 1;
                }
            }
        }
        let found = self.round_trip(pipe, (reads > 0).then_some(mget)).await;
        if let (Err(e), true) = (&found, markers > 0) {
            tracing::warn!(error = %e, events = markers, "cannot write the door's markers; those events lose their door dedup");
            metrics::counter!(self.lost).increment(markers);
        }
        let mut found = found?.into_iter();
        Ok(asks
            .iter()
            .map(|ask| match ask {
                DoorAsk::Remember(_) => None,
                // Its own slice of the MGET's reply, read whole so the next read starts at its
                // own (a reply shorter than the keys, never from Redis, answers what it has).
                DoorAsk::Read(keys) => found
                    .by_ref()
                    .take(keys.len())
                    .fold(None, |first, value| first.or(value)),
            })
            .collect())
    }
}

impl DoorRound {
    /// The markers and the reads' MGET, if any, in one pipeline: the MGET's reply (the last), a
    /// value or nil per key, in order; the markers' `OK`s are passed over.
    async fn round_trip(
        &self,
        mut pipe: redis::Pipeline,
        mget: Option<redis::Cmd>,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut conn = self.store.conn().await?;
        match mget {
            Some(mget) => {
                pipe.add_command(mget);
                let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                let found = replies.pop().unwrap_or(redis::Value::Nil);
                Ok(redis::from_redis_value(found).map_err(redis::RedisError::from)?)
            }
            None => {
                pipe.query_async::<()>(&mut conn).await?;
                Ok(Vec::new())
            }
        }
    }
}

/// The queue of door reads and markers and the task that batches them (started on the first).
#[derive(Debug)]
pub struct DoorRounds {
    rounds: Batcher<DoorRound>,
}

impl DoorRounds {
    /// Markers are kept for `ttl`; `lost` counts those never written.
    pub fn new(store: Store, ttl: Duration, lost: &'static str) -> Self {
        let limits = Limits {
            queue: QUEUE,
            batch: BATCH,
            patience: PATIENCE,
            in_flight: IN_FLIGHT,
        };
        Self {
            rounds: Batcher::new(DoorRound { store, ttl, lost }, limits),
        }
    }

    /// What `seen.first` answers, read in the next batch (or alone when the queue is full).
    pub async fn first(&self, seen: &SeenKeys) -> Answer {
        self.rounds.ask(DoorAsk::Read(seen.keys().to_vec())).await
    }

    /// Queues `marker` for the next batch, or hands it back when the queue is full.
    pub fn remember(&self, marker: Marker) -> Result<(), Marker> {
        match self.rounds.tell(DoorAsk::Remember(marker)) {
            Ok(()) => Ok(()),
            Err(DoorAsk::Remember(m)) => Err(m),
            Err(DoorAsk::Read(_)) => unreachable!("a marker was told"),
        }
    }

    /// Waits until every marker queued so far was written or failed, for at most `limit`.
    pub async fn settle(&self, limit: Duration) {
        if !self.rounds.settle(limit).await {
            tracing::warn!(
                ?limit,
                "door markers still queued at the stop; their dedup is lost"
            );
        }
    }
}

#[cfg(test)]
mod tests;
