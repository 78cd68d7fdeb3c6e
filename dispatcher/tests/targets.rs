//! Every target kind and reply channel against the platform stand-in and the real Redis, through
//! `Target::deliver` with a client that follows no redirect: each rendering is accepted (and its
//! signature verified) by the stand-in; each errcode class gets its verdict; a long answer
//! arrives split and in order; a retry after a failed part does not post the earlier parts again;
//! an expired access token is fetched again exactly once and the send retried once; concurrent
//! deliveries fetch one token; no secret reaches an attempt record.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use deadpool_redis::redis;
use dispatcher::target::{self, parts, Context, Target, Verdict};
use shared::config::{SourceConfig, TargetConfig};
use shared::envelope::{
    Answer, AnswerPayload, ChatType, Conversation, Destination, DispatchJob, ReplyHandle, Timings,
};
use standins::platforms::{api, creds, PlatformStandin, Scripted};
use std::sync::Arc;
use std::time::Duration;
use testkit::{keys, Fixture};
use uuid::Uuid;

/// A store on the test's own prefix, the platform stand-in and a delivery context; dropping it
/// stops the stand-in and removes the prefix's keys (also when the test panics).
struct Env {
    ctx: Context,
    p: PlatformStandin,
    kit: Fixture,
}

impl Env {
    async fn new() -> Self {
        let kit = Fixture::new("t");
        let store = kit.store();
        let http = reqwest::Client::builder()
            // A 3xx is a failed attempt, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            ctx: Context {
                http,
                store,
                // The stand-ins are on loopback.
                allow_private: vec!["127.0.0.0/8".parse().unwrap()],
                pace: None,
            },
            p: PlatformStandin::start().await.unwrap(),
            kit,
        }
    }

    fn target(&self, toml_text: &str) -> Arc<dyn Target> {
        let text = toml_text.replace("{base}", &self.p.base_url());
        let t: TargetConfig = toml::from_str(&format!("id = \"t\"\n{text}")).unwrap();
        target::build(&t).unwrap()
    }

    fn reply(&self, toml_text: &str) -> Arc<dyn Target> {
        let text = toml_text.replace("{base}", &self.p.base_url());
        let s: SourceConfig =
            toml::from_str(&format!("id = \"src\"\napp = \"a\"\nreply = true\n{text}")).unwrap();
        target::build_reply(&s).unwrap().unwrap()
    }

    async fn keys(&self) -> Vec<String> {
        assert_eq!(self.kit.prefix(), self.ctx.store.prefix());
        keys(&self.ctx.store).await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.p.shutdown();
    }
}

fn job_to(text: &str, destination: Destination, chat_type: ChatType) -> DispatchJob {
    let event_id = Uuid::now_v7();
    DispatchJob {
        id: DispatchJob::job_id_of_event(event_id, &destination),
        destination,
        payload: AnswerPayload {
            event: None,
            event_id,
            source: "src".into(),
            platform: "test".into(),
            conversation: Conversation {
                chat_id: "c1".into(),
                chat_type,
                sender_id: "u1".into(),
                sender_name: None,
                thread_id: None,
            },
            query: "q".into(),
            answer: Answer {
                text: text.into(),
                ..Default::default()
            },
            timings: Timings::default(),
        },
        attempts: vec![],
        replay_of: None,
        parts_left: None,
    }
}

fn job(text: &str) -> DispatchJob {
    job_to(
        text,
        Destination::Target { id: "t".into() },
        ChatType::Group,
    )
}

fn reply_job(text: &str, handle: ReplyHandle, chat_type: ChatType) -> DispatchJob {
    job_to(text, Destination::Reply { handle }, chat_type)
}

