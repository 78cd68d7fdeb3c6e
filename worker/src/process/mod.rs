//! Handling one `InboundEvent`, in named steps: **claim and turn** (claim the event in the
//! idempotency record, or find its answer recorded there; take its conversation's turn and read
//! its Dify id: one round trip, `crate::hold`) →
//! **resume** (recover a run a dead worker left behind before considering a new call) → **call**
//! Dify once (starting a new conversation once if Dify forgot the stored one; a streamed reply
//! publishes its progress meanwhile) → **record** the answer (with the conversation id, ending
//! the turn: one round trip) → **fan out** one `DispatchJob`
//! per destination. A failed call becomes an attempt on the event: transient failures wait in
//! a delay queue, permanent or exhausted ones become dead letters. The message is acked only
//! after its outcome is durable (jobs, delay or dead letter confirmed by the broker).
//!
//! The steps live in `claim`, `resume`, `call`, `progress` and `fan_out`; this module strings them together
//! and owns parking and dead-lettering.
//!
//! Each step's future is boxed when the step starts (`Box::pin(step).await`). An event's task then
//! holds the step it is in, not room for the largest step it might reach: every event in flight
//! is mostly waiting on its Dify call, and before the steps were boxed each held a 31.6 KB task
//! (heaptrack, 2,500 calls in flight: about a third of the worker's memory).
mod call;
mod claim;
mod fan_out;
mod progress;
mod resume;

pub use fan_out::destinations;
pub use progress::{preview, Due, Sent, Throttle, PREVIEW_CHARS};

use crate::conversation::Conversations;
use crate::dify::DifyClient;
use crate::hold::{Held, Holds};
use crate::idempotency::{Idempotency, RunIds};
use call::Failed;
use lapin::message::Delivery;
use lapin::options::BasicRejectOptions;
use resume::Resume;
use shared::config::{AppConfig, Config, ScheduleConfig, SourceConfig, SCHEDULE_PLATFORM};
use shared::envelope::{decode, Answer, DeadLetter, InboundEvent, Reason, Timings};
use shared::retry::RetryPolicy;
use shared::stage::{self, Settle};
use shared::topology::Stage;
use shared::Services;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long an event waits when Redis cannot answer a question it must have answered.
const STORE_WAIT: Duration = Duration::from_secs(5);
/// How long an event waits for a run that may still be going in Dify.
const RUN_WAIT: Duration = Duration::from_secs(2);

/// The worker of one process.
pub struct Worker {
    config: Arc<Config>,
    services: Services,
    dify: DifyClient,
    idem: Idempotency,
    conversations: Conversations,
    /// The claim with the turn, and the answer with the turn's end: one round trip each.
    holds: Holds,
    policy: RetryPolicy,
}

/// What claiming an event gave.
// One per event, moved once: boxing the turn would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Hold {
    /// The answer is recorded already: fan it out without calling Dify.
    Recorded(Box<Answer>),
    /// The event is this worker's, and so is its conversation's turn (until the answer is
    /// recorded or the claim given back); `previous` holds the ids of the run a dead worker
    /// started, if it recorded any; `conversation_id` the conversation's Dify id, if known.
    Turn {
        claimed: Held,
        previous: Option<RunIds>,
        conversation_id: Option<String>,
    },
}

impl Worker {
    pub fn new(config: Arc<Config>, services: Services, dify: DifyClient, owner: String) -> Self {
        let w = &config.worker;
        let idem = Idempotency::new(services.store.clone(), owner, w.lease, w.answer_ttl);
        let conversations = Conversations::new(services.store.clone(), w.conversation_ttl);
        Self {
            holds: Holds::new(idem.clone(), &conversations),
            idem,
            conversations,
            policy: RetryPolicy::new(w.retry_schedule.clone(), w.jitter),
            dify,
            services,
            config,
        }
    }

