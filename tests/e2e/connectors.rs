//! Issue 13 end to end: DingTalk Stream mode through the connector role, against the Stream
//! gateway stand-in (`standins::stream`), the real broker and Redis, the worker, the dispatcher
//! and the platform API stand-in that takes the replies. Each test: the connection opened with
//! a fresh single-use ticket, the pushed event answered through the platform's reply API once,
//! acknowledged on the connection only once kept; pings answered; the server's `disconnect`
//! met by a new connection before the old one goes; a connection dropped in the middle of a
//! frame replaced and its event redelivered and answered once; an ack lost on the way, so the
//! event comes again and is answered once; refused credentials reported, retried slowly; two
//! connector processes, one killed with SIGKILL under load, every event answered exactly once.
//! (The broker-down test is the fault suite's: it stops its own broker node.)
use crate::common::*;
use crate::kit::*;
use ingress::platform::dingtalk;
use standins::platforms::{api, PlatformStandin};
use standins::stream::DingtalkStreamStandin;
use std::time::Duration;

const CLIENT_ID: &str = "dingstream-app-key";
const CLIENT_SECRET: &str = "dingstream-app-secret";

struct Stream {
    app: TestApp,
    gw: DingtalkStreamStandin,
    p: PlatformStandin,
}

fn stream_config(gw: &DingtalkStreamStandin, p: &PlatformStandin, secret: &str) -> String {
    format!(
        r#"
[connector]
heartbeat = "1s"
backoff_initial = "50ms"
backoff_max = "1s"
refused_retry = "1s"
open_timeout = "3s"

[[sources]]
id = "ding-stream"
platform = "dingtalk"
mode = "stream"
app = "support"
reply = true
client_id = "{CLIENT_ID}"
client_secret = "{secret}"
api_base = "{gw}"
session_webhook_origins = ["{base}"]
"#,
        gw = gw.api_base(),
        base = p.base_url(),
    )
}

/// The pipeline with the connector in-process (or not: `connector = false` for tests that run
/// it as child processes).
async fn start(secret: &str, connector: bool) -> Stream {
    let gw = DingtalkStreamStandin::start(CLIENT_ID, CLIENT_SECRET, Duration::from_secs(2))
        .await
        .expect("stream stand-in");
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let app = TestApp::spawn(Options {
        extra: stream_config(&gw, &p, secret),
        connector,
        ..Options::default()
    })
    .await;
    Stream { app, gw, p }
}

/// A robot text message as DingTalk pushes it, with a session webhook at the API stand-in.
fn message(p: &PlatformStandin, msg_id: &str, text: &str) -> String {
    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    dingtalk::text_message(
        msg_id,
        "cidStream1",
        false,
        "staff9",
        text,
        &session,
        expires,
    )
}

async fn replies(s: &Stream, n: usize) {
    let p = s.p.clone();
    eventually(
        &format!("{n} replies through the session webhook"),
        move || p.messages_to(api::DINGTALK_SESSION).len() >= n,
    )
    .await;
}

impl Stream {
    async fn up(&self, n: usize) {
        let gw = &self.gw;
        eventually(&format!("{n} connection(s) at the gateway"), || {
            gw.connections() >= n
        })
        .await;
    }

    async fn stop(self) {
        self.app.shutdown().await;
        self.p.shutdown();
        self.gw.shutdown();
    }
}

#[tokio::test]
async fn dingtalk_stream_opens_answers_through_the_reply_api_and_answers_pings() {
    let s = start(CLIENT_SECRET, true).await;
    s.up(1).await;
    // The open request as the SDKs make it, and a ticket used once.
    let open = &s.gw.open_bodies()[0];
    assert_eq!(open["clientId"], CLIENT_ID);
    assert_eq!(
        open["subscriptions"],
        serde_json::json!([{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}])
    );
    assert!(open["ua"].as_str().unwrap().starts_with("switchboard/"));
    assert!(open.get("localIp").is_some());
    let links = s.app.links.clone();
    eventually("the connection up in /readyz", || links.all_up()).await;
    assert_eq!(s.app.links.report(), "ding-stream#0 up");

    let id = s.gw.push(&message(&s.p, "stream-msg-1", "hello stream"));
    replies(&s, 1).await;
    let reply = &s.p.messages_to(api::DINGTALK_SESSION)[0];
    assert_eq!(reply.text, "echo: hello stream");
    let gw = &s.gw;
    eventually("the event acknowledged", || gw.acks(&id) == 1).await;
    assert_eq!(s.gw.deliveries(&id), 1);

    // A picture is acknowledged and not answered.
    let mut picture: serde_json::Value =
        serde_json::from_str(&message(&s.p, "stream-pic", "x")).unwrap();
    picture["msgtype"] = "picture".into();
    let pic = s.gw.push(&picture.to_string());
    eventually("the picture acknowledged", || gw.acks(&pic) == 1).await;

    // SYSTEM pings are answered with their own data.
    s.gw.ping_all();
    s.gw.ping_all();
    eventually("two pongs", || gw.pongs() == 2).await;
    assert!(quiet(|| s.p.messages_to(api::DINGTALK_SESSION).len() == 1).await);
    assert_eq!(s.app.dify.calls(), 1);
    assert_eq!(s.gw.opens(), 1, "one connection, one ticket");
    s.stop().await;
}

