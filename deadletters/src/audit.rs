//! The replay record: what every replay appends to the replays stream, and the [`Ledger`] read
//! back from it — the runs `dlq audit` lists, and which dead letters were replayed, when and by
//! whom, which `dlq list` joins and `dlq replay` consults to skip. A run writes several parts
//! (one before it sends anything, more as it goes, one at the end), so that even a run that
//! dies half-way is on record. With an audit key, every part and every [`Checkpoint`] has a
//! place in the hash chain ([`crate::chain`]) and a seal; only parts whose seal verifies mark
//! letters as replayed, so a forged record cannot make a replay skip real letters. Pure:
//! reading and appending are the store's and the trail's job.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::envelope::Envelope;
use std::collections::HashMap;
use uuid::Uuid;

use super::filter::Filter;

/// What a replay was asked to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Selection {
    /// Dead letters named by id.
    Ids { ids: Vec<Uuid> },
    /// Dead letters matching a filter (`--all` is the empty filter).
    Filter { filter: Filter, description: String },
}

impl Selection {
    pub fn describe(&self) -> String {
        match self {
            Selection::Ids { ids } if ids.len() <= 3 => ids
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            Selection::Ids { ids } => format!("{} ids", ids.len()),
            Selection::Filter { description, .. } => description.clone(),
        }
    }
}

/// Where a run stands as of one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Sending; a run whose last part says this stopped without finishing (a crash).
    Running,
    /// Everything selected was handled.
    Done,
    /// Stopped by the operator (Ctrl-C) or by a broker failure before the end.
    Interrupted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Interrupted => "interrupted",
        }
    }
}

/// A dead letter that could not be replayed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub id: Uuid,
    pub error: String,
}

/// One part of one replay run, as appended to the replays stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayRecord {
    /// The run this part belongs to (UUID v7).
    pub replay_id: Uuid,
    /// 0, 1, 2, … within the run.
    pub part: u32,
    pub state: RunState,
    /// Who: `--actor` or the OS user.
    pub actor: String,
    /// The machine the replay ran on.
    pub host: String,
    pub started_at: DateTime<Utc>,
    /// When this part was written.
    pub at: DateTime<Utc>,
    pub selection: Selection,
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Dead letters the selection matched.
    pub matched: u64,
    /// Totals so far.
    pub sent: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Dead letters republished since the previous part.
    #[serde(default)]
    pub sent_ids: Vec<Uuid>,
    /// Dead letters that could not be republished since the previous part.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// How `actor` is known: `cli` (`--actor`, else the OS user, as the machine says) or
    /// `console` (a signed-in user, or `token:<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Its place in the chain: its number and the SHA-256 of the record before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

impl Envelope for ReplayRecord {
    const KIND: &'static str = "replay_record";
    const VERSION: u16 = 1;
}

/// A record that only holds a place in the chain, written at least every
/// `[audit] checkpoint_every`, so that a chain record is always near the retention horizon and
/// a start cut later than that shows as removal, not retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub prev: String,
    pub at: DateTime<Utc>,
    /// The machine that wrote it.
    pub host: String,
}

impl Envelope for Checkpoint {
    const KIND: &'static str = "replay_checkpoint";
    const VERSION: u16 = 1;
}

/// One replay run, its parts put together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub replay_id: Uuid,
    pub state: RunState,
    pub actor: String,
    pub host: String,
    pub started_at: DateTime<Utc>,
    /// When its last part was written.
    pub last_at: DateTime<Utc>,
    pub selection: Selection,
    pub force: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    pub matched: u64,
    pub sent: u64,
    pub skipped: u64,
    pub failed: u64,
    pub sent_ids: Vec<Uuid>,
    pub failures: Vec<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Whether every part of it verified (always, when seals are not checked).
    pub trusted: bool,
}

/// That a dead letter was replayed: when, by whom, in which run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub replay_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
}

/// Every replay run, and the marks they left on dead letters.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    runs: Vec<Run>,
    marks: HashMap<Uuid, Vec<Mark>>,
}

