//! Every exchange-less name and queue Switchboard uses on the broker, and their declaration, in
//! one place. Work and delivery queues are durable quorum queues; retries wait in delay queues
//! (one per delay level, queue-wide TTL, dead-lettering back to their stage); what gives up goes
//! to a dead-letter stream that auditors read without consuming. Declaring is idempotent, so
//! every process declares on connect and `switchboard topology` does it ahead of time.
use crate::config::{BrokerConfig, Config};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;
use std::collections::BTreeSet;
use std::time::Duration;

pub use crate::envelope::Stage;

/// Delay levels that exist whatever the retry schedules say: waits that are not retries (a held
/// lease, a rate limit, a paused target) pick the smallest level that covers the wait.
pub const WAIT_LADDER: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1800),
];

/// The names and delay levels derived from a config.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    work_levels: Vec<Duration>,
    deliver_levels: Vec<Duration>,
    delivery_limit: u32,
    dead_letter_max_age: Duration,
    dead_letter_max_bytes: u64,
    /// Replicas per quorum queue and stream on a cluster (`None`: the broker's default).
    group_size: Option<u32>,
}

/// Where to publish a message that must wait, and for how long it waits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayRoute {
    pub queue: String,
    /// Per-message expiration (at most the queue's TTL): the exact wait.
    pub expiration: Duration,
}

impl Topology {
    pub fn from_config(config: &Config) -> Self {
        let mut deliver: Vec<Duration> = config.dispatcher.retry_schedule.clone();
        for t in &config.targets {
            if let Some(s) = &t.retry_schedule {
                deliver.extend(s);
            }
        }
        Self {
            prefix: config.broker.prefix.clone(),
            work_levels: levels(&config.worker.retry_schedule),
            deliver_levels: levels(&deliver),
            delivery_limit: config.broker.delivery_limit,
            dead_letter_max_age: config.broker.dead_letter_max_age,
            dead_letter_max_bytes: config.broker.dead_letter_max_bytes,
            group_size: config.broker.quorum_group_size(),
        }
    }

    /// The names and stream retention of a `[broker]` section alone, without delay levels:
    /// enough for the auditors' tools, which read the streams and publish to the stage queues
    /// but never declare or use a delay queue.
    pub fn of_broker(broker: &BrokerConfig) -> Self {
        Self {
            prefix: broker.prefix.clone(),
            work_levels: Vec::new(),
            deliver_levels: Vec::new(),
            delivery_limit: broker.delivery_limit,
            dead_letter_max_age: broker.dead_letter_max_age,
            dead_letter_max_bytes: broker.dead_letter_max_bytes,
            group_size: broker.quorum_group_size(),
        }
    }

    /// How long the streams keep an entry (`[broker] dead_letter_max_age`).
    pub fn stream_max_age(&self) -> Duration {
        self.dead_letter_max_age
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The queue a stage consumes.
    pub fn stage_queue(&self, stage: Stage) -> String {
        format!("{}.{}", self.prefix, stage.as_str())
    }

    /// The dead-letter stream.
    pub fn dead_letters(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }

    /// The stream of replay records.
    pub fn replays(&self) -> String {
        format!("{}.replays", self.prefix)
    }

    fn levels(&self, stage: Stage) -> &[Duration] {
        match stage {
            Stage::Work => &self.work_levels,
            Stage::Deliver => &self.deliver_levels,
        }
    }

    fn delay_queue(&self, stage: Stage, level: Duration) -> String {
        format!(
            "{}.{}.delay.{}ms",
            self.prefix,
            stage.as_str(),
            level.as_millis()
        )
    }

    /// Where a message of `stage` waits `wait` before it returns to the stage queue; `None`
    /// means no wait: publish to the stage queue itself. Waits longer than the longest level
    /// take the longest level (the consumer decides again when it comes back).
    pub fn delay(&self, stage: Stage, wait: Duration) -> Option<DelayRoute> {
        if wait < Duration::from_millis(1) {
            return None;
        }
        let levels = self.levels(stage);
        let level = levels
            .iter()
            .copied()
            .find(|l| *l >= wait)
            .or_else(|| levels.last().copied())?;
        Some(DelayRoute {
            queue: self.delay_queue(stage, level),
            expiration: wait.min(level),
        })
    }

    /// A stage's queue and its delay queues.
    pub fn queues_of(&self, stage: Stage) -> Vec<String> {
        std::iter::once(self.stage_queue(stage))
            .chain(
                self.levels(stage)
                    .iter()
                    .map(|l| self.delay_queue(stage, *l)),
            )
            .collect()
    }

    /// Every queue name, for `switchboard topology` and for tests that clean up.
    pub fn all_queues(&self) -> Vec<String> {
        let mut q = vec![
            self.stage_queue(Stage::Work),
            self.stage_queue(Stage::Deliver),
            self.dead_letters(),
            self.replays(),
        ];
        for stage in [Stage::Work, Stage::Deliver] {
            q.extend(
                self.levels(stage)
                    .iter()
                    .map(|l| self.delay_queue(stage, *l)),
            );
        }
        q
    }

    /// Declares every queue and stream. Idempotent: the same arguments on every call.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_streams(channel).await?;
        self.declare_queues(channel).await
    }

