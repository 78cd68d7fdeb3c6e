//! Scenario `pipeline` (issue 7, "Load"): the whole pipeline as three processes (`switchboard
//! ingress`, `worker`, `dispatcher`, so each role's CPU and memory is its own), fed at a fixed
//! rate by the load generator, answered by the Dify stand-in (latency drawn from a configurable
//! distribution) and delivered to a fast local receiver. End to end runs from the ingress's ack
//! (the generator's clock) to the receiver's arrival (same clock, same process); Dify's time is
//! the worker's own measure (`timings.dify_ms`), the receiver's its configured latency, and the
//! pipeline's overhead is what remains. Dify calls per event and deliveries per job are counted
//! by the stand-ins.
use super::fixture::{
    commands_between, free_port, redis_commands, Common, ConfigSpec, Fixture, DIFY_KEY, IN_SECRET,
    OUT_SECRET,
};
use super::ingress::wait_ready;
use super::load::{self, Ack, LoadPlan, LoadTarget, Pace};
use super::procs::{self, ChildProcess};
use super::report::{self, Machine, Report, Section};
use super::stats::{self, PerItem, Summary};
use shared::signing::SigningKey;
use shared::topology::Stage;
use shared::units::parse_duration;
use standins::dify::{DifyOptions, DifyStandin, Latency};
use standins::receiver::Receiver;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Events per second offered to the ingress.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long the load lasts (events = rate × duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Connections the generator may use.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Dify's answer time: fixed (`200ms`) or uniform between two (`100ms..300ms`).
    #[arg(long, default_value = "100ms..300ms", value_parser = parse_latency)]
    pub dify_latency: Latency,
    /// Answer chunks Dify streams.
    #[arg(long, default_value_t = 20)]
    pub chunks: usize,
    /// The receiver's own time to answer.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub receiver_latency: Duration,
    /// `worker.concurrency` and the app's `concurrency`.
    #[arg(long, default_value_t = 1024)]
    pub worker_concurrency: usize,
    /// `dispatcher.concurrency`.
    #[arg(long, default_value_t = 256)]
    pub dispatcher_concurrency: usize,
    /// Events sent first and left out of the latency figures (connections, scripts, caches
    /// warm up); they count in the once-only figures.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// How long to wait for the last deliveries after the load ends.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// `200ms` (fixed) or `100ms..300ms` (uniform).
pub fn parse_latency(s: &str) -> Result<Latency, String> {
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (parse_duration(a.trim())?, parse_duration(b.trim())?);
            if b < a {
                return Err(format!("`{s}`: the upper bound is below the lower"));
            }
            Ok(Latency::Uniform(a, b))
        }
        None => Ok(Latency::Fixed(parse_duration(s.trim())?)),
    }
}

pub fn latency_text(l: Latency) -> String {
    match l {
        Latency::Fixed(d) => format!("{} ms", d.as_millis()),
        Latency::Uniform(a, b) => format!("uniform {}–{} ms", a.as_millis(), b.as_millis()),
    }
}

