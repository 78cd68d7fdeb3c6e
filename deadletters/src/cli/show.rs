//! `dlq show ID`: one dead letter in full — the record, its replays, its attempts as a timeline
//! and the original message — or, with `--json`, the line `dlq export` would write for it.
use shared::config::AuditorConfig;
use std::collections::HashSet;

use super::read::{by_ids, open};
use super::{Console, ShowArgs};
use crate::render;
use crate::report::ExportLine;
use crate::DlqError;

pub(super) async fn show(
    a: &ShowArgs,
    config: &AuditorConfig,
    c: &mut Console,
) -> Result<(), DlqError> {
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
        render::show(&l, marks, names.queue(l.letter.stage))
    };
    c.print(&text)
}