    /// Declares the dead-letter and replay streams.
    pub async fn declare_streams(&self, channel: &Channel) -> lapin::Result<()> {
        for (name, bytes) in [
            (self.dead_letters(), self.dead_letter_max_bytes),
            (self.replays(), 1 << 30),
        ] {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), long("stream"));
            if let Some(n) = self.group_size {
                args.insert(
                    "x-initial-cluster-size".into(),
                    AMQPValue::LongInt(n as i32),
                );
            }
            // Retention by age and size; the store is read at any offset, never consumed away.
            args.insert(
                "x-max-age".into(),
                long(&format!("{}s", self.dead_letter_max_age.as_secs().max(1))),
            );
            args.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(bytes as i64),
            );
            args.insert(
                "x-stream-max-segment-size-bytes".into(),
                AMQPValue::LongLongInt(64 << 20),
            );
            channel
                .queue_declare(name.as_str().into(), DURABLE, args)
                .await?;
        }
        Ok(())
    }

    /// Declares the stage queues and their delay queues: what events and jobs move through.
    pub async fn declare_queues(&self, channel: &Channel) -> lapin::Result<()> {
        for stage in [Stage::Work, Stage::Deliver] {
            let mut args = self.quorum();
            // A message that makes consumers crash or hang keeps coming back; past this many
            // deliveries the broker gives up on it and dead-letters it (as poison) to the stream.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(self.delivery_limit as i32),
            );
            args.insert("x-dead-letter-exchange".into(), long(""));
            args.insert(
                "x-dead-letter-routing-key".into(),
                long(&self.dead_letters()),
            );
            // At-least-once dead-lettering keeps a poison message until the stream confirms it.
            args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
            args.insert("x-overflow".into(), long("reject-publish"));
            channel
                .queue_declare(self.stage_queue(stage).as_str().into(), DURABLE, args)
                .await?;
            for level in self.levels(stage) {
                let mut args = self.quorum();
                // Queue-wide TTL caps the wait at the level; messages carry their exact wait.
                args.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(level.as_millis() as i64),
                );
                args.insert("x-dead-letter-exchange".into(), long(""));
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    long(&self.stage_queue(stage)),
                );
                // Expired messages move back to the stage only once it has them (never lost).
                args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
                args.insert("x-overflow".into(), long("reject-publish"));
                channel
                    .queue_declare(
                        self.delay_queue(stage, *level).as_str().into(),
                        DURABLE,
                        args,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    fn quorum(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Quorum queues replicate and fsync: a confirmed message survives a broker crash (and,
        // on a cluster, the loss of a minority of the queue's replicas).
        args.insert("x-queue-type".into(), long("quorum"));
        if let Some(n) = self.group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(n as i32),
            );
        }
        args
    }

    /// Deletes every queue (tests clean up after themselves with this).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for q in self.all_queues() {
            channel
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Survive broker restarts: an acknowledged event must never be lost.
const DURABLE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

fn levels(schedule: &[Duration]) -> Vec<Duration> {
    let set: BTreeSet<Duration> = schedule
        .iter()
        .copied()
        .filter(|d| *d >= Duration::from_millis(1))
        .chain(WAIT_LADDER)
        .collect();
    set.into_iter().collect()
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// A `ShortString` from a `&str` (lapin's names).
pub fn short(s: &str) -> ShortString {
    s.into()
}

/// Broker settings needed by declaration when no whole config is at hand.
pub fn summary(cfg: &BrokerConfig) -> String {
    format!(
        "prefix `{}`, delivery limit {}",
        cfg.prefix, cfg.delivery_limit
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        let cfg = crate::config::Config::from_toml(
            r#"
            [broker]
            url = "amqp://127.0.0.1"
            prefix = "t1"
            [redis]
            url = "redis://127.0.0.1"
            [worker]
            retry_schedule = ["0s", "2s", "10s"]
            [dispatcher]
            retry_schedule = ["0s", "5s", "5m"]
            "#,
        )
        .unwrap();
        Topology::from_config(&cfg)
    }

    #[test]
    fn names_start_with_the_prefix() {
        for q in topo().all_queues() {
            assert!(q.starts_with("t1."), "{q}");
        }
    }

    #[test]
    fn delays_pick_the_smallest_covering_level() {
        let t = topo();
        assert_eq!(t.delay(Stage::Work, Duration::ZERO), None);
        let r = t.delay(Stage::Work, Duration::from_millis(1500)).unwrap();
        assert_eq!(r.queue, "t1.work.delay.2000ms");
        assert_eq!(r.expiration, Duration::from_millis(1500));
        let r = t.delay(Stage::Deliver, Duration::from_secs(4)).unwrap();
        assert_eq!(r.queue, "t1.deliver.delay.5000ms");
        // Longer than every level: the longest level, and the consumer decides again.
        let r = t
            .delay(Stage::Deliver, Duration::from_secs(86_400))
            .unwrap();
        assert_eq!(r.queue, "t1.deliver.delay.1800000ms");
        assert_eq!(r.expiration, Duration::from_secs(1800));
    }
}
