//! Queue depths as Prometheus gauges: every few seconds a role asks the broker (a passive
//! declare, which changes nothing) how many messages are ready in the queues of the stages it
//! consumes, and how many consumers the stage queue has, and exports them as
//! `switchboard_queue_messages{stage,queue}` and `switchboard_queue_consumers{stage,queue}`.
//! Every process of a stage reports the same numbers: dashboards take the `max` per queue. This
//! module only reads; it never consumes, publishes or declares anything new.
use crate::broker::Broker;
use crate::topology::Stage;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the depths are read.
pub const EVERY: Duration = Duration::from_secs(5);

/// Reads the depths of `stages`' queues every [`EVERY`] until `shutdown`.
pub async fn sample(broker: Broker, stages: Vec<Stage>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !broker.is_connected() {
            continue;
        }
        let Ok(channel) = broker.consumer_channel(&shutdown).await else {
            break;
        };
        for stage in &stages {
            for queue in broker.topology().queues_of(*stage) {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                match channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    Ok(q) => {
                        let labels = [("stage", stage.as_str().to_owned()), ("queue", queue)];
                        metrics::gauge!("switchboard_queue_messages", &labels)
                            .set(f64::from(q.message_count()));
                        metrics::gauge!("switchboard_queue_consumers", &labels)
                            .set(f64::from(q.consumer_count()));
                    }
                    Err(e) => {
                        // A failed passive declare closes the channel; try again next time.
                        tracing::debug!(error = %e, queue = %queue, "cannot read a queue's depth");
                        break;
                    }
                }
            }
        }
        let _ = channel.close(200, "sampled".into()).await;
    }
}
