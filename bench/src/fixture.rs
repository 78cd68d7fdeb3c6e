//! What every scenario sets up and takes down the same way: its own broker prefix and Redis
//! prefix (`bench-<scenario>-<uuid>`), its config written to a file the child roles read, one
//! `Services` (broker connection with the topology declared, Redis pool) for publishing and
//! inspecting, and at the end the deletion of every queue and key under its prefix. It also
//! refuses broker and Redis URLs that are not on this machine: benchmarks only send to loopback.
use anyhow::{bail, Context as _};
use deadpool_redis::redis;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use shared::config::Config;
use shared::topology::Stage;
use shared::Services;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The Standard Webhooks secret of the benchmark source `hooks`.
pub const IN_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The secret the dispatcher signs deliveries to the receiver with.
pub const OUT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The Dify stand-in's API key.
pub const DIFY_KEY: &str = "app-bench";

/// Settings every scenario shares (broker, Redis, where results go, the role binary).
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The broker (must be on this machine).
    #[arg(
        long,
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
    /// Redis (must be on this machine).
    #[arg(long, global = true, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Where the JSON results, configs and role logs go.
    #[arg(long, global = true, default_value = "target/bench")]
    pub out: PathBuf,
    /// The `switchboard` binary (default: next to this executable).
    #[arg(long, global = true)]
    pub switchboard: Option<PathBuf>,
    /// `redis.pool_size` of the roles (default: the config's default).
    #[arg(long, global = true)]
    pub redis_pool: Option<usize>,
    /// `RUST_LOG` of the Switchboard roles (production default: info).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

/// The knobs a scenario turns in the config.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    pub ingress_listen: String,
    pub dify_url: String,
    pub receiver_url: String,
    pub worker_concurrency: usize,
    pub app_concurrency: usize,
    pub dispatcher_concurrency: usize,
    /// More `[[targets]]` (TOML), appended.
    pub extra: String,
    /// More keys of the `hooks` source (TOML lines), such as `rate` or `allow_ips`.
    pub source_keys: String,
}

impl Default for ConfigSpec {
    fn default() -> Self {
        Self {
            ingress_listen: "127.0.0.1:0".into(),
            dify_url: "http://127.0.0.1:9/v1".into(),
            receiver_url: "http://127.0.0.1:9/answers".into(),
            worker_concurrency: 512,
            app_concurrency: 512,
            dispatcher_concurrency: 256,
            extra: String::new(),
            source_keys: String::new(),
        }
    }
}

/// The config of a benchmark pipeline: one `standard` source `hooks` answered by the app
/// `support` (streaming chat) and fanned out to the webhook target `crm`.
pub fn config_text(common: &Common, prefix: &str, spec: &ConfigSpec) -> String {
    format!(
        r#"# Written by `bench`; deleted with the scenario's queues and keys.
[broker]
url = "{amqp}"
prefix = "{prefix}"

[redis]
url = "{redis}"
prefix = "{prefix}"
{pool}

[ingress]
listen = "{listen}"

[worker]
concurrency = {worker_concurrency}
retry_schedule = ["0s", "1s", "2s"]

[dispatcher]
concurrency = {dispatcher_concurrency}
retry_schedule = ["0s", "1s", "2s"]
allow_private = ["127.0.0.0/8"]

[[apps]]
id = "support"
base_url = "{dify}"
api_key = "{DIFY_KEY}"
kind = "chat"
response_mode = "streaming"
timeout = "60s"
concurrency = {app_concurrency}

[[sources]]
id = "hooks"
platform = "standard"
secret = "{IN_SECRET}"
app = "support"
targets = ["crm"]
{source_keys}

[[targets]]
id = "crm"
kind = "webhook"
url = "{receiver}"
secret = "{OUT_SECRET}"
{extra}
"#,
        amqp = common.amqp,
        redis = common.redis,
        pool = common
            .redis_pool
            .map(|n| format!("pool_size = {n}"))
            .unwrap_or_default(),
        listen = spec.ingress_listen,
        worker_concurrency = spec.worker_concurrency,
        dispatcher_concurrency = spec.dispatcher_concurrency,
        app_concurrency = spec.app_concurrency,
        dify = spec.dify_url,
        receiver = spec.receiver_url,
        extra = spec.extra,
        source_keys = spec.source_keys,
    )
}

/// Refuses a URL whose host is not a loopback address.
pub fn ensure_loopback(what: &str, url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{what}: not a URL"))?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{what} must be on this machine (a loopback address), not `{host}`");
    }
    Ok(())
}

impl Common {
    /// The port of `--redis` (to find its server process).
    pub fn redis_port(&self) -> u16 {
        reqwest::Url::parse(&self.redis)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(6379)
    }

    /// The broker and Redis server processes, to watch beside the roles.
    pub fn servers(&self) -> Vec<(String, String)> {
        super::procs::servers(self.redis_port())
    }
}

