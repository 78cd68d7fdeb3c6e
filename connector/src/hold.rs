//! Events of a source whose platform neither acks nor redelivers (Discord's Gateway) that the
//! broker could not take when they arrived: held in this process's memory, in the order they
//! were refused (events in flight are kept concurrently, so not quite arrival order),
//! and published again (door dedup first, then publish with confirm) until the broker takes
//! them, one at a time with a backoff, whatever becomes of the connection they came on. The
//! hold is bounded (`[connector] hold_limit` events per source): an event arriving at a full
//! hold is lost, with an error in the log and `switchboard_connector_lost_total{reason =
//! "hold_full"}`. It is memory: a process that dies holding events loses them, and one that
//! stops makes one last attempt and logs what it could not keep (`reason = "shutdown"`).
use crate::backoff::Backoff;
use ingress::keep::{KeepOutcome, Keeper};
use ingress::platform::NewEvent;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Keeps one event: what the hold retries.
pub(crate) trait Keep: Send + Sync + 'static {
    fn keep(&self, event: NewEvent) -> Pin<Box<dyn Future<Output = KeepOutcome> + Send + '_>>;
}

/// The ingress's keeper, for one source.
pub(crate) struct SourceKeeper {
    pub keeper: Keeper,
    pub source: String,
    pub platform: &'static str,
}

impl Keep for SourceKeeper {
    fn keep(&self, event: NewEvent) -> Pin<Box<dyn Future<Output = KeepOutcome> + Send + '_>> {
        Box::pin(self.keeper.keep(&self.source, self.platform, event, None))
    }
}

/// Where a source's unkept events wait.
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    source: String,
    tx: mpsc::Sender<NewEvent>,
}

fn lost(source: &str, reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("switchboard_connector_lost_total", "source" => source.to_owned(), "reason" => reason)
            .increment(n as u64);
    }
}

fn held(source: &str, delta: f64) {
    metrics::gauge!("switchboard_connector_held", "source" => source.to_owned()).increment(delta);
}

impl Hold {
    /// A hold of at most `limit` events, served until `stop` (then one last attempt) by the
    /// task returned, which retries after `backoff`.
    pub fn start(
        source: &str,
        keep: Arc<dyn Keep>,
        limit: usize,
        backoff: Backoff,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(limit.max(1));
        let task = tokio::spawn(serve(source.to_owned(), rx, keep, backoff, stop));
        (
            Self {
                source: source.to_owned(),
                tx,
            },
            task,
        )
    }

    /// Holds an event the broker did not take; false if it could not be held (lost).
    pub fn put(&self, event: NewEvent) -> bool {
        let dedup_key = event.dedup_key.clone();
        match self.tx.try_send(event) {
            Ok(()) => {
                held(&self.source, 1.0);
                tracing::warn!(source = %self.source, %dedup_key, "the broker did not take the event; held in memory and published again until it does");
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                lost(&self.source, "hold_full", 1);
                tracing::error!(source = %self.source, %dedup_key, limit = self.tx.max_capacity(),
                    "LOST: the broker cannot take events and the hold is full; this message will not be answered");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                lost(&self.source, "shutdown", 1);
                tracing::error!(source = %self.source, %dedup_key, "LOST: the broker did not take the event and the connector is stopping");
                false
            }
        }
    }
}

async fn serve(
    source: String,
    mut rx: mpsc::Receiver<NewEvent>,
    keep: Arc<dyn Keep>,
    mut backoff: Backoff,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            _ = stop.cancelled() => None,
        };
        let Some(event) = event else { break };
        loop {
            match keep.keep(event.clone()).await {
                KeepOutcome::New | KeepOutcome::Duplicate => {
                    held(&source, -1.0);
                    backoff.reset();
                    tracing::info!(source, dedup_key = %event.dedup_key, "a held event was kept");
                    break;
                }
                KeepOutcome::NotKept if stop.is_cancelled() => {
                    rx.close();
                    let left = 1 + drain(&mut rx);
                    give_up(&source, left);
                    return;
                }
                KeepOutcome::NotKept => {
                    let wait = backoff.next_wait();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        }
    }
    // Stopping: one last attempt for what is left, while the broker takes them.
    rx.close();
    while let Some(event) = rx.recv().await {
        match keep.keep(event).await {
            KeepOutcome::New | KeepOutcome::Duplicate => held(&source, -1.0),
            KeepOutcome::NotKept => {
                let left = 1 + drain(&mut rx);
                give_up(&source, left);
                return;
            }
        }
    }
}

