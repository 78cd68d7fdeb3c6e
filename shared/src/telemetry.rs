//! Logs and metrics. Tracing goes to stderr as human text (coloured only on a terminal) or JSON
//! lines, filtered by `RUST_LOG` (default `info`); every log line about an event carries its
//! `event_id`, through the span the roles open per message (the door records it there only for an
//! event it did not keep; its lines about a kept event name it themselves). Metrics are
//! Prometheus text on `/metrics`: the ingress serves it on its own listener, worker and
//! dispatcher on a small admin listener ([`admin_router`]).
use crate::config::LogFormat;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber; a second call (tests) does nothing.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Whether human logs are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything (no-color.org) (pure). A file, a pipe or a log collector gets plain text: escape codes
/// there are noise to every reader and grep, and cost the process formatting them (about 4 % of
/// the ingress's instructions per request: docs/PERFORMANCE.md).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Tracing for tests: captured by the test harness, shown only for failing tests.
pub fn init_test_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Only one global recorder per process; in-process tests share it.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What `/readyz` asks.
pub trait Readiness: Send + Sync + 'static {
    fn ready(&self) -> bool;
    /// What `/readyz` says about it (a line per thing it checks).
    fn report(&self) -> String {
        if self.ready() {
            "ready".into()
        } else {
            "broker unreachable".into()
        }
    }
}

impl Readiness for crate::broker::Broker {
    fn ready(&self) -> bool {
        self.is_connected()
    }
}

/// `/metrics`, `/healthz`, `/readyz` for roles without an HTTP listener of their own.
pub fn admin_router<R: Readiness + Clone>(readiness: R) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(r): State<R>| async move {
                let status = if r.ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, r.report())
            }),
        )
        .with_state(readiness)
}

/// The Prometheus text exposition.
pub async fn render_metrics() -> String {
    metrics().render()
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe gets plain text");
        assert!(!colour(true, Some("1".into())));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(colour(true, Some("".into())));
    }
}
