//! The broker contract the roles rely on, against the real RabbitMQ: the topology declares (and
//! declares again) cleanly, a publish is confirmed, and a message in a delay queue comes back to
//! its stage after its wait. Each test's queues are removed by its fixture, passed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use shared::broker::Publish;
use shared::topology::Stage;
use shared::{Config, Services};
use std::time::{Duration, Instant};
use testkit::{Fixture, AMQP_URL, REDIS_URL};
use tokio_util::sync::CancellationToken;

fn config(prefix: &str) -> Config {
    Config::from_toml(&format!(
        r#"
        [broker]
        url = "{AMQP_URL}"
        prefix = "{prefix}"
        [redis]
        url = "{REDIS_URL}"
        prefix = "{prefix}"
        [worker]
        retry_schedule = ["0s", "300ms"]
        "#
    ))
    .unwrap()
}

#[tokio::test]
async fn publish_confirms_and_delay_queues_return_messages_to_their_stage() {
    let kit = Fixture::new("sbt");
    let prefix = kit.prefix();
    let cfg = config(prefix);
    kit.own_topology(&shared::topology::Topology::from_config(&cfg));
    let shutdown = CancellationToken::new();
    let services = Services::start(&cfg, "test", shutdown.clone()).unwrap();
    let broker = services.broker.clone();
    let topo = broker.topology().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !broker.is_connected() {
        assert!(Instant::now() < deadline, "broker never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delay = topo.delay(Stage::Work, Duration::from_millis(200)).unwrap();
    let started = Instant::now();
    broker
        .publish(
            &delay.queue,
            b"{\"x\":1}",
            Publish {
                expiration: Some(delay.expiration),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ch = broker.consumer_channel(&shutdown).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            topo.stage_queue(Stage::Work).as_str().into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"{\"x\":1}");
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "came back too early: {:?}",
        started.elapsed()
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
    // Unroutable publishes are errors, not silence.
    assert!(broker
        .publish(&format!("{prefix}.nope"), b"{}", Publish::default())
        .await
        .is_err());
    shutdown.cancel();
}

#[tokio::test]
async fn a_stream_the_broker_cannot_serve_does_not_stop_events_from_flowing() {
    use lapin::options::QueueDeclareOptions;
    let kit = Fixture::new("sbt");
    let cfg = config(kit.prefix());
    kit.own_topology(&shared::topology::Topology::from_config(&cfg));
    // Something else already holds the dead-letter stream's name (as a classic queue), so the
    // stream's declaration fails, as it does for a stream broken by a broker crash.
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dl = format!("{}.dead-letters", kit.prefix());
    ch.queue_declare(
        dl.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let services = Services::start(&cfg, "test", shutdown.clone()).unwrap();
    let broker = services.broker.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !broker.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the broker never connected: a failing stream must not block"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let work = broker.topology().stage_queue(Stage::Work);
    broker
        .publish(&work, b"{}", Publish::default())
        .await
        .unwrap();
    shutdown.cancel();
}

async fn connected(services: &Services) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !services.broker.is_connected() {
        assert!(Instant::now() < deadline, "broker never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_list_connects_to_a_live_node_past_dead_ones() {
    let kit = Fixture::new("sbt");
    let prefix = kit.prefix();
    // Two ports nobody listens on (bound and released), then the real broker.
    let dead: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let text = toml_with_urls(
        prefix,
        &[
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", dead[0]),
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", dead[1]),
            AMQP_URL.into(),
        ],
    );
    let cfg = Config::from_toml(&text).unwrap();
    kit.own_topology(&shared::topology::Topology::from_config(&cfg));
    // `quorum_group_size = 0`: the queues are declared as on a single node (the test's broker).
    assert_eq!(cfg.broker.quorum_group_size(), None);
    let shutdown = CancellationToken::new();
    let services = Services::start(&cfg, "test-nodes", shutdown.clone()).unwrap();
    connected(&services).await;
    shutdown.cancel();
}

fn toml_with_urls(prefix: &str, urls: &[String]) -> String {
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
        [broker]
        url = [{list}]
        prefix = "{prefix}"
        quorum_group_size = 0
        [redis]
        url = "{REDIS_URL}"
        prefix = "{prefix}"
        "#
    )
}

#[tokio::test]
async fn queue_depths_are_exported_as_gauges() {
    let kit = Fixture::new("sbt");
    let cfg = config(kit.prefix());
    kit.own_topology(&shared::topology::Topology::from_config(&cfg));
    let shutdown = CancellationToken::new();
    let services = Services::start(&cfg, "test-depth", shutdown.clone()).unwrap();
    connected(&services).await;
    let broker = services.broker.clone();
    let work = broker.topology().stage_queue(Stage::Work);
    for _ in 0..3 {
        broker
            .publish(&work, b"{}", Publish::default())
            .await
            .unwrap();
    }
    tokio::spawn(shared::depth::sample(
        broker.clone(),
        vec![Stage::Work],
        shutdown.clone(),
    ));
    let want = format!("switchboard_queue_messages{{stage=\"work\",queue=\"{work}\"}} 3");
    let consumers = format!("switchboard_queue_consumers{{stage=\"work\",queue=\"{work}\"}} 0");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = shared::telemetry::metrics().render();
        if text.contains(&want) && text.contains(&consumers) {
            break;
        }
        assert!(Instant::now() < deadline, "no `{want}` in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
}
