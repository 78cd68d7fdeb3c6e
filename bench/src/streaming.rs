//! Scenario `streaming` (issue 15, the last bullet): how soon a user sees text. A worker and a
//! dispatcher (child processes) answer Telegram private chats through the platforms' stand-in,
//! with a Dify stand-in that writes each answer over `--dify-latency` (5 s) in `--chunks`
//! server-sent events. Two sources run side by side in the same run, each fed `--rate` events a
//! second, interleaved: `stream = true` (the reply grows: `sendMessage`, then edits) and
//! `stream = false` (the answer arrives whole). Each event is published straight to the work
//! queue, as the ingress does, and its acknowledgement is the broker's publish confirm — the
//! moment the ingress would answer the platform 2xx. From there, per event: Dify's first token
//! (when the stand-in sent the first chunk), the first visible text (the chat's first message
//! at the stand-in) and the full answer (the first time the chat showed exactly the answer).
//! The goal: the first text within 300 ms of Dify's first token, at p99.
use super::fixture::{Common, ConfigSpec, Fixture, DIFY_KEY};
use super::pipeline::{latency_text, parse_latency};
use super::procs::{self, ChildProcess};
use super::report::{self, Machine, Report, Section};
use super::stats::{self, Summary};
use shared::broker::Publish;
use shared::envelope::{encode, ChatType, Conversation, InboundEvent, ReplyHandle};
use shared::topology::Stage;
use shared::units::parse_duration;
use standins::dify::{DifyOptions, DifyStandin, Latency};
use standins::platforms::{api, creds, Message, PlatformStandin};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The Telegram sources' `secret_token` (no request reaches the ingress; the config needs it).
const TG_SECRET: &str = "bench-telegram-secret";
/// The goal of issue 15: first text within this long of Dify's first token, at p99.
const GOAL_MS: f64 = 300.0;

#[derive(Debug, Clone, clap::Args)]
pub struct StreamingArgs {
    /// Events per second fed to each of the two sources (streaming on, streaming off).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long the feed lasts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long Dify takes to write an answer: fixed or `a..b`.
    #[arg(long, default_value = "5s", value_parser = parse_latency)]
    pub dify_latency: Latency,
    /// Answer chunks Dify streams over that time.
    #[arg(long, default_value_t = 50)]
    pub chunks: usize,
    /// Characters of each answer.
    #[arg(long, default_value_t = 400)]
    pub answer_chars: usize,
    /// `worker.concurrency` and the app's `concurrency`.
    #[arg(long, default_value_t = 2048)]
    pub worker_concurrency: usize,
    /// `dispatcher.concurrency`.
    #[arg(long, default_value_t = 256)]
    pub dispatcher_concurrency: usize,
    /// Events fed first and left out of the figures.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// How long to wait for the last answers after the feed ends.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// The two sources of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Arm {
    On,
    Off,
}

impl Arm {
    fn source(self) -> &'static str {
        match self {
            Arm::On => "tg-stream",
            Arm::Off => "tg-whole",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Arm::On => "streaming on",
            Arm::Off => "streaming off",
        }
    }
}

/// One event fed, acknowledged by the broker.
#[derive(Debug, Clone)]
struct Fed {
    arm: Arm,
    chat: i64,
    query: String,
    due: Instant,
    acked: Instant,
}

impl Fed {
    /// The answer the Dify stand-in writes for it.
    fn answer(&self) -> String {
        format!("echo: {}", self.query)
    }
}

fn sources(p: &PlatformStandin) -> String {
    let source = |arm: Arm, stream: bool| {
        format!(
            "\n[[sources]]\nid = \"{id}\"\nplatform = \"telegram\"\napp = \"support\"\n\
             reply = true\nstream = {stream}\nsecret_token = \"{TG_SECRET}\"\n\
             bot_token = \"{token}\"\napi_base = \"{base}\"\n",
            id = arm.source(),
            token = creds::TELEGRAM_BOT_TOKEN,
            base = p.base_url(),
        )
    };
    source(Arm::On, true) + &source(Arm::Off, false)
}

