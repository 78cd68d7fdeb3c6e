//! `dlq audit [REPLAY]`: the replay record — every run with who, when, what and how it went, or
//! one run in full with every dead letter it sent and every failure; a table or JSON.
use shared::Config;

use super::read::ledger;
use super::{AuditArgs, Console};
use crate::render;
use crate::store::Store;
use crate::DlqError;

pub(super) async fn audit(a: &AuditArgs, config: &Config, c: &mut Console) -> Result<(), DlqError> {
    let store = Store::connect(config).await?;
    let read = ledger(&store).await;
    store.close().await;
    let ledger = read?;
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
