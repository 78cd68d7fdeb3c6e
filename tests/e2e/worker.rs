//! The worker's failure paths through the real pipeline: Dify's 429 then success, a stream that
//! breaks with an error event, a conversation Dify forgot, a permanent app error, blocking mode,
//! and two workers racing for the same redelivered event.
use crate::common::*;
use shared::envelope::{encode, Reason, Stage};
use std::time::Duration;

fn event_id(app: &TestApp, i: usize) -> String {
    app.receiver.received()[i].body["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn dify_429_then_success_is_retried_and_answered() {
    let app = TestApp::spawn(Options::default()).await;
    app.dify.fail_next(1, 429, "too_many_requests");
    assert_eq!(
        app.send_signed("evt-429", r#"{"text":"busy?","sender_id":"u"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("answers at the receiver", 1).await;
    let id = event_id(&app, 0);
    assert_eq!(app.dify.calls_for(&id), 2, "one refused call, one answered");
    app.shutdown().await;
}

#[tokio::test]
async fn an_error_mid_stream_is_retried_and_answered() {
    let app = TestApp::spawn(Options::default()).await;
    app.dify.error_mid_stream_next(1);
    assert_eq!(
        app.send_signed("evt-mid", r#"{"text":"stream","sender_id":"u"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("answers at the receiver", 1).await;
    assert_eq!(app.dify.calls_for(&event_id(&app, 0)), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_conversation_dify_forgot_is_recovered_with_a_new_conversation() {
    let app = TestApp::spawn(Options::default()).await;
    assert_eq!(
        app.send_signed("c-1", r#"{"text":"first","sender_id":"bob"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("answers at the receiver", 1).await;
    let old = app.receiver.received()[0].body["answer"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app.dify.delete_conversation(&old));
    assert_eq!(
        app.send_signed("c-2", r#"{"text":"second","sender_id":"bob"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("answers at the receiver", 2).await;
    let new = app.receiver.received()[1].body["answer"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(old, new, "a new conversation was started");
    assert_eq!(
        app.dify.calls_for(&event_id(&app, 1)),
        2,
        "the 404, then the call with a new conversation"
    );
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_permanent_dify_error_becomes_a_dead_letter_with_dify_code() {
    let app = TestApp::spawn(Options::default()).await;
    app.dify.fail_next(1, 400, "app_unavailable");
    assert_eq!(
        app.send_signed("evt-perm", r#"{"text":"broken app","sender_id":"u"}"#)
            .await
            .status(),
        202
    );
    let letters = app.wait_dead_letters().await;
    assert_eq!(letters.len(), 1);
    let dl = &letters[0];
    assert_eq!((dl.stage, dl.reason), (Stage::Work, Reason::Permanent));
    assert_eq!(dl.attempts.len(), 1);
    assert_eq!(dl.attempts[0].code.as_deref(), Some("app_unavailable"));
    assert_eq!(dl.message["text"], "broken app");
    assert_eq!(app.dify.calls(), 1, "a permanent error is not retried");
    app.shutdown().await;
}

#[tokio::test]
async fn exhausted_retries_become_a_dead_letter_with_every_attempt() {
    let app = TestApp::spawn(Options::default()).await;
    app.dify.fail_next(3, 503, "");
    assert_eq!(
        app.send_signed("evt-exh", r#"{"text":"down","sender_id":"u"}"#)
            .await
            .status(),
        202
    );
    let letters = app.wait_dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, Reason::Exhausted);
    assert_eq!(
        letters[0]
            .attempts
            .iter()
            .map(|a| a.status)
            .collect::<Vec<_>>(),
        [Some(503); 3]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn blocking_mode_answers_too() {
    let app = TestApp::spawn(Options {
        response_mode: "blocking",
        ..Default::default()
    })
    .await;
    assert_eq!(
        app.send_signed("evt-block", r#"{"text":"blocking","sender_id":"u"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("answers at the receiver", 1).await;
    assert_eq!(
        app.dify.records()[0].response_mode.as_deref(),
        Some("blocking")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn two_workers_racing_for_the_same_redelivered_event_call_dify_once() {
    let mut o = Options::default();
    o.dify.latency = standins::dify::Latency::Fixed(Duration::from_millis(600));
    let mut app = TestApp::spawn(o).await;
    app.add_worker();
    let event = shared::InboundEvent {
        id: uuid::Uuid::now_v7(),
        source: "hooks".into(),
        platform: "standard".into(),
        dedup_key: "evt-race".into(),
        kind: "message".into(),
        received_at: chrono::Utc::now(),
        conversation: shared::envelope::Conversation {
            chat_id: "c".into(),
            chat_type: shared::envelope::ChatType::Single,
            sender_id: "racer".into(),
            sender_name: None,
            thread_id: None,
        },
        text: "race".into(),
        reply: None,
        payload: serde_json::json!({}),
        attempts: vec![],
        replay_of: None,
    };
    let work = app.services.broker.topology().stage_queue(Stage::Work);
    for _ in 0..4 {
        app.services
            .broker
            .publish(&work, &encode(&event), Default::default())
            .await
            .unwrap();
    }
    app.wait_answers("answers at the receiver", 1).await;
    let (d, r) = (app.dify.clone(), app.receiver.clone());
    assert!(
        stays(Duration::from_secs(3), || d.calls() == 1
            && r.accepted() == 1)
        .await,
        "calls {} deliveries {}",
        app.dify.calls(),
        app.receiver.accepted()
    );
    app.shutdown().await;
}