pub async fn run(common: &Common, args: &StreamingArgs) -> anyhow::Result<Report> {
    let machine = Machine::now();
    let binary = procs::switchboard_binary(common.switchboard.as_deref())?;
    let dify = DifyStandin::start(DifyOptions {
        api_key: Some(DIFY_KEY.into()),
        latency: args.dify_latency,
        chunks: args.chunks,
        max_records: 1,
        ..Default::default()
    })
    .await?;
    let platform = PlatformStandin::start().await?;
    // Telegram: about one message (or edit) a second in a private chat.
    platform.set_limits(api::TELEGRAM, vec![(1, Duration::from_secs(1))]);
    let fixture = Fixture::start(common, "streaming", |_| ConfigSpec {
        dify_url: dify.base_url(),
        worker_concurrency: args.worker_concurrency,
        app_concurrency: args.worker_concurrency,
        dispatcher_concurrency: args.dispatcher_concurrency,
        extra: sources(&platform),
        ..Default::default()
    })
    .await?;
    let result = measure(common, args, &fixture, &binary, &dify, &platform, machine).await;
    fixture.cleanup().await;
    dify.shutdown();
    platform.shutdown();
    result
}

async fn start_roles(
    common: &Common,
    fixture: &Fixture,
    binary: &std::path::Path,
) -> anyhow::Result<Vec<ChildProcess>> {
    let mut roles = Vec::new();
    for role in ["worker", "dispatcher"] {
        roles.push(procs::spawn_role(
            binary,
            &fixture.config_path,
            role,
            &common.log_level,
            fixture.file(&format!("{role}.log")),
        )?);
    }
    for stage in [Stage::Work, Stage::Deliver] {
        fixture
            .wait_consumers(&fixture.stage_queue(stage), 1, Duration::from_secs(30))
            .await?;
    }
    Ok(roles)
}

async fn measure(
    common: &Common,
    args: &StreamingArgs,
    fixture: &Fixture,
    binary: &std::path::Path,
    dify: &DifyStandin,
    platform: &PlatformStandin,
    machine: Machine,
) -> anyhow::Result<Report> {
    let mut roles = start_roles(common, fixture, binary).await?;
    let ticks = procs::ticks_per_sec();
    let mut watched: Vec<(String, String)> = roles
        .iter()
        .map(|r| (r.name.clone(), r.pid().to_string()))
        .collect();
    watched.push(("bench (feed, Dify, Telegram)".into(), "self".into()));
    watched.extend(common.servers());
    let watch = procs::Watch::start(&watched);
    eprintln!(
        "bench streaming: {} events/s streamed and {} events/s whole for {:.0} s (+{:.0} s warm-up)",
        args.rate,
        args.rate,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    let started = Instant::now();
    let fed = feed(fixture, args).await?;
    let deadline = Instant::now() + args.drain_timeout;
    while answered(&fed, &platform.messages()) < fed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = started.elapsed();
    let usage = watch.finish(ticks);
    let mut alive = true;
    for r in &mut roles {
        alive &= r.running();
    }
    for r in roles {
        r.stop(Duration::from_secs(10)).await;
    }
    anyhow::ensure!(
        alive,
        "a role exited during the run (logs in {})",
        fixture.out.display()
    );
    let measured_from = started + args.warmup;
    let results = Results::of(
        &fed,
        &platform.messages(),
        &dify.first_tokens(),
        measured_from,
    );
    let mut report = Report::new("streaming", machine);
    results.tables(&mut report, args, &fed, drained);
    report.sections.push(report::resources(
        "Resources, from the start of the feed until the last answer (one process each)",
        &usage,
    ));
    results.checks(&mut report, platform.limited(api::TELEGRAM));
    report.note(format!(
        "the acknowledgement is the broker's publish confirm of the event (what the ingress \
         waits for before its 2xx); Telegram private chats, one per event, limited by the \
         stand-in to one message or edit a second; stream_interval 1s, stream_min_chars 20 \
         (the defaults); answers of {} characters; figures of events fed after the first {:.0} s",
        args.answer_chars + "echo: ".len(),
        args.warmup.as_secs_f64()
    ));
    report.figures = results.json(args, &usage);
    Ok(report)
}

/// Publishes the events at their due times (the two sources interleaved), each to the work
/// queue with a confirm, and notes when each was acknowledged.
async fn feed(fixture: &Fixture, args: &StreamingArgs) -> anyhow::Result<Vec<Fed>> {
    let queue = fixture.stage_queue(Stage::Work);
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate * 2.0) as u64;
    let t0 = Instant::now();
    let filler = "the quick brown fox jumps over the lazy dog ".repeat(args.answer_chars / 44 + 1);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        let arm = if k % 2 == 0 { Arm::On } else { Arm::Off };
        let chat = k as i64 + 1;
        let query = format!("bench {chat}: {filler}")
            .chars()
            .take(args.answer_chars)
            .collect::<String>();
        let due = t0 + Duration::from_secs_f64(k as f64 / (args.rate * 2.0));
        let body = encode(&event(&fixture.prefix, arm, chat, &query));
        let broker = fixture.services.broker.clone();
        let queue = queue.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            broker.publish(&queue, &body, Publish::default()).await?;
            anyhow::Ok(Fed {
                arm,
                chat,
                query,
                due,
                acked: Instant::now(),
            })
        });
    }
    let mut fed = Vec::with_capacity(total as usize);
    while let Some(joined) = tasks.join_next().await {
        fed.push(joined??);
    }
    Ok(fed)
}

