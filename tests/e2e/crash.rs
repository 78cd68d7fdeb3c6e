//! Workers as real child processes, stopped and killed mid-call: a SIGTERM lets the call finish;
//! a SIGKILL mid-stream is recovered from Dify by the next worker instead of being run again;
//! a conversation keeps its Dify context across a worker restart.
use crate::common::*;
use standins::dify::Latency;
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

fn slow_dify(ms: u64) -> Options {
    let mut o = Options {
        worker: false,
        ..Default::default()
    };
    o.dify.latency = Latency::Fixed(Duration::from_millis(ms));
    o.dify.chunks = 20;
    o
}

#[tokio::test]
async fn a_worker_given_sigterm_mid_call_finishes_that_call_and_dify_is_called_once() {
    let app = TestApp::spawn(slow_dify(2_000)).await;
    let mut worker = app.spawn_child("worker");
    assert_eq!(
        app.send_signed("evt-term", r#"{"text":"finish me","sender_id":"u1"}"#)
            .await
            .status(),
        202
    );
    let dify = app.dify.clone();
    wait_for("the call to be in flight", T, || {
        let d = dify.clone();
        async move { d.in_flight() == 1 }
    })
    .await;
    worker.terminate();
    let status = worker.wait(T).await;
    assert!(
        status.success(),
        "the worker exits cleanly after draining: {status}"
    );
    app.wait_answers("the answer of the call that was in flight", 1)
        .await;
    let event_id = app.receiver.received()[0].body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.dify.calls_for(&event_id), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_is_recovered_from_dify_not_repeated() {
    let mut app = TestApp::spawn(slow_dify(3_000)).await;
    let mut worker = app.spawn_child("worker");
    assert_eq!(
        app.send_signed("evt-kill", r#"{"text":"survive this","sender_id":"u2"}"#)
            .await
            .status(),
        202
    );
    // Wait until the stream revealed Dify's ids and the worker recorded them.
    let deadline = std::time::Instant::now() + T;
    loop {
        let rec = app.idem_record("evt-kill").await;
        if rec.get("ids").is_some_and(|ids| ids.contains("message_id")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ids never recorded: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.kill9().await;
    // Another worker takes over once the dead one's lease lapses.
    app.add_worker();
    app.wait_answers("the recovered answer", 1).await;
    let got = &app.receiver.received()[0];
    let event_id = got.body["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.dify.calls_for(&event_id),
        1,
        "Dify's run was recovered, not repeated"
    );
    assert!(
        got.body["answer"]["text"]
            .as_str()
            .unwrap()
            .contains("survive this"),
        "{}",
        got.body
    );
    let r = app.receiver.clone();
    assert!(
        stays(Duration::from_millis(500), || r.accepted() == 1).await,
        "answered exactly once"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_multi_turn_conversation_keeps_its_conversation_id_across_a_worker_restart() {
    let app = TestApp::spawn(slow_dify(50)).await;
    let mut first = app.spawn_child("worker");
    assert_eq!(
        app.send_signed("turn-1", r#"{"text":"my name is Ada","sender_id":"ada"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("the first answer", 1).await;
    first.terminate();
    assert!(first.wait(T).await.success());
    let _second = app.spawn_child("worker");
    assert_eq!(
        app.send_signed("turn-2", r#"{"text":"what is my name?","sender_id":"ada"}"#)
            .await
            .status(),
        202
    );
    app.wait_answers("the second answer", 2).await;
    let got = app.receiver.received();
    let c1 = got[0].body["answer"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c2 = got[1].body["answer"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        c1, c2,
        "the second turn continued the first turn's conversation"
    );
    let second_call = app
        .dify
        .records()
        .into_iter()
        .find(|r| r.query.as_deref() == Some("what is my name?"))
        .unwrap();
    assert_eq!(
        second_call.conversation_id.as_deref(),
        Some(c1.as_str()),
        "the worker sent the stored conversation_id"
    );
    app.shutdown().await;
}
