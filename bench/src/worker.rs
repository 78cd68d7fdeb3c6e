//! Scenario `worker` (issue 4, "Measured"): one `switchboard worker` process against a Dify that
//! answers after 1 s in 20 streamed chunks. The work queue is pre-loaded with N events (published
//! directly, each its own conversation) before the worker starts, so what is measured is the
//! worker alone draining a backlog: the rate at which its jobs reach the deliver queue (read here
//! by a bare consumer), over the steady middle of the run (10 %–90 % of the jobs) and overall;
//! Dify calls in flight (the stand-in's counter); the worker's resident memory (`/proc`); and
//! Dify calls per event (the stand-in's per-trace counter). A fixed feed rate would measure the
//! feeder as much as the worker; a backlog shows the most the worker does.
use super::fixture::{
    collect_arrivals, commands_between, redis_commands, redis_probe, Arrival, Common, ConfigSpec,
    Fixture, DIFY_KEY,
};
use super::pipeline::{latency_text, parse_latency, per_item_row};
use super::procs;
use super::report::{self, Machine, Report, Section};
use super::stats;
use anyhow::Context as _;
use shared::envelope::{decode, encode, ChatType, Conversation, DispatchJob, InboundEvent};
use shared::topology::Stage;
use shared::units::parse_duration;
use standins::dify::{DifyOptions, DifyStandin, Latency};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Events pre-loaded into the work queue.
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Dify's answer time: fixed or uniform (`a..b`).
    #[arg(long, default_value = "1s", value_parser = parse_latency)]
    pub dify_latency: Latency,
    /// Answer chunks Dify streams.
    #[arg(long, default_value_t = 20)]
    pub chunks: usize,
    /// `worker.concurrency` (also the prefetch) and the app's `concurrency`.
    #[arg(long, default_value_t = 1500)]
    pub concurrency: usize,
    /// Give up waiting for the jobs after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Worker processes draining the same backlog (docs/PERFORMANCE.md, "scaling out").
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
}

/// One reading of the run's progress.
#[derive(Debug, Clone, Copy)]
struct Tick {
    at: Duration,
    dify_in_flight: u64,
}

pub async fn run(common: &Common, args: &WorkerArgs) -> anyhow::Result<Report> {
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
    let mut fixture = Fixture::start(common, "worker", |_| ConfigSpec {
        dify_url: dify.base_url(),
        worker_concurrency: args.concurrency,
        app_concurrency: args.concurrency,
        ..Default::default()
    })
    .await?;
    let result = match fixture.probe_queue("probe").await {
        Ok(probe) => measure(common, args, &fixture, &binary, &dify, &probe, machine).await,
        Err(e) => Err(e),
    };
    fixture.cleanup().await;
    dify.shutdown();
    result
}

/// `n` events of source `hooks`, each in its own conversation.
fn events(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}-{i}");
            let event = InboundEvent {
                id: uuid::Uuid::now_v7(),
                source: "hooks".into(),
                platform: "standard".into(),
                dedup_key: key.clone(),
                kind: "message".into(),
                received_at: chrono::Utc::now(),
                conversation: Conversation {
                    chat_id: key.clone(),
                    chat_type: ChatType::Single,
                    sender_id: key.clone(),
                    sender_name: None,
                    thread_id: None,
                },
                text: format!("bench {key}"),
                reply: None,
                payload: serde_json::json!({"text": format!("bench {key}"), "sender_id": key}),
                attempts: Vec::new(),
                replay_of: None,
            };
            encode(&event)
        })
        .collect()
}

