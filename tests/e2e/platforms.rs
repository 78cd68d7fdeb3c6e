//! Issue 3 end to end: every platform's requests, built the way the platform builds them (the
//! sender helpers of each `ingress::platform` module), through the real ingress, broker, worker
//! and dispatcher. For each platform: its handshake where it has one; a message answered (the
//! answer at the `crm` webhook receiver and, for sources with `reply = true`, the reply at the
//! platform stand-in in the same conversation); the platform's retry of that message dropped at
//! the door (Dify called once); a tampered byte refused with 401 (nothing answered, and, in
//! the last test, nothing in the work queue); what is not a user message acknowledged and not
//! answered.
//!
//! What "a tampered byte" can mean depends on what the platform signs: WeCom, Feishu/Lark with
//! an encrypt key, Slack, GitHub and HMAC sign the body, so a body byte is flipped; DingTalk
//! signs only its timestamp (a byte of the `timestamp` header is flipped); Telegram and Feishu
//! without an encrypt key sign nothing and carry a shared token (a byte of the token is
//! flipped). A changed body byte on those three is, by the platforms' own design, undetectable.
use crate::common::*;
use crate::kit::*;
use ingress::platform::hmac::{Algorithm, Encoding, Scheme};
use ingress::platform::sender::SignedRequest;
use ingress::platform::{dingtalk, feishu, github, slack, telegram, wecom};
use serde_json::{json, Value};
use shared::envelope::Stage;
use standins::platforms::{api, creds, PlatformStandin};
use standins::receiver::Received;
use std::time::{Duration, Instant};

pub(crate) const WECOM_TOKEN: &str = "wecom-callback-token";
const WECOM_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const WECOM_AGENT: &str = "1000002";
pub(crate) const FEISHU_TOKEN: &str = "feishu-verification-token";
const LARK_TOKEN: &str = "lark-verification-token";
const LARK_ENCRYPT_KEY: &str = "lark-encrypt-key";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_BOT: &str = "UBOT0001";
const TELEGRAM_SECRET: &str = "tg_secret-1";
pub(crate) const GITHUB_SECRET: &str = "github-hook-secret";
pub(crate) const HMAC_SECRET: &str = "forms-signing-secret";

/// One source per platform, each replying to the stand-in where it can and sending every
/// answer to the harness's `crm` receiver too.
pub(crate) fn sources(p: &PlatformStandin) -> String {
    let base = p.base_url();
    format!(
        r#"
[[sources]]
id = "wecom"
platform = "wecom"
app = "support"
reply = true
targets = ["crm"]
token = "{WECOM_TOKEN}"
encoding_aes_key = "{WECOM_AES_KEY}"
receive_id = "{corp}"
corp_secret = "{corp_secret}"
agent_id = {WECOM_AGENT}
api_base = "{base}"

[[sources]]
id = "dingtalk"
platform = "dingtalk"
app = "support"
reply = true
targets = ["crm"]
app_secret = "{ding_secret}"
app_key = "{ding_key}"
api_base = "{base}"
oapi_base = "{base}"

[[sources]]
id = "feishu"
platform = "feishu"
app = "support"
reply = true
targets = ["crm"]
verification_token = "{FEISHU_TOKEN}"
allow_unsigned = true
app_id = "{feishu_app}"
app_secret = "{feishu_secret}"
api_base = "{base}"

[[sources]]
id = "lark"
platform = "lark"
app = "support"
reply = true
targets = ["crm"]
verification_token = "{LARK_TOKEN}"
encrypt_key = "{LARK_ENCRYPT_KEY}"
app_id = "{feishu_app}"
app_secret = "{feishu_secret}"
api_base = "{base}"

[[sources]]
id = "slack"
platform = "slack"
app = "support"
reply = true
targets = ["crm"]
signing_secret = "{SLACK_SECRET}"
bot_user_id = "{SLACK_BOT}"
bot_token = "{slack_token}"
api_base = "{slack_api}"

[[sources]]
id = "telegram"
platform = "telegram"
app = "support"
reply = true
targets = ["crm"]
secret_token = "{TELEGRAM_SECRET}"
bot_token = "{tg_token}"
api_base = "{base}"

[[sources]]
id = "github"
platform = "github"
app = "support"
targets = ["crm"]
secret = "{GITHUB_SECRET}"

[[sources]]
id = "forms"
platform = "hmac"
app = "support"
targets = ["crm"]
secret = "{HMAC_SECRET}"
header = "X-Signature"
algorithm = "sha256"
encoding = "hex"
prefix = "sha256="
timestamp_header = "X-Timestamp"
id_header = "X-Delivery-Id"
"#,
        corp = creds::WECOM_CORP_ID,
        corp_secret = creds::WECOM_CORP_SECRET,
        ding_secret = creds::DINGTALK_APP_SECRET,
        ding_key = creds::DINGTALK_APP_KEY,
        feishu_app = creds::FEISHU_APP_ID,
        feishu_secret = creds::FEISHU_APP_SECRET,
        slack_token = creds::SLACK_BOT_TOKEN,
        slack_api = p.slack_api_base(),
        tg_token = creds::TELEGRAM_BOT_TOKEN,
    )
}

