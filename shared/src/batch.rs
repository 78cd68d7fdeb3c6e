//! Many small Redis requests as one round trip: the tasks that ask (requests at the ingress,
//! deliveries at the dispatcher) queue their asks, and one task sends whatever is queued as one
//! command or pipeline ([`Round::run`]), then hands each ask the answer it got. Concurrent asks
//! share one command, one write and one read of the socket, and wake the connection's task once
//! rather than once each (what that saves is measured in docs/PERFORMANCE.md, "Issue 18, fourth
//! round" for the ingress's door reads and "eighth round" for the dispatcher's marks).
//!
//! It never waits to fill a batch: an ask queued while nothing is in flight goes at once, alone.
//! Asks queued while a batch is in flight go together when it is answered, or after the patience
//! if it is still out then (a Redis that stalls delays an ask by that much, not by another whole
//! round trip). Each answer is exactly what the ask alone would have got from the same command,
//! or the batch's error (the connection, the pool, Redis refusing the command), which it would
//! have got alone too. What an error means is the caller's business.
//!
//! An ask may also be told rather than asked ([`Batcher::tell`]): it goes in the next batch like
//! any other, and nobody waits for its answer (the ingress's door markers, written behind the
//! answer to the platform); [`Batcher::settle`] waits until everything queued before it was
//! sent and answered, for a graceful stop.
//!
//! Bounded: at most `queue` asks wait and `in_flight` batches are out; past that an ask runs
//! alone, at once, and a told one is handed back. The task starts on the first ask and ends
//! when the batcher is dropped and every batch in flight was answered; nothing else waits for
//! it at a stop.
use crate::store::StoreError;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One kind of request that can share a round trip with others of its kind.
pub trait Round: Send + Sync + 'static {
    /// What one caller asks.
    type Ask: Send + 'static;
    /// What it gets back.
    type Answer: Send + 'static;
    /// Sends `asks` as one round trip: one answer per ask, in order, or one error for them all.
    fn run(
        &self,
        asks: Vec<Self::Ask>,
    ) -> impl Future<Output = Result<Vec<Self::Answer>, StoreError>> + Send;
}

/// How a batcher bounds its queue and its batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Asks that may wait for a batch; past that an ask runs alone.
    pub queue: usize,
    /// Asks in one round trip at most.
    pub batch: usize,
    /// How long asks queued behind a batch in flight wait for it before they go on their own.
    pub patience: Duration,
    /// Batches in flight at most: past that, asks wait for an answer however long it takes
    /// (and the queue, filling, sends new asks to round trips of their own).
    pub in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue: 4_096,
            batch: 256,
            patience: Duration::from_millis(2),
            in_flight: 4,
        }
    }
}

type Answer<R> = Result<<R as Round>::Answer, StoreError>;

/// One ask and where its answer goes (nowhere for an ask told).
struct Queued<R: Round> {
    ask: R::Ask,
    answer: Option<oneshot::Sender<Answer<R>>>,
}

/// What reaches the batching task.
enum Message<R: Round> {
    Ask(Queued<R>),
    /// Answered once every ask queued before it was sent and answered.
    Settle(oneshot::Sender<()>),
}

/// The queue of asks and the task that batches them (started on the first ask).
pub struct Batcher<R: Round> {
    round: Arc<R>,
    limits: Limits,
    queue: OnceLock<mpsc::Sender<Message<R>>>,
}

impl<R: Round> std::fmt::Debug for Batcher<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<R: Round> Batcher<R> {
    pub fn new(round: R, limits: Limits) -> Self {
        Self {
            round: Arc::new(round),
            limits: Limits {
                queue: limits.queue.max(1),
                batch: limits.batch.max(1),
                patience: limits.patience,
                in_flight: limits.in_flight.max(1),
            },
            queue: OnceLock::new(),
        }
    }

