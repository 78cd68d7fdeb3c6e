//! Issue 15 end to end, Telegram: a source with `stream = true` replies with one message that
//! grows while Dify writes (`sendMessage`, then `editMessageText`) and ends with exactly the
//! answer; updates out of order or after the final answer are dropped; every send and edit stays
//! within the chat's limit (the stand-in answers 429 beyond one a second); an edit Telegram
//! refuses falls back to a single message, said once in the log; a worker killed mid-stream
//! leaves one message, continued by the next worker; a dispatcher killed mid-edit still ends the
//! message with the answer, once. The roles that are killed run as child processes.
use crate::common::*;
use crate::kit::*;
use ingress::platform::telegram;
use shared::broker::Publish;
use shared::envelope::{
    encode, Answer, AnswerPayload, ChatType, Conversation, Destination, DispatchJob, ReplyHandle,
};
use shared::progress::ReplyProgress;
use shared::topology::Stage;
use standins::platforms::{api, creds, PlatformStandin, Scripted};
use std::time::Duration;

const TG_SECRET: &str = "tg_secret-1";
/// A private chat: Telegram's limit there is about one message (or edit) a second.
const CHAT: i64 = 4242;

fn source(p: &PlatformStandin) -> String {
    format!(
        r#"
[[sources]]
id = "tg"
platform = "telegram"
app = "support"
reply = true
stream = true
stream_interval = "1s"
stream_min_chars = 10
secret_token = "{TG_SECRET}"
bot_token = "{token}"
api_base = "{base}"
"#,
        token = creds::TELEGRAM_BOT_TOKEN,
        base = p.base_url(),
    )
}

/// A pipeline whose Dify writes each answer over `ms` in 40 chunks, and Telegram's stand-in
/// holding the chat to one request a second.
async fn spawn(ms: u64, worker: bool, dispatcher: bool) -> (TestApp, PlatformStandin) {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    p.set_limits(api::TELEGRAM, vec![(1, Duration::from_secs(1))]);
    let app = crate::stream_kit::spawn_slow_dify(source(&p), ms, worker, dispatcher).await;
    (app, p)
}

/// A question long enough to grow over several edits.
pub(crate) fn question(tag: &str) -> String {
    format!("{tag}: please explain how a message grows while the answer is being written")
}

async fn ask(app: &TestApp, update_id: i64, text: &str) {
    let body = telegram::text_update(update_id, CHAT, "private", CHAT, text);
    let got = send(app, "tg", &telegram::request(TG_SECRET, &body)).await;
    assert_eq!(got.status, 200, "{}", got.body);
}

/// What the chat shows: its messages' current texts, in order.
fn chat(p: &PlatformStandin) -> Vec<String> {
    p.telegram_chat(&CHAT.to_string())
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

/// Every text the chat showed, in order: the message as sent, then each edit.
fn history(p: &PlatformStandin) -> Vec<String> {
    let mut all: Vec<_> = p
        .messages_to(api::TELEGRAM)
        .into_iter()
        .chain(p.messages_to(api::TELEGRAM_EDIT))
        .collect();
    all.sort_by_key(|m| m.at);
    all.into_iter().map(|m| m.text).collect()
}

/// Waits until the chat shows exactly `want`, one message.
async fn ends_with(p: &PlatformStandin, want: &str) {
    let p2 = p.clone();
    eventually(&format!("the chat to show exactly {want:?}"), || {
        chat(&p2) == [want.to_owned()]
    })
    .await;
}

#[tokio::test]
async fn a_streamed_reply_grows_in_one_message_within_the_chat_limit_and_ends_with_the_answer() {
    let (app, p) = spawn(4_000, true, true).await;
    let q = question("grow");
    let answer = format!("echo: {q}");
    ask(&app, 810_001, &q).await;
    // The first text shows while Dify is still writing.
    let p2 = p.clone();
    eventually("the first text", || {
        !p2.messages_to(api::TELEGRAM).is_empty()
    })
    .await;
    let first = p.messages_to(api::TELEGRAM)[0].clone();
    assert!(
        first.text.len() < answer.len() && answer.starts_with(&first.text),
        "a beginning of the answer first: {:?}",
        first.text
    );
    assert_eq!(
        first.reply_to.as_deref(),
        Some("10001"),
        "it replies to the question"
    );
    ends_with(&p, &answer).await;
    let shown = history(&p);
    assert!(
        shown.len() >= 3,
        "sent, edited at least once, finished: {shown:?}"
    );
    for pair in shown.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]),
            "the message only grows: {shown:?}"
        );
    }
    assert_eq!(shown.last().unwrap(), &answer);
    assert_eq!(p.messages_to(api::TELEGRAM).len(), 1, "one message, edited");
    assert_eq!(
        p.limited(api::TELEGRAM),
        0,
        "no send or edit beyond the chat's limit"
    );
    // Telegram's retry of the update: answered from the record, the message not touched again.
    ask(&app, 810_001, &q).await;
    let p2 = p.clone();
    let n = shown.len();
    assert!(quiet(|| history(&p2).len() == n).await);
    stop(app, p).await;
}

