//! Issue 15 end to end, Slack: a source with `stream = true` replies in the question's thread
//! with one message that grows while Dify writes (`chat.postMessage`, then `chat.update` of its
//! `ts`) and ends with exactly the answer; updates out of order or after the final answer are
//! dropped, and a final edit Slack rate-limits is tried again after `Retry-After`; every post
//! and edit stays within the channel's limit (the stand-in answers 429 `ratelimited` beyond one
//! a second); an update Slack refuses (`cant_update_message`) falls back to a single message,
//! said once in the log; a worker killed mid-stream leaves one message, continued by the next
//! worker; a dispatcher killed mid-edit still ends the message with the answer, once.
use crate::common::*;
use crate::kit::*;
use crate::streaming::{publish, question, stop};
use ingress::platform::slack;
use shared::envelope::{
    encode, Answer, AnswerPayload, ChatType, Conversation, Destination, DispatchJob, ReplyHandle,
};
use shared::progress::ReplyProgress;
use standins::dify::Latency;
use standins::platforms::{api, creds, PlatformStandin, Scripted};
use std::time::Duration;

const SIGNING_SECRET: &str = "slack-signing-secret-15";
const CHANNEL: &str = "C0STREAM";

fn source(p: &PlatformStandin) -> String {
    format!(
        r#"
[[sources]]
id = "sl"
platform = "slack"
app = "support"
reply = true
stream = true
stream_interval = "1s"
stream_min_chars = 10
signing_secret = "{SIGNING_SECRET}"
bot_token = "{token}"
api_base = "{base}"
"#,
        token = creds::SLACK_BOT_TOKEN,
        base = p.slack_api_base(),
    )
}

/// A pipeline whose Dify writes each answer over `ms` in 40 chunks, and Slack's stand-in
/// holding the channel's posts and the workspace's updates to one a second each.
async fn spawn(ms: u64, worker: bool, dispatcher: bool) -> (TestApp, PlatformStandin) {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let second = vec![(1, Duration::from_secs(1))];
    p.set_limits(api::SLACK_API, second.clone());
    p.set_limits(api::SLACK_UPDATE, second);
    let mut opts = Options {
        extra: source(&p),
        worker,
        dispatcher,
        ..Default::default()
    };
    opts.dify.latency = Latency::Fixed(Duration::from_millis(ms));
    opts.dify.chunks = 40;
    (TestApp::spawn(opts).await, p)
}

/// The question's `ts` in the channel (the thread the answer goes in).
fn question_ts(n: u32) -> String {
    format!("1700000100.{n:06}")
}

async fn ask(app: &TestApp, n: u32, text: &str) {
    let event = slack::message_event(CHANNEL, "channel", "U0ASKER", text, &question_ts(n));
    let body = slack::event_callback(&format!("Ev0STREAM{n}"), event);
    let req = slack::request(SIGNING_SECRET, now_s(), &body, "application/json");
    let got = send(app, "sl", &req).await;
    assert_eq!(got.status, 200, "{}", got.body);
}

/// What the channel shows: its messages' current texts, in order.
fn channel(p: &PlatformStandin) -> Vec<String> {
    p.slack_channel(CHANNEL)
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

/// Every text the channel showed, in order: each message as posted, then each update.
fn history(p: &PlatformStandin) -> Vec<String> {
    let mut all: Vec<_> = p
        .messages_to(api::SLACK_API)
        .into_iter()
        .chain(p.messages_to(api::SLACK_UPDATE))
        .collect();
    all.sort_by_key(|m| m.at);
    all.into_iter().map(|m| m.text).collect()
}

/// Waits until the channel shows exactly `want`, one message.
async fn ends_with(p: &PlatformStandin, want: &str) {
    let p2 = p.clone();
    eventually(&format!("the channel to show exactly {want:?}"), || {
        channel(&p2) == [want.to_owned()]
    })
    .await;
}

fn no_limit_hit(p: &PlatformStandin) {
    assert_eq!(p.limited(api::SLACK_API), 0, "no post beyond the limit");
    assert_eq!(
        p.limited(api::SLACK_UPDATE),
        0,
        "no update beyond the limit"
    );
}

#[tokio::test]
async fn a_streamed_slack_reply_grows_in_the_thread_within_the_limits_and_ends_with_the_answer() {
    let (app, p) = spawn(4_000, true, true).await;
    let q = question("grow");
    let answer = format!("echo: {q}");
    ask(&app, 1, &q).await;
    // The first text shows while Dify is still writing, in the question's thread.
    let p2 = p.clone();
    eventually("the first text", || {
        !p2.messages_to(api::SLACK_API).is_empty()
    })
    .await;
    let first = p.messages_to(api::SLACK_API)[0].clone();
    assert!(
        first.text.len() < answer.len() && answer.starts_with(&first.text),
        "a beginning of the answer first: {:?}",
        first.text
    );
    assert_eq!(
        first.thread,
        Some(question_ts(1)),
        "in the question's thread"
    );
    ends_with(&p, &answer).await;
    let shown = history(&p);
    assert!(
        shown.len() >= 3,
        "posted, updated at least once, finished: {shown:?}"
    );
    for pair in shown.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]),
            "the message only grows: {shown:?}"
        );
    }
    assert_eq!(shown.last().unwrap(), &answer);
    assert_eq!(
        p.messages_to(api::SLACK_API).len(),
        1,
        "one message, updated"
    );
    let ts = &p.slack_channel(CHANNEL)[0].0;
    assert!(
        p.messages_to(api::SLACK_UPDATE)
            .iter()
            .all(|m| m.reply_to.as_ref() == Some(ts)),
        "every update names the message's ts"
    );
    no_limit_hit(&p);
    stop(app, p).await;
}

