//! The last steps for an answered event: **record** the answer (and the conversation Dify keeps
//! it in, and end the conversation's turn: one script) so that a redelivered copy is answered
//! from the record without calling Dify again, then **fan out** one `DispatchJob` per destination — the reply into the conversation and every
//! target of the source — each confirmed by the broker before the event is acked. Must not call
//! Dify.
use super::Worker;
use crate::hold::Held;
use shared::broker::Publish;
use shared::config::SourceConfig;
use shared::envelope::{
    encode, Answer, AnswerPayload, Destination, DispatchJob, InboundEvent, Timings,
};
use shared::stage::Settle;
use shared::topology::Stage;

impl Worker {
    /// Records the answer under the claim, with the event it answers; a record that cannot be
    /// written is logged, and the jobs still go out (their ids are derived from the platform's
    /// identity of the event, so the dispatcher dedups them).
    pub(super) async fn record(&self, claimed: &Held, answer: &Answer) {
        // With the conversation id, stored before the turn ends: the conversation's next
        // message continues it.
        match self.holds.finish(claimed, answer).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("lease was taken over before the answer was recorded; dispatching anyway (job ids dedup)"),
            Err(e) => tracing::warn!(error = %e, "could not record the answer, the conversation id or the turn's end"),
        }
        metrics::counter!("switchboard_worker_events_total", "outcome" => "answered").increment(1);
    }

    /// One job per destination: the reply into the conversation and every fan-out target.
    pub(super) async fn fan_out(
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
            event: None,
        };
        let queue = self.services.broker.topology().stage_queue(Stage::Deliver);
        for destination in destinations(source, event) {
            // A target with a body template may use the event's fields: they travel with its
            // job only.
            let mut payload = payload.clone();
            if let Destination::Target { id } = &destination {
                if self
                    .config
                    .target(id)
                    .is_some_and(|t| t.settings.contains_key("template"))
                {
                    payload.event = Some(event.payload.clone());
                }
            }
            let job = DispatchJob {
                id: DispatchJob::job_id(event, &destination),
                destination,
                payload,
                attempts: Vec::new(),
                replay_of: None,
                parts_left: None,
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
