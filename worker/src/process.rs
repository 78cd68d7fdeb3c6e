//! Handling one `InboundEvent`: claim it (or find its answer recorded), take its conversation's
//! turn, recover a run a dead worker left behind before considering a new call, call Dify once,
//! record the answer, then publish one `DispatchJob` per destination. Failures are classified:
//! transient ones wait in a delay queue with the attempt recorded, permanent or exhausted ones
//! become dead letters. The message is acked only after its outcome is durable (jobs, delay or
//! dead letter confirmed by the broker).
use crate::conversation::{conversation_of, ConversationKey, Conversations};
use crate::dify::{self, DifyCall, DifyClient, DifyError, DifyIds, ErrorClass, RunState};
use crate::idempotency::{Claim, Idempotency, RunIds};
use lapin::message::Delivery;
use lapin::options::BasicRejectOptions;
use shared::broker::Publish;
use shared::config::{AppConfig, Config, SourceConfig};
use shared::envelope::{
    decode, encode, Answer, AnswerPayload, Attempt, AttemptOutcome, DeadLetter, Destination,
    DispatchJob, InboundEvent, Reason, Timings,
};
use shared::retry::{RetryDecision, RetryPolicy};
use shared::stage::{self, Settle};
use shared::topology::Stage;
use shared::Services;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The worker of one process.
pub struct Worker {
    config: Arc<Config>,
    services: Services,
    dify: DifyClient,
    idem: Idempotency,
    conversations: Conversations,
    policy: RetryPolicy,
}