fn reply_to() -> Destination {
    Destination::Reply {
        handle: ReplyHandle::Slack {
            channel: CHANNEL.into(),
            thread_ts: Some(question_ts(2)),
            response_url: None,
        },
    }
}

fn payload(text: &str) -> AnswerPayload {
    AnswerPayload {
        event_id: uuid::Uuid::now_v7(),
        source: "sl".into(),
        platform: "slack".into(),
        conversation: Conversation {
            chat_id: CHANNEL.into(),
            chat_type: ChatType::Group,
            sender_id: "U0ASKER".into(),
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

#[tokio::test]
async fn an_older_slack_update_never_overwrites_a_newer_one_and_a_rate_limited_final_edit_retries()
{
    let (app, p) = spawn(0, false, true).await;
    let destination = reply_to();
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
    eventually("the message", || channel(&p2) == ["Hello, wor"]).await;
    // An older update arrives late: dropped, not sent.
    publish(&app, update(1, 1, "Hel")).await;
    // A newer one applies once the channel's one-second limit lets an update through.
    let deadline = std::time::Instant::now() + T;
    let mut seq = 3;
    while channel(&p) != ["Hello, world. The"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", history(&p));
        publish(&app, update(1, seq, "Hello, world. The")).await;
        seq += 1;
        let p2 = p.clone();
        let _ = stays(Duration::from_millis(300), || {
            channel(&p2) != ["Hello, world. The"]
        })
        .await;
    }
    assert!(!history(&p).iter().any(|t| t == "Hel"), "{:?}", history(&p));
    // Slack rate-limits the final answer's update: it is tried again after Retry-After.
    p.fail_next(
        api::SLACK_UPDATE,
        1,
        Scripted::slack(429, "ratelimited", Some(1)),
    );
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
    assert!(p.requests(api::SLACK_UPDATE) >= 3, "refused, then updated");
    // Stragglers after the final answer: a dead worker's (smaller epoch) and the last one's.
    publish(&app, update(0, 9, "Hello")).await;
    publish(&app, update(1, seq + 1, "Hello, world. The e")).await;
    let p2 = p.clone();
    assert!(quiet(|| channel(&p2) == ["Hello, world. The end."]).await);
    assert_eq!(p.messages_to(api::SLACK_API).len(), 1);
    no_limit_hit(&p);
    stop(app, p).await;
}

#[tokio::test]
async fn an_update_slack_refuses_falls_back_to_a_single_message_said_once_in_the_log() {
    let (app, p) = spawn(4_000, true, false).await;
    let log = std::env::temp_dir().join(format!("{}-dispatcher.log", app.prefix));
    let _dispatcher = app.spawn_child_with("dispatcher", "warn", Some(&log));
    // Every update is refused as Slack refuses one of a message the bot may not edit.
    p.fail_next(
        api::SLACK_UPDATE,
        1_000,
        Scripted::slack(200, "cant_update_message", None),
    );
    let q = question("fallback");
    let answer = format!("echo: {q}");
    ask(&app, 3, &q).await;
    let p2 = p.clone();
    let want = answer.clone();
    eventually("the answer as a message of its own", || {
        p2.texts(api::SLACK_API).last() == Some(&want)
    })
    .await;
    let texts = p.texts(api::SLACK_API);
    assert_eq!(
        texts.len(),
        2,
        "the first text, then the answer whole: {texts:?}"
    );
    assert!(answer.starts_with(&texts[0]) && texts[0] != answer);
    assert!(
        p.messages_to(api::SLACK_API)
            .iter()
            .all(|m| m.thread == Some(question_ts(3))),
        "both in the thread"
    );
    assert_eq!(
        p.requests(api::SLACK_UPDATE),
        1,
        "after the refusal no update is tried again"
    );
    let p2 = p.clone();
    assert!(quiet(|| p2.texts(api::SLACK_API).len() == 2).await);
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
async fn a_worker_killed_mid_slack_stream_leaves_one_message_which_the_next_worker_ends() {
    let (mut app, p) = spawn(5_000, false, true).await;
    let mut worker = app.spawn_child("worker");
    let q = question("worker-crash");
    let answer = format!("echo: {q}");
    ask(&app, 4, &q).await;
    let p2 = p.clone();
    eventually("the message to grow", || {
        !p2.messages_to(api::SLACK_UPDATE).is_empty()
    })
    .await;
    worker.kill9().await;
    app.add_worker();
    ends_with(&p, &answer).await;
    assert_eq!(p.messages_to(api::SLACK_API).len(), 1, "{:?}", history(&p));
    no_limit_hit(&p);
    let p2 = p.clone();
    assert!(quiet(|| channel(&p2) == [answer.clone()]).await);
    stop(app, p).await;
}

#[tokio::test]
async fn a_dispatcher_killed_mid_slack_update_still_ends_the_message_with_the_answer_once() {
    let (mut app, p) = spawn(3_000, true, false).await;
    let mut dispatcher = app.spawn_child("dispatcher");
    // Updates hang at Slack long enough to kill the dispatcher in the middle of one.
    p.hold(api::SLACK_UPDATE, Duration::from_secs(2));
    let q = question("dispatcher-crash");
    let answer = format!("echo: {q}");
    ask(&app, 5, &q).await;
    let p2 = p.clone();
    eventually("an update in flight", || {
        p2.requests(api::SLACK_UPDATE) >= 1
    })
    .await;
    dispatcher.kill9().await;
    p.hold(api::SLACK_UPDATE, Duration::ZERO);
    app.add_dispatcher();
    ends_with(&p, &answer).await;
    assert_eq!(p.messages_to(api::SLACK_API).len(), 1, "{:?}", history(&p));
    let p2 = p.clone();
    assert!(quiet(|| channel(&p2) == [answer.clone()]).await);
    stop(app, p).await;
}
