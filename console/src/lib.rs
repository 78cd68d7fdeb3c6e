//! `switchboard console`: the auditors' web console and JSON API over the dead letters and the
//! replay record. It loads only the auditors' part of the config (the broker and Redis, the
//! audit key, its users), keeps an index of the dead-letter stream in memory ([`index`]) so a
//! filtered page over 100 000 letters answers in milliseconds, signs users in with argon2
//! password hashes or API tokens ([`auth`]), and replays through the dead-letter crate with the
//! signed-in user on the chained, sealed record. Pages are server-rendered HTML with the
//! stylesheet built in ([`html`], [`pages`]); the same operations are JSON under `/api/`
//! ([`api`]). It never consumes or deletes a dead letter, and needs no platform secret.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod error;
pub mod export;
pub mod html;
pub mod index;
pub mod pages;
pub mod query;
pub mod redact;
pub mod replay;
pub mod state;
pub mod where_is;

use anyhow::Context as _;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use deadletters::record::Names;
use deadletters::trail::Appender;
use shared::config::AuditorConfig;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use auth::session::Sessions;
use auth::Auth;
use broker::BrokerLink;
use index::Index;
use state::Console;

/// Every route: the pages, then the API (the OpenAPI document lists the API's).
pub fn app(state: Arc<Console>) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/letters") }))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/letters", get(pages::letters))
        .route("/letters/{id}", get(pages::letter))
        .route("/stats", get(pages::stats))
        .route("/replays", get(pages::replays))
        .route("/replays/{id}", get(pages::replay_run))
        .route("/replay/preview", post(pages::preview))
        .route("/replay", post(pages::start_replay))
        .route("/events", get(pages::events))
        .route("/export.csv", get(pages::export_csv))
        .route("/export.jsonl", get(pages::export_jsonl))
        .route("/assets/console.css", get(pages::css))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(pages::readyz));
    Router::new()
        .merge(pages)
        .merge(api_routes())
        .layer(middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(state)
}

/// The API's routes (each is in `assets/openapi.json`).
pub fn api_routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/openapi.json", get(api::openapi))
        .route("/api/whoami", get(api::whoami))
        .route("/api/letters", get(api::letters))
        .route("/api/letters/{id}", get(api::letter))
        .route("/api/stats", get(api::stats))
        .route("/api/replays", get(api::replays).post(api::start_replay))
        .route("/api/replays/{id}", get(api::replay_run))
        .route("/api/chain", get(api::chain))
        .route("/api/events", get(api::events))
        .route("/api/export.csv", get(api::export_csv))
        .route("/api/export.jsonl", get(api::export_jsonl))
}

/// Headers every answer carries: no framing, no sniffing, no referrer, nothing but our own
/// files, and no caching of what a signed-in user saw.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (k, v) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The client's address, when the server knows it (sign-in limits per address).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

pub fn client_addr(a: &ClientAddr) -> Option<IpAddr> {
    a.0.map(|s| s.ip())
}

/// Checks what the console needs from the config and builds its state.
pub fn build(config: Arc<AuditorConfig>, stop: CancellationToken) -> anyhow::Result<Arc<Console>> {
    let console = config
        .console
        .clone()
        .context("there is no [console] section in the config")?;
    let keyring = config
        .audit
        .keyring()
        .context("the console needs [audit] key: without it nothing it shows can be verified")?;
    if !console.secure_cookies && !console.listen.ip().is_loopback() {
        anyhow::bail!("console.secure_cookies = false is allowed only with a loopback console.listen (plain HTTP on this machine)");
    }
    if console.users.is_empty() && console.tokens.is_empty() {
        tracing::warn!("[console] has no users and no tokens: nobody can sign in");
    }
    let redis = shared::store::Store::new(&config.redis)?;
    let topology = shared::topology::Topology::of_broker(&config.broker);
    let sessions = Sessions::new(
        redis.clone(),
        console.session_ttl,
        console.login_attempts,
        console.login_window,
    );
    let host = whoami::hostname().unwrap_or_else(|_| "unknown".into());
    Ok(Arc::new(Console {
        auth: Auth::new(&console, sessions),
        index: Arc::new(Index::default()),
        link: Arc::new(BrokerLink::new(
            config.broker.clone(),
            Some(keyring.clone()),
        )),
        names: Names::of(&topology, Some(&keyring)),
        trail: Appender::new(redis.clone(), config.audit.checkpoint_every, host),
        redis,
        console,
        config,
        running: Mutex::new(Default::default()),
        stop,
        tasks: TaskTracker::new(),
    }))
}

/// Starts the followers that fill the index and the checkpoint timer.
pub fn start_background(state: &Arc<Console>) {
    let s = state.clone();
    state.tasks.spawn(index::follow::letters(
        s.index.clone(),
        s.link.clone(),
        s.names.clone(),
        s.stop.clone(),
    ));
    let replays = shared::topology::Topology::of_broker(&s.config.broker).replays();
    state.tasks.spawn(index::follow::replays(
        s.index.clone(),
        s.link.clone(),
        replays,
        s.stop.clone(),
    ));
    state.tasks.spawn(checkpoints(state.clone()));
}

/// Appends a checkpoint to the replay record whenever the last record is older than
/// `[audit] checkpoint_every`, so a chain record stays near the retention horizon.
async fn checkpoints(state: Arc<Console>) {
    let every = (state.config.audit.checkpoint_every / 24)
        .clamp(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = state.stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let Ok(store) = state.link.store().await else {
            continue;
        };
        match state.trail.checkpoint_if_due(&store).await {
            Ok(true) => tracing::info!("checkpoint appended to the replay record"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not append a checkpoint"),
        }
    }
}

/// Runs the console on `listener` until `stop`, then lets running replays record how far they
/// got.
pub async fn run(
    config: Arc<AuditorConfig>,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let state = build(config, stop.clone())?;
    start_background(&state);
    tracing::info!(listen = %listener.local_addr()?, "console listening");
    axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await?;
    state.tasks.close();
    state.tasks.wait().await;
    Ok(())
}
