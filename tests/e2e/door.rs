//! Issue 18: the door answers once the broker confirmed and writes its markers behind the answer
//! (`ingress::door_rounds`); the process remembers what it kept (`ingress::recent`). So a retry
//! at the process that kept the event is a duplicate at once, one at another process is once the
//! marker landed, a marker that cannot be written fails no request, and a source whose captured
//! requests stay valid forever (GitHub) still has its markers written before the answer.
use crate::common::*;
use crate::forged::work_queue_holds;
use crate::kit::*;
use crate::platforms::{sources, GITHUB_SECRET};
use deadpool_redis::redis;
use ingress::keep::{Door, KeepOutcome, Keeper};
use ingress::platform::sender::SignedRequest;
use ingress::platform::{github, NewEvent};
use shared::envelope::{ChatType, Conversation};
use shared::store::Store;
use standins::platforms::PlatformStandin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn door_only(extra: String) -> Options {
    Options {
        worker: false,
        dispatcher: false,
        extra,
        ..Default::default()
    }
}

/// Another ingress process over the same config, broker and Redis (its own memory): its base
/// URL, and what stops it.
async fn another_ingress(app: &TestApp) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let run = ingress::run(
        app.config.clone(),
        app.services.clone(),
        listener,
        stop.clone(),
    );
    tokio::spawn(async move { run.await.expect("second ingress") });
    let b = base.clone();
    wait_for("the second ingress answers", T, || {
        let url = format!("{b}/healthz");
        async move { app.http.get(url).send().await.is_ok() }
    })
    .await;
    (base, stop)
}

async fn redis_get(store: &Store, key: &str) -> Option<String> {
    let mut conn = store.conn().await.expect("redis");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

#[tokio::test]
async fn a_retry_is_a_duplicate_here_at_once_and_at_another_process_once_the_marker_landed() {
    let app = TestApp::spawn(door_only(String::new())).await;
    let body = r#"{"text": "where is my order?", "chat_id": "c-1", "sender_id": "u-1"}"#;
    assert_eq!(app.send_signed("door-1", body).await.status(), 202);
    // The marker may not be in Redis yet: this process remembers the event itself.
    assert_eq!(app.send_signed("door-1", body).await.status(), 202);

    let store = &app.services.store;
    let seen = store.key(&["seen", "hooks", "door-1"]);
    let (s, k) = (store, seen.clone());
    wait_for("the door marker written behind the answer", T, || {
        let k = k.clone();
        async move { redis_get(s, &k).await.is_some() }
    })
    .await;
    let event_id = redis_get(store, &seen).await.expect("marker");
    let record = redis_get(store, &store.key(&["event", &event_id])).await;
    let record: serde_json::Value = serde_json::from_str(&record.expect("event record")).unwrap();
    assert_eq!(record["dedup_key"], "door-1");

    let (other, stop) = another_ingress(&app).await;
    let key = shared::signing::SigningKey::parse(SECRET).expect("key");
    let ts = chrono::Utc::now().timestamp();
    let retry = SignedRequest::new(axum::http::Method::POST, body.to_owned())
        .with_header("webhook-id", "door-1")
        .with_header("webhook-timestamp", ts.to_string())
        .with_header("webhook-signature", key.sign("door-1", ts, body.as_bytes()))
        .with_header("content-type", "application/json");
    assert_eq!(send_at(&app, &other, "hooks", &retry).await.status, 202);
    work_queue_holds(&app, 1).await;
    stop.cancel();
    app.shutdown().await;
}

/// GitHub signs no time: a captured body replayed under a fresh delivery id must be a retry at
/// every process from the moment the first was answered, so its markers are not left behind.
#[tokio::test]
async fn a_github_body_replayed_at_another_process_right_after_the_answer_is_a_retry() {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let app = TestApp::spawn(door_only(sources(&p))).await;
    let (other, stop) = another_ingress(&app).await;
    for n in 0..5 {
        let issue = serde_json::json!({
            "action": "opened",
            "issue": { "number": n, "title": "Login fails", "body": "since Monday" },
            "repository": { "full_name": "acme/shop" },
            "sender": { "login": "octocat", "type": "User" },
        })
        .to_string();
        let first = github::request(GITHUB_SECRET, "issues", &format!("a-{n}"), &issue);
        assert_eq!(send(&app, "github", &first).await.status, 202);
        let replay = github::request(GITHUB_SECRET, "issues", &format!("b-{n}"), &issue);
        assert_eq!(send_at(&app, &other, "github", &replay).await.status, 202);
    }
    work_queue_holds(&app, 5).await;
    stop.cancel();
    app.shutdown().await;
}

fn event(key: &str) -> NewEvent {
    NewEvent {
        dedup_key: key.into(),
        kind: "message".into(),
        conversation: Conversation {
            chat_id: "c".into(),
            chat_type: ChatType::Single,
            sender_id: "u".into(),
            sender_name: None,
            thread_id: None,
        },
        text: "hi".into(),
        reply: None,
        payload: serde_json::Value::Null,
    }
}

/// With Redis away the broker still confirms: the event is kept and acknowledged (its marker
/// only is lost), and this process still knows its retry.
#[tokio::test]
async fn with_redis_away_an_event_is_still_kept_and_its_retry_here_is_a_duplicate() {
    let app = TestApp::spawn(door_only(String::new())).await;
    let mut redis = app.config.redis.clone();
    // Nothing listens on port 1.
    redis.url = shared::Secret::new("redis://127.0.0.1:1");
    let services = shared::Services {
        broker: app.services.broker.clone(),
        store: Store::new(&redis).expect("store"),
    };
    let keeper = Keeper::new(services, Duration::from_secs(60), Door::Ingress);
    let keep = |key: &'static str| keeper.keep("hooks", "standard", event(key), None);
    let answered = tokio::time::timeout(T, async {
        assert_eq!(keep("away-1").await, KeepOutcome::New);
        assert_eq!(keep("away-1").await, KeepOutcome::Duplicate);
        assert_eq!(keep("away-2").await, KeepOutcome::New);
    });
    answered.await.expect("kept without Redis");
    keeper.settle().await;
    work_queue_holds(&app, 2).await;
    app.shutdown().await;
}

/// The markers of a source whose captured requests stay valid forever are in Redis by the time
/// `keep` says the event may be acknowledged: another process knows the body from then on.
#[tokio::test]
async fn a_replayable_sources_markers_are_in_redis_when_its_event_is_answered() {
    let app = TestApp::spawn(door_only(String::new())).await;
    let keeper = Keeper::new(app.services.clone(), Duration::from_secs(60), Door::Ingress);
    let store = &app.services.store;
    for n in 0..5 {
        let key = format!("replayable-{n}");
        let body = format!("a signed body without a time, {n}");
        let kept = keeper.keep("hooks", "github", event(&key), Some(body.as_bytes()));
        assert_eq!(kept.await, KeepOutcome::New);
        let seen = store.key(&["seen", "hooks", &key]);
        assert!(redis_get(store, &seen).await.is_some(), "{key}");
    }
    work_queue_holds(&app, 5).await;
    app.shutdown().await;
}
