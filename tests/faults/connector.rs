//! The connector under an infrastructure outage (issue 13), one scenario for every platform whose
//! persistent connection acknowledges events and redelivers the rest (`gateway`: DingTalk Stream
//! mode, Slack Socket Mode, Feishu's long connection): the connector, worker and dispatcher
//! in-process on the fault's own RabbitMQ node and Redis, the platform's gateway stand-in
//! pushing events, and the platform stand-in taking the replies.
//!
//! - **Broker down.** While the node is stopped, the events the gateway pushes reach the
//!   connector but none is acknowledged (none could be kept), so the gateway delivers each
//!   again; once the node is back, a redelivery is kept, acknowledged, and every event is
//!   answered through the reply API exactly once.
//! - **Redis down** (stopped, back empty). What the connector needs Redis for at the door is
//!   door dedup, which degrades to the process's memory, and keeping a reply URL aside
//!   (`shared::reply_credentials`). So a DingTalk event, whose session webhook must be kept aside,
//!   is not acknowledged while Redis is down and is redelivered; a Slack or Feishu event, whose
//!   reply needs no such URL, is kept by the broker and acknowledged at once, and not answered
//!   while Redis stays down (a worker claims before it calls Dify). Either way every event is
//!   answered exactly once after Redis is back.
//!
//! How this fails without the guarantee it checks: a connector that acknowledged an event before
//! the broker confirmed it (on receipt, or whatever the keep's outcome) would ack the events
//! pushed while the broker is down — the "none acknowledged" assertion fails — and, the gateway
//! having no reason to send them again, they would never be answered: "every event answered"
//! times out. A connector that kept every redelivery anew (no door dedup) and a worker without
//! idempotency would answer an event twice: the exactly-once comparison of the replies fails.
use crate::env::{Isolated, Shape};
use crate::gateway::{Gateway, Platform};
use shared::{Config, Services};
use standins::dify::{DifyOptions, DifyStandin, Latency};
use standins::platforms::PlatformStandin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Events pushed and answered before the outage: the path works.
const BEFORE: usize = 5;
/// Events pushed while the dependency is down.
const DURING: usize = 20;
/// How long the answers must stay at one per event once they are all in.
const QUIET: Duration = Duration::from_secs(2);
/// How long an outage whose events are acknowledged at once is held, watching that none of them
/// is answered meanwhile (a worker parks what it cannot claim for 5 s).
const OUTAGE_WATCH: Duration = Duration::from_secs(3);
const MINUTE: Duration = Duration::from_secs(60);
const RECOVERY: Duration = Duration::from_secs(120);

/// What goes down under the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The fault's RabbitMQ node, stopped gracefully and started again on its data dir.
    Broker,
    /// The fault's Redis, stopped and started again empty.
    Redis,
}

impl Outage {
    fn name(self) -> &'static str {
        match self {
            Outage::Broker => "broker",
            Outage::Redis => "redis",
        }
    }

    /// Whether an event pushed during this outage can be kept, and so acknowledged.
    fn keeps(self, platform: Platform) -> bool {
        match self {
            Outage::Broker => false,
            // DingTalk's session webhook is kept aside in Redis before the event is published.
            Outage::Redis => platform != Platform::Dingtalk,
        }
    }
}