impl Worker {
    pub fn new(config: Arc<Config>, services: Services, dify: DifyClient, owner: String) -> Self {
        let w = &config.worker;
        Self {
            idem: Idempotency::new(services.store.clone(), owner, w.lease, w.answer_ttl),
            conversations: Conversations::new(services.store.clone(), w.conversation_ttl),
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
        self.process(event)
            .instrument(span)
            .await
            .apply(&delivery.acker)
            .await;
    }

    async fn process(&self, event: InboundEvent) -> Settle {
        let Some(source) = self.config.source(&event.source) else {
            return self
                .dead_letter(
                    &event,
                    Reason::Permanent,
                    "the source is no longer configured",
                )
                .await;
        };
        let Some(app) = self.config.app(&source.app) else {
            return self
                .dead_letter(
                    &event,
                    Reason::Permanent,
                    "the source's app is no longer configured",
                )
                .await;
        };
        let key = self.idem.key(&event.source, &event.dedup_key);
        let claim = match self.idem.claim(&key).await {
            Ok(c) => c,
            Err(e) => {
                // Without the record we cannot promise "once": don't call Dify, come back later.
                tracing::warn!(error = %e, "idempotency store unavailable; deferring");
                return self.defer(&event, Duration::from_secs(5)).await;
            }
        };
        match claim {
            Claim::Done(answer) => {
                tracing::info!("answer already recorded; dispatching it without calling Dify");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "from_record")
                    .increment(1);
                self.dispatch(&event, source, &answer, Timings::default())
                    .await
            }
            Claim::Held(wait) => {
                tracing::info!(?wait, "another worker is answering this event; waiting");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "held")
                    .increment(1);
                self.defer(&event, wait + Duration::from_millis(250)).await
            }
            Claim::Acquired {
                token,
                previous,
                takeovers,
            } => {
                // Workers keep dying on this event: the broker's delivery limit cannot see
                // that (a held event is re-published, which resets its delivery count), so the
                // record counts the deaths and the same limit applies.
                if takeovers >= self.config.broker.delivery_limit {
                    let _ = self.idem.release_failed(&key, token).await;
                    let why = format!("{takeovers} workers died while answering this event");
                    return self.dead_letter(&event, Reason::Poison, &why).await;
                }
                let conv = conversation_of(
                    &event.source,
                    &event.conversation,
                    source.group_conversation,
                    &self.services.store,
                );
                // Unique per claim, so two copies of one event cannot share a turn.
                let holder = format!("{}:{token}", event.id);
                // The turn lasts as long as the lease and is renewed with it, so a dead
                // worker's turn lapses with its claim.
                match self
                    .conversations
                    .take_turn(&conv, &holder, self.idem.lease())
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(wait)) => {
                        let _ = self.idem.release(&key, token).await;
                        tracing::debug!(
                            ?wait,
                            "conversation busy with an earlier message; waiting"
                        );
                        return self.defer(&event, wait.min(Duration::from_secs(1))).await;
                    }
                    Err(e) => {
                        let _ = self.idem.release(&key, token).await;
                        tracing::warn!(error = %e, "conversation store unavailable; deferring");
                        return self.defer(&event, Duration::from_secs(5)).await;
                    }
                }
                let claimed = Claimed {
                    key,
                    token,
                    conv,
                    holder,
                };
                let settle = self.answer(event, source, app, &claimed, previous).await;
                let _ = self
                    .conversations
                    .end_turn(&claimed.conv, &claimed.holder)
                    .await;
                settle
            }
        }
    }

    async fn answer(
        &self,
        mut event: InboundEvent,
        source: &SourceConfig,
        app: &AppConfig,
        claimed: &Claimed,
        previous: Option<RunIds>,
    ) -> Settle {
        let (key, token, conv) = (claimed.key.as_str(), claimed.token, &claimed.conv);
        if let Some(prev) = previous.filter(RunIds::identifies_run) {
            match self.resume(app, key, token, &prev).await {
                Resume::Answer(answer) => {
                    return self
                        .finish(&event, source, claimed, *answer, Timings::default())
                        .await;
                }
                Resume::Wait => {
                    // The run may still be going in Dify: don't start a second one. The ids
                    // stay recorded for the next claim, which asks Dify again.
                    tracing::info!("the previous run may still be going in Dify; waiting for it");
                    let _ = self.idem.release(key, token).await;
                    return self.defer(&event, Duration::from_secs(2)).await;
                }
                Resume::CallAgain => {}
            }
        }
        let mut conversation_id = match self.conversations.get(conv).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.idem.release(key, token).await;
                tracing::warn!(error = %e, "conversation store unavailable; deferring");
                return self.defer(&event, Duration::from_secs(5)).await;
            }
        };
        let inputs = dify::build_inputs(app, &event);
        let trace_id = event.id.to_string();
        let mut conversation_lost_once = false;
        loop {
            let started_at = chrono::Utc::now();
            let started = Instant::now();
            let call = DifyCall {
                app,
                query: &event.text,
                inputs: inputs.clone(),
                user: &conv.user,
                conversation_id: conversation_id.as_deref(),
                trace_id: &trace_id,
            };
            let result = self.call_under_lease(&call, claimed, started_at).await;
            let dify_ms = started.elapsed().as_millis() as u64;
            metrics::histogram!("switchboard_dify_call_seconds", "app" => app.id.clone())
                .record(started.elapsed().as_secs_f64());
            let timings = Timings {
                received_at: Some(event.received_at),
                dify_started_at: Some(started_at),
                dify_ms: Some(dify_ms),
                answered_at: Some(chrono::Utc::now()),
            };
            let error = match result {
                Ok(answer) => return self.finish(&event, source, claimed, answer, timings).await,
                Err(e) => e,
            };
            let class = dify::classify(&error);
            tracing::warn!(error = %error, ?class, "Dify call failed");
            metrics::counter!("switchboard_dify_errors_total", "app" => app.id.clone(), "class" => class_word(&class)).increment(1);
            if class == ErrorClass::ConversationLost && !conversation_lost_once {
                // Dify forgot the conversation (or it belongs to another user): start a new one, once.
                conversation_lost_once = true;
                let _ = self.conversations.forget(conv).await;
                conversation_id = None;
                continue;
            }
            let _ = self.idem.release_failed(key, token).await;
            event
                .attempts
                .push(attempt_of(&error, &class, started_at, dify_ms));
            return match class {
                ErrorClass::Retry { retry_after } => {
                    let failed = event.attempts.len();
                    match self
                        .policy
                        .after_failure(failed, retry_after, rand::random::<f64>())
                    {
                        RetryDecision::RetryIn(wait) => {
                            tracing::info!(attempt = failed, ?wait, "retrying later");
                            metrics::counter!("switchboard_worker_events_total", "outcome" => "retry").increment(1);
                            self.defer(&event, wait).await
                        }
                        RetryDecision::GiveUp => {
                            self.dead_letter(&event, Reason::Exhausted, &error.to_string())
                                .await
                        }
                    }
                }
                _ => {
                    self.dead_letter(&event, Reason::Permanent, &error.to_string())
                        .await
                }
            };
        }
    }

    /// Calls Dify while renewing the lease and the conversation's turn, and recording Dify's
    /// ids as the stream reveals them.
    async fn call_under_lease(
        &self,
        call: &DifyCall<'_>,
        claimed: &Claimed,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Answer, DifyError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DifyIds>();
        let idem = self.idem.clone();
        let conversations = self.conversations.clone();
        let claimed = claimed.clone();
        let token = claimed.token;
        let key_owned = claimed.key.clone();
        let base = RunIds {
            user: Some(claimed.conv.user.clone()),
            started_ms: Some(started_at.timestamp_millis()),
            ..Default::default()
        };
        let keeper = tokio::spawn(async move {
            let mut ids = base;
            let mut renew = tokio::time::interval(idem.lease() / 3);
            renew.tick().await;
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some(new) => {
                            merge(&mut ids, new);
                            if let Err(e) = idem.record_ids(&key_owned, token, &ids).await {
                                tracing::warn!(error = %e, "could not record Dify's ids");
                            }
                        }
                        None => break,
                    },
                    _ = renew.tick() => {
                        match idem.renew(&key_owned, token).await {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!("lease lost during the call (taken over)"),
                            Err(e) => tracing::warn!(error = %e, "could not renew the lease"),
                        }
                        let _ = conversations.renew_turn(&claimed.conv, &claimed.holder, idem.lease()).await;
                    }
                }
            }
        });
        let result = self.dify.call(call, Some(&tx)).await;
        drop(tx);
        let _ = keeper.await;
        result
    }

    /// Asks Dify for the run a dead worker left behind.
    async fn resume(&self, app: &AppConfig, key: &str, token: i64, prev: &RunIds) -> Resume {
        let user = prev.user.clone().unwrap_or_default();
        let ids = DifyIds {
            task_id: prev.task_id.clone(),
            message_id: prev.message_id.clone(),
            conversation_id: prev.conversation_id.clone(),
            workflow_run_id: prev.workflow_run_id.clone(),
        };
        let state = match self.dify.run_state(app, &user, &ids).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "could not ask Dify about the previous run");
                RunState::Unknown
            }
        };
        match state {
            RunState::Finished(answer) => {
                tracing::info!(
                    "recovered the answer of a run a previous worker started; not calling again"
                );
                metrics::counter!("switchboard_worker_events_total", "outcome" => "recovered")
                    .increment(1);
                Resume::Answer(Box::new(answer))
            }
            RunState::Running => Resume::Wait,
            RunState::Failed { status, .. } => {
                // The previous run ended without an answer: a new call is the retry it needs.
                tracing::info!(%status, "the previous run failed in Dify; calling again");
                let _ = self.idem.record_ids(key, token, &RunIds::default()).await;
                Resume::CallAgain
            }
            RunState::Unknown => {
                let age_ms = chrono::Utc::now().timestamp_millis() - prev.started_ms.unwrap_or(0);
                let budget = (app.timeout + self.idem.lease()).as_millis() as i64;
                if age_ms < budget {
                    // Dify may not list a message until it is complete: wait for it.
                    Resume::Wait
                } else {
                    // Past the app's timeout the previous run cannot finish any more: this is
                    // the one window where Dify is called a second time (docs/GUARANTEES.md).
                    let _ = self.idem.record_ids(key, token, &RunIds::default()).await;
                    tracing::warn!(
                        "previous run not found in Dify after its timeout; calling again"
                    );
                    Resume::CallAgain
                }
            }
        }
    }
}