/// A text of `words` numbered words, so order and completeness can be checked.
fn long_text(words: usize) -> String {
    (0..words)
        .map(|i| format!("w{i:05}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The parts' words, without their `(i/n) ` prefixes.
fn unnumbered(texts: &[String]) -> String {
    texts
        .iter()
        .map(|t| t.split_once(") ").map_or(t.as_str(), |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn each_kind_renders_and_the_platform_accepts_it() {
    let env = Env::new().await;
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("kind = \"wecom_robot\"\nurl = \"{}\"\nmentioned_list = [\"@all\"]", env.p.wecom_robot_url()), api::WECOM_ROBOT, creds::WECOM_ROBOT_KEY),
        (format!("kind = \"wecom_robot\"\nurl = \"{}\"\nmsgtype = \"markdown\"", env.p.wecom_robot_url()), api::WECOM_ROBOT, creds::WECOM_ROBOT_KEY),
        (
            format!("kind = \"dingtalk_robot\"\nurl = \"{}\"\nsecret = \"{}\"\nat_mobiles = [\"138\"]", env.p.dingtalk_robot_url(), creds::DINGTALK_ROBOT_SECRET),
            api::DINGTALK_ROBOT,
            creds::DINGTALK_ROBOT_TOKEN,
        ),
        (
            format!("kind = \"dingtalk_robot\"\nurl = \"{}\"\nsecret = \"{}\"\nmsgtype = \"markdown\"", env.p.dingtalk_robot_url(), creds::DINGTALK_ROBOT_SECRET),
            api::DINGTALK_ROBOT,
            creds::DINGTALK_ROBOT_TOKEN,
        ),
        (format!("kind = \"feishu_bot\"\nurl = \"{}\"\nsecret = \"{}\"", env.p.feishu_hook_url(true), creds::FEISHU_SECRET), api::FEISHU_BOT, creds::FEISHU_HOOK),
        (
            format!("kind = \"feishu_bot\"\nurl = \"{}\"\nsecret = \"{}\"\nmsg_type = \"post\"\ntitle = \"A\"", env.p.feishu_hook_url(true), creds::FEISHU_SECRET),
            api::FEISHU_BOT,
            creds::FEISHU_HOOK,
        ),
        (format!("kind = \"lark_bot\"\nurl = \"{}\"\nmsg_type = \"interactive\"", env.p.feishu_hook_url(false)), api::FEISHU_BOT, creds::FEISHU_HOOK_UNSIGNED),
        (format!("kind = \"slack\"\nurl = \"{}\"", env.p.slack_webhook_url()), api::SLACK_WEBHOOK, creds::SLACK_HOOK_PATH),
        (
            format!("kind = \"slack\"\nbot_token = \"{}\"\nchannel = \"C42\"\nthread_ts = \"1700.1\"\napi_base = \"{}\"", creds::SLACK_BOT_TOKEN, env.p.slack_api_base()),
            api::SLACK_API,
            "C42",
        ),
        (format!("kind = \"rocketchat\"\nurl = \"{}\"\nalias = \"Switchboard\"\nemoji = \":robot:\"", env.p.rocketchat_url()), api::ROCKETCHAT, "hookid"),
        (
            format!("kind = \"telegram\"\nbot_token = \"{}\"\nchat_id = -100777\napi_base = \"{{base}}\"", creds::TELEGRAM_BOT_TOKEN),
            api::TELEGRAM,
            "-100777",
        ),
    ];
    for (i, (config, api_name, target)) in cases.iter().enumerate() {
        let t = env.target(config);
        let text = format!("answer {i}: 你好 😀\nline two");
        let out = t.deliver(&job(&text), &env.ctx).await;
        assert_eq!(
            out.verdict,
            Verdict::Delivered,
            "{config}: {:?}",
            out.attempt
        );
        let got = env.p.messages_to(api_name);
        let last = got.last().unwrap();
        assert_eq!(
            (last.text.as_str(), last.target.as_str()),
            (text.as_str(), *target),
            "{config}"
        );
    }
    // Rendering details the stand-in kept.
    let wecom = env.p.messages_to(api::WECOM_ROBOT);
    assert_eq!(
        wecom[0].body["text"]["mentioned_list"],
        serde_json::json!(["@all"])
    );
    assert_eq!(wecom[1].body["msgtype"], "markdown");
    let slack = env.p.messages_to(api::SLACK_API);
    assert_eq!(slack[0].thread.as_deref(), Some("1700.1"));
    let rc = env.p.messages_to(api::ROCKETCHAT);
    assert_eq!(
        (rc[0].body["alias"].as_str(), rc[0].body["emoji"].as_str()),
        (Some("Switchboard"), Some(":robot:"))
    );
    // One-part answers leave no progress behind.
    assert!(env.keys().await.is_empty());
}

#[tokio::test]
async fn errcode_classes_get_their_verdicts() {
    let env = Env::new().await;
    let p = &env.p;
    let wecom = env.target(&format!(
        "kind = \"wecom_robot\"\nurl = \"{}\"",
        p.wecom_robot_url()
    ));
    let ding = env.target(&format!(
        "kind = \"dingtalk_robot\"\nurl = \"{}\"\nsecret = \"{}\"",
        p.dingtalk_robot_url(),
        creds::DINGTALK_ROBOT_SECRET
    ));
    let feishu = env.target(&format!(
        "kind = \"feishu_bot\"\nurl = \"{}\"\nsecret = \"{}\"",
        p.feishu_hook_url(true),
        creds::FEISHU_SECRET
    ));
    let s = Duration::from_secs;
    let verdict = |t: &Arc<dyn Target>| {
        let t = t.clone();
        let ctx = env.ctx.clone();
        async move { t.deliver(&job("hi"), &ctx).await.verdict }
    };

    // WeCom: 20 a minute, the 21st is rate limited (a wait, not a failure); -1 busy retries.
    for _ in 0..20 {
        assert_eq!(verdict(&wecom).await, Verdict::Delivered);
    }
    assert_eq!(verdict(&wecom).await, Verdict::Wait { wait: s(60) });
    p.fail_next(api::WECOM_ROBOT, 1, Scripted::errcode(-1));
    assert_eq!(verdict(&wecom).await, Verdict::Retry { retry_after: None });
    let bad_key = env.target(&format!(
        "kind = \"wecom_robot\"\nurl = \"{}/cgi-bin/webhook/send?key=nope\"",
        p.base_url()
    ));
    assert_eq!(verdict(&bad_key).await, Verdict::Permanent);

    // DingTalk: 20 a minute, then muted for 10 minutes; a bad signature is permanent.
    for _ in 0..20 {
        assert_eq!(verdict(&ding).await, Verdict::Delivered);
    }
    assert_eq!(verdict(&ding).await, Verdict::Wait { wait: s(600) });
    assert_eq!(
        verdict(&ding).await,
        Verdict::Wait { wait: s(600) },
        "still muted"
    );
    let bad_sign = env.target(&format!(
        "kind = \"dingtalk_robot\"\nurl = \"{}\"\nsecret = \"SECwrong\"",
        p.dingtalk_robot_url()
    ));
    assert_eq!(verdict(&bad_sign).await, Verdict::Permanent);

    // Feishu: 5 a second, the 6th at once is rate limited; a bad signature is permanent.
    let mut verdicts = Vec::new();
    for _ in 0..6 {
        verdicts.push(verdict(&feishu).await);
    }
    assert!(
        verdicts.contains(&Verdict::Wait { wait: s(10) }),
        "{verdicts:?}"
    );
    let bad_sign = env.target(&format!(
        "kind = \"feishu_bot\"\nurl = \"{}\"\nsecret = \"wrong\"",
        p.feishu_hook_url(true)
    ));
    assert_eq!(verdict(&bad_sign).await, Verdict::Permanent);

    // Slack: 429 with Retry-After; a bad token is permanent.
    let slack = env.target(&format!(
        "kind = \"slack\"\nurl = \"{}\"",
        p.slack_webhook_url()
    ));
    p.fail_next(api::SLACK_WEBHOOK, 1, Scripted::status(429, Some(3)));
    assert_eq!(
        verdict(&slack).await,
        Verdict::Retry {
            retry_after: Some(s(3))
        }
    );
    let slack_bot = env.target(&format!(
        "kind = \"slack\"\nbot_token = \"xoxb-wrong\"\nchannel = \"C1\"\napi_base = \"{}\"",
        p.slack_api_base()
    ));
    assert_eq!(verdict(&slack_bot).await, Verdict::Permanent);

    // Telegram: 429 with parameters.retry_after; a bad token is permanent.
    let tg = env.target(&format!(
        "kind = \"telegram\"\nbot_token = \"{}\"\nchat_id = 5\napi_base = \"{}\"",
        creds::TELEGRAM_BOT_TOKEN,
        p.base_url()
    ));
    p.fail_next(
        api::TELEGRAM,
        1,
        Scripted {
            status: 429,
            body: serde_json::json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 4", "parameters": {"retry_after": 4}}),
            retry_after: None,
        },
    );
    assert_eq!(
        verdict(&tg).await,
        Verdict::Retry {
            retry_after: Some(s(4))
        }
    );
    let tg_bad = env.target(&format!(
        "kind = \"telegram\"\nbot_token = \"9:wrong\"\nchat_id = 5\napi_base = \"{}\"",
        p.base_url()
    ));
    assert_eq!(verdict(&tg_bad).await, Verdict::Permanent);

    // Rocket.Chat: an unknown hook is permanent; a 5xx retries.
    let rc = env.target(&format!(
        "kind = \"rocketchat\"\nurl = \"{}/hooks/x/y\"",
        p.base_url()
    ));
    assert_eq!(verdict(&rc).await, Verdict::Permanent);
    let rc = env.target(&format!(
        "kind = \"rocketchat\"\nurl = \"{}\"",
        p.rocketchat_url()
    ));
    p.fail_next(api::ROCKETCHAT, 1, Scripted::status(503, None));
    assert_eq!(verdict(&rc).await, Verdict::Retry { retry_after: None });
}

#[tokio::test]
async fn a_long_answer_is_split_and_received_in_order() {
    let env = Env::new().await;
    let cases = [
        // (config, api, how the limit counts)
        (
            format!(
                "kind = \"wecom_robot\"\nurl = \"{}\"",
                env.p.wecom_robot_url()
            ),
            api::WECOM_ROBOT,
        ),
        (
            format!(
                "kind = \"telegram\"\nbot_token = \"{}\"\nchat_id = 5\napi_base = \"{}\"",
                creds::TELEGRAM_BOT_TOKEN,
                env.p.base_url()
            ),
            api::TELEGRAM,
        ),
        (
            format!(
                "kind = \"feishu_bot\"\nurl = \"{}\"\nsecret = \"{}\"\nmsg_type = \"post\"",
                env.p.feishu_hook_url(true),
                creds::FEISHU_SECRET
            ),
            api::FEISHU_BOT,
        ),
    ];
    for (config, api_name) in cases {
        let t = env.target(&config);
        // Non-ASCII and 4-byte emoji so that byte, UTF-16 and character limits all matter.
        let text = format!("{}\n\n{}", long_text(3000), "é😀 ".repeat(900));
        let job = job(&text);
        let out = t.deliver(&job, &env.ctx).await;
        assert_eq!(
            out.verdict,
            Verdict::Delivered,
            "{api_name}: {:?}",
            out.attempt
        );
        let texts = env.p.texts(api_name);
        let n = texts.len();
        assert!(n >= 2, "{api_name}: {n} parts");
        assert_eq!(
            t.message_count(&job),
            n,
            "what the limiter is told matches what was sent"
        );
        for (i, t) in texts.iter().enumerate() {
            assert!(
                t.starts_with(&format!("({}/{n}) ", i + 1)),
                "{api_name}: part {i} {t:.20}"
            );
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let joined = unnumbered(&texts);
        let got: Vec<&str> = joined.split_whitespace().collect();
        assert_eq!(got, words, "{api_name}: every word once, in order");
        // Progress says every part was delivered.
        let mut c = env.ctx.store.conn().await.unwrap();
        let done: Option<usize> = redis::cmd("GET")
            .arg(parts::progress_key(&env.ctx, &job))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(done, Some(n));
    }
}

#[tokio::test]
async fn a_retry_after_a_failed_part_does_not_resend_earlier_parts() {
    let env = Env::new().await;
    let t = env.target(&format!(
        "kind = \"wecom_robot\"\nurl = \"{}\"",
        env.p.wecom_robot_url()
    ));
    let job = job(&long_text(1000)); // ~7 000 bytes: 4 parts of 2 048.
                                     // The robot's limit lets only the first part through.
    env.p
        .set_limits(api::WECOM_ROBOT, vec![(1, Duration::from_secs(60))]);
    let out = t.deliver(&job, &env.ctx).await;
    assert_eq!(
        out.verdict,
        Verdict::Wait {
            wait: Duration::from_secs(60)
        }
    );
    assert!(
        out.attempt
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("part 2/"),
        "{:?}",
        out.attempt
    );
    assert_eq!(env.p.texts(api::WECOM_ROBOT).len(), 1);
    // A transient failure on the retry still does not resend part 1.
    env.p.set_limits(api::WECOM_ROBOT, vec![]);
    env.p.fail_next(api::WECOM_ROBOT, 1, Scripted::errcode(-1));
    assert_eq!(
        t.deliver(&job, &env.ctx).await.verdict,
        Verdict::Retry { retry_after: None }
    );
    let out = t.deliver(&job, &env.ctx).await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    let texts = env.p.texts(api::WECOM_ROBOT);
    let n = texts.len();
    assert!(n >= 3);
    for (i, t) in texts.iter().enumerate() {
        assert!(
            t.starts_with(&format!("({}/{n}) ", i + 1)),
            "each part once, in order: {t:.12}"
        );
    }
    assert_eq!(unnumbered(&texts), long_text(1000));
    // Delivered again (a broker redelivery): nothing more is posted.
    assert_eq!(t.deliver(&job, &env.ctx).await.verdict, Verdict::Delivered);
    assert_eq!(env.p.texts(api::WECOM_ROBOT).len(), n);
}

#[tokio::test]
async fn a_paced_answer_stops_where_its_limit_says_and_continues_with_only_the_parts_left() {
    let mut env = Env::new().await;
    let t = env.target(&format!(
        "kind = \"wecom_robot\"\nurl = \"{}\"",
        env.p.wecom_robot_url()
    ));
    // 2 a minute, evenly paced: the first part is the job's own admission, the second finds
    // the limit fresh, the third must wait about 30 s.
    let rate = shared::units::Rate {
        count: 2,
        per: Duration::from_secs(60),
    };
    let limiter = dispatcher::ratelimit::RateLimiter::new(env.ctx.store.clone());
    env.ctx.pace = Some(parts::Pace::new(limiter, "t".into(), vec![rate]));
    let text = long_text(1000); // ~7 000 bytes: 4 parts of 2 048.
    let job = job(&text);
    let all = t.parts(&text);
    assert_eq!(all.len(), 4);
    let out = t.deliver(&job, &env.ctx).await;
    let Verdict::Continue { wait, left } = out.verdict.clone() else {
        panic!("{:?}", out.verdict)
    };
    assert!(
        wait > Duration::from_secs(20) && wait <= Duration::from_secs(31),
        "{wait:?}"
    );
    assert!(out.sent, "parts went out");
    assert_eq!(left.sent, 2);
    assert_eq!(left.parts, all[2..].to_vec(), "exactly the parts not sent");
    assert_eq!(env.p.texts(api::WECOM_ROBOT), all[..2].to_vec());
    // The job travels on without its answer; its size is the parts left, not the answer.
    let continued = job.clone().continued(left);
    assert_eq!(t.message_count(&continued), 2);
    let size = shared::envelope::encode(&continued).len();
    let mut bare = job.clone();
    bare.payload.answer.text.clear();
    let carried: usize = all[2..].iter().map(String::len).sum();
    assert!(
        size <= shared::envelope::encode(&bare).len() + carried + 64,
        "continued job {size} bytes: the bare job and the {carried} bytes left, nothing more"
    );
    // Its next delivery (admitted afresh by the loop) sends the rest, in order, each once.
    env.ctx.pace = None;
    let out = t.deliver(&continued, &env.ctx).await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    assert_eq!(env.p.texts(api::WECOM_ROBOT), all);
    // A redelivered copy of either message posts nothing more.
    for copy in [&job, &continued] {
        assert_eq!(t.deliver(copy, &env.ctx).await.verdict, Verdict::Delivered);
    }
    assert_eq!(env.p.texts(api::WECOM_ROBOT).len(), 4);
}

fn wecom_source() -> String {
    format!(
        "platform = \"wecom\"\nreceive_id = \"{}\"\ncorp_secret = \"{}\"\nagent_id = 1000002\napi_base = \"{{base}}\"",
        creds::WECOM_CORP_ID,
        creds::WECOM_CORP_SECRET
    )
}

/// Issue 11 item 13: the token endpoint (`api_base` from the config) goes through the SSRF
/// guard like every delivery. The stand-in is on an IP literal in loopback; without
/// `allow_private` nothing is sent to it, the token fetch included.
#[tokio::test]
async fn a_token_endpoint_on_a_forbidden_address_is_never_asked() {
    let mut env = Env::new().await;
    env.ctx.allow_private.clear();
    let handle = ReplyHandle::Wecom {
        to_user: "zhang".into(),
        agent_id: None,
    };
    let wecom = env.reply(&wecom_source());
    let out = wecom
        .deliver(&reply_job("hi", handle, ChatType::Single), &env.ctx)
        .await;
    assert_eq!(out.verdict, Verdict::Permanent, "{:?}", out.attempt);
    let error = out.attempt.error.clone().unwrap_or_default();
    assert!(
        error.contains("SSRF") && error.contains("loopback"),
        "{error}"
    );
    assert!(!out.sent, "nothing was sent: the breaker hears nothing");
    assert_eq!(
        env.p.token_fetches("wecom"),
        0,
        "the token endpoint was not asked"
    );
    assert_eq!(env.p.requests(api::WECOM_APP), 0);
    // Feishu's and DingTalk's token endpoints alike.
    let feishu = env.reply(&format!(
        "platform = \"feishu\"\napp_id = \"{}\"\napp_secret = \"{}\"\napi_base = \"{{base}}\"",
        creds::FEISHU_APP_ID,
        creds::FEISHU_APP_SECRET
    ));
    let handle = ReplyHandle::Feishu {
        message_id: "om_q1".into(),
        chat_id: "oc_1".into(),
        lark: false,
    };
    let out = feishu
        .deliver(&reply_job("hi", handle, ChatType::Single), &env.ctx)
        .await;
    assert_eq!(out.verdict, Verdict::Permanent, "{:?}", out.attempt);
    assert_eq!(env.p.token_fetches("feishu"), 0);
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once_and_the_send_retried() {
    let env = Env::new().await;
    let wecom = env.reply(&wecom_source());
    let handle = ReplyHandle::Wecom {
        to_user: "zhang".into(),
        agent_id: None,
    };
    let send = |text: &str| reply_job(text, handle.clone(), ChatType::Single);
    assert_eq!(
        wecom.deliver(&send("one"), &env.ctx).await.verdict,
        Verdict::Delivered
    );
    assert_eq!(
        wecom.deliver(&send("two"), &env.ctx).await.verdict,
        Verdict::Delivered
    );
    assert_eq!(env.p.token_fetches("wecom"), 1, "the token is cached");
    env.p.expire_tokens();
    let out = wecom.deliver(&send("three"), &env.ctx).await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    assert_eq!(env.p.token_fetches("wecom"), 2, "exactly one refresh");
    assert_eq!(
        env.p.requests(api::WECOM_APP),
        4,
        "the refused send was retried once"
    );
    assert_eq!(env.p.texts(api::WECOM_APP), ["one", "two", "three"]);

    // Feishu: the same through tenant_access_token and the reply API.
    let feishu = env.reply(&format!(
        "platform = \"feishu\"\napp_id = \"{}\"\napp_secret = \"{}\"\napi_base = \"{{base}}\"",
        creds::FEISHU_APP_ID,
        creds::FEISHU_APP_SECRET
    ));
    let handle = ReplyHandle::Feishu {
        message_id: "om_q1".into(),
        chat_id: "oc_1".into(),
        lark: false,
    };
    assert_eq!(
        feishu
            .deliver(&reply_job("a", handle.clone(), ChatType::Group), &env.ctx)
            .await
            .verdict,
        Verdict::Delivered
    );
    env.p.expire_tokens();
    assert_eq!(
        feishu
            .deliver(&reply_job("b", handle, ChatType::Group), &env.ctx)
            .await
            .verdict,
        Verdict::Delivered
    );
    assert_eq!(env.p.token_fetches("feishu"), 2);
    let replies = env.p.messages_to(api::FEISHU_REPLY);
    assert_eq!(
        replies
            .iter()
            .map(|m| (m.text.as_str(), m.reply_to.as_deref()))
            .collect::<Vec<_>>(),
        [("a", Some("om_q1")), ("b", Some("om_q1"))]
    );

    // A token refused again right after the refresh: one failed attempt, no loop.
    env.p.fail_next(api::WECOM_APP, 2, Scripted::errcode(40014));
    let out = wecom.deliver(&send("four"), &env.ctx).await;
    assert_eq!(out.verdict, Verdict::Retry { retry_after: None });
    assert_eq!(env.p.token_fetches("wecom"), 3);
}

#[tokio::test]
async fn concurrent_deliveries_fetch_one_token() {
    let env = Env::new().await;
    let wecom = env.reply(&wecom_source());
    // A second pool on the same prefix: as another dispatcher process would be.
    let other = Context {
        http: env.ctx.http.clone(),
        store: env.kit.store(),
        allow_private: env.ctx.allow_private.clone(),
        pace: None,
    };
    let mut tasks = Vec::new();
    for i in 0..12 {
        let t = wecom.clone();
        let ctx = if i % 2 == 0 {
            env.ctx.clone()
        } else {
            other.clone()
        };
        let handle = ReplyHandle::Wecom {
            to_user: format!("u{i}"),
            agent_id: None,
        };
        let job = reply_job(&format!("m{i}"), handle, ChatType::Single);
        tasks.push(tokio::spawn(
            async move { t.deliver(&job, &ctx).await.verdict },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Verdict::Delivered);
    }
    assert_eq!(
        env.p.token_fetches("wecom"),
        1,
        "one process fetched, the others waited for its token"
    );
    assert_eq!(env.p.texts(api::WECOM_APP).len(), 12);
}

#[tokio::test]
async fn replies_reach_the_originating_conversation() {
    let env = Env::new().await;
    let p = &env.p;

    // DingTalk: the session webhook while valid; after it expires, the robot API.
    let ding = env.reply(&format!(
        "platform = \"dingtalk\"\napp_key = \"{}\"\napp_secret = \"{}\"\napi_base = \"{{base}}\"\noapi_base = \"{{base}}\"",
        creds::DINGTALK_APP_KEY,
        creds::DINGTALK_APP_SECRET
    ));
    let session = |valid_for: i64, staff: Option<&str>| {
        let (url, expires_at) = p.dingtalk_session(chrono::Duration::seconds(valid_for));
        ReplyHandle::Dingtalk {
            session_webhook: Some(url),
            session_webhook_expires_at: Some(expires_at),
            conversation_id: "cidGroup".into(),
            robot_code: None,
            sender_staff_id: staff.map(str::to_owned),
        }
    };
    let out = ding
        .deliver(
            &reply_job(
                "via session",
                session(600, Some("staff1")),
                ChatType::Single,
            ),
            &env.ctx,
        )
        .await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    assert_eq!(p.texts(api::DINGTALK_SESSION), ["via session"]);
    let out = ding
        .deliver(
            &reply_job(
                "to the sender",
                session(-1, Some("staff1")),
                ChatType::Single,
            ),
            &env.ctx,
        )
        .await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    let out = ding
        .deliver(
            &reply_job("to the group", session(-1, None), ChatType::Group),
            &env.ctx,
        )
        .await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    let api_msgs: Vec<(String, String)> = p
        .messages_to(api::DINGTALK_API)
        .into_iter()
        .map(|m| (m.target, m.text))
        .collect();
    assert_eq!(
        api_msgs,
        [
            ("staff1".to_owned(), "to the sender".to_owned()),
            ("cidGroup".to_owned(), "to the group".to_owned())
        ]
    );
    assert_eq!(p.token_fetches("dingtalk"), 1);
    p.expire_tokens();
    let out = ding
        .deliver(
            &reply_job("after expiry", session(-1, None), ChatType::Group),
            &env.ctx,
        )
        .await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    assert_eq!(p.token_fetches("dingtalk"), 2);

    // Slack: in the message's thread, or through a slash command's response_url.
    let slack = env.reply(&format!(
        "platform = \"slack\"\nbot_token = \"{}\"\napi_base = \"{}\"",
        creds::SLACK_BOT_TOKEN,
        p.slack_api_base()
    ));
    let thread = ReplyHandle::Slack {
        channel: "C9".into(),
        thread_ts: Some("1700000000.000001".into()),
        response_url: None,
    };
    assert_eq!(
        slack
            .deliver(&reply_job("in thread", thread, ChatType::Group), &env.ctx)
            .await
            .verdict,
        Verdict::Delivered
    );
    let m = p.messages_to(api::SLACK_API);
    assert_eq!(
        (m[0].target.as_str(), m[0].thread.as_deref()),
        ("C9", Some("1700000000.000001"))
    );
    let command = ReplyHandle::Slack {
        channel: "C9".into(),
        thread_ts: None,
        response_url: Some(p.slack_response_url("cmd1")),
    };
    assert_eq!(
        slack
            .deliver(
                &reply_job("to the command", command, ChatType::Group),
                &env.ctx
            )
            .await
            .verdict,
        Verdict::Delivered
    );
    assert_eq!(p.texts(api::SLACK_RESPONSE_URL), ["to the command"]);

    // Telegram: a reply to the question.
    let tg = env.reply(&format!(
        "platform = \"telegram\"\nbot_token = \"{}\"\napi_base = \"{{base}}\"",
        creds::TELEGRAM_BOT_TOKEN
    ));
    let handle = ReplyHandle::Telegram {
        chat_id: -1001,
        message_id: Some(77),
    };
    assert_eq!(
        tg.deliver(&reply_job("reply", handle, ChatType::Group), &env.ctx)
            .await
            .verdict,
        Verdict::Delivered
    );
    let m = p.messages_to(api::TELEGRAM);
    assert_eq!(
        (m[0].target.as_str(), m[0].reply_to.as_deref()),
        ("-1001", Some("77"))
    );

    // A handle of another platform is refused for good, without a request.
    let wrong = reply_job(
        "x",
        ReplyHandle::Telegram {
            chat_id: 1,
            message_id: None,
        },
        ChatType::Single,
    );
    assert_eq!(
        slack.deliver(&wrong, &env.ctx).await.verdict,
        Verdict::Permanent
    );
}

#[tokio::test]
async fn no_secret_reaches_an_attempt_record() {
    let env = Env::new().await;
    // A bot token in the URL path, a robot key in the query, and nothing listening.
    let closed = "http://127.0.0.1:9";
    let tg = env.target(&format!(
        "kind = \"telegram\"\nbot_token = \"{}\"\nchat_id = 5\napi_base = \"{closed}\"",
        creds::TELEGRAM_BOT_TOKEN
    ));
    let robot = env.target(&format!(
        "kind = \"wecom_robot\"\nurl = \"{closed}/cgi-bin/webhook/send?key={}\"",
        creds::WECOM_ROBOT_KEY
    ));
    let wecom = env.reply(&wecom_source().replace("{base}", closed));
    let handle = ReplyHandle::Wecom {
        to_user: "u".into(),
        agent_id: None,
    };
    let outcomes = [
        tg.deliver(&job("x"), &env.ctx).await,
        robot.deliver(&job("x"), &env.ctx).await,
        wecom
            .deliver(&reply_job("x", handle, ChatType::Single), &env.ctx)
            .await,
    ];
    for out in outcomes {
        assert_eq!(out.verdict, Verdict::Retry { retry_after: None });
        let record = serde_json::to_string(&out.attempt).unwrap();
        for secret in [
            creds::TELEGRAM_BOT_TOKEN,
            creds::WECOM_ROBOT_KEY,
            creds::WECOM_CORP_SECRET,
        ] {
            assert!(!record.contains(secret), "{record}");
        }
        assert!(out.attempt.error.is_some(), "{record}");
    }
}

/// Access tokens at rest: with `[redis] encryption_key` the cached token is ciphertext in Redis;
/// after a rotation (the old key in `previous_encryption_keys`) the cached token is still used
/// without a new fetch; a process whose keys cannot open it fetches a fresh one instead of
/// sending ciphertext or failing, and an expired token is still invalidated.
#[tokio::test]
async fn cached_access_tokens_are_encrypted_and_survive_a_key_rotation() {
    const K1: &str = "k1-0123456789abcdef0123456789abcdef";
    const K2: &str = "k2-0123456789abcdef0123456789abcdef";
    let env = Env::new().await;
    let wecom = env.reply(&wecom_source());
    let with = |key: Option<&str>, previous: &[&str]| Context {
        store: env.kit.store_with_keys(key, previous),
        ..env.ctx.clone()
    };
    let send = |text: &str| {
        reply_job(
            text,
            ReplyHandle::Wecom {
                to_user: "zhang".into(),
                agent_id: None,
            },
            ChatType::Single,
        )
    };
    let k1 = with(Some(K1), &[]);
    assert_eq!(
        wecom.deliver(&send("one"), &k1).await.verdict,
        Verdict::Delivered
    );
    let mut conn = env.kit.store().conn().await.unwrap();
    let token_keys: Vec<String> = keys(&env.kit.store())
        .await
        .into_iter()
        .filter(|k| k.contains(":token:") && !k.ends_with(":lock"))
        .collect();
    assert_eq!(token_keys.len(), 1, "{token_keys:?}");
    let raw: String = redis::cmd("GET")
        .arg(&token_keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.starts_with("enc1:"), "{raw}");
    assert!(!raw.contains("wecom-token"), "{raw}");

    let rotated = with(Some(K2), &[K1]);
    assert_eq!(
        wecom.deliver(&send("two"), &rotated).await.verdict,
        Verdict::Delivered
    );
    assert_eq!(
        env.p.token_fetches("wecom"),
        1,
        "the old key still reads the token"
    );

    // Refused by the platform: invalidated (the stored form differs from the token) and
    // fetched again once.
    env.p.expire_tokens();
    assert_eq!(
        wecom.deliver(&send("three"), &rotated).await.verdict,
        Verdict::Delivered
    );
    assert_eq!(env.p.token_fetches("wecom"), 2);

    // Keys that cannot open it: a fresh token, never the ciphertext sent as a token.
    let wrong = with(Some(K1), &[]);
    assert_eq!(
        wecom.deliver(&send("four"), &wrong).await.verdict,
        Verdict::Delivered
    );
    assert_eq!(env.p.token_fetches("wecom"), 3);
    assert_eq!(env.p.texts(api::WECOM_APP), ["one", "two", "three", "four"]);
}

/// A token endpoint that answers without end (a hostile or broken `api_base`) is read only up
/// to its cap: the attempt fails as an unreadable token answer, nothing is cached.
#[tokio::test]
async fn an_endless_token_answer_is_read_only_up_to_its_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = sock.read(&mut head).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                // 64 MiB of whitespace unless the reader stops first.
                for _ in 0..1024 {
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let wecom = env.reply(&wecom_source().replace("{base}", &format!("http://{addr}")));
    let job = reply_job(
        "hi",
        ReplyHandle::Wecom {
            to_user: "zhang".into(),
            agent_id: None,
        },
        ChatType::Single,
    );
    let started = std::time::Instant::now();
    let out = wecom.deliver(&job, &env.ctx).await;
    assert_eq!(
        out.verdict,
        Verdict::Retry { retry_after: None },
        "{:?}",
        out.attempt
    );
    let error = out.attempt.error.unwrap_or_default();
    assert!(error.contains("token answer unreadable"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(env.keys().await.iter().all(|k| !k.contains(":token:")));
    server.abort();
}
