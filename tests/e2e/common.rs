//! The test harness: `TestApp::spawn` starts ingress, worker and dispatcher on port 0 with a
//! unique prefix, a Dify stand-in and a receiver; helpers sign and send webhooks and poll for
//! outcomes until a deadline; `shutdown` stops the roles as SIGTERM would. Dropping a `TestApp`
//! — after `shutdown`, or while a failing test unwinds — aborts whatever still runs and removes
//! the test's queues and keys (`testkit::Fixture`), so no test leaves anything on the shared
//! broker or Redis.
#![allow(dead_code)]

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use shared::envelope::{decode, DeadLetter};
use shared::signing::SigningKey;
use shared::topology::Topology;
use shared::{Config, Services};
use standins::dify::{DifyOptions, DifyStandin};
use standins::proxy::Proxy;
use standins::receiver::Receiver;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{Fixture, REDIS_URL};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const OUT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const TOKEN: &str = "crm-token";
pub const BROKER: &str = testkit::BROKER_ADDR;

/// How a test wants its pipeline.
#[derive(Clone)]
pub struct Options {
    pub dify: DifyOptions,
    /// Put a cuttable proxy between the roles and the broker.
    pub broker_proxy: bool,
    /// Extra TOML appended to the config.
    pub extra: String,
    /// Extra lines of the `[ingress]` section.
    pub ingress_keys: String,
    /// Extra lines of the `[dispatcher]` section.
    pub dispatcher_keys: String,
    /// Extra lines of the `[worker]` section.
    pub worker_keys: String,
    pub ingress: bool,
    pub worker: bool,
    pub dispatcher: bool,
    /// The connector role (the stream sources' connections).
    pub connector: bool,
    pub response_mode: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dify: DifyOptions {
                api_key: Some("app-test".into()),
                latency: standins::dify::Latency::Fixed(Duration::from_millis(20)),
                chunks: 4,
                ..Default::default()
            },
            broker_proxy: false,
            extra: String::new(),
            ingress_keys: String::new(),
            dispatcher_keys: String::new(),
            worker_keys: String::new(),
            ingress: true,
            worker: true,
            dispatcher: true,
            connector: false,
            response_mode: "streaming",
        }
    }
}

pub struct TestApp {
    pub prefix: String,
    pub config: Arc<Config>,
    pub config_text: String,
    pub base: String,
    pub dify: DifyStandin,
    pub receiver: Receiver,
    pub proxy: Option<Proxy>,
    pub services: Services,
    pub http: reqwest::Client,
    /// The connector's connections (what its `/readyz` reports).
    pub links: connector::Status,
    stop: CancellationToken,
    close: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Last, so it is dropped after everything that might still use the queues.
    kit: Fixture,
}

/// What a test adds to the config of its pipeline.
pub struct Additions<'a> {
    /// Lines of the `[ingress]` section.
    pub ingress_keys: &'a str,
    /// Lines of the `[dispatcher]` section.
    pub dispatcher_keys: &'a str,
    /// Lines of the `[worker]` section.
    pub worker_keys: &'a str,
    /// Sections appended at the end.
    pub extra: &'a str,
}

/// The config of a test pipeline (TOML text, so child processes can use it too).
pub fn config_text(
    prefix: &str,
    broker: &str,
    dify_url: &str,
    receiver_url: &str,
    listen: &str,
    mode: &str,
    Additions {
        ingress_keys,
        dispatcher_keys,
        worker_keys,
        extra,
    }: Additions,
) -> String {
    format!(
        r#"
[broker]
url = "amqp://guest:guest@{broker}/%2f"
prefix = "{prefix}"
publish_timeout = "2s"
delivery_limit = 5

[redis]
url = "{REDIS_URL}"
prefix = "{prefix}"

[ingress]
listen = "{listen}"
body_limit = "64KiB"
request_timeout = "5s"
{ingress_keys}

[worker]
concurrency = 64
retry_schedule = ["0s", "200ms", "400ms"]
lease = "3s"
shutdown_grace = "20s"
{worker_keys}

[dispatcher]
concurrency = 64
retry_schedule = ["0s", "100ms", "200ms", "300ms"]
allow_private = ["127.0.0.0/8", "::1/128"]
request_timeout = "5s"
shutdown_grace = "10s"
{dispatcher_keys}

[[apps]]
id = "support"
base_url = "{dify_url}"
api_key = "app-test"
kind = "chat"
response_mode = "{mode}"
timeout = "20s"

[[sources]]
id = "hooks"
platform = "standard"
secret = "{SECRET}"
app = "support"
targets = ["crm"]

[[sources]]
id = "crm-in"
platform = "bearer"
token = "{TOKEN}"
app = "support"
targets = ["crm"]

[[targets]]
id = "crm"
kind = "webhook"
url = "{receiver_url}"
secret = "{OUT_SECRET}"
{extra}
"#
    )
}

