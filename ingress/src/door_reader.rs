//! Reading the door's markers for many requests at once: every request that is not answered by
//! this process's memory (`crate::recent`) asks Redis which event was first kept under its door
//! keys (`crate::door::SeenKeys::first`, one MGET). Here one task takes whatever reads are queued
//! and sends them as one pipeline of MGETs, then hands each request its own answer, so that
//! concurrent requests share one round trip, one write and one read of the socket.
//!
//! It never waits to fill a batch: a read queued while nothing is in flight goes at once, alone.
//! Reads queued while a batch is in flight go together when it is answered, or after `PATIENCE`
//! if it is still out then (a Redis that stalls delays a read by that much, not by another whole
//! round trip). Each answer is exactly what the direct read would have given the request: its
//! own MGET's reply or error, or the round trip's error (the connection, the pool). What an error
//! means is the caller's business, as it is for the direct read.
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
/// Reads in one pipeline at most.
pub const BATCH: usize = 256;
/// How long reads queued behind a batch in flight wait for it before they go in one of their own.
pub const PATIENCE: Duration = Duration::from_millis(2);

/// The answer of one read: the id of the event first kept under its keys.
pub type Answer = Result<Option<String>, StoreError>;

/// One request's read: its MGET and where its answer goes.
#[derive(Debug)]
struct Read {
    mget: redis::Cmd,
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
            mget: seen.mget(),
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
            let mut pipe = redis::Pipeline::with_capacity(queued.len());
            // Each MGET's own error goes to its own request, as a direct read would give it.
            pipe.ignore_errors();
            let mut answers = Vec::with_capacity(queued.len());
            for read in queued.drain(..) {
                pipe.add_command(read.mget);
                answers.push(read.answer);
            }
            in_flight.push(answer(&store, pipe, answers));
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

/// One batch's round trip: every read gets its own MGET's reply or error, or the round trip's.
async fn answer(store: &Store, pipe: redis::Pipeline, answers: Vec<oneshot::Sender<Answer>>) {
    match round_trip(store, &pipe).await {
        Ok(replies) => {
            // A reply missing (never, from Redis) drops its sender: that request reads directly.
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = answer.send(reply.map(SeenKeys::first_found).map_err(StoreError::from));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

type Replies = Vec<redis::RedisResult<Vec<Option<String>>>>;

async fn round_trip(store: &Store, pipe: &redis::Pipeline) -> Result<Replies, StoreError> {
    let mut conn = store.conn().await?;
    Ok(pipe.query_async(&mut conn).await?)
}

#[cfg(test)]
mod tests;
