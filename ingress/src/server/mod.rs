//! The ingress HTTP server's routes: `/hooks/{source}` for every configured source, `/healthz`
//! and `/readyz` (the metrics are on the admin listener: they name every source id, that is,
//! every hook URL). What a request goes through is `hook`'s (in order: source, address, body,
//! signature, rate, a slot, the door, the broker); what the door remembers in Redis is
//! `crate::door`'s; keeping an event is `crate::keep`'s (shared with the connector); who a request comes from is `client_ip`'s; the per-source rate
//! is `inbound_rate`'s. Connections (their number, the header timeout, TLS) are
//! `crate::serve`'s.
mod client_ip;
mod hook;
pub mod inbound_rate;

use inbound_rate::InboundRates;

use crate::keep::{Door, Keeper};
use crate::platform::fields::BodyFields;
use crate::platform::{self, Platform};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use shared::config::{Config, ConfigIssue, SourceMode};
use shared::Services;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A configured source, ready to receive.
#[derive(Debug)]
struct Source {
    platform: Box<dyn Platform>,
    /// What a generic JSON source takes from the body (text, required input fields).
    fields: Option<BodyFields>,
    /// Where its requests may come from (empty: anywhere).
    allow_ips: Vec<ipnet::IpNet>,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Ingress {
    sources: HashMap<String, Source>,
    services: Services,
    keeper: Keeper,
    body_limit: usize,
    body_timeout: Duration,
    request_timeout: Duration,
    trusted_proxies: Vec<ipnet::IpNet>,
    rates: InboundRates,
    /// One per verified request doing Redis or broker work (`max_concurrency`).
    slots: Semaphore,
}

/// A source's platform and body fields, built from the config.
pub type Built = (Box<dyn Platform>, Option<BodyFields>);

/// Builds every source's platform and body fields, collecting every problem (for `config check`
/// and start-up).
pub fn build_sources(config: &Config) -> Result<HashMap<String, Built>, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut built = HashMap::new();
    for source in &config.sources {
        let fields = BodyFields::for_source(source, config.app(&source.app));
        match (platform::build(source), fields) {
            (Ok(p), Ok(fields)) => {
                built.insert(source.id.clone(), (p, fields));
            }
            (p, fields) => {
                issues.extend(p.err().into_iter().flatten());
                issues.extend(fields.err().into_iter().flatten());
            }
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
        let mut platforms = build_sources(config)?;
        let sources = config
            .sources
            .iter()
            // A stream source has no hook URL: the connector role receives its events.
            .filter(|s| s.mode == SourceMode::Http)
            .filter_map(|s| {
                let (platform, fields) = platforms.remove(&s.id)?;
                let source = Source {
                    platform,
                    fields,
                    allow_ips: s.allow_ips.clone(),
                };
                Some((s.id.clone(), source))
            })
            .collect();
        let ingress = &config.ingress;
        Ok(Self {
            sources,
            keeper: Keeper::new(services.clone(), ingress.dedup_ttl, Door::Ingress),
            services,
            body_limit: usize::try_from(ingress.body_limit).unwrap_or(usize::MAX),
            body_timeout: ingress.body_timeout,
            request_timeout: ingress.request_timeout,
            trusted_proxies: ingress.trusted_proxies.clone(),
            rates: InboundRates::new(config),
            slots: Semaphore::new(ingress.max_concurrency.max(1)),
        })
    }
}

impl Ingress {
    /// Waits for what the door still writes behind its answers: for a graceful stop.
    pub async fn settle(&self) {
        self.keeper.settle().await;
    }
}

/// The router, without a socket: tests can drive it with `oneshot`.
pub fn app(ingress: Arc<Ingress>) -> Router {
    Router::new()
        .route("/hooks/{source}", any(hook::hook))
        // Also here (not only on the admin listener): load balancers and orchestrators probe
        // the port they send traffic to.
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ingress)
}

async fn readyz(State(st): State<Arc<Ingress>>) -> Response {
    if st.services.broker.is_connected() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable").into_response()
    }
}
