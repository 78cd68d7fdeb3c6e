//! How fast the console answers over a large store: it starts a console in-process on a store
//! that `dlq_bench --keep --fill-only` filled (100 000 letters by default), measures how long
//! its index takes to be complete and how much memory it holds, then asks for the first page
//! of a filtered list (the HTML page and the API) many times per filter and prints p50, p95
//! and max. Run it on a release build:
//!
//! ```text
//! cargo build --release -p deadletters --example dlq_bench -p switchboard-console --example console_bench
//! KEY=$(openssl rand -hex 32)
//! ./target/release/examples/dlq_bench --count 100000 --keep --fill-only --key $KEY   # prints the prefix
//! ./target/release/examples/console_bench --prefix <prefix> --key $KEY               # deletes it after
//! ```
use clap::Parser;
use shared::config::AuditorConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
struct Args {
    /// The prefix `dlq_bench --keep` printed.
    #[arg(long)]
    prefix: String,
    /// The audit key the letters were sealed with.
    #[arg(long)]
    key: String,
    /// Requests per filter and form.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Keep the prefix's queues afterwards.
    #[arg(long)]
    keep: bool,
}

const FILTERS: [(&str, &str); 7] = [
    ("no filter", ""),
    ("reason", "reason=permanent"),
    ("target + since", "target=ops-robot&since=1d"),
    ("source + stage", "source=crm&stage=work"),
    (
        "reason + source + target",
        "reason=exhausted&source=feishu-sales&target=ops-robot",
    ),
    ("text", "q=order+4242%3A"),
    ("seal unverified (none)", "seal=unverified"),
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (token, sha) = switchboard_console::auth::password::new_token();
    let whole = shared::Config::from_toml(&format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{p}\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"{p}\"\n[audit]\nkey = \"{}\"\n[console]\nlisten = \"127.0.0.1:0\"\nsecure_cookies = false\n[[console.tokens]]\nname = \"bench\"\nrole = \"viewer\"\nsha256 = \"{sha}\"\n",
        args.url, args.key, p = args.prefix
    ))?;
    let config = Arc::new(AuditorConfig::from(&whole));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(switchboard_console::run(
        config.clone(),
        listener,
        stop.clone(),
    ));
    let http = reqwest::Client::new();
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the index never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let indexed: serde_json::Value = http
        .get(format!("{base}/api/letters?limit=1"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    println!(
        "index complete: {} letters in {:.2}s; peak RSS {} MiB",
        indexed["total"],
        started.elapsed().as_secs_f64(),
        peak_rss_mib().unwrap_or(0)
    );
    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>9} {:>8}",
        "first page (50 rows) of", "form", "p50", "p95", "max", "matches"
    );
    for (name, qs) in FILTERS {
        for (form, path) in [("html", "/letters"), ("api", "/api/letters")] {
            let url = format!("{base}{path}?{qs}");
            let mut took = Vec::with_capacity(args.requests);
            let mut total = String::new();
            for _ in 0..args.requests {
                let t = Instant::now();
                let r = http.get(&url).bearer_auth(&token).send().await?;
                anyhow::ensure!(r.status() == 200, "{url}: {}", r.status());
                let body = r.bytes().await?;
                took.push(t.elapsed());
                if total.is_empty() {
                    total = match form {
                        "api" => {
                            serde_json::from_slice::<serde_json::Value>(&body)?["total"].to_string()
                        }
                        _ => String::from("-"),
                    };
                }
            }
            took.sort();
            let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
            println!(
                "{name:<28} {form:>6} {:>9} {:>9} {:>9} {total:>8}",
                ms(percentile(&took, 0.5)),
                ms(percentile(&took, 0.95)),
                ms(*took.last().unwrap_or(&Duration::ZERO))
            );
        }
    }
    stop.cancel();
    let _ = running.await;
    if !args.keep {
        let conn =
            lapin::Connection::connect(&args.url, lapin::ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        shared::topology::Topology::of_broker(&config.broker)
            .delete(&ch)
            .await?;
        let _ = conn.close(200, "bench done".into()).await;
    }
    Ok(())
}
