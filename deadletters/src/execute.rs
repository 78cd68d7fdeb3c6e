//! Carrying out a replay plan on the broker: a record part before anything is sent (no replay
//! goes unrecorded), each dead letter republished to its stage queue with publisher confirms and
//! many in flight at once, paced to `--rate` when given, a record part every
//! [`PART_EVERY`] sends or [`PART_INTERVAL`], and a final part saying how it ended. A run that
//! is stopped (Ctrl-C) drains what is in flight and records itself as interrupted. With an
//! audit key, each part is appended at its place in the chain through the [`Appender`]; the
//! letters the plan refused (their seal does not verify) are on record as failures.
use chrono::Utc;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use lapin::PublisherConfirm;
use shared::envelope::DeadLetter;
use shared::units::Rate;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::audit::{Failure, ReplayRecord, RunState, Selection};
use super::record::Names;
use super::replay::{due, rearm, Plan};
use super::store::{settle, Store};
use super::trail::Appender;
use super::DlqError;

/// Publishes awaiting their confirm at once: enough to keep a quorum queue's write batches
/// full, few enough that a failure leaves little unsettled.
const WINDOW: usize = 256;
/// A record part at least this often (in sends) and this often (in time) while running.
pub const PART_EVERY: usize = 1000;
pub const PART_INTERVAL: Duration = Duration::from_secs(2);

/// Who runs a replay and what they asked for.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The run's id (UUID v7), known before it starts so a caller can point to its record.
    pub replay_id: Uuid,
    pub actor: String,
    /// How the actor is known: `cli` or `console`.
    pub via: String,
    pub host: String,
    pub selection: Selection,
    pub force: bool,
    pub rate: Option<Rate>,
    pub rate_text: Option<String>,
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub replay_id: Uuid,
    pub state: RunState,
    pub matched: u64,
    pub sent: u64,
    pub skipped: u64,
    pub failed: u64,
    /// From the first send to the last confirm (the store's read not included).
    pub sending: Duration,
}

struct Recorder<'a> {
    store: &'a Store,
    trail: Option<&'a Appender>,
    stream: String,
    spec: &'a RunSpec,
    replay_id: Uuid,
    started_at: chrono::DateTime<Utc>,
    part: u32,
    matched: u64,
    sent: u64,
    skipped: u64,
    failed: u64,
    sent_ids: Vec<Uuid>,
    failures: Vec<Failure>,
    last: Instant,
}

impl<'a> Recorder<'a> {
    fn new(store: &'a Store, trail: Option<&'a Appender>, plan: &Plan, spec: &'a RunSpec) -> Self {
        let failures: Vec<Failure> = plan
            .refused
            .iter()
            .map(|(l, why)| Failure {
                id: l.letter.id,
                error: format!("refused: {why}"),
            })
            .collect();
        Self {
            store,
            trail,
            stream: store.topology().replays(),
            spec,
            replay_id: spec.replay_id,
            started_at: Utc::now(),
            part: 0,
            matched: (plan.send.len() + plan.skipped.len() + plan.refused.len()) as u64,
            sent: 0,
            skipped: plan.skipped.len() as u64,
            failed: failures.len() as u64,
            sent_ids: Vec::new(),
            failures,
            last: Instant::now(),
        }
    }

    async fn write(&mut self, state: RunState) -> Result<(), DlqError> {
        let record = ReplayRecord {
            replay_id: self.replay_id,
            part: self.part,
            state,
            actor: self.spec.actor.clone(),
            host: self.spec.host.clone(),
            started_at: self.started_at,
            at: Utc::now(),
            selection: self.spec.selection.clone(),
            force: self.spec.force,
            rate: self.spec.rate_text.clone(),
            matched: self.matched,
            sent: self.sent,
            skipped: self.skipped,
            failed: self.failed,
            sent_ids: std::mem::take(&mut self.sent_ids),
            failures: std::mem::take(&mut self.failures),
            via: Some(self.spec.via.clone()),
            seq: None,
            prev: None,
        };
        let appended = match self.trail {
            Some(trail) => {
                trail
                    .append(self.store, |seq, prev| {
                        let mut chained = record.clone();
                        chained.seq = Some(seq);
                        chained.prev = Some(prev.to_owned());
                        shared::envelope::encode(&chained)
                    })
                    .await
            }
            None => {
                self.store
                    .append(&self.stream, &shared::envelope::encode(&record))
                    .await
            }
        };
        match appended {
            Ok(()) => {
                self.part += 1;
                self.last = Instant::now();
                Ok(())
            }
            Err(e) => {
                // Keep what was not recorded so that a later part still carries it.
                self.sent_ids = record.sent_ids;
                self.failures = record.failures;
                Err(e)
            }
        }
    }

