//! Scenario `dispatcher` (issues 5 and 18, "Measured"). Throughput: first a bare lapin consumer
//! in this process drains N pre-loaded webhook jobs from the deliver queue, acking each (the
//! broker's own consume-and-ack rate, with the dispatcher's prefetch); then, `--rounds` times,
//! the ceiling (`bench post-ceiling`, its own process: consume with the same prefetch, POST each
//! job signed to a receiver like the fast one, ack after the 2xx; see `post_ceiling`) and one
//! `switchboard dispatcher` process each deliver N fresh jobs to a fast local receiver,
//! alternating. Each rate is taken over the steady middle (10 %–90 %) of its arrivals; the
//! rounds' rates are averaged, and each round's pair is reported too. The dispatcher is compared
//! with the ceiling (the goal) and with the bare consumer. Accuracy: jobs for one target with a
//! scaled-down limit (`5/2s` by default) go through two dispatcher processes sharing it; the
//! busiest window of the limit's length at the receiver must hold no more than the limit.
use super::fixture::{
    collect_arrivals, commands_between, redis_commands, Arrival, Common, ConfigSpec, Fixture,
    OUT_SECRET,
};
use super::pipeline::per_item_row;
use super::procs::{self, ChildProcess, Usage};
use super::report::{self, Machine, Report, Section};
use super::stats::{self, Window};
use anyhow::Context as _;
use shared::envelope::{
    encode, Answer, AnswerPayload, ChatType, Conversation, Destination, DispatchJob, Timings,
};
use shared::topology::Stage;
use shared::units::{parse_duration, Rate};
use standins::receiver::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherArgs {
    /// Jobs of the throughput part (each pre-loaded three times: bare consumer, ceiling,
    /// dispatcher).
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// `dispatcher.concurrency` (its prefetch), also the bare consumer's and the ceiling's.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// The scaled-down limit of the accuracy part (`N/<duration>`).
    #[arg(long, default_value = "5/2s", value_parser = Rate::parse)]
    pub limit: Rate,
    /// Jobs of the accuracy part.
    #[arg(long, default_value_t = 30)]
    pub limited_jobs: usize,
    /// Dispatcher processes sharing the limit.
    #[arg(long, default_value_t = 2)]
    pub limited_processes: usize,
    /// Dispatcher processes delivering the throughput part (docs/PERFORMANCE.md, "scaling out").
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Give up waiting for deliveries after this long (each part).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The ceiling and the dispatcher each run this many times, alternating, each on fresh
    /// jobs; their rates are averaged: a single pair moves by tens of percent with the machine's
    /// load (docs/PERFORMANCE.md), and drift then weighs on both alike.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

pub async fn run(common: &Common, args: &DispatcherArgs) -> anyhow::Result<Report> {
    let machine = Machine::now();
    let binary = procs::switchboard_binary(common.switchboard.as_deref())?;
    let fast = Receiver::start(Some(OUT_SECRET)).await?;
    let limited = Receiver::start(Some(OUT_SECRET)).await?;
    let limit_text = format!("{}/{}ms", args.limit.count, args.limit.per.as_millis());
    let fixture = Fixture::start(common, "dispatcher", |_| ConfigSpec {
        receiver_url: fast.url("/answers"),
        dispatcher_concurrency: args.concurrency,
        extra: format!(
            "\n[[targets]]\nid = \"limited\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{OUT_SECRET}\"\nrate = \"{limit_text}\"\n",
            limited.url("/limited")
        ),
        ..Default::default()
    })
    .await?;
    let result = measure(common, args, &fixture, &binary, &fast, &limited, machine).await;
    fixture.cleanup().await;
    fast.shutdown();
    limited.shutdown();
    result
}

/// `n` jobs for target `target`, each its own event.
fn jobs(prefix: &str, target: &str, n: usize) -> Vec<Vec<u8>> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            let key = format!("{prefix}-{target}-{i}");
            let event_id = uuid::Uuid::now_v7();
            let destination = Destination::Target { id: target.into() };
            let job = DispatchJob {
                id: DispatchJob::job_id_of_event(event_id, &destination),
                destination,
                payload: AnswerPayload {
                    event: None,
                    event_id,
                    source: "hooks".into(),
                    platform: "standard".into(),
                    conversation: Conversation {
                        chat_id: key.clone(),
                        chat_type: ChatType::Single,
                        sender_id: key.clone(),
                        sender_name: None,
                        thread_id: None,
                    },
                    query: format!("bench {key}"),
                    answer: Answer {
                        text: format!("echo: bench {key}"),
                        conversation_id: Some(uuid::Uuid::now_v7().to_string()),
                        message_id: Some(uuid::Uuid::now_v7().to_string()),
                        task_id: Some(uuid::Uuid::now_v7().to_string()),
                        ..Default::default()
                    },
                    // As a worker fills them: each job carries its event's moments.
                    timings: Timings {
                        received_at: Some(now - chrono::Duration::milliseconds(1_200)),
                        dify_started_at: Some(now - chrono::Duration::milliseconds(1_150)),
                        dify_ms: Some(1_100),
                        answered_at: Some(now),
                    },
                },
                attempts: Vec::new(),
                replay_of: None,
                parts_left: None,
            };
            encode(&job)
        })
        .collect()
}

