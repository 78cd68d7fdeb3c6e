//! Issue 5 end to end, through the real dispatcher loop (broker, delay queues, rate limiter,
//! retries, dead letters) against the platforms' stand-in: every kind's rendering and signature
//! accepted by its platform; each errcode class (a rate-limited answer waits without counting
//! as a failed attempt and is delivered later, a permanent one dead-letters at once, a busy one
//! is retried); a long answer split, numbered and received in order, one part per admission of
//! a rate-limited target; a receiver down for a while gets every job exactly once when it is
//! back; an expired access token refreshed once on a reply; a target on IPv4 loopback, written
//! plainly, as `::ffff:127.0.0.1` or as a name, refused when the allow-list does not cover it.
use crate::common::*;
use crate::kit::*;
use crate::platforms;
use serde_json::json;
use shared::envelope::{DispatchJob, Reason};
use standins::platforms::{api, creds, PlatformStandin, Scripted};
use standins::receiver::Receiver;
use std::time::{Duration, Instant};

const ASK_TOKEN: &str = "ask-token";

/// A bearer source `ask` whose answers go to `targets`, then `blocks` (more `[[targets]]`).
fn asking(targets: &[&str], blocks: &str) -> String {
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[sources]]
id = "ask"
platform = "bearer"
token = "{ASK_TOKEN}"
app = "support"
targets = [{list}]
{blocks}
"#
    )
}