impl TestApp {
    pub async fn spawn(opts: Options) -> TestApp {
        shared::telemetry::init_test_tracing();
        let kit = Fixture::new("e2e");
        let prefix = kit.prefix().to_owned();
        let dify = DifyStandin::start(opts.dify.clone())
            .await
            .expect("dify stand-in");
        let receiver = Receiver::start(Some(OUT_SECRET)).await.expect("receiver");
        let proxy = if opts.broker_proxy {
            Some(
                Proxy::start(BROKER.parse().expect("addr"))
                    .await
                    .expect("proxy"),
            )
        } else {
            None
        };
        let broker = proxy
            .as_ref()
            .map(|p| p.addr().to_string())
            .unwrap_or_else(|| BROKER.into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // `{receiver}` in extra config stands for the receiver's base URL, `{dify}` for Dify's.
        let extra = opts
            .extra
            .replace("{receiver}", &receiver.url(""))
            .replace("{dify}", &dify.base_url());
        let text = config_text(
            &prefix,
            &broker,
            &dify.base_url(),
            &receiver.url("/answers"),
            &addr.to_string(),
            opts.response_mode,
            Additions {
                ingress_keys: &opts.ingress_keys,
                dispatcher_keys: &opts.dispatcher_keys,
                worker_keys: &opts.worker_keys,
                extra: &extra,
            },
        );
        let config = Arc::new(Config::from_toml(&text).expect("test config"));
        kit.own_topology(&Topology::from_config(&config));
        let stop = CancellationToken::new();
        let close = CancellationToken::new();
        let services = Services::start(&config, &prefix, close.clone()).expect("services");
        let mut tasks = JoinSet::new();
        if opts.ingress {
            tasks.spawn(ingress::run(
                config.clone(),
                services.clone(),
                listener,
                stop.clone(),
            ));
        }
        if opts.worker {
            tasks.spawn(worker::run(config.clone(), services.clone(), stop.clone()));
        }
        if opts.dispatcher {
            tasks.spawn(dispatcher::run(
                config.clone(),
                services.clone(),
                stop.clone(),
            ));
        }
        let links = connector::Status::default();
        if opts.connector {
            tasks.spawn(connector::run(
                config.clone(),
                services.clone(),
                links.clone(),
                stop.clone(),
            ));
        }
        let app = TestApp {
            prefix,
            config,
            config_text: text,
            base: format!("http://{addr}"),
            dify,
            receiver,
            proxy,
            services,
            http: reqwest::Client::new(),
            links,
            stop,
            close,
            tasks,
            kit,
        };
        let broker = app.services.broker.clone();
        wait_for("the broker connection", Duration::from_secs(20), || {
            let b = broker.clone();
            async move { b.is_connected() }
        })
        .await;
        app
    }

    /// Signs `body` as Standard Webhooks with message id `id` and posts it to `/hooks/hooks`.
    pub async fn send_signed(&self, id: &str, body: &str) -> reqwest::Response {
        let key = SigningKey::parse(SECRET).expect("key");
        let ts = chrono::Utc::now().timestamp();
        self.http
            .post(format!("{}/hooks/hooks", self.base))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", key.sign(id, ts, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request")
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    /// Messages waiting in a queue of this test (passive declare).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let ch = self
            .services
            .broker
            .consumer_channel(&CancellationToken::new())
            .await
            .expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare");
        let _ = ch.close(200, "ok".into()).await;
        q.message_count()
    }

