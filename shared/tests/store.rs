//! The store's shared connections survive a Redis restart: a private redis-server on its own
//! port is killed and started again, and commands work again within a couple of seconds
//! without anyone reconnecting by hand. And they wait for a reply as long as
//! `[redis] response_timeout` says, not redis-rs's own 500 ms.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use shared::config::RedisConfig;
use shared::store::Store;
use shared::Secret;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server")
}

async fn set_get(store: &Store) -> bool {
    let Ok(mut c) = store.conn().await else {
        return false;
    };
    let set: Result<(), _> = deadpool_redis::redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await;
    set.is_ok()
}

async fn until_ok(store: &Store, within: Duration) -> Duration {
    let started = Instant::now();
    while !set_get(store).await {
        assert!(
            started.elapsed() < within,
            "Redis not usable again within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn shared_connections_come_back_after_a_redis_restart() {
    let port = free_port();
    let mut server = redis(port);
    let store = Store::new(&RedisConfig {
        url: Secret::new(format!("redis://127.0.0.1:{port}")),
        prefix: "t".into(),
        pool_size: 8,
        response_timeout: std::time::Duration::from_secs(5),
        sentinel: None,
        encryption_key: None,
        previous_encryption_keys: Vec::new(),
    })
    .unwrap();
    until_ok(&store, Duration::from_secs(10)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(!set_get(&store).await, "Redis is down");
    let mut server = redis(port);
    let took = until_ok(&store, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A reply 1 s late (`BLPOP` on a list nobody fills) arrives with the default response timeout
/// (5 s; redis-rs's own, 500 ms, would fail it) and fails with a configured 200 ms.
#[tokio::test]
async fn a_reply_is_awaited_as_long_as_response_timeout_says() {
    let store = |response_timeout| {
        Store::new(&RedisConfig {
            url: Secret::new("redis://127.0.0.1:6379"),
            prefix: "t".into(),
            pool_size: 1,
            response_timeout,
            sentinel: None,
            encryption_key: None,
            previous_encryption_keys: Vec::new(),
        })
        .unwrap()
    };
    let empty = format!("store-test-empty-{}", uuid::Uuid::now_v7());
    let late_reply = |store: Store| {
        let empty = empty.clone();
        async move {
            let mut c = store.conn().await.unwrap();
            let started = Instant::now();
            let reply: Result<Option<(String, String)>, _> = deadpool_redis::redis::cmd("BLPOP")
                .arg(&empty)
                .arg(1)
                .query_async(&mut c)
                .await;
            (reply, started.elapsed())
        }
    };
    let (reply, took) = late_reply(store(Duration::from_secs(5))).await;
    assert_eq!(reply.unwrap(), None);
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let (reply, took) = late_reply(store(Duration::from_millis(200))).await;
    assert!(reply.unwrap_err().is_timeout());
    assert!(took < Duration::from_millis(900), "{took:?}");
}
