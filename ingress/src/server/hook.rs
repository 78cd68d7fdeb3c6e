//! One request to `/hooks/{source}`, in the order that spends the least on what will be refused:
//!
//! 1. **source**: an unknown one is 404 before anything is read or held;
//! 2. **address**: a source with `allow_ips` refuses other clients with 403 (the client as
//!    `client_ip` finds it behind `trusted_proxies`);
//! 3. **body**: read in full within `body_timeout` (else 408) and up to `body_limit` (else 413);
//! 4. **signature**: the platform verifies and reads the request (401, 400, 405);
//! 5. **rate**: a verified request beyond the source's `rate` is 429 with `Retry-After` (forged
//!    requests never use up a source's rate, so whoever knows the URL cannot silence it);
//! 6. **slot**: a request with Redis or broker work to do takes one of `max_concurrency` slots
//!    (a slow body or a forged request never holds one);
//! 7. **door**: a body-free signature (DingTalk) vouches for one body only; a platform's retry
//!    of a kept event is answered as kept; a new event is published and confirmed (`keep`).
//!
//! Steps 4 to 7 run within `request_timeout`: what is not kept by then gets 503, never 200.
//! Every refusal is `{"error": reason}` and counted in `switchboard_ingress_rejected_total`.
use super::client_ip::{allowed, client_ip};
use super::inbound_rate::retry_after_secs;
use super::{Ingress, Source};
use crate::door::{self, Claim};
use crate::keep::KeepOutcome;
use crate::platform::{HookReply, HookRequest, Intake, Rejection};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

pub(super) async fn hook(
    State(st): State<Arc<Ingress>>,
    Path(source_id): Path<String>,
    request: Request,
) -> Response {
    let started = std::time::Instant::now();
    let Some(source) = st.sources.get(&source_id) else {
        return refused_at_door("unknown", StatusCode::NOT_FOUND, "unknown_source");
    };
    let span = tracing::info_span!("hook", source = %source_id, platform = source.platform.name(), event_id = tracing::field::Empty);
    // Boxed: the request's future is several kilobytes, and every layer that takes it by value
    // (the span, the timeout, axum's and tower's wrappers) would copy it again.
    let response = Box::pin(st.receive(&source_id, source, request))
        .instrument(span)
        .await;
    metrics::histogram!("switchboard_ingress_request_seconds", "source" => source_id.clone())
        .record(started.elapsed().as_secs_f64());
    response
}

impl Ingress {
    /// Steps 2 to 7 for a known source.
    async fn receive(&self, source_id: &str, source: &Source, request: Request) -> Response {
        if !source.allow_ips.is_empty() {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            // Without a peer address (no socket) nobody can be placed on the list.
            let client = peer.map(|p| client_ip(p, request.headers(), &self.trusted_proxies));
            if !client.is_some_and(|c| allowed(c, &source.allow_ips)) {
                tracing::warn!(client = ?client, "refused: address not in the source's allow_ips");
                return refused_at_door(source_id, StatusCode::FORBIDDEN, "ip_not_allowed");
            }
        }
        let (parts, body) = request.into_parts();
        let read = axum::body::to_bytes(Body::new(body), self.body_limit);
        let body = match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                tracing::warn!(limit = self.body_limit, "refused: body over the limit");
                return refused_at_door(source_id, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.body_timeout, "refused: body not received in time");
                return refused_at_door(source_id, StatusCode::REQUEST_TIMEOUT, "body_timeout");
            }
        };
        let req = HookRequest {
            method: parts.method,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
            now: chrono::Utc::now(),
        };
        let admit = Box::pin(self.admit(source_id, source, &req));
        match tokio::time::timeout(self.request_timeout, admit).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("request timed out before the event was kept");
                not_kept()
            }
        }
    }

    /// Steps 4 to 7: signature, rate, slot, door.
    async fn admit(&self, source_id: &str, source: &Source, req: &HookRequest) -> Response {
        let mut intake = match source.platform.receive(req) {
            Ok(intake) => intake,
            Err(rejection) => return refused(source_id, &rejection),
        };
        if let (Some(fields), Intake::Event { event, .. }) = (&source.fields, &mut intake) {
            if let Err(rejection) = fields.apply(event) {
                return refused(source_id, &rejection);
            }
        }
        if let Err(wait) = self.rates.admit(source_id) {
            return rate_limited(source_id, wait);
        }
        let signature = source.platform.body_free_signature(req);
        // Only what goes to Redis or the broker takes a slot; the wait is bounded by the
        // request's timeout around this function.
        let _slot = if signature.is_some() || matches!(intake, Intake::Event { .. }) {
            match self.slots.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return not_kept(),
            }
        } else {
            None
        };
        if let Some(signature) = signature {
            // The signature covers no body: it may vouch for one body only.
            match door::claim_signature(&self.services.store, source_id, &signature, &req.body)
                .await
            {
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
                match self
                    .keeper
                    .keep(source_id, source.platform.name(), event, by_body)
                    .await
                {
                    KeepOutcome::New | KeepOutcome::Duplicate => reply(r),
                    KeepOutcome::NotKept => not_kept(),
                }
            }
        }
    }
}

/// A refusal's answer: the status and `{"error": reason}`.
fn refuse(status: StatusCode, reason: &str) -> Response {
    let body = serde_json::json!({ "error": reason }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A refusal of the server's own (not the platform's), counted (`source` is `unknown` for an
/// unknown source: the label must not grow with whatever ids strangers try).
fn refused_at_door(source: &str, status: StatusCode, reason: &'static str) -> Response {
    metrics::counter!("switchboard_ingress_rejected_total", "source" => source.to_owned(), "reason" => reason).increment(1);
    refuse(status, reason)
}

/// A refusal by the platform (or of a replayed signature), counted and logged.
fn refused(source_id: &str, rejection: &Rejection) -> Response {
    let reason = rejection.reason();
    metrics::counter!("switchboard_ingress_rejected_total", "source" => source_id.to_owned(), "reason" => reason).increment(1);
    // The rejection's text names no secret (platform modules guarantee it).
    tracing::warn!(reason, detail = %rejection, "refused");
    match rejection {
        // What is wrong with the body, for the sender to fix (never a secret: the body's own
        // field names).
        Rejection::Malformed(detail) => {
            let body = serde_json::json!({ "error": reason, "detail": detail }).to_string();
            (
                rejection.status(),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        _ => refuse(rejection.status(), reason),
    }
}

fn rate_limited(source_id: &str, wait: std::time::Duration) -> Response {
    tracing::warn!(?wait, "refused: over the source's rate");
    let mut r = refused_at_door(source_id, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs(wait)),
    );
    r
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
