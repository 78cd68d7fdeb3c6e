//! `dlq list`: the dead letters a filter selects, oldest first (or the newest `--limit`), each
//! with whether and when it was replayed, as a table or as JSON.
use shared::config::AuditorConfig;
use std::ops::ControlFlow;

use super::read::{none_found, open, select};
use super::{Console, ListArgs};
use crate::filter::Filter;
use crate::render;
use crate::report::ListItem;
use crate::DlqError;

pub(super) async fn list(
    a: &ListArgs,
    filter: Filter,
    config: &AuditorConfig,
    c: &mut Console,
) -> Result<(), DlqError> {
    let (store, names, ledger) = open(config).await?;
    let mut items = Vec::new();
    let read = select(&store, &names, &filter, |_, s| {
        let marks = ledger.marks(s.id);
        items.push(ListItem::new(s, marks));
        ControlFlow::Continue(())
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
        c.note(&format!(
            "showing the newest {} of {total} dead letters (--limit 0 shows all)",
            a.limit
        ));
    }
    if a.json {
        return c.print(&serde_json::to_string_pretty(&items).unwrap_or_default());
    }
    c.print(&render::list_table(&items, c.width))?;
    let replayed = items.iter().filter(|i| i.replayed).count();
    c.note(&format!(
        "{} dead letter(s), {replayed} replayed ({})",
        items.len(),
        filter.describe()
    ));
    Ok(())
}