    /// The answer to `ask`, from the next batch (or from a round trip of its own when the queue
    /// is full). An error when the round trip failed, or when the batching task was gone before
    /// it answered (the runtime stopping).
    pub async fn ask(&self, ask: R::Ask) -> Answer<R> {
        let (answer, answered) = oneshot::channel();
        match self.enqueue(ask, Some(answer)) {
            Ok(()) => answered.await.unwrap_or_else(|_| {
                Err(StoreError::Pool(
                    "the batch was dropped before it was answered".into(),
                ))
            }),
            Err(ask) => one(&*self.round, ask).await,
        }
    }

    /// Queues `ask` for the next batch without waiting for its answer (what the round trip
    /// says of it, an error too, is the `Round`'s to record); hands it back when the queue is
    /// full, for the caller to run it some other way.
    pub fn tell(&self, ask: R::Ask) -> Result<(), R::Ask> {
        self.enqueue(ask, None)
    }

    /// Queues `ask` with where its answer goes; hands it back when the queue is full (or the
    /// task is gone).
    fn enqueue(
        &self,
        ask: R::Ask,
        answer: Option<oneshot::Sender<Answer<R>>>,
    ) -> Result<(), R::Ask> {
        match self.sender().try_send(Message::Ask(Queued { ask, answer })) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                match m {
                    Message::Ask(q) => Err(q.ask),
                    Message::Settle(_) => unreachable!("an ask was sent"),
                }
            }
        }
    }

    /// Waits until every ask queued so far was sent and answered (or its round trip failed),
    /// for at most `limit`: whether it was.
    pub async fn settle(&self, limit: Duration) -> bool {
        let Some(queue) = self.queue.get() else {
            return true;
        };
        let (done, settled) = oneshot::channel();
        let asked =
            async { queue.send(Message::Settle(done)).await.is_ok() && settled.await.is_ok() };
        tokio::time::timeout(limit, asked).await.unwrap_or(false)
    }

    fn sender(&self) -> &mpsc::Sender<Message<R>> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.limits.queue);
            tokio::spawn(batch(self.round.clone(), self.limits, rx));
            tx
        })
    }
}

/// `ask` in a round trip of its own.
async fn one<R: Round>(round: &R, ask: R::Ask) -> Answer<R> {
    let mut answers = round.run(vec![ask]).await?;
    answers.pop().ok_or_else(short)
}

fn short() -> StoreError {
    StoreError::Pool("the round trip answered fewer asks than it was sent".into())
}

/// Sends the queued asks in batches (see the module's paragraph) until the batcher is dropped
/// and every batch in flight was answered.
async fn batch<R: Round>(round: Arc<R>, limits: Limits, mut rx: mpsc::Receiver<Message<R>>) {
    let mut in_flight = FuturesUnordered::new();
    let mut queued: Vec<Queued<R>> = Vec::with_capacity(limits.batch);
    let mut received: Vec<Message<R>> = Vec::with_capacity(limits.batch);
    // Batches are numbered from 1 as they go; those not yet answered, and the settles waiting,
    // each for the batch that holds the last ask queued before it.
    let mut sent = 0_u64;
    let mut out = BTreeSet::new();
    let mut settles: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    // When the last batch went, and the timer that ends the patience of the asks behind it (set
    // only when asks do wait behind one: an idle ask never touches it).
    let mut sent_at = Instant::now();
    let patience = tokio::time::sleep(limits.patience);
    tokio::pin!(patience);
    let mut open = true;
    loop {
        for message in received.drain(..) {
            match message {
                Message::Ask(q) => queued.push(q),
                Message::Settle(done) => {
                    settles.push((sent + u64::from(!queued.is_empty()), done));
                }
            }
        }
        if !queued.is_empty()
            && in_flight.len() < limits.in_flight
            && (in_flight.is_empty() || sent_at + limits.patience <= Instant::now())
        {
            // Sized to the batch; the queue keeps its room for the next one.
            let mut batch = Vec::with_capacity(queued.len());
            batch.append(&mut queued);
            sent += 1;
            out.insert(sent);
            in_flight.push(answer(round.clone(), sent, batch));
            sent_at = Instant::now();
        }
        if !settles.is_empty() {
            // Settled: its batch went, and neither it nor any before it is still out.
            let oldest_out = out.first().copied().unwrap_or(u64::MAX);
            let (settled, still): (Vec<_>, Vec<_>) = settles
                .drain(..)
                .partition(|(last, _)| *last <= sent && *last < oldest_out);
            settles = still;
            for (_, done) in settled {
                let _ = done.send(());
            }
        }
        if !open && queued.is_empty() && in_flight.is_empty() {
            break;
        }
        let waiting =
            !queued.is_empty() && !in_flight.is_empty() && in_flight.len() < limits.in_flight;
        if waiting && patience.deadline() != sent_at + limits.patience {
            patience.as_mut().reset(sent_at + limits.patience);
        }
        let room = limits.batch - queued.len();
        tokio::select! {
            // Answers first: they free the asks that waited longest.
            biased;
            Some(answered) = in_flight.next(), if !in_flight.is_empty() => {
                out.remove(&answered);
            }
            n = rx.recv_many(&mut received, room), if open && room > 0 => open = n > 0,
            () = &mut patience, if waiting => {}
            // Never: with nothing to wait for, the loop has ended above.
            else => break,
        }
    }
}