/// A Telegram private message of `chat` to the source of `arm`, as the ingress would publish it.
fn event(prefix: &str, arm: Arm, chat: i64, query: &str) -> InboundEvent {
    InboundEvent {
        id: uuid::Uuid::now_v7(),
        source: arm.source().into(),
        platform: "telegram".into(),
        dedup_key: format!("{prefix}-{chat}"),
        kind: "message".into(),
        received_at: chrono::Utc::now(),
        conversation: Conversation {
            chat_id: chat.to_string(),
            chat_type: ChatType::Single,
            sender_id: chat.to_string(),
            sender_name: None,
            thread_id: None,
        },
        text: query.to_owned(),
        reply: Some(ReplyHandle::Telegram {
            chat_id: chat,
            message_id: Some(1),
        }),
        payload: serde_json::Value::Null,
        attempts: Vec::new(),
        replay_of: None,
    }
}

/// How many chats show (or showed) their exact answer.
fn answered(fed: &[Fed], messages: &[Message]) -> usize {
    let want: HashMap<String, String> = fed
        .iter()
        .map(|f| (f.chat.to_string(), f.answer()))
        .collect();
    let mut done: std::collections::HashSet<&str> = Default::default();
    for m in messages {
        if want.get(&m.target) == Some(&m.text) {
            done.insert(m.target.as_str());
        }
    }
    done.len()
}

/// What one chat showed, and when (pure over the stand-in's records).
#[derive(Debug, Default, Clone, Copy)]
struct Shown {
    first_text: Option<Instant>,
    full_answer: Option<Instant>,
    messages: usize,
    edits: usize,
}

fn shown_per_chat(fed: &[Fed], messages: &[Message]) -> HashMap<i64, Shown> {
    let answers: HashMap<String, (i64, String)> = fed
        .iter()
        .map(|f| (f.chat.to_string(), (f.chat, f.answer())))
        .collect();
    let mut out: HashMap<i64, Shown> = HashMap::new();
    for m in messages {
        let Some((chat, answer)) = answers.get(&m.target) else {
            continue;
        };
        let s = out.entry(*chat).or_default();
        if m.api == api::TELEGRAM {
            s.messages += 1;
            s.first_text = Some(s.first_text.map_or(m.at, |t| t.min(m.at)));
        } else {
            s.edits += 1;
        }
        if &m.text == answer {
            s.full_answer = Some(s.full_answer.map_or(m.at, |t| t.min(m.at)));
        }
    }
    out
}

/// `a - b` in microseconds (negative when `a` is earlier).
fn micros(a: Instant, b: Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_micros() as i64,
        None => -(b.saturating_duration_since(a).as_micros() as i64),
    }
}

/// The figures of one source.
#[derive(Debug, Clone, Copy)]
struct ArmFigures {
    first_token: Summary,
    first_text: Summary,
    text_after_token: Summary,
    full_answer: Summary,
    /// Events measured, chats with more than one message, chats that never showed the answer.
    measured: usize,
    extra_messages: usize,
    unanswered: usize,
    edits_per_reply: f64,
}

