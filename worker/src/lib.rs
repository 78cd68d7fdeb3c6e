//! The worker role: consumes `InboundEvent`s, calls the source's Dify app at most once per event
//! (idempotency records and leases in Redis), keeps each conversation's Dify context, and
//! publishes one `DispatchJob` per destination. Transient failures wait in delay queues;
//! permanent ones become dead letters.
#![forbid(unsafe_code)]

pub mod cap;
pub mod conversation;
pub mod dify;
pub mod hold;
pub mod idempotency;
pub mod process;

use shared::config::{Config, ConfigIssue};
use shared::consumer::{consume, ConsumerSpec};
use shared::topology::Stage;
use shared::Services;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Problems in the config that only the worker sees: each app's inputs mapping.
pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    config.apps.iter().flat_map(dify::validate_inputs).collect()
}

/// Consumes the work queue until `shutdown`, then lets calls in flight finish (within
/// `worker.shutdown_grace`) before returning.
pub async fn run(
    config: Arc<Config>,
    services: Services,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        // Dify answers slowly; keep connections for the many calls in flight.
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        // No overall timeout here: each app's `timeout` bounds its whole call (or stream).
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let dify = dify::DifyClient::new(http, &config.apps);
    let owner = format!(
        "worker-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let worker = Arc::new(process::Worker::new(
        config.clone(),
        services.clone(),
        dify,
        owner,
    ));
    let spec = ConsumerSpec {
        queue: services.broker.topology().stage_queue(Stage::Work),
        prefetch: config.worker.concurrency.min(u16::MAX as usize) as u16,
        grace: config.worker.shutdown_grace,
        role: "worker",
    };
    consume(services.broker.clone(), spec, shutdown, move |delivery| {
        worker.clone().handle(delivery)
    })
    .await;
    Ok(())
}
