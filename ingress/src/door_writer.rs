//! Writing the door's markers behind the answer: once the broker confirmed an event, its door
//! keys and its `event:{id}` record (`crate::door::SeenKeys::remember`) go to a queue, and one
//! task writes whatever is queued as one Redis pipeline (`crate::door::remember_all`), so no
//! request waits for that round trip and many events share one. A marker that is never written
//! (Redis down, the process killed with markers queued) only loses a door dedup: a retry that
//! reaches another process before the marker did is enqueued again and the worker's idempotency
//! record answers it; this process still knows the event (`crate::recent`).
//!
//! Bounded: at most `QUEUE` events wait; past that, `queue` hands the marker back and the caller
//! writes it itself (the answer waits, as it did before). `settle` waits for what is queued, for a
//! graceful stop.
use crate::door::{self, SeenKeys};
use shared::store::Store;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Events whose markers may wait unwritten.
pub const QUEUE: usize = 4_096;
/// Events written in one pipeline at most.
pub const BATCH: usize = 512;

/// One kept event's markers.
#[derive(Debug)]
pub struct Marker {
    pub seen: SeenKeys,
    pub event_id: String,
}

#[derive(Debug)]
enum Job {
    Write(Marker),
    /// Answered once everything queued before it was written (or failed).
    Settle(oneshot::Sender<()>),
}

/// The queue and the task that drains it (started on the first marker).
#[derive(Debug)]
pub struct DoorWriter {
    store: Store,
    ttl: Duration,
    /// The counter of markers never written.
    lost: &'static str,
    queue: OnceLock<mpsc::Sender<Job>>,
}

impl DoorWriter {
    pub fn new(store: Store, ttl: Duration, lost: &'static str) -> Self {
        Self {
            store,
            ttl,
            lost,
            queue: OnceLock::new(),
        }
    }

    /// Queues `marker` for the next pipeline, or hands it back when the queue is full.
    pub fn queue(&self, marker: Marker) -> Result<(), Marker> {
        match self.sender().try_send(Job::Write(marker)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Job::Write(m)))
            | Err(mpsc::error::TrySendError::Closed(Job::Write(m))) => Err(m),
            Err(_) => unreachable!("only a write was sent"),
        }
    }

    /// Waits until every marker queued so far was written or failed, for at most `limit`.
    pub async fn settle(&self, limit: Duration) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let (done, settled) = oneshot::channel();
        let asked = tokio::time::timeout(limit, async {
            if queue.send(Job::Settle(done)).await.is_ok() {
                let _ = settled.await;
            }
        });
        if asked.await.is_err() {
            tracing::warn!(
                ?limit,
                "door markers still queued at the stop; their dedup is lost"
            );
        }
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(drain(self.store.clone(), self.ttl, self.lost, rx));
            tx
        })
    }
}

/// Writes the queue's markers, up to `BATCH` events per pipeline, until every sender is gone.
async fn drain(store: Store, ttl: Duration, lost: &'static str, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut jobs, BATCH).await > 0 {
        let markers = jobs.iter().filter_map(|job| match job {
            Job::Write(m) => Some((&m.seen, m.event_id.as_str())),
            Job::Settle(_) => None,
        });
        let events = markers.clone().count();
        if events > 0 {
            if let Err(e) = door::remember_all(&store, markers, ttl).await {
                tracing::warn!(error = %e, events, "cannot write the door's markers; those events lose their door dedup");
                metrics::counter!(lost).increment(events as u64);
            }
        }
        for job in jobs.drain(..) {
            if let Job::Settle(done) = job {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::test_store as store;
    use deadpool_redis::redis;

    fn marker(store: &Store, i: usize) -> Marker {
        Marker {
            seen: SeenKeys::of(store, "src", &format!("d-{i}"), None),
            event_id: format!("e-{i}"),
        }
    }

    #[tokio::test]
    async fn markers_queued_are_written_to_redis_in_the_background() {
        let prefix = format!("test-door-writer-{}", uuid::Uuid::now_v7());
        let store = store("redis://127.0.0.1:6379", &prefix);
        let writer = DoorWriter::new(store.clone(), Duration::from_secs(60), "lost");
        for i in 0..3 {
            writer.queue(marker(&store, i)).expect("queued");
        }
        writer.settle(Duration::from_secs(10)).await;
        for i in 0..3 {
            let first = marker(&store, i).seen.first(&store).await.expect("redis");
            assert_eq!(first, Some(format!("e-{i}")));
        }
        // And each event's record under its id, for the console.
        let mut conn = store.conn().await.expect("redis");
        let mut keys = Vec::new();
        for i in 0..3 {
            let event = store.key(&["event", &format!("e-{i}")]);
            let record: Option<String> = redis::cmd("GET")
                .arg(&event)
                .query_async(&mut conn)
                .await
                .expect("GET");
            assert!(record.is_some_and(|r| r.contains(&format!("d-{i}"))));
            keys.push(event);
            keys.extend(marker(&store, i).seen.keys().iter().cloned());
        }
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }

    #[tokio::test]
    async fn with_redis_away_queueing_never_waits_and_the_loss_is_only_counted() {
        // Nothing listens on port 1: every write fails.
        let store = store("redis://127.0.0.1:1", "test-door-writer-away");
        let writer = DoorWriter::new(store.clone(), Duration::from_secs(60), "lost");
        let queued = tokio::time::timeout(Duration::from_millis(100), async {
            for i in 0..10 {
                writer.queue(marker(&store, i)).expect("queued");
            }
        });
        queued.await.expect("queueing does not wait for Redis");
        writer.settle(Duration::from_secs(30)).await;
    }

    #[tokio::test]
    async fn a_full_queue_hands_the_marker_back() {
        let store = store("redis://127.0.0.1:1", "test-door-writer-full");
        let writer = DoorWriter::new(store.clone(), Duration::from_secs(60), "lost");
        // On a current-thread runtime the drain task does not run before this loop yields.
        let mut handed_back = 0;
        for i in 0..QUEUE + 5 {
            if writer.queue(marker(&store, i)).is_err() {
                handed_back += 1;
            }
        }
        assert_eq!(handed_back, 5);
    }
}