impl Worker {
    async fn finish(
        &self,
        event: &InboundEvent,
        source: &SourceConfig,
        claimed: &Claimed,
        answer: Answer,
        timings: Timings,
    ) -> Settle {
        let (key, token, conv) = (claimed.key.as_str(), claimed.token, &claimed.conv);
        // Store the conversation before the next message of it may be sent (we hold its turn).
        if let Some(cid) = &answer.conversation_id {
            if let Err(e) = self.conversations.set(conv, cid).await {
                tracing::warn!(error = %e, "could not store the conversation id");
            }
        }
        match self.idem.complete(key, token, &answer).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("lease was taken over before the answer was recorded; dispatching anyway (job ids dedup)"),
            Err(e) => tracing::warn!(error = %e, "could not record the answer"),
        }
        metrics::counter!("switchboard_worker_events_total", "outcome" => "answered").increment(1);
        self.dispatch(event, source, &answer, timings).await
    }

    /// One job per destination: the reply into the conversation and every fan-out target.
    async fn dispatch(
        &self,
        event: &InboundEvent,
        source: &SourceConfig,
        answer: &Answer,
        timings: Timings,
    ) -> Settle {
        let payload = AnswerPayload {
            event_id: event.id,
            source: event.source.clone(),
            platform: event.platform.clone(),
            conversation: event.conversation.clone(),
            query: event.text.clone(),
            answer: answer.clone(),
            timings,
        };
        let queue = self.services.broker.topology().stage_queue(Stage::Deliver);
        for destination in destinations(source, event) {
            let job = DispatchJob {
                id: DispatchJob::job_id(event.id, &destination),
                destination,
                payload: payload.clone(),
                attempts: Vec::new(),
                replay_of: None,
            };
            let opts = Publish {
                message_id: Some(job.id.to_string()),
                ..Default::default()
            };
            if let Err(e) = self
                .services
                .broker
                .publish(&queue, &encode(&job), opts)
                .await
            {
                // The answer is recorded: the redelivered event dispatches from the record.
                tracing::warn!(error = %e, "could not publish a job; the event will come back");
                return Settle::Requeue;
            }
        }
        Settle::Ack
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

/// This worker's hold on an event: the idempotency claim and the conversation's turn.
#[derive(Debug, Clone)]
struct Claimed {
    key: String,
    token: i64,
    conv: ConversationKey,
    /// Who holds the conversation's turn: unique per claim.
    holder: String,
}

enum Resume {
    Answer(Box<Answer>),
    Wait,
    CallAgain,
}

/// The destinations of an event's answer (pure).
pub fn destinations(source: &SourceConfig, event: &InboundEvent) -> Vec<Destination> {
    let mut out = Vec::new();
    if source.reply {
        if let Some(handle) = &event.reply {
            out.push(Destination::Reply {
                handle: handle.clone(),
            });
        }
    }
    out.extend(
        source
            .targets
            .iter()
            .map(|id| Destination::Target { id: id.clone() }),
    );
    out
}

fn merge(ids: &mut RunIds, new: DifyIds) {
    if new.task_id.is_some() {
        ids.task_id = new.task_id;
    }
    if new.message_id.is_some() {
        ids.message_id = new.message_id;
    }
    if new.conversation_id.is_some() {
        ids.conversation_id = new.conversation_id;
    }
    if new.workflow_run_id.is_some() {
        ids.workflow_run_id = new.workflow_run_id;
    }
}

fn class_word(c: &ErrorClass) -> &'static str {
    match c {
        ErrorClass::Retry { .. } => "retry",
        ErrorClass::Permanent => "permanent",
        ErrorClass::ConversationLost => "conversation_lost",
    }
}

fn attempt_of(
    error: &DifyError,
    class: &ErrorClass,
    at: chrono::DateTime<chrono::Utc>,
    duration_ms: u64,
) -> Attempt {
    Attempt {
        at,
        outcome: match class {
            ErrorClass::Retry { .. } => AttemptOutcome::Retry,
            ErrorClass::Permanent => AttemptOutcome::Permanent,
            ErrorClass::ConversationLost => AttemptOutcome::ConversationLost,
        },
        status: error.status(),
        code: error.code().map(str::to_owned),
        error: Some(error.to_string()),
        excerpt: None,
        duration_ms,
    }
}
