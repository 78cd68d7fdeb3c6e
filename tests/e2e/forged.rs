//! Issue 11, what a forger or a replayer can do with a request they observed, through the real
//! ingress (and, where the harm would be done later, the worker and the dispatcher): DingTalk's
//! `sign` covers only a timestamp, so one seen signature vouches for one body only, and the
//! `sessionWebhook` a body names is called only on DingTalk's own hosts; GitHub and `hmac`
//! senders sign no time, so the same signed body under a fresh delivery id is a retry.
use crate::common::*;
use crate::kit::*;
use crate::platforms::{answer_at_crm, messages_at, sources, stop, GITHUB_SECRET, HMAC_SECRET};
use ingress::platform::hmac::{Algorithm, Encoding, Scheme};
use ingress::platform::{dingtalk, github};
use serde_json::json;
use shared::envelope::{Reason, Stage};
use standins::platforms::{api, creds, PlatformStandin};
use standins::receiver::Receiver;

/// Every platform's source (as `crate::platforms`), plus `forms-plain`: an `hmac` sender that
/// signs no timestamp.
async fn spawn_with(opts: Options) -> (TestApp, PlatformStandin) {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let extra = format!(
        r#"{}
[[sources]]
id = "forms-plain"
platform = "hmac"
app = "support"
targets = ["crm"]
secret = "{PLAIN_SECRET}"
header = "X-Signature"
algorithm = "sha256"
encoding = "hex"
id_header = "X-Delivery-Id"
"#,
        sources(&p)
    );
    let app = TestApp::spawn(Options { extra, ..opts }).await;
    (app, p)
}

const PLAIN_SECRET: &str = "forms-plain-secret";

fn door_only() -> Options {
    Options {
        worker: false,
        dispatcher: false,
        ..Default::default()
    }
}

/// Waits until the work queue holds `n` events, then checks it stays so.
pub(crate) async fn work_queue_holds(app: &TestApp, n: u32) {
    let work = app.services.broker.topology().stage_queue(Stage::Work);
    let (a, w) = (app, work.clone());
    wait_for(&format!("{n} event(s) in the work queue"), T, || {
        let w = w.clone();
        async move { a.queue_len(&w).await == n }
    })
    .await;
    let until = std::time::Instant::now() + QUIET;
    while std::time::Instant::now() < until {
        assert_eq!(app.queue_len(&work).await, n, "an extra event was enqueued");
    }
}

#[tokio::test]
async fn dingtalk_a_seen_sign_vouches_for_its_own_body_only() {
    let (app, p) = spawn_with(door_only()).await;
    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    let ts = now_ms();
    let body = |msg_id: &str, text: &str| {
        dingtalk::text_message(msg_id, "cid", false, "staff1", text, &session, expires)
    };
    let genuine = dingtalk::request(creds::DINGTALK_APP_SECRET, ts, &body("m-1", "hello"));
    assert_eq!(send(&app, "dingtalk", &genuine).await.status, 200);

    // The observed timestamp/sign pair under a body of the forger's: refused.
    let mut forged = genuine.clone();
    forged.body = body("m-forged", "transfer the money").into();
    assert_eq!(
        send(&app, "dingtalk", &forged).await.refusal(),
        (401, "replayed_signature".into())
    );
    // Even with the genuine message's id.
    let mut same_id = genuine.clone();
    same_id.body = body("m-1", "something else").into();
    assert_eq!(
        send(&app, "dingtalk", &same_id).await.refusal(),
        (401, "replayed_signature".into())
    );
    // DingTalk's own retry, the same bytes under the same sign: a door duplicate.
    assert_eq!(send(&app, "dingtalk", &genuine).await.status, 200);
    // A new message signed at another instant is a new event.
    let next = dingtalk::request(creds::DINGTALK_APP_SECRET, ts + 7, &body("m-2", "again"));
    assert_eq!(send(&app, "dingtalk", &next).await.status, 200);
    // More than DingTalk's hour away: stale, whatever the source's max_skew_secs.
    let late = dingtalk::request(
        creds::DINGTALK_APP_SECRET,
        ts - 3_601_000,
        &body("m-3", "old"),
    );
    assert_eq!(
        send(&app, "dingtalk", &late).await.refusal(),
        (401, "stale_timestamp".into())
    );
    work_queue_holds(&app, 2).await;
    stop(app, p).await;
}

