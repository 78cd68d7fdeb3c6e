//! One pipeline for one fault: the isolated broker and Redis, the Dify stand-in behind the
//! counting tap, a signature-checking receiver, and ingress, worker and dispatcher as child
//! processes of the real binary with a config tuned for quick drains (short retry schedules
//! that still outlast the suite's 5 s outages, a 2 s worker lease, a 3 s receiver timeout so a
//! dead dispatcher's job lock lapses in 9 s). It can wait until every role is ready, drain until
//! nothing moves any more, and collect what each party saw, including every dead letter read
//! the way `switchboard dlq` reads them.
use crate::env::{free_port, Isolated};
use crate::roles::RoleProc;
use crate::tap::Tap;
use deadletters::filter::Start;
use deadletters::record::{self, Kind, Letter, Names};
use deadletters::store::Store as DlqStore;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use shared::{Config, Services};
use standins::dify::{DifyOptions, DifyStandin, Latency};
use standins::receiver::Receiver;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const OUT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const DIFY_KEY: &str = "app-faults";

/// How slow the outside world is during a fault.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub dify_latency: Duration,
    /// Stream events per run: the first one carrying ids comes after `latency / chunks`.
    pub dify_chunks: usize,
    pub receiver_latency: Duration,
    /// The target's rate limit (`None`: its kind's default, none for webhooks).
    pub target_rate: Option<&'static str>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            dify_latency: Duration::from_millis(200),
            dify_chunks: 4,
            receiver_latency: Duration::ZERO,
            target_rate: None,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Nothing queued, nothing in flight, for a while; false: the deadline passed first.
    pub settled: bool,
    pub took: Duration,
}

pub struct Pipeline {
    pub env: Arc<Isolated>,
    /// When the roles were started (and declared the topology).
    pub started: Instant,
    pub config: Arc<Config>,
    config_path: PathBuf,
    pub dify: DifyStandin,
    pub tap: Tap,
    pub receiver: Receiver,
    services: Services,
    close: CancellationToken,
    ingress_port: u16,
    pub ingress: RoleProc,
    pub workers: Vec<RoleProc>,
    pub dispatchers: Vec<RoleProc>,
    spawned: usize,
}

