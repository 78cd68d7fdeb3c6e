//! `dlq audit [REPLAY]`: the replay record — every run with who, when, what and how it went, or
//! one run in full with every dead letter it sent and every failure; a table or JSON. With
//! `--verify`, whether the chain of records is intact and where it breaks (exit 1 if broken).
use shared::config::AuditorConfig;

use super::read::connect;
use super::replay::appender;
use super::{AuditArgs, Console};
use crate::chain::{ChainReport, ChainState};
use crate::render;
use crate::store::Store;
use crate::DlqError;

pub(super) async fn audit(
    a: &AuditArgs,
    config: &AuditorConfig,
    c: &mut Console,
) -> Result<(), DlqError> {
    let store = connect(config).await?;
    if a.verify {
        let report = verify(config, &store).await;
        store.close().await;
        return show_verification(&report?, a.json, c);
    }
    let read = crate::trail::read(&store).await;
    store.close().await;
    let (ledger, _) = read?;
    if let Some(id) = a.replay {
        let run = ledger.run(id).ok_or(DlqError::UnknownReplay(id))?;
        let text = if a.json {
            serde_json::to_string_pretty(run).unwrap_or_default()
        } else {
            render::run_detail(run)
        };
        return c.print(&text);
    }
    if a.json {
        return c.print(&serde_json::to_string_pretty(ledger.runs()).unwrap_or_default());
    }
    if ledger.runs().is_empty() {
        c.note("no replay on record");
        return Ok(());
    }
    c.print(&render::audit_table(ledger.runs(), c.width))
}

async fn verify(config: &AuditorConfig, store: &Store) -> Result<ChainReport, DlqError> {
    let Some(trail) = appender(config, store)? else {
        return Err(DlqError::Usage(
            "--verify needs [audit] key: without it the replay record is neither sealed nor chained".into(),
        ));
    };
    crate::trail::verify(store, &trail).await
}

fn show_verification(report: &ChainReport, json: bool, c: &mut Console) -> Result<(), DlqError> {
    let text = if json {
        serde_json::to_string_pretty(report).unwrap_or_default()
    } else {
        render::chain(report)
    };
    c.print(&text)?;
    match &report.state {
        ChainState::Broken { why, .. } => Err(DlqError::ChainBroken(why.clone())),
        _ => Ok(()),
    }
}
