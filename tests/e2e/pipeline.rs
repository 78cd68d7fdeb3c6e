//! The foundation's guarantees, through every real part: a signed event is answered and the
//! answer arrives signed; duplicates don't reach Dify twice; receivers' failures are retried or
//! dead-lettered with their history; bad input leaves nothing behind; a worker told to stop
//! finishes its call; the ingress says 503 while the broker is away and recovers by itself.
use crate::common::*;
use shared::envelope::{encode, Reason, Stage};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_signed_event_is_answered_and_arrives_signed_at_the_receiver() {
    let app = TestApp::spawn(Options::default()).await;
    let resp = app
        .send_signed("evt-1", r#"{"text":"hello","sender_id":"u1"}"#)
        .await;
    assert_eq!(resp.status(), 202);
    app.wait_answers("the answer at the receiver", 1).await;
    let got = &app.receiver.received()[0];
    assert!(
        got.signature_ok,
        "the receiver verified our Standard Webhooks signature"
    );
    assert_eq!(got.body["query"], "hello");
    assert_eq!(got.body["source"], "hooks");
    assert!(
        got.body["answer"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("hello"),
        "{}",
        got.body
    );
    assert!(got.body["answer"]["conversation_id"].is_string());
    let event_id = got.body["event_id"].as_str().expect("event id").to_owned();
    assert_eq!(
        app.dify.calls_for(&event_id),
        1,
        "X-Trace-Id is the event id, and Dify was called once"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_same_event_sent_twice_calls_dify_once() {
    let app = TestApp::spawn(Options::default()).await;
    let body = r#"{"text":"twice","sender_id":"u2"}"#;
    assert_eq!(app.send_signed("evt-dup", body).await.status(), 202);
    app.wait_answers("the first answer", 1).await;
    // The platform retries: same id. Answered as success, not enqueued again.
    assert_eq!(app.send_signed("evt-dup", body).await.status(), 202);
    let (d, r) = (app.dify.clone(), app.receiver.clone());
    assert!(
        stays(Duration::from_millis(800), || d.calls() == 1
            && r.accepted() == 1)
        .await
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_redelivered_after_its_answer_was_recorded_is_not_sent_to_dify_again() {
    let app = TestApp::spawn(Options::default()).await;
    assert_eq!(
        app.send_signed("evt-re", r#"{"text":"once","sender_id":"u3"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("the answer", 1).await;
    // The broker redelivers the same event (same dedup key), bypassing the door.
    let first = app.receiver.received()[0].body.clone();
    let event = shared::InboundEvent {
        id: first["event_id"].as_str().unwrap().parse().unwrap(),
        source: "hooks".into(),
        platform: "standard".into(),
        dedup_key: "evt-re".into(),
        kind: "message".into(),
        received_at: chrono::Utc::now(),
        conversation: serde_json::from_value(first["conversation"].clone()).unwrap(),
        text: "once".into(),
        reply: None,
        payload: serde_json::json!({}),
        attempts: vec![],
        replay_of: None,
    };
    let work = app.services.broker.topology().stage_queue(Stage::Work);
    app.services
        .broker
        .publish(&work, &encode(&event), Default::default())
        .await
        .unwrap();
    app.services
        .broker
        .publish(&work, &encode(&event), Default::default())
        .await
        .unwrap();
    let (d, r) = (app.dify.clone(), app.receiver.clone());
    assert!(
        stays(Duration::from_secs(1), || d.calls() == 1
            && r.accepted() == 1)
        .await,
        "calls {} deliveries {}",
        app.dify.calls(),
        app.receiver.accepted()
    );
    app.shutdown().await;
}

/// Issue 19: the ingress answered 503 although its publish reached the queue, the platform
/// retried, and the retry was kept as a second event (another event id, the same dedup key).
/// Both copies reach the worker, at once and one after the other: Dify is called once, and each
/// destination receives the answer once, under one `webhook-id` derived from the platform's
/// identity of the event.
#[tokio::test]
async fn one_platform_event_kept_twice_is_answered_once_and_delivered_once_per_destination() {
    let app = TestApp::spawn(Options {
        extra: r#"
[[sources]]
id = "twice"
platform = "bearer"
token = "tok-twice"
app = "support"
targets = ["crm", "audit"]

[[targets]]
id = "audit"
kind = "webhook"
url = "{receiver}/audit"
secret = "{OUT_SECRET}"
"#
        .replace("{OUT_SECRET}", OUT_SECRET),
        ..Default::default()
    })
    .await;
    let copy = |key: &str| shared::InboundEvent {
        id: uuid::Uuid::now_v7(),
        source: "twice".into(),
        platform: "bearer".into(),
        dedup_key: key.into(),
        kind: "message".into(),
        received_at: chrono::Utc::now(),
        conversation: shared::envelope::Conversation {
            chat_id: format!("chat-{key}"),
            chat_type: shared::envelope::ChatType::Single,
            sender_id: "u-twice".into(),
            sender_name: None,
            thread_id: None,
        },
        text: format!("kept twice: {key}"),
        reply: None,
        payload: serde_json::json!({}),
        attempts: vec![],
        replay_of: None,
    };
    let work = app.services.broker.topology().stage_queue(Stage::Work);
    let publish = |e: shared::InboundEvent| {
        let broker = app.services.broker.clone();
        let work = work.clone();
        async move { broker.publish(&work, &encode(&e), Default::default()).await }
    };
    // Both copies in the queue at once (they race for the claim)...
    publish(copy("ev2309")).await.unwrap();
    publish(copy("ev2309")).await.unwrap();
    app.wait_answers("ev2309 at both destinations", 2).await;
    // ...and a third copy after the answer was delivered.
    publish(copy("ev2309")).await.unwrap();
    let (d, r) = (app.dify.clone(), app.receiver.clone());
    assert!(
        stays(Duration::from_secs(1), || d.calls() == 1
            && r.accepted() == 2)
        .await,
        "calls {} deliveries {}",
        app.dify.calls(),
        app.receiver.accepted()
    );
    let received = app.receiver.received();
    let ids: std::collections::BTreeSet<_> =
        received.iter().map(|x| x.webhook_id.clone()).collect();
    assert_eq!(ids.len(), 2, "one webhook-id per destination: {ids:?}");
    for id in &ids {
        assert_eq!(app.receiver.requests_for(id), 1, "{id} posted once");
    }
    let expected: std::collections::BTreeSet<_> = ["crm", "audit"]
        .iter()
        .map(|t| {
            shared::envelope::DispatchJob::job_id_of_platform_event(
                "twice",
                "ev2309",
                &shared::envelope::Destination::Target { id: (*t).into() },
            )
            .to_string()
        })
        .collect();
    assert_eq!(
        ids, expected,
        "the webhook-ids come from (source, dedup key, destination)"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_answer_on_the_third_attempt() {
    let app = TestApp::spawn(Options::default()).await;
    app.receiver.fail_next(2, 503, None);
    assert_eq!(
        app.send_signed("evt-3", r#"{"text":"third time","sender_id":"u4"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("delivery on the third attempt", 1).await;
    let id = app.receiver.received()[0].webhook_id.clone();
    assert_eq!(
        app.receiver.requests_for(&id),
        3,
        "two failures, then success"
    );
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_receiver_answering_400_yields_a_dead_letter_with_the_attempt_history() {
    let app = TestApp::spawn(Options::default()).await;
    app.receiver.fail_next(1, 500, None);
    app.receiver.fail_next(1, 400, None);
    assert_eq!(
        app.send_signed("evt-400", r#"{"text":"refused","sender_id":"u5"}"#)
            .await
            .status(),
        202
    );
    let letters = app.wait_dead_letters().await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let dl = &letters[0];
    assert_eq!((dl.stage, dl.reason), (Stage::Deliver, Reason::Permanent));
    assert_eq!(dl.target.as_deref(), Some("crm"));
    let statuses: Vec<_> = dl.attempts.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [Some(500), Some(400)],
        "every attempt is in the history"
    );
    assert_eq!(
        dl.message["payload"]["query"], "refused",
        "the original job is kept whole"
    );
    assert_eq!(app.receiver.accepted(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_leaves_nothing_behind() {
    let app = TestApp::spawn(Options {
        worker: false,
        dispatcher: false,
        ..Default::default()
    })
    .await;
    let work = app.services.broker.topology().stage_queue(Stage::Work);
    let key = shared::signing::SigningKey::parse(SECRET).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let body = r#"{"text":"hi"}"#;
    let sig = key.sign("evt-bad", ts, body.as_bytes());
    let tampered = body.replace("hi", "hI");
    let std_headers = |sig: &str| {
        vec![
            ("webhook-id".to_string(), "evt-bad".to_string()),
            ("webhook-timestamp".to_string(), ts.to_string()),
            ("webhook-signature".to_string(), sig.to_string()),
        ]
    };
    let send = |path: &'static str, headers: Vec<(String, String)>, body: String| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.base);
        async move {
            let mut req = http.post(url).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let json: serde_json::Value = resp.json().await.unwrap_or_default();
            (
                status,
                json["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    // (what, what the ingress answered, what it must answer)
    type Case<'a> = (&'a str, (u16, String), (u16, &'a str));
    let cases: Vec<Case> = vec![
        (
            "tampered by one byte",
            send("/hooks/hooks", std_headers(&sig), tampered).await,
            (401, "bad_signature"),
        ),
        (
            "no signature",
            send("/hooks/hooks", vec![], body.into()).await,
            (401, "missing_signature"),
        ),
        (
            "unknown source",
            send("/hooks/nobody", std_headers(&sig), body.into()).await,
            (404, "unknown_source"),
        ),
        (
            "oversized body",
            send(
                "/hooks/crm-in",
                vec![("authorization".into(), format!("Bearer {TOKEN}"))],
                "x".repeat(70 * 1024),
            )
            .await,
            (413, "body_too_large"),
        ),
        (
            "malformed body",
            send(
                "/hooks/crm-in",
                vec![("authorization".into(), format!("Bearer {TOKEN}"))],
                "{not json".into(),
            )
            .await,
            (400, "malformed"),
        ),
        (
            "wrong token",
            send(
                "/hooks/crm-in",
                vec![("authorization".into(), "Bearer nope".into())],
                body.into(),
            )
            .await,
            (401, "bad_token"),
        ),
    ];
    for (what, (status, reason), (want_status, want_reason)) in cases {
        assert_eq!(
            (status, reason.as_str()),
            (want_status, want_reason),
            "{what}"
        );
    }
    let get = app
        .http
        .get(format!("{}/hooks/crm-in", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(app.queue_len(&work).await, 0, "nothing was enqueued");
    assert_eq!(app.dify.calls(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn with_the_broker_unreachable_the_ingress_answers_503_and_recovers_by_itself() {
    let app = TestApp::spawn(Options {
        broker_proxy: true,
        ..Default::default()
    })
    .await;
    let proxy = app.proxy.clone().unwrap();
    proxy.cut();
    let broker = app.services.broker.clone();
    wait_for("the broker connection to drop", T, || {
        let b = broker.clone();
        async move { !b.is_connected() }
    })
    .await;
    let resp = app
        .send_signed("evt-down", r#"{"text":"while down"}"#)
        .await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "/readyz says the broker is away");
    proxy.restore();
    wait_for("the broker connection to come back", T, || {
        let b = broker.clone();
        async move { b.is_connected() }
    })
    .await;
    // The platform retries the same event; now it is kept and answered.
    assert_eq!(
        app.send_signed("evt-down", r#"{"text":"while down"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("the answer after recovery", 1).await;
    app.shutdown().await;
}