/// Offsets of arrival instants from the first, sorted.
fn offsets(mut at: Vec<Instant>) -> Vec<Duration> {
    at.sort_unstable();
    let Some(first) = at.first().copied() else {
        return Vec::new();
    };
    at.into_iter().map(|t| t - first).collect()
}

async fn wait_count(what: impl Fn() -> usize, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while what() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop_all(roles: Vec<ChildProcess>) -> bool {
    let mut alive = true;
    for mut r in roles {
        alive &= r.running();
        r.stop(Duration::from_secs(10)).await;
    }
    alive
}

async fn measure(
    common: &Common,
    args: &DispatcherArgs,
    fixture: &Fixture,
    binary: &std::path::Path,
    fast: &Receiver,
    limited: &Receiver,
    machine: Machine,
) -> anyhow::Result<Report> {
    let deliver = fixture.stage_queue(Stage::Deliver);
    let n = args.jobs;

    // The broker's own consume-and-ack rate.
    eprintln!("bench dispatcher: pre-loading {n} jobs for the bare consumer");
    fixture
        .publish_all(&deliver, jobs(&fixture.prefix, "crm", n), 256)
        .await?;
    let arrivals = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let stop = CancellationToken::new();
    let channel = fixture.channel().await?;
    let ticks = procs::ticks_per_sec();
    let mut watched = vec![("bench (bare consumer)".to_owned(), "self".to_owned())];
    watched.extend(common.servers());
    let watch = procs::Watch::start(&watched);
    let prefetch = args.concurrency.min(u16::MAX as usize) as u16;
    let consumer = tokio::spawn({
        let (arrivals, stop, queue) = (arrivals.clone(), stop.clone(), deliver.clone());
        // The same prefetch as the dispatcher's.
        collect_arrivals(channel, queue, prefetch, false, arrivals, stop)
    });
    wait_count(|| arrivals.lock().map_or(0, |a| a.len()), n, args.timeout).await;
    let bare_usage = watch.finish(ticks);
    stop.cancel();
    let _ = consumer.await;
    let bare = offsets(
        arrivals
            .lock()
            .map(|a| a.iter().map(|x: &Arrival| x.at).collect())
            .unwrap_or_default(),
    );
    let bare_rate = stats::steady_rate(&bare, 0.1, 0.9).unwrap_or(0.0);
    eprintln!("bench dispatcher: bare consume-and-ack {bare_rate:.0}/s");

    // The ceiling (consume, POST, ack, in a process of its own) and the dispatcher, alternating.
    let procs_n = args.processes.max(1);
    let mut rounds: Vec<Round> = Vec::new();
    let mut ceiling_once: Option<stats::PerItem> = None;
    let (mut ceiling_usage_last, mut one_usage, mut commands) = (Vec::new(), Vec::new(), None);
    for round in 1..=args.rounds.max(1) {
        eprintln!(
            "bench dispatcher: round {round}: pre-loading {n} jobs for the POST-and-ack ceiling"
        );
        fixture
            .publish_all(&deliver, jobs(&fixture.prefix, "crm", n), 256)
            .await?;
        let ceiling = post_ceiling_part(common, args, fixture, &deliver, ticks, round).await?;
        eprintln!(
            "bench dispatcher: round {round}: POST-and-ack ceiling {:.0}/s",
            ceiling.rate
        );
        match &mut ceiling_once {
            Some(once) => once.add(&ceiling.deliveries),
            None => ceiling_once = Some(ceiling.deliveries),
        }
        eprintln!(
            "bench dispatcher: round {round}: pre-loading {n} jobs for {procs_n} dispatcher process(es)"
        );
        fixture
            .publish_all(&deliver, jobs(&fixture.prefix, "crm", n), 256)
            .await?;
        let one = dispatcher_part(common, args, fixture, binary, fast, ticks, round).await?;
        eprintln!(
            "bench dispatcher: round {round}: {procs_n} dispatcher process(es) {:.0}/s",
            one.rate
        );
        rounds.push(Round {
            ceiling_rate: ceiling.rate,
            ceiling_cpu: cpu_of(ceiling.usage.iter().take(1)),
            rate: one.rate,
            cpu: cpu_of(one.usage.iter().take(procs_n)),
        });
        ceiling_usage_last = ceiling.usage;
        one_usage = one.usage;
        // The first round's: the commands per delivery do not change from round to round.
        commands.get_or_insert(one.commands);
    }
    let commands = commands.unwrap_or_default();
    let ceiling_rate = mean(rounds.iter().map(|r| r.ceiling_rate));
    let rate = mean(rounds.iter().map(|r| r.rate));
    let ratio = stats::ratio(rate, bare_rate);
    let to_ceiling = stats::ratio(rate, ceiling_rate);
    let ceiling_once = ceiling_once.unwrap_or_else(|| stats::per_item(0, []));
    let deliveries = stats::per_item(
        n * rounds.len(),
        fast.accepted_per_id().into_values().map(u64::from),
    );
    let usage: Option<Usage> = one_usage.first().and_then(|(_, u)| *u);
    let ceiling_usage = ceiling_usage_last.first().and_then(|(_, u)| *u);

    // Two dispatchers sharing one limited target, on a queue with nothing left of the first part.
    fixture.purge_stage(Stage::Deliver).await?;
    let m = args.limited_jobs;
    fixture
        .publish_all(&deliver, jobs(&fixture.prefix, "limited", m), 64)
        .await?;
    eprintln!(
        "bench dispatcher: {m} jobs through {} dispatchers sharing {}/{:?}",
        args.limited_processes, args.limit.count, args.limit.per
    );
    let mut roles = Vec::new();
    for i in 0..args.limited_processes {
        roles.push(procs::spawn_role(
            binary,
            &fixture.config_path,
            "dispatcher",
            &common.log_level,
            fixture.file(&format!("dispatcher-limited-{i}.log")),
        )?);
    }
    let expected = args
        .limit
        .per
        .mul_f64(m as f64 / f64::from(args.limit.count));
    wait_count(
        || limited.accepted(),
        m,
        expected * 3 + args.timeout.min(Duration::from_secs(30)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive = stop_all(roles).await;
    anyhow::ensure!(alive, "a limited dispatcher exited during the run");
    let arrivals = offsets(limited.received().into_iter().map(|r| r.at).collect());
    let busiest: Window = stats::busiest_window(&arrivals, args.limit.per);
    let limited_once = stats::per_item(m, limited.accepted_per_id().into_values().map(u64::from));
    let span = arrivals.last().copied().unwrap_or_default();
    let achieved = if span.is_zero() {
        0.0
    } else {
        (arrivals.len().saturating_sub(1)) as f64 / span.as_secs_f64()
            * args.limit.per.as_secs_f64()
    };

    let mut report = Report::new("dispatcher", machine);
    let mut t = Section::new(
        &format!(
            "Throughput: {} webhook jobs to a fast local receiver (prefetch {} for both; ceiling and dispatcher: mean of {} rounds, CPU and RSS of the last)",
            report::count(n as f64),
            args.concurrency,
            rounds.len()
        ),
        &[
            "consumer",
            "per second, steady (10–90 %)",
            "× ceiling",
            "× bare",
            "CPU %",
            "RSS MB (end / peak)",
        ],
    );
    t.row(vec![
        "bare lapin consume + ack (in the bench process)".into(),
        report::count(bare_rate),
        report::ratio(stats::ratio(bare_rate, ceiling_rate)),
        "1.00".into(),
        "–".into(),
        "–".into(),
    ]);
    t.row(vec![
        "ceiling: consume + signed POST + ack (`bench post-ceiling`)".into(),
        report::count(ceiling_rate),
        "1.00".into(),
        report::ratio(stats::ratio(ceiling_rate, bare_rate)),
        ceiling_usage.map_or("–".into(), |u| format!("{:.0}", u.cpu_percent)),
        ceiling_usage.map_or("–".into(), |u| {
            format!("{:.0} / {:.0}", u.rss_mb, u.peak_rss_mb)
        }),
    ]);
    t.row(vec![
        match procs_n {
            1 => "one switchboard dispatcher process".to_owned(),
            k => format!("{k} switchboard dispatcher processes (CPU, RSS: the first)"),
        },
        report::count(rate),
        report::ratio(to_ceiling),
        report::ratio(ratio),
        usage.map_or("–".into(), |u| format!("{:.0}", u.cpu_percent)),
        usage.map_or("–".into(), |u| {
            format!("{:.0} / {:.0}", u.rss_mb, u.peak_rss_mb)
        }),
    ]);
    report.sections.push(t);
    report.sections.push(rounds_section(&rounds));
    let mut acc = Section::new(
        &format!(
            "Rate limit accuracy: {m} jobs, {} dispatcher processes, limit {} per {} ms",
            args.limited_processes,
            args.limit.count,
            args.limit.per.as_millis()
        ),
        &[
            "delivered",
            "busiest window (arrivals)",
            "window starts at",
            "achieved per window (mean)",
        ],
    );
    acc.row(vec![
        arrivals.len().to_string(),
        busiest.count.to_string(),
        format!("{:.0} ms", busiest.start.as_secs_f64() * 1000.0),
        format!("{achieved:.2}"),
    ]);
    report.sections.push(acc);
    report.sections.push(report::resources(
        "Resources while the bare consumer drained the queue",
        &bare_usage,
    ));
    report.sections.push(report::resources(
        "Resources while the ceiling delivered (last round)",
        &ceiling_usage_last,
    ));
    report.sections.push(report::resources(
        "Resources while the dispatcher(s) delivered (last round)",
        &one_usage,
    ));
    report.sections.push(report::redis_commands(
        "Redis commands while one dispatcher delivered (first round; all clients of this Redis)",
        &commands,
        n,
        "delivery",
    ));
    let mut once = Section::new(
        "Once per job (the receivers' counts)",
        &["", "expected", "seen", "total", "repeated", "per item"],
    );
    once.row(per_item_row("deliveries per job (ceiling)", &ceiling_once));
    once.row(per_item_row(
        "deliveries per job (throughput part)",
        &deliveries,
    ));
    once.row(per_item_row(
        "deliveries per job (limited part)",
        &limited_once,
    ));
    report.sections.push(once);
    report.check(
        "dispatcher rate / POST-and-ack ceiling's rate",
        "≥ 0.70",
        report::ratio(to_ceiling),
        to_ceiling.is_some_and(|r| r >= 0.7) && deliveries.seen == deliveries.expected,
    );
    report.check(
        "dispatcher rate / broker consume-and-ack rate",
        "≥ 0.50",
        report::ratio(ratio),
        ratio.is_some_and(|r| r >= 0.5) && deliveries.seen == deliveries.expected,
    );
    report.check(
        "busiest window at the receiver",
        &format!(
            "≤ {} per {} ms",
            args.limit.count,
            args.limit.per.as_millis()
        ),
        busiest.count.to_string(),
        busiest.count <= args.limit.count as usize && arrivals.len() == m,
    );
    report.check(
        "deliveries per job",
        "exactly 1.000",
        format!(
            "{:.3} / {:.3}",
            deliveries.per_item(),
            limited_once.per_item()
        ),
        deliveries.exactly_once() && limited_once.exactly_once(),
    );
    report.figures = serde_json::json!({
        "jobs": n,
        "processes": procs_n,
        "prefetch": args.concurrency,
        "bare_consume_ack_per_sec": bare_rate,
        "dispatcher_per_sec": rate,
        "ratio": ratio,
        "post_ceiling_per_sec": ceiling_rate,
        "ratio_to_ceiling": to_ceiling,
        "rounds": rounds.iter().map(Round::json).collect::<Vec<_>>(),
        "post_ceiling": ceiling_usage,
        "resources_ceiling": report::resources_json(&ceiling_usage_last),
        "ceiling_deliveries": ceiling_once,
        "dispatcher": usage,
        "resources_bare": report::resources_json(&bare_usage),
        "resources_dispatcher": report::resources_json(&one_usage),
        "redis_commands": commands,
        "deliveries": deliveries,
        "limit": {"count": args.limit.count, "per_ms": args.limit.per.as_millis() as u64},
        "limited_jobs": m,
        "limited_processes": args.limited_processes,
        "limited_delivered": arrivals.len(),
        "busiest_window": busiest,
        "arrivals_ms": arrivals.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        "limited_deliveries": limited_once,
    });
    let _ = fixture
        .queue_state(&deliver)
        .await
        .context("deliver queue")?;
    Ok(report)
}

/// One round: the ceiling's and the dispatcher's rates and CPU, each on its own batch.
struct Round {
    ceiling_rate: f64,
    /// The ceiling's CPU, percent of one core.
    ceiling_cpu: Option<f64>,
    rate: f64,
    /// The dispatcher processes' CPU together, percent of one core.
    cpu: Option<f64>,
}

impl Round {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "post_ceiling_per_sec": self.ceiling_rate,
            "post_ceiling_cpu_us_per_delivery": cpu_per(self.ceiling_cpu, self.ceiling_rate),
            "dispatcher_per_sec": self.rate,
            "dispatcher_cpu_us_per_delivery": cpu_per(self.cpu, self.rate),
            "ratio_to_ceiling": stats::ratio(self.rate, self.ceiling_rate),
        })
    }
}

