//! Scenario `ingress` (issue 7, "Load"): how many signed webhooks per second one ingress process
//! keeps, and how fast it acks them, against the ceiling measured in the same run — the bare
//! publish-per-request service on the same broker with the same generator. Phases: closed loop
//! at each `--connections` count, then a fixed rate; in each, the ceiling runs first and the
//! ingress right after, each against a freshly purged queue. No worker runs: events stay queued
//! (and are purged between phases).
use super::fixture::{
    commands_between, free_port, redis_commands, Common, ConfigSpec, Fixture, IN_SECRET,
};
use super::load::{self, LoadPlan, LoadResult, LoadTarget, Pace};
use super::procs::{self, ChildProcess, Usage};
use super::report::{self, Machine, Report, Section};
use super::stats;
use anyhow::{bail, Context as _};
use shared::signing::SigningKey;
use shared::topology::Stage;
use shared::units::parse_duration;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    /// Connections of the closed-loop phases (fixed concurrency).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 256])]
    pub connections: Vec<usize>,
    /// Requests per second of the fixed-rate phase (0 skips it).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Connections the fixed-rate phase may use.
    #[arg(long, default_value_t = 64)]
    pub rate_connections: usize,
    /// Measured time of each phase.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each phase's measurement.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Each phase is run this many times, ceiling and ingress alternating, and pooled: drift
    /// in the machine's load (other processes) then weighs on both alike.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// More keys of the benchmark's source, one TOML line each, to measure what a check costs:
    /// `--source-key 'rate = "1000000/s"' --source-key 'allow_ips = ["127.0.0.0/8"]'`.
    #[arg(long = "source-key")]
    pub source_keys: Vec<String>,
}

/// One service's results in one phase, added up over the rounds.
#[derive(Default)]
struct Pooled {
    accepted: usize,
    measured: Duration,
    latencies_us: Vec<i64>,
    refused: std::collections::BTreeMap<u16, usize>,
    errors: usize,
    first_error: Option<String>,
    usage: Vec<(String, Option<Usage>)>,
    commands: std::collections::BTreeMap<String, u64>,
    sent: u64,
}

impl Pooled {
    fn add(
        &mut self,
        r: LoadResult,
        measured: Duration,
        usage: Vec<(String, Option<Usage>)>,
        commands: Vec<(String, u64)>,
    ) {
        self.accepted += r.accepted;
        self.measured += measured;
        self.latencies_us.extend(r.latencies_us);
        for (status, n) in r.refused {
            *self.refused.entry(status).or_insert(0) += n;
        }
        self.errors += r.errors;
        if self.first_error.is_none() {
            self.first_error = r.first_error;
        }
        for (name, calls) in commands {
            *self.commands.entry(name).or_insert(0) += calls;
        }
        self.sent += r.sent;
        // CPU: the mean over the rounds; memory: the last round's.
        if self.usage.is_empty() {
            self.usage = usage;
        } else {
            for ((_, mine), (_, new)) in self.usage.iter_mut().zip(usage) {
                if let (Some(m), Some(n)) = (mine.as_mut(), new) {
                    m.cpu_percent += n.cpu_percent;
                    m.rss_mb = n.rss_mb;
                    m.peak_rss_mb = n.peak_rss_mb;
                }
            }
        }
    }
}

/// One measured phase of one service.
#[derive(Debug, Clone, serde::Serialize)]
struct Phase {
    phase: String,
    service: &'static str,
    connections: usize,
    accepted_per_sec: f64,
    ratio_to_ceiling: Option<f64>,
    latency: stats::Summary,
    refused: std::collections::BTreeMap<u16, usize>,
    errors: usize,
    first_error: Option<String>,
    /// The server, the generator (this process), the broker, Redis.
    usage: Vec<(String, Option<Usage>)>,
    /// Redis commands during the phase (all clients), and per request sent.
    redis_commands: Vec<(String, u64)>,
    redis_per_request: f64,
    /// Requests sent in the phase, warm-up included.
    sent: u64,
}

pub async fn run(common: &Common, args: &IngressArgs) -> anyhow::Result<Report> {
    let machine = Machine::now();
    let binary = procs::switchboard_binary(common.switchboard.as_deref())?;
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut fixture = Fixture::start(common, "ingress", |_| ConfigSpec {
        ingress_listen: addr.to_string(),
        source_keys: args.source_keys.join("\n"),
        ..Default::default()
    })
    .await?;
    let ceiling_queue = format!("{}.ceiling", fixture.prefix);
    fixture.own_queue(ceiling_queue.clone());
    let result = measure(
        common,
        args,
        &fixture,
        &binary,
        addr,
        &ceiling_queue,
        machine,
    )
    .await;
    fixture.cleanup().await;
    result
}

