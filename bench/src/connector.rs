//! Scenario `connector` (issue 13): DingTalk Stream mode through `switchboard connector`,
//! `worker` and `dispatcher` as child processes, the Stream gateway stand-in in this process
//! pushing robot messages at a fixed rate over the connector's WebSocket, Dify and the receiver
//! stand-ins as in `pipeline`. Measured: the ack latency on the connection (the gateway's
//! clock: the frame written → its ack read), beside the ingress's ack latency at the same rate
//! (the load generator against `switchboard ingress` on the same broker and Redis, run first,
//! on its own); and the pipeline's overhead per pushed event (push → answer at the receiver,
//! minus Dify's own time), whose p99 goal is under 50 ms. Events are counted once at Dify and
//! once at the receiver.
use super::fixture::{free_port, Common, ConfigSpec, Fixture, DIFY_KEY, IN_SECRET, OUT_SECRET};
use super::ingress::wait_ready;
use super::load::{self, LoadPlan, LoadTarget, Pace};
use super::pipeline::{latency_text, parse_latency, per_item_row};
use super::procs::{self, ChildProcess};
use super::report::{self, Machine, Report, Section};
use super::stats::{self, Summary};
use shared::signing::SigningKey;
use shared::topology::Stage;
use shared::units::parse_duration;
use standins::dify::{DifyOptions, DifyStandin, Latency};
use standins::receiver::Receiver;
use standins::stream::DingtalkStreamStandin;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "bench-ding-app";
const CLIENT_SECRET: &str = "bench-ding-secret";

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectorArgs {
    /// Events per second pushed over the connection (and offered to the ingress).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long each phase's load lasts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Events sent first and left out of the latency figures.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Dify's answer time: fixed (`200ms`) or uniform between two (`100ms..300ms`).
    #[arg(long, default_value = "100ms..300ms", value_parser = parse_latency)]
    pub dify_latency: Latency,
    /// Answer chunks Dify streams.
    #[arg(long, default_value_t = 20)]
    pub chunks: usize,
    /// How long to wait for the last answers after the load ends.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

fn stream_source(gw: &DingtalkStreamStandin) -> String {
    format!(
        r#"
[[sources]]
id = "ding-stream"
platform = "dingtalk"
mode = "stream"
app = "support"
targets = ["crm"]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
api_base = "{}"
"#,
        gw.api_base()
    )
}

pub async fn run(common: &Common, args: &ConnectorArgs) -> anyhow::Result<Report> {
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
    let receiver = Receiver::start(Some(OUT_SECRET)).await?;
    // Redelivery well beyond any ack time here: every event goes out once.
    let gw =
        DingtalkStreamStandin::start(CLIENT_ID, CLIENT_SECRET, Duration::from_secs(30)).await?;
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let fixture = Fixture::start(common, "connector", |_| ConfigSpec {
        ingress_listen: addr.to_string(),
        dify_url: dify.base_url(),
        receiver_url: receiver.url("/answers"),
        extra: stream_source(&gw),
        ..Default::default()
    })
    .await?;
    let result = measure(
        common, args, &fixture, &binary, addr, &dify, &receiver, &gw, machine,
    )
    .await;
    fixture.cleanup().await;
    dify.shutdown();
    receiver.shutdown();
    gw.shutdown();
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    common: &Common,
    args: &ConnectorArgs,
    fixture: &Fixture,
    binary: &std::path::Path,
    addr: SocketAddr,
    dify: &DifyStandin,
    receiver: &Receiver,
    gw: &DingtalkStreamStandin,
    machine: Machine,
) -> anyhow::Result<Report> {
    let mut roles: Vec<ChildProcess> = Vec::new();
    for role in ["ingress", "connector", "worker", "dispatcher"] {
        roles.push(procs::spawn_role(
            binary,
            &fixture.config_path,
            role,
            &common.log_level,
            fixture.file(&format!("{role}.log")),
        )?);
    }
    wait_ready(&format!("http://{addr}/readyz"), &mut roles[0]).await?;
    for stage in [Stage::Work, Stage::Deliver] {
        fixture
            .wait_consumers(&fixture.stage_queue(stage), 1, Duration::from_secs(30))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.connections() == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the connector did not connect within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Phase 1: the ingress at the same rate, for its ack latency.
    eprintln!(
        "bench connector: ingress phase, {} events/s for {:.0} s",
        args.rate,
        args.duration.as_secs_f64()
    );
    let key = SigningKey::parse(IN_SECRET).map_err(anyhow::Error::msg)?;
    let http = load::run(
        LoadTarget {
            addr,
            path: "/hooks/hooks".into(),
            key,
            tag: fixture.prefix.clone(),
        },
        LoadPlan {
            connections: 16,
            pace: Pace::Rate(args.rate),
            warmup: args.warmup,
            duration: args.duration,
            max_requests: 1_000_000,
            keep_acks: true,
        },
    )
    .await;
    let http_accepted = http.acks.len();
    let drain = Instant::now() + args.drain_timeout;
    while receiver.accepted() < http_accepted && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered_before = receiver.received().len();

    // Phase 2: the same rate pushed over the connection.
    eprintln!("bench connector: stream phase, {} events/s", args.rate);
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).round() as usize;
    let gap = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let mut pushed: Vec<(String, String, Instant)> = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + gap.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let chat = format!("{}-conv-{i}", fixture.prefix);
        let body = ::ingress::platform::dingtalk::text_message(
            &format!("{}-msg-{i}", fixture.prefix),
            &chat,
            false,
            "bench",
            &format!("question {i}"),
            "https://oapi.dingtalk.com/robot/sendBySession?session=bench",
            chrono::Utc::now().timestamp_millis() + 3_600_000,
        );
        let id = gw.push(&body);
        pushed.push((id, chat, Instant::now()));
    }
    let drain = Instant::now() + args.drain_timeout;
    while (receiver.received().len() < answered_before + total || gw.unacked() > 0)
        && Instant::now() < drain
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    let measured_from = started + args.warmup;
    let mut acks_us = Vec::new();
    let mut unacked = 0usize;
    for (id, _, at) in &pushed {
        match gw.ack_timing(id) {
            (Some(sent), Some(acked)) if *at >= measured_from => {
                acks_us.push(acked.saturating_duration_since(sent).as_micros() as i64)
            }
            (_, None) => unacked += 1,
            _ => {}
        }
    }
    let stream_ack = stats::summarize(&mut acks_us);
    let received = receiver.received();
    let by_chat: HashMap<&str, &standins::receiver::Received> = received
        .iter()
        .filter_map(|r| Some((r.body["conversation"]["chat_id"].as_str()?, r)))
        .collect();
    let (mut e2e, mut overhead, mut dify_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut unanswered = 0usize;
    for (_, chat, at) in &pushed {
        let Some(r) = by_chat.get(chat.as_str()) else {
            unanswered += 1;
            continue;
        };
        if *at < measured_from {
            continue;
        }
        let total = r.at.saturating_duration_since(*at).as_micros() as i64;
        let d = r.body["timings"]["dify_ms"].as_i64().unwrap_or(0) * 1000;
        e2e.push(total);
        dify_us.push(d);
        overhead.push(total - d);
    }
    let e2e = stats::summarize(&mut e2e);
    let dify_time = stats::summarize(&mut dify_us);
    let overhead = stats::summarize(&mut overhead);
    let calls = stats::per_item(http_accepted + total, dify.calls_per_trace().into_values());
    let deliveries = stats::per_item(
        http_accepted + total,
        receiver.accepted_per_id().into_values().map(u64::from),
    );

    let mut report = Report::new("connector", machine);
    let mut acks = Section::new(
        &format!("Ack latency at {} events/s", report::count(args.rate)),
        &["door", "count", "p50 ms", "p99 ms", "max ms", "mean ms"],
    );
    let row = |name: &str, s: &Summary| {
        vec![
            name.to_owned(),
            s.count.to_string(),
            report::ms(s.p50_ms),
            report::ms(s.p99_ms),
            report::ms(s.max_ms),
            report::ms(s.mean_ms),
        ]
    };
    acks.row(row("ingress (HTTP request due → 2xx)", &http.latency));
    acks.row(row("connector (frame written → ack read)", &stream_ack));
    report.sections.push(acks);
    let mut lat = Section::new(
        &format!(
            "Through the connector, push → receiver (Dify {}, {} chunks)",
            latency_text(args.dify_latency),
            args.chunks
        ),
        &["", "count", "p50 ms", "p99 ms", "max ms", "mean ms"],
    );
    lat.row(row("end to end", &e2e));
    lat.row(row("Dify (worker's timings.dify_ms)", &dify_time));
    lat.row(row("pipeline overhead (per event)", &overhead));
    report.sections.push(lat);
    let mut once = Section::new(
        "Once per event, both phases (counted by the stand-ins)",
        &["", "expected", "seen", "total", "repeated", "per item"],
    );
    once.row(per_item_row("Dify calls per event", &calls));
    once.row(per_item_row("deliveries per job", &deliveries));
    report.sections.push(once);
    report.check(
        "pipeline overhead p99 through a connector",
        "< 50 ms",
        format!(
            "{:.1} ms at {} events/s",
            overhead.p99_ms,
            report::count(args.rate)
        ),
        overhead.p99_ms < 50.0 && overhead.count > 0 && unanswered == 0,
    );
    report.check(
        "every pushed event acknowledged",
        "0 unacknowledged",
        unacked.to_string(),
        unacked == 0,
    );
    report.check(
        "Dify calls per unique event",
        "exactly 1.000",
        format!("{:.3}", calls.per_item()),
        calls.exactly_once(),
    );
    report.note(format!(
        "roles: four child processes of {} with RUST_LOG={} (ingress, connector, worker, \
         dispatcher); the ingress phase runs first, then the stream phase; latencies of events \
         after the first {:.0} s of each",
        binary.display(),
        common.log_level,
        args.warmup.as_secs_f64()
    ));
    report.figures = serde_json::json!({
        "rate": args.rate,
        "ingress_ack": http.latency,
        "connector_ack": stream_ack,
        "end_to_end": e2e,
        "dify": dify_time,
        "overhead": overhead,
        "unacknowledged": unacked,
        "unanswered": unanswered,
        "dify_calls": calls,
        "deliveries": deliveries,
    });
    Ok(report)
}
