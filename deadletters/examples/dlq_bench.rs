//! Measures the dead-letter commands on a large store: fills a fresh prefix with N dead letters
//! (a realistic mix of stages, reasons, sources and targets, three attempts each), then times
//! `dlq list --reason …`, `dlq stats`, `dlq export`, `dlq show` and `dlq replay` of a 10%
//! slice (as fast as the broker confirms, then again paced with `--rate`), and deletes the
//! prefix's queues. The commands run in-process through `run_with`, output kept in memory.
//!
//! ```text
//! cargo run --release -p deadletters --example dlq_bench -- --count 100000
//! cargo run -p deadletters --example dlq_bench -- --count 50 --print   # see the output
//! ```
use chrono::{Duration as Span, Utc};
use clap::Parser;
use deadletters::cli::{run_with, Console, DlqCli};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use shared::config::AuditorConfig;
use shared::envelope::{
    Answer, AnswerPayload, Attempt, ChatType, Conversation, DeadLetter, Destination, DispatchJob,
    InboundEvent, Reason,
};
use shared::topology::Topology;
use shared::Config;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// Dead letters to fill the store with.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Every this-many-th letter comes from the `replay-me` source (10%: 10,000 of 100,000).
    #[arg(long, default_value_t = 10)]
    replay_every: usize,
    /// The pace of the second, forced replay.
    #[arg(long, default_value = "2000/s")]
    rate: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Print each command's output (for small counts).
    #[arg(long)]
    print: bool,
    /// Keep the queues afterwards (prints the prefix).
    #[arg(long)]
    keep: bool,
    /// Only fill the store (with --keep: for the console's bench, which reads the prefix).
    #[arg(long)]
    fill_only: bool,
    /// Seal every letter with this audit key, as the roles do when `[audit] key` is set.
    #[arg(long)]
    key: Option<String>,
}

const SOURCES: [&str; 4] = ["wecom-support", "feishu-sales", "crm", "github"];
const TARGETS: [&str; 4] = ["ops-robot", "crm-hook", "reply", "slack-alerts"];
const REASONS: [Reason; 3] = [Reason::Exhausted, Reason::Permanent, Reason::Expired];

fn letter(n: usize, replay_every: usize) -> DeadLetter {
    let source = if n.is_multiple_of(replay_every) {
        "replay-me"
    } else {
        SOURCES[n % SOURCES.len()]
    };
    let at = |ago: i64| Utc::now() - Span::seconds(ago + (n % 86_400) as i64 * 7);
    let attempt = |ago: i64, status: u16| Attempt {
        at: at(ago),
        outcome: "retry".into(),
        status: Some(status),
        code: Some("upstream".into()),
        error: Some(format!("receiver answered {status}")),
        excerpt: Some("{\"errcode\":45009,\"errmsg\":\"api freq out of limit\"}".into()),
        duration_ms: 140 + (n % 50) as u64,
    };
    let event = InboundEvent {
        id: Uuid::now_v7(),
        source: source.into(),
        platform: "wecom".into(),
        dedup_key: format!("msg-{n}"),
        kind: "message".into(),
        received_at: at(4000),
        conversation: Conversation {
            chat_id: format!("chat-{}", n % 977),
            chat_type: ChatType::Group,
            sender_id: format!("user-{}", n % 4099),
            sender_name: Some("Customer".into()),
            thread_id: None,
        },
        text: format!("Order {n}: where is my parcel? It was due yesterday."),
        reply: None,
        payload: serde_json::json!({"MsgType": "text", "Content": "where is my parcel", "MsgId": n}),
        attempts: vec![attempt(3600, 503), attempt(1800, 503), attempt(60, 504)],
        replay_of: None,
    };
    let reason = REASONS[n % REASONS.len()];
    if n.is_multiple_of(2) {
        let mut dl = DeadLetter::from_event(&event, reason, "Dify answered 503 on every attempt");
        dl.dead_at = at(0);
        dl
    } else {
        let destination = Destination::Target {
            id: TARGETS[(n / 2) % TARGETS.len()].into(),
        };
        let job = DispatchJob {
            id: DispatchJob::job_id(&event, &destination),
            destination,
            payload: AnswerPayload {
                event: None,
                event_id: event.id,
                source: source.into(),
                platform: "wecom".into(),
                conversation: event.conversation.clone(),
                query: event.text.clone(),
                answer: Answer {
                    text: "Your parcel left the depot this morning and arrives tomorrow.".into(),
                    conversation_id: Some(format!("conv-{n}")),
                    ..Answer::default()
                },
                timings: Default::default(),
            },
            attempts: event.attempts.clone(),
            replay_of: None,
            parts_left: None,
        };
        let mut dl = DeadLetter::from_job(&job, reason, "receiver answered 504 on every attempt");
        dl.dead_at = at(0);
        dl
    }
}

