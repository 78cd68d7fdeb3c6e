//! The ingress role: verifies inbound webhooks with each platform's own scheme, answers
//! handshakes, and enqueues one `InboundEvent` per user message, answering the platform only
//! once the broker confirmed it. It never calls Dify.
#![forbid(unsafe_code)]

pub mod platform;
pub mod server;

use shared::config::{Config, ConfigError, ConfigIssue};
use shared::Services;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every problem in the sources' platform settings.
pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    server::build_sources(config).err().unwrap_or_default()
}

/// Serves `/hooks/{source}` on `listener` until `shutdown`; requests in flight finish.
pub async fn run(
    config: Arc<Config>,
    services: Services,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ingress = server::Ingress::new(&config, services).map_err(ConfigError)?;
    let app = server::app(Arc::new(ingress), config.ingress.max_concurrency);
    tracing::info!(listen = %listener.local_addr()?, sources = config.sources.len(), "ingress listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    tracing::info!("ingress stopped");
    Ok(())
}