/// A pipeline with every platform's source, and the platforms' stand-in.
pub(crate) async fn spawn() -> (TestApp, PlatformStandin) {
    spawn_with(Options::default()).await
}

pub(crate) async fn spawn_with(opts: Options) -> (TestApp, PlatformStandin) {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let app = TestApp::spawn(Options {
        extra: sources(&p),
        ..opts
    })
    .await;
    (app, p)
}

pub(crate) async fn stop(app: TestApp, p: PlatformStandin) {
    app.shutdown().await;
    p.shutdown();
}

/// Waits for the answer to `query` from `source` at the `crm` receiver.
pub(crate) async fn answer_at_crm(app: &TestApp, source: &str, query: &str) -> Received {
    let r = app.receiver.clone();
    let find = move || {
        r.received()
            .into_iter()
            .find(|got| got.body["source"] == source && got.body["query"] == query)
    };
    let probe = find.clone();
    eventually(
        &format!("the answer to {query:?} from {source} at crm"),
        || probe().is_some(),
    )
    .await;
    let got = find().expect("found");
    assert!(got.signature_ok, "crm verified our signature");
    assert_eq!(
        got.body["answer"]["text"],
        format!("echo: {query}"),
        "{}",
        got.body
    );
    got
}

/// Waits until `api` of the stand-in accepted `n` messages.
pub(crate) async fn messages_at(p: &PlatformStandin, api_name: &'static str, n: usize) {
    let p2 = p.clone();
    eventually(&format!("{n} message(s) at {api_name}"), move || {
        p2.messages_to(api_name).len() >= n
    })
    .await;
}

/// Dify comes to `calls` runs and crm to `answers` answers (the reply and the crm delivery of
/// one answer are separate jobs: either may land first), and it stays so.
async fn settled(app: &TestApp, calls: u64, answers: usize) {
    let (d, r) = (app.dify.clone(), app.receiver.clone());
    eventually(
        &format!("{calls} Dify run(s) and {answers} answer(s) at crm"),
        || d.calls() >= calls && r.accepted() >= answers,
    )
    .await;
    assert!(
        quiet(|| d.calls() == calls && r.accepted() == answers).await,
        "Dify calls {} (want {calls}), crm answers {} (want {answers})",
        app.dify.calls(),
        app.receiver.accepted()
    );
}

// ---------------------------------------------------------------------------------------------
// WeCom

pub(crate) fn wecom_message(inner: &str, nonce: &str, json_envelope: bool) -> SignedRequest {
    wecom::request_message(
        WECOM_TOKEN,
        WECOM_AES_KEY,
        creds::WECOM_CORP_ID,
        inner,
        now_s(),
        nonce,
        random16(),
        json_envelope,
    )
    .expect("sealed")
}

pub(crate) fn wecom_text(from: &str, content: &str, msg_id: &str) -> String {
    wecom::text_message_xml(
        creds::WECOM_CORP_ID,
        from,
        now_s(),
        content,
        msg_id,
        WECOM_AGENT,
    )
}