struct Results {
    on: ArmFigures,
    off: ArmFigures,
    ack: Summary,
}

impl Results {
    fn of(
        fed: &[Fed],
        messages: &[Message],
        first_tokens: &HashMap<String, Instant>,
        measured_from: Instant,
    ) -> Self {
        let shown = shown_per_chat(fed, messages);
        let measured: Vec<&Fed> = fed.iter().filter(|f| f.due >= measured_from).collect();
        let arm = |arm: Arm| {
            let events: Vec<&Fed> = measured.iter().copied().filter(|f| f.arm == arm).collect();
            arm_figures(&events, &shown, first_tokens)
        };
        let mut ack: Vec<i64> = measured.iter().map(|f| micros(f.acked, f.due)).collect();
        Self {
            on: arm(Arm::On),
            off: arm(Arm::Off),
            ack: stats::summarize(&mut ack),
        }
    }

    fn tables(&self, report: &mut Report, args: &StreamingArgs, fed: &[Fed], drained: Duration) {
        let mut feed = Section::new(
            "Feed (each source at the rate; acknowledgement = the broker's publish confirm)",
            &[
                "per source/s",
                "events",
                "confirm p50 ms",
                "confirm p99 ms",
                "all answered after",
            ],
        );
        feed.row(vec![
            report::count(args.rate),
            fed.len().to_string(),
            report::ms(self.ack.p50_ms),
            report::ms(self.ack.p99_ms),
            format!("{:.1} s", drained.as_secs_f64()),
        ]);
        report.sections.push(feed);
        let mut lat = Section::new(
            &format!(
                "From the event's acknowledgement (Dify {}, {} chunks)",
                latency_text(args.dify_latency),
                args.chunks
            ),
            &["", "count", "p50 ms", "p99 ms", "max ms", "mean ms"],
        );
        for (arm, f) in [(Arm::On, &self.on), (Arm::Off, &self.off)] {
            for (what, s) in [
                ("Dify's first token", f.first_token),
                ("first visible text", f.first_text),
                ("first text − Dify's first token", f.text_after_token),
                ("full answer", f.full_answer),
            ] {
                lat.row(row(&format!("{}: {what}", arm.label()), s));
            }
        }
        report.sections.push(lat);
        let mut chats = Section::new(
            "Messages per reply (at the Telegram stand-in)",
            &[
                "",
                "events",
                "edits per reply",
                "more than one message",
                "never the answer",
            ],
        );
        for (arm, f) in [(Arm::On, &self.on), (Arm::Off, &self.off)] {
            chats.row(vec![
                arm.label().into(),
                f.measured.to_string(),
                format!("{:.1}", f.edits_per_reply),
                f.extra_messages.to_string(),
                f.unanswered.to_string(),
            ]);
        }
        report.sections.push(chats);
    }

    fn checks(&self, report: &mut Report, limited: usize) {
        let p99 = self.on.text_after_token.p99_ms;
        report.check(
            "first text after Dify's first token, streaming on, p99",
            &format!("≤ {GOAL_MS:.0} ms"),
            format!("{p99:.0} ms"),
            p99 <= GOAL_MS && self.on.text_after_token.count > 0,
        );
        for (arm, f) in [(Arm::On, &self.on), (Arm::Off, &self.off)] {
            report.check(
                &format!(
                    "{}: one message per reply, ending with the answer",
                    arm.label()
                ),
                "every reply",
                format!(
                    "{} of {} ({} with more, {} never the answer)",
                    f.measured - f.extra_messages - f.unanswered,
                    f.measured,
                    f.extra_messages,
                    f.unanswered
                ),
                f.extra_messages == 0 && f.unanswered == 0 && f.measured > 0,
            );
        }
        report.check(
            "sends and edits within Telegram's per-chat limit",
            "0 refused",
            format!("{limited} refused"),
            limited == 0,
        );
    }