fn drain(rx: &mut mpsc::Receiver<NewEvent>) -> usize {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

fn give_up(source: &str, n: usize) {
    held(source, -(n as f64));
    lost(source, "shutdown", n);
    tracing::error!(
        source,
        events = n,
        "LOST: stopping while the broker cannot take held events; they will not be answered"
    );
}

/// The retry schedule of a hold: the connector's backoff, at most 10 s apart.
pub(crate) fn backoff(initial: Duration, max: Duration) -> Backoff {
    Backoff::new(initial, max.min(Duration::from_secs(10)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use shared::envelope::{ChatType, Conversation};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Refuses the first `fail` attempts, then keeps; records what it kept, in order.
    struct Flaky {
        fail: AtomicUsize,
        kept: Mutex<Vec<String>>,
    }

    impl Keep for Flaky {
        fn keep(&self, e: NewEvent) -> Pin<Box<dyn Future<Output = KeepOutcome> + Send + '_>> {
            Box::pin(async move {
                if self
                    .fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return KeepOutcome::NotKept;
                }
                self.kept.lock().unwrap().push(e.dedup_key);
                KeepOutcome::New
            })
        }
    }

    fn flaky(fail: usize) -> Arc<Flaky> {
        Arc::new(Flaky {
            fail: AtomicUsize::new(fail),
            kept: Mutex::default(),
        })
    }

    fn event(key: &str) -> NewEvent {
        NewEvent {
            dedup_key: key.into(),
            kind: "message".into(),
            conversation: Conversation {
                chat_id: "c".into(),
                chat_type: ChatType::Single,
                sender_id: "u".into(),
                sender_name: None,
                thread_id: None,
            },
            text: "hi".into(),
            reply: None,
            payload: serde_json::Value::Null,
        }
    }

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(5), Duration::from_millis(20))
    }

    #[tokio::test]
    async fn held_events_are_kept_in_order_once_the_broker_takes_them() {
        let keep = flaky(5);
        let stop = CancellationToken::new();
        let (hold, task) = Hold::start("s", keep.clone(), 10, quick(), stop.clone());
        for k in ["a", "b", "c"] {
            hold.put(event(k));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while keep.kept.lock().unwrap().len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "not kept");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*keep.kept.lock().unwrap(), ["a", "b", "c"]);
        assert_eq!(keep.fail.load(Ordering::SeqCst), 0, "retried until kept");
        stop.cancel();
        task.await.unwrap();
        // After the stop nothing more is taken.
        hold.put(event("late"));
        assert_eq!(keep.kept.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_full_hold_loses_the_newest_and_a_stop_makes_one_last_attempt() {
        let keep = flaky(usize::MAX);
        let stop = CancellationToken::new();
        let (hold, task) = Hold::start("s", keep.clone(), 2, quick(), stop.clone());
        // One taken out to retry, two waiting: the fourth finds the hold full.
        assert!(hold.put(event("a")));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(hold.put(event("b")));
        assert!(hold.put(event("c")));
        assert!(!hold.put(event("d")), "lost: the hold is full");
        stop.cancel();
        task.await.unwrap();
        assert!(keep.kept.lock().unwrap().is_empty());
        assert!(!hold.put(event("e")), "lost: stopped");

        // The broker back while the hold waits to retry, then the stop: the last attempt keeps
        // what waits.
        let keep = flaky(1);
        let stop = CancellationToken::new();
        let slow = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let (hold, task) = Hold::start("s", keep.clone(), 4, slow, stop.clone());
        hold.put(event("x"));
        hold.put(event("y"));
        while keep.fail.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the stop does not wait out the backoff")
            .unwrap();
        assert_eq!(*keep.kept.lock().unwrap(), ["x", "y"]);
    }
}
