//! The Dify client against the Dify stand-in (and, for stream shapes the stand-in does not
//! produce, a raw server): each app kind in each mode, Dify's ids revealed before the answer,
//! every error class of dify.md, the whole-call timeout, per-app concurrency caps, and resuming
//! a run whose client went away instead of running it again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Map};
use shared::config::{AppConfig, AppKind, ResponseMode};
use shared::Secret;
use standins::dify::{DifyOptions, DifyStandin, Endpoint, Latency};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use worker::dify::{
    build_inputs, classify, DifyCall, DifyClient, DifyError, DifyIds, ErrorClass, RunState,
};

const KEY: &str = "app-test-key-0123456789";

fn app(dify: &DifyStandin, kind: AppKind, mode: ResponseMode) -> AppConfig {
    AppConfig {
        id: format!("{kind:?}-{mode:?}").to_lowercase(),
        base_url: dify.base_url(),
        api_key: Secret::new(KEY),
        kind,
        response_mode: mode,
        timeout: Duration::from_secs(10),
        concurrency: 64,
        inputs: Default::default(),
        answer_output: None,
    }
}

async fn standin(latency: Duration, chunks: usize) -> DifyStandin {
    DifyStandin::start(DifyOptions {
        api_key: Some(KEY.into()),
        latency: Latency::Fixed(latency),
        chunks,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn call<'a>(app: &'a AppConfig, query: &'a str, user: &'a str, trace_id: &'a str) -> DifyCall<'a> {
    DifyCall {
        app,
        query,
        inputs: Map::new(),
        user,
        conversation_id: None,
        trace_id,
    }
}

fn trace() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Polls `probe` until it gives `Some`, failing at the deadline.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_kind_answers_in_both_modes_with_its_ids_and_the_trace_id() {
    let dify = standin(Duration::from_millis(40), 5).await;
    let kinds = [AppKind::Chat, AppKind::Workflow, AppKind::Completion];
    let modes = [ResponseMode::Blocking, ResponseMode::Streaming];
    for kind in kinds {
        for mode in modes {
            let app = app(&dify, kind, mode);
            let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
            let trace_id = trace();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let answer = client
                .call(&call(&app, "hello there", "u1", &trace_id), Some(&tx))
                .await
                .unwrap_or_else(|e| panic!("{kind:?} {mode:?}: {e}"));
            let case = format!("{kind:?} {mode:?}");
            assert_eq!(answer.text, "echo: hello there", "{case}");
            assert!(answer.task_id.is_some(), "{case}");
            match kind {
                AppKind::Chat => {
                    assert!(answer.conversation_id.is_some() && answer.message_id.is_some());
                    assert!(answer.usage.is_some(), "{case}: usage from message_end");
                }
                AppKind::Completion => assert!(answer.message_id.is_some(), "{case}"),
                AppKind::Workflow => {
                    assert!(answer.workflow_run_id.is_some(), "{case}");
                    assert_eq!(answer.outputs, Some(json!({"answer": "echo: hello there"})));
                }
            }
            // The ids the caller was told are the answer's ids.
            let mut last = DifyIds::default();
            while let Ok(ids) = rx.try_recv() {
                last = ids;
            }
            assert_eq!(last, DifyIds::from(&answer), "{case}");
            // The stand-in saw exactly one call, with our trace id and key.
            assert_eq!(dify.calls_for(&trace_id), 1, "{case}");
            let record = &dify.records_for(&trace_id)[0];
            assert_eq!(
                record.authorization.as_deref(),
                Some(&*format!("Bearer {KEY}"))
            );
            assert_eq!(record.response_mode.as_deref(), Some(mode.as_str()));
            let expected_endpoint = match kind {
                AppKind::Chat => Endpoint::Chat,
                AppKind::Workflow => Endpoint::Workflow,
                AppKind::Completion => Endpoint::Completion,
            };
            assert_eq!(record.endpoint, expected_endpoint);
            assert_eq!(client.in_flight(&app.id), 0);
        }
    }
}

#[tokio::test]
async fn a_conversation_continues_and_is_scoped_to_its_user() {
    let dify = standin(Duration::ZERO, 3).await;
    let app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let first = client
        .call(&call(&app, "one", "ann", &trace()), None)
        .await
        .unwrap();
    let conversation = first.conversation_id.clone().unwrap();
    let mut next = call(&app, "two", "ann", "t2");
    next.conversation_id = Some(&conversation);
    let second = client.call(&next, None).await.unwrap();
    assert_eq!(
        second.conversation_id.as_deref(),
        Some(conversation.as_str())
    );
    let queries: Vec<String> = dify
        .messages_in(&conversation)
        .into_iter()
        .map(|m| m.query)
        .collect();
    assert_eq!(queries, ["one", "two"]);

    // Another user's conversation, and an unknown one, are lost conversations.
    for (user, conversation_id) in [
        ("bob", conversation.as_str()),
        ("ann", "no-such-conversation"),
    ] {
        let mut stale = call(&app, "three", user, "t3");
        stale.conversation_id = Some(conversation_id);
        let err = client.call(&stale, None).await.unwrap_err();
        assert!(matches!(err, DifyError::Http { status: 404, .. }), "{err}");
        assert_eq!(classify(&err), ErrorClass::ConversationLost, "{err}");
    }
    // A deleted conversation too; a new one then works.
    assert!(dify.delete_conversation(&conversation));
    let err = client.call(&next, None).await.unwrap_err();
    assert_eq!(classify(&err), ErrorClass::ConversationLost);
    let fresh = client
        .call(&call(&app, "again", "ann", "t4"), None)
        .await
        .unwrap();
    assert_ne!(
        fresh.conversation_id.as_deref(),
        Some(conversation.as_str())
    );
}

#[tokio::test]
async fn an_error_mid_stream_is_a_retryable_stream_error_after_the_ids() {
    let dify = standin(Duration::from_millis(50), 10).await;
    let app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    dify.error_mid_stream_next(1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let err = client
        .call(&call(&app, "q", "u", &trace()), Some(&tx))
        .await
        .unwrap_err();
    match &err {
        DifyError::Stream { status, code, .. } => {
            assert_eq!(
                (*status, code.as_deref()),
                (Some(400), Some("completion_request_error"))
            );
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert_eq!(classify(&err), ErrorClass::Retry { retry_after: None });
    assert!(rx.try_recv().is_ok_and(|ids| ids.message_id.is_some()));
    // The next call is not affected.
    client
        .call(&call(&app, "q", "u", &trace()), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn too_many_requests_then_success_surfaces_retry_after() {
    let dify = standin(Duration::ZERO, 2).await;
    for mode in [ResponseMode::Blocking, ResponseMode::Streaming] {
        let app = app(&dify, AppKind::Chat, mode);
        let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
        let trace_id = trace();
        dify.fail_next(1, 429, "too_many_requests");
        let err = client
            .call(&call(&app, "q", "u", &trace_id), None)
            .await
            .unwrap_err();
        assert_eq!(
            classify(&err),
            ErrorClass::Retry {
                retry_after: Some(Duration::from_secs(1))
            },
            "{err}"
        );
        assert_eq!(err.code(), Some("too_many_requests"));
        let answer = client
            .call(&call(&app, "q", "u", &trace_id), None)
            .await
            .unwrap();
        assert_eq!(answer.text, "echo: q");
        assert_eq!(dify.calls_for(&trace_id), 2);
    }
}

#[tokio::test]
async fn scripted_answers_are_classified_per_the_table() {
    let dify = standin(Duration::ZERO, 2).await;
    let app = app(&dify, AppKind::Workflow, ResponseMode::Streaming);
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let table = [
        (429, "rate_limit_error", ErrorClass::Permanent),
        (
            400,
            "completion_request_error",
            ErrorClass::Retry { retry_after: None },
        ),
        (400, "provider_quota_exceeded", ErrorClass::Permanent),
        (400, "invalid_param", ErrorClass::Permanent),
        (
            500,
            "internal_server_error",
            ErrorClass::Retry { retry_after: None },
        ),
        (503, "", ErrorClass::Retry { retry_after: None }),
    ];
    for (status, code, class) in table {
        dify.fail_next(1, status, code);
        let err = client
            .call(&call(&app, "q", "u", &trace()), None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(status));
        assert_eq!(classify(&err), class, "{status} {code}");
    }
    dify.set_down(true);
    let err = client
        .call(&call(&app, "q", "u", &trace()), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), classify(&err)),
        (Some(503), ErrorClass::Retry { retry_after: None })
    );
    dify.set_down(false);
    client
        .call(&call(&app, "q", "u", &trace()), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wrong_key_is_permanent_and_never_shown() {
    let dify = standin(Duration::ZERO, 2).await;
    let mut app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    let wrong = "app-wrong-secret-key-42";
    app.api_key = Secret::new(wrong);
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let err = client
        .call(&call(&app, "q", "u", &trace()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DifyError::Http { status: 401, code: Some(c), .. } if c == "unauthorized")
    );
    assert_eq!(classify(&err), ErrorClass::Permanent);
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{client:?}"),
        format!("{app:?}"),
    ] {
        assert!(!text.contains(wrong), "{text}");
    }
}

#[tokio::test]
async fn the_timeout_bounds_the_whole_call_in_both_modes() {
    let dify = standin(Duration::from_secs(5), 10).await;
    for mode in [ResponseMode::Blocking, ResponseMode::Streaming] {
        let mut app = app(&dify, AppKind::Chat, mode);
        app.timeout = Duration::from_millis(300);
        let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
        let started = Instant::now();
        let err = client
            .call(&call(&app, "q", "u", &trace()), None)
            .await
            .unwrap_err();
        assert_eq!(err, DifyError::Timeout, "{mode:?}");
        assert_eq!(classify(&err), ErrorClass::Retry { retry_after: None });
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn unreachable_dify_and_bad_trace_ids() {
    let dify = standin(Duration::ZERO, 2).await;
    let mut app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    app.base_url = format!("http://127.0.0.1:{port}/v1");
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let err = client
        .call(&call(&app, "q", "u", &trace()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, DifyError::Connect(_)), "{err:?}");
    assert_eq!(classify(&err), ErrorClass::Retry { retry_after: None });
    let err = client
        .call(&call(&app, "q", "u", "not a trace id"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, DifyError::Request(_)));
    assert_eq!(classify(&err), ErrorClass::Permanent);
}

#[tokio::test]
async fn calls_per_app_are_capped() {
    let dify = standin(Duration::from_millis(150), 3).await;
    let mut app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    app.concurrency = 2;
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let calls = (0..6).map(|i| {
        let (client, app) = (client.clone(), app.clone());
        tokio::spawn(async move {
            let user = format!("u{i}");
            client.call(&call(&app, "q", &user, &trace()), None).await
        })
    });
    for handle in calls.collect::<Vec<_>>() {
        handle.await.unwrap().unwrap();
    }
    assert_eq!(dify.calls(), 6);
    assert_eq!(dify.max_in_flight(), 2);
    assert_eq!(client.in_flight(&app.id), 0);
}

/// Starts a streaming call, waits until Dify's ids are known, then drops the call as a dying
/// worker would, and returns the ids it had recorded.
async fn abandon_mid_stream(client: &DifyClient, app: &AppConfig, query: &str) -> DifyIds {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (client2, app2, query2) = (client.clone(), app.clone(), query.to_owned());
    let handle = tokio::spawn(async move {
        client2
            .call(&call(&app2, &query2, "u", &trace()), Some(&tx))
            .await
    });
    let ids = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !handle.is_finished(),
        "the ids must be known before the answer is complete"
    );
    handle.abort();
    let _ = handle.await;
    ids
}

#[tokio::test]
async fn recover_finds_a_chat_run_whose_client_died_mid_stream() {
    let dify = standin(Duration::from_millis(800), 10).await;
    let app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let ids = abandon_mid_stream(&client, &app, "resume me").await;
    assert!(
        ids.conversation_id.is_some() && ids.message_id.is_some(),
        "{ids:?}"
    );
    // While Dify is still running it, the run is known to be running, not lost.
    assert_eq!(
        client.run_state(&app, "u", &ids).await.unwrap(),
        RunState::Running
    );
    assert_eq!(client.recover(&app, "u", &ids).await.unwrap(), None);
    let answer = eventually(Duration::from_secs(5), "the run to finish", || async {
        client.recover(&app, "u", &ids).await.unwrap()
    })
    .await;
    assert_eq!(answer.text, "echo: resume me");
    assert_eq!(
        (answer.message_id, answer.conversation_id),
        (ids.message_id.clone(), ids.conversation_id.clone())
    );
    assert_eq!(dify.calls(), 1, "recovered, not re-run");
    // Another user cannot see it; unknown ids find nothing.
    assert_eq!(
        client.run_state(&app, "mallory", &ids).await.unwrap(),
        RunState::Unknown
    );
    let unknown = DifyIds {
        message_id: Some("nope".into()),
        ..ids.clone()
    };
    assert_eq!(client.recover(&app, "u", &unknown).await.unwrap(), None);
}

#[tokio::test]
async fn recover_finds_a_workflow_run_whose_client_died_mid_stream() {
    let dify = standin(Duration::from_millis(800), 10).await;
    let app = app(&dify, AppKind::Workflow, ResponseMode::Streaming);
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let ids = abandon_mid_stream(&client, &app, "resume the flow").await;
    assert!(ids.workflow_run_id.is_some(), "{ids:?}");
    assert_eq!(
        client.run_state(&app, "u", &ids).await.unwrap(),
        RunState::Running
    );
    let answer = eventually(Duration::from_secs(5), "the run to finish", || async {
        client.recover(&app, "u", &ids).await.unwrap()
    })
    .await;
    assert_eq!(answer.text, "echo: resume the flow");
    assert_eq!(
        answer.outputs,
        Some(json!({"answer": "echo: resume the flow"}))
    );
    assert_eq!(dify.calls(), 1, "recovered, not re-run");
    let unknown = DifyIds {
        workflow_run_id: Some("no-such-run".into()),
        ..Default::default()
    };
    assert_eq!(
        client.run_state(&app, "u", &unknown).await.unwrap(),
        RunState::Unknown
    );
    assert_eq!(
        client
            .run_state(&app, "u", &DifyIds::default())
            .await
            .unwrap(),
        RunState::Unknown
    );
}

#[tokio::test]
async fn a_stopped_run_ends_with_its_partial_answer() {
    let dify = standin(Duration::from_millis(600), 10).await;
    let app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (client2, app2) = (client.clone(), app.clone());
    let handle = tokio::spawn(async move {
        client2
            .call(
                &call(&app2, "a long answer to stop", "u", &trace()),
                Some(&tx),
            )
            .await
    });
    let ids = rx.recv().await.unwrap();
    client
        .stop(&app, "u", ids.task_id.as_deref().unwrap())
        .await
        .unwrap();
    let answer = handle.await.unwrap().unwrap();
    assert!("echo: a long answer to stop".starts_with(&answer.text));
    assert!(
        answer.text.len() < "echo: a long answer to stop".len(),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn inputs_are_mapped_from_the_event_and_sent() {
    let dify = standin(Duration::ZERO, 2).await;
    let mut app = app(&dify, AppKind::Workflow, ResponseMode::Blocking);
    app.inputs = [
        ("who", "sender_name"),
        ("ticket", "payload.ticket.id"),
        ("channel", "source"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let event = shared::envelope::InboundEvent {
        id: uuid::Uuid::now_v7(),
        source: "crm".into(),
        platform: "bearer".into(),
        dedup_key: "d1".into(),
        kind: "message".into(),
        received_at: chrono::Utc::now(),
        conversation: shared::envelope::Conversation {
            chat_id: "c".into(),
            chat_type: shared::envelope::ChatType::Single,
            sender_id: "s".into(),
            sender_name: Some("Ann".into()),
            thread_id: None,
        },
        text: "where is my order".into(),
        reply: None,
        payload: json!({"ticket": {"id": 7}}),
        attempts: vec![],
        replay_of: None,
    };
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let trace_id = event.id.to_string();
    let mut c = call(&app, &event.text, "s", &trace_id);
    c.inputs = build_inputs(&app, &event);
    let answer = client.call(&c, None).await.unwrap();
    assert_eq!(answer.text, "echo: where is my order");
    let record = &dify.records_for(&trace_id)[0];
    assert_eq!(
        record.inputs,
        json!({"who": "Ann", "ticket": 7, "channel": "crm", "query": "where is my order"})
    );
}

/// A raw server that sends a fixed body one byte per chunk, for stream shapes the stand-in
/// does not produce (CRLF, comments, multi-line data, an early end, a stream left open).
async fn raw_stream_server(body: &'static [u8], then_hang: bool) -> String {
    use axum::body::{Body, Bytes};
    use futures_util::StreamExt;
    let router = axum::Router::new().fallback(move || async move {
        let bytes = futures_util::stream::iter(
            body.iter()
                .map(|b| Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(&[*b]))),
        );
        let stream = if then_hang {
            bytes.chain(futures_util::stream::pending()).boxed()
        } else {
            bytes.boxed()
        };
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn byte_by_byte_streams_with_crlf_comments_and_multiline_data() {
    let base = raw_stream_server(
        b": keep-alive\r\nevent: ping\r\n\r\n\
data: {\"event\": \"message\", \"task_id\": \"t\", \"message_id\": \"m\", \"conversation_id\": \"c\",\r\n\
data:  \"answer\": \"Gr\xC3\xBC\"}\r\n\r\n\
data: {\"event\": \"message\", \"answer\": \"\xC3\x9Fe\"}\n\n\
data: {\"event\": \"message_end\", \"message_id\": \"m\", \"conversation_id\": \"c\", \"metadata\": {\"usage\": {\"total_tokens\": 4}}}\r\n\r\n",
        false,
    )
    .await;
    let dify = standin(Duration::ZERO, 1).await;
    let mut app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    app.base_url = base;
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let answer = client.call(&call(&app, "q", "u", "t"), None).await.unwrap();
    assert_eq!(answer.text, "Grüße");
    assert_eq!(answer.usage, Some(json!({"total_tokens": 4})));
    assert_eq!(answer.conversation_id.as_deref(), Some("c"));
}

#[tokio::test]
async fn a_stream_that_ends_before_message_end_is_retried() {
    let base = raw_stream_server(
        b"data: {\"event\": \"message\", \"message_id\": \"m\", \"answer\": \"par\"}\n\n",
        false,
    )
    .await;
    let dify = standin(Duration::ZERO, 1).await;
    let mut app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    app.base_url = base;
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let err = client
        .call(&call(&app, "q", "u", "t"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, DifyError::Protocol(_)), "{err:?}");
    assert_eq!(classify(&err), ErrorClass::Retry { retry_after: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_at_once() {
    const N: usize = 1200;
    // Each answer takes 3 s: the 1,200 calls must all be open before the first ends, and on a
    // busy machine (a cargo build beside the tests) opening them took longer than 1 s.
    let dify = standin(Duration::from_secs(3), 20).await;
    let mut app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    app.concurrency = N;
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let started = Instant::now();
    let calls: Vec<_> = (0..N)
        .map(|i| {
            let (client, app) = (client.clone(), app.clone());
            tokio::spawn(async move {
                let (query, user) = (format!("question {i}"), format!("u{i}"));
                let answer = client
                    .call(&call(&app, &query, &user, &trace()), None)
                    .await?;
                Ok::<_, DifyError>(answer.text == format!("echo: {query}"))
            })
        })
        .collect();
    for handle in calls {
        assert!(handle.await.unwrap().unwrap());
    }
    let elapsed = started.elapsed();
    assert!(
        dify.max_in_flight() >= 1000,
        "peak {}",
        dify.max_in_flight()
    );
    assert_eq!(dify.calls(), N as u64);
    eprintln!(
        "{N} streams of 3 s in {elapsed:?}, peak {} in flight",
        dify.max_in_flight()
    );
    // One at a time would take an hour; a pool of a hundred, 36 s.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
}

#[tokio::test]
async fn an_answer_is_not_held_by_a_stream_left_open_after_it() {
    let base = raw_stream_server(
        b"data: {\"event\": \"message\", \"message_id\": \"m\", \"answer\": \"ok\"}\n\n\
data: {\"event\": \"message_end\", \"message_id\": \"m\"}\n\n",
        true,
    )
    .await;
    let dify = standin(Duration::ZERO, 1).await;
    let mut app = app(&dify, AppKind::Chat, ResponseMode::Streaming);
    app.base_url = base;
    let client = DifyClient::new(reqwest::Client::new(), std::slice::from_ref(&app));
    let started = Instant::now();
    let answer = client.call(&call(&app, "q", "u", "t"), None).await.unwrap();
    assert_eq!(answer.text, "ok");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
