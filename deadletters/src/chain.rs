//! The replay record as a hash chain, verified. With an audit key, every record appended to the
//! replays stream (each part of a replay run, and checkpoints) carries its place in the chain
//! — `seq`, and `prev`, the SHA-256 of the record before it — and is sealed. This module reads
//! a stream's records in order and says whether the chain is intact and, if not, where it
//! breaks and why; it also says where the chain starts: at its genesis, or after a cut that
//! retention explains (the streams drop entries older than `max_age`; a checkpoint record,
//! written at least every `checkpoint_every`, keeps a chain record near that horizon, so a cut
//! much younger than it was not retention). Pure: the caller reads the stream and Redis.
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use shared::seal::Verdict;
use std::collections::HashSet;

/// `prev` of the first record of a chain.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Clocks and segment boundaries: a cut this much younger than retention explains still is.
const SLACK: Duration = Duration::hours(1);

/// One entry of the replays stream, as the verifier needs it.
#[derive(Debug, Clone)]
pub struct Link {
    pub offset: u64,
    /// SHA-256 of its body.
    pub digest: String,
    /// What its seal says (`None`: seals not checked).
    pub seal: Option<Verdict>,
    /// Its place in the chain, when it claims one.
    pub place: Option<Place>,
    /// When it was written.
    pub at: DateTime<Utc>,
    pub checkpoint: bool,
}

/// A record's claimed place: its number and the digest of the record before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub seq: u64,
    pub prev: String,
}

/// The chain's last record as Redis keeps it (what appenders link to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    pub seq: u64,
    pub digest: String,
    pub at: DateTime<Utc>,
}

/// What verification needs beyond the records.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    pub now: DateTime<Utc>,
    /// The streams' retention by age.
    pub max_age: Duration,
    pub checkpoint_every: Duration,
}

/// Whether the chain holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChainState {
    /// No chained record (no replay since the audit key was set, or all expired).
    Empty,
    /// Every record links to the one before, from the start to the head.
    Intact,
    /// The first place it does not.
    Broken {
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        why: String,
    },
}

/// Where the retained chain starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum ChainStart {
    None,
    /// At its first record.
    Genesis,
    /// Records before `seq` were removed by retention.
    Cut {
        seq: u64,
        written_at: DateTime<Utc>,
        checkpoint: bool,
    },
}

/// The verifier's findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    #[serde(flatten)]
    pub state: ChainState,
    pub start: ChainStart,
    /// Chained records that verified and linked.
    pub records: u64,
    /// The last good record: seq, digest, offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tip: Option<(u64, String, u64)>,
    /// Records appended again after a crash (same digest): harmless, counted once.
    pub duplicates: u64,
    /// Records from before the audit key (no chain place, no seal): shown, never trusted.
    pub unchained: u64,
    /// Entries that claim a place or a seal and do not verify: never trusted, by offset.
    pub rejected: Vec<(u64, String)>,
}

