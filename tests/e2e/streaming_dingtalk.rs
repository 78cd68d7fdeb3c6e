//! Issue 15 end to end, DingTalk: a source with `stream = true` answers with one AI card that
//! grows while Dify writes (`createAndDeliver`, then `card/streaming`) and ends with exactly the
//! answer, finalised; updates out of order or after the final answer are dropped; every write
//! stays within the conversation's limit (the stand-in answers 403 `…QpsLimitForApi` beyond one a
//! second); an app without the card permissions falls back to a single message through the
//! session webhook, said once in the log; a worker killed mid-stream leaves one card, continued
//! by the next worker; a dispatcher killed mid-write still ends the card with the answer, once.
use crate::common::*;
use crate::kit::*;
use crate::stream_kit::{
    dispatcher_logging, dispatcher_with_slow_writes, fell_back_once, kill_dispatcher_mid_write,
    kill_worker_mid_stream, shown, spawn_slow_dify, Direct,
};
use crate::streaming::{publish, stop};
use ingress::platform::dingtalk;
use shared::envelope::{Answer, AnswerPayload, ChatType, Conversation, Destination, ReplyHandle};
use standins::dingtalk_card::DingtalkCard;
use standins::platforms::{api, creds, PlatformStandin};
use std::time::Duration;

const CID: &str = "cidStreamGroup";
const TEMPLATE: &str = "standin-ai-card.schema";

fn source(p: &PlatformStandin) -> String {
    format!(
        r#"
[[sources]]
id = "dt"
platform = "dingtalk"
app = "support"
reply = true
stream = true
stream_interval = "1s"
stream_min_chars = 10
card_template_id = "{TEMPLATE}"
app_key = "{key}"
app_secret = "{secret}"
api_base = "{base}"
oapi_base = "{base}"
"#,
        key = creds::DINGTALK_APP_KEY,
        secret = creds::DINGTALK_APP_SECRET,
        base = p.base_url(),
    )
}

/// A pipeline whose Dify writes each answer over `ms`, and DingTalk's stand-in holding a
/// conversation to one card write a second.
async fn spawn(ms: u64, worker: bool, dispatcher: bool) -> (TestApp, PlatformStandin) {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    p.set_limits(api::DINGTALK_CARD, vec![(1, Duration::from_secs(1))]);
    (spawn_slow_dify(source(&p), ms, worker, dispatcher).await, p)
}

fn question(tag: &str) -> String {
    format!("{tag}: please explain how a card grows while the answer is being written")
}

/// The question in the group, from staff7, with a session webhook valid for an hour.
async fn ask(app: &TestApp, p: &PlatformStandin, msg_id: &str, text: &str) {
    let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
    let body = dingtalk::text_message(msg_id, CID, true, "staff7", text, &session, expires);
    let msg = dingtalk::request(creds::DINGTALK_APP_SECRET, now_ms(), &body);
    let got = send(app, "dt", &msg).await;
    assert_eq!(got.status, 200, "{}", got.body);
}

fn content(card: &DingtalkCard) -> String {
    card.params.get("content").cloned().unwrap_or_default()
}

/// Every text the card showed, in order: as created, then each streaming write.
fn history(p: &PlatformStandin) -> Vec<String> {
    shown(p, &[api::DINGTALK_CARD, api::DINGTALK_CARD_STREAMING])
}

/// Waits until the conversation holds one card showing exactly `want`, finalised.
async fn ends_with(p: &PlatformStandin, want: &str) {
    let p2 = p.clone();
    eventually(&format!("one finalised card showing {want:?}"), || {
        let cards = p2.dingtalk_cards();
        cards.len() == 1 && content(&cards[0]) == want && cards[0].finalized
    })
    .await;
}