/// Asks `text` through the `ask` source (dedup key `id`); the ingress must keep it.
async fn ask(app: &TestApp, id: &str, text: &str) {
    // A conversation per question: the worker takes one conversation's turns one at a time.
    let body = json!({ "id": id, "text": text, "sender_id": id, "chat_type": "single" });
    let resp = app
        .post(
            "/hooks/ask",
            &[
                ("authorization", &format!("Bearer {ASK_TOKEN}")),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(resp.status(), 202, "the ingress kept {id}");
}

async fn spawn(extra: String) -> TestApp {
    TestApp::spawn(Options {
        extra,
        ..Default::default()
    })
    .await
}

/// Waits until the stand-in's `api` holds `n` messages, and shows it holds no more after.
async fn exactly_at(p: &PlatformStandin, api_name: &'static str, n: usize) {
    platforms::messages_at(p, api_name, n).await;
    let p2 = p.clone();
    assert!(
        quiet(|| p2.messages_to(api_name).len() == n).await,
        "{api_name}: {} messages, want {n}",
        p.messages_to(api_name).len()
    );
}

// ---------------------------------------------------------------------------------------------
// Rendering and signatures

#[tokio::test]
async fn each_kind_is_rendered_signed_and_accepted_by_its_platform() {
    let p = PlatformStandin::start().await.unwrap();
    let blocks = format!(
        r#"
[[targets]]
id = "wecom-robot"
kind = "wecom_robot"
url = "{wecom}"
mentioned_list = ["@all"]

[[targets]]
id = "wecom-markdown"
kind = "wecom_robot"
url = "{wecom}"
msgtype = "markdown"

[[targets]]
id = "dingtalk-robot"
kind = "dingtalk_robot"
url = "{ding}"
secret = "{ding_secret}"
at_mobiles = ["13800000000"]

[[targets]]
id = "feishu-bot"
kind = "feishu_bot"
url = "{feishu_signed}"
secret = "{feishu_secret}"
msg_type = "post"
title = "Switchboard"

[[targets]]
id = "lark-bot"
kind = "lark_bot"
url = "{feishu_plain}"
msg_type = "interactive"

[[targets]]
id = "slack-hook"
kind = "slack"
url = "{slack_hook}"

[[targets]]
id = "slack-bot"
kind = "slack"
bot_token = "{slack_token}"
channel = "C0SUPPORT"
thread_ts = "1700000000.000042"
api_base = "{slack_api}"

[[targets]]
id = "rocketchat"
kind = "rocketchat"
url = "{rocket}"
alias = "Switchboard"
emoji = ":robot:"

[[targets]]
id = "telegram"
kind = "telegram"
bot_token = "{tg_token}"
chat_id = -100777
api_base = "{base}"
"#,
        wecom = p.wecom_robot_url(),
        ding = p.dingtalk_robot_url(),
        ding_secret = creds::DINGTALK_ROBOT_SECRET,
        feishu_signed = p.feishu_hook_url(true),
        feishu_secret = creds::FEISHU_SECRET,
        feishu_plain = p.feishu_hook_url(false),
        slack_hook = p.slack_webhook_url(),
        slack_token = creds::SLACK_BOT_TOKEN,
        slack_api = p.slack_api_base(),
        rocket = p.rocketchat_url(),
        tg_token = creds::TELEGRAM_BOT_TOKEN,
        base = p.base_url(),
    );
    let targets = [
        "wecom-robot",
        "wecom-markdown",
        "dingtalk-robot",
        "feishu-bot",
        "lark-bot",
        "slack-hook",
        "slack-bot",
        "rocketchat",
        "telegram",
        "crm",
    ];
    let app = spawn(asking(&targets, &blocks)).await;
    let question = "hello 你好 😀";
    let answer = format!("echo: {question}");
    ask(&app, "render-1", question).await;

    // (API, how many targets post there, where the messages must land)
    let expect: [(&'static str, usize, &str); 7] = [
        (api::WECOM_ROBOT, 2, creds::WECOM_ROBOT_KEY),
        (api::DINGTALK_ROBOT, 1, creds::DINGTALK_ROBOT_TOKEN),
        (api::FEISHU_BOT, 2, ""),
        (api::SLACK_WEBHOOK, 1, creds::SLACK_HOOK_PATH),
        (api::SLACK_API, 1, "C0SUPPORT"),
        (api::ROCKETCHAT, 1, "hookid"),
        (api::TELEGRAM, 1, "-100777"),
    ];
    for (api_name, n, _) in expect {
        platforms::messages_at(&p, api_name, n).await;
    }
    let p2 = p.clone();
    assert!(
        quiet(|| expect
            .iter()
            .all(|(api_name, n, _)| p2.messages_to(api_name).len() == *n))
        .await,
        "one message per target, no more"
    );
    for (api_name, _, target) in expect {
        for m in p.messages_to(api_name) {
            assert_eq!(m.text, answer, "{api_name}: {}", m.body);
            if !target.is_empty() {
                assert_eq!(m.target, target, "{api_name}");
            }
        }
    }
    let r = app.receiver.clone();
    eventually("the webhook answer at crm", || r.accepted() == 1).await;
    assert!(app.receiver.received()[0].signature_ok);

    // What each platform kept of the rendering.
    let wecom = p.messages_to(api::WECOM_ROBOT);
    let text = wecom.iter().find(|m| m.body["msgtype"] == "text").unwrap();
    assert_eq!(text.body["text"]["mentioned_list"], json!(["@all"]));
    assert!(wecom.iter().any(|m| m.body["msgtype"] == "markdown"));
    let ding = &p.messages_to(api::DINGTALK_ROBOT)[0];
    assert_eq!(ding.body["at"]["atMobiles"], json!(["13800000000"]));
    let feishu = p.messages_to(api::FEISHU_BOT);
    let signed = feishu
        .iter()
        .find(|m| m.target == creds::FEISHU_HOOK)
        .expect("the signed bot got its post");
    assert_eq!(signed.body["msg_type"], "post");
    assert!(
        signed.body["sign"].is_string(),
        "signed body: {}",
        signed.body
    );
    let card = feishu
        .iter()
        .find(|m| m.target == creds::FEISHU_HOOK_UNSIGNED)
        .expect("the lark bot got its card");
    assert_eq!(card.body["msg_type"], "interactive");
    let slack = &p.messages_to(api::SLACK_API)[0];
    assert_eq!(slack.thread.as_deref(), Some("1700000000.000042"));
    let rc = &p.messages_to(api::ROCKETCHAT)[0];
    assert_eq!(
        (rc.body["alias"].as_str(), rc.body["emoji"].as_str()),
        (Some("Switchboard"), Some(":robot:"))
    );
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
    p.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Errcode classes

#[tokio::test]
async fn a_rate_limited_errcode_waits_without_a_failed_attempt_and_is_delivered_later() {
    let p = PlatformStandin::start().await.unwrap();
    // Two attempts in all: had the wait counted as a failed attempt, the 500 after it would
    // exhaust the schedule and dead-letter the job.
    let blocks = format!(
        r#"
[[targets]]
id = "feishu"
kind = "feishu_bot"
url = "{url}"
secret = "{secret}"
retry_schedule = ["0s", "100ms"]
"#,
        url = p.feishu_hook_url(true),
        secret = creds::FEISHU_SECRET,
    );
    p.fail_next(api::FEISHU_BOT, 1, Scripted::code(11232));
    p.fail_next(api::FEISHU_BOT, 1, Scripted::status(500, None));
    let app = spawn(asking(&["feishu"], &blocks)).await;
    let started = Instant::now();
    ask(&app, "limited-1", "slow down").await;
    let p2 = p.clone();
    eventually("the first, rate-limited request", || {
        p2.requests(api::FEISHU_BOT) >= 1
    })
    .await;
    exactly_at(&p, api::FEISHU_BOT, 1).await;
    let waited = started.elapsed();
    assert_eq!(p.texts(api::FEISHU_BOT), ["echo: slow down"]);
    assert_eq!(
        p.requests(api::FEISHU_BOT),
        3,
        "rate limited (11232), then 500, then accepted"
    );
    assert!(
        waited >= Duration::from_secs(9),
        "11232 means wait 10 s; delivered after {waited:?}"
    );
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
    p.shutdown();
}

/// An answer over `worker.max_answer_bytes` is cut with a marker that says so; the job, the
/// recorded answer and every part sent are within the cap (and the parts within MAX_PARTS).
#[tokio::test]
async fn an_answer_over_the_cap_is_cut_with_a_marker_and_sent_cut() {
    let p = PlatformStandin::start().await.unwrap();
    let blocks = format!(
        r#"
[[targets]]
id = "wecom"
kind = "wecom_robot"
url = "{wecom}"
"#,
        wecom = p.wecom_robot_url(),
    );
    let app = TestApp::spawn(Options {
        extra: asking(&["wecom"], &blocks),
        worker_keys: "max_answer_bytes = \"4KiB\"".into(),
        ..Default::default()
    })
    .await;
    let question = long_text(3000); // ~21 000 bytes
    ask(&app, "too-long", &question).await;
    let p2 = p.clone();
    eventually("the cut answer's last part", || {
        p2.texts(api::WECOM_ROBOT)
            .last()
            .is_some_and(|t| t.ends_with("was cut here]"))
    })
    .await;
    let texts = p.texts(api::WECOM_ROBOT);
    let total: usize = texts.iter().map(String::len).sum();
    assert!(
        total <= 4096 + 16 * texts.len(),
        "{total} bytes in {} parts",
        texts.len()
    );
    assert!(texts[0].contains("echo: w00000"), "{:.40}", texts[0]);
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
    p.shutdown();
}

/// A receiver that always says "wait" (Feishu's 11232: wait 10 s) does not keep a job forever:
/// after `dispatcher.wait_budget` from its first wait the job is dead-lettered as `exhausted`,
/// and the last wait is not parked past the budget's end.
#[tokio::test]
async fn a_receiver_that_always_says_wait_exhausts_the_wait_budget() {
    let p = PlatformStandin::start().await.unwrap();
    let blocks = format!(
        r#"
[[targets]]
id = "feishu"
kind = "feishu_bot"
url = "{url}"
secret = "{secret}"
"#,
        url = p.feishu_hook_url(true),
        secret = creds::FEISHU_SECRET,
    );
    p.fail_next(api::FEISHU_BOT, 1000, Scripted::code(11232));
    let app = TestApp::spawn(Options {
        extra: asking(&["feishu"], &blocks),
        dispatcher_keys: "wait_budget = \"1s\"".into(),
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    ask(&app, "always-wait", "hello?").await;
    let letters = app.wait_dead_letters().await;
    let took = started.elapsed();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, Reason::Exhausted);
    assert!(
        letters[0].error.contains("wait_budget"),
        "{}",
        letters[0].error
    );
    assert_eq!(
        p.requests(api::FEISHU_BOT),
        2,
        "the first wait, then the last"
    );
    assert!(
        took < Duration::from_secs(9),
        "parked for the budget's rest, not 10 s: {took:?}"
    );
    assert!(p.texts(api::FEISHU_BOT).is_empty());
    app.shutdown().await;
    p.shutdown();
}

#[tokio::test]
async fn permanent_errcodes_dead_letter_the_job_at_once() {
    let p = PlatformStandin::start().await.unwrap();
    // Each platform's own refusal of a wrong credential: 93000, 310000, 19021.
    let blocks = format!(
        r#"
[[targets]]
id = "wecom-bad-key"
kind = "wecom_robot"
url = "{base}/cgi-bin/webhook/send?key=not-the-key"

[[targets]]
id = "dingtalk-bad-sign"
kind = "dingtalk_robot"
url = "{ding}"
secret = "SECnot-the-secret"

[[targets]]
id = "feishu-bad-sign"
kind = "feishu_bot"
url = "{feishu}"
secret = "not-the-secret"
"#,
        base = p.base_url(),
        ding = p.dingtalk_robot_url(),
        feishu = p.feishu_hook_url(true),
    );
    let app = spawn(asking(
        &[
            "wecom-bad-key",
            "dingtalk-bad-sign",
            "feishu-bad-sign",
            "crm",
        ],
        &blocks,
    ))
    .await;
    ask(&app, "refused-1", "refused everywhere").await;
    let letters = dead_letters_at_least(&app, 3).await;
    let mut got: Vec<(String, Reason, usize, Option<String>)> = letters
        .iter()
        .map(|dl| {
            (
                dl.target.clone().unwrap_or_default(),
                dl.reason,
                dl.attempts.len(),
                dl.attempts.last().and_then(|a| a.code.clone()),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want = |t: &str, code: &str| (t.to_owned(), Reason::Permanent, 1, Some(code.to_owned()));
    assert_eq!(
        got,
        [
            want("dingtalk-bad-sign", "310000"),
            want("feishu-bad-sign", "19021"),
            want("wecom-bad-key", "93000"),
        ],
        "one attempt each, then the dead letter"
    );
    for dl in &letters {
        assert_eq!(dl.message["payload"]["query"], "refused everywhere");
    }
    for api_name in [api::WECOM_ROBOT, api::DINGTALK_ROBOT, api::FEISHU_BOT] {
        assert_eq!(p.requests(api_name), 1, "{api_name}: not retried");
        assert!(p.messages_to(api_name).is_empty());
    }
    // The other destinations of the same answer are not held up.
    let r = app.receiver.clone();
    eventually("the answer at crm", || r.accepted() == 1).await;
    app.shutdown().await;
    p.shutdown();
}

#[tokio::test]
async fn a_busy_errcode_is_retried_until_delivered() {
    let p = PlatformStandin::start().await.unwrap();
    let blocks = format!(
        r#"
[[targets]]
id = "wecom"
kind = "wecom_robot"
url = "{}"
# The robot's 20/min would space the retries 3 s apart (WeCom counts failed sends too).
rate = "20/s"
"#,
        p.wecom_robot_url()
    );
    p.fail_next(api::WECOM_ROBOT, 2, Scripted::errcode(-1));
    let app = spawn(asking(&["wecom"], &blocks)).await;
    ask(&app, "busy-1", "are you there").await;
    exactly_at(&p, api::WECOM_ROBOT, 1).await;
    assert_eq!(p.texts(api::WECOM_ROBOT), ["echo: are you there"]);
    assert_eq!(p.requests(api::WECOM_ROBOT), 3, "busy twice, then accepted");
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
    p.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Long answers

/// `words` numbered words, so order and completeness can be checked.
fn long_text(words: usize) -> String {
    (0..words)
        .map(|i| format!("w{i:05}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn a_long_answer_is_split_numbered_and_received_in_order_one_part_per_admission() {
    let p = PlatformStandin::start().await.unwrap();
    // 4 a second: parts are admitted ~262 ms apart (sent at once, they would be ms apart).
    let blocks = format!(
        r#"
[[targets]]
id = "wecom"
kind = "wecom_robot"
url = "{wecom}"
rate = "4/s"

[[targets]]
id = "telegram"
kind = "telegram"
bot_token = "{tg}"
chat_id = -100200
api_base = "{base}"
rate = "4/s"
"#,
        wecom = p.wecom_robot_url(),
        tg = creds::TELEGRAM_BOT_TOKEN,
        base = p.base_url(),
    );
    let app = spawn(asking(&["wecom", "telegram"], &blocks)).await;
    let question = long_text(1300); // 9 100 characters: 5 WeCom parts (2 048 bytes), 3 Telegram ones.
    ask(&app, "long-1", &question).await;
    let answer = format!("echo: {question}");
    let want: Vec<&str> = answer.split_whitespace().collect();
    for (api_name, at_least) in [(api::WECOM_ROBOT, 5), (api::TELEGRAM, 3)] {
        let p2 = p.clone();
        eventually(&format!("every part at {api_name}"), || {
            let texts = p2.texts(api_name);
            texts.len() >= at_least && texts.last().is_some_and(|t| t.ends_with("w01299"))
        })
        .await;
        let n = p.texts(api_name).len();
        exactly_at(&p, api_name, n).await;
        let msgs = p.messages_to(api_name);
        let mut words = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let prefix = format!("({}/{n}) ", i + 1);
            let rest = m
                .text
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{api_name}: part {i} starts {:.16}", m.text));
            words.extend(rest.split_whitespace().map(str::to_owned));
        }
        assert_eq!(words, want, "{api_name}: every word once, in order");
        let gaps: Vec<Duration> = msgs.windows(2).map(|w| w[1].at - w[0].at).collect();
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_millis(150)),
            "{api_name}: one part per admission of a 4/s limit, gaps {gaps:?}"
        );
    }
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
    p.shutdown();
}

#[tokio::test]
async fn a_paced_long_answer_travels_on_with_only_its_parts_left_and_a_replay_sends_just_those() {
    let p = PlatformStandin::start().await.unwrap();
    // One message every 3 s: after part 1 the rest must wait, parked with only what is left.
    let blocks = format!(
        r#"
[[targets]]
id = "telegram"
kind = "telegram"
bot_token = "{tg}"
chat_id = -100300
api_base = "{base}"
rate = "1/3s"
"#,
        tg = creds::TELEGRAM_BOT_TOKEN,
        base = p.base_url(),
    );
    let app = spawn(asking(&["telegram"], &blocks)).await;
    let question = long_text(1300); // 9 100 characters: 3 Telegram parts.
    ask(&app, "paced-1", &question).await;
    let p2 = p.clone();
    eventually("part 1", || p2.texts(api::TELEGRAM).len() == 1).await;
    // Part 2 is refused for good when its turn comes: the job dies carrying what was left.
    p.fail_next(
        api::TELEGRAM,
        1,
        Scripted::telegram(400, "Bad Request: chat not found"),
    );
    let letters = dead_letters_at_least(&app, 1).await;
    let [dead] = letters.as_slice() else {
        panic!("one dead letter, got {}", letters.len())
    };
    assert_eq!(dead.reason, Reason::Permanent);
    let job: DispatchJob = serde_json::from_value(dead.message.clone()).unwrap();
    let answer = format!("echo: {question}");
    assert_eq!(
        job.payload.answer.text, "",
        "the answer is not carried again"
    );
    let left = job.parts_left.expect("the parts left");
    assert_eq!(left.sent, 1);
    assert_eq!(left.parts.len(), 2);
    assert!(left.parts[0].starts_with("(2/3) ") && left.parts[1].starts_with("(3/3) "));
    let carried: usize = left.parts.iter().map(String::len).sum();
    assert!(
        carried < answer.len(),
        "parts left {carried} bytes, answer {}",
        answer.len()
    );
    // A replay sends the parts left, never part 1 again.
    let (ok, out, err) = dlq(&app, &["replay", "--all", "--yes", "--allow-unverified"]).await;
    assert!(ok, "{out}{err}");
    exactly_at(&p, api::TELEGRAM, 3).await;
    let texts = p.texts(api::TELEGRAM);
    let mut words = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let rest = t
            .strip_prefix(&format!("({}/3) ", i + 1))
            .unwrap_or_else(|| panic!("part {i} starts {t:.16}"));
        words.extend(rest.split_whitespace().map(str::to_owned));
    }
    let want: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(words, want, "every word once, in order");
    app.shutdown().await;
    p.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Receiver outage

#[tokio::test]
async fn a_receiver_down_for_a_while_then_back_gets_every_job_exactly_once() {
    // A schedule long enough to outlast the outage (about 19 s in all).
    let blocks = format!(
        r#"
[[targets]]
id = "patient"
kind = "webhook"
url = "{{receiver}}/patient"
secret = "{OUT_SECRET}"
retry_schedule = ["0s", "250ms", "500ms", "1s", "1s", "2s", "2s", "4s", "8s"]
"#
    );
    let app = spawn(asking(&["patient"], &blocks)).await;
    app.receiver.set_down(true);
    let n = 6;
    for i in 0..n {
        ask(&app, &format!("outage-{i}"), &format!("question {i}")).await;
    }
    // The job ids, from the platform's identity of each event (source and dedup key).
    let d = app.dify.clone();
    eventually("Dify answered every question", || d.calls() == n).await;
    let jobs: Vec<String> = (0..n)
        .map(|i| {
            let dest = shared::envelope::Destination::Target {
                id: "patient".into(),
            };
            DispatchJob::job_id_of_platform_event("ask", &format!("outage-{i}"), &dest).to_string()
        })
        .collect();
    // Down for a while: every job has failed at least twice.
    let r = app.receiver.clone();
    let ids = jobs.clone();
    eventually("two failed attempts of every job", || {
        ids.iter().all(|id| r.requests_for(id) >= 2)
    })
    .await;
    assert_eq!(app.receiver.accepted(), 0);
    app.receiver.set_down(false);
    eventually("every job after the outage", || r.accepted() == n as usize).await;
    assert!(
        quiet(|| r.accepted() == n as usize).await,
        "nothing is delivered twice"
    );
    let per_id = app.receiver.accepted_per_id();
    for id in &jobs {
        assert_eq!(per_id.get(id), Some(&1), "job {id} exactly once");
    }
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Access tokens

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once_on_a_reply() {
    let (app, p) = platforms::spawn().await;
    let wecom = |n: u32, content: &str| {
        platforms::wecom_message(
            &platforms::wecom_text("zhangsan", content, &format!("72000000000000000{n:02}")),
            &format!("nonce-{n}"),
            false,
        )
    };
    assert_eq!(send(&app, "wecom", &wecom(1, "first")).await.status, 200);
    platforms::messages_at(&p, api::WECOM_APP, 1).await;
    assert_eq!(p.token_fetches("wecom"), 1);

    p.expire_tokens();
    assert_eq!(send(&app, "wecom", &wecom(2, "second")).await.status, 200);
    exactly_at(&p, api::WECOM_APP, 2).await;
    assert_eq!(p.texts(api::WECOM_APP), ["echo: first", "echo: second"]);
    assert_eq!(p.token_fetches("wecom"), 2, "exactly one refresh");
    assert_eq!(
        p.requests(api::WECOM_APP),
        3,
        "the refused send was retried once, with the new token"
    );

    // Feishu's tenant_access_token, the same way.
    let feishu = |n: u32, text: &str| {
        ingress::platform::feishu::request_plain(&ingress::platform::feishu::text_event_v2(
            &format!("ev-token-{n}"),
            platforms::FEISHU_TOKEN,
            "oc_chat",
            true,
            "ou_user",
            &format!("om_token_{n}"),
            text,
        ))
    };
    assert_eq!(send(&app, "feishu", &feishu(1, "one")).await.status, 200);
    platforms::messages_at(&p, api::FEISHU_REPLY, 1).await;
    assert_eq!(p.token_fetches("feishu"), 1);
    p.expire_tokens();
    assert_eq!(send(&app, "feishu", &feishu(2, "two")).await.status, 200);
    exactly_at(&p, api::FEISHU_REPLY, 2).await;
    assert_eq!(p.token_fetches("feishu"), 2, "exactly one refresh");
    assert_eq!(p.requests(api::FEISHU_REPLY), 3);
    assert!(app.dead_letters().await.is_empty());
    platforms::stop(app, p).await;
}

// ---------------------------------------------------------------------------------------------
// SSRF

#[tokio::test]
async fn targets_on_ipv4_loopback_are_refused_when_the_allow_list_does_not_cover_it() {
    // The targets' receiver, on 127.0.0.1, reached three ways.
    let receiver = Receiver::start(Some(OUT_SECRET)).await.unwrap();
    let port = receiver.addr().port();
    let blocks = format!(
        r#"
[[targets]]
id = "mapped"
kind = "webhook"
url = "http://[::ffff:127.0.0.1]:{port}/answers"
secret = "{OUT_SECRET}"

[[targets]]
id = "literal"
kind = "webhook"
url = "http://127.0.0.1:{port}/answers"
secret = "{OUT_SECRET}"

[[targets]]
id = "named"
kind = "webhook"
url = "http://localhost:{port}/answers"
secret = "{OUT_SECRET}"
"#
    );
    let app = TestApp::spawn(Options {
        extra: asking(&["mapped", "literal", "named"], &blocks),
        dispatcher: false,
        ..Default::default()
    })
    .await;
    // Our dispatcher allows IPv6 loopback only: `::ffff:127.0.0.1` is judged as 127.0.0.1.
    let harness = r#"allow_private = ["127.0.0.0/8", "::1/128"]"#;
    assert!(app.config_text.contains(harness));
    let text = app
        .config_text
        .replace(harness, r#"allow_private = ["::1/128"]"#);
    let dispatcher = ExtraRole::dispatcher(&app, shared::Config::from_toml(&text).unwrap());

    ask(&app, "ssrf-1", "where do you send this").await;
    let letters = dead_letters_at_least(&app, 3).await;
    let by = |t: &str| {
        letters
            .iter()
            .find(|dl| dl.target.as_deref() == Some(t))
            .unwrap_or_else(|| panic!("no dead letter for {t}: {letters:?}"))
    };
    // IP literals are refused before any connection, for good.
    for (t, addr) in [("mapped", "::ffff:127.0.0.1"), ("literal", "127.0.0.1")] {
        let dl = by(t);
        assert_eq!(dl.reason, Reason::Permanent, "{t}: {}", dl.error);
        assert!(
            dl.error.contains("SSRF") && dl.error.contains(addr) && dl.error.contains("loopback"),
            "{t}: {}",
            dl.error
        );
        assert_eq!(dl.attempts.len(), 1);
    }
    // A name is resolved by the guarded resolver, which drops every forbidden address: each
    // attempt fails to connect, and the schedule runs out.
    let named = by("named");
    assert_eq!(named.reason, Reason::Exhausted, "{}", named.error);
    // Where `localhost` is also ::1 (allowed here, but nothing listens there), the guard lets
    // ::1 through and the attempts fail to connect instead; the receiver is untouched either way.
    let localhost: Vec<_> = tokio::net::lookup_host(("localhost", 0))
        .await
        .unwrap()
        .collect();
    if localhost.iter().all(|a| a.is_ipv4()) {
        assert!(
            named.error.contains("forbidden") && named.error.contains("127.0.0.1 (loopback)"),
            "{}",
            named.error
        );
    }
    // Nothing reached the receiver, by any of the three.
    for t in ["mapped", "literal", "named"] {
        let job = DispatchJob::job_id_of_platform_event(
            "ask",
            "ssrf-1",
            &shared::envelope::Destination::Target { id: t.into() },
        );
        assert_eq!(receiver.requests_for(&job.to_string()), 0, "{t}");
    }
    assert_eq!(receiver.accepted(), 0);
    dispatcher.stop().await;
    app.shutdown().await;
    receiver.shutdown();
}

#[tokio::test]
async fn a_target_on_ipv4_mapped_loopback_is_delivered_when_its_ipv4_network_is_allowed() {
    // The harness allows 127.0.0.0/8: the mapped form is admitted as the IPv4 address it is.
    let blocks = format!(
        r#"
[[targets]]
id = "mapped"
kind = "webhook"
url = "http://[::ffff:127.0.0.1]:{{port}}/answers"
secret = "{OUT_SECRET}"
"#
    );
    let receiver = Receiver::start(Some(OUT_SECRET)).await.unwrap();
    let blocks = blocks.replace("{port}", &receiver.addr().port().to_string());
    let app = spawn(asking(&["mapped"], &blocks)).await;
    ask(&app, "mapped-ok", "through the mapped address").await;
    let r = receiver.clone();
    eventually("the answer through ::ffff:127.0.0.1", || r.accepted() == 1).await;
    assert!(receiver.received()[0].signature_ok);
    assert!(app.dead_letters().await.is_empty());
    app.shutdown().await;
    receiver.shutdown();
}
