//! The connector with the broker down (issue 13): DingTalk Stream mode through the connector,
//! worker and dispatcher in-process, on the fault's own RabbitMQ node and Redis. While the
//! broker is stopped, the events the gateway pushes reach the connector but none is
//! acknowledged (none could be kept); once the broker is back, the gateway's redeliveries are
//! kept, acknowledged, and every event is answered through the reply API exactly once.
use crate::env::{Isolated, Shape};
use ingress::platform::dingtalk;
use shared::{Config, Services};
use standins::dify::{DifyOptions, DifyStandin, Latency};
use standins::platforms::{api, PlatformStandin};
use standins::stream::DingtalkStreamStandin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CLIENT_ID: &str = "faults-ding-app";
const CLIENT_SECRET: &str = "faults-ding-secret";

async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(env: &Isolated, dify: &str, gw: &str, platform: &str) -> Config {
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

[[sources]]
id = "ding-stream"
platform = "dingtalk"
mode = "stream"
app = "support"
reply = true
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
api_base = "{gw}"
session_webhook_origins = ["{platform}"]
"#,
        broker = env.amqp_urls()[0],
        redis = env.redis_url(),
    );
    Config::from_toml(&text).expect("fault config")
}

fn message(p: &PlatformStandin, i: usize) -> String {
    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    dingtalk::text_message(
        &format!("faults-stream-{i}"),
        "cidFaults",
        false,
        "staff1",
        &format!("event {i}"),
        &session,
        expires,
    )
}

pub async fn broker_down_under_a_connector() {
    let env = Arc::new(
        tokio::task::spawn_blocking(|| Isolated::start_shaped(Shape::default()))
            .await
            .expect("join")
            .expect("the isolated RabbitMQ node and Redis"),
    );
    let gw = DingtalkStreamStandin::start(CLIENT_ID, CLIENT_SECRET, Duration::from_secs(2))
        .await
        .expect("gateway");
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let dify = DifyStandin::start(DifyOptions {
        api_key: Some("app-test".into()),
        latency: Latency::Fixed(Duration::from_millis(20)),
        ..Default::default()
    })
    .await
    .expect("dify");
    let config = Arc::new(config(
        &env,
        &dify.base_url(),
        &gw.api_base(),
        &p.base_url(),
    ));
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
    let minute = Duration::from_secs(60);
    until("the connection", minute, || gw.connections() == 1).await;
    let broker = services.broker.clone();
    until("the broker", minute, || broker.is_connected()).await;
    let answered = |n: usize| {
        let p = p.clone();
        move || p.messages_to(api::DINGTALK_SESSION).len() >= n
    };
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(gw.push(&message(&p, i)));
    }
    until("the first answers", minute, answered(5)).await;

    let e = env.clone();
    tokio::task::spawn_blocking(move || e.stop_broker())
        .await
        .expect("join");
    let down: Vec<String> = (5..25).map(|i| gw.push(&message(&p, i))).collect();
    // They reach the connector (and are redelivered), but none is acknowledged.
    until(
        "the events delivered while the broker is down",
        minute,
        || down.iter().all(|id| gw.deliveries(id) >= 2),
    )
    .await;
    assert!(
        down.iter().all(|id| gw.acks(id) == 0),
        "an event was acknowledged while the broker was down"
    );
    assert_eq!(gw.unacked(), down.len());

    let e = env.clone();
    tokio::task::spawn_blocking(move || e.start_broker())
        .await
        .expect("join")
        .expect("the broker again");
    until("every event acknowledged", Duration::from_secs(120), || {
        gw.unacked() == 0
    })
    .await;
    until(
        "every event answered",
        Duration::from_secs(120),
        answered(25),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut texts = p.texts(api::DINGTALK_SESSION);
    texts.sort();
    let mut want: Vec<String> = (0..25).map(|i| format!("echo: event {i}")).collect();
    want.sort();
    assert_eq!(texts, want, "each event answered exactly once");
    assert!(ids.iter().chain(&down).all(|id| gw.acks(id) == 1));
    println!(
        "connector, broker down: {} events pushed while down, none acked; all 25 answered once after",
        down.len()
    );
    stop.cancel();
    while roles.join_next().await.is_some() {}
    close.cancel();
    p.shutdown();
    dify.shutdown();
}
