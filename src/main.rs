//! `switchboard`: the one binary. It parses the command line, loads and checks the config,
//! starts telemetry and wires the roles together; every role's logic lives in its crate.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shared::config::{AuditorConfig, Config, ConfigIssue, CONFIG_ENV};
use shared::topology::Stage;
use shared::Services;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every role allocates per event (requests, stream chunks, jobs, Redis replies) from many tasks
/// on a few threads; mimalloc serves that faster than glibc's malloc. Measured side by side with
/// the same code (docs/PERFORMANCE.md, Findings 7): the pipeline's overhead p99 at 600 events/s
/// 92–104 ms against 155–435 ms, one worker 1,366 events/s against 924–1,015, a dispatcher 0.60
/// of its ceiling against 0.46 (a ceiling then on glibc's malloc; `bench` uses mimalloc too since
/// Findings 10), for 15–40 MB more resident memory per process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "switchboard",
    version,
    about = "Verified webhooks in, Dify once per event, answers out"
)]
struct Cli {
    /// The TOML config file.
    #[arg(long, short, env = CONFIG_ENV, global = true, default_value = "switchboard.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Receive webhooks on `ingress.listen` and enqueue them (admin listener on
    /// `ingress.admin_listen`).
    Ingress,
    /// Call Dify for every event (admin listener on `worker.admin_listen`).
    Worker,
    /// Deliver answers to targets (admin listener on `dispatcher.admin_listen`).
    Dispatcher,
    /// Hold the outbound connections of the sources with `mode = "stream"` (admin listener on
    /// `connector.admin_listen`).
    Connector,
    /// Fire the `[[schedules]]`: any number of processes may run it, each tick is one event
    /// (admin listener on `scheduler.admin_listen`).
    Scheduler,
    /// Every role (the scheduler too) in one process: the quick start and small sites (admin listener on
    /// `ingress.admin_listen`).
    All,
    /// The schedules: their next runs and last outcome, or one run now.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// Work with the config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Declare every queue and stream on the broker, then exit.
    Topology,
    /// Dead letters: list, show, export, stats, replay, audit.
    Dlq {
        #[command(subcommand)]
        command: Box<deadletters::cli::DlqCommand>,
    },
    /// The auditors' web console and API on `console.listen` (or a helper for its config).
    Console {
        #[command(subcommand)]
        command: Option<switchboard_console::cli::ConsoleCommand>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the config (and every source, app and target in it); exit non-zero on problems.
    Check,
}

#[derive(Subcommand, Debug)]
enum ScheduleCommand {
    /// Each schedule: its next runs in its zone, its last run and what became of it.
    List,
    /// One run of the schedule now, recorded as manual.
    Run {
        /// The schedule's id.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Roles {
    Ingress,
    Worker,
    Dispatcher,
    Connector,
    Scheduler,
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Dlq { command } => {
            return auditors(&cli.config, |config| async move {
                deadletters::cli::run(*command, &config).await
            })
        }
        Command::Console {
            command: Some(helper),
        } => {
            // The helpers need no config: they make what goes into it.
            return match switchboard_console::cli::run(&helper) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchboard console: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Console { command: None } => return auditors(&cli.config, console),
        _ => {}
    }
    // `config check` reports the cross-checks together with every role's findings.
    let checking = matches!(cli.command, Command::Config { .. });
    let loaded = if checking {
        Config::parse_file(&cli.config)
    } else {
        Config::load(&cli.config)
    };
    let config = match loaded {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprint!("{}: {e}", cli.config.display());
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init_tracing(config.telemetry.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Config {
                command: ConfigCommand::Check,
            } => Ok(config_check(&config, &cli.config)),
            Command::Topology => topology(&config).await,
            // Run above, with the auditors' part of the config only.
            Command::Dlq { .. } | Command::Console { .. } => Ok(ExitCode::from(2)),
            Command::Ingress => serve(config, Roles::Ingress).await,
            Command::Worker => serve(config, Roles::Worker).await,
            Command::Dispatcher => serve(config, Roles::Dispatcher).await,
            Command::Connector => serve(config, Roles::Connector).await,
            Command::Scheduler => serve(config, Roles::Scheduler).await,
            Command::Schedule { command } => schedule(&config, command).await,
            Command::All => serve(config, Roles::All).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an auditors' command (`dlq`, `console`) with only the auditors' sections of the config
/// loaded: the platforms' and Dify's secrets need not resolve where auditors work.
fn auditors<F, Fut>(path: &std::path::Path, run: F) -> ExitCode
where
    F: FnOnce(Arc<AuditorConfig>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let config = match AuditorConfig::load(path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprint!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init_tracing(config.telemetry.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `switchboard console`: the auditors' console on its own, until SIGINT/SIGTERM.
async fn console(config: Arc<AuditorConfig>) -> anyhow::Result<ExitCode> {
    let Some(c) = config.console.as_ref() else {
        anyhow::bail!("there is no [console] section in the config");
    };
    let listener = TcpListener::bind(c.listen)
        .await
        .with_context(|| format!("cannot listen on console.listen {}", c.listen))?;
    let stop = CancellationToken::new();
    shared::shutdown::cancel_on_signals(stop.clone());
    switchboard_console::run(config, listener, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Every problem the roles find in the config, beyond what loading checked.
fn role_issues(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = ingress::validate(config);
    issues.extend(worker::validate(config));
    issues.extend(dispatcher::validate(config));
    issues.extend(connector::validate(config));
    issues.extend(scheduler::validate(config));
    // A source block is read by the ingress (its platform's keys), by the dispatcher (its
    // reply channel's) and, in stream mode, by the connector (its connection's): a key none
    // declares is a typo.
    for source in &config.sources {
        let mut also = dispatcher::target::reply::keys(&source.platform).to_vec();
        also.extend(connector::keys(source));
        issues.extend(ingress::platform::unknown_keys(source, &also));
    }
    issues
}

fn config_check(config: &Config, path: &std::path::Path) -> ExitCode {
    let mut issues = config.validate().err().map(|e| e.0).unwrap_or_default();
    issues.extend(role_issues(config));
    if config.redis.encryption_key.is_none() {
        // Allowed (the quick start runs without one), but a demanding operator wants to know.
        eprintln!(
            "{}: warning: redis.encryption_key is not set: access tokens, recorded answers and reply credentials are stored in Redis as plain text",
            path.display()
        );
    }
    if issues.is_empty() {
        println!(
            "{}: ok ({} sources, {} apps, {} targets{})",
            path.display(),
            config.sources.len(),
            config.apps.len(),
            config.targets.len(),
            match config.schedules.len() {
                0 => String::new(),
                n => format!(", {n} schedules"),
            }
        );
        ExitCode::SUCCESS
    } else {
        eprint!(
            "{}: {}",
            path.display(),
            shared::config::ConfigError(issues)
        );
        ExitCode::from(2)
    }
}

async fn topology(config: &Config) -> anyhow::Result<ExitCode> {
    let close = CancellationToken::new();
    let services = Services::start(config, "switchboard-topology", close.clone())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !services.broker.is_connected() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the broker is unreachable; nothing declared");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for q in services.broker.topology().all_queues() {
        println!("{q}");
    }
    close.cancel();
    Ok(ExitCode::SUCCESS)
}

/// `switchboard schedule list|run ID`.
async fn schedule(config: &Config, command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let issues = scheduler::validate(config);
    if !issues.is_empty() {
        anyhow::bail!("{}", shared::config::ConfigError(issues));
    }
    let close = CancellationToken::new();
    let services = Services::start(config, "switchboard-schedule", close.clone())?;
    let result = match command {
        ScheduleCommand::List => scheduler::cli::list(config, &services).await.map(|text| {
            print!("{text}");
        }),
        ScheduleCommand::Run { id } => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while !services.broker.is_connected() {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("the broker is unreachable; nothing published");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            scheduler::run_now(config, &services, &id).await.map(|run| {
                println!(
                    "{id}: published event {} (manual, dedup key {})",
                    run.event_id, run.dedup_key
                );
            })
        }
    };
    close.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn serve(config: Arc<Config>, roles: Roles) -> anyhow::Result<ExitCode> {
    let issues = role_issues(&config);
    if !issues.is_empty() {
        anyhow::bail!("{}", shared::config::ConfigError(issues));
    }
    // `stop` ends intake (SIGINT/SIGTERM); `close` drops the broker connection only after
    // every role has drained, so in-flight work can still ack and publish.
    let stop = CancellationToken::new();
    let close = CancellationToken::new();
    shared::shutdown::cancel_on_signals(stop.clone());
    let name = format!("switchboard-{roles:?}-{}", std::process::id()).to_lowercase();
    let services = Services::start(&config, &name, close.clone())?;
    let mut tasks = tokio::task::JoinSet::new();
    if matches!(roles, Roles::Ingress | Roles::All) {
        let listener = TcpListener::bind(config.ingress.listen)
            .await
            .with_context(|| {
                format!("cannot listen on ingress.listen {}", config.ingress.listen)
            })?;
        tasks.spawn(ingress::run(
            config.clone(),
            services.clone(),
            listener,
            stop.clone(),
        ));
    }
    if matches!(roles, Roles::Worker | Roles::All) {
        tasks.spawn(worker::run(config.clone(), services.clone(), stop.clone()));
    }
    if matches!(roles, Roles::Dispatcher | Roles::All) {
        tasks.spawn(dispatcher::run(
            config.clone(),
            services.clone(),
            stop.clone(),
        ));
    }
    if matches!(roles, Roles::Scheduler | Roles::All) && !config.schedules.is_empty() {
        tasks.spawn(scheduler::serve(
            config.clone(),
            services.clone(),
            name.clone(),
            stop.clone(),
        ));
    }
    // The connector's connections, which `/readyz` reports one by one.
    let links = connector::Status::default();
    if matches!(roles, Roles::Connector | Roles::All) {
        tasks.spawn(connector::run(
            config.clone(),
            services.clone(),
            links.clone(),
            stop.clone(),
        ));
    }
    // Queue depths of the stages this process consumes, for dashboards and autoscalers.
    let stages: Vec<Stage> = match roles {
        Roles::Worker => vec![Stage::Work],
        Roles::Dispatcher => vec![Stage::Deliver],
        Roles::All => vec![Stage::Work, Stage::Deliver],
        _ => Vec::new(),
    };
    if !stages.is_empty() {
        let (broker, stop) = (services.broker.clone(), stop.clone());
        tasks.spawn(async move {
            shared::depth::sample(broker, stages, stop).await;
            Ok(())
        });
    }
    // The console joins `all` when the config has a [console] section.
    if let (Roles::All, Some(c)) = (roles, config.console.as_ref()) {
        let listener = TcpListener::bind(c.listen)
            .await
            .with_context(|| format!("cannot listen on console.listen {}", c.listen))?;
        let auditors = Arc::new(AuditorConfig::from(config.as_ref()));
        tasks.spawn(switchboard_console::run(auditors, listener, stop.clone()));
    }
    // /metrics, /healthz, /readyz on an admin listener, never the public port: the metrics name
    // every source id, that is, every hook URL. A process with the ingress uses the ingress's.
    let addr = match roles {
        Roles::Ingress | Roles::All => config.ingress.admin_listen,
        Roles::Worker => config.worker.admin_listen,
        Roles::Dispatcher => config.dispatcher.admin_listen,
        Roles::Connector => config.connector.admin_listen,
        Roles::Scheduler => config.scheduler.admin_listen,
    };
    let admin = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on admin address {addr}"))?;
    tracing::info!(admin = %admin.local_addr()?, "admin listener (/metrics, /healthz, /readyz)");
    let app = shared::telemetry::admin_router(connector::ConnectorReadiness {
        broker: services.broker.clone(),
        status: links,
    });
    let admin_stop = stop.clone();
    tasks.spawn(async move {
        axum_serve(admin, app, admin_stop).await?;
        Ok(())
    });
    let mut failed = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "a role failed; stopping");
                failed.get_or_insert(e);
                stop.cancel();
            }
            Err(e) => {
                failed.get_or_insert(anyhow::anyhow!("a role panicked: {e}"));
                stop.cancel();
            }
        }
    }
    close.cancel();
    // Let the broker supervisor close the connection cleanly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn axum_serve(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
}