async fn measure(
    common: &Common,
    args: &IngressArgs,
    fixture: &Fixture,
    binary: &std::path::Path,
    addr: SocketAddr,
    ceiling_queue: &str,
    machine: Machine,
) -> anyhow::Result<Report> {
    let mut ingress = procs::spawn_role(
        binary,
        &fixture.config_path,
        "ingress",
        &common.log_level,
        fixture.file("ingress.log"),
    )?;
    wait_ready(&format!("http://{addr}/readyz"), &mut ingress).await?;
    let ceiling_args = vec![
        "ceiling-server".to_owned(),
        "--amqp".into(),
        common.amqp.clone(),
        "--queue".into(),
        ceiling_queue.to_owned(),
        "--channels".into(),
        fixture.config.broker.channel_pool.to_string(),
    ];
    let (ceiling, ceiling_addr) = procs::spawn_self(
        "ceiling",
        &ceiling_args,
        fixture.file("ceiling.log"),
        Duration::from_secs(20),
    )
    .await?;
    let ceiling_addr: SocketAddr = ceiling_addr
        .parse()
        .with_context(|| format!("the ceiling printed `{ceiling_addr}`, not an address"))?;
    let key = SigningKey::parse(IN_SECRET).map_err(anyhow::Error::msg)?;
    let ticks = procs::ticks_per_sec();
    let work_queue = fixture.stage_queue(Stage::Work);

    let mut plans: Vec<(String, LoadPlan)> = args
        .connections
        .iter()
        .map(|&c| {
            (
                format!("{c} connections"),
                LoadPlan {
                    connections: c,
                    pace: Pace::Closed,
                    warmup: args.warmup,
                    duration: args.duration,
                    max_requests: 5_000_000,
                    keep_acks: false,
                },
            )
        })
        .collect();
    if args.rate > 0.0 {
        plans.push((
            format!("{} req/s", report::count(args.rate)),
            LoadPlan {
                connections: args.rate_connections,
                pace: Pace::Rate(args.rate),
                warmup: args.warmup,
                duration: args.duration,
                max_requests: 5_000_000,
                keep_acks: false,
            },
        ));
    }

    let mut phases = Vec::new();
    let rounds = args.rounds.max(1);
    for (n, (name, plan)) in plans.iter().enumerate() {
        let mut pooled = [Pooled::default(), Pooled::default()];
        for round in 0..rounds {
            for (k, (service, target_addr, pid)) in [
                ("ceiling", ceiling_addr, ceiling.pid()),
                ("ingress", addr, ingress.pid()),
            ]
            .into_iter()
            .enumerate()
            {
                fixture.purge(&work_queue).await?;
                fixture.purge(ceiling_queue).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let target = LoadTarget {
                    addr: target_addr,
                    path: "/hooks/hooks".into(),
                    key: key.clone(),
                    tag: format!("{}-{service}-{n}-{round}", fixture.prefix),
                };
                let mut watched = vec![
                    (service.to_owned(), pid.to_string()),
                    ("generator".to_owned(), "self".to_owned()),
                ];
                watched.extend(common.servers());
                let redis_before = redis_commands(&common.redis).await;
                let watch = procs::Watch::start(&watched);
                let r: LoadResult = load::run(target, plan.clone()).await;
                let usage = watch.finish(ticks);
                let commands =
                    commands_between(&redis_before, &redis_commands(&common.redis).await);
                eprintln!(
                    "bench ingress: {name}, round {}, {service}: {:.0} accepted/s, p99 {:.1} ms",
                    round + 1,
                    r.accepted_per_sec,
                    r.latency.p99_ms
                );
                pooled[k].add(r, plan.duration, usage, commands);
            }
        }
        let mut ceiling_rate = None;
        for (service, mut p) in ["ceiling", "ingress"].into_iter().zip(pooled) {
            let rate = stats::per_second(p.accepted, p.measured);
            if service == "ceiling" {
                ceiling_rate = Some(rate);
            }
            for (_, u) in &mut p.usage {
                if let Some(u) = u.as_mut() {
                    u.cpu_percent /= rounds as f64;
                }
            }
            let commands: Vec<(String, u64)> = p.commands.into_iter().collect();
            phases.push(Phase {
                phase: name.clone(),
                service,
                connections: plan.connections,
                accepted_per_sec: rate,
                ratio_to_ceiling: ceiling_rate.and_then(|c| stats::ratio(rate, c)),
                latency: stats::summarize(&mut p.latencies_us),
                refused: p.refused,
                errors: p.errors,
                first_error: p.first_error,
                usage: p.usage,
                redis_per_request: commands.iter().map(|(_, c)| *c).sum::<u64>() as f64
                    / p.sent.max(1) as f64,
                redis_commands: commands,
                sent: p.sent,
            });
        }
    }
    let ingress_alive = ingress.running();
    ingress.stop(Duration::from_secs(10)).await;
    ceiling.stop(Duration::from_secs(5)).await;
    if !ingress_alive {
        bail!(
            "the ingress exited during the run (log {})",
            fixture.file("ingress.log").display()
        );
    }
    Ok(build_report(args, &phases, machine))
}