async fn measure(
    common: &Common,
    args: &WorkerArgs,
    fixture: &Fixture,
    binary: &std::path::Path,
    dify: &DifyStandin,
    probe_queue: &str,
    machine: Machine,
) -> anyhow::Result<Report> {
    let work = fixture.stage_queue(Stage::Work);
    let deliver = fixture.stage_queue(Stage::Deliver);
    eprintln!("bench worker: pre-loading {} events", args.events);
    let preload = fixture
        .publish_all(&work, events(&fixture.prefix, args.events), 256)
        .await?;
    let arrivals = Arc::new(Mutex::new(Vec::with_capacity(args.events)));
    let stop = CancellationToken::new();
    let collector = tokio::spawn(collect_arrivals(
        fixture.channel().await?,
        deliver,
        2000,
        true,
        arrivals.clone(),
        stop.clone(),
    ));
    let count = || arrivals.lock().map_or(0, |a| a.len());

    eprintln!(
        "bench worker: one worker process, concurrency {}, Dify {}",
        args.concurrency,
        latency_text(args.dify_latency)
    );
    let probe_stop = CancellationToken::new();
    let probe = tokio::spawn(redis_probe(
        common.redis.clone(),
        Duration::from_millis(20),
        probe_stop.clone(),
    ));
    let broker_probe = fixture.broker_probe(
        probe_queue.to_owned(),
        Duration::from_millis(20),
        probe_stop.clone(),
    );
    let started = Instant::now();
    let mut workers = fixture.spawn_roles(
        binary,
        "worker",
        &common.log_level,
        args.processes,
        "worker",
    )?;
    let ticks_per_sec = procs::ticks_per_sec();
    let mut watched = procs::named("worker", &workers);
    watched.push((
        "bench (Dify stand-in, job reader)".to_owned(),
        "self".to_owned(),
    ));
    watched.extend(common.servers());
    let redis_before = redis_commands(&common.redis).await;
    let watch = procs::Watch::start(&watched);
    let mut ticks = Vec::new();
    let deadline = started + args.timeout;
    let running = |ws: &mut Vec<procs::ChildProcess>| ws.iter_mut().all(|w| w.running());
    while count() < args.events && Instant::now() < deadline && running(&mut workers) {
        ticks.push(Tick {
            at: started.elapsed(),
            dify_in_flight: dify.in_flight(),
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resources = watch.finish(ticks_per_sec);
    let redis_after = redis_commands(&common.redis).await;
    probe_stop.cancel();
    let mut ping_us = probe.await.unwrap_or_default();
    let probe_pings = ping_us.len() as u64;
    let ping = stats::summarize(&mut ping_us);
    let mut commands = commands_between(&redis_before, &redis_after);
    for (name, calls) in &mut commands {
        if name == "ping" {
            *calls = calls.saturating_sub(probe_pings);
        }
    }
    commands.retain(|(_, calls)| *calls > 0);
    let mut confirm_us = broker_probe.await.unwrap_or_default();
    let confirm = stats::summarize(&mut confirm_us);
    let alive = running(&mut workers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let _ = collector.await;
    for w in workers {
        w.stop(Duration::from_secs(10)).await;
    }
    anyhow::ensure!(
        alive,
        "the worker exited during the run (log {})",
        fixture.file("worker.log").display()
    );
    let usage = resources
        .first()
        .and_then(|(_, u)| *u)
        .context("could not read the worker's /proc")?;

    let arrivals: Vec<Arrival> = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let mut offsets: Vec<Duration> = arrivals
        .iter()
        .map(|a| a.at.saturating_duration_since(started))
        .collect();
    // Where an event's time went, from the jobs' own timings.
    let (mut dify_us, mut publish_us) = (Vec::new(), Vec::new());
    for a in &arrivals {
        let Some(job) = a
            .body
            .as_deref()
            .and_then(|b| decode::<DispatchJob>(b).ok())
        else {
            continue;
        };
        let t = &job.payload.timings;
        if let Some(ms) = t.dify_ms {
            dify_us.push(ms as i64 * 1000);
        }
        if let Some(answered) = t.answered_at {
            publish_us.push((a.wall - answered).num_microseconds().unwrap_or(0));
        }
    }
    let dify_call = stats::summarize(&mut dify_us);
    let answered_to_job = stats::summarize(&mut publish_us);
    offsets.sort_unstable();
    let jobs = offsets.len();
    let steady = stats::steady_rate(&offsets, 0.1, 0.9).unwrap_or(0.0);
    let overall = offsets
        .last()
        .map_or(0.0, |last| stats::per_second(jobs, *last));
    let (lo, hi) = (
        offsets.get(jobs / 10).copied().unwrap_or_default(),
        offsets.get(jobs * 9 / 10).copied().unwrap_or_default(),
    );
    let steady_ticks: Vec<&Tick> = ticks.iter().filter(|t| t.at >= lo && t.at <= hi).collect();
    let mean_in_flight = if steady_ticks.is_empty() {
        0.0
    } else {
        steady_ticks
            .iter()
            .map(|t| t.dify_in_flight as f64)
            .sum::<f64>()
            / steady_ticks.len() as f64
    };
    let calls = stats::per_item(args.events, dify.calls_per_trace().into_values());

    let mut report = Report::new("worker", machine);
    let mut table = Section::new(
        &format!(
            "{} draining {} pre-loaded events (Dify {}, {} chunks, streaming; concurrency {} each)",
            match args.processes {
                0 | 1 => "One worker process".to_owned(),
                n => format!("{n} worker processes"),
            },
            report::count(args.events as f64),
            latency_text(args.dify_latency),
            args.chunks,
            args.concurrency
        ),
        &[
            "jobs out",
            "events/s steady (10–90 %)",
            "events/s overall (from process start)",
            "Dify in flight: mean steady / max",
            "worker CPU %",
            "worker RSS MB (end / peak)",
        ],
    );
    table.row(vec![
        report::count(jobs as f64),
        report::count(steady),
        report::count(overall),
        format!(
            "{} / {}",
            report::count(mean_in_flight),
            dify.max_in_flight()
        ),
        format!("{:.0}", usage.cpu_percent),
        format!("{:.0} / {:.0}", usage.rss_mb, usage.peak_rss_mb),
    ]);
    report.sections.push(table);
    let mut times = Section::new(
        "Where an event's time goes (from each job's timings)",
        &["", "p50 ms", "p99 ms", "max ms"],
    );
    for (name, t) in [
        ("the Dify call, as the worker timed it", dify_call),
        ("Dify's answer → job in the deliver queue", answered_to_job),
        (
            "one Redis PING from the bench process (the machine's hop)",
            ping,
        ),
    ] {
        times.row(vec![
            name.into(),
            report::ms(t.p50_ms),
            report::ms(t.p99_ms),
            report::ms(t.max_ms),
        ]);
    }
    let outside = if steady > 0.0 {
        (args.concurrency as f64 - mean_in_flight).max(0.0) / steady * 1000.0
    } else {
        0.0
    };
    times.row(vec![
        "a slot's time outside the stand-in (Little's law: idle slots / rate)".into(),
        report::ms(outside),
        String::new(),
        String::new(),
    ]);
    report.sections.push(times);
    report.sections.push(report::redis_commands(
        "Redis commands while the worker ran (all clients of this Redis; the probe's PINGs left out)",
        &commands,
        jobs,
        "event",
    ));
    let mut once = Section::new(
        "Once per event (the stand-in's per-trace counter)",
        &["", "expected", "seen", "total", "repeated", "per item"],
    );
    once.row(per_item_row("Dify calls per event", &calls));
    report.sections.push(once);
    report.sections.push(report::resources(
        "Resources from the worker's start until its last job",
        &resources,
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bound = MachineBound::of(&resources, args.processes.max(1), overall, cores);
    if let Some(b) = &bound {
        report.sections.push(b.section());
    }
    report.check(
        "one worker's sustained rate",
        "≥ 1,000 events/s",
        format!("{} events/s", report::count(steady)),
        steady >= 1000.0 && jobs == args.events,
    );
    // Overall, as the bound is: a backlog drained in bursts can read high over its middle.
    report.check(
        "one worker's rate overall (issue 18)",
        "≥ 2,000 events/s",
        match &bound {
            Some(b) => format!(
                "{} events/s (this machine's bound: {}/s)",
                report::count(overall),
                report::count(b.bound_per_sec())
            ),
            None => format!("{} events/s", report::count(overall)),
        },
        overall >= 2000.0 && jobs == args.events,
    );
    if let Some(b) = bound.as_ref().filter(|b| b.bound_per_sec() < 2000.0) {
        report.note(format!(
            "2,000 events/s cannot be shown on this machine: the processes beside the worker \
             (the Dify stand-in streaming {} chunks an answer, the job reader, the broker, Redis) \
             used {:.0} µs of CPU per event, so at that cost its {} cores would serve about \
             {}/s at most with a worker that cost nothing; the worker used {:.0} µs per event, \
             {}/s per core of its own",
            args.chunks,
            b.others_us,
            b.cores,
            report::count(b.bound_per_sec()),
            b.worker_us,
            report::count(b.worker_per_core()),
        ));
    }
    report.check(
        "Dify calls in flight",
        "≥ 1,000",
        dify.max_in_flight().to_string(),
        dify.max_in_flight() >= 1000,
    );
    report.check(
        "worker resident memory (peak)",
        "< 256 MB",
        format!("{:.0} MB", usage.peak_rss_mb),
        usage.peak_rss_mb < 256.0,
    );
    report.check(
        "Dify calls per unique event",
        "exactly 1.000",
        format!("{:.3}", calls.per_item()),
        calls.exactly_once(),
    );
    report.note(format!(
        "pre-loading {} events took {:.1} s ({} published/s with confirms)",
        args.events,
        preload.as_secs_f64(),
        report::count(stats::per_second(args.events, preload))
    ));
    if jobs < args.events {
        report.note(format!(
            "only {jobs} of {} jobs arrived within {:?}",
            args.events, args.timeout
        ));
    }
    report.figures = serde_json::json!({
        "events": args.events,
        "jobs": jobs,
        "concurrency": args.concurrency,
        "processes": args.processes,
        "events_per_sec_steady": steady,
        "events_per_sec_overall": overall,
        "dify_in_flight_mean_steady": mean_in_flight,
        "dify_max_in_flight": dify.max_in_flight(),
        "worker": usage,
        "resources": report::resources_json(&resources),
        "dify_calls": calls,
        "dify_calls_per_event": calls.per_item(),
        "preload_secs": preload.as_secs_f64(),
        "dify_call_as_timed_by_worker": dify_call,
        "answered_to_job_queued": answered_to_job,
        "slot_time_outside_dify_ms": outside,
        "machine_bound": bound.as_ref().map(|b| serde_json::json!({
            "worker_cpu_us_per_event": b.worker_us,
            "others_cpu_us_per_event": b.others_us,
            "bound_events_per_sec": b.bound_per_sec(),
            "worker_events_per_core_sec": b.worker_per_core(),
            "cores": b.cores,
        })),
        "redis_ping_from_bench": ping,
        "broker_confirm_from_bench": confirm,
        "redis_commands": commands,
    });
    Ok(report)
}

/// What the machine leaves a worker: the CPU each event cost the worker processes and everything
/// else measured beside them (the Dify stand-in and job reader in this process, the broker,
/// Redis), and what follows from it on this machine. The stand-ins share the worker's cores, so
/// a worker's rate here is held below what the worker alone could do; this says by how much.
#[derive(Debug, Clone, PartialEq)]
struct MachineBound {
    /// CPU µs per event of the worker process(es).
    worker_us: f64,
    /// CPU µs per event of every other measured process.
    others_us: f64,
    /// The machine's cores.
    cores: usize,
}

impl MachineBound {
    /// From the resources of a run (the first `workers` rows are the worker processes) at
    /// `rate` events per second over the same span; `None` without a rate or a reading.
    fn of(
        resources: &[(String, Option<procs::Usage>)],
        workers: usize,
        rate: f64,
        cores: usize,
    ) -> Option<Self> {
        if rate <= 0.0 || resources.len() <= workers {
            return None;
        }
        let cpu = |rows: &[(String, Option<procs::Usage>)]| -> Option<f64> {
            rows.iter()
                .map(|(_, u)| u.map(|u| u.cpu_percent))
                .sum::<Option<f64>>()
        };
        let (worker, others) = resources.split_at(workers);
        // Percent of one core at `rate` events/s: µs of CPU per event.
        let per_event = |percent: f64| percent / 100.0 / rate * 1e6;
        let worker_us = per_event(cpu(worker)?);
        let others_us = per_event(cpu(others)?);
        if worker_us <= 0.0 || others_us <= 0.0 {
            return None;
        }
        Some(Self {
            worker_us,
            others_us,
            cores,
        })
    }

    /// The most events per second the cores could serve if the worker cost nothing.
    fn bound_per_sec(&self) -> f64 {
        self.cores as f64 * 1e6 / self.others_us
    }

    /// Events per second per core of CPU the worker uses (1 s / its CPU per event).
    fn worker_per_core(&self) -> f64 {
        1e6 / self.worker_us
    }

    fn section(&self) -> Section {
        let mut t = Section::new(
            "What this machine leaves a worker (CPU per event, from the resources above)",
            &["", "value"],
        );
        for (what, value) in [
            (
                "the worker's CPU per event",
                format!("{:.0} µs", self.worker_us),
            ),
            (
                "everything else measured, per event (stand-in, job reader, broker, Redis)",
                format!("{:.0} µs", self.others_us),
            ),
            (
                "the most these cores could serve with a worker that cost nothing",
                format!("{} events/s", report::count(self.bound_per_sec())),
            ),
            (
                "the worker's rate per core of its own (1 s / its CPU per event)",
                format!("{} events/s", report::count(self.worker_per_core())),
            ),
        ] {
            t.row(vec![what.to_owned(), value]);
        }
        t
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn row(name: &str, cpu_percent: f64) -> (String, Option<procs::Usage>) {
        (
            name.to_owned(),
            Some(procs::Usage {
                cpu_percent,
                rss_mb: 1.0,
                peak_rss_mb: 1.0,
            }),
        )
    }

    #[test]
    fn the_machine_bound_is_what_the_other_processes_leave() {
        // 1,000 events/s; the worker 60 % of a core, the rest 40 + 30 + 30 = 100 %.
        let rows = [
            row("worker", 60.0),
            row("bench", 40.0),
            row("broker", 30.0),
            row("redis", 30.0),
        ];
        let b = MachineBound::of(&rows, 1, 1000.0, 2).unwrap();
        assert!((b.worker_us - 600.0).abs() < 1e-9, "{b:?}");
        assert!((b.others_us - 1000.0).abs() < 1e-9, "{b:?}");
        // Two cores, 1 ms of the others' CPU per event: 2,000/s at most.
        assert!((b.bound_per_sec() - 2000.0).abs() < 1e-6, "{b:?}");
        assert!((b.worker_per_core() - 1e6 / 600.0).abs() < 1e-6, "{b:?}");
        // Two worker processes: both are the worker's.
        let b = MachineBound::of(&rows, 2, 1000.0, 2).unwrap();
        assert!((b.worker_us - 1000.0).abs() < 1e-9, "{b:?}");
        assert!((b.others_us - 600.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn no_bound_without_a_rate_or_a_reading() {
        let rows = [row("worker", 60.0), row("bench", 40.0)];
        assert_eq!(MachineBound::of(&rows, 1, 0.0, 2), None);
        assert_eq!(MachineBound::of(&rows[..1], 1, 1000.0, 2), None);
        let unread = [row("worker", 60.0), ("broker".to_owned(), None)];
        assert_eq!(MachineBound::of(&unread, 1, 1000.0, 2), None);
    }
}