/// Microseconds of CPU per delivery: CPU (percent of one core) over the rate.
fn cpu_per(cpu_percent: Option<f64>, rate: f64) -> Option<f64> {
    let cpu = cpu_percent?;
    (rate > 0.0).then(|| cpu * 10_000.0 / rate)
}

/// The CPU of these processes together (none if any was not measured).
fn cpu_of<'a>(processes: impl Iterator<Item = &'a (String, Option<Usage>)>) -> Option<f64> {
    processes.map(|(_, u)| u.map(|u| u.cpu_percent)).sum()
}

/// A round's log name: `name` for the first, `name-round2`, … after it.
fn round_log(name: &str, round: usize) -> String {
    match round {
        1 => name.to_owned(),
        r => format!("{name}-round{r}"),
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, k) = xs.fold((0.0, 0usize), |(s, k), x| (s + x, k + 1));
    if k == 0 {
        0.0
    } else {
        sum / k as f64
    }
}

/// Each round's pair: how far one pair can be from another is what a single run cannot tell.
fn rounds_section(rounds: &[Round]) -> Section {
    let mut t = Section::new(
        "Rounds (ceiling, then dispatcher, each on fresh jobs)",
        &[
            "round",
            "ceiling /s",
            "ceiling CPU µs per delivery",
            "dispatcher /s",
            "dispatcher CPU µs per delivery",
            "× ceiling",
        ],
    );
    let us = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
    for (i, r) in rounds.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            report::count(r.ceiling_rate),
            us(cpu_per(r.ceiling_cpu, r.ceiling_rate)),
            report::count(r.rate),
            us(cpu_per(r.cpu, r.rate)),
            report::ratio(stats::ratio(r.rate, r.ceiling_rate)),
        ]);
    }
    t
}

