//! The dispatcher role: consumes `DispatchJob`s, renders each for its target's kind, delivers it
//! at the pace the target allows, retries on a schedule with jitter and dead-letters what is
//! refused for good or exhausted. A job already delivered is never posted again. It publishes
//! dead letters (through `shared::stage`); reading, exporting and replaying them is the
//! `deadletters` crate's.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod deliver;
pub mod ratelimit;
pub mod split;
pub mod ssrf;
pub mod stream;
pub mod target;
pub mod tokens;

use shared::config::{Config, ConfigIssue};
use shared::consumer::{consume, ConsumerSpec};
use shared::topology::Stage;
use shared::Services;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a job (or the rest of a split answer) waits when Redis cannot answer a question it
/// must have answered: whether it was delivered, whether a streamed message exists, what the
/// rate limiter allows. Every step that defers for Redis waits this long.
pub(crate) const STORE_WAIT: Duration = Duration::from_secs(5);

/// Every problem in the targets' and reply channels' settings.
pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    deliver::build_routes(config).err().unwrap_or_default()
}

/// Consumes the deliver queue until `shutdown`, then lets deliveries in flight finish.
pub async fn run(
    config: Arc<Config>,
    services: Services,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dispatcher = Arc::new(deliver::Dispatcher::new(&config, services.clone())?);
    let spec = ConsumerSpec {
        queue: services.broker.topology().stage_queue(Stage::Deliver),
        prefetch: config.dispatcher.concurrency.min(u16::MAX as usize) as u16,
        grace: config.dispatcher.shutdown_grace,
        role: "dispatcher",
    };
    consume(services.broker.clone(), spec, shutdown, move |delivery| {
        // A job's future holds every branch of its delivery and is large; boxed once here, the
        // consumer and the runtime move a pointer instead of copying it whole into its task
        // (docs/PERFORMANCE.md, Findings item 6).
        Box::pin(dispatcher.clone().handle(delivery))
    })
    .await;
    Ok(())
}