    /// Handles one delivery from the work queue and settles it.
    pub async fn handle(self: Arc<Self>, delivery: Delivery) {
        let event = match decode::<InboundEvent>(&delivery.data) {
            Ok(e) => e,
            Err(e) => {
                // Unreadable: reject without requeue; the queue dead-letters it, raw, to the
                // dead-letter stream, where auditors see it as poison.
                tracing::error!(error = %e, "unreadable message on the work queue; dead-lettering it");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "invalid")
                    .increment(1);
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                return;
            }
        };
        let span = tracing::info_span!("event", event_id = %event.id, source = %event.source);
        let settle = Box::pin(self.process(event).instrument(span)).await;
        Box::pin(settle.apply(&delivery.acker)).await;
    }

    /// One event, step by step; a step that does not let the event through settles it.
    async fn process(&self, event: InboundEvent) -> Settle {
        // A scheduled event's source is its schedule, seen as a source with its app and targets.
        let scheduled = (event.platform == SCHEDULE_PLATFORM)
            .then(|| {
                self.config
                    .schedule(&event.source)
                    .map(ScheduleConfig::as_source)
            })
            .flatten();
        let source = match event.platform.as_str() {
            SCHEDULE_PLATFORM => scheduled.as_ref(),
            _ => self.config.source(&event.source),
        };
        let Some(source) = source else {
            let why = "the source is no longer configured";
            return Box::pin(self.dead_letter(&event, Reason::Permanent, why)).await;
        };
        let Some(app) = self.config.app(&source.app) else {
            let why = "the source's app is no longer configured";
            return Box::pin(self.dead_letter(&event, Reason::Permanent, why)).await;
        };
        match Box::pin(self.claim_and_turn(&event, source)).await {
            Err(settled) => settled,
            Ok(Hold::Recorded(answer)) => {
                Box::pin(self.fan_out(&event, source, &answer, Timings::default())).await
            }
            Ok(Hold::Turn {
                claimed,
                previous,
                conversation_id,
            }) => {
                self.answer(event, source, app, &claimed, previous, conversation_id)
                    .await
            }
        }
    }

    /// Answers a claimed event: from the previous claim's run if it can be recovered, else by
    /// one call in the conversation `conversation_id`; then records the answer (which ends the
    /// turn) and fans it out. Every way out gives the turn back.
    async fn answer(
        &self,
        mut event: InboundEvent,
        source: &SourceConfig,
        app: &AppConfig,
        claimed: &Held,
        previous: Option<RunIds>,
        conversation_id: Option<String>,
    ) -> Settle {
        if let Some(prev) = previous.filter(RunIds::identifies_run) {
            match Box::pin(self.resume(app, &claimed.key, claimed.token, &prev)).await {
                Resume::Answer(mut answer) => {
                    self.cap(&mut answer);
                    Box::pin(self.record(claimed, &answer)).await;
                    let fan_out = self.fan_out(&event, source, &answer, Timings::default());
                    return Box::pin(fan_out).await;
                }
                Resume::Wait => {
                    // The run may still be going in Dify: don't start a second one. The ids
                    // stay recorded for the next claim, which asks Dify again.
                    tracing::info!("the previous run may still be going in Dify; waiting for it");
                    let _ = Box::pin(self.holds.let_go(claimed, false)).await;
                    return Box::pin(self.defer(&event, RUN_WAIT)).await;
                }
                Resume::CallAgain => {}
            }
        }
        match Box::pin(self.call(&event, app, claimed, conversation_id)).await {
            Ok((mut answer, timings)) => {
                self.cap(&mut answer);
                Box::pin(self.record(claimed, &answer)).await;
                Box::pin(self.fan_out(&event, source, &answer, timings)).await
            }
            Err(Failed {
                error,
                class,
                attempt,
            }) => {
                let _ = Box::pin(self.holds.let_go(claimed, true)).await;
                event.attempts.push(attempt);
                Box::pin(self.retry_or_give_up(&event, &error, class)).await
            }
        }
    }

    /// Cuts an answer over `worker.max_answer_bytes`, and says so.
    fn cap(&self, answer: &mut shared::envelope::Answer) {
        let max = self.config.worker.max_answer_bytes as usize;
        let cut = crate::cap::cap(answer, max);
        if let Some(bytes) = cut.text_bytes {
            tracing::warn!(
                bytes,
                max,
                "the answer is longer than worker.max_answer_bytes; cut"
            );
            metrics::counter!("switchboard_worker_answer_cut_total", "part" => "text").increment(1);
        }
        if let Some(bytes) = cut.outputs_bytes {
            tracing::warn!(
                bytes,
                max,
                "the workflow outputs are longer than worker.max_answer_bytes; dropped"
            );
            metrics::counter!("switchboard_worker_answer_cut_total", "part" => "outputs")
                .increment(1);
        }
    }

    /// Parks the event in a delay queue (or back on the work queue) for `wait`.
    async fn defer(&self, event: &InboundEvent, wait: Duration) -> Settle {
        let parked = stage::park(
            &self.services.broker,
            Stage::Work,
            event,
            event.id.to_string(),
            wait,
        )
        .await;
        Settle::after(parked, "park the event")
    }

    async fn dead_letter(&self, event: &InboundEvent, reason: Reason, error: &str) -> Settle {
        let dl = DeadLetter::from_event(event, reason, error);
        tracing::error!(reason = reason.as_str(), error, dead_letter_id = %dl.id, "event dead-lettered");
        Settle::after(
            stage::bury(&self.services.broker, &dl).await,
            "dead-letter the event",
        )
    }
}