/// What the dispatcher(s) did with one batch.
struct DispatcherRun {
    rate: f64,
    usage: Vec<(String, Option<Usage>)>,
    commands: Vec<(String, u64)>,
}

/// Starts `--processes` dispatchers on the `args.jobs` jobs waiting in the deliver queue, waits
/// until the fast receiver accepted them all, and stops them (round `round` of `--rounds`).
async fn dispatcher_part(
    common: &Common,
    args: &DispatcherArgs,
    fixture: &Fixture,
    binary: &std::path::Path,
    fast: &Receiver,
    ticks: u64,
    round: usize,
) -> anyhow::Result<DispatcherRun> {
    let n = args.jobs;
    let already = fast.received().len();
    let accepted = fast.accepted();
    let delivering = fixture.spawn_roles(
        binary,
        "dispatcher",
        &common.log_level,
        args.processes,
        &round_log("dispatcher", round),
    )?;
    let mut watched = procs::named("dispatcher", &delivering);
    watched.push(("bench (receiver)".to_owned(), "self".to_owned()));
    watched.extend(common.servers());
    let redis_before = redis_commands(&common.redis).await;
    let watch = procs::Watch::start(&watched);
    wait_count(|| fast.accepted() - accepted, n, args.timeout).await;
    let usage = watch.finish(ticks);
    let commands = commands_between(&redis_before, &redis_commands(&common.redis).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = stop_all(delivering).await;
    anyhow::ensure!(alive, "a dispatcher exited during the run");
    let this_round = fast.received().into_iter().skip(already).map(|r| r.at);
    let delivered = offsets(this_round.collect());
    Ok(DispatcherRun {
        rate: stats::steady_rate(&delivered, 0.1, 0.9).unwrap_or(0.0),
        usage,
        commands,
    })
}

/// What the ceiling did with one batch.
struct CeilingRun {
    rate: f64,
    usage: Vec<(String, Option<Usage>)>,
    deliveries: stats::PerItem,
}

/// Drains the jobs waiting in `queue` with `bench post-ceiling` to a receiver of its own (the
/// fast receiver's code and secret; its own so that the counts stay apart).
async fn post_ceiling_part(
    common: &Common,
    args: &DispatcherArgs,
    fixture: &Fixture,
    queue: &str,
    ticks: u64,
    round: usize,
) -> anyhow::Result<CeilingRun> {
    let n = args.jobs;
    let receiver = Receiver::start(Some(OUT_SECRET)).await?;
    let ceiling_args = vec![
        "post-ceiling".to_owned(),
        "--amqp".into(),
        common.amqp.clone(),
        "--queue".into(),
        queue.to_owned(),
        "--prefetch".into(),
        args.concurrency.min(u16::MAX as usize).to_string(),
        "--url".into(),
        receiver.url("/answers"),
        "--secret".into(),
        OUT_SECRET.to_owned(),
    ];
    let (ceiling, _) = procs::spawn_self(
        "post ceiling",
        &ceiling_args,
        fixture.file(&format!("{}.log", round_log("post-ceiling", round))),
        Duration::from_secs(20),
    )
    .await?;
    let mut watched = vec![
        ("post ceiling".to_owned(), ceiling.pid().to_string()),
        ("bench (receiver)".to_owned(), "self".to_owned()),
    ];
    watched.extend(common.servers());
    let watch = procs::Watch::start(&watched);
    wait_count(|| receiver.accepted(), n, args.timeout).await;
    let usage = watch.finish(ticks);
    ceiling.stop(Duration::from_secs(5)).await;
    let at = offsets(receiver.received().into_iter().map(|r| r.at).collect());
    let deliveries = stats::per_item(n, receiver.accepted_per_id().into_values().map(u64::from));
    receiver.shutdown();
    Ok(CeilingRun {
        rate: stats::steady_rate(&at, 0.1, 0.9).unwrap_or(0.0),
        usage,
        deliveries,
    })
}