/// One batch's round trip: every ask gets its own answer, in order, or the round trip's error.
/// Says which batch (`number`) was answered.
async fn answer<R: Round>(round: Arc<R>, number: u64, queued: Vec<Queued<R>>) -> u64 {
    let (asks, answers): (Vec<_>, Vec<_>) = queued.into_iter().map(|q| (q.ask, q.answer)).unzip();
    match round.run(asks).await {
        Ok(got) => {
            let mut got = got.into_iter();
            for answer in answers {
                let got = got.next().ok_or_else(short);
                if let Some(answer) = answer {
                    let _ = answer.send(got);
                }
            }
        }
        Err(e) => {
            for answer in answers.into_iter().flatten() {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
    number
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures_util::future::join_all;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Doubles numbers; records every batch it was sent; refuses a batch holding `REFUSED`;
    /// answers one short for a batch holding `SHORT`.
    const REFUSED: u32 = 10_013;
    const SHORT: u32 = 10_099;

    #[derive(Default)]
    struct Double {
        batches: Mutex<Vec<Vec<u32>>>,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    impl Round for Arc<Double> {
        type Ask = u32;
        type Answer = u32;
        async fn run(&self, asks: Vec<u32>) -> Result<Vec<u32>, StoreError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            self.batches.lock().unwrap().push(asks.clone());
            tokio::task::yield_now().await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if asks.contains(&REFUSED) {
                return Err(StoreError::Pool("refused".into()));
            }
            let mut out: Vec<u32> = asks.iter().map(|a| a * 2).collect();
            if asks.contains(&SHORT) {
                out.pop();
            }
            Ok(out)
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn concurrent_asks_share_a_round_trip_and_each_gets_its_own_answer() {
        let double = Arc::new(Double::default());
        let batcher = Batcher::new(double.clone(), Limits::default());
        // On this current-thread runtime every ask is queued before the batching task runs.
        let answers = tokio::time::timeout(T, join_all((0..300).map(|i| batcher.ask(i))))
            .await
            .expect("answered");
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..300).map(|i| i * 2).collect::<Vec<_>>());
        let batches = double.batches.lock().unwrap().clone();
        // 300 asks, at most 256 a batch: two round trips, in the order asked.
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[0].len(), 256);
        assert_eq!(batches.concat(), (0..300).collect::<Vec<_>>());
        assert_eq!(double.most_at_once.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_lone_ask_goes_at_once() {
        let batcher = Batcher::new(Arc::new(Double::default()), Limits::default());
        let started = std::time::Instant::now();
        assert_eq!(batcher.ask(21).await.unwrap(), 42);
        // Far below any fill timer: nothing waited for company.
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_refused_round_trip_fails_its_batch_only() {
        let double = Arc::new(Double::default());
        let batcher = Batcher::new(double.clone(), Limits::default());
        let answers = tokio::time::timeout(T, join_all([12, REFUSED, 14].map(|i| batcher.ask(i))))
            .await
            .expect("answered");
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
        // The next batch is unaffected.
        assert_eq!(batcher.ask(7).await.unwrap(), 14);
    }

    #[tokio::test]
    async fn an_ask_left_without_an_answer_is_an_error_not_a_hang() {
        let batcher = Batcher::new(Arc::new(Double::default()), Limits::default());
        let answers = tokio::time::timeout(T, join_all([1, SHORT].map(|i| batcher.ask(i))))
            .await
            .expect("answered");
        assert_eq!(answers[0].as_ref().unwrap(), &2);
        assert!(answers[1].is_err());
    }

    #[tokio::test]
    async fn past_the_queue_an_ask_runs_alone() {
        let double = Arc::new(Double::default());
        let limits = Limits {
            queue: 2,
            ..Limits::default()
        };
        let batcher = Batcher::new(double.clone(), limits);
        let answers = tokio::time::timeout(T, join_all((0..5).map(|i| batcher.ask(i))))
            .await
            .expect("answered");
        assert!(answers.iter().all(Result::is_ok));
        let batches = double.batches.lock().unwrap().clone();
        // Two queued, together; three ran alone.
        let mut sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![1, 1, 1, 2], "{batches:?}");
    }

    #[tokio::test]
    async fn a_told_ask_goes_in_the_next_batch_and_settle_waits_for_it() {
        let double = Arc::new(Double::default());
        let batcher = Batcher::new(double.clone(), Limits::default());
        // Nothing queued yet: settled at once.
        assert!(batcher.settle(T).await);
        for i in 0..5 {
            batcher.tell(i).expect("room");
        }
        assert_eq!(batcher.ask(5).await.unwrap(), 10);
        batcher.tell(6).expect("room");
        assert!(batcher.settle(T).await);
        let batches = double.batches.lock().unwrap().clone();
        // The told asks went like the asked one, in the order queued.
        assert_eq!(batches.concat(), (0..7).collect::<Vec<_>>(), "{batches:?}");
    }

    #[tokio::test]
    async fn a_told_ask_is_handed_back_when_the_queue_is_full() {
        let limits = Limits {
            queue: 2,
            ..Limits::default()
        };
        let batcher = Batcher::new(Arc::new(Double::default()), limits);
        // On this current-thread runtime the batching task does not run before this loop yields.
        let handed_back: Vec<u32> = (0..5).filter_map(|i| batcher.tell(i).err()).collect();
        assert_eq!(handed_back, vec![2, 3, 4]);
        assert!(batcher.settle(T).await);
    }

    /// Answers once let through (`open`), recording what it was sent.
    struct Gated {
        open: tokio::sync::Semaphore,
        sent: Mutex<Vec<u32>>,
    }

    impl Round for Arc<Gated> {
        type Ask = u32;
        type Answer = u32;
        async fn run(&self, asks: Vec<u32>) -> Result<Vec<u32>, StoreError> {
            self.sent.lock().unwrap().extend(&asks);
            self.open.acquire().await.expect("open").forget();
            Ok(asks)
        }
    }

    #[tokio::test]
    async fn settle_waits_for_a_batch_still_out_and_not_for_asks_queued_after_it() {
        let gated = Arc::new(Gated {
            open: tokio::sync::Semaphore::new(0),
            sent: Mutex::new(Vec::new()),
        });
        let batcher = Arc::new(Batcher::new(gated.clone(), Limits::default()));
        batcher.tell(1).expect("room");
        // Until the first batch is answered, nothing settles it.
        assert!(!batcher.settle(Duration::from_millis(50)).await);
        let settling = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.settle(T).await }
        });
        // The settle queued (this runtime has one thread: the spawned task runs when this one
        // yields), then an ask behind it, which goes in a batch of its own, held up too.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        batcher.tell(2).expect("room");
        gated.open.add_permits(1);
        assert!(settling.await.unwrap(), "settled by the first batch alone");
        gated.open.add_permits(1);
        assert!(batcher.settle(T).await);
        assert_eq!(*gated.sent.lock().unwrap(), vec![1, 2]);
    }
}