#[tokio::test]
async fn a_streamed_reply_grows_in_one_card_within_the_limit_and_ends_with_the_answer() {
    let (app, p) = spawn(4_000, true, true).await;
    let q = question("grow");
    let answer = format!("echo: {q}");
    ask(&app, &p, "msg-card-1", &q).await;
    let p2 = p.clone();
    eventually("the card", || !p2.dingtalk_cards().is_empty()).await;
    let card = p.dingtalk_cards()[0].clone();
    let first = content(&card);
    assert!(
        first.len() < answer.len() && answer.starts_with(&first),
        "a beginning of the answer first: {first:?}"
    );
    assert_eq!(card.space, format!("dtv1.card//IM_GROUP.{CID}"));
    assert_eq!(card.template_id, TEMPLATE);
    assert!(!card.finalized, "still streaming");
    ends_with(&p, &answer).await;
    let shown = history(&p);
    assert!(
        shown.len() >= 3,
        "created, written at least once, finalised: {shown:?}"
    );
    for pair in shown.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]),
            "the card only grows: {shown:?}"
        );
    }
    let writes = p.messages_to(api::DINGTALK_CARD_STREAMING);
    let last = writes.last().unwrap();
    assert_eq!(last.body["isFinalize"], true);
    assert!(writes[..writes.len() - 1]
        .iter()
        .all(|w| w.body["isFinalize"] == false));
    assert_eq!(p.requests(api::DINGTALK_CARD), 1, "one create");
    assert_eq!(
        p.limited(api::DINGTALK_CARD),
        0,
        "no write beyond the limit"
    );
    assert!(
        p.messages_to(api::DINGTALK_SESSION).is_empty(),
        "no message besides the card"
    );
    // DingTalk's retry of the callback: answered from the record, the card not touched again.
    let n = shown.len();
    ask(&app, &p, "msg-card-1", &q).await;
    let p2 = p.clone();
    assert!(quiet(|| history(&p2).len() == n).await);
    stop(app, p).await;
}

fn destination() -> Destination {
    Destination::Reply {
        handle: ReplyHandle::Dingtalk {
            session_webhook: None,
            session_webhook_expires_at: None,
            conversation_id: CID.into(),
            robot_code: Some("dingrobot".into()),
            sender_staff_id: Some("staff7".into()),
        },
    }
}

fn payload() -> AnswerPayload {
    AnswerPayload {
        event_id: uuid::Uuid::now_v7(),
        source: "dt".into(),
        platform: "dingtalk".into(),
        conversation: Conversation {
            chat_id: CID.into(),
            chat_type: ChatType::Group,
            sender_id: "staff7".into(),
            sender_name: None,
            thread_id: None,
        },
        query: "q".into(),
        answer: Answer::default(),
        timings: Default::default(),
        event: None,
    }
}

/// Whether the conversation holds one card showing `want`.
fn shows(p: &PlatformStandin, want: &str) -> bool {
    let cards = p.dingtalk_cards();
    cards.len() == 1 && content(&cards[0]) == want
}

#[tokio::test]
async fn an_older_update_never_overwrites_a_newer_one_nor_any_the_final_answer() {
    let (app, p) = spawn(0, false, true).await;
    let d = Direct::new(destination(), payload());
    let update = |epoch, seq, text: &str| d.update(epoch, seq, text);
    publish(&app, update(1, 2, "Hello, wor")).await;
    let p2 = p.clone();
    eventually("the card", || shows(&p2, "Hello, wor")).await;
    publish(&app, update(1, 1, "Hel")).await;
    // A newer update applies once the one-a-second limit lets a write through.
    let deadline = std::time::Instant::now() + T;
    let mut seq = 3;
    while !shows(&p, "Hello, world. The") {
        assert!(std::time::Instant::now() < deadline, "{:?}", history(&p));
        publish(&app, update(1, seq, "Hello, world. The")).await;
        seq += 1;
        let p2 = p.clone();
        let _ = stays(Duration::from_millis(300), || {
            !shows(&p2, "Hello, world. The")
        })
        .await;
    }
    assert!(!history(&p).iter().any(|t| t == "Hel"), "{:?}", history(&p));
    publish(&app, d.answer("Hello, world. The end.")).await;
    ends_with(&p, "Hello, world. The end.").await;
    publish(&app, update(0, 9, "Hello")).await;
    publish(&app, update(1, seq + 1, "Hello, world. The e")).await;
    let p2 = p.clone();
    assert!(quiet(|| shows(&p2, "Hello, world. The end.")).await);
    assert_eq!(p.limited(api::DINGTALK_CARD), 0);
    stop(app, p).await;
}

