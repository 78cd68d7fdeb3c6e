//! Issue 15 end to end, Feishu: a source with `stream = true` answers with one CardKit card that
//! grows while Dify writes (a card entity sent by id as the reply, then element content writes
//! with a growing `sequence`) and ends with exactly the answer, streaming mode off (the whole
//! card replaced); updates out of order or after the final answer are dropped; every write stays
//! within the card's limit (the stand-in answers 99991400 beyond five a second); an app without
//! `cardkit:card:write` falls back to a single text reply, said once in the log; a worker killed
//! mid-stream leaves one card; a dispatcher killed mid-write still ends the card with the answer;
//! a create repeated before it was recorded sends no second card.
use crate::common::*;
use crate::kit::*;
use crate::platforms::FEISHU_TOKEN;
use crate::stream_kit::{
    dispatcher_logging, dispatcher_with_slow_writes, fell_back_once, kill_dispatcher_mid_write,
    kill_worker_mid_stream, shown, spawn_slow_dify, Direct,
};
use crate::streaming::{publish, stop};
use ingress::platform::feishu;
use shared::envelope::{Answer, AnswerPayload, ChatType, Conversation, Destination, ReplyHandle};
use standins::feishu_card::FeishuCard;
use standins::platforms::{api, creds, PlatformStandin};
use std::time::Duration;

const CHAT: &str = "oc_stream_chat";

fn source(p: &PlatformStandin) -> String {
    format!(
        r#"
[[sources]]
id = "fs"
platform = "feishu"
app = "support"
reply = true
stream = true
stream_interval = "1s"
stream_min_chars = 10
verification_token = "{FEISHU_TOKEN}"
allow_unsigned = true
app_id = "{app}"
app_secret = "{secret}"
api_base = "{base}"
"#,
        app = creds::FEISHU_APP_ID,
        secret = creds::FEISHU_APP_SECRET,
        base = p.base_url(),
    )
}

/// A pipeline whose Dify writes each answer over `ms`, and CardKit's stand-in holding a card
/// to five writes a second.
async fn spawn(ms: u64, worker: bool, dispatcher: bool) -> (TestApp, PlatformStandin) {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    p.set_limits(api::FEISHU_CARD, vec![(5, Duration::from_secs(1))]);
    (spawn_slow_dify(source(&p), ms, worker, dispatcher).await, p)
}

fn question(tag: &str) -> String {
    format!("{tag}: please explain how a card grows while the answer is being written")
}

/// The question in the group; its message id is `om_<tag>`.
async fn ask(app: &TestApp, tag: &str, text: &str) {
    let body = feishu::text_event_v2(
        &format!("ev-{tag}"),
        FEISHU_TOKEN,
        CHAT,
        true,
        "ou_user7",
        &format!("om_{tag}"),
        text,
    );
    let got = send(app, "fs", &feishu::request_plain(&body)).await;
    assert_eq!(got.status, 200, "{}", got.body);
}

fn text(card: &FeishuCard) -> String {
    card.elements.get("answer").cloned().unwrap_or_default()
}

/// Every text the card showed, in order: as sent, then each write.
fn history(p: &PlatformStandin) -> Vec<String> {
    let apis = [
        api::FEISHU_CARD_REPLY,
        api::FEISHU_CARD_CONTENT,
        api::FEISHU_CARD_UPDATE,
    ];
    shown(p, &apis)
}

/// Waits until one sent card shows exactly `want` with streaming mode off.
async fn ends_with(p: &PlatformStandin, want: &str) {
    let p2 = p.clone();
    eventually(&format!("one finished card showing {want:?}"), || {
        let sent: Vec<_> = p2
            .feishu_cards()
            .into_iter()
            .filter(|c| c.replied_to.is_some())
            .collect();
        sent.len() == 1 && text(&sent[0]) == want && !sent[0].streaming
    })
    .await;
}

#[tokio::test]
async fn a_streamed_reply_grows_in_one_card_within_the_limit_and_ends_with_the_answer() {
    let (app, p) = spawn(4_000, true, true).await;
    let q = question("grow");
    let answer = format!("echo: {q}");
    ask(&app, "grow", &q).await;
    let p2 = p.clone();
    eventually("the card", || {
        !p2.messages_to(api::FEISHU_CARD_REPLY).is_empty()
    })
    .await;
    let sent = p.messages_to(api::FEISHU_CARD_REPLY)[0].clone();
    assert_eq!(
        sent.reply_to.as_deref(),
        Some("om_grow"),
        "it replies to the question"
    );
    assert!(
        sent.text.len() < answer.len() && answer.starts_with(&sent.text),
        "a beginning of the answer first: {:?}",
        sent.text
    );
    ends_with(&p, &answer).await;
    let shown = history(&p);
    assert!(
        shown.len() >= 3,
        "sent, written at least once, finished: {shown:?}"
    );
    for pair in shown.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]),
            "the card only grows: {shown:?}"
        );
    }
    let sequences: Vec<i64> = p
        .messages_to(api::FEISHU_CARD_CONTENT)
        .into_iter()
        .chain(p.messages_to(api::FEISHU_CARD_UPDATE))
        .map(|m| m.body["sequence"].as_i64().unwrap())
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert_eq!(p.feishu_cards().len(), 1, "one card entity");
    assert_eq!(p.limited(api::FEISHU_CARD), 0, "no write beyond the limit");
    assert!(
        p.messages_to(api::FEISHU_REPLY).is_empty(),
        "no message besides the card"
    );
    let n = shown.len();
    ask(&app, "grow", &q).await;
    let p2 = p.clone();
    assert!(quiet(|| history(&p2).len() == n).await);
    stop(app, p).await;
}