fn reply_to(chat: i64) -> Destination {
    Destination::Reply {
        handle: ReplyHandle::Telegram {
            chat_id: chat,
            message_id: Some(77),
        },
    }
}

fn payload(text: &str) -> AnswerPayload {
    AnswerPayload {
        event_id: uuid::Uuid::now_v7(),
        source: "tg".into(),
        platform: "telegram".into(),
        conversation: Conversation {
            chat_id: CHAT.to_string(),
            chat_type: ChatType::Single,
            sender_id: CHAT.to_string(),
            sender_name: None,
            thread_id: None,
        },
        query: "q".into(),
        answer: Answer {
            text: text.into(),
            ..Default::default()
        },
        timings: Default::default(),
        event: None,
    }
}

pub(crate) async fn publish(app: &TestApp, body: Vec<u8>) {
    let queue = app.services.broker.topology().stage_queue(Stage::Deliver);
    app.services
        .broker
        .publish(&queue, &body, Publish::default())
        .await
        .expect("publish");
}

#[tokio::test]
async fn an_older_update_never_overwrites_a_newer_one_nor_any_the_final_answer() {
    let (app, p) = spawn(0, false, true).await;
    let destination = reply_to(CHAT);
    let base = payload("");
    let job_id = DispatchJob::job_id_of_event(base.event_id, &destination);
    let update = |epoch: i64, seq: u64, text: &str| {
        let mut payload = base.clone();
        payload.answer.text = text.into();
        encode(&ReplyProgress {
            job_id,
            destination: destination.clone(),
            payload,
            epoch,
            seq,
        })
    };
    publish(&app, update(1, 2, "Hello, wor")).await;
    let p2 = p.clone();
    eventually("the message", || chat(&p2) == ["Hello, wor"]).await;
    // An older update arrives late: dropped, not sent.
    publish(&app, update(1, 1, "Hel")).await;
    // A newer one still applies once the chat's one-second limit lets an edit through (an
    // update the limiter would hold back for long is dropped, so newer ones keep coming, as
    // the worker's do).
    let deadline = std::time::Instant::now() + T;
    let mut seq = 3;
    while chat(&p) != ["Hello, world. The"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", history(&p));
        publish(&app, update(1, seq, "Hello, world. The")).await;
        seq += 1;
        let p2 = p.clone();
        let _ = stays(Duration::from_millis(300), || {
            chat(&p2) != ["Hello, world. The"]
        })
        .await;
    }
    assert!(!history(&p).iter().any(|t| t == "Hel"), "{:?}", history(&p));
    // The final answer, then a straggler from a worker that died before (a smaller epoch) and
    // one from the last worker: both dropped, the message keeps the answer.
    let mut final_payload = base.clone();
    final_payload.answer.text = "Hello, world. The end.".into();
    let job = DispatchJob {
        id: job_id,
        destination: destination.clone(),
        payload: final_payload,
        attempts: vec![],
        replay_of: None,
        parts_left: None,
    };
    publish(&app, encode(&job)).await;
    ends_with(&p, "Hello, world. The end.").await;
    publish(&app, update(0, 9, "Hello")).await;
    publish(&app, update(1, seq + 1, "Hello, world. The e")).await;
    let p2 = p.clone();
    assert!(quiet(|| chat(&p2) == ["Hello, world. The end."]).await);
    assert_eq!(p.messages_to(api::TELEGRAM).len(), 1);
    assert_eq!(p.limited(api::TELEGRAM), 0);
    stop(app, p).await;
}