    fn due(&self) -> bool {
        self.sent_ids.len() + self.failures.len() >= PART_EVERY
            || (!self.sent_ids.is_empty() || !self.failures.is_empty())
                && self.last.elapsed() >= PART_INTERVAL
    }

    fn fail(&mut self, id: Uuid, error: String) {
        self.failed += 1;
        self.failures.push(Failure { id, error });
    }

    fn outcome(&self, state: RunState, sending: Duration) -> Outcome {
        Outcome {
            replay_id: self.replay_id,
            state,
            matched: self.matched,
            sent: self.sent,
            skipped: self.skipped,
            failed: self.failed,
            sending,
        }
    }
}

/// Sends a plan. Returns once every publish is settled and the final part is on record.
pub async fn execute(
    store: &Store,
    trail: Option<&Appender>,
    plan: &Plan,
    spec: &RunSpec,
    progress: &ProgressBar,
    stop: &CancellationToken,
) -> Result<Outcome, DlqError> {
    let mut rec = Recorder::new(store, trail, plan, spec);
    // On record before anything goes: if this fails, nothing is sent.
    rec.write(RunState::Running).await?;
    let names = Names::of(store.topology(), store.keyring());
    let interval = spec.rate.map(|r| r.interval());
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut interrupted = false;
    for (n, letter) in plan.send.iter().enumerate() {
        let wait_until = start + due(n as u64, interval);
        tokio::select! {
            biased;
            _ = stop.cancelled() => { interrupted = true; break; }
            _ = tokio::time::sleep_until(wait_until) => {}
        }
        let dead = &letter.letter;
        let queue = names.queue(dead.stage);
        match publish(store, queue, dead).await {
            Sent::Publishing(confirm) => {
                let id = dead.id;
                let queue = queue.to_owned();
                in_flight.push(async move { (id, settle(confirm, &queue).await) });
            }
            Sent::Unsendable(e) => {
                rec.fail(dead.id, e);
                progress.inc(1);
            }
            Sent::Broken(e) => {
                rec.fail(dead.id, e);
                progress.inc(1);
                interrupted = true;
                break;
            }
        }
        while in_flight.len() >= WINDOW {
            if let Some((id, r)) = in_flight.next().await {
                settled(&mut rec, id, r, progress);
            }
        }
        if rec.due() {
            rec.write(RunState::Running).await?;
        }
    }
    while let Some((id, r)) = in_flight.next().await {
        settled(&mut rec, id, r, progress);
    }
    let sending = start.elapsed();
    let state = if interrupted {
        RunState::Interrupted
    } else {
        RunState::Done
    };
    rec.write(state).await?;
    Ok(rec.outcome(state, sending))
}

/// What became of one dead letter's publish.
enum Sent {
    /// Published; its confirm settles later.
    Publishing(PublisherConfirm),
    /// Its message cannot be rebuilt: a failure on record, and the run goes on.
    Unsendable(String),
    /// The channel or connection is gone: nothing more can be sent.
    Broken(String),
}

async fn publish(store: &Store, queue: &str, dead: &DeadLetter) -> Sent {
    match rearm(dead) {
        Err(e) => Sent::Unsendable(e.to_string()),
        Ok(body) => match store.publish(queue, &body, &dead.id.to_string()).await {
            Ok(confirm) => Sent::Publishing(confirm),
            Err(e) => Sent::Broken(e.to_string()),
        },
    }
}

fn settled(rec: &mut Recorder<'_>, id: Uuid, r: Result<(), DlqError>, progress: &ProgressBar) {
    match r {
        Ok(()) => {
            rec.sent += 1;
            rec.sent_ids.push(id);
        }
        Err(e) => rec.fail(id, e.to_string()),
    }
    progress.inc(1);
}
