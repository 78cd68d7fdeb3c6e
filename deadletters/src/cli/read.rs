//! The reads several `dlq` commands share: connecting with the replay record in hand, the dead
//! letters a filter selects (each once), and whole letters by id. What the entries mean is
//! [`crate::record`]'s; what a filter selects is [`crate::filter`]'s; this module only walks the
//! store and says "nothing matched" the same way for every command.
use std::collections::HashSet;
use std::ops::ControlFlow;
use uuid::Uuid;

use shared::config::AuditorConfig;

use super::Console;
use crate::audit::Ledger;
use crate::filter::{Filter, Start, SINCE_MARGIN};
use crate::record::{self, Letter, Names, Summary};
use crate::store::{Store, StreamEntry};
use crate::DlqError;

/// Connects (sealing and verifying with the audit key, when one is configured).
pub(super) async fn connect(config: &AuditorConfig) -> Result<Store, DlqError> {
    Store::connect(&config.broker, config.audit.keyring()).await
}

/// Connects and reads the replay record.
pub(super) async fn open(config: &AuditorConfig) -> Result<(Store, Names, Ledger), DlqError> {
    let store = connect(config).await?;
    let names = Names::of(store.topology(), store.keyring());
    let (ledger, _) = crate::trail::read(&store).await?;
    Ok((store, names, ledger))
}

/// Nothing matched: an error when a filter was given, a note when the store is just empty.
pub(super) fn none_found(filter: &Filter, c: &mut Console) -> Result<(), DlqError> {
    if filter.is_empty() {
        c.note("the dead-letter store is empty");
        Ok(())
    } else {
        Err(DlqError::NothingMatched(filter.describe()))
    }
}

/// Reads the entries the filter selects, each dead letter once, handing each with its summary
/// to `take` (which may stop the read).
pub(super) async fn select(
    store: &Store,
    names: &Names,
    filter: &Filter,
    mut take: impl FnMut(&StreamEntry, Summary) -> ControlFlow<()>,
) -> Result<(), DlqError> {
    let mut seen = HashSet::new();
    store
        .scan(&names.stream, filter.start(), |e| {
            if !filter.matches_body(&e.body) {
                return ControlFlow::Continue(());
            }
            let s = record::summary(e.offset, &e.body, &e.meta, names);
            if filter.matches(&s) && seen.insert(s.id) {
                take(&e, s)
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
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
pub(super) async fn by_ids(
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::Utc;

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