impl Ledger {
    /// Puts parts together in stream order; parts of one run may interleave with other runs'.
    /// Each part comes with whether it is trusted (its seal verified, or seals are not
    /// checked): only trusted parts mark letters as replayed.
    pub fn from_records(records: impl IntoIterator<Item = (ReplayRecord, bool)>) -> Self {
        let mut runs: Vec<Run> = Vec::new();
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        let mut marks: HashMap<Uuid, Vec<Mark>> = HashMap::new();
        for (r, trusted) in records {
            for id in r.sent_ids.iter().filter(|_| trusted) {
                marks.entry(*id).or_default().push(Mark {
                    replay_id: r.replay_id,
                    at: r.at,
                    actor: r.actor.clone(),
                });
            }
            match index.get(&r.replay_id) {
                Some(&i) => {
                    let run = &mut runs[i];
                    run.trusted &= trusted;
                    run.state = r.state;
                    run.last_at = r.at;
                    run.matched = r.matched;
                    run.sent = r.sent;
                    run.skipped = r.skipped;
                    run.failed = r.failed;
                    run.sent_ids.extend(r.sent_ids);
                    run.failures.extend(r.failures);
                }
                None => {
                    index.insert(r.replay_id, runs.len());
                    runs.push(Run {
                        replay_id: r.replay_id,
                        state: r.state,
                        actor: r.actor,
                        host: r.host,
                        started_at: r.started_at,
                        last_at: r.at,
                        selection: r.selection,
                        force: r.force,
                        rate: r.rate,
                        matched: r.matched,
                        sent: r.sent,
                        skipped: r.skipped,
                        failed: r.failed,
                        sent_ids: r.sent_ids,
                        failures: r.failures,
                        via: r.via,
                        trusted,
                    });
                }
            }
        }
        Self { runs, marks }
    }

    /// Runs in the order they started.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    pub fn run(&self, id: Uuid) -> Option<&Run> {
        self.runs.iter().find(|r| r.replay_id == id)
    }

    /// The replays of one dead letter, oldest first.
    pub fn marks(&self, id: Uuid) -> &[Mark] {
        self.marks.get(&id).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn replayed(&self, id: Uuid) -> bool {
        self.marks.contains_key(&id)
    }

    /// How many dead letters were replayed at least once.
    pub fn replayed_count(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn part(run: u128, n: u32, state: RunState, sent: &[u128], total: u64) -> ReplayRecord {
        ReplayRecord {
            replay_id: Uuid::from_u128(run),
            part: n,
            state,
            actor: format!("actor{run}"),
            host: "h".into(),
            started_at: at(0),
            at: at(n as i64 + run as i64 * 100),
            selection: Selection::Ids { ids: vec![] },
            force: false,
            rate: None,
            matched: 10,
            sent: total,
            skipped: 0,
            failed: 0,
            sent_ids: sent.iter().map(|i| Uuid::from_u128(*i)).collect(),
            failures: vec![],
            via: None,
            seq: None,
            prev: None,
        }
    }

    #[test]
    fn parts_make_runs_and_marks() {
        let ledger = Ledger::from_records(
            vec![
                part(1, 0, RunState::Running, &[], 0),
                part(2, 0, RunState::Running, &[], 0),
                part(1, 1, RunState::Running, &[10, 11], 2),
                part(2, 1, RunState::Done, &[10], 1),
                part(1, 2, RunState::Done, &[12], 3),
                part(3, 0, RunState::Running, &[], 0),
            ]
            .into_iter()
            .map(|p| (p, true)),
        );
        let runs = ledger.runs();
        let got: Vec<(u128, RunState, u64, usize)> = runs
            .iter()
            .map(|r| (r.replay_id.as_u128(), r.state, r.sent, r.sent_ids.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, RunState::Done, 3, 3),
                (2, RunState::Done, 1, 1),
                // Started and never finished: still "running" on record.
                (3, RunState::Running, 0, 0),
            ]
        );
        let marks: Vec<(u128, String)> = ledger
            .marks(Uuid::from_u128(10))
            .iter()
            .map(|m| (m.replay_id.as_u128(), m.actor.clone()))
            .collect();
        assert_eq!(marks, vec![(1, "actor1".into()), (2, "actor2".into())]);
        assert!(ledger.replayed(Uuid::from_u128(12)));
        assert!(!ledger.replayed(Uuid::from_u128(13)));
        assert_eq!(ledger.replayed_count(), 3);
    }

    #[test]
    fn untrusted_parts_mark_nothing() {
        let ledger = Ledger::from_records(vec![
            (part(1, 0, RunState::Done, &[10], 1), true),
            // A forged record claiming letter 11 was replayed.
            (part(2, 0, RunState::Done, &[11], 1), false),
        ]);
        assert!(ledger.replayed(Uuid::from_u128(10)));
        assert!(!ledger.replayed(Uuid::from_u128(11)));
        let trusted: Vec<bool> = ledger.runs().iter().map(|r| r.trusted).collect();
        assert_eq!(trusted, vec![true, false]);
    }

    #[test]
    fn records_round_trip_as_envelopes() {
        let mut r = part(1, 0, RunState::Done, &[1, 2], 2);
        r.selection = Selection::Filter {
            filter: Filter {
                reasons: vec![shared::envelope::Reason::Exhausted],
                ..Filter::default()
            },
            description: "--reason exhausted".into(),
        };
        r.failures = vec![Failure {
            id: Uuid::from_u128(3),
            error: "nack".into(),
        }];
        let bytes = shared::envelope::encode(&r);
        assert_eq!(
            shared::envelope::decode::<ReplayRecord>(&bytes).ok(),
            Some(r)
        );
    }
}
