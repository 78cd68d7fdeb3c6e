//! `standins`: the stand-ins as processes, for the quick start (`./dev run`).
//!   standins dify --listen 127.0.0.1:5001 [--api-key K] [--latency-ms N] [--chunks N]
//!   standins receiver --listen 127.0.0.1:9000 [--secret whsec_…]
use clap::{Parser, Subcommand};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "standins",
    about = "Local stand-ins for Dify and webhook receivers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A Dify stand-in (chat, workflow, completion; blocking and streaming).
    Dify {
        #[arg(long, default_value = "127.0.0.1:5001")]
        listen: String,
        #[arg(long)]
        api_key: Option<String>,
        #[arg(long, default_value_t = 300)]
        latency_ms: u64,
        #[arg(long, default_value_t = 20)]
        chunks: usize,
    },
    /// A webhook receiver that verifies signatures and prints what arrives.
    Receiver {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        #[arg(long)]
        secret: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dify {
            listen,
            api_key,
            latency_ms,
            chunks,
        } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            let opts = standins::dify::DifyOptions {
                api_key,
                latency: standins::dify::Latency::Fixed(Duration::from_millis(latency_ms)),
                chunks,
                ..Default::default()
            };
            let dify = standins::dify::DifyStandin::start_on(listener, opts).await?;
            eprintln!("Dify stand-in on {}", dify.base_url());
            tokio::signal::ctrl_c().await?;
        }
        Command::Receiver { listen, secret } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            let receiver =
                standins::receiver::Receiver::start_on(listener, secret.as_deref()).await?;
            eprintln!("receiver on {}", receiver.url("/"));
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        let all = receiver.received();
                        for r in &all[seen..] {
                            println!("{} {}", r.webhook_id, r.body);
                        }
                        seen = all.len();
                    }
                }
            }
        }
    }
    Ok(())
}