fn build_report(args: &IngressArgs, phases: &[Phase], machine: Machine) -> Report {
    let mut report = Report::new("ingress", machine);
    let mut table = Section::new(
        "Ingress vs the ceiling (bare axum + lapin publish-per-request), same generator, same broker",
        &[
            "phase",
            "service",
            "accepted/s",
            "× ceiling",
            "ack p50 ms",
            "ack p99 ms",
            "ack max ms",
            "non-2xx",
            "errors",
        ],
    );
    for p in phases {
        table.row(vec![
            p.phase.clone(),
            p.service.into(),
            report::count(p.accepted_per_sec),
            report::ratio(p.ratio_to_ceiling),
            report::ms(p.latency.p50_ms),
            report::ms(p.latency.p99_ms),
            report::ms(p.latency.max_ms),
            p.refused.values().sum::<usize>().to_string(),
            p.errors.to_string(),
        ]);
    }
    report.sections.push(table);
    let mut cpu = Section::new(
        "CPU (% of one core; 200 = the whole machine) and memory during each phase",
        &[
            "phase",
            "service",
            "server CPU",
            "server RSS MB",
            "generator CPU",
            "broker CPU",
            "Redis CPU",
            "sum",
            "Redis cmds / request",
        ],
    );
    for p in phases {
        let cpu_of = |i: usize| p.usage.get(i).and_then(|(_, u)| *u).map(|u| u.cpu_percent);
        let shown = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
        let sum: f64 = (0..p.usage.len()).filter_map(cpu_of).sum();
        cpu.row(vec![
            p.phase.clone(),
            p.service.into(),
            shown(cpu_of(0)),
            shown(p.usage.first().and_then(|(_, u)| *u).map(|u| u.rss_mb)),
            shown(cpu_of(1)),
            shown(cpu_of(2)),
            shown(cpu_of(3)),
            format!("{sum:.0}"),
            format!("{:.2}", p.redis_per_request),
        ]);
    }
    report.sections.push(cpu);
    if let Some(p) = phases.iter().find(|p| p.service == "ingress") {
        let mut t = Section::new(
            &format!(
                "Redis commands per request of the ingress ({}; all clients of this Redis)",
                p.phase
            ),
            &["command", "per request"],
        );
        let sent = p.sent.max(1) as f64;
        for (name, calls) in &p.redis_commands {
            t.row(vec![
                name.to_uppercase(),
                format!("{:.2}", *calls as f64 / sent),
            ]);
        }
        report.sections.push(t);
    }
    for p in phases.iter().filter(|p| p.service == "ingress") {
        if matches!(args.rate, r if r > 0.0) && p.phase.ends_with("req/s") {
            let sustained = p.accepted_per_sec >= args.rate * 0.98;
            report.check(
                &format!("ingress sustains the fixed rate ({})", p.phase),
                &format!("≥ {} accepted/s", report::count(args.rate * 0.98)),
                report::count(p.accepted_per_sec),
                sustained,
            );
            continue;
        }
        let r = p.ratio_to_ceiling.unwrap_or(0.0);
        report.check(
            &format!("ingress throughput / ceiling at {}", p.phase),
            "≥ 0.80",
            format!("{r:.2}"),
            r >= 0.8,
        );
        if p.connections == 64 {
            report.check(
                "ingress ack p99 at 64 connections",
                "< 25 ms",
                format!("{:.1} ms", p.latency.p99_ms),
                p.latency.p99_ms < 25.0,
            );
        }
    }
    for p in phases {
        if let Some(e) = &p.first_error {
            report.note(format!("{} {}: first error: {e}", p.phase, p.service));
        }
    }
    report.note(format!(
        "each phase: {} round(s) of {} warm-up then {} measured, ceiling and ingress \
         alternating, pooled; fixed rate: latency counts from when each request was due",
        args.rounds.max(1),
        humantime(args.warmup),
        humantime(args.duration)
    ));
    report.figures = serde_json::json!({ "phases": phases });
    report
}

fn humantime(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Polls `url` until it answers 200, failing early if the process died.
pub async fn wait_ready(url: &str, process: &mut ChildProcess) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if !process.running() {
            bail!(
                "{} exited before it was ready (log {})",
                process.name,
                process.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!("{} was not ready within 30 s ({url})", process.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
