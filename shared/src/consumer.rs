//! The consume loop both worker and dispatcher run: take deliveries from a stage queue with a
//! bounded prefetch, hand each to a task, come back after a broker outage, and on shutdown stop
//! taking new work and let the tasks in flight finish (within a grace period) before the channel
//! closes — a message not acked by then returns to the queue for another process. The handler
//! owns the ack. The one message this loop settles itself is one whose seal does not verify
//! while `[audit] require_seals` holds: it is rejected unread, and the queue dead-letters it to
//! the dead-letter stream, where auditors see it as poison that does not verify (and replay
//! refuses it). Nothing else about a message is decided here.
use crate::broker::Broker;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What to consume and how much at once.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub queue: String,
    /// Unacked deliveries this process holds at most: the bound on in-flight work, so a slow
    /// downstream keeps messages in the broker, not in memory.
    pub prefetch: u16,
    /// How long tasks in flight get to finish after shutdown.
    pub grace: Duration,
    /// `worker` or `dispatcher`, for logs and metrics.
    pub role: &'static str,
}

/// Runs until `shutdown`, then drains. `handler` gets every delivery and must ack/nack it.
pub async fn consume<H, F>(
    broker: Broker,
    spec: ConsumerSpec,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let mut channels = Vec::new();
    'outer: loop {
        let channel = match broker.consumer_channel(&shutdown).await {
            Ok(ch) => ch,
            Err(_) => break,
        };
        let setup = async {
            channel
                .basic_qos(spec.prefetch, BasicQosOptions::default())
                .await?;
            channel
                .basic_consume(
                    spec.queue.as_str().into(),
                    "".into(),
                    // Manual acks: a message is settled only after its outcome is durable.
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        let mut consumer = match setup.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(role = spec.role, queue = %spec.queue, error = %e, "cannot consume; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        tracing::info!(role = spec.role, queue = %spec.queue, prefetch = spec.prefetch, "consuming");
        let tag = consumer.tag();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Stop the flow of new deliveries; those already prefetched but not started
                    // are returned to the queue when the channel closes.
                    let _ = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
                    channels.push(channel);
                    break 'outer;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        if refuse_unsealed(&broker, &spec, &delivery).await {
                            continue;
                        }
                        metrics::gauge!("switchboard_in_flight", "role" => spec.role).increment(1.0);
                        let fut = handler(delivery);
                        let role = spec.role;
                        tracker.spawn(async move {
                            fut.await;
                            metrics::gauge!("switchboard_in_flight", "role" => role).decrement(1.0);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(role = spec.role, error = %e, "consumer failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!(role = spec.role, "consumer closed; reconnecting");
                        break;
                    }
                },
            }
        }
        // Keep the old channel open: tasks in flight still ack on it if it is alive.
        channels.push(channel);
        channels.retain(|c| c.status().connected());
    }
    tracker.close();
    if tokio::time::timeout(spec.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            role = spec.role,
            in_flight = tracker.len(),
            "grace period over; returning unfinished messages"
        );
    }
    for ch in channels {
        let _ = ch.close(200, "shutdown".into()).await;
    }
    tracing::info!(role = spec.role, "stopped consuming");
}

/// Rejects (without requeue, so the queue dead-letters it) a delivery whose seal does not
/// verify, when the broker's keyring requires seals. Returns whether it did.
async fn refuse_unsealed(broker: &Broker, spec: &ConsumerSpec, delivery: &Delivery) -> bool {
    let Some(keyring) = broker.keyring().filter(|k| k.requires_seals()) else {
        return false;
    };
    let verdict = keyring.verify(&delivery.data, seal_of(&delivery.properties).as_deref());
    if verdict.is_verified() {
        return false;
    }
    tracing::error!(role = spec.role, queue = %spec.queue, seal = verdict.word(), why = %verdict.explain(), "refusing a message whose seal does not verify; the queue dead-letters it");
    metrics::counter!("switchboard_unsealed_refused_total", "role" => spec.role).increment(1);
    let _ = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await;
    true
}

/// The seal header of a message, if it has one.
pub fn seal_of(props: &lapin::BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(crate::seal::SEAL_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