/// A dispatcher that died between delivering the card and recording it: the next update creates
/// it again under the same `outTrackId`, which names the card already in the chat.
#[tokio::test]
async fn a_card_created_but_not_recorded_is_not_delivered_twice() {
    let (app, p) = spawn(0, false, true).await;
    let d = Direct::new(destination(), payload());
    publish(&app, d.update(1, 1, "Hello, wor")).await;
    let p2 = p.clone();
    eventually("the card", || p2.dingtalk_cards().len() == 1).await;
    d.forget_record(&app).await;
    let deadline = std::time::Instant::now() + T;
    let mut seq = 2;
    while p.requests(api::DINGTALK_CARD) < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", history(&p));
        publish(&app, d.update(1, seq, "Hello, world")).await;
        seq += 1;
        let p2 = p.clone();
        let _ = stays(Duration::from_millis(300), || {
            p2.requests(api::DINGTALK_CARD) < 2
        })
        .await;
    }
    let p2 = p.clone();
    assert!(
        quiet(|| p2.dingtalk_cards().len() == 1).await,
        "{:?}",
        p.dingtalk_cards()
    );
    stop(app, p).await;
}

#[tokio::test]
async fn an_app_without_the_card_permission_falls_back_to_a_single_message_said_once() {
    let (app, p) = spawn(4_000, true, false).await;
    let (_dispatcher, log) = dispatcher_logging(&app);
    p.refuse_dingtalk_cards(true);
    let q = question("fallback");
    let answer = format!("echo: {q}");
    ask(&app, &p, "msg-card-3", &q).await;
    let p2 = p.clone();
    let want = answer.clone();
    eventually("the answer as a message", || {
        p2.texts(api::DINGTALK_SESSION) == [want.clone()]
    })
    .await;
    assert!(p.dingtalk_cards().is_empty());
    assert_eq!(
        p.requests(api::DINGTALK_CARD),
        1,
        "after the refusal no card is tried again"
    );
    assert_eq!(p.requests(api::DINGTALK_CARD_STREAMING), 0);
    let p2 = p.clone();
    assert!(quiet(|| p2.texts(api::DINGTALK_SESSION).len() == 1).await);
    assert!(!fell_back_once(&log).contains(creds::DINGTALK_APP_SECRET));
    stop(app, p).await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_leaves_one_card_which_the_next_worker_ends() {
    let (mut app, p) = spawn(5_000, false, true).await;
    let q = question("worker-crash");
    let p2 = p.clone();
    let grew = || !p2.messages_to(api::DINGTALK_CARD_STREAMING).is_empty();
    let worker = app.spawn_child("worker");
    ask(&app, &p, "msg-card-4", &q).await;
    kill_worker_mid_stream(&mut app, worker, grew).await;
    ends_with(&p, &format!("echo: {q}")).await;
    assert_eq!(p.requests(api::DINGTALK_CARD), 1, "{:?}", history(&p));
    assert_eq!(p.limited(api::DINGTALK_CARD), 0);
    assert!(p.messages_to(api::DINGTALK_SESSION).is_empty());
    let p2 = p.clone();
    assert!(quiet(|| p2.dingtalk_cards().len() == 1).await);
    stop(app, p).await;
}

#[tokio::test]
async fn a_dispatcher_killed_mid_write_still_ends_the_card_with_the_answer_once() {
    let (mut app, p) = spawn(3_000, true, false).await;
    let q = question("dispatcher-crash");
    let dispatcher = dispatcher_with_slow_writes(&app, &p, api::DINGTALK_CARD_STREAMING);
    ask(&app, &p, "msg-card-5", &q).await;
    kill_dispatcher_mid_write(&mut app, &p, api::DINGTALK_CARD_STREAMING, dispatcher).await;
    ends_with(&p, &format!("echo: {q}")).await;
    assert!(p.messages_to(api::DINGTALK_SESSION).is_empty());
    let p2 = p.clone();
    assert!(quiet(|| p2.dingtalk_cards().len() == 1).await);
    stop(app, p).await;
}
