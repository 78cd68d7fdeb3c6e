//! Calling Dify for a claimed event: once, under the claim's lease (renewed, with Dify's ids
//! recorded as the stream reveals them, so a successor can recover the run), starting a new
//! conversation once if Dify forgot the stored one. A failure is classified and becomes an
//! attempt on the event; [`Worker::retry_or_give_up`] then parks the event until the schedule's
//! next try or dead-letters it. Must not publish jobs.
use super::Worker;
use crate::dify::{self, DifyCall, DifyError, DifyIds, ErrorClass};
use crate::hold::Held;
use crate::idempotency::RunIds;
use chrono::{DateTime, Utc};
use shared::config::AppConfig;
use shared::envelope::{Answer, Attempt, AttemptOutcome, InboundEvent, Reason, Timings};
use shared::retry::RetryDecision;
use shared::stage::Settle;
use std::time::Instant;
use tokio::sync::watch;

/// A call that failed for good or for now: the error, what it means, and the attempt to record.
pub(super) struct Failed {
    pub(super) error: DifyError,
    pub(super) class: ErrorClass,
    pub(super) attempt: Attempt,
}

impl Worker {
    /// Calls Dify for `event` in the conversation `conversation_id` (none: a new one). When Dify
    /// no longer knows the conversation, the stored id is forgotten and the call made once more
    /// in a new conversation.
    pub(super) async fn call(
        &self,
        event: &InboundEvent,
        app: &AppConfig,
        claimed: &Held,
        mut conversation_id: Option<String>,
    ) -> Result<(Answer, Timings), Failed> {
        let inputs = dify::build_inputs(app, event);
        let trace_id = event.id.to_string();
        let mut conversation_lost_once = false;
        loop {
            let started_at = Utc::now();
            let started = Instant::now();
            let call = DifyCall {
                app,
                query: &event.text,
                inputs: inputs.clone(),
                user: &claimed.conv.user,
                conversation_id: conversation_id.as_deref(),
                trace_id: &trace_id,
            };
            // A streamed reply grows in the chat while Dify writes (`progress`); the final
            // answer is published only after the last update is out.
            let progress = self.progress_for(event, claimed);
            let text = progress.as_ref().map(|p| &p.text);
            let result = self
                .call_under_lease(&call, claimed, started_at, text)
                .await;
            if let Some(p) = progress {
                p.finish().await;
            }
            let dify_ms = started.elapsed().as_millis() as u64;
            metrics::histogram!("switchboard_dify_call_seconds", "app" => app.id.clone())
                .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(answer) => {
                    let timings = Timings {
                        received_at: Some(event.received_at),
                        dify_started_at: Some(started_at),
                        dify_ms: Some(dify_ms),
                        answered_at: Some(Utc::now()),
                    };
                    return Ok((answer, timings));
                }
                Err(e) => e,
            };
            let class = dify::classify(&error);
            tracing::warn!(error = %error, ?class, "Dify call failed");
            metrics::counter!("switchboard_dify_errors_total", "app" => app.id.clone(), "class" => class_word(&class)).increment(1);
            if class == ErrorClass::ConversationLost && !conversation_lost_once {
                // Dify forgot the conversation (or it belongs to another user): start a new one, once.
                conversation_lost_once = true;
                let _ = self.conversations.forget(&claimed.conv).await;
                conversation_id = None;
                continue;
            }
            let attempt = attempt_of(&error, &class, started_at, dify_ms);
            return Err(Failed {
                error,
                class,
                attempt,
            });
        }
    }

    /// After a failed call (already recorded on `event`): a transient failure waits for the
    /// schedule's next try, a permanent or exhausted one becomes a dead letter.
    pub(super) async fn retry_or_give_up(
        &self,
        event: &InboundEvent,
        error: &DifyError,
        class: ErrorClass,
    ) -> Settle {
        let ErrorClass::Retry { retry_after } = class else {
            return self
                .dead_letter(event, Reason::Permanent, &error.to_string())
                .await;
        };
        let tries = event.attempts.len();
        match self
            .policy
            .after_failure(tries, retry_after, rand::random::<f64>())
        {
            RetryDecision::RetryIn(wait) => {
                tracing::info!(attempt = tries, ?wait, "retrying later");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "retry")
                    .increment(1);
                self.defer(event, wait).await
            }
            RetryDecision::GiveUp => {
                self.dead_letter(event, Reason::Exhausted, &error.to_string())
                    .await
            }
        }
    }

    /// Calls Dify while renewing the lease and the conversation's turn, and recording Dify's
    /// ids as the stream reveals them.
    async fn call_under_lease(
        &self,
        call: &DifyCall<'_>,
        claimed: &Held,
        started_at: DateTime<Utc>,
        text: Option<&watch::Sender<String>>,
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
                        let _ = conversations.renew_turn(&claimed.conv, &claimed.claimant, idem.lease()).await;
                    }
                }
            }
        });
        let result = self.dify.call_watching(call, Some(&tx), text).await;
        drop(tx);
        let _ = keeper.await;
        result
    }
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

/// The metric label of an error class.
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
    at: DateTime<Utc>,
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