#[tokio::test]
async fn an_edit_telegram_refuses_falls_back_to_a_single_message_said_once_in_the_log() {
    let (app, p) = spawn(4_000, true, false).await;
    let log = std::env::temp_dir().join(format!("{}-dispatcher.log", app.prefix));
    let _dispatcher = app.spawn_child_with("dispatcher", "warn", Some(&log));
    // Every edit is refused as Telegram refuses a message that can no longer be edited.
    p.fail_next(
        api::TELEGRAM_EDIT,
        1_000,
        Scripted::telegram(400, "Bad Request: message can't be edited"),
    );
    let q = question("fallback");
    let answer = format!("echo: {q}");
    ask(&app, 810_002, &q).await;
    let p2 = p.clone();
    let want = answer.clone();
    eventually("the answer as a message of its own", || {
        p2.texts(api::TELEGRAM).last() == Some(&want)
    })
    .await;
    let texts = p.texts(api::TELEGRAM);
    assert_eq!(
        texts.len(),
        2,
        "the first text, then the answer whole: {texts:?}"
    );
    assert!(answer.starts_with(&texts[0]) && texts[0] != answer);
    assert_eq!(
        p.requests(api::TELEGRAM_EDIT),
        1,
        "after the refusal no edit is tried again"
    );
    let p2 = p.clone();
    assert!(quiet(|| p2.texts(api::TELEGRAM).len() == 2).await);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        logged.matches("falls back to a single message").count(),
        1,
        "{logged}"
    );
    let _ = std::fs::remove_file(&log);
    stop(app, p).await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_leaves_one_message_which_the_next_worker_ends() {
    let (mut app, p) = spawn(5_000, false, true).await;
    let mut worker = app.spawn_child("worker");
    let q = question("worker-crash");
    let answer = format!("echo: {q}");
    ask(&app, 810_003, &q).await;
    let p2 = p.clone();
    eventually("the message to grow", || {
        !p2.messages_to(api::TELEGRAM_EDIT).is_empty()
    })
    .await;
    worker.kill9().await;
    app.add_worker();
    ends_with(&p, &answer).await;
    assert_eq!(p.messages_to(api::TELEGRAM).len(), 1, "{:?}", history(&p));
    assert_eq!(p.limited(api::TELEGRAM), 0);
    let p2 = p.clone();
    assert!(quiet(|| chat(&p2) == [answer.clone()]).await);
    stop(app, p).await;
}

#[tokio::test]
async fn a_dispatcher_killed_mid_edit_still_ends_the_message_with_the_answer_once() {
    let (mut app, p) = spawn(3_000, true, false).await;
    let mut dispatcher = app.spawn_child("dispatcher");
    // Edits hang at Telegram long enough to kill the dispatcher in the middle of one.
    p.hold(api::TELEGRAM_EDIT, Duration::from_secs(2));
    let q = question("dispatcher-crash");
    let answer = format!("echo: {q}");
    ask(&app, 810_004, &q).await;
    let p2 = p.clone();
    eventually("an edit in flight", || p2.requests(api::TELEGRAM_EDIT) >= 1).await;
    dispatcher.kill9().await;
    p.hold(api::TELEGRAM_EDIT, Duration::ZERO);
    app.add_dispatcher();
    ends_with(&p, &answer).await;
    assert_eq!(p.messages_to(api::TELEGRAM).len(), 1, "{:?}", history(&p));
    let p2 = p.clone();
    assert!(quiet(|| chat(&p2) == [answer.clone()]).await);
    stop(app, p).await;
}

pub(crate) async fn stop(app: TestApp, p: PlatformStandin) {
    app.shutdown().await;
    p.shutdown();
}