async fn fill(conn: &Connection, stream: &str, args: &Args) -> anyhow::Result<(Duration, usize)> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let mut bytes = 0;
    let mut in_flight = FuturesUnordered::new();
    let keyring = args
        .key
        .as_ref()
        .map(|k| shared::seal::Keyring::new(&shared::Secret::new(k.clone()), &[], true));
    for n in 0..args.count {
        let body = shared::envelope::encode(&letter(n, args.replay_every));
        bytes += body.len();
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(k) = &keyring {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(
                shared::seal::SEAL_HEADER.into(),
                lapin::types::AMQPValue::LongString(k.seal(&body).into_bytes().into()),
            );
            props = props.with_headers(headers);
        }
        let confirm = ch
            .basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?;
        in_flight.push(confirm);
        if in_flight.len() >= 1000 {
            if let Some(c) = in_flight.next().await {
                anyhow::ensure!(c?.is_ack(), "the broker refused a dead letter");
            }
        }
    }
    while let Some(c) = in_flight.next().await {
        anyhow::ensure!(c?.is_ack(), "the broker refused a dead letter");
    }
    Ok((started.elapsed(), bytes))
}

/// Counts the lines a command writes and keeps only the first few (a 100,000-line export kept
/// in memory would make the peak RSS meaningless).
#[derive(Clone, Default)]
struct Lines(Arc<AtomicUsize>, Arc<Mutex<String>>);

impl Write for Lines {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.iter().filter(|b| **b == b'\n').count();
        self.0.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut keep) = self.1.lock() {
            if keep.len() < 8192 {
                keep.push_str(&String::from_utf8_lossy(data));
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs one command in-process; returns how long it took and the start of its output.
async fn run(
    config: &AuditorConfig,
    args: &[&str],
    print: bool,
) -> anyhow::Result<(Duration, String)> {
    let cli = DlqCli::try_parse_from(std::iter::once("dlq").chain(args.iter().copied()))?;
    let (out, err) = (Lines::default(), Lines::default());
    let mut console = Console {
        out: Box::new(out.clone()),
        err: Box::new(err.clone()),
        input: Box::new(std::io::empty()),
        stdin_tty: false,
        stderr_tty: false,
        width: None,
    };
    let started = Instant::now();
    let code = run_with(cli.command, config, &mut console).await;
    let took = started.elapsed();
    let head = out.1.lock().map(|s| s.clone()).unwrap_or_default();
    let err_text = err.1.lock().map(|s| s.clone()).unwrap_or_default();
    println!(
        "{:>8.2}s  dlq {}  ({} lines out{})",
        took.as_secs_f64(),
        args.join(" "),
        out.0.load(Ordering::Relaxed),
        if code == std::process::ExitCode::SUCCESS {
            String::new()
        } else {
            format!(", FAILED: {}", err_text.trim())
        }
    );
    if print {
        println!("{head}{err_text}");
    }
    Ok((took, head))
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let prefix = format!("sbt-dlq-bench-{}", Uuid::now_v7().simple());
    let config = Config::from_toml(&format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n",
        args.url
    ))?;
    let topology = Topology::from_config(&config);
    let conn = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let setup = conn.create_channel().await?;
    topology.declare(&setup).await?;

    let result = bench(&conn, &topology, &AuditorConfig::from(&config), &args).await;
    if args.keep {
        println!("kept prefix {prefix}");
    } else {
        topology.delete(&setup).await?;
    }
    let _ = conn.close(200, "bench done".into()).await;
    result
}

async fn bench(
    conn: &Connection,
    topology: &Topology,
    config: &AuditorConfig,
    args: &Args,
) -> anyhow::Result<()> {
    let (took, bytes) = fill(conn, &topology.dead_letters(), args).await?;
    println!(
        "filled {} dead letters ({:.1} MiB, {:.0} B each) in {:.1}s ({:.0}/s)",
        args.count,
        bytes as f64 / 1048576.0,
        bytes as f64 / args.count.max(1) as f64,
        took.as_secs_f64(),
        args.count as f64 / took.as_secs_f64()
    );
    if args.fill_only {
        return Ok(());
    }
    let p = args.print;
    run(config, &["list", "--reason", "permanent"], p).await?;
    run(config, &["list", "--reason", "permanent", "--json"], false).await?;
    let (_, one) = run(
        config,
        &["list", "--reason", "exhausted", "--limit", "1"],
        false,
    )
    .await?;
    // The one row's first column is its id.
    if let Some(id) = one.lines().nth(1).and_then(|l| l.split_whitespace().next()) {
        run(config, &["show", id], p).await?;
    }
    let recent = [
        "list",
        "--target",
        "ops-robot",
        "--since",
        "1d",
        "--limit",
        "20",
    ];
    run(config, &recent, p).await?;
    run(config, &["list", "--grep", "order 4242:"], p).await?;
    run(config, &["stats"], p).await?;
    run(config, &["export"], false).await?;
    let mut replay = vec![
        "replay",
        "--source",
        "replay-me",
        "--yes",
        "--actor",
        "bench",
    ];
    let (_, said) = run(config, &replay, p).await?;
    println!("          {}", said.trim());
    run(config, &replay, p).await?;
    replay.extend(["--force", "--rate", args.rate.as_str()]);
    let (_, said) = run(config, &replay, p).await?;
    println!("          {}", said.trim());
    run(config, &["audit"], p).await?;
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS {mib} MiB");
    }
    Ok(())
}
