//! Keeping a verified event, the one path every door shares (the ingress's HTTP callbacks and
//! the connector's pushed events): credentials taken out of the event (`shared::reply_credentials`:
//! the reply URL kept aside in Redis, verification tokens dropped), door dedup (has the platform
//! sent this before?), publish with
//! the broker's confirm, then remember it as kept. Nothing here answers the platform: the
//! outcome says what happened, and only `New` or `Duplicate` may be acknowledged (a 2xx, an ack
//! frame); `NotKept` must not be, so that the platform delivers the event again.
use crate::door::SeenKeys;
use crate::platform::NewEvent;
use shared::envelope::{encode, InboundEvent};
use shared::reply_credentials;
use shared::topology::Stage;
use shared::Services;
use std::time::Duration;

/// What became of an event at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepOutcome {
    /// Published and confirmed: acknowledge it.
    New,
    /// A platform retry of an event kept before: acknowledge it, nothing enqueued.
    Duplicate,
    /// The broker did not confirm it: do not acknowledge it.
    NotKept,
}

/// Which door an event came in by: it names the metrics (`switchboard_ingress_*`,
/// `switchboard_connector_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Ingress,
    Connector,
}

impl Door {
    fn duplicates(self) -> &'static str {
        match self {
            Door::Ingress => "switchboard_ingress_duplicates_total",
            Door::Connector => "switchboard_connector_duplicates_total",
        }
    }
    fn not_kept(self) -> &'static str {
        match self {
            Door::Ingress => "switchboard_ingress_not_kept_total",
            Door::Connector => "switchboard_connector_not_kept_total",
        }
    }
    fn accepted(self) -> &'static str {
        match self {
            Door::Ingress => "switchboard_ingress_accepted_total",
            Door::Connector => "switchboard_connector_accepted_total",
        }
    }
}

/// Keeps events: the broker and Redis, the work queue and how long a kept event is remembered.
#[derive(Debug, Clone)]
pub struct Keeper {
    services: Services,
    work_queue: String,
    dedup_ttl: Duration,
    door: Door,
}

impl Keeper {
    pub fn new(services: Services, dedup_ttl: Duration, door: Door) -> Self {
        Self {
            work_queue: services.broker.topology().stage_queue(Stage::Work),
            services,
            dedup_ttl,
            door,
        }
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Door dedup, publish with confirm, then remember the event as kept (also under the body's
    /// hash when `by_body` is given: see `Platform::replayable_forever`).
    pub async fn keep(
        &self,
        source_id: &str,
        platform: &str,
        new: NewEvent,
        by_body: Option<&[u8]>,
    ) -> KeepOutcome {
        let store = &self.services.store;
        let seen = SeenKeys::of(store, source_id, &new.dedup_key, by_body);
        // A Redis failure here only loses the door dedup; the worker's idempotency still holds.
        if let Ok(Some(first)) = seen.first(store).await {
            tracing::info!(dedup_key = %new.dedup_key, first_event_id = %first, "platform retry of a kept event; not enqueued again");
            metrics::counter!(self.door.duplicates(), "source" => source_id.to_owned())
                .increment(1);
            return KeepOutcome::Duplicate;
        }
        let (mut reply, mut payload) = (new.reply, new.payload);
        let received_at = chrono::Utc::now();
        let id = uuid::Uuid::now_v7();
        // Credentials stay out of the event: the reply URL is kept aside for the dispatcher.
        let credentials = reply_credentials::take(
            platform,
            &mut reply,
            &mut payload,
            received_at.timestamp_millis(),
        );
        if let Some((credentials, life)) = credentials {
            if let Err(e) = reply_credentials::keep(store, id, &credentials, life).await {
                // Without it the answer could not reach the conversation: not kept, the
                // platform sends again.
                tracing::warn!(error = %e, "cannot keep the event's reply URL; not acknowledged");
                metrics::counter!(self.door.not_kept(), "source" => source_id.to_owned())
                    .increment(1);
                return KeepOutcome::NotKept;
            }
        }
        let event = InboundEvent {
            id,
            source: source_id.to_owned(),
            platform: platform.to_owned(),
            dedup_key: new.dedup_key,
            kind: new.kind,
            received_at,
            conversation: new.conversation,
            text: new.text,
            reply,
            payload,
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
            tracing::warn!(error = %e, "event not kept by the broker; not acknowledged");
            metrics::counter!(self.door.not_kept(), "source" => source_id.to_owned()).increment(1);
            return KeepOutcome::NotKept;
        }
        metrics::counter!(self.door.accepted(), "source" => source_id.to_owned()).increment(1);
        tracing::info!(dedup_key = %event.dedup_key, "event kept");
        let _ = seen
            .remember(store, &event.id.to_string(), self.dedup_ttl)
            .await;
        KeepOutcome::New
    }
}