fn config_text(
    env: &Isolated,
    prefix: &str,
    port: u16,
    tuning: &Tuning,
    tap: &str,
    receiver: &str,
) -> String {
    let quoted = |urls: Vec<String>| {
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sentinel = if env.sentinels.is_empty() {
        String::new()
    } else {
        format!(
            "[redis.sentinel]\nurls = [{}]\nmaster_name = \"{}\"\n",
            quoted(env.sentinel_urls()),
            crate::env::MASTER_NAME
        )
    };
    let rate = tuning
        .target_rate
        .map(|r| format!("rate = \"{r}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[broker]
url = [{amqp}]
prefix = "{prefix}"
publish_timeout = "2s"
delivery_limit = 5

[redis]
url = "{redis}"
prefix = "{prefix}"
pool_size = 16

{sentinel}
[ingress]
listen = "127.0.0.1:{port}"
request_timeout = "5s"

[worker]
concurrency = 64
retry_schedule = ["0s", "500ms", "1s", "2s", "4s", "8s"]
lease = "2s"
shutdown_grace = "5s"

[dispatcher]
concurrency = 64
retry_schedule = ["0s", "250ms", "500ms", "1s", "2s", "4s", "8s"]
allow_private = ["127.0.0.0/8"]
request_timeout = "3s"
shutdown_grace = "5s"

[[apps]]
id = "support"
base_url = "{tap}"
api_key = "{DIFY_KEY}"
kind = "chat"
response_mode = "streaming"
timeout = "10s"

[[sources]]
id = "hooks"
platform = "standard"
secret = "{SECRET}"
app = "support"
targets = ["crm"]

[[targets]]
id = "crm"
kind = "webhook"
url = "{receiver}"
secret = "{OUT_SECRET}"
{rate}"#,
        amqp = quoted(env.amqp_urls()),
        redis = env.redis_url(),
    )
}

impl Pipeline {
    /// Starts stand-ins and one ingress, one worker and one dispatcher, and waits until ready.
    pub async fn start(env: Arc<Isolated>, fault: &str, tuning: Tuning) -> Self {
        let dify = DifyStandin::start(DifyOptions {
            api_key: Some(DIFY_KEY.into()),
            latency: Latency::Fixed(tuning.dify_latency),
            chunks: tuning.dify_chunks,
            ..Default::default()
        })
        .await
        .expect("dify stand-in");
        let tap = Tap::start(dify.addr()).await.expect("tap");
        let receiver = Receiver::start(Some(OUT_SECRET)).await.expect("receiver");
        receiver.set_latency(tuning.receiver_latency);
        let ingress_port = free_port();
        let prefix = format!("faults-{fault}");
        let text = config_text(
            &env,
            &prefix,
            ingress_port,
            &tuning,
            &tap.base_url(),
            &receiver.url("/answers"),
        );
        let config = Arc::new(Config::from_toml(&text).expect("the suite's config"));
        let config_path = env.dir().join("switchboard.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let close = CancellationToken::new();
        let services = Services::start(&config, "faults-probe", close.clone()).expect("services");
        let started = Instant::now();
        let ingress = RoleProc::spawn(
            &env,
            &config_path,
            "ingress",
            "ingress-1".into(),
            ingress_port,
        );
        let mut p = Self {
            env,
            started,
            config,
            config_path,
            dify,
            tap,
            receiver,
            services,
            close,
            ingress_port,
            ingress,
            workers: Vec::new(),
            dispatchers: Vec::new(),
            spawned: 1,
        };
        p.spawn_worker();
        p.spawn_dispatcher();
        p.wait_ready(Duration::from_secs(60)).await;
        p
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingress_port)
    }

    fn next_name(&mut self, role: &str) -> String {
        self.spawned += 1;
        format!("{role}-{}", self.spawned)
    }

    pub fn spawn_worker(&mut self) {
        let name = self.next_name("worker");
        self.workers.push(RoleProc::spawn(
            &self.env,
            &self.config_path,
            "worker",
            name,
            0,
        ));
    }

    pub fn spawn_dispatcher(&mut self) {
        let name = self.next_name("dispatcher");
        self.dispatchers.push(RoleProc::spawn(
            &self.env,
            &self.config_path,
            "dispatcher",
            name,
            0,
        ));
    }

    fn roles(&self) -> impl Iterator<Item = &RoleProc> {
        std::iter::once(&self.ingress)
            .chain(&self.workers)
            .chain(&self.dispatchers)
            .filter(|r| r.is_alive())
    }

    /// Waits until every live role answers `/readyz` (connected to the broker), and so does
    /// the suite's own broker connection.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = self.services.broker.is_connected();
            for r in self.roles() {
                all = all && r.ready().await;
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the roles were not ready within {timeout:?} (logs in {})",
                self.env.logs().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ready messages in every stage and delay queue (`None`: the broker did not answer).
    pub async fn queued(&self) -> Option<u64> {
        let channel = tokio::time::timeout(
            Duration::from_secs(2),
            self.services
                .broker
                .consumer_channel(&CancellationToken::new()),
        )
        .await
        .ok()?
        .ok()?;
        let topology = self.services.broker.topology();
        let streams = [topology.dead_letters(), topology.replays()];
        let mut total = 0u64;
        let mut ok = true;
        for q in topology.all_queues() {
            if streams.contains(&q) {
                continue;
            }
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match channel
                .queue_declare(q.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(d) => total += u64::from(d.message_count()),
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        let _ = channel.close(200, "counted".into()).await;
        ok.then_some(total)
    }

    /// Messages taken by the live workers and dispatchers and not yet settled.
    async fn in_flight(&self) -> Option<u64> {
        let mut total = 0;
        for r in self.workers.iter().chain(&self.dispatchers) {
            total += r.in_flight().await?;
        }
        Some(total)
    }

    /// What the live workers and dispatchers counted (the replacements, after a kill): how
    /// events were answered (called, recovered from Dify, from the record…) and jobs settled.
    pub async fn role_counters(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (roles, metric) in [
            (&self.workers, "switchboard_worker_events_total"),
            (&self.dispatchers, "switchboard_dispatch_total"),
        ] {
            for r in roles.iter().filter(|r| r.is_alive()) {
                let counts = r.counter_by(metric, "outcome").await;
                let text = counts
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(format!("{} outcomes: {text}", r.name));
            }
        }
        out
    }

    /// Publishes a raw body to a stage queue, as a misbehaving producer would (confirmed).
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        self.services
            .broker
            .publish(queue, body, Default::default())
            .await
            .expect("publish a raw message");
    }

    pub fn topology(&self) -> &shared::topology::Topology {
        self.services.broker.topology()
    }

    /// Polls until nothing is queued (stage and delay queues), nothing is in flight in any role
    /// or in Dify, and that has held for `QUIET`; or until `timeout`.
    pub async fn drain(&self, timeout: Duration) -> Drain {
        const QUIET: Duration = Duration::from_millis(1500);
        let started = Instant::now();
        let mut quiet_since: Option<Instant> = None;
        loop {
            let idle = self.dify.in_flight() == 0
                && self.queued().await == Some(0)
                && self.in_flight().await == Some(0);
            let now = Instant::now();
            if idle {
                let since = *quiet_since.get_or_insert(now);
                if now.duration_since(since) >= QUIET {
                    return Drain {
                        settled: true,
                        took: since.duration_since(started),
                    };
                }
            } else {
                quiet_since = None;
            }
            if started.elapsed() > timeout {
                return Drain {
                    settled: false,
                    took: started.elapsed(),
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every entry of the dead-letter stream, read as `switchboard dlq` reads it (envelopes from
    /// the roles, raw messages the broker dead-lettered).
    pub async fn dead_letters(&self) -> Vec<Letter> {
        read_dead_letters(&self.config).await
    }

    /// Stops the roles (SIGTERM), the suite's connection and the stand-ins. The isolated broker
    /// and Redis stop when the last `Arc<Isolated>` is dropped.
    pub async fn shutdown(mut self) {
        for r in self
            .workers
            .iter_mut()
            .chain(self.dispatchers.iter_mut())
            .chain(std::iter::once(&mut self.ingress))
        {
            r.terminate(Duration::from_secs(10)).await;
        }
        self.close.cancel();
        self.tap.shutdown();
        self.dify.shutdown();
        self.receiver.shutdown();
    }
}

/// Every entry of the dead-letter stream of `config`'s broker, read as `switchboard dlq` reads
/// them.
pub async fn read_dead_letters(config: &Config) -> Vec<Letter> {
    let store = DlqStore::connect(&config.broker, config.audit.keyring())
        .await
        .expect("dead-letter store");
    let names = Names::of(store.topology(), store.keyring());
    let mut out = Vec::new();
    store
        .scan(&names.stream, Start::First, |e| {
            if record::kind(&e.meta) == Kind::Letter {
                out.push(record::letter(e.offset, &e.body, &e.meta, &names));
            }
            ControlFlow::Continue(())
        })
        .await
        .expect("read the dead letters");
    store.close().await;
    out
}