/// A free loopback port (bound, read, released: the child binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One scenario's prefix, config and connections.
pub struct Fixture {
    pub prefix: String,
    pub config_path: PathBuf,
    pub config: Arc<Config>,
    pub services: Services,
    pub out: PathBuf,
    close: CancellationToken,
    /// Queues made outside the topology (the ceiling's), deleted too.
    extra_queues: Vec<String>,
}

impl Fixture {
    /// Writes the config, connects and declares the topology.
    pub async fn start(
        common: &Common,
        scenario: &str,
        spec: impl FnOnce(&str) -> ConfigSpec,
    ) -> anyhow::Result<Self> {
        ensure_loopback("--amqp", &common.amqp)?;
        ensure_loopback("--redis", &common.redis)?;
        let prefix = format!("bench-{scenario}-{}", uuid::Uuid::now_v7().simple());
        let text = config_text(common, &prefix, &spec(&prefix));
        let config = Arc::new(Config::from_toml(&text).context("the benchmark config")?);
        std::fs::create_dir_all(&common.out)
            .with_context(|| format!("cannot create {}", common.out.display()))?;
        let config_path = common.out.join(format!("{prefix}.toml"));
        std::fs::write(&config_path, &text)?;
        let close = CancellationToken::new();
        let services = Services::start(&config, &prefix, close.clone())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !services.broker.is_connected() {
            if Instant::now() > deadline {
                close.cancel();
                bail!(
                    "the broker at {} is unreachable (./dev up starts it)",
                    common.amqp
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !services.store.ping().await {
            close.cancel();
            bail!(
                "Redis at {} is unreachable (./dev up starts it)",
                common.redis
            );
        }
        Ok(Self {
            prefix,
            config_path,
            config,
            services,
            out: common.out.clone(),
            close,
            extra_queues: Vec::new(),
        })
    }

    pub fn stage_queue(&self, stage: Stage) -> String {
        self.services.broker.topology().stage_queue(stage)
    }

    /// A path in the output folder for this scenario's file `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.out.join(format!("{}-{name}", self.prefix))
    }

    /// `n` (at least one) processes of `role` on this fixture's config, the first logging to
    /// `<log>.log`, the others to `<log>-<i>.log`.
    pub fn spawn_roles(
        &self,
        binary: &std::path::Path,
        role: &str,
        log_level: &str,
        n: usize,
        log: &str,
    ) -> anyhow::Result<Vec<super::procs::ChildProcess>> {
        (0..n.max(1))
            .map(|i| {
                let log = match i {
                    0 => self.file(&format!("{log}.log")),
                    _ => self.file(&format!("{log}-{i}.log")),
                };
                super::procs::spawn_role(binary, &self.config_path, role, log_level, log)
            })
            .collect()
    }

    /// Deletes `queue` too at cleanup.
    pub fn own_queue(&mut self, queue: String) {
        self.extra_queues.push(queue);
    }

    /// Publishes every body to `queue` with confirms, `parallel` at a time; returns how long
    /// it took.
    pub async fn publish_all(
        &self,
        queue: &str,
        bodies: Vec<Vec<u8>>,
        parallel: usize,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let broker = self.services.broker.clone();
        let mut results = futures_util::stream::iter(bodies)
            .map(|body| {
                let broker = broker.clone();
                async move {
                    broker
                        .publish(queue, &body, shared::broker::Publish::default())
                        .await
                }
            })
            .buffer_unordered(parallel.max(1));
        while let Some(r) = results.next().await {
            r.with_context(|| format!("pre-loading {queue}"))?;
        }
        Ok(started.elapsed())
    }

    /// Messages ready in a queue, and its consumers.
    pub async fn queue_state(&self, queue: &str) -> anyhow::Result<(u32, u32)> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = ch.close(200, "ok".into()).await;
        let q = q?;
        Ok((q.message_count(), q.consumer_count()))
    }

    /// Declares a durable quorum queue of this scenario (deleted at cleanup), for probes.
    pub async fn probe_queue(&mut self, name: &str) -> anyhow::Result<String> {
        let queue = format!("{}.{name}", self.prefix);
        let ch = self.channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        let declared = ch
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        let _ = ch.close(200, "ok".into()).await;
        declared?;
        self.extra_queues.push(queue.clone());
        Ok(queue)
    }

    /// Round trips of a confirmed, persistent publish of a small message to `queue` (through
    /// `shared::broker`, as the roles publish) every `every` until `stop`, in microseconds.
    pub fn broker_probe(
        &self,
        queue: String,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<Vec<i64>> {
        let broker = self.services.broker.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let started = Instant::now();
                if broker
                    .publish(&queue, b"{}", shared::broker::Publish::default())
                    .await
                    .is_ok()
                {
                    out.push(started.elapsed().as_micros() as i64);
                }
            }
            out
        })
    }

    /// Empties a stage's queue and its delay queues (what one part of a scenario left behind).
    pub async fn purge_stage(&self, stage: Stage) -> anyhow::Result<()> {
        let stage_queue = self.stage_queue(stage);
        for q in self.services.broker.topology().all_queues() {
            if q == stage_queue || q.starts_with(&format!("{stage_queue}.delay.")) {
                self.purge(&q).await?;
            }
        }
        Ok(())
    }

    /// Empties a queue.
    pub async fn purge(&self, queue: &str) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        let r = ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await;
        let _ = ch.close(200, "ok".into()).await;
        r?;
        Ok(())
    }

    /// A fresh channel on the fixture's connection.
    pub async fn channel(&self) -> anyhow::Result<lapin::Channel> {
        Ok(self
            .services
            .broker
            .consumer_channel(&CancellationToken::new())
            .await?)
    }

    /// Waits until `queue` has at least `n` consumers (the roles are up and consuming).
    pub async fn wait_consumers(
        &self,
        queue: &str,
        n: u32,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((_, consumers)) = self.queue_state(queue).await {
                if consumers >= n {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{queue} did not get {n} consumer(s) within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes the scenario's queues, keys and config file, then closes the connections.
    pub async fn cleanup(self) {
        if let Ok(ch) = self.channel().await {
            let _ = self.services.broker.topology().delete(&ch).await;
            for q in &self.extra_queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = ch.close(200, "ok".into()).await;
        }
        if let Ok(mut c) = self.services.store.conn().await {
            // SCAN, not KEYS: an ingress run leaves hundreds of thousands of door markers, and
            // one KEYS over them outlasts the reply timeout (the keys then stayed for good).
            let pattern = format!("{}:*", self.prefix);
            let mut cursor = 0u64;
            loop {
                let page: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(5_000)
                    .query_async(&mut c)
                    .await;
                let Ok((next, keys)) = page else { break };
                if !keys.is_empty() {
                    let _: Result<(), _> =
                        redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let _ = std::fs::remove_file(&self.config_path);
        self.close.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One message a bare consumer took from a queue.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub wall: chrono::DateTime<chrono::Utc>,
    /// The body, when the collector was asked to keep it.
    pub body: Option<Vec<u8>>,
}

/// Consumes `queue` with `prefetch`, acking each message, and records when each arrived (and
/// its body, if `keep_bodies`), until `stop`.
pub async fn collect_arrivals(
    channel: lapin::Channel,
    queue: String,
    prefetch: u16,
    keep_bodies: bool,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let arrival = Arrival {
                        at: Instant::now(),
                        wall: chrono::Utc::now(),
                        body: keep_bodies.then(|| delivery.data.clone()),
                    };
                    if let Ok(mut a) = arrivals.lock() {
                        a.push(arrival);
                    }
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// Round trips of a Redis PING from this process every `every` until `stop`, in microseconds:
/// how long one hop to Redis and back takes on this machine under the scenario's load.
pub async fn redis_probe(url: String, every: Duration, stop: CancellationToken) -> Vec<i64> {
    let Ok(client) = redis::Client::open(url) else {
        return Vec::new();
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let started = Instant::now();
        if redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
        {
            out.push(started.elapsed().as_micros() as i64);
        }
    }
    out
}

/// Calls per command since Redis started (`INFO commandstats`); empty if Redis cannot say.
pub async fn redis_commands(url: &str) -> std::collections::BTreeMap<String, u64> {
    let Ok(client) = redis::Client::open(url) else {
        return Default::default();
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return Default::default();
    };
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    parse_commandstats(&text)
}

/// `cmdstat_get:calls=12,usec=…` lines as `get -> 12`.
pub fn parse_commandstats(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Commands run between two readings of [`redis_commands`], most frequent first, without the
/// probes' and the readings' own (`ping` from the probe is kept apart by the caller).
pub fn commands_between(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(k, v)| *v > 0 && k != "info")
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_parse_and_subtract() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_get:calls=10,usec=5,usec_per_call=0.5\r\ncmdstat_ping:calls=3,usec=1\r\n",
        );
        assert_eq!(before.get("get"), Some(&10));
        let after = parse_commandstats(
            "cmdstat_get:calls=15,usec=9\ncmdstat_ping:calls=3,usec=1\ncmdstat_evalsha:calls=40,usec=1\ncmdstat_info:calls=9,usec=1\n",
        );
        assert_eq!(
            commands_between(&before, &after),
            vec![("evalsha".to_owned(), 40), ("get".to_owned(), 5)]
        );
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert!(ensure_loopback("x", "redis://127.0.0.1:6379").is_ok());
        assert!(ensure_loopback("x", "amqp://guest:guest@localhost:5672/%2f").is_ok());
        assert!(ensure_loopback("x", "redis://[::1]:6379").is_ok());
        assert!(ensure_loopback("x", "redis://10.0.0.5:6379").is_err());
        assert!(ensure_loopback("x", "amqp://broker.example.com/").is_err());
    }
}
