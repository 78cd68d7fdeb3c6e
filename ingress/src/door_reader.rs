//! Reading the door's markers for many requests at once: every request that is not answered by
//! this process's memory (`crate::recent`) asks Redis which event was first kept under its door
//! keys (`crate::door::SeenKeys::first`, one MGET). Here the reads queued at the same time go as
//! one MGET (`shared::batch`: never waiting to fill a batch, reads queued behind a batch in
//! flight going when it is answered or after `PATIENCE`), and each request gets the answer its
//! own keys got: exactly what the direct read would have given it, the first event found under
//! its keys, or the batch's error (the connection, the pool, Redis refusing the MGET, which it
//! would have refused for the request alone too). What an error means is the caller's
//! business. Concurrent requests share one command, one round trip, one write and one read of
//! the socket (what that saves is measured in docs/PERFORMANCE.md, "Issue 18, fourth round").
//!
//! Bounded: at most `QUEUE` reads wait; past that a read goes alone, at once. The batching task
//! ends when the reader is dropped and every batch in flight was answered; nothing waits for
//! it at a stop.
use crate::door::SeenKeys;
use deadpool_redis::redis;
use shared::batch::{Batcher, Limits, Round};
use shared::store::{Store, StoreError};
use std::time::Duration;

/// Reads that may wait for a batch.
pub const QUEUE: usize = 4_096;
/// Reads in one MGET at most (each has one or two keys).
pub const BATCH: usize = 256;
/// How long reads queued behind a batch in flight wait for it before they go in one of their own.
pub const PATIENCE: Duration = Duration::from_millis(2);

/// The answer of one read: the id of the event first kept under its keys.
pub type Answer = Result<Option<String>, StoreError>;

/// Door reads answered by one MGET.
struct DoorReads(Store);

impl Round for DoorReads {
    /// One request's door keys.
    type Ask = Vec<String>;
    type Answer = Option<String>;

    /// The reads' keys in one MGET, in order; every read gets the first event found under its
    /// own keys (its slice of the reply, which has a value or nil per key, in order).
    async fn run(&self, reads: Vec<Vec<String>>) -> Result<Vec<Option<String>>, StoreError> {
        let mut mget = redis::cmd("MGET");
        for keys in &reads {
            mget.arg(keys);
        }
        let mut conn = self.0.conn().await?;
        let found: Vec<Option<String>> = mget.query_async(&mut conn).await?;
        let mut found = found.into_iter();
        Ok(reads
            .iter()
            // Its own slice, read whole so the next read starts at its own (a reply shorter than
            // the keys, never from Redis, answers what it has).
            .map(|keys| {
                found
                    .by_ref()
                    .take(keys.len())
                    .fold(None, |first, value| first.or(value))
            })
            .collect())
    }
}

/// The queue of door reads and the task that batches them (started on the first read).
#[derive(Debug)]
pub struct DoorReader {
    reads: Batcher<DoorReads>,
}

impl DoorReader {
    pub fn new(store: Store) -> Self {
        let limits = Limits {
            queue: QUEUE,
            batch: BATCH,
            patience: PATIENCE,
        };
        Self {
            reads: Batcher::new(DoorReads(store), limits),
        }
    }

    /// What `seen.first` answers, read in the next batch (or alone when the queue is full).
    pub async fn first(&self, seen: &SeenKeys) -> Answer {
        self.reads.ask(seen.keys().to_vec()).await
    }
}

#[cfg(test)]
mod tests;
