//! The ingress HTTP server: `/hooks/{source}` for every configured source, `/healthz`,
//! `/readyz` and `/metrics`. It reads the raw body (up to the limit), lets the source's platform
//! verify and read it, recognises a platform's retry of an event already kept (door dedup in
//! Redis, written only after the broker confirmed the first copy), publishes the new
//! `InboundEvent` and answers the platform only once the broker confirmed it. What it cannot
//! keep gets 503 with `Retry-After`, never 200. Every refusal has a machine-readable reason.
//! What the door remembers in Redis is `door`'s.
mod door;

use crate::platform::{self, HookReply, HookRequest, Intake, NewEvent, Platform, Rejection};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use door::{Claim, SeenKeys};
use shared::config::{Config, ConfigIssue};
use shared::envelope::{encode, InboundEvent};
use shared::topology::Stage;
use shared::Services;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower::limit::GlobalConcurrencyLimitLayer;
use tracing::Instrument;

/// A configured source, ready to receive.
#[derive(Debug)]
struct Source {
    platform: Box<dyn Platform>,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Ingress {
    sources: HashMap<String, Source>,
    services: Services,
    work_queue: String,
    body_limit: usize,
    request_timeout: Duration,
    dedup_ttl: Duration,
}

/// Builds every source's platform, collecting every problem (for `config check` and start-up).
pub fn build_sources(
    config: &Config,
) -> Result<HashMap<String, Box<dyn Platform>>, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut built = HashMap::new();
    for source in &config.sources {
        match platform::build(source) {
            Ok(p) => {
                built.insert(source.id.clone(), p);
            }
            Err(mut e) => issues.append(&mut e),
        }
    }
    if issues.is_empty() {
        Ok(built)
    } else {
        Err(issues)
    }
}

impl Ingress {
    pub fn new(config: &Config, services: Services) -> Result<Self, Vec<ConfigIssue>> {
        let sources = build_sources(config)?
            .into_iter()
            .map(|(id, platform)| (id, Source { platform }))
            .collect();
        Ok(Self {
            sources,
            work_queue: services.broker.topology().stage_queue(Stage::Work),
            services,
            body_limit: config.ingress.body_limit as usize,
            request_timeout: config.ingress.request_timeout,
            dedup_ttl: config.ingress.dedup_ttl,
        })
    }
}

/// The router, without a socket: tests can drive it with `oneshot`.
pub fn app(ingress: Arc<Ingress>, max_concurrency: usize) -> Router {
    Router::new()
        .route(
            "/hooks/{source}",
            // Bounded concurrency: past the limit requests wait for a slot (backpressure)
            // instead of piling work onto the broker connection.
            any(hook).layer(GlobalConcurrencyLimitLayer::new(max_concurrency)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(shared::telemetry::render_metrics))
        .with_state(ingress)
}

async fn readyz(State(st): State<Arc<Ingress>>) -> Response {
    if st.services.broker.is_connected() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable").into_response()
    }
}

/// A refusal's answer: the status and `{"error": reason}`.
fn refuse(status: StatusCode, reason: &str) -> Response {
    let body = serde_json::json!({ "error": reason }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn not_kept() -> Response {
    let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, "not_kept");
    // Platforms retry on 5xx; tell well-behaved senders when.
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn reply(r: HookReply) -> Response {
    (r.status, [(header::CONTENT_TYPE, r.content_type)], r.body).into_response()
}

async fn hook(
    State(st): State<Arc<Ingress>>,
    Path(source_id): Path<String>,
    request: Request,
) -> Response {
    let started = std::time::Instant::now();
    let Some(source) = st.sources.get(&source_id) else {
        metrics::counter!("switchboard_ingress_rejected_total", "source" => "unknown", "reason" => "unknown_source").increment(1);
        return refuse(StatusCode::NOT_FOUND, "unknown_source");
    };
    let span = tracing::info_span!("hook", source = %source_id, platform = source.platform.name(), event_id = tracing::field::Empty);
    let response = match tokio::time::timeout(
        st.request_timeout,
        handle(&st, &source_id, source, request).instrument(span.clone()),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => {
            span.in_scope(|| tracing::warn!("request timed out before the event was kept"));
            not_kept()
        }
    };
    metrics::histogram!("switchboard_ingress_request_seconds", "source" => source_id.clone())
        .record(started.elapsed().as_secs_f64());
    response
}

async fn handle(st: &Ingress, source_id: &str, source: &Source, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(Body::new(body), st.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            metrics::counter!("switchboard_ingress_rejected_total", "source" => source_id.to_owned(), "reason" => "body_too_large").increment(1);
            tracing::warn!(limit = st.body_limit, "refused: body over the limit");
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
        }
    };
    let req = HookRequest {
        method: parts.method,
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        now: chrono::Utc::now(),
    };
    let intake = match source.platform.receive(&req) {
        Ok(intake) => intake,
        Err(rejection) => return refused(source_id, &rejection),
    };
    if let Some(signature) = source.platform.body_free_signature(&req) {
        // The signature covers no body: it may vouch for one body only.
        match door::claim_signature(&st.services.store, source_id, &signature, &req.body).await {
            Ok(Claim::First | Claim::SameBody) => {}
            Ok(Claim::OtherBody) => return refused(source_id, &Rejection::ReplayedSignature),
            Err(e) => {
                // Unchecked, the signature could be a replay with a forged body: not kept.
                tracing::warn!(error = %e, "cannot check the signature's single use; answering 503");
                return not_kept();
            }
        }
    }
    match intake {
        Intake::Reply(r) => {
            metrics::counter!("switchboard_ingress_handshakes_total", "source" => source_id.to_owned()).increment(1);
            reply(r)
        }
        Intake::Ignore { reason, reply: r } => {
            metrics::counter!("switchboard_ingress_ignored_total", "source" => source_id.to_owned(), "reason" => reason).increment(1);
            tracing::debug!(reason, "acknowledged and dropped by rule");
            reply(r)
        }
        Intake::Event { event, reply: r } => {
            let by_body = source
                .platform
                .replayable_forever()
                .then_some(&req.body[..]);
            match st.keep(source_id, source, event, by_body).await {
                KeepOutcome::New | KeepOutcome::Duplicate => reply(r),
                KeepOutcome::NotKept => not_kept(),
            }
        }
    }
}

/// A refusal by the platform (or of a replayed signature), counted and logged.
fn refused(source_id: &str, rejection: &Rejection) -> Response {
    let reason = rejection.reason();
    metrics::counter!("switchboard_ingress_rejected_total", "source" => source_id.to_owned(), "reason" => reason).increment(1);
    // The rejection's text names no secret (platform modules guarantee it).
    tracing::warn!(reason, detail = %rejection, "refused");
    refuse_rejection(rejection)
}

fn refuse_rejection(r: &Rejection) -> Response {
    refuse(r.status(), r.reason())
}

enum KeepOutcome {
    New,
    Duplicate,
    NotKept,
}

impl Ingress {
    /// Door dedup, publish with confirm, then remember the event as kept (also under the body's
    /// hash when `by_body` is given: see `Platform::replayable_forever`).
    async fn keep(
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
