//! Keeping a verified event, the one path every door shares (the ingress's HTTP callbacks and
//! the connector's pushed events): credentials taken out of the event (`shared::reply_credentials`:
//! the reply URL kept aside in Redis, verification tokens dropped), door dedup (has the platform
//! sent this before? this process's `Recent` first, then Redis, in one pipeline with other
//! requests' reads and markers: `DoorRounds`), publish with the broker's confirm, then remember
//! it as kept: in `Recent` at once, in Redis behind the answer (`DoorRounds` again), except for a
//! source whose captured requests stay valid forever, whose markers are a defence against
//! replays and are written before the answer. Nothing here answers the platform: the outcome
//! says what happened, and only `New` or `Duplicate` may be acknowledged (a 2xx, an ack frame);
//! `NotKept` must not be, so that the platform delivers the event again.
use crate::door::SeenKeys;
use crate::door_rounds::{DoorRounds, Marker};
use crate::platform::NewEvent;
use crate::recent::{self, Recent};
use shared::envelope::{encode, InboundEvent};
use shared::reply_credentials;
use shared::topology::Stage;
use shared::Services;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a stopping door waits for its queued markers.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

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
    fn markers_lost(self) -> &'static str {
        match self {
            Door::Ingress => "switchboard_ingress_markers_lost_total",
            Door::Connector => "switchboard_connector_markers_lost_total",
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
    recent: Arc<Mutex<Recent>>,
    rounds: Arc<DoorRounds>,
}

impl Keeper {
    pub fn new(services: Services, dedup_ttl: Duration, door: Door) -> Self {
        Self {
            work_queue: services.broker.topology().stage_queue(Stage::Work),
            recent: Arc::new(Mutex::new(Recent::new(recent::CAPACITY, dedup_ttl))),
            rounds: Arc::new(DoorRounds::new(
                services.store.clone(),
                dedup_ttl,
                door.markers_lost(),
            )),
            services,
            dedup_ttl,
            door,
        }
    }

    /// Waits (a few seconds at most) for the door markers still queued: for a graceful stop.
    pub async fn settle(&self) {
        self.rounds.settle(SETTLE_LIMIT).await;
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
        let replayable = by_body.is_some();
        let seen = SeenKeys::of(store, source_id, &new.dedup_key, by_body);
        if let Some(first) = self.kept_before(&seen).await {
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
        // Named in the request's span only if it is not kept (see `NamedUnlessKept`).
        let unkept = NamedUnlessKept(Some(event.id));
        let event_id = event.id.to_string();
        let publish = shared::broker::Publish {
            message_id: Some(event_id.clone()),
            ..Default::default()
        };
        if let Err(e) = self
            .services
            .broker
            .publish(&self.work_queue, &encode(&event), publish)
            .await
        {
            drop(unkept);
            tracing::warn!(error = %e, "event not kept by the broker; not acknowledged");
            metrics::counter!(self.door.not_kept(), "source" => source_id.to_owned()).increment(1);
            return KeepOutcome::NotKept;
        }
        unkept.kept();
        metrics::counter!(self.door.accepted(), "source" => source_id.to_owned()).increment(1);
        tracing::debug!(%event_id, dedup_key = %event.dedup_key, "event kept");
        self.remember(seen, event_id, replayable).await;
        KeepOutcome::New
    }

    /// The id of the event first kept under any of `seen`'s keys: this process's memory first,
    /// then Redis (a retry may come back to another process), in a batch with other requests'
    /// reads and markers (`DoorRounds`). A Redis failure here only loses the door dedup; the
    /// worker's idempotency still holds.
    async fn kept_before(&self, seen: &SeenKeys) -> Option<String> {
        let here = self.recent().first(seen.keys(), Instant::now());
        if here.is_some() {
            return here;
        }
        let first = self.rounds.first(seen).await.ok().flatten()?;
        self.recent().remember(seen.keys(), &first, Instant::now());
        Some(first)
    }

    /// Remembers a kept event: here at once, in Redis behind the answer, or before it when the
    /// markers guard against replays (`replayable`) or the writer's queue is full.
    async fn remember(&self, seen: SeenKeys, event_id: String, replayable: bool) {
        self.recent()
            .remember(seen.keys(), &event_id, Instant::now());
        let marker = Marker { seen, event_id };
        let marker = if replayable {
            marker
        } else {
            match self.rounds.remember(marker) {
                Ok(()) => return,
                Err(full) => full,
            }
        };
        let store = &self.services.store;
        if let Err(e) = marker
            .seen
            .remember(store, &marker.event_id, self.dedup_ttl)
            .await
        {
            tracing::warn!(error = %e, event_id = %marker.event_id, "cannot write the door's markers; this event loses its door dedup");
            metrics::counter!(self.door.markers_lost()).increment(1);
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records an event's id in the current span (the request's `hook`, the connector's `pushed`)
/// when dropped, unless the event was kept: every line after a failure names the event (also
/// the request's timeout, which drops this with the publish in flight), while a kept event, whose
/// request logs nothing more at `info`, does not pay for formatting it there.
struct NamedUnlessKept(Option<uuid::Uuid>);

impl NamedUnlessKept {
    fn kept(mut self) {
        self.0 = None;
    }
}

impl Drop for NamedUnlessKept {
    fn drop(&mut self) {
        if let Some(id) = self.0.take() {
            tracing::Span::current().record("event_id", tracing::field::display(id));
        }
    }
}