#[tokio::test]
async fn a_server_disconnect_opens_the_new_connection_before_the_old_one_goes() {
    let s = start(CLIENT_SECRET, true).await;
    s.up(1).await;
    s.gw.disconnect_oldest();
    let gw = &s.gw;
    // The client closes the old one itself, after its replacement is up (the stand-in would
    // only close it after its grace period).
    eventually("the old connection closed by the client", || {
        gw.closed_by_client() == 1
    })
    .await;
    assert_eq!(s.gw.max_open(), 2, "both were open at once");
    assert_eq!(s.gw.opens(), 2, "a fresh ticket for the new connection");
    assert_eq!(s.gw.refused_tickets(), 0);
    assert_eq!(s.gw.connections(), 1);
    let id =
        s.gw.push(&message(&s.p, "stream-after-refresh", "after refresh"));
    replies(&s, 1).await;
    eventually("acknowledged on the new connection", || gw.acks(&id) == 1).await;
    s.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_mid_frame_is_replaced_and_its_event_answered_once() {
    let s = start(CLIENT_SECRET, true).await;
    s.up(1).await;
    s.gw.cut_next_event();
    let id = s.gw.push(&message(&s.p, "stream-cut", "cut in half"));
    replies(&s, 1).await;
    let gw = &s.gw;
    eventually("acknowledged", || gw.acks(&id) == 1).await;
    assert_eq!(s.gw.deliveries(&id), 2, "cut once, then delivered whole");
    assert_eq!(s.gw.opens(), 2, "reconnected with a fresh ticket");
    assert_eq!(s.gw.refused_tickets(), 0);
    assert!(quiet(|| s.p.messages_to(api::DINGTALK_SESSION).len() == 1).await);
    assert_eq!(s.app.dify.calls(), 1);
    s.stop().await;
}

#[tokio::test]
async fn an_event_whose_ack_was_lost_is_redelivered_and_answered_once() {
    let s = start(CLIENT_SECRET, true).await;
    s.up(1).await;
    s.gw.lose_next_ack();
    let id = s.gw.push(&message(&s.p, "stream-lost-ack", "ack lost"));
    let gw = &s.gw;
    eventually("the redelivery acknowledged", || gw.acks(&id) == 1).await;
    assert_eq!(s.gw.deliveries(&id), 2);
    replies(&s, 1).await;
    assert!(quiet(|| s.p.messages_to(api::DINGTALK_SESSION).len() == 1).await);
    assert_eq!(s.app.dify.calls(), 1, "the door knew the redelivery");
    s.stop().await;
}

#[tokio::test]
async fn refused_credentials_are_reported_in_readyz_and_retried_slowly() {
    let s = start("not-the-secret", true).await;
    let links = s.app.links.clone();
    eventually("the refusal in the connection's state", || {
        links.report().contains("refused")
    })
    .await;
    let report = s.app.links.report();
    assert!(report.contains("InvalidAuthentication"), "{report}");
    assert!(!report.contains("not-the-secret"), "{report}");
    // /readyz as the admin listener serves it.
    let readiness = connector::ConnectorReadiness {
        broker: s.app.services.broker.clone(),
        status: s.app.links.clone(),
    };
    let router = shared::telemetry::admin_router(readiness);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let resp = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("ding-stream#0 refused: HTTP 401"), "{body}");
    // Retried after refused_retry (1 s here), never in a tight loop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tries = s.gw.refused_opens();
    assert!((2..=4).contains(&tries), "{tries} tries in 2.5 s");
    assert_eq!(s.gw.opens(), 0);
    s.stop().await;
}

#[tokio::test]
async fn two_connectors_one_killed_under_load_every_event_answered_exactly_once() {
    let s = start(CLIENT_SECRET, false).await;
    let mut first = s.app.spawn_child("connector");
    let _second = s.app.spawn_child("connector");
    s.up(2).await;
    let n = 60;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(s.gw.push(&message(
            &s.p,
            &format!("stream-load-{i}"),
            &format!("load {i}"),
        )));
        if i == n / 2 {
            first.kill9().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gw = &s.gw;
    eventually("every event acknowledged", || gw.unacked() == 0).await;
    replies(&s, n).await;
    assert!(quiet(|| s.p.messages_to(api::DINGTALK_SESSION).len() == n).await);
    let mut texts = s.p.texts(api::DINGTALK_SESSION);
    texts.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("echo: load {i}")).collect();
    want.sort();
    assert_eq!(texts, want, "each event answered exactly once");
    s.stop().await;
}