    /// Every dead letter in the stream so far (read from the start, not consumed).
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        read_dead_letters(&self.config).await
    }

    /// Waits until the dead-letter store holds at least one dead letter, and returns them all.
    pub async fn wait_dead_letters(&self) -> Vec<DeadLetter> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let letters = self.dead_letters().await;
            if !letters.is_empty() {
                return letters;
            }
            assert!(Instant::now() < deadline, "no dead letter within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the receiver accepted at least `n` answers.
    pub async fn wait_answers(&self, what: &str, n: usize) {
        let r = self.receiver.clone();
        wait_for(what, Duration::from_secs(40), || {
            let r = r.clone();
            async move { r.accepted() >= n }
        })
        .await;
    }

    /// Starts one more in-process worker (another "process" as far as Redis and the broker see).
    pub fn add_worker(&mut self) {
        self.tasks.spawn(worker::run(
            self.config.clone(),
            self.services.clone(),
            self.stop.clone(),
        ));
    }

    /// Starts one more in-process dispatcher (another process as far as Redis and the broker see).
    pub fn add_dispatcher(&mut self) {
        self.tasks.spawn(dispatcher::run(
            self.config.clone(),
            self.services.clone(),
            self.stop.clone(),
        ));
    }

    /// Starts a role as a real child process of the `switchboard` binary with this test's config.
    pub fn spawn_child(&self, role: &str) -> ChildRole {
        self.spawn_child_with(role, "warn", None)
    }

    /// As [`TestApp::spawn_child`], at log level `log`, with stderr written to `log_file`.
    pub fn spawn_child_with(
        &self,
        role: &str,
        log: &str,
        log_file: Option<&std::path::Path>,
    ) -> ChildRole {
        let path = std::env::temp_dir().join(format!(
            "{}-{}.toml",
            self.prefix,
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::write(&path, &self.config_text).expect("write config");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&path)
            .arg(role)
            .env("SWITCHBOARD_INGRESS__ADMIN_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_WORKER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_DISPATCHER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_CONNECTOR__ADMIN_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_SCHEDULER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", log)
            .stderr(match log_file {
                Some(p) => std::process::Stdio::from(std::fs::File::create(p).expect("log file")),
                None => std::process::Stdio::inherit(),
            })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard");
        ChildRole { child, path }
    }

    /// The idempotency record of an event of source `hooks` (a Redis hash).
    pub async fn idem_record(&self, dedup_key: &str) -> std::collections::HashMap<String, String> {
        let key = self.services.store.key(&["idem", "hooks", dedup_key]);
        let mut c = self.services.store.conn().await.expect("redis");
        deadpool_redis::redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap_or_default()
    }

    /// Stops the roles (as SIGTERM would) and fails if one of them failed; dropping the app
    /// then removes the test's queues and keys.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while let Some(r) = self.tasks.join_next().await {
            r.expect("role task").expect("role result");
        }
    }
}

impl Drop for TestApp {
    /// Runs however the test ends. Nothing here may panic: a panic while unwinding aborts.
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
        self.close.cancel();
        self.receiver.shutdown();
        self.dify.shutdown();
        // The queues and keys: `kit` cleans when it is dropped, right after this (blocking, over
        // fresh connections, so it works whatever state the test left its own in).
    }
}

/// Every dead letter in a config's store, read to the stream's definite end (not consumed),
/// through the same reader `switchboard dlq` uses.
pub async fn read_dead_letters(config: &Config) -> Vec<DeadLetter> {
    use deadletters::{filter::Start, store::Store};
    let store = Store::connect(&config.broker, None)
        .await
        .expect("dead-letter store");
    let stream = shared::topology::Topology::from_config(config).dead_letters();
    let mut out = Vec::new();
    store
        .scan(&stream, Start::First, |entry| {
            if let Ok(dl) = decode::<DeadLetter>(&entry.body) {
                out.push(dl);
            }
            std::ops::ControlFlow::Continue(())
        })
        .await
        .expect("scan the dead letters");
    store.close().await;
    out
}

/// Polls `cond` until it holds or `timeout` passes (then panics naming `what`).
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls until `cond` has held for `quiet` (to show something does NOT happen after settling).
pub async fn stays<F>(quiet: Duration, mut cond: F) -> bool
where
    F: FnMut() -> bool,
{
    let until = Instant::now() + quiet;
    while Instant::now() < until {
        if !cond() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// A role running as a child process.
pub struct ChildRole {
    child: tokio::process::Child,
    path: std::path::PathBuf,
}

impl ChildRole {
    /// SIGTERM: the graceful stop an orchestrator sends.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running child").to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGKILL: the process dies on the spot, mid-whatever.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("child did not exit in time")
            .expect("wait")
    }
}

impl Drop for ChildRole {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.path);
    }
}
