//! The console's index: every dead letter of the stream as a [`Row`] in memory, in stream
//! order, with lookups by id, event id and platform message id, and the replay record (the
//! ledger and the chain's links). It is filled by followers that read both streams from their
//! start and then keep reading as they grow ([`follow`]), so any number of console processes
//! each hold the same index and none needs another. Queries scan the rows newest first: a
//! filtered first page over 100 000 letters takes milliseconds (measured in docs/CONSOLE.md).
//! This module answers questions; it never talks to the broker itself.
use chrono::{DateTime, Utc};
use deadletters::audit::{Ledger, Mark, ReplayRecord};
use deadletters::chain::Link;
use deadletters::filter::Filter;
use deadletters::report::Stats;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use uuid::Uuid;

pub mod follow;
mod row;

pub use row::{row_of, Row, SEARCH_BYTES};

/// Which letters a query takes: the dead-letter filters, text, and whether the seal verifies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    /// Lowercase text searched in each row's search text.
    pub text: Option<String>,
    /// `Some(true)`: only letters whose seal verifies; `Some(false)`: only those that do not.
    pub verified: Option<bool>,
}

impl Query {
    pub fn matches(&self, r: &Row) -> bool {
        let f = &self.filter;
        (f.sources.is_empty() || f.sources.contains(&r.source))
            && (f.targets.is_empty() || r.target.as_ref().is_some_and(|t| f.targets.contains(t)))
            && (f.stages.is_empty() || f.stages.contains(&r.stage))
            && (f.reasons.is_empty() || f.reasons.contains(&r.reason))
            && f.since.is_none_or(|t| r.dead_at >= t)
            && f.until.is_none_or(|t| r.dead_at < t)
            && self.verified.is_none_or(|v| r.trusted() == v)
            && self.text.as_deref().is_none_or(|t| r.search.contains(t))
    }
}

/// One page of a query, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub rows: Vec<Row>,
    /// Letters the query matches in all.
    pub total: usize,
    /// The offset to pass as `before` for the next (older) page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

#[derive(Default)]
struct Letters {
    rows: Vec<Row>,
    by_id: HashMap<Uuid, usize>,
    by_event: HashMap<Uuid, Vec<usize>>,
    by_dedup: HashMap<String, Vec<usize>>,
    sources: BTreeSet<String>,
    targets: BTreeSet<String>,
    last_offset: Option<u64>,
}

/// The replay record as the console holds it.
#[derive(Default)]
pub struct Replays {
    pub parts: Vec<(ReplayRecord, bool)>,
    pub links: Vec<Link>,
    pub ledger: Ledger,
    pub last_offset: Option<u64>,
    /// Parts were added since the ledger was built (it is rebuilt when next read, so that
    /// reading a long record at start does not rebuild it once per part).
    stale: bool,
}

/// The index of one console process.
#[derive(Default)]
pub struct Index {
    letters: RwLock<Letters>,
    replays: RwLock<Replays>,
    letters_ready: AtomicBool,
    replays_ready: AtomicBool,
}

impl Index {
    /// Adds a letter read at the stream's end; a letter already indexed (same id) is skipped.
    pub fn add(&self, row: Row) {
        let mut l = write(&self.letters);
        l.last_offset = Some(row.offset);
        if l.by_id.contains_key(&row.id) {
            return;
        }
        let i = l.rows.len();
        l.by_id.insert(row.id, i);
        if let Some(e) = row.event_id {
            l.by_event.entry(e).or_default().push(i);
        }
        if let Some(d) = &row.dedup_key {
            l.by_dedup.entry(d.clone()).or_default().push(i);
        }
        if !l.sources.contains(&row.source) && !row.source.is_empty() {
            l.sources.insert(row.source.clone());
        }
        if let Some(t) = row.target.as_ref().filter(|t| !l.targets.contains(*t)) {
            let t = t.clone();
            l.targets.insert(t);
        }
        l.rows.push(row);
        metrics::gauge!("switchboard_console_indexed_letters").set(l.rows.len() as f64);
    }

    /// Notes an entry that is not a letter (a marker) so a follower resumes after it.
    pub fn passed(&self, offset: u64) {
        write(&self.letters).last_offset = Some(offset);
    }

    /// The offset a follower resumes at.
    pub fn letters_resume(&self) -> Option<u64> {
        read(&self.letters).last_offset.map(|o| o + 1)
    }

    pub fn set_letters_ready(&self) {
        self.letters_ready.store(true, Ordering::Release);
    }

    pub fn set_replays_ready(&self) {
        self.replays_ready.store(true, Ordering::Release);
    }