#[tokio::test]
async fn dingtalk_a_session_webhook_off_dingtalks_hosts_fails_that_job_only_and_is_never_called() {
    let (app, p) = spawn_with(Options::default()).await;
    // The forger's receiver answers 503 to everything: called, it would count against the
    // source's reply breaker.
    let evil = Receiver::start(None).await.expect("receiver");
    evil.set_down(true);
    let (_, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    let base = p.base_url();
    let pinned = base.replacen("http://", "http://user:pass@", 1);
    let cases = [
        ("m-evil", evil.url("/robot/sendBySession?session=x")),
        ("m-creds", format!("{pinned}/robot/sendBySession?session=y")),
    ];
    for (i, (msg_id, url)) in cases.iter().enumerate() {
        let body = dingtalk::text_message(msg_id, "cid", false, "staff1", msg_id, url, expires);
        let req = dingtalk::request(creds::DINGTALK_APP_SECRET, now_ms() + i as i64, &body);
        assert_eq!(send(&app, "dingtalk", &req).await.status, 200);
        // The answer still reaches the source's other target.
        answer_at_crm(&app, "dingtalk", msg_id).await;
    }
    let letters = dead_letters_at_least(&app, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for dl in &letters {
        assert_eq!(dl.reason, Reason::Permanent, "{dl:?}");
        assert_eq!(dl.attempts.len(), 1, "permanent at once: {dl:?}");
        assert!(dl.error.contains("not on DingTalk's hosts"), "{}", dl.error);
        assert!(!dl.error.contains("pass"), "no credential in the error");
    }
    assert_eq!(
        evil.requests_for(""),
        0,
        "the forger's URL was never called"
    );
    // The source's reply breaker heard nothing of it: no state was written.
    let mut conn = app.services.store.conn().await.unwrap();
    let breaker: Vec<String> = deadpool_redis::redis::cmd("KEYS")
        .arg(format!("{}:breaker:*", app.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(breaker.is_empty(), "{breaker:?}");
    // And the source's replies still flow through a genuine session webhook.
    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    let body = dingtalk::text_message("m-ok", "cid", false, "staff1", "fine", &session, expires);
    let req = dingtalk::request(creds::DINGTALK_APP_SECRET, now_ms() + 10, &body);
    assert_eq!(send(&app, "dingtalk", &req).await.status, 200);
    messages_at(&p, api::DINGTALK_SESSION, 1).await;
    assert_eq!(p.messages_to(api::DINGTALK_SESSION).len(), 1);
    evil.shutdown();
    stop(app, p).await;
}

fn plain_scheme() -> Scheme {
    Scheme {
        header: "x-signature".into(),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: String::new(),
        timestamp_header: None,
        id_header: Some("x-delivery-id".into()),
    }
}

#[tokio::test]
async fn github_and_untimed_hmac_a_captured_body_under_a_fresh_delivery_id_is_a_retry() {
    let (app, p) = spawn_with(door_only()).await;
    let issue = json!({
        "action": "opened",
        "issue": { "number": 7, "title": "Login fails", "body": "since Monday" },
        "repository": { "full_name": "acme/shop" },
        "sender": { "login": "octocat", "type": "User" },
    })
    .to_string();
    let first = github::request(GITHUB_SECRET, "issues", "d-1", &issue);
    assert_eq!(send(&app, "github", &first).await.status, 202);
    // Captured and replayed under fresh delivery ids (the header GitHub does not sign).
    for id in ["d-2", "d-3"] {
        let replay = github::request(GITHUB_SECRET, "issues", id, &issue);
        assert_eq!(send(&app, "github", &replay).await.status, 202);
    }
    // Another body is another event.
    let other = issue.replace("since Monday", "since Tuesday");
    let second = github::request(GITHUB_SECRET, "issues", "d-4", &other);
    assert_eq!(send(&app, "github", &second).await.status, 202);

    let scheme = plain_scheme();
    let form = json!({ "text": "call me back", "sender_id": "lead-1" }).to_string();
    for id in ["f-1", "f-2"] {
        let req = scheme.request(PLAIN_SECRET, 0, Some(id), &form);
        assert_eq!(send(&app, "forms-plain", &req).await.status, 202);
    }
    work_queue_holds(&app, 3).await;
    stop(app, p).await;
}

/// A sender that signs a timestamp is bounded by its window: the same body under another id
/// is another event (a form may well be sent twice).
#[tokio::test]
async fn a_timed_hmac_sender_may_send_the_same_body_twice() {
    let (app, p) = spawn_with(door_only()).await;
    let scheme = Scheme {
        timestamp_header: Some("x-timestamp".into()),
        prefix: "sha256=".into(),
        ..plain_scheme()
    };
    let form = json!({ "text": "same words" }).to_string();
    for id in ["t-1", "t-2"] {
        let req = scheme.request(HMAC_SECRET, now_s(), Some(id), &form);
        assert_eq!(send(&app, "forms", &req).await.status, 202);
    }
    work_queue_holds(&app, 2).await;
    stop(app, p).await;
}

/// Issue 11 item 4: conversation keys are built from ids the sender chooses. A sender named
/// `victim:turn` once wrote its conversation id over the victim's turn lock (for the mapping's
/// 7 days: every later message of the victim deferred); chat `a:b` with sender `c` and chat `a`
/// with sender `b:c` once shared one conversation. Through the real ingress, worker and Redis.
#[tokio::test]
async fn key_injection_a_sender_cannot_take_anothers_turn_lock_or_conversation() {
    let app = TestApp::spawn(Options::default()).await;
    let say = |id: &'static str, chat: &'static str, sender: &'static str, text: &'static str| {
        let body = json!({ "text": text, "chat_id": chat, "sender_id": sender }).to_string();
        let app = &app;
        async move { assert_eq!(app.send_signed(id, &body).await.status(), 202, "{id}") }
    };
    say("inj-1", "c1", "victim:turn", "I hold your turn now").await;
    app.wait_answers("the attacker's answer", 1).await;
    // The victim's next message is answered, not deferred behind a forged lock.
    say("inj-2", "c1", "victim", "hello, it is me").await;
    app.wait_answers("the victim's answer", 2).await;

    say("inj-3", "a:b", "c", "first conversation").await;
    app.wait_answers("the answer in a:b", 3).await;
    say("inj-4", "a", "b:c", "second conversation").await;
    app.wait_answers("the answer in a", 4).await;
    // Neither the victim's nor `b:c`'s call continued someone else's conversation.
    for query in ["hello, it is me", "second conversation"] {
        let calls: Vec<_> = app
            .dify
            .records()
            .into_iter()
            .filter(|r| r.query.as_deref() == Some(query))
            .collect();
        assert!(!calls.is_empty(), "{query}");
        for c in calls {
            assert_eq!(c.conversation_id, None, "{query}: {c:?}");
        }
    }
    assert_eq!(app.dify.calls(), 4);
    app.shutdown().await;
}
