//! `switchboard dlq …`: the auditors' command line over the dead-letter store. Parses the
//! commands (clap), reads the store through [`Store`], decides with the pure modules and writes
//! through a [`Console`], so that tests drive every command with captured output and no
//! terminal. Every failure is one line on stderr and a non-zero exit ([`DlqError::exit_code`]).
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::envelope::{Reason, Stage};
use shared::units::Rate;
use shared::Config;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::audit::{Ledger, ReplayRecord, Selection};
use super::execute::{execute, RunSpec};
use super::filter::{parse_reason, parse_stage, parse_when, Filter, Start, SINCE_MARGIN};
use super::record::{self, Letter, Names};
use super::render::{self, ExportLine, ListItem, Stats};
use super::replay::{plan, Plan};
use super::store::Store;
use super::DlqError;

const LIST_HELP: &str = "Examples:
  switchboard dlq list
  switchboard dlq list --reason exhausted --target ops-robot --since 24h
  switchboard dlq list --stage work --grep 'quota exceeded' --json";
const SHOW_HELP: &str = "Examples:
  switchboard dlq show 0190f3a2-7c1e-7b3a-9d41-2f6e8c0a1b2c
  switchboard dlq show 0190f3a2-7c1e-7b3a-9d41-2f6e8c0a1b2c --json";
const EXPORT_HELP: &str = "Examples:
  switchboard dlq export --out dead-letters.jsonl
  switchboard dlq export --source crm --since 2024-05-01 --until 2024-05-08 > week.jsonl";
const STATS_HELP: &str = "Examples:
  switchboard dlq stats
  switchboard dlq stats --since 7d --json";
const REPLAY_HELP: &str = "Examples:
  switchboard dlq replay --target ops-robot --reason exhausted --dry-run
  switchboard dlq replay --target ops-robot --reason exhausted --rate 20/s --actor alice
  switchboard dlq replay 0190f3a2-7c1e-7b3a-9d41-2f6e8c0a1b2c --yes
  switchboard dlq replay --all --force --yes";
const AUDIT_HELP: &str = "Examples:
  switchboard dlq audit
  switchboard dlq audit 0190f3b0-1d2e-7f00-8a9b-0c1d2e3f4a5b
  switchboard dlq audit --json";

/// The auditors' commands on the dead-letter store.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (newest last), with whether and when each was replayed.
    #[command(after_help = LIST_HELP)]
    List(ListArgs),
    /// Show one dead letter in full, its attempts as a timeline.
    #[command(after_help = SHOW_HELP)]
    Show(ShowArgs),
    /// Export dead letters as JSON Lines, one full record per line.
    #[command(after_help = EXPORT_HELP)]
    Export(ExportArgs),
    /// Count dead letters by reason, stage, source, target and day.
    #[command(after_help = STATS_HELP)]
    Stats(StatsArgs),
    /// Send dead letters back to their stage with a fresh attempt count; recorded.
    #[command(after_help = REPLAY_HELP)]
    Replay(ReplayArgs),
    /// List the replay record: who replayed what, when, and how it went.
    #[command(after_help = AUDIT_HELP)]
    Audit(AuditArgs),
}

/// The filters every reading command takes. Values may be repeated or comma-separated.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only these sources (`[[sources]] id`).
    #[arg(long, value_delimiter = ',', value_name = "ID")]
    pub source: Vec<String>,
    /// Only these targets (`[[targets]] id`, or `reply`).
    #[arg(long, value_delimiter = ',', value_name = "ID")]
    pub target: Vec<String>,
    /// Only this stage: work (calling Dify) or deliver (to a target).
    #[arg(long, value_delimiter = ',', value_parser = parse_stage, value_name = "STAGE")]
    pub stage: Vec<Stage>,
    /// Only this reason: permanent, exhausted, poison, expired, invalid.
    #[arg(long, value_delimiter = ',', value_parser = parse_reason, value_name = "REASON")]
    pub reason: Vec<Reason>,
    /// Dead at or after: 2024-05-01, 2024-05-01T10:00:00Z, or a duration ago (24h, 7d).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Dead before (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Text anywhere in the record or the original message (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
}