#[tokio::test]
async fn wecom_verifies_its_url_answers_in_the_app_chat_drops_retries_and_refuses_tampering() {
    let (app, p) = spawn().await;

    // Handshake: the GET WeCom sends when the URL is saved, answered with the plaintext.
    let verify = wecom::request_url_verification(
        WECOM_TOKEN,
        WECOM_AES_KEY,
        creds::WECOM_CORP_ID,
        "echo-4937261",
        now_s(),
        "nonce-v",
        random16(),
    )
    .unwrap();
    let got = send(&app, "wecom", &verify).await;
    assert_eq!((got.status, got.body.as_str()), (200, "echo-4937261"));

    // A tampered byte of the sealed message: refused, nothing answered.
    let msg = wecom_message(
        &wecom_text("zhangsan", "hello wecom", "7100000000000000001"),
        "nonce-1",
        false,
    );
    assert_eq!(
        send(&app, "wecom", &flip_body_byte(&msg)).await.refusal(),
        (401, "bad_signature".into())
    );

    // Not a user message: the user opened the app (an `enter_agent` event). 200, not answered.
    let enter = format!(
        "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName><CreateTime>{now}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[enter_agent]]></Event><EventKey><![CDATA[]]></EventKey><AgentID>{WECOM_AGENT}</AgentID></xml>",
        corp = creds::WECOM_CORP_ID,
        now = now_s()
    );
    let ignored = send(&app, "wecom", &wecom_message(&enter, "nonce-e", false)).await;
    assert_eq!((ignored.status, ignored.body.as_str()), (200, ""));

    // The message (XML envelope): 200 with an empty body, answered at crm and in the app chat.
    let got = send(&app, "wecom", &msg).await;
    assert_eq!((got.status, got.body.as_str()), (200, ""));
    let at_crm = answer_at_crm(&app, "wecom", "hello wecom").await;
    assert_eq!(at_crm.body["platform"], "wecom");
    assert_eq!(at_crm.body["conversation"]["sender_id"], "zhangsan");
    messages_at(&p, api::WECOM_APP, 1).await;
    let reply = &p.messages_to(api::WECOM_APP)[0];
    assert_eq!(
        (reply.target.as_str(), reply.text.as_str()),
        ("zhangsan", "echo: hello wecom"),
        "the reply goes to the sender through message/send"
    );
    assert_eq!(reply.body["agentid"], json!(1000002));

    // WeCom's retry of the same MsgId, sealed anew: 200, not enqueued again.
    let retry = wecom_message(
        &wecom_text("zhangsan", "hello wecom", "7100000000000000001"),
        "nonce-2",
        false,
    );
    assert_eq!(send(&app, "wecom", &retry).await.status, 200);

    // The JSON envelope of newer apps works the same.
    let json_msg = wecom_message(
        &wecom_text("lisi", "hello json", "7100000000000000002"),
        "nonce-3",
        true,
    );
    assert_eq!(send(&app, "wecom", &json_msg).await.status, 200);
    answer_at_crm(&app, "wecom", "hello json").await;
    messages_at(&p, api::WECOM_APP, 2).await;

    settled(&app, 2, 2).await;
    let p2 = p.clone();
    assert!(quiet(|| p2.messages_to(api::WECOM_APP).len() == 2).await);
    assert_eq!(p.messages_to(api::WECOM_APP)[1].target, "lisi");
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// DingTalk

#[tokio::test]
async fn dingtalk_answers_through_the_session_webhook_then_the_robot_api_and_refuses_a_bad_sign() {
    let (app, p) = spawn().await;
    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    let body = dingtalk::text_message(
        "msgid-ding-1",
        "cidGroup1",
        true,
        "staff7",
        "hello dingtalk",
        &session,
        expires,
    );
    let signed_at = now_ms();
    let msg = dingtalk::request(creds::DINGTALK_APP_SECRET, signed_at, &body);

    // DingTalk signs the timestamp, not the body: a byte of the timestamp is the tamper.
    assert_eq!(
        send(&app, "dingtalk", &flip_header_byte(&msg, "timestamp"))
            .await
            .refusal(),
        (401, "bad_signature".into())
    );
    assert_eq!(
        send(&app, "dingtalk", &flip_header_byte(&msg, "sign"))
            .await
            .refusal(),
        (401, "bad_signature".into())
    );

    // A picture is not a question: 200, not answered.
    let mut picture: Value = serde_json::from_str(&body).unwrap();
    picture["msgId"] = json!("msgid-ding-pic");
    picture["msgtype"] = json!("picture");
    picture.as_object_mut().unwrap().remove("text");
    let got = send(
        &app,
        "dingtalk",
        // Another millisecond than the message's: one `sign` is bound to one body (a sign seen
        // with another body within its window is a replay), and both would be signed in the
        // same millisecond often enough to make this test fail now and then.
        &dingtalk::request(
            creds::DINGTALK_APP_SECRET,
            signed_at - 1,
            &picture.to_string(),
        ),
    )
    .await;
    assert_eq!(got.status, 200);

    // The message: answered at crm and through its session webhook.
    assert_eq!(send(&app, "dingtalk", &msg).await.status, 200);
    let at_crm = answer_at_crm(&app, "dingtalk", "hello dingtalk").await;
    assert_eq!(at_crm.body["conversation"]["chat_type"], "group");
    assert_eq!(at_crm.body["conversation"]["sender_id"], "staff7");
    messages_at(&p, api::DINGTALK_SESSION, 1).await;
    let session_id = session.split("session=").nth(1).unwrap();
    let reply = &p.messages_to(api::DINGTALK_SESSION)[0];
    assert_eq!(
        (reply.target.as_str(), reply.text.as_str()),
        (session_id, "echo: hello dingtalk")
    );

    // DingTalk's retry (same msgId, signed anew): 200, not enqueued again.
    let retry = dingtalk::request(creds::DINGTALK_APP_SECRET, signed_at + 1, &body);
    assert_eq!(send(&app, "dingtalk", &retry).await.status, 200);

    // A message whose session webhook has expired: the robot API, to the group.
    let (old, expired) = p.dingtalk_session(chrono::Duration::seconds(-1));
    let late = dingtalk::text_message(
        "msgid-ding-2",
        "cidGroup1",
        true,
        "staff7",
        "after the session",
        &old,
        expired,
    );
    let got = send(
        &app,
        "dingtalk",
        &dingtalk::request(creds::DINGTALK_APP_SECRET, signed_at + 2, &late),
    )
    .await;
    assert_eq!(got.status, 200);
    messages_at(&p, api::DINGTALK_API, 1).await;
    let reply = &p.messages_to(api::DINGTALK_API)[0];
    assert_eq!(
        (reply.target.as_str(), reply.text.as_str()),
        ("cidGroup1", "echo: after the session")
    );

    settled(&app, 2, 2).await;
    assert_eq!(p.messages_to(api::DINGTALK_SESSION).len(), 1);
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// Feishu (plain) and Lark (encrypted)

fn feishu_member_added(token: &str, event_id: &str) -> String {
    json!({
        "schema": "2.0",
        "header": { "event_id": event_id, "event_type": "im.chat.member.user.added_v1", "token": token, "create_time": "1700000000000", "app_id": "cli_test", "tenant_key": "tenant" },
        "event": { "chat_id": "oc_chat1", "users": [{ "user_id": { "open_id": "ou_new" } }] },
    })
    .to_string()
}

fn as_app_message(event: &str) -> String {
    let mut v: Value = serde_json::from_str(event).unwrap();
    v["header"]["event_id"] = json!(format!(
        "{}-echo",
        v["header"]["event_id"].as_str().unwrap()
    ));
    v["event"]["sender"]["sender_type"] = json!("app");
    v.to_string()
}

#[tokio::test]
async fn feishu_answers_its_challenge_replies_to_the_message_and_refuses_a_wrong_token() {
    let (app, p) = spawn().await;

    // Handshake: the url_verification challenge (plain: no encrypt key configured).
    let got = send(
        &app,
        "feishu",
        &feishu::request_plain(&feishu::challenge_body(FEISHU_TOKEN, "challenge-81")),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), json!({ "challenge": "challenge-81" }));
    let wrong = send(
        &app,
        "feishu",
        &feishu::request_plain(&feishu::challenge_body("not-the-token", "c")),
    )
    .await;
    assert_eq!(wrong.refusal(), (401, "bad_token".into()));

    // The message; the @mention placeholder is not part of the question.
    let event = feishu::text_event_v2(
        "ev-feishu-1",
        FEISHU_TOKEN,
        "oc_chat1",
        true,
        "ou_user1",
        "om_msg1",
        "@_user_1 hello feishu",
    );
    // Without an encrypt key nothing is signed: a byte of the token is the tamper.
    let tampered = event.replace(FEISHU_TOKEN, &FEISHU_TOKEN.replace('v', "w"));
    assert_eq!(tampered.len(), event.len());
    assert_eq!(
        send(&app, "feishu", &feishu::request_plain(&tampered))
            .await
            .refusal(),
        (401, "bad_token".into())
    );

    // Not user messages: the bot's own message and a member joining. 200, not answered.
    for ignored in [
        as_app_message(&event),
        feishu_member_added(FEISHU_TOKEN, "ev-feishu-join"),
    ] {
        let got = send(&app, "feishu", &feishu::request_plain(&ignored)).await;
        assert_eq!(got.status, 200, "{}", got.body);
    }

    assert_eq!(
        send(&app, "feishu", &feishu::request_plain(&event))
            .await
            .status,
        200
    );
    let at_crm = answer_at_crm(&app, "feishu", "hello feishu").await;
    assert_eq!(at_crm.body["conversation"]["chat_id"], "oc_chat1");
    messages_at(&p, api::FEISHU_REPLY, 1).await;
    let reply = &p.messages_to(api::FEISHU_REPLY)[0];
    assert_eq!(
        (reply.reply_to.as_deref(), reply.text.as_str()),
        (Some("om_msg1"), "echo: hello feishu"),
        "a reply to the question's message id"
    );

    // Feishu's retry: the same event_id again.
    assert_eq!(
        send(&app, "feishu", &feishu::request_plain(&event))
            .await
            .status,
        200
    );
    settled(&app, 1, 1).await;
    assert_eq!(p.messages_to(api::FEISHU_REPLY).len(), 1);
    assert_eq!(p.token_fetches("feishu"), 1);
    stop(app, p).await;
}

fn lark_encrypted(plaintext: &str, nonce: &str) -> SignedRequest {
    feishu::request_encrypted(LARK_ENCRYPT_KEY, now_s(), nonce, plaintext, random16())
}

#[tokio::test]
async fn lark_encrypted_challenge_and_message_are_answered_and_a_flipped_byte_is_refused() {
    let (app, p) = spawn().await;

    // Handshake, encrypted (an encrypt key is configured).
    let got = send(
        &app,
        "lark",
        &lark_encrypted(&feishu::challenge_body(LARK_TOKEN, "challenge-lark"), "n0"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), json!({ "challenge": "challenge-lark" }));

    let event = feishu::text_event_v2(
        "ev-lark-1",
        LARK_TOKEN,
        "oc_p2p",
        false,
        "ou_user2",
        "om_lark1",
        "hello lark",
    );
    let msg = lark_encrypted(&event, "n1");
    // A flipped byte of the encrypted body: the signature no longer matches.
    assert_eq!(
        send(&app, "lark", &flip_body_byte(&msg)).await.refusal(),
        (401, "bad_signature".into())
    );
    // With an encrypt key, an event without its signature headers is refused.
    let unsigned = SignedRequest {
        headers: vec![("content-type".into(), "application/json".into())],
        ..msg.clone()
    };
    assert_eq!(
        send(&app, "lark", &unsigned).await.refusal(),
        (401, "missing_signature".into())
    );
    // The bot's own message, encrypted: acknowledged, not answered.
    assert_eq!(
        send(&app, "lark", &lark_encrypted(&as_app_message(&event), "n2"))
            .await
            .status,
        200
    );

    assert_eq!(send(&app, "lark", &msg).await.status, 200);
    let at_crm = answer_at_crm(&app, "lark", "hello lark").await;
    assert_eq!(at_crm.body["platform"], "lark");
    assert_eq!(at_crm.body["conversation"]["chat_type"], "single");
    messages_at(&p, api::FEISHU_REPLY, 1).await;
    let reply = &p.messages_to(api::FEISHU_REPLY)[0];
    assert_eq!(
        (reply.reply_to.as_deref(), reply.text.as_str()),
        (Some("om_lark1"), "echo: hello lark")
    );

    // Lark's retry, encrypted again with a fresh IV and signature.
    assert_eq!(
        send(&app, "lark", &lark_encrypted(&event, "n3"))
            .await
            .status,
        200
    );
    settled(&app, 1, 1).await;
    assert_eq!(p.messages_to(api::FEISHU_REPLY).len(), 1);
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// Slack

fn slack_json(body: &str) -> SignedRequest {
    slack::request(SLACK_SECRET, now_s(), body, "application/json")
}

#[tokio::test]
async fn slack_verifies_its_url_answers_in_the_thread_and_drops_its_own_retries() {
    let (app, p) = spawn().await;

    // Handshake: the signed url_verification.
    let challenge = json!({ "token": "legacy", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification" }).to_string();
    let got = send(&app, "slack", &slack_json(&challenge)).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json()["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    let mention = json!({
        "type": "app_mention", "channel": "C0CHANNEL", "user": "U0ASKER",
        "text": format!("<@{SLACK_BOT}> hello slack"), "ts": "1700000000.000100",
    });
    let body = slack::event_callback("Ev0SLACK1", mention);
    let msg = slack_json(&body);
    assert_eq!(
        send(&app, "slack", &flip_body_byte(&msg)).await.refusal(),
        (401, "bad_signature".into())
    );

    // Not user messages: the bot's own answer coming back, and someone joining the channel.
    let echo = slack::event_callback(
        "Ev0ECHO",
        json!({ "type": "message", "channel": "C0CHANNEL", "channel_type": "channel", "user": SLACK_BOT, "bot_id": "B0BOT", "text": "echo: hello slack", "ts": "1700000000.000200", "thread_ts": "1700000000.000100" }),
    );
    let join = slack::event_callback(
        "Ev0JOIN",
        json!({ "type": "message", "subtype": "channel_join", "channel": "C0CHANNEL", "channel_type": "channel", "user": "U0NEW", "text": "<@U0NEW> has joined the channel", "ts": "1700000000.000300" }),
    );
    for ignored in [echo, join] {
        let got = send(&app, "slack", &slack_json(&ignored)).await;
        assert_eq!(got.status, 200, "{}", got.body);
    }

    assert_eq!(send(&app, "slack", &msg).await.status, 200);
    let at_crm = answer_at_crm(&app, "slack", "hello slack").await;
    assert_eq!(at_crm.body["conversation"]["chat_id"], "C0CHANNEL");
    messages_at(&p, api::SLACK_API, 1).await;
    let reply = &p.messages_to(api::SLACK_API)[0];
    assert_eq!(
        (
            reply.target.as_str(),
            reply.thread.as_deref(),
            reply.text.as_str()
        ),
        ("C0CHANNEL", Some("1700000000.000100"), "echo: hello slack"),
        "the answer goes in the message's thread"
    );

    // Slack's retry: same body, signed anew, with X-Slack-Retry-Num.
    let retry = plus_header(
        &plus_header(&slack_json(&body), "X-Slack-Retry-Num", "1"),
        "X-Slack-Retry-Reason",
        "http_timeout",
    );
    assert_eq!(send(&app, "slack", &retry).await.status, 200);
    settled(&app, 1, 1).await;
    assert_eq!(p.messages_to(api::SLACK_API).len(), 1);
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// Telegram

#[tokio::test]
async fn telegram_replies_to_the_message_and_refuses_a_wrong_secret_token() {
    let (app, p) = spawn().await;
    let body = telegram::text_update(700_001, -100_555, "supergroup", 42, "hello telegram");
    let msg = telegram::request(TELEGRAM_SECRET, &body);
    let question =
        serde_json::from_str::<Value>(&body).unwrap()["message"]["message_id"].to_string();
    // Telegram signs nothing: the secret token is the credential, one byte of it changed.
    assert_eq!(
        send(
            &app,
            "telegram",
            &flip_header_byte(&msg, telegram::SECRET_HEADER)
        )
        .await
        .refusal(),
        (401, "bad_token".into())
    );

    // Not user messages: someone joining the group, and another bot's message.
    let mut join: Value = serde_json::from_str(&body).unwrap();
    join["update_id"] = json!(700_002);
    join["message"].as_object_mut().unwrap().remove("text");
    join["message"]["new_chat_members"] =
        json!([{ "id": 99, "is_bot": false, "first_name": "New" }]);
    let mut bot: Value = serde_json::from_str(&body).unwrap();
    bot["update_id"] = json!(700_003);
    bot["message"]["from"]["is_bot"] = json!(true);
    for ignored in [join, bot] {
        let got = send(
            &app,
            "telegram",
            &telegram::request(TELEGRAM_SECRET, &ignored.to_string()),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.body);
    }

    assert_eq!(send(&app, "telegram", &msg).await.status, 200);
    let at_crm = answer_at_crm(&app, "telegram", "hello telegram").await;
    assert_eq!(at_crm.body["conversation"]["chat_type"], "group");
    messages_at(&p, api::TELEGRAM, 1).await;
    let reply = &p.messages_to(api::TELEGRAM)[0];
    assert_eq!(
        (
            reply.target.as_str(),
            reply.reply_to.as_deref(),
            reply.text.as_str()
        ),
        ("-100555", Some(question.as_str()), "echo: hello telegram"),
        "a reply to the question in its chat"
    );

    // Telegram's redelivery of the same update_id.
    assert_eq!(send(&app, "telegram", &msg).await.status, 200);
    settled(&app, 1, 1).await;
    assert_eq!(p.messages_to(api::TELEGRAM).len(), 1);
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// GitHub

fn issue_opened(sender_type: &str) -> String {
    json!({
        "action": "opened",
        "issue": { "number": 7, "title": "Login fails", "body": "Since today the login page says 500." },
        "repository": { "full_name": "acme/shop" },
        "sender": { "login": if sender_type == "Bot" { "triage[bot]" } else { "octocat" }, "type": sender_type },
    })
    .to_string()
}

#[tokio::test]
async fn github_pings_are_acknowledged_events_answered_and_redeliveries_dropped() {
    let (app, p) = spawn().await;
    let ping = json!({ "zen": "Keep it logically awesome.", "hook_id": 1, "hook": { "type": "Repository" } })
        .to_string();
    let got = send(
        &app,
        "github",
        &github::request(GITHUB_SECRET, "ping", "d-ping", &ping),
    )
    .await;
    assert_eq!(got.status, 200, "the ping is verified and acknowledged");

    let body = issue_opened("User");
    let msg = github::request(
        GITHUB_SECRET,
        "issues",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &body,
    );
    assert_eq!(
        send(&app, "github", &flip_body_byte(&msg)).await.refusal(),
        (401, "bad_signature".into())
    );
    // An event a bot caused (e.g. our own answer posted back by a GitHub App): not answered.
    let by_bot = github::request(GITHUB_SECRET, "issues", "d-bot", &issue_opened("Bot"));
    assert_eq!(send(&app, "github", &by_bot).await.status, 200);

    assert_eq!(send(&app, "github", &msg).await.status, 202);
    let r = app.receiver.clone();
    eventually("the issue's answer at crm", || r.accepted() == 1).await;
    let got = &app.receiver.received()[0];
    assert_eq!(got.body["source"], "github");
    let query = got.body["query"].as_str().unwrap();
    assert!(
        query.contains("acme/shop#7") && query.contains("Login fails"),
        "{query}"
    );
    assert_eq!(got.body["answer"]["text"], format!("echo: {query}"));
    assert_eq!(got.body["conversation"]["chat_id"], "acme/shop#7");

    // "Redeliver" in GitHub's settings: the same X-GitHub-Delivery.
    assert_eq!(send(&app, "github", &msg).await.status, 202);
    settled(&app, 1, 1).await;
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// Generic HMAC

fn forms_scheme() -> Scheme {
    Scheme {
        header: "x-signature".into(),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: "sha256=".into(),
        timestamp_header: Some("x-timestamp".into()),
        id_header: Some("x-delivery-id".into()),
    }
}

#[tokio::test]
async fn an_hmac_sender_is_answered_once_per_delivery_id_and_a_flipped_byte_is_refused() {
    let (app, p) = spawn().await;
    let scheme = forms_scheme();
    let body =
        json!({ "text": "hello form", "sender_id": "lead-9", "chat_type": "single" }).to_string();
    let msg = scheme.request(HMAC_SECRET, now_s(), Some("dlv-1"), &body);
    assert_eq!(
        send(&app, "forms", &flip_body_byte(&msg)).await.refusal(),
        (401, "bad_signature".into())
    );
    let stale = scheme.request(HMAC_SECRET, now_s() - 3600, Some("dlv-1"), &body);
    assert_eq!(
        send(&app, "forms", &stale).await.refusal(),
        (401, "stale_timestamp".into())
    );

    let got = send(&app, "forms", &msg).await;
    assert_eq!(got.status, 202);
    assert_eq!(got.json(), json!({ "status": "accepted" }));
    let at_crm = answer_at_crm(&app, "forms", "hello form").await;
    assert_eq!(at_crm.body["conversation"]["sender_id"], "lead-9");

    // The sender retries the delivery (same id, signed anew).
    let retry = scheme.request(HMAC_SECRET, now_s(), Some("dlv-1"), &body);
    assert_eq!(send(&app, "forms", &retry).await.status, 202);
    settled(&app, 1, 1).await;
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// Every platform at once, without worker and dispatcher, looking at the work queue itself.

/// One platform's message as the platform sends it, its retry as the platform sends that, and
/// the message with one byte tampered with (and the reason it must be refused for).
struct Door {
    source: &'static str,
    message: SignedRequest,
    retry: SignedRequest,
    tampered: SignedRequest,
    reason: &'static str,
}

fn doors(p: &PlatformStandin) -> Vec<Door> {
    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    let ding = dingtalk::text_message("m1", "cid", false, "s", "hi", &session, expires);
    let ding_msg = dingtalk::request(creds::DINGTALK_APP_SECRET, now_ms(), &ding);
    let feishu_event = feishu::text_event_v2("e1", FEISHU_TOKEN, "oc", true, "ou", "om", "hi");
    let lark_event = feishu::text_event_v2("e1", LARK_TOKEN, "oc", true, "ou", "om", "hi");
    let slack_body = slack::event_callback(
        "Ev1",
        slack::message_event("D1", "im", "U1", "hi", "1700000000.000001"),
    );
    let tg = telegram::text_update(1, 5, "private", 5, "hi");
    let gh = issue_opened("User");
    let form = json!({ "text": "hi" }).to_string();
    let wecom_xml = wecom_message(&wecom_text("u", "hi", "1"), "n1", false);
    let wecom_json = wecom_message(&wecom_text("v", "hi", "2"), "n1", true);
    vec![
        Door {
            source: "wecom",
            tampered: flip_body_byte(&wecom_xml),
            message: wecom_xml,
            retry: wecom_message(&wecom_text("u", "hi", "1"), "n2", false),
            reason: "bad_signature",
        },
        Door {
            source: "wecom",
            tampered: flip_body_byte(&wecom_json),
            message: wecom_json,
            retry: wecom_message(&wecom_text("v", "hi", "2"), "n2", true),
            reason: "bad_signature",
        },
        Door {
            source: "dingtalk",
            tampered: flip_header_byte(&ding_msg, "timestamp"),
            message: ding_msg,
            retry: dingtalk::request(creds::DINGTALK_APP_SECRET, now_ms() + 1, &ding),
            reason: "bad_signature",
        },
        Door {
            source: "feishu",
            message: feishu::request_plain(&feishu_event),
            retry: feishu::request_plain(&feishu_event),
            tampered: feishu::request_plain(
                &feishu_event.replace(FEISHU_TOKEN, "feishu-verification-tokem"),
            ),
            reason: "bad_token",
        },
        Door {
            source: "lark",
            message: lark_encrypted(&lark_event, "n1"),
            retry: lark_encrypted(&lark_event, "n2"),
            tampered: flip_body_byte(&lark_encrypted(&lark_event, "n3")),
            reason: "bad_signature",
        },
        Door {
            source: "slack",
            message: slack_json(&slack_body),
            retry: plus_header(&slack_json(&slack_body), "X-Slack-Retry-Num", "2"),
            tampered: flip_body_byte(&slack_json(&slack_body)),
            reason: "bad_signature",
        },
        Door {
            source: "telegram",
            message: telegram::request(TELEGRAM_SECRET, &tg),
            retry: telegram::request(TELEGRAM_SECRET, &tg),
            tampered: flip_header_byte(
                &telegram::request(TELEGRAM_SECRET, &tg),
                telegram::SECRET_HEADER,
            ),
            reason: "bad_token",
        },
        Door {
            source: "github",
            message: github::request(GITHUB_SECRET, "issues", "d1", &gh),
            retry: github::request(GITHUB_SECRET, "issues", "d1", &gh),
            tampered: flip_body_byte(&github::request(GITHUB_SECRET, "issues", "d1", &gh)),
            reason: "bad_signature",
        },
        Door {
            source: "forms",
            message: forms_scheme().request(HMAC_SECRET, now_s(), Some("x1"), &form),
            retry: forms_scheme().request(HMAC_SECRET, now_s() + 1, Some("x1"), &form),
            tampered: flip_body_byte(&forms_scheme().request(
                HMAC_SECRET,
                now_s(),
                Some("x1"),
                &form,
            )),
            reason: "bad_signature",
        },
    ]
}

#[tokio::test]
async fn at_the_door_a_tampered_request_enqueues_nothing_and_a_retry_nothing_more() {
    let (app, p) = spawn_with(Options {
        worker: false,
        dispatcher: false,
        ..Default::default()
    })
    .await;
    let work = app.services.broker.topology().stage_queue(Stage::Work);
    let doors = doors(&p);
    for d in &doors {
        assert_eq!(
            send(&app, d.source, &d.tampered).await.refusal(),
            (401, d.reason.to_owned()),
            "{}",
            d.source
        );
    }
    assert_eq!(app.queue_len(&work).await, 0, "nothing was enqueued");
    for d in &doors {
        let first = send(&app, d.source, &d.message).await;
        let again = send(&app, d.source, &d.retry).await;
        assert!(
            (200..300).contains(&first.status) && again.status == first.status,
            "{}: {first:?} then {again:?}",
            d.source
        );
    }
    // One event per message: every retry was answered as a success and not enqueued again.
    let want = doors.len() as u32;
    let (a, w) = (&app, work.clone());
    wait_for("one event per message in the work queue", T, || {
        let w = w.clone();
        async move { a.queue_len(&w).await == want }
    })
    .await;
    let until = std::time::Instant::now() + QUIET;
    while std::time::Instant::now() < until {
        assert_eq!(app.queue_len(&work).await, want, "a retry was enqueued");
    }
    stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// Credentials inside events (issue 11, item 11)

/// DingTalk's `sessionWebhook`, Slack's `response_url` and `token`, Feishu's `header.token`
/// never reach the broker: the dead letters of events that Dify refused, and their export,
/// hold none of them. Replayed, the events are answered through the same reply URLs, which
/// the ingress kept aside under the event's id.
#[tokio::test]
async fn credentials_in_events_stay_out_of_dead_letters_and_exports_and_replies_still_work() {
    let (app, p) = spawn().await;
    app.dify.fail_next(3, 400, "invalid_param");

    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    let session_id = session.split("session=").nth(1).unwrap().to_owned();
    let body = dingtalk::text_message(
        "msgid-cred-1",
        "cidGroupCred",
        true,
        "staff9",
        "ding with a webhook",
        &session,
        expires,
    );
    let msg = dingtalk::request(creds::DINGTALK_APP_SECRET, now_ms(), &body);
    assert_eq!(send(&app, "dingtalk", &msg).await.status, 200);

    let response_url = p.slack_response_url("T0001/1234/respond-secret-77");
    // A form, encoded by hand: the few characters these values hold that a form escapes.
    let enc = |v: &str| {
        v.replace('%', "%25")
            .replace(':', "%3A")
            .replace('/', "%2F")
            .replace('?', "%3F")
            .replace('=', "%3D")
            .replace('&', "%26")
            .replace(' ', "+")
    };
    let form = [
        ("token", "slack-verification-token-legacy"),
        ("command", "/ask"),
        ("text", "slack with a response url"),
        ("trigger_id", "trigger-cred-1"),
        ("user_id", "U0CRED"),
        ("channel_id", "C0CRED"),
        ("channel_name", "general"),
        ("response_url", &response_url),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", enc(v)))
    .collect::<Vec<_>>()
    .join("&");
    let slash = slack::request(
        SLACK_SECRET,
        now_s(),
        &form,
        "application/x-www-form-urlencoded",
    );
    assert_eq!(send(&app, "slack", &slash).await.status, 200);

    let event = feishu::text_event_v2(
        "ev-feishu-cred",
        FEISHU_TOKEN,
        "oc_chatcred",
        true,
        "ou_cred",
        "om_msgcred",
        "feishu with a token",
    );
    assert_eq!(
        send(&app, "feishu", &feishu::request_plain(&event))
            .await
            .status,
        200
    );

    let secrets = [
        session_id.as_str(),
        "respond-secret-77",
        "slack-verification-token-legacy",
        FEISHU_TOKEN,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = app.dead_letters().await;
        if letters.len() >= 3 {
            break letters;
        }
        assert!(Instant::now() < deadline, "{} dead letters", letters.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 3);
    for dl in &letters {
        let text = String::from_utf8(shared::envelope::encode(dl)).unwrap();
        for s in secrets {
            assert!(!text.contains(s), "{s} in a dead letter: {text}");
        }
    }

    let dir = std::env::temp_dir().join(format!("sb-cred-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("export.jsonl");
    let (ok, _, err) = dlq(&app, &["export", "--out", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported.lines().count(), 3);
    for s in secrets {
        assert!(!exported.contains(s), "{s} in the export");
    }
    let (_, shown, _) = dlq(&app, &["list"]).await;
    for s in secrets {
        assert!(!shown.contains(s), "{s} in `dlq list`");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // Replayed: Dify answers now, and each reply goes where the platform asked.
    let (ok, out, err) = dlq(&app, &["replay", "--all", "--yes", "--allow-unverified"]).await;
    assert!(ok, "{out}{err}");
    messages_at(&p, api::DINGTALK_SESSION, 1).await;
    let reply = &p.messages_to(api::DINGTALK_SESSION)[0];
    assert_eq!(
        (reply.target.as_str(), reply.text.as_str()),
        (session_id.as_str(), "echo: ding with a webhook")
    );
    messages_at(&p, api::SLACK_RESPONSE_URL, 1).await;
    assert_eq!(
        p.texts(api::SLACK_RESPONSE_URL),
        ["echo: slack with a response url"]
    );
    messages_at(&p, api::FEISHU_REPLY, 1).await;
    assert_eq!(
        p.messages_to(api::FEISHU_REPLY)[0].reply_to.as_deref(),
        Some("om_msgcred")
    );
    // The reply URLs are in Redis only, under the event's id, and nowhere in the broker.
    let kept = reply_credential_keys(&app).await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    stop(app, p).await;
}