    /// Whether both streams were read up to where they stood when the console started.
    pub fn ready(&self) -> bool {
        self.letters_ready.load(Ordering::Acquire) && self.replays_ready.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        read(&self.letters).rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A page of the letters `q` matches, newest first, older than offset `before`.
    pub fn page(&self, q: &Query, before: Option<u64>, limit: usize) -> Page {
        let l = read(&self.letters);
        let mut rows = Vec::with_capacity(limit.min(1000));
        let mut total = 0;
        let mut next = None;
        for r in l.rows.iter().rev() {
            if !q.matches(r) {
                continue;
            }
            total += 1;
            if before.is_some_and(|b| r.offset >= b) {
                continue;
            }
            if rows.len() < limit {
                rows.push(r.clone());
            } else if next.is_none() {
                next = rows.last().map(|x: &Row| x.offset);
            }
        }
        Page { rows, total, next }
    }

    /// Every row `q` matches, oldest first (exports and replays by filter).
    pub fn all(&self, q: &Query) -> Vec<Row> {
        read(&self.letters)
            .rows
            .iter()
            .filter(|r| q.matches(r))
            .cloned()
            .collect()
    }

    pub fn get(&self, id: Uuid) -> Option<Row> {
        let l = read(&self.letters);
        l.by_id.get(&id).map(|i| l.rows[*i].clone())
    }

    /// The letters of an event, by our event id.
    pub fn of_event(&self, id: Uuid) -> Vec<Row> {
        let l = read(&self.letters);
        l.by_event
            .get(&id)
            .map(|is| is.iter().map(|i| l.rows[*i].clone()).collect())
            .unwrap_or_default()
    }

    /// The letters of an event, by the platform's message id.
    pub fn of_dedup(&self, key: &str) -> Vec<Row> {
        let l = read(&self.letters);
        l.by_dedup
            .get(key)
            .map(|is| is.iter().map(|i| l.rows[*i].clone()).collect())
            .unwrap_or_default()
    }

    /// Counts of the letters `q` matches, by reason, stage, source, target and day.
    pub fn stats(&self, q: &Query) -> Stats {
        let replays = self.replays();
        let l = read(&self.letters);
        let mut s = Stats::default();
        for r in l.rows.iter().filter(|r| q.matches(r)) {
            s.add(&summary_of(r), replays.ledger.replayed(r.id));
        }
        s
    }

    /// Letters per day and reason (the stats chart), oldest day first.
    pub fn per_day(&self, q: &Query) -> Vec<(String, HashMap<&'static str, u64>)> {
        let l = read(&self.letters);
        let mut days: std::collections::BTreeMap<String, HashMap<&'static str, u64>> =
            Default::default();
        for r in l.rows.iter().filter(|r| q.matches(r)) {
            let day = if r.dead_at == DateTime::<Utc>::UNIX_EPOCH {
                "unknown".to_owned()
            } else {
                r.dead_at.format("%Y-%m-%d").to_string()
            };
            *days
                .entry(day)
                .or_default()
                .entry(r.reason.as_str())
                .or_default() += 1;
        }
        days.into_iter().collect()
    }

    /// The sources and targets seen in the store (the filters' choices).
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        let l = read(&self.letters);
        (
            l.sources.iter().cloned().collect(),
            l.targets.iter().cloned().collect(),
        )
    }

    /// Adds a replay-stream entry: its link, and its record part if it is one.
    pub fn add_replay(&self, link: Link, part: Option<ReplayRecord>) {
        let mut r = write(&self.replays);
        r.last_offset = Some(link.offset);
        let trusted = link.seal.as_ref().is_none_or(|v| v.is_verified());
        r.links.push(link);
        if let Some(p) = part {
            r.parts.push((p, trusted));
            r.stale = true;
        }
    }

    pub fn replays_resume(&self) -> Option<u64> {
        read(&self.replays).last_offset.map(|o| o + 1)
    }

    /// Notes a replay-stream entry that is neither a record nor a link (a marker).
    pub fn replay_passed(&self, offset: u64) {
        write(&self.replays).last_offset = Some(offset);
    }

    /// The replay record, to read under one lock.
    pub fn replays(&self) -> RwLockReadGuard<'_, Replays> {
        if read(&self.replays).stale {
            let mut r = write(&self.replays);
            if r.stale {
                r.ledger = Ledger::from_records(r.parts.iter().cloned());
                r.stale = false;
            }
        }
        read(&self.replays)
    }

    /// The replays of one letter.
    pub fn marks(&self, id: Uuid) -> Vec<Mark> {
        self.replays().ledger.marks(id).to_vec()
    }
}

/// A row as the dead-letter crate's summary (for its stats).
pub fn summary_of(r: &Row) -> deadletters::record::Summary {
    deadletters::record::Summary {
        id: r.id,
        offset: r.offset,
        origin: r.origin,
        stage: r.stage,
        reason: r.reason,
        source: r.source.clone(),
        target: r.target.clone(),
        dead_at: r.dead_at,
        attempts: r.attempts,
        error: r.error.clone(),
        seal: r.seal.clone(),
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
