//! Reading the door's markers for many requests at once: every request that is not answered by
//! this process's memory (`crate::recent`) asks Redis which event was first kept under its door
//! keys (`crate::door::SeenKeys::first`, one MGET). Here one task takes whatever reads are queued
//! and sends all their keys as one MGET, then hands each request the answer its own keys got, so
//! that concurrent requests share one command, one round trip, one write and one read of the
//! socket (what that saves is measured in docs/PERFORMANCE.md, "Issue 18, fourth round").
//!
//! It never waits to fill a batch: a read queued while nothing is in flight goes at once, alone.
//! Reads queued while a batch is in flight go together when it is answered, or after `PATIENCE`
//! if it is still out then (a Redis that stalls delays a read by that much, not by another whole
//! round trip). Each answer is exactly what the direct read would have given the request: the
//! first event found under its own keys, or the batch's error (the connection, the pool, Redis
//! refusing the MGET, which it would have refused for the request alone too). What an error means
//! is the caller's business, as it is for the direct read.
//!
//! Bounded: at most `QUEUE` reads wait; past that (and if the task is gone) a request reads
//! directly. The task ends when the reader is dropped and every batch in flight was answered;
//! nothing waits for it at a stop.
use crate::door::SeenKeys;
use deadpool_redis::redis;
use futures_util::stream::{FuturesUnordered, StreamExt};
use shared::store::{Store, StoreError};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Reads that may wait for a batch.
pub const QUEUE: usize = 4_096;
/// Reads in one MGET at most (each has one or two keys).
pub const BATCH: usize = 256;
/// How long reads queued behind a batch in flight wait for it before they go in one of their own.
pub const PATIENCE: Duration = Duration::from_millis(2);

/// The answer of one read: the id of the event first kept under its keys.
pub type Answer = Result<Option<String>, StoreError>;

/// One request's read: its door keys and where its answer goes.
#[derive(Debug)]
struct Read {
    keys: Vec<String>,
    answer: oneshot::Sender<Answer>,
}

/// The queue of reads and the task that batches them (started on the first read).
#[derive(Debug)]
pub struct DoorReader {
    store: Store,
    queue: OnceLock<mpsc::Sender<Read>>,
}

impl DoorReader {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            queue: OnceLock::new(),
        }
    }

    /// What `seen.first` answers, read in the next batch (or directly when the queue is full).
    pub async fn first(&self, seen: &SeenKeys) -> Answer {
        match self.ask(seen) {
            Some(answer) => match answer.await {
                Ok(answer) => answer,
                // The task is gone (the runtime is stopping): ask Redis directly.
                Err(_) => seen.first(&self.store).await,
            },
            None => seen.first(&self.store).await,
        }
    }

    /// Queues `seen`'s read, or says no when the queue is full.
    fn ask(&self, seen: &SeenKeys) -> Option<oneshot::Receiver<Answer>> {
        let (answer, answered) = oneshot::channel();
        let read = Read {
            keys: seen.keys().to_vec(),
            answer,
        };
        self.sender().try_send(read).ok().map(|()| answered)
    }

    fn sender(&self) -> &mpsc::Sender<Read> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(batch(self.store.clone(), rx));
            tx
        })
    }
}

/// Sends the queued reads in batches (see the module's paragraph) until the reader is dropped
/// and every batch in flight was answered.
async fn batch(store: Store, mut rx: mpsc::Receiver<Read>) {
    let mut in_flight = FuturesUnordered::new();
    let mut queued: Vec<Read> = Vec::with_capacity(BATCH);
    // When the last batch went, and the timer that ends the patience of the reads behind it
    // (set only when reads do wait behind one: an idle read never touches it).
    let mut sent_at = Instant::now();
    let patience = tokio::time::sleep(PATIENCE);
    tokio::pin!(patience);
    let mut open = true;
    loop {
        if !queued.is_empty() && (in_flight.is_empty() || sent_at + PATIENCE <= Instant::now()) {
            let (mget, answers) = one_mget(queued.drain(..));
            in_flight.push(answer(&store, mget, answers));
            sent_at = Instant::now();
        }
        if !open && queued.is_empty() && in_flight.is_empty() {
            break;
        }
        let waiting = !queued.is_empty() && !in_flight.is_empty();
        if waiting && patience.deadline() != sent_at + PATIENCE {
            patience.as_mut().reset(sent_at + PATIENCE);
        }
        let room = BATCH - queued.len();
        tokio::select! {
            // Answers first: they free the requests that waited longest.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            n = rx.recv_many(&mut queued, room), if open && room > 0 => open = n > 0,
            () = &mut patience, if waiting => {}
            // Never: with nothing to wait for, the loop has ended above.
            else => break,
        }
    }
}

/// The reads' keys in one MGET, in order, and each read's answer with how many keys it has.
fn one_mget(
    reads: impl Iterator<Item = Read>,
) -> (redis::Cmd, Vec<(usize, oneshot::Sender<Answer>)>) {
    let mut mget = redis::cmd("MGET");
    let mut answers = Vec::with_capacity(reads.size_hint().0);
    for read in reads {
        mget.arg(&read.keys);
        answers.push((read.keys.len(), read.answer));
    }
    (mget, answers)
}

/// One batch's round trip: every read gets the first event found under its own keys (its slice
/// of the reply, which has a value or nil per key, in order), or the round trip's error.
async fn answer(store: &Store, mget: redis::Cmd, answers: Vec<(usize, oneshot::Sender<Answer>)>) {
    match round_trip(store, &mget).await {
        Ok(found) => {
            let mut found = found.into_iter();
            for (keys, answer) in answers {
                // Its own slice, read whole so the next read starts at its own (a reply shorter
                // than the keys, never from Redis, answers what it has).
                let first = found
                    .by_ref()
                    .take(keys)
                    .fold(None, |first, value| first.or(value));
                let _ = answer.send(Ok(first));
            }
        }
        Err(e) => {
            for (_, answer) in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

async fn round_trip(store: &Store, mget: &redis::Cmd) -> Result<Vec<Option<String>>, StoreError> {
    let mut conn = store.conn().await?;
    Ok(mget.query_async(&mut conn).await?)
}

#[cfg(test)]
mod tests;
