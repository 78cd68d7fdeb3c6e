//! The `dlq` command line as clap reads it: the six commands, the filters every reading
//! command shares and how they become a [`Filter`], and each command's own flags with an
//! example in its help. Parsing only: nothing here reads the store or writes output.
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use shared::envelope::{Reason, Stage};
use shared::units::Rate;
use std::path::PathBuf;
use uuid::Uuid;

use crate::filter::{parse_reason, parse_stage, parse_when, Filter};
use crate::render;
use crate::DlqError;

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
  switchboard dlq audit --verify
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
    /// Replay dead letters whose seal does not verify, too (written before [audit] key was
    /// set); refused without it. On record like every replay.
    #[arg(long)]
    pub allow_unverified: bool,
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
    /// Verify the chain of replay records: whether it is intact, and where it breaks.
    #[arg(long, conflicts_with = "replay")]
    pub verify: bool,
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
}
