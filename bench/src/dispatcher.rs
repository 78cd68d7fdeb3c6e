//! Scenario `dispatcher` (issues 5 and 18, "Measured"). Throughput: N webhook jobs are
//! pre-loaded into the deliver queue three times; first a bare lapin consumer in this process
//! drains them, acking each (the broker's own consume-and-ack rate, with the dispatcher's
//! prefetch); then the ceiling (`bench post-ceiling`, its own process: consume with the same
//! prefetch, POST each job signed to a receiver like the fast one, ack after the 2xx; see
//! `post_ceiling`); then one `switchboard dispatcher` process delivers them to the fast local
//! receiver. Each rate is taken over the steady middle (10 %–90 %) of its arrivals; the
//! dispatcher is compared with the ceiling (the goal) and with the bare consumer. Accuracy: jobs
//! for one target with a scaled-down limit (`5/2s` by default) go through two dispatcher
//! processes sharing it; the busiest window of the limit's length at the receiver must hold no
//! more than the limit.
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
                    timings: Timings::default(),
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

    // The ceiling: consume, POST, ack, in a process of its own.
    eprintln!("bench dispatcher: pre-loading {n} jobs for the POST-and-ack ceiling");
    fixture
        .publish_all(&deliver, jobs(&fixture.prefix, "crm", n), 256)
        .await?;
    let ceiling = post_ceiling_part(common, args, fixture, &deliver, ticks).await?;
    eprintln!(
        "bench dispatcher: POST-and-ack ceiling {:.0}/s",
        ceiling.rate
    );

    // One dispatcher process (or `--processes` of them).
    let procs_n = args.processes.max(1);
    eprintln!("bench dispatcher: pre-loading {n} jobs for {procs_n} dispatcher process(es)");
    fixture
        .publish_all(&deliver, jobs(&fixture.prefix, "crm", n), 256)
        .await?;
    let mut delivering = Vec::new();
    for i in 0..procs_n {
        let log = match i {
            0 => fixture.file("dispatcher.log"),
            _ => fixture.file(&format!("dispatcher-{i}.log")),
        };
        delivering.push(procs::spawn_role(
            binary,
            &fixture.config_path,
            "dispatcher",
            &common.log_level,
            log,
        )?);
    }
    let mut watched: Vec<(String, String)> = delivering
        .iter()
        .enumerate()
        .map(|(i, d)| match i {
            0 => ("dispatcher".to_owned(), d.pid().to_string()),
            _ => (format!("dispatcher {}", i + 1), d.pid().to_string()),
        })
        .collect();
    watched.push(("bench (receiver)".to_owned(), "self".to_owned()));
    watched.extend(common.servers());
    let redis_before = redis_commands(&common.redis).await;
    let watch = procs::Watch::start(&watched);
    wait_count(|| fast.accepted(), n, args.timeout).await;
    let one_usage = watch.finish(ticks);
    let commands = commands_between(&redis_before, &redis_commands(&common.redis).await);
    let usage: Option<Usage> = one_usage.first().and_then(|(_, u)| *u);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = stop_all(delivering).await;
    anyhow::ensure!(alive, "a dispatcher exited during the run");
    let delivered = offsets(fast.received().into_iter().map(|r| r.at).collect());
    let rate = stats::steady_rate(&delivered, 0.1, 0.9).unwrap_or(0.0);
    let ratio = stats::ratio(rate, bare_rate);
    let to_ceiling = stats::ratio(rate, ceiling.rate);
    let deliveries = stats::per_item(n, fast.accepted_per_id().into_values().map(u64::from));
    eprintln!("bench dispatcher: {procs_n} dispatcher process(es) {rate:.0}/s");

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
            "Throughput: {} webhook jobs to a fast local receiver (prefetch {} for both)",
            report::count(n as f64),
            args.concurrency
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
        report::ratio(stats::ratio(bare_rate, ceiling.rate)),
        "1.00".into(),
        "–".into(),
        "–".into(),
    ]);
    let ceiling_usage = ceiling.usage.first().and_then(|(_, u)| *u);
    t.row(vec![
        "ceiling: consume + signed POST + ack (`bench post-ceiling`)".into(),
        report::count(ceiling.rate),
        "1.00".into(),
        report::ratio(stats::ratio(ceiling.rate, bare_rate)),
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
        "Resources while the ceiling delivered",
        &ceiling.usage,
    ));
    report.sections.push(report::resources(
        "Resources while the dispatcher(s) delivered",
        &one_usage,
    ));
    report.sections.push(report::redis_commands(
        "Redis commands while one dispatcher delivered (all clients of this Redis)",
        &commands,
        deliveries.seen,
        "delivery",
    ));
    let mut once = Section::new(
        "Once per job (the receivers' counts)",
        &["", "expected", "seen", "total", "repeated", "per item"],
    );
    once.row(per_item_row(
        "deliveries per job (ceiling)",
        &ceiling.deliveries,
    ));
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
        to_ceiling.is_some_and(|r| r >= 0.7) && deliveries.seen == n,
    );
    report.check(
        "dispatcher rate / broker consume-and-ack rate",
        "≥ 0.50",
        report::ratio(ratio),
        ratio.is_some_and(|r| r >= 0.5) && deliveries.seen == n,
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
        "post_ceiling_per_sec": ceiling.rate,
        "ratio_to_ceiling": to_ceiling,
        "post_ceiling": ceiling_usage,
        "resources_ceiling": report::resources_json(&ceiling.usage),
        "ceiling_deliveries": ceiling.deliveries,
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
        fixture.file("post-ceiling.log"),
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