fn destination() -> Destination {
    Destination::Reply {
        handle: ReplyHandle::Feishu {
            message_id: "om_direct".into(),
            chat_id: CHAT.into(),
            lark: false,
        },
    }
}

fn payload() -> AnswerPayload {
    AnswerPayload {
        event_id: uuid::Uuid::now_v7(),
        source: "fs".into(),
        platform: "feishu".into(),
        conversation: Conversation {
            chat_id: CHAT.into(),
            chat_type: ChatType::Group,
            sender_id: "ou_user7".into(),
            sender_name: None,
            thread_id: None,
        },
        query: "q".into(),
        answer: Answer::default(),
        timings: Default::default(),
        event: None,
    }
}

fn shows(p: &PlatformStandin, want: &str) -> bool {
    let cards = p.feishu_cards();
    cards.len() == 1 && text(&cards[0]) == want
}

#[tokio::test]
async fn an_older_update_never_overwrites_a_newer_one_nor_any_the_final_answer() {
    let (app, p) = spawn(0, false, true).await;
    let d = Direct::new(destination(), payload());
    publish(&app, d.update(1, 2, "Hello, wor")).await;
    let p2 = p.clone();
    eventually("the card", || shows(&p2, "Hello, wor")).await;
    publish(&app, d.update(1, 1, "Hel")).await;
    publish(&app, d.update(1, 3, "Hello, world. The")).await;
    let p2 = p.clone();
    eventually("the newer text", || shows(&p2, "Hello, world. The")).await;
    assert!(!history(&p).iter().any(|t| t == "Hel"), "{:?}", history(&p));
    publish(&app, d.answer("Hello, world. The end.")).await;
    ends_with(&p, "Hello, world. The end.").await;
    publish(&app, d.update(0, 9, "Hello")).await;
    publish(&app, d.update(1, 4, "Hello, world. The e")).await;
    let p2 = p.clone();
    assert!(quiet(|| shows(&p2, "Hello, world. The end.")).await);
    assert_eq!(p.limited(api::FEISHU_CARD), 0);
    stop(app, p).await;
}

#[tokio::test]
async fn a_card_created_but_not_recorded_is_not_sent_twice() {
    let (app, p) = spawn(0, false, true).await;
    let d = Direct::new(destination(), payload());
    publish(&app, d.update(1, 1, "Hello, wor")).await;
    let p2 = p.clone();
    eventually("the card", || shows(&p2, "Hello, wor")).await;
    d.forget_record(&app).await;
    publish(&app, d.update(1, 2, "Hello, world")).await;
    let p2 = p.clone();
    // Requests to the reply route, text and card alike, count under FEISHU_REPLY.
    eventually("the send repeated", || p2.requests(api::FEISHU_REPLY) >= 2).await;
    publish(&app, d.answer("Hello, world. The end.")).await;
    ends_with(&p, "Hello, world. The end.").await;
    assert_eq!(p.feishu_cards().len(), 1, "the kept card, not a new entity");
    assert_eq!(p.messages_to(api::FEISHU_CARD_REPLY).len(), 1, "sent once");
    stop(app, p).await;
}

#[tokio::test]
async fn an_app_without_the_cardkit_scope_falls_back_to_a_single_message_said_once() {
    let (app, p) = spawn(4_000, true, false).await;
    let (_dispatcher, log) = dispatcher_logging(&app);
    p.refuse_feishu_cards(true);
    let q = question("fallback");
    let answer = format!("echo: {q}");
    ask(&app, "fallback", &q).await;
    let p2 = p.clone();
    let want = answer.clone();
    eventually("the answer as a message", || {
        p2.texts(api::FEISHU_REPLY) == [want.clone()]
    })
    .await;
    assert!(p.feishu_cards().is_empty());
    assert_eq!(
        p.requests(api::FEISHU_CARD_CREATE),
        1,
        "no card tried again"
    );
    let p2 = p.clone();
    assert!(quiet(|| p2.texts(api::FEISHU_REPLY).len() == 1).await);
    assert!(!fell_back_once(&log).contains(creds::FEISHU_APP_SECRET));
    stop(app, p).await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_leaves_one_card_which_the_next_worker_ends() {
    let (mut app, p) = spawn(5_000, false, true).await;
    let q = question("worker-crash");
    let p2 = p.clone();
    let grew = || !p2.messages_to(api::FEISHU_CARD_CONTENT).is_empty();
    let worker = app.spawn_child("worker");
    ask(&app, "worker-crash", &q).await;
    kill_worker_mid_stream(&mut app, worker, grew).await;
    ends_with(&p, &format!("echo: {q}")).await;
    assert_eq!(p.feishu_cards().len(), 1, "{:?}", history(&p));
    assert_eq!(p.limited(api::FEISHU_CARD), 0);
    assert!(p.messages_to(api::FEISHU_REPLY).is_empty());
    stop(app, p).await;
}

#[tokio::test]
async fn a_dispatcher_killed_mid_write_still_ends_the_card_with_the_answer() {
    let (mut app, p) = spawn(3_000, true, false).await;
    let q = question("dispatcher-crash");
    let dispatcher = dispatcher_with_slow_writes(&app, &p, api::FEISHU_CARD_CONTENT);
    ask(&app, "dispatcher-crash", &q).await;
    kill_dispatcher_mid_write(&mut app, &p, api::FEISHU_CARD_CONTENT, dispatcher).await;
    ends_with(&p, &format!("echo: {q}")).await;
    assert_eq!(p.messages_to(api::FEISHU_CARD_REPLY).len(), 1);
    assert!(p.messages_to(api::FEISHU_REPLY).is_empty());
    let p2 = p.clone();
    assert!(quiet(|| p2.feishu_cards().len() == 1).await);
    stop(app, p).await;
}