    fn json(
        &self,
        args: &StreamingArgs,
        usage: &[(String, Option<procs::Usage>)],
    ) -> serde_json::Value {
        let arm = |f: &ArmFigures| {
            serde_json::json!({
                "dify_first_token": f.first_token,
                "first_text": f.first_text,
                "first_text_after_first_token": f.text_after_token,
                "full_answer": f.full_answer,
                "measured": f.measured,
                "more_than_one_message": f.extra_messages,
                "never_the_answer": f.unanswered,
                "edits_per_reply": f.edits_per_reply,
            })
        };
        serde_json::json!({
            "rate_per_source": args.rate,
            "dify_latency": latency_text(args.dify_latency),
            "chunks": args.chunks,
            "confirm": self.ack,
            "streaming_on": arm(&self.on),
            "streaming_off": arm(&self.off),
            "resources": report::resources_json(usage),
        })
    }
}

fn row(name: &str, s: Summary) -> Vec<String> {
    vec![
        name.into(),
        s.count.to_string(),
        report::ms(s.p50_ms),
        report::ms(s.p99_ms),
        report::ms(s.max_ms),
        report::ms(s.mean_ms),
    ]
}

/// The figures of one source's measured events (pure).
fn arm_figures(
    events: &[&Fed],
    shown: &HashMap<i64, Shown>,
    first_tokens: &HashMap<String, Instant>,
) -> ArmFigures {
    let (mut token, mut text, mut after, mut full) = (vec![], vec![], vec![], vec![]);
    let (mut extra, mut unanswered, mut edits) = (0, 0, 0);
    for f in events {
        let s = shown.get(&f.chat).copied().unwrap_or_default();
        let first_token = first_tokens.get(&f.query).copied();
        if let Some(t) = first_token {
            token.push(micros(t, f.acked));
        }
        if let Some(t) = s.first_text {
            text.push(micros(t, f.acked));
            if let Some(ft) = first_token {
                after.push(micros(t, ft));
            }
        }
        match s.full_answer {
            Some(t) => full.push(micros(t, f.acked)),
            None => unanswered += 1,
        }
        extra += usize::from(s.messages > 1);
        edits += s.edits;
    }
    ArmFigures {
        first_token: stats::summarize(&mut token),
        first_text: stats::summarize(&mut text),
        text_after_token: stats::summarize(&mut after),
        full_answer: stats::summarize(&mut full),
        measured: events.len(),
        extra_messages: extra,
        unanswered,
        edits_per_reply: edits as f64 / events.len().max(1) as f64,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn message(api: &'static str, chat: i64, text: &str, at: Instant) -> Message {
        Message {
            api,
            target: chat.to_string(),
            text: text.into(),
            thread: None,
            reply_to: None,
            body: serde_json::Value::Null,
            at,
        }
    }

    #[test]
    fn first_text_and_full_answer_are_read_from_what_each_chat_showed() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let fed = |arm, chat, query: &str| Fed {
            arm,
            chat,
            query: query.into(),
            due: t,
            acked: t,
        };
        let events = [fed(Arm::On, 1, "abc"), fed(Arm::Off, 2, "xyz")];
        let messages = [
            message(api::TELEGRAM, 1, "echo", ms(300)),
            message(api::TELEGRAM_EDIT, 1, "echo: ab", ms(1300)),
            message(api::TELEGRAM_EDIT, 1, "echo: abc", ms(2300)),
            message(api::TELEGRAM, 2, "echo: xyz", ms(5100)),
        ];
        let tokens = HashMap::from([("abc".to_owned(), ms(100)), ("xyz".to_owned(), ms(100))]);
        let shown = shown_per_chat(&events, &messages);
        let on = arm_figures(&[&events[0]], &shown, &tokens);
        assert_eq!(on.first_token.p99_ms, 100.0);
        assert_eq!(on.first_text.p99_ms, 300.0);
        assert_eq!(on.text_after_token.p99_ms, 200.0);
        assert_eq!(on.full_answer.p99_ms, 2300.0);
        assert_eq!((on.extra_messages, on.unanswered), (0, 0));
        assert_eq!(on.edits_per_reply, 2.0);
        let off = arm_figures(&[&events[1]], &shown, &tokens);
        assert_eq!(off.first_text.p99_ms, 5100.0);
        assert_eq!(off.full_answer.p99_ms, 5100.0);
        assert_eq!(answered(&events, &messages), 2);
        assert_eq!(answered(&events, &messages[..3]), 1);
    }
}
