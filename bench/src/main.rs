//! `bench`: the benchmarks behind `./dev bench` and docs/PERFORMANCE.md. Each scenario
//! starts what it measures as real processes (the `switchboard` roles, the bare ceiling service),
//! the stand-ins it needs in this process (Dify, the receiver, the load generator), uses its own
//! broker and Redis prefixes, removes its queues and keys at the end, and prints a table and
//! writes `<out>/<scenario>.json`. Scenarios: `ingress` and `pipeline` (issue 7), `worker`
//! (issue 4), `dispatcher` (issue 5), `connector` (issue 13), `streaming` (issue 15); without one,
//! all six run in turn.
//! This module owns the command line and the order; the scenarios own their measurements. The
//! stand-ins it drives (Dify, the receiver, DingTalk's Stream gateway) come from the `standins`
//! crate; nothing here is used by the tests.
mod ceiling;
mod connector;
mod dispatcher;
mod fixture;
mod ingress;
mod load;
mod pipeline;
mod post_ceiling;
mod procs;
mod report;
mod stats;
mod streaming;
mod worker;

use clap::{Parser, Subcommand};

/// The same allocator as the `switchboard` binary: the ceilings (`ceiling-server`,
/// `post-ceiling`) are compared with the roles, so they must not be handicapped by glibc's malloc
/// where the roles have mimalloc (on mimalloc the POST-and-ack ceiling served a fifth more at a
/// fifth less CPU per delivery; docs/PERFORMANCE.md, "Issue 18, fifth round").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line: common options, then a scenario (all six without one).
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "The benchmarks of docs/PERFORMANCE.md (`./dev bench`)"
)]
pub struct BenchCommand {
    #[command(flatten)]
    pub common: fixture::Common,
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Ingress throughput and ack latency against the bare publish-per-request ceiling.
    Ingress(ingress::IngressArgs),
    /// The whole pipeline at a fixed rate: end-to-end latency, overhead, once-only counts.
    Pipeline(pipeline::PipelineArgs),
    /// One worker process against a Dify that answers after 1 s: events/s, memory, calls/event.
    Worker(worker::WorkerArgs),
    /// One dispatcher against a consume-POST-ack ceiling and the broker's own consume-and-ack
    /// rate; the rate limiter's accuracy.
    Dispatcher(dispatcher::DispatcherArgs),
    /// DingTalk Stream mode through a connector: ack latency on the connection vs the
    /// ingress's, and the pipeline's overhead per pushed event.
    Connector(connector::ConnectorArgs),
    /// Streamed replies against whole ones: time from the event's acknowledgement to the first
    /// visible text, next to Dify's first token and the full answer.
    Streaming(streaming::StreamingArgs),
    /// The ceiling service alone (started by the `ingress` scenario as its own process).
    #[command(hide = true)]
    CeilingServer(ceiling::CeilingArgs),
    /// The dispatcher's ceiling alone: consume, POST, ack (started by the `dispatcher`
    /// scenario as its own process).
    #[command(hide = true)]
    PostCeiling(post_ceiling::PostCeilingArgs),
}

/// A scenario with its default arguments (when `bench` is run without one).
#[derive(Parser)]
struct Defaults {
    #[command(subcommand)]
    scenario: Scenario,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(BenchCommand::parse()).await
}

/// Runs one scenario, or all of them; fails if any scenario failed to run (a missed target is
/// a result, not a failure).
async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let common = cmd.common;
    let scenarios = match cmd.scenario {
        Some(Scenario::CeilingServer(args)) => return ceiling::serve(args).await,
        Some(Scenario::PostCeiling(args)) => return post_ceiling::serve(args).await,
        Some(s) => vec![s],
        None => [
            "ingress",
            "pipeline",
            "worker",
            "dispatcher",
            "connector",
            "streaming",
        ]
        .into_iter()
        .map(|name| Ok(Defaults::try_parse_from(["bench", name])?.scenario))
        .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let mut failed = Vec::new();
    for scenario in scenarios {
        let (name, result) = match &scenario {
            Scenario::Ingress(a) => ("ingress", ingress::run(&common, a).await),
            Scenario::Pipeline(a) => ("pipeline", pipeline::run(&common, a).await),
            Scenario::Worker(a) => ("worker", worker::run(&common, a).await),
            Scenario::Dispatcher(a) => ("dispatcher", dispatcher::run(&common, a).await),
            Scenario::Connector(a) => ("connector", connector::run(&common, a).await),
            Scenario::Streaming(a) => ("streaming", streaming::run(&common, a).await),
            Scenario::CeilingServer(_) | Scenario::PostCeiling(_) => continue,
        };
        match result {
            Ok(report) => {
                report.print();
                match report.write_json(&common.out) {
                    Ok(path) => println!("results: {}", path.display()),
                    Err(e) => eprintln!("bench {name}: {e:#}"),
                }
            }
            Err(e) => {
                eprintln!("bench {name}: could not run: {e:#}");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("scenario(s) that could not run: {}", failed.join(", "))
    }
}