async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `cond` for `window`; panics naming `what` as soon as it does not hold.
async fn stays(what: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(cond(), "{what} no longer holds");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(env: &Isolated, dify: &str, source: &str) -> Config {
    let text = format!(
        r#"
[broker]
url = "{broker}"
prefix = "faults-connector"
publish_timeout = "2s"

[redis]
url = "{redis}"
prefix = "faults-connector"

[worker]
retry_schedule = ["0s", "200ms", "400ms", "1s", "2s"]
lease = "3s"

[dispatcher]
retry_schedule = ["0s", "200ms", "400ms", "1s", "2s"]
allow_private = ["127.0.0.0/8"]

[connector]
heartbeat = "1s"
backoff_initial = "50ms"
backoff_max = "1s"

[[apps]]
id = "support"
base_url = "{dify}"
api_key = "app-test"
kind = "chat"
timeout = "20s"
{source}
"#,
        broker = env.amqp_urls()[0],
        redis = env.redis_url(),
    );
    Config::from_toml(&text).expect("fault config")
}

/// Stops what `outage` names (blocking until it is gone).
async fn take_down(env: &Arc<Isolated>, outage: Outage) {
    let e = env.clone();
    tokio::task::spawn_blocking(move || match outage {
        Outage::Broker => e.stop_broker(),
        Outage::Redis => e.stop_redis(),
    })
    .await
    .expect("join");
}

/// Starts it again (blocking until it answers).
async fn bring_back(env: &Arc<Isolated>, outage: Outage) {
    let e = env.clone();
    tokio::task::spawn_blocking(move || match outage {
        Outage::Broker => e.start_broker(),
        Outage::Redis => e.start_redis(),
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("the {} again: {e:#}", outage.name()));
}

/// Runs the scenario for `platform` under `outage`, from a fresh isolated node and Redis.
pub async fn outage_under_a_connector(platform: Platform, outage: Outage) {
    let began = Instant::now();
    let env = Arc::new(
        tokio::task::spawn_blocking(|| Isolated::start_shaped(Shape::default()))
            .await
            .expect("join")
            .expect("the isolated RabbitMQ node and Redis"),
    );
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let gw = Gateway::start(platform, &p).await;
    let dify = DifyStandin::start(DifyOptions {
        api_key: Some("app-test".into()),
        latency: Latency::Fixed(Duration::from_millis(20)),
        ..Default::default()
    })
    .await
    .expect("dify");
    let config = Arc::new(config(&env, &dify.base_url(), &gw.source(&p)));
    let (stop, close) = (CancellationToken::new(), CancellationToken::new());
    let services = Services::start(&config, "faults-connector", close.clone()).expect("services");
    let mut roles = tokio::task::JoinSet::new();
    roles.spawn(worker::run(config.clone(), services.clone(), stop.clone()));
    roles.spawn(dispatcher::run(
        config.clone(),
        services.clone(),
        stop.clone(),
    ));
    roles.spawn(connector::run(
        config.clone(),
        services.clone(),
        connector::Status::default(),
        stop.clone(),
    ));
    until("the connection", MINUTE, || gw.connections() == 1).await;
    let broker = services.broker.clone();
    until("the broker", MINUTE, || broker.is_connected()).await;
    let api = gw.reply_api();
    let answered = || p.messages_to(api).len();
    let mut keys: Vec<String> = (0..BEFORE).map(|i| gw.push(&p, i)).collect();
    until("the first answers", MINUTE, || answered() >= BEFORE).await;

    take_down(&env, outage).await;
    let down_at = Instant::now();
    let during: Vec<String> = (BEFORE..BEFORE + DURING).map(|i| gw.push(&p, i)).collect();
    if outage.keeps(platform) {
        // Kept by the broker: each acknowledged, none delivered again.
        until("the events pushed while down acknowledged", MINUTE, || {
            during.iter().all(|k| gw.acks(k) >= 1)
        })
        .await;
        assert_eq!(gw.unacked(), 0);
        // Kept, not answered: no worker may claim an event, and so call Dify, without Redis.
        stays("nothing answered while down", OUTAGE_WATCH, || {
            answered() == BEFORE
        })
        .await;
    } else {
        // They reach the connector and come again, but none is acknowledged.
        until(
            "the events pushed while down delivered again",
            MINUTE,
            || during.iter().all(|k| gw.deliveries(k) >= 2),
        )
        .await;
        assert!(
            during.iter().all(|k| gw.acks(k) == 0),
            "{}: an event was acknowledged while the {} was down",
            platform.name(),
            outage.name()
        );
        assert_eq!(gw.unacked(), DURING);
    }
    let answered_while_down = answered();
    bring_back(&env, outage).await;
    let down_for = down_at.elapsed();
    let back_at = Instant::now();

    until("every event acknowledged", RECOVERY, || gw.unacked() == 0).await;
    let total = BEFORE + DURING;
    until("every event answered", RECOVERY, || answered() >= total).await;
    let recovered_in = back_at.elapsed();
    stays("one answer per event", QUIET, || answered() == total).await;
    let mut texts = p.texts(api);
    texts.sort();
    let mut want: Vec<String> = (0..total).map(|i| format!("echo: event {i}")).collect();
    want.sort();
    assert_eq!(texts, want, "each event answered exactly once");
    keys.extend(during.iter().cloned());
    // Two deliveries of one event may both be kept once the broker is back (one a door
    // duplicate): each acknowledges its own delivery, and the event is answered once.
    assert!(keys.iter().all(|k| gw.acks(k) >= 1));
    let redelivered: usize = during.iter().map(|k| gw.deliveries(k) - 1).sum();
    println!(
        "connector fault {}/{}: {DURING} events pushed while down ({:.1} s; {} acknowledged then, \
         {redelivered} redeliveries, {} answered then); all {total} answered once, \
         {:.1} s after it was back; {:.1} s in all",
        platform.name(),
        outage.name(),
        down_for.as_secs_f64(),
        if outage.keeps(platform) {
            "each"
        } else {
            "none"
        },
        answered_while_down - BEFORE,
        recovered_in.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    stop.cancel();
    while roles.join_next().await.is_some() {}
    close.cancel();
    gw.shutdown();
    p.shutdown();
    dify.shutdown();
    // Stopping the node blocks for a moment: not on the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || drop(env)).await;
}