impl FilterArgs {
    pub fn to_filter(&self, now: DateTime<Utc>) -> Result<Filter, DlqError> {
        let when = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| parse_when(s, now).map_err(|e| DlqError::Usage(format!("--{flag}: {e}"))))
                .transpose()
        };
        let f = Filter {
            sources: self.source.clone(),
            targets: self.target.clone(),
            stages: self.stage.clone(),
            reasons: self.reason.clone(),
            since: when("since", &self.since)?,
            until: when("until", &self.until)?,
            grep: self.grep.clone().filter(|g| !g.is_empty()),
        };
        if let (Some(s), Some(u)) = (f.since, f.until) {
            if s >= u {
                return Err(DlqError::Usage(format!(
                    "--since ({}) must be before --until ({})",
                    render::time(s),
                    render::time(u)
                )));
            }
        }
        Ok(f)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print JSON (an array of summaries) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show only the newest N (0: all).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub limit: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The dead letter's id (as `dlq list` shows it).
    pub id: Uuid,
    /// Print the full record as JSON (the `export` line) instead.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Dead letters to replay, by id (or select them with filters or --all).
    pub ids: Vec<Uuid>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Replay every dead letter in the store (with no filter).
    #[arg(long)]
    pub all: bool,
    /// Show what would be replayed and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Replay dead letters that were already replayed, too.
    #[arg(long)]
    pub force: bool,
    /// At most this pace: 50/s, 600/min, 3/5s (default: as fast as the broker confirms).
    #[arg(long, value_parser = Rate::parse, value_name = "RATE")]
    pub rate: Option<Rate>,
    /// Who is replaying, for the record (default: the OS user).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// One replay's full record: every dead letter it sent and every failure.
    pub replay: Option<Uuid>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dlq` parsed on its own (tests, and anything that wants the command line without the binary).
#[derive(Debug, Parser)]
#[command(
    name = "dlq",
    about = "The auditors' commands on the dead-letter store"
)]
pub struct DlqCli {
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// Where a command reads answers and writes output; a real terminal or memory (tests).
pub struct Console {
    pub out: Box<dyn Write + Send>,
    pub err: Box<dyn Write + Send>,
    pub input: Box<dyn BufRead + Send>,
    /// Whether a person can answer the confirmation prompt.
    pub stdin_tty: bool,
    /// Whether the progress bar is drawn.
    pub stderr_tty: bool,
    /// Table width, when stdout is a terminal.
    pub width: Option<u16>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("stdin_tty", &self.stdin_tty)
            .field("stderr_tty", &self.stderr_tty)
            .finish()
    }
}

impl Console {
    /// The process's stdin, stdout and stderr.
    pub fn terminal() -> Self {
        let stdout_tty = std::io::stdout().is_terminal();
        Self {
            out: Box::new(BufWriter::new(std::io::stdout())),
            err: Box::new(std::io::stderr()),
            input: Box::new(BufReader::new(std::io::stdin())),
            stdin_tty: std::io::stdin().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
            width: if stdout_tty {
                comfy_table::Table::new().width()
            } else {
                None
            },
        }
    }

    /// A console on memory: `input` is what the "person" types; nothing is a terminal unless
    /// `stdin_tty` says stdin is.
    pub fn in_memory(input: &str, stdin_tty: bool) -> (Self, Captured) {
        let captured = Captured::default();
        let console = Self {
            out: Box::new(SharedBuf(captured.out.clone())),
            err: Box::new(SharedBuf(captured.err.clone())),
            input: Box::new(std::io::Cursor::new(input.as_bytes().to_vec())),
            stdin_tty,
            stderr_tty: false,
            width: None,
        };
        (console, captured)
    }
}

/// What a [`Console::in_memory`] received.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    pub fn stdout(&self) -> String {
        read(&self.out)
    }
    pub fn stderr(&self) -> String {
        read(&self.err)
    }
}

fn read(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    match buf.lock() {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(p) => String::from_utf8_lossy(&p.into_inner()).into_owned(),
    }
}

struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut b) => b.extend_from_slice(data),
            Err(p) => p.into_inner().extend_from_slice(data),
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs one `dlq` command on the process's terminal.
pub async fn run(cmd: DlqCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let mut console = Console::terminal();
    Ok(run_with(cmd, config, &mut console).await)
}

/// Runs one `dlq` command on a console; a failure is one line on its stderr.
pub async fn run_with(cmd: DlqCommand, config: &Config, console: &mut Console) -> ExitCode {
    let code = match dispatch(cmd, config, console).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = console.out.flush();
            let line = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(console.err, "error: {line}");
            e.exit_code()
        }
    };
    let _ = console.out.flush();
    let _ = console.err.flush();
    code
}

async fn dispatch(cmd: DlqCommand, config: &Config, c: &mut Console) -> Result<(), DlqError> {
    let now = Utc::now();
    match cmd {
        DlqCommand::List(a) => list(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Show(a) => show(&a, config, c).await,
        DlqCommand::Export(a) => export(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Stats(a) => stats(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Replay(a) => replay(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Audit(a) => audit(&a, config, c).await,
    }
}

fn write_err(e: std::io::Error) -> DlqError {
    DlqError::Write {
        path: "stdout".into(),
        reason: e.to_string(),
    }
}

/// Connects and reads the replay record (empty when no replay stream exists yet).
async fn open(config: &Config) -> Result<(Store, Names, Ledger), DlqError> {
    let store = Store::connect(config).await?;
    let names = Names::of(store.topology());
    let replays = store.topology().replays();
    let mut records = Vec::new();
    if store.exists(&replays).await? {
        store
            .scan(&replays, Start::First, |e| {
                if let Ok(r) = shared::envelope::decode::<ReplayRecord>(&e.body) {
                    records.push(r);
                }
                ControlFlow::Continue(())
            })
            .await?;
    }
    Ok((store, names, Ledger::from_records(records)))
}

/// Nothing matched: an error when a filter was given, a note when the store is just empty.
fn none_found(filter: &Filter, c: &mut Console) -> Result<(), DlqError> {
    if filter.is_empty() {
        let _ = writeln!(c.err, "the dead-letter store is empty");
        Ok(())
    } else {
        Err(DlqError::NothingMatched(filter.describe()))
    }
}

/// Reads the summaries that match, each once.
async fn matching(
    store: &Store,
    names: &Names,
    filter: &Filter,
    mut take: impl FnMut(record::Summary),
) -> Result<(), DlqError> {
    let mut seen = HashSet::new();
    store
        .scan(&names.stream, filter.start(), |e| {
            if filter.matches_body(&e.body) {
                let s = record::summary(e.offset, &e.body, &e.meta, names);
                if filter.matches(&s) && seen.insert(s.id) {
                    take(s);
                }
            }
            ControlFlow::Continue(())
        })
        .await
}

async fn list(
    a: &ListArgs,
    filter: Filter,
    config: &Config,
    c: &mut Console,
) -> Result<(), DlqError> {
    let (store, names, ledger) = open(config).await?;
    let mut items = Vec::new();
    let read = matching(&store, &names, &filter, |s| {
        let marks = ledger.marks(s.id).to_vec();
        items.push(ListItem {
            replayed: !marks.is_empty(),
            replays: marks,
            summary: s,
        });
    })
    .await;
    store.close().await;
    read?;
    if items.is_empty() {
        return none_found(&filter, c);
    }
    let total = items.len();
    if a.limit > 0 && total > a.limit {
        items.drain(..total - a.limit);
        let _ = writeln!(
            c.err,
            "showing the newest {} of {total} dead letters (--limit 0 shows all)",
            a.limit
        );
    }
    if a.json {
        let text = serde_json::to_string_pretty(&items).unwrap_or_default();
        writeln!(c.out, "{text}").map_err(write_err)?;
    } else {
        let text = render::list_table(&items, c.width);
        writeln!(c.out, "{text}").map_err(write_err)?;
        let replayed = items.iter().filter(|i| i.replayed).count();
        let _ = writeln!(
            c.err,
            "{} dead letter(s), {replayed} replayed ({})",
            items.len(),
            filter.describe()
        );
    }
    Ok(())
}

/// Where to start looking for letters by id: ids made by `Uuid::now_v7` when the letter was,
/// so a read may start a margin before the oldest; anything else means the start.
fn start_for(ids: &HashSet<Uuid>) -> Start {
    let mut oldest: Option<u64> = None;
    for id in ids {
        match id.get_timestamp().filter(|_| id.get_version_num() == 7) {
            Some(ts) => {
                let (secs, _) = ts.to_unix();
                oldest = Some(oldest.map_or(secs, |o| o.min(secs)));
            }
            None => return Start::First,
        }
    }
    match oldest {
        Some(s) => Start::Timestamp(s.saturating_sub(SINCE_MARGIN.num_seconds() as u64)),
        None => Start::First,
    }
}

/// Reads the whole letters with these ids; a second pass from the start catches any whose id
/// time misled the first.
async fn by_ids(
    store: &Store,
    names: &Names,
    ids: &HashSet<Uuid>,
) -> Result<Vec<Letter>, DlqError> {
    let mut found: Vec<Letter> = Vec::new();
    let mut missing = ids.clone();
    let mut starts = vec![start_for(ids)];
    if starts[0] != Start::First {
        starts.push(Start::First);
    }
    for start in starts {
        if missing.is_empty() {
            break;
        }
        store
            .scan(&names.stream, start, |e| {
                let s = record::summary(e.offset, &e.body, &e.meta, names);
                if missing.remove(&s.id) {
                    found.push(record::letter(e.offset, &e.body, &e.meta, names));
                }
                if missing.is_empty() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await?;
    }
    if !missing.is_empty() {
        let mut m: Vec<String> = missing.iter().map(Uuid::to_string).collect();
        m.sort();
        return Err(DlqError::UnknownIds(m.join(", ")));
    }
    found.sort_by_key(|l| l.offset);
    Ok(found)
}

async fn show(a: &ShowArgs, config: &Config, c: &mut Console) -> Result<(), DlqError> {
    let (store, names, ledger) = open(config).await?;
    let ids = HashSet::from([a.id]);
    let found = by_ids(&store, &names, &ids).await;
    store.close().await;
    let Some(l) = found?.into_iter().next() else {
        return Err(DlqError::UnknownIds(a.id.to_string()));
    };
    let marks = ledger.marks(l.letter.id);
    let text = if a.json {
        serde_json::to_string_pretty(&ExportLine::new(&l, marks)).unwrap_or_default()
    } else {
        let queue = match l.letter.stage {
            Stage::Work => &names.work,
            Stage::Deliver => &names.deliver,
        };
        render::show(&l, marks, queue)
    };
    writeln!(c.out, "{text}").map_err(write_err)
}

async fn export(
    a: &ExportArgs,
    filter: Filter,
    config: &Config,
    c: &mut Console,
) -> Result<(), DlqError> {
    let (store, names, ledger) = open(config).await?;
    let path = a.out.as_ref().map(|p| p.display().to_string());
    let mut file = match &a.out {
        None => None,
        Some(p) => Some(BufWriter::new(std::fs::File::create(p).map_err(|e| {
            DlqError::Write {
                path: p.display().to_string(),
                reason: e.to_string(),
            }
        })?)),
    };
    let mut count = 0u64;
    let mut failed: Option<std::io::Error> = None;
    let mut seen = HashSet::new();
    let read = store
        .scan(&names.stream, filter.start(), |e| {
            if !filter.matches_body(&e.body) {
                return ControlFlow::Continue(());
            }
            let s = record::summary(e.offset, &e.body, &e.meta, &names);
            if !filter.matches(&s) || !seen.insert(s.id) {
                return ControlFlow::Continue(());
            }
            let l = record::letter(e.offset, &e.body, &e.meta, &names);
            let line = serde_json::to_string(&ExportLine::new(&l, ledger.marks(l.letter.id)))
                .unwrap_or_default();
            let w: &mut dyn Write = match file.as_mut() {
                Some(f) => f,
                None => &mut c.out,
            };
            match writeln!(w, "{line}") {
                Ok(()) => {
                    count += 1;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        })
        .await;
    store.close().await;
    let flushed = match file.as_mut() {
        Some(f) => f.flush(),
        None => Ok(()),
    };
    let out_err = |e: std::io::Error| DlqError::Write {
        path: path.clone().unwrap_or_else(|| "stdout".into()),
        reason: e.to_string(),
    };
    let cleanup = || {
        if let Some(p) = &a.out {
            let _ = std::fs::remove_file(p);
        }
    };
    if let Err(e) = read {
        cleanup();
        return Err(e);
    }
    if let Some(e) = failed {
        return Err(out_err(e));
    }
    flushed.map_err(out_err)?;
    if count == 0 {
        cleanup();
        return none_found(&filter, c);
    }
    let _ = writeln!(
        c.err,
        "exported {count} dead letter(s) to {}",
        path.as_deref().unwrap_or("stdout")
    );
    Ok(())
}

async fn stats(
    a: &StatsArgs,
    filter: Filter,
    config: &Config,
    c: &mut Console,
) -> Result<(), DlqError> {
    let (store, names, ledger) = open(config).await?;
    let mut s = Stats::default();
    let read = matching(&store, &names, &filter, |x| {
        s.add(&x, ledger.replayed(x.id));
    })
    .await;
    store.close().await;
    read?;
    if s.total == 0 && !filter.is_empty() {
        return Err(DlqError::NothingMatched(filter.describe()));
    }
    let text = if a.json {
        serde_json::to_string_pretty(&s).unwrap_or_default()
    } else {
        render::stats(&s, c.width)
    };
    writeln!(c.out, "{text}").map_err(write_err)
}

fn actor(given: &Option<String>) -> String {
    given
        .clone()
        .filter(|a| !a.trim().is_empty())
        .or_else(|| whoami::username().ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn host() -> String {
    whoami::hostname().unwrap_or_else(|_| "unknown".into())
}

async fn replay(
    a: &ReplayArgs,
    filter: Filter,
    config: &Config,
    c: &mut Console,
) -> Result<(), DlqError> {
    let by_filter = a.all || !filter.is_empty();
    if a.ids.is_empty() && !by_filter {
        return Err(DlqError::Usage(
            "say which dead letters to replay: ids, filters (such as --reason exhausted) or --all"
                .into(),
        ));
    }
    if !a.ids.is_empty() && by_filter {
        return Err(DlqError::Usage(
            "give either ids or filters (--all), not both".into(),
        ));
    }
    let selection = if a.ids.is_empty() {
        Selection::Filter {
            description: if filter.is_empty() {
                "--all".into()
            } else {
                filter.describe()
            },
            filter: filter.clone(),
        }
    } else {
        Selection::Ids { ids: a.ids.clone() }
    };
    let (store, names, ledger) = open(config).await?;
    let result = replay_on(a, &filter, selection, &store, &names, &ledger, c).await;
    store.close().await;
    result
}

async fn replay_on(
    a: &ReplayArgs,
    filter: &Filter,
    selection: Selection,
    store: &Store,
    names: &Names,
    ledger: &Ledger,
    c: &mut Console,
) -> Result<(), DlqError> {
    let letters = if a.ids.is_empty() {
        let mut keep = Vec::new();
        let mut seen = HashSet::new();
        store
            .scan(&names.stream, filter.start(), |e| {
                if filter.matches_body(&e.body) {
                    let s = record::summary(e.offset, &e.body, &e.meta, names);
                    if filter.matches(&s) && seen.insert(s.id) {
                        keep.push(record::letter(e.offset, &e.body, &e.meta, names));
                    }
                }
                ControlFlow::Continue(())
            })
            .await?;
        if keep.is_empty() {
            return match filter.is_empty() {
                true => Err(DlqError::NothingMatched(
                    "--all (the store is empty)".into(),
                )),
                false => Err(DlqError::NothingMatched(filter.describe())),
            };
        }
        keep
    } else {
        by_ids(store, names, &a.ids.iter().copied().collect()).await?
    };
    let p = plan(letters, ledger, a.force);
    if a.dry_run {
        return dry_run(&p, names, ledger, c);
    }
    let actor = actor(&a.actor);
    if !p.send.is_empty() && !a.yes {
        confirm(&p, names, &actor, c)?;
    }
    let progress = if c.stderr_tty && !p.send.is_empty() {
        let pb =
            ProgressBar::with_draw_target(Some(p.send.len() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let stop = CancellationToken::new();
    let on_ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        })
    };
    let spec = RunSpec {
        actor: actor.clone(),
        host: host(),
        selection,
        force: a.force,
        rate: a.rate,
        rate_text: a
            .rate
            .map(|r| format!("{}/{}", r.count, humantime::format_duration(r.per))),
    };
    let outcome = execute(store, &p, &spec, &progress, &stop).await;
    on_ctrl_c.abort();
    progress.finish_and_clear();
    let o = outcome?;
    let secs = o.sending.as_secs_f64();
    let pace = if o.sent > 0 && secs > 0.0 {
        format!(" in {secs:.1}s ({:.0}/s)", o.sent as f64 / secs)
    } else {
        String::new()
    };
    writeln!(
        c.out,
        "replay {}: {} sent{pace}, {} skipped as already replayed, {} failed (by {actor}; `switchboard dlq audit {}` shows the record)",
        o.replay_id, o.sent, o.skipped, o.failed, o.replay_id
    )
    .map_err(write_err)?;
    if o.state == super::audit::RunState::Interrupted {
        return Err(DlqError::Interrupted {
            sent: o.sent,
            total: p.send.len() as u64,
            replay_id: o.replay_id,
        });
    }
    if o.failed > 0 {
        return Err(DlqError::ReplayFailed {
            failed: o.failed,
            total: p.send.len() as u64,
            replay_id: o.replay_id,
        });
    }
    if o.sent == 0 && o.skipped > 0 {
        let _ = writeln!(
            c.err,
            "nothing sent: every selected dead letter was already replayed (--force sends them again)"
        );
    }
    Ok(())
}

fn plan_summary(p: &Plan, names: &Names) -> String {
    let (work, deliver) = p.per_stage();
    let mut s = format!("{} dead letter(s)", p.send.len());
    let mut to = Vec::new();
    if work > 0 {
        to.push(format!("{work} to `{}`", names.work));
    }
    if deliver > 0 {
        to.push(format!("{deliver} to `{}`", names.deliver));
    }
    if !to.is_empty() {
        s.push_str(&format!(" ({})", to.join(", ")));
    }
    if !p.skipped.is_empty() {
        s.push_str(&format!(
            "; {} skipped as already replayed (--force sends them again)",
            p.skipped.len()
        ));
    }
    s
}

fn dry_run(p: &Plan, names: &Names, ledger: &Ledger, c: &mut Console) -> Result<(), DlqError> {
    let items: Vec<ListItem> = p
        .send
        .iter()
        .chain(p.skipped.iter())
        .map(|l| {
            let marks = ledger.marks(l.letter.id).to_vec();
            ListItem {
                replayed: !marks.is_empty(),
                replays: marks,
                summary: record::Summary::of(l),
            }
        })
        .collect();
    writeln!(c.out, "{}", render::list_table(&items, c.width)).map_err(write_err)?;
    writeln!(
        c.out,
        "dry run: would replay {}; nothing sent, nothing recorded",
        plan_summary(p, names)
    )
    .map_err(write_err)
}

fn confirm(p: &Plan, names: &Names, actor: &str, c: &mut Console) -> Result<(), DlqError> {
    if !c.stdin_tty {
        return Err(DlqError::Refused(format!(
            "refusing to replay {} dead letter(s) without confirmation: no terminal to ask on (pass --yes)",
            p.send.len()
        )));
    }
    let _ = write!(
        c.err,
        "Replay {} as {actor}? [y/N] ",
        plan_summary(p, names)
    );
    let _ = c.err.flush();
    let mut answer = String::new();
    let _ = c.input.read_line(&mut answer);
    match answer.trim().to_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(DlqError::Refused(
            "replay cancelled: nothing was sent".into(),
        )),
    }
}

async fn audit(a: &AuditArgs, config: &Config, c: &mut Console) -> Result<(), DlqError> {
    let store = Store::connect(config).await?;
    let replays = store.topology().replays();
    let mut records = Vec::new();
    let read = if store.exists(&replays).await? {
        store
            .scan(&replays, Start::First, |e| {
                if let Ok(r) = shared::envelope::decode::<ReplayRecord>(&e.body) {
                    records.push(r);
                }
                ControlFlow::Continue(())
            })
            .await
    } else {
        Ok(())
    };
    store.close().await;
    read?;
    let ledger = Ledger::from_records(records);
    if let Some(id) = a.replay {
        let run = ledger.run(id).ok_or(DlqError::UnknownReplay(id))?;
        let text = if a.json {
            serde_json::to_string_pretty(run).unwrap_or_default()
        } else {
            render::run_detail(run)
        };
        return writeln!(c.out, "{text}").map_err(write_err);
    }
    if a.json {
        let text = serde_json::to_string_pretty(ledger.runs()).unwrap_or_default();
        return writeln!(c.out, "{text}").map_err(write_err);
    }
    if ledger.runs().is_empty() {
        let _ = writeln!(c.err, "no replay on record");
        return Ok(());
    }
    writeln!(c.out, "{}", render::audit_table(ledger.runs(), c.width)).map_err(write_err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_has_an_example_in_its_help() {
        let mut cmd = DlqCli::command();
        for sub in ["list", "show", "export", "stats", "replay", "audit"] {
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(
                help.contains(&format!("switchboard dlq {sub}")),
                "{sub}:\n{help}"
            );
        }
        DlqCli::command().debug_assert();
    }

    #[test]
    fn filters_parse_from_the_command_line() {
        let cli = DlqCli::try_parse_from([
            "dlq",
            "list",
            "--reason",
            "exhausted,poison",
            "--stage",
            "deliver",
            "--source",
            "crm",
            "--source",
            "web",
            "--since",
            "2024-05-01",
            "--limit",
            "5",
        ])
        .unwrap();
        let DlqCommand::List(a) = cli.command else {
            panic!("not list")
        };
        let f = a.filter.to_filter(Utc::now()).unwrap();
        assert_eq!(f.reasons, vec![Reason::Exhausted, Reason::Poison]);
        assert_eq!(f.stages, vec![Stage::Deliver]);
        assert_eq!(f.sources, vec!["crm", "web"]);
        assert_eq!(a.limit, 5);
        assert!(DlqCli::try_parse_from(["dlq", "list", "--reason", "lost"]).is_err());
        assert!(DlqCli::try_parse_from(["dlq", "replay", "--rate", "fast"]).is_err());
        let bad = FilterArgs {
            since: Some("2024-05-02".into()),
            until: Some("2024-05-01".into()),
            ..FilterArgs::default()
        };
        assert!(matches!(bad.to_filter(Utc::now()), Err(DlqError::Usage(_))));
    }

    #[test]
    fn ids_made_now_start_the_read_near_their_time() {
        let v7 = Uuid::now_v7();
        let Start::Timestamp(secs) = start_for(&HashSet::from([v7])) else {
            panic!("a v7 id should start at its time")
        };
        let now = Utc::now().timestamp() as u64;
        assert!(secs <= now - 299 && secs >= now - 301, "{secs} vs {now}");
        assert_eq!(
            start_for(&HashSet::from([v7, Uuid::from_u128(5)])),
            Start::First
        );
    }
}