pub async fn run(common: &Common, args: &PipelineArgs) -> anyhow::Result<Report> {
    let machine = Machine::now();
    let binary = procs::switchboard_binary(common.switchboard.as_deref())?;
    let dify = DifyStandin::start(DifyOptions {
        api_key: Some(DIFY_KEY.into()),
        latency: args.dify_latency,
        chunks: args.chunks,
        // Counters are kept whatever this says; records are not needed.
        max_records: 1,
        ..Default::default()
    })
    .await?;
    let receiver = Receiver::start(Some(OUT_SECRET)).await?;
    receiver.set_latency(args.receiver_latency);
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let fixture = Fixture::start(common, "pipeline", |_| ConfigSpec {
        ingress_listen: addr.to_string(),
        dify_url: dify.base_url(),
        receiver_url: receiver.url("/answers"),
        worker_concurrency: args.worker_concurrency,
        app_concurrency: args.worker_concurrency,
        dispatcher_concurrency: args.dispatcher_concurrency,
        ..Default::default()
    })
    .await?;
    let result = measure(
        common, args, &fixture, &binary, addr, &dify, &receiver, machine,
    )
    .await;
    fixture.cleanup().await;
    dify.shutdown();
    receiver.shutdown();
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    common: &Common,
    args: &PipelineArgs,
    fixture: &Fixture,
    binary: &std::path::Path,
    addr: SocketAddr,
    dify: &DifyStandin,
    receiver: &Receiver,
    machine: Machine,
) -> anyhow::Result<Report> {
    let mut roles: Vec<ChildProcess> = Vec::new();
    for role in ["ingress", "worker", "dispatcher"] {
        roles.push(procs::spawn_role(
            binary,
            &fixture.config_path,
            role,
            &common.log_level,
            fixture.file(&format!("{role}.log")),
        )?);
    }
    wait_ready(&format!("http://{addr}/readyz"), &mut roles[0]).await?;
    fixture
        .wait_consumers(
            &fixture.stage_queue(Stage::Work),
            1,
            Duration::from_secs(30),
        )
        .await?;
    fixture
        .wait_consumers(
            &fixture.stage_queue(Stage::Deliver),
            1,
            Duration::from_secs(30),
        )
        .await?;
    let ticks = procs::ticks_per_sec();
    let mut watched: Vec<(String, String)> = roles
        .iter()
        .map(|r| (r.name.clone(), r.pid().to_string()))
        .collect();
    watched.push(("bench (generator, Dify, receiver)".into(), "self".into()));
    watched.extend(common.servers());
    let redis_before = redis_commands(&common.redis).await;
    let watch = procs::Watch::start(&watched);
    let key = SigningKey::parse(IN_SECRET).map_err(anyhow::Error::msg)?;
    eprintln!(
        "bench pipeline: {} events/s for {:.0} s (+{:.0} s warm-up) through three role processes",
        args.rate,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    let load = load::run(
        LoadTarget {
            addr,
            path: "/hooks/hooks".into(),
            key,
            tag: fixture.prefix.clone(),
        },
        LoadPlan {
            connections: args.connections,
            pace: Pace::Rate(args.rate),
            warmup: args.warmup,
            duration: args.duration,
            max_requests: 1_000_000,
            keep_acks: true,
        },
    )
    .await;
    let accepted = load.acks.len();
    let measured_from = load.started + args.warmup;
    let deadline = Instant::now() + args.drain_timeout;
    while receiver.accepted() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = Instant::now();
    let usage = watch.finish(ticks);
    let commands = commands_between(&redis_before, &redis_commands(&common.redis).await);
    // A quiet moment: a duplicate delivery or call would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
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

    let acks: HashMap<&str, &Ack> = load.acks.iter().map(|a| (a.id.as_str(), a)).collect();
    let received = receiver.received();
    let mut first_arrival: HashMap<&str, usize> = HashMap::new();
    for (i, r) in received.iter().enumerate() {
        first_arrival.entry(r.webhook_id.as_str()).or_insert(i);
    }
    let (mut e2e, mut dify_us, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    let receiver_us = args.receiver_latency.as_micros() as i64;
    let mut unmatched = 0usize;
    for &i in first_arrival.values() {
        let r = &received[i];
        let id = r.body["conversation"]["chat_id"].as_str().unwrap_or("");
        let Some(ack) = acks.get(id) else {
            unmatched += 1;
            continue;
        };
        if ack.due < measured_from {
            continue;
        }
        let total = signed_micros(r.at, ack.acked);
        let d = r.body["timings"]["dify_ms"].as_i64().unwrap_or(0) * 1000;
        e2e.push(total);
        dify_us.push(d);
        overhead.push(total - d - receiver_us);
    }
    let e2e = stats::summarize(&mut e2e);
    let dify_time = stats::summarize(&mut dify_us);
    let overhead = stats::summarize(&mut overhead);
    let calls = stats::per_item(accepted, dify.calls_per_trace().into_values());
    let deliveries = stats::per_item(
        accepted,
        receiver.accepted_per_id().into_values().map(u64::from),
    );
    let delivered_within = drained.saturating_duration_since(load.started);

    let mut report = Report::new("pipeline", machine);
    let mut load_table = Section::new(
        "Load (fixed rate; ack latency counts from when each request was due)",
        &[
            "offered/s",
            "accepted",
            "accepted/s",
            "ack p50 ms",
            "ack p99 ms",
            "ack max ms",
            "non-2xx",
            "errors",
            "all delivered after",
        ],
    );
    load_table.row(vec![
        report::count(args.rate),
        report::count(accepted as f64),
        report::count(load.accepted_per_sec),
        report::ms(load.latency.p50_ms),
        report::ms(load.latency.p99_ms),
        report::ms(load.latency.max_ms),
        load.refused.values().sum::<usize>().to_string(),
        load.errors.to_string(),
        format!("{:.1} s", delivered_within.as_secs_f64()),
    ]);
    report.sections.push(load_table);
    let mut lat = Section::new(
        &format!(
            "End to end, ack → receiver (Dify {}, {} chunks; receiver {} ms)",
            latency_text(args.dify_latency),
            args.chunks,
            args.receiver_latency.as_millis()
        ),
        &["", "count", "p50 ms", "p99 ms", "max ms", "mean ms"],
    );
    let receiver_ms = args.receiver_latency.as_secs_f64() * 1000.0;
    let receiver_row = Summary {
        count: e2e.count,
        p50_ms: receiver_ms,
        p99_ms: receiver_ms,
        max_ms: receiver_ms,
        mean_ms: receiver_ms,
    };
    for (name, s) in [
        ("end to end", e2e),
        ("Dify (worker's timings.dify_ms)", dify_time),
        ("receiver (configured)", receiver_row),
        ("pipeline overhead (per event)", overhead),
    ] {
        lat.row(vec![
            name.into(),
            s.count.to_string(),
            report::ms(s.p50_ms),
            report::ms(s.p99_ms),
            report::ms(s.max_ms),
            report::ms(s.mean_ms),
        ]);
    }
    report.sections.push(lat);
    let mut once = Section::new(
        "Once per event (counted by the stand-ins)",
        &["", "expected", "seen", "total", "repeated", "per item"],
    );
    for (name, p) in [
        ("Dify calls per event", calls),
        ("deliveries per job", deliveries),
    ] {
        once.row(per_item_row(name, &p));
    }
    report.sections.push(once);
    let res = report::resources(
        "Resources, from the start of the load until the last delivery (one process each)",
        &usage,
    );
    report.sections.push(res);
    report.sections.push(report::redis_commands(
        "Redis commands of the three roles (all clients of this Redis)",
        &commands,
        accepted,
        "event",
    ));

    report.check(
        "pipeline overhead p99 at the offered rate",
        "< 50 ms",
        format!(
            "{:.1} ms at {} events/s",
            overhead.p99_ms,
            report::count(load.accepted_per_sec)
        ),
        overhead.p99_ms < 50.0 && overhead.count > 0 && deliveries.seen == accepted,
    );
    report.check(
        "the ingress kept the offered rate",
        &format!("≥ {} accepted/s", report::count(args.rate * 0.98)),
        report::count(load.accepted_per_sec),
        load.accepted_per_sec >= args.rate * 0.98,
    );
    report.check(
        "Dify calls per unique event",
        "exactly 1.000",
        format!("{:.3}", calls.per_item()),
        calls.exactly_once(),
    );
    report.check(
        "deliveries per job",
        "exactly 1.000",
        format!("{:.3}", deliveries.per_item()),
        deliveries.exactly_once(),
    );
    if unmatched > 0 {
        report.note(format!(
            "{unmatched} deliveries matched no acknowledged request"
        ));
    }
    if let Some(e) = &load.first_error {
        report.note(format!("first load error: {e}"));
    }
    report.note(format!(
        "roles: three child processes of {} with RUST_LOG={}; dispatcher.concurrency {}, \
         worker.concurrency {}; latencies of events acked after the first {:.0} s",
        binary.display(),
        common.log_level,
        args.dispatcher_concurrency,
        args.worker_concurrency,
        args.warmup.as_secs_f64()
    ));
    report.figures = serde_json::json!({
        "offered_per_sec": args.rate,
        "accepted": accepted,
        "accepted_per_sec": load.accepted_per_sec,
        "ack_latency": load.latency,
        "end_to_end": e2e,
        "dify": dify_time,
        "receiver_ms": receiver_ms,
        "overhead": overhead,
        "dify_calls": calls,
        "dify_calls_per_event": calls.per_item(),
        "deliveries": deliveries,
        "deliveries_per_job": deliveries.per_item(),
        "dify_max_in_flight": dify.max_in_flight(),
        "resources": report::resources_json(&usage),
        "redis_commands": commands,
    });
    Ok(report)
}

/// `a - b` in microseconds, negative when `a` is earlier.
fn signed_micros(a: Instant, b: Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_micros() as i64,
        None => -(b.saturating_duration_since(a).as_micros() as i64),
    }
}

/// A row of the once-only table.
pub fn per_item_row(name: &str, p: &PerItem) -> Vec<String> {
    vec![
        name.into(),
        p.expected.to_string(),
        p.seen.to_string(),
        p.total.to_string(),
        p.repeated.to_string(),
        format!("{:.3}", p.per_item()),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn latencies_parse_fixed_or_uniform() {
        assert_eq!(
            parse_latency("200ms").unwrap(),
            Latency::Fixed(Duration::from_millis(200))
        );
        assert_eq!(
            parse_latency("100ms..1s").unwrap(),
            Latency::Uniform(Duration::from_millis(100), Duration::from_secs(1))
        );
        assert!(parse_latency("1s..100ms").is_err());
        assert!(parse_latency("soon").is_err());
    }
}
