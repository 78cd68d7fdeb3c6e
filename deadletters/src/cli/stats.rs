//! `dlq stats`: the dead letters a filter selects, counted by reason, stage, source, target and
//! day, and how many were replayed; tables or JSON.
use shared::config::AuditorConfig;
use std::ops::ControlFlow;

use super::read::{open, select};
use super::{Console, StatsArgs};
use crate::filter::Filter;
use crate::render;
use crate::report::Stats;
use crate::DlqError;

pub(super) async fn stats(
    a: &StatsArgs,
    filter: Filter,
    config: &AuditorConfig,
    c: &mut Console,
) -> Result<(), DlqError> {
    let (store, names, ledger) = open(config).await?;
    let mut s = Stats::default();
    let read = select(&store, &names, &filter, |_, x| {
        s.add(&x, ledger.replayed(x.id));
        ControlFlow::Continue(())
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
    c.print(&text)
}
