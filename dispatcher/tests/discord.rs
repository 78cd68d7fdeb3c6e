//! The Discord senders against the Discord stand-in and the real Redis, through
//! `Target::deliver`: a long answer arrives split and in order; `@everyone` in an answer pings
//! nobody; a 429's `retry_after` is obeyed — no request reaches the route before it has elapsed,
//! whichever dispatcher process asks (the state is in Redis); a global 429 holds every route of
//! the bot; a bucket that Discord's headers say is spent is not used until it resets; an
//! interaction token past its life, or refused by Discord, gives way to a channel message through
//! the bot, replying to the question.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use dispatcher::target::{self, Context, Target, Verdict};
use shared::config::{SourceConfig, TargetConfig};
use shared::envelope::{
    Answer, AnswerPayload, ChatType, Conversation, Destination, DispatchJob, ReplyHandle, Timings,
};
use standins::discord::{route, DiscordStandin, BOT_TOKEN};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::Fixture;
use uuid::Uuid;

struct Env {
    ctx: Context,
    d: DiscordStandin,
    kit: Fixture,
}

impl Env {
    async fn new() -> Self {
        let kit = Fixture::new("dc");
        Self {
            ctx: context(&kit),
            d: DiscordStandin::start().await.unwrap(),
            kit,
        }
    }

    fn webhook(&self) -> Arc<dyn Target> {
        let t: TargetConfig = toml::from_str(&format!(
            "id = \"dw\"\nkind = \"discord_webhook\"\nurl = \"{}\"",
            self.d.webhook_url()
        ))
        .unwrap();
        target::build(&t).unwrap()
    }

    fn reply(&self) -> Arc<dyn Target> {
        let s: SourceConfig = toml::from_str(&format!(
            "id = \"discord\"\napp = \"a\"\nreply = true\nplatform = \"discord\"\npublic_key = \"{}\"\nbot_token = \"{BOT_TOKEN}\"\napi_base = \"{}\"",
            self.d.public_key_hex(),
            self.d.api_base()
        ))
        .unwrap();
        target::build_reply(&s).unwrap().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.d.shutdown();
    }
}

/// A delivery context on the fixture's prefix: each one stands for a dispatcher process.
fn context(kit: &Fixture) -> Context {
    Context {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        store: kit.store(),
        allow_private: vec!["127.0.0.0/8".parse().unwrap()],
        pace: None,
    }
}

