//! The ingress role: verifies inbound webhooks with each platform's own scheme, answers
//! handshakes, and enqueues one `InboundEvent` per user message, answering the platform only
//! once the broker confirmed it. It never calls Dify.
#![forbid(unsafe_code)]

pub mod door;
pub mod door_rounds;
pub mod keep;
pub mod platform;
pub mod recent;
pub mod serve;
pub mod server;
pub mod tls;

use anyhow::Context as _;
use shared::config::{Config, ConfigError, ConfigIssue};
use shared::Services;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every problem in the sources' platform settings and the TLS files.
pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = server::build_sources(config).err().unwrap_or_default();
    if let Some(tls) = &config.ingress.tls {
        if let Err(e) = tls::check(tls) {
            issues.push(ConfigIssue {
                key: "ingress.tls".into(),
                problem: e.to_string(),
            });
        }
    }
    issues
}

/// Serves `/hooks/{source}` on `listener` (HTTPS with `[ingress.tls]`) until `shutdown`;
/// requests in flight finish.
pub async fn run(
    config: Arc<Config>,
    services: Services,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ingress = Arc::new(server::Ingress::new(&config, services).map_err(ConfigError)?);
    let app = server::app(ingress.clone());
    let tls = match &config.ingress.tls {
        Some(tls) => Some(tls::Tls::start(tls, shutdown.child_token()).context("ingress.tls")?),
        None => None,
    };
    let limits = serve::ConnectionLimits {
        max_connections: config.ingress.max_connections,
        header_timeout: config.ingress.header_timeout,
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        sources = config.sources.len(),
        "ingress listening"
    );
    serve::serve(listener, app, limits, tls, shutdown).await;
    ingress.settle().await;
    tracing::info!("ingress stopped");
    Ok(())
}
