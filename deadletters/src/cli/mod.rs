//! `switchboard dlq …`: the auditors' command line over the dead-letter store, which the
//! binary mounts. [`args`] parses the commands (clap); each command has a module of its own
//! that reads the store through [`crate::store::Store`] (the reads several share are in
//! `read`), decides with the crate's pure modules and writes through a [`Console`]
//! ([`terminal`]), so that tests drive every command with captured output and no terminal.
//! Every failure is one line on stderr and a non-zero exit ([`DlqError::exit_code`]).
pub mod args;
mod audit;
mod export;
mod list;
mod read;
mod replay;
mod show;
mod stats;
pub mod terminal;

pub use args::{
    AuditArgs, DlqCli, DlqCommand, ExportArgs, FilterArgs, ListArgs, ReplayArgs, ShowArgs,
    StatsArgs,
};
pub use terminal::{Captured, Console};

use chrono::Utc;
use shared::config::AuditorConfig;
use std::io::Write;
use std::process::ExitCode;

use crate::DlqError;

/// Runs one `dlq` command on the process's terminal.
pub async fn run(cmd: DlqCommand, config: &AuditorConfig) -> anyhow::Result<ExitCode> {
    let mut console = Console::terminal();
    Ok(run_with(cmd, config, &mut console).await)
}

/// Runs one `dlq` command on a console; a failure is one line on its stderr.
pub async fn run_with(cmd: DlqCommand, config: &AuditorConfig, console: &mut Console) -> ExitCode {
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

async fn dispatch(
    cmd: DlqCommand,
    config: &AuditorConfig,
    c: &mut Console,
) -> Result<(), DlqError> {
    let now = Utc::now();
    match cmd {
        DlqCommand::List(a) => list::list(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Show(a) => show::show(&a, config, c).await,
        DlqCommand::Export(a) => export::export(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Stats(a) => stats::stats(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Replay(a) => replay::replay(&a, a.filter.to_filter(now)?, config, c).await,
        DlqCommand::Audit(a) => audit::audit(&a, config, c).await,
    }
}
