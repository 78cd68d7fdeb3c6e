//! Moving a message on within its stage, the same way for the worker and the dispatcher: park
//! it in the delay queue that covers a wait (or straight back on the stage queue when there is
//! no wait), or give it up as a dead letter in the dead-letter stream. Both return only once the
//! broker confirmed, so the caller may then ack the message it came from. What to do with a
//! message is the caller's decision; this module only carries it out.
use crate::broker::{Broker, BrokerError, Publish};
use crate::envelope::{encode, DeadLetter, Envelope, Stage};
use std::time::Duration;

/// Publishes `msg` (whose id is `id`) to come back to `stage` after `wait`.
pub async fn park<T: Envelope>(
    broker: &Broker,
    stage: Stage,
    msg: &T,
    id: String,
    wait: Duration,
) -> Result<(), BrokerError> {
    let topology = broker.topology();
    let (queue, expiration) = match topology.delay(stage, wait) {
        Some(route) => (route.queue, Some(route.expiration)),
        None => (topology.stage_queue(stage), None),
    };
    let opts = Publish {
        message_id: Some(id),
        expiration,
        ..Default::default()
    };
    broker.publish(&queue, &encode(msg), opts).await
}

/// Publishes a dead letter to the dead-letter stream.
pub async fn bury(broker: &Broker, dead_letter: &DeadLetter) -> Result<(), BrokerError> {
    metrics::counter!("switchboard_dead_letters_total", "stage" => dead_letter.stage.as_str(), "reason" => dead_letter.reason.as_str()).increment(1);
    let opts = Publish {
        message_id: Some(dead_letter.id.to_string()),
        ..Default::default()
    };
    broker
        .publish(
            &broker.topology().dead_letters(),
            &encode(dead_letter),
            opts,
        )
        .await
}

/// How a delivery is settled once its outcome is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The outcome (jobs, a delay, a dead letter) is with the broker: ack.
    Ack,
    /// Nothing durable could be written (broker or Redis away): give the message back.
    Requeue,
}

impl Settle {
    /// `Ack` if the broker took the outcome, else `Requeue` (logging why).
    pub fn after(published: Result<(), BrokerError>, what: &str) -> Self {
        match published {
            Ok(()) => Settle::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "could not {what}; the message will come back");
                Settle::Requeue
            }
        }
    }

    /// Acks, or gives the message back after a short pause (so an outage is not a hot loop).
    pub async fn apply(self, acker: &lapin::Acker) {
        match self {
            Settle::Ack => {
                let _ = acker.ack(lapin::options::BasicAckOptions::default()).await;
            }
            Settle::Requeue => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = acker
                    .nack(lapin::options::BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        }
    }
}
