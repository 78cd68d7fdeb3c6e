//! Keeping a verified event: door dedup (has the platform sent this before?), publish with the
//! broker's confirm, then remember it as kept. Nothing here answers HTTP: the outcome says what
//! happened and the request flow (`super::hook`) answers.
use super::door::SeenKeys;
use super::{Ingress, Source};
use crate::platform::NewEvent;
use shared::envelope::{encode, InboundEvent};

/// What became of an event at the door.
pub(super) enum KeepOutcome {
    New,
    Duplicate,
    NotKept,
}

impl Ingress {
    /// Door dedup, publish with confirm, then remember the event as kept (also under the body's
    /// hash when `by_body` is given: see `Platform::replayable_forever`).
    pub(super) async fn keep(
        &self,
        source_id: &str,
        source: &Source,
        new: NewEvent,
        by_body: Option<&[u8]>,
    ) -> KeepOutcome {
        let store = &self.services.store;
        let seen = SeenKeys::of(store, source_id, &new.dedup_key, by_body);
        // A Redis failure here only loses the door dedup; the worker's idempotency still holds.
        if let Ok(Some(first)) = seen.first(store).await {
            tracing::info!(dedup_key = %new.dedup_key, first_event_id = %first, "platform retry of a kept event; not enqueued again");
            metrics::counter!("switchboard_ingress_duplicates_total", "source" => source_id.to_owned()).increment(1);
            return KeepOutcome::Duplicate;
        }
        let event = InboundEvent {
            id: uuid::Uuid::now_v7(),
            source: source_id.to_owned(),
            platform: source.platform.name().to_owned(),
            dedup_key: new.dedup_key,
            kind: new.kind,
            received_at: chrono::Utc::now(),
            conversation: new.conversation,
            text: new.text,
            reply: new.reply,
            payload: new.payload,
            attempts: Vec::new(),
            replay_of: None,
        };
        tracing::Span::current().record("event_id", tracing::field::display(event.id));
        let publish = shared::broker::Publish {
            message_id: Some(event.id.to_string()),
            ..Default::default()
        };
        if let Err(e) = self
            .services
            .broker
            .publish(&self.work_queue, &encode(&event), publish)
            .await
        {
            tracing::warn!(error = %e, "event not kept by the broker; answering 503");
            metrics::counter!("switchboard_ingress_not_kept_total", "source" => source_id.to_owned()).increment(1);
            return KeepOutcome::NotKept;
        }
        metrics::counter!("switchboard_ingress_accepted_total", "source" => source_id.to_owned())
            .increment(1);
        tracing::info!(dedup_key = %event.dedup_key, "event kept");
        let _ = seen
            .remember(store, &event.id.to_string(), self.dedup_ttl)
            .await;
        KeepOutcome::New
    }
}