fn job_to(text: &str, destination: Destination) -> DispatchJob {
    let event_id = Uuid::now_v7();
    DispatchJob {
        id: DispatchJob::job_id_of_event(event_id, &destination),
        destination,
        payload: AnswerPayload {
            event_id,
            source: "discord".into(),
            platform: "discord".into(),
            conversation: Conversation {
                chat_id: "c1".into(),
                chat_type: ChatType::Group,
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
            event: None,
        },
        attempts: vec![],
        replay_of: None,
        parts_left: None,
    }
}

fn job(text: &str) -> DispatchJob {
    job_to(text, Destination::Target { id: "dw".into() })
}

fn long_text(words: usize) -> String {
    (0..words)
        .map(|i| format!("w{i:05}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn a_long_answer_arrives_split_in_order_and_everyone_is_never_pinged() {
    let env = Env::new().await;
    let t = env.webhook();
    let text = format!("@everyone listen: {}", long_text(700));
    let out = t.deliver(&job(&text), &env.ctx).await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    let got = env.d.messages_to(route::WEBHOOK);
    assert_eq!(got.len(), 3, "4 900 characters in parts of at most 2 000");
    let mut words = Vec::new();
    for (i, m) in got.iter().enumerate() {
        assert!(m.content.chars().count() <= 2000);
        assert!(
            m.content.starts_with(&format!("({}/3) ", i + 1)),
            "{}",
            &m.content[..20]
        );
        assert_eq!(m.body["allowed_mentions"]["parse"], serde_json::json!([]));
        assert!(!m.pinged_everyone, "part {i} pinged @everyone");
        words.extend(m.content.split_whitespace().skip(1).map(str::to_owned));
    }
    let want: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words, want, "every word, once, in order");
}

#[tokio::test]
async fn a_429_is_obeyed_by_every_process_until_its_retry_after_elapsed() {
    let env = Env::new().await;
    let t = env.webhook();
    let other_process = context(&env.kit);
    let retry_after = Duration::from_millis(1_500);
    env.d.rate_limit_next(route::WEBHOOK, 1, retry_after, false);
    let first = t.deliver(&job("one"), &env.ctx).await;
    let limited_at = Instant::now();
    let Verdict::Wait { wait } = first.verdict else {
        panic!("a 429 is a wait, not a failure: {:?}", first.verdict)
    };
    assert!(
        wait >= Duration::from_millis(1_400) && wait <= retry_after,
        "{wait:?}"
    );
    assert_eq!(env.d.request_times(route::WEBHOOK).len(), 1);

    // Until retry_after has elapsed, no process sends on the route: each is told to wait.
    let mut asked = 0;
    let delivered = loop {
        let ctx = if asked % 2 == 0 {
            &env.ctx
        } else {
            &other_process
        };
        asked += 1;
        let out = t.deliver(&job("two"), ctx).await;
        match out.verdict {
            Verdict::Delivered => break Instant::now(),
            Verdict::Wait { wait } => {
                assert!(!out.sent, "a wait from the bucket sends nothing");
                assert!(wait <= retry_after);
                // What the delivery loop does: park the job for the wait it was given.
                tokio::time::sleep(wait).await;
            }
            other => panic!("{other:?}"),
        }
        assert!(
            limited_at.elapsed() < Duration::from_secs(10),
            "never delivered"
        );
    };
    assert!(asked >= 1);
    let times = env.d.request_times(route::WEBHOOK);
    assert_eq!(times.len(), 2, "one 429, then one delivery");
    assert!(
        times[1].duration_since(times[0]) >= Duration::from_millis(1_450),
        "the retry came {:?} after the 429",
        times[1].duration_since(times[0])
    );
    assert!(delivered.duration_since(limited_at) >= Duration::from_millis(1_400));
    assert_eq!(env.d.early_requests(), vec![], "nothing before retry_after");
}

#[tokio::test]
async fn a_spent_bucket_is_not_used_until_it_resets() {
    let env = Env::new().await;
    let t = env.webhook();
    env.d.set_limit(2, Duration::from_secs(2));
    for text in ["a", "b"] {
        assert_eq!(
            t.deliver(&job(text), &env.ctx).await.verdict,
            Verdict::Delivered
        );
    }
    // Discord said remaining 0: the third waits for the reset without asking Discord.
    let third = t.deliver(&job("c"), &env.ctx).await;
    assert!(
        matches!(third.verdict, Verdict::Wait { wait } if wait <= Duration::from_secs(2)),
        "{:?}",
        third.verdict
    );
    assert!(!third.sent);
    assert_eq!(
        env.d.request_times(route::WEBHOOK).len(),
        2,
        "no 429 provoked"
    );
    assert_eq!(env.d.early_requests(), vec![]);
}

#[tokio::test]
async fn past_the_interaction_token_the_bot_replies_in_the_channel_and_a_global_429_holds_the_bot()
{
    let env = Env::new().await;
    let r = env.reply();
    let handle = |channel: &str| ReplyHandle::Discord {
        application_id: standins::discord::APPLICATION_ID.into(),
        channel_id: channel.into(),
        interaction_token: Some("expired-token".into()),
        // Issued 15 minutes ago: past its life.
        token_expires_at: Some(chrono::Utc::now().timestamp_millis() - 1_000),
        message_id: Some("555".into()),
    };
    let out = r
        .deliver(
            &job_to(
                "late @everyone",
                Destination::Reply {
                    handle: handle("c7"),
                },
            ),
            &env.ctx,
        )
        .await;
    assert_eq!(out.verdict, Verdict::Delivered, "{:?}", out.attempt);
    let got = env.d.messages_to(route::CHANNEL);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].channel_id.as_str(),
            got[0].reply_to.as_deref(),
            got[0].content.as_str()
        ),
        ("c7", Some("555"), "late @everyone")
    );
    assert!(!got[0].pinged_everyone);
    assert!(env.d.messages_to(route::EDIT_ORIGINAL).is_empty());

    // A token Discord refuses before its time (an interaction it never saw acknowledged): the
    // edit gets 404, and the answer goes to the channel in the same delivery.
    let unknown = ReplyHandle::Discord {
        application_id: standins::discord::APPLICATION_ID.into(),
        channel_id: "c6".into(),
        interaction_token: Some("never-acknowledged".into()),
        token_expires_at: Some(chrono::Utc::now().timestamp_millis() + 600_000),
        message_id: None,
    };
    let out2 = r
        .deliver(
            &job_to("refused token", Destination::Reply { handle: unknown }),
            &env.ctx,
        )
        .await;
    assert_eq!(out2.verdict, Verdict::Delivered, "{:?}", out2.attempt);
    assert_eq!(env.d.request_times(route::EDIT_ORIGINAL).len(), 1);
    let got = env.d.messages_to(route::CHANNEL);
    assert_eq!(
        (
            got.len(),
            got[1].channel_id.as_str(),
            got[1].content.as_str()
        ),
        (2, "c6", "refused token")
    );

    // A global 429 on one channel holds the bot's messages to every channel.
    env.d
        .rate_limit_next(route::CHANNEL, 1, Duration::from_secs(1), true);
    let limited = r
        .deliver(
            &job_to(
                "x",
                Destination::Reply {
                    handle: handle("c8"),
                },
            ),
            &env.ctx,
        )
        .await;
    assert!(matches!(limited.verdict, Verdict::Wait { .. }));
    let elsewhere = r
        .deliver(
            &job_to(
                "y",
                Destination::Reply {
                    handle: handle("c9"),
                },
            ),
            &env.ctx,
        )
        .await;
    assert!(
        matches!(elsewhere.verdict, Verdict::Wait { .. }) && !elsewhere.sent,
        "{:?}",
        elsewhere.verdict
    );
    assert_eq!(env.d.request_times(route::CHANNEL).len(), 3);
    assert!(
        !format!("{:?}", out.attempt).contains(BOT_TOKEN),
        "no secret in the attempt"
    );
}