/// Verifies the records of a replays stream, in stream order, against the head Redis keeps.
pub fn verify(links: &[Link], head: Option<&Head>, h: Horizon) -> ChainReport {
    let mut report = ChainReport {
        state: ChainState::Empty,
        start: ChainStart::None,
        records: 0,
        tip: None,
        duplicates: 0,
        unchained: 0,
        rejected: Vec::new(),
    };
    let mut seen = HashSet::new();
    let mut last: Option<(u64, String, DateTime<Utc>)> = None;
    for l in links {
        let Some(place) = &l.place else {
            match &l.seal {
                Some(v) if v.is_verified() => report
                    .rejected
                    .push((l.offset, "sealed but without a place in the chain".into())),
                _ => report.unchained += 1,
            }
            continue;
        };
        if let Some(v) = l.seal.as_ref().filter(|v| !v.is_verified()) {
            report.rejected.push((l.offset, v.explain()));
            continue;
        }
        if !seen.insert(l.digest.clone()) {
            report.duplicates += 1;
            continue;
        }
        match &last {
            None => report.start = start_of(l, place),
            Some((seq, digest, _)) => {
                if let Some(why) = link_fault(place, *seq, digest) {
                    report.state = broken(Some(l.offset), Some(place.seq), why);
                    return report;
                }
            }
        }
        report.records += 1;
        last = Some((place.seq, l.digest.clone(), l.at));
        report.tip = Some((place.seq, l.digest.clone(), l.offset));
    }
    if let ChainStart::Cut {
        seq, written_at, ..
    } = &report.start
    {
        if *written_at > retained_since(h) + h.checkpoint_every + SLACK {
            report.state = broken(
                None,
                Some(*seq),
                format!("the chain starts at record {seq}, written {}, later than retention explains (records older than {} are dropped, and a checkpoint is written every {}): records before it were removed", written_at.format("%Y-%m-%d %H:%M:%SZ"), days(h.max_age), days(h.checkpoint_every)),
            );
            return report;
        }
    }
    report.state = head_state(last.as_ref(), head, h);
    report
}

fn start_of(l: &Link, place: &Place) -> ChainStart {
    if place.seq == 0 && place.prev == GENESIS_PREV {
        ChainStart::Genesis
    } else {
        ChainStart::Cut {
            seq: place.seq,
            written_at: l.at,
            checkpoint: l.checkpoint,
        }
    }
}

/// Why a record does not follow the one before (`None`: it does).
fn link_fault(place: &Place, last_seq: u64, last_digest: &str) -> Option<String> {
    if place.prev != last_digest {
        return Some(if place.seq <= last_seq {
            format!("record {} names a predecessor other than record {last_seq}: the chain forks (two writers linked to the same record) or a record was altered", place.seq)
        } else {
            format!("record {} does not link to record {last_seq} before it: records {}..{} are missing", place.seq, last_seq + 1, place.seq.saturating_sub(1).max(last_seq + 1))
        });
    }
    if place.seq != last_seq + 1 {
        return Some(format!(
            "record {} follows record {last_seq}: its number is wrong",
            place.seq
        ));
    }
    None
}

/// Compares the stream's last record with the head Redis keeps.
fn head_state(
    last: Option<&(u64, String, DateTime<Utc>)>,
    head: Option<&Head>,
    h: Horizon,
) -> ChainState {
    match (last, head) {
        (None, None) => ChainState::Empty,
        (None, Some(head)) if head.at < retained_since(h) => ChainState::Empty,
        (None, Some(head)) => broken(None, Some(head.seq), format!("the replay stream holds none of the chain, but its head (record {}, written {}) is younger than retention: the stream was emptied or replaced", head.seq, head.at.format("%Y-%m-%d %H:%M:%SZ"))),
        (Some(_), None) => ChainState::Intact,
        (Some((seq, digest, _)), Some(head)) if *seq == head.seq && *digest == head.digest => {
            ChainState::Intact
        }
        (Some((seq, _, _)), Some(head)) if *seq < head.seq => broken(None, Some(seq + 1), format!("the stream ends at record {seq} but the head is record {}: the last {} record(s) are missing", head.seq, head.seq - seq)),
        (Some((seq, _, _)), Some(head)) => {
            broken(None, Some(*seq), format!("the stream's last record {seq} is not the head Redis keeps (record {}): it was appended around the lock, or the head was reset", head.seq))
        }
    }
}

/// The oldest time retention keeps (the start of time when it keeps everything).
fn retained_since(h: Horizon) -> DateTime<Utc> {
    h.now
        .checked_sub_signed(h.max_age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn broken(offset: Option<u64>, seq: Option<u64>, why: String) -> ChainState {
    ChainState::Broken { offset, seq, why }
}

fn days(d: Duration) -> String {
    match d.num_days() {
        0 => format!("{}h", d.num_hours()),
        n => format!("{n}d"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
