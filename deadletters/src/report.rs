//! What the reading commands report, as data: a row of `dlq list` (and of `list --json`), a
//! line of `dlq export` (and `show --json`), and the counts of `dlq stats`. These are the JSON
//! shapes auditors keep and feed to other tools, so their fields are a contract. Pure; how they
//! read as text on a terminal is [`crate::render`]'s.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::envelope::{DeadLetter, Envelope};
use shared::seal::Verdict;
use std::collections::BTreeMap;

use crate::audit::Mark;
use crate::record::{Letter, Origin, Summary};

/// An empty field as tables and counts show it.
pub fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// One row of `dlq list`, as printed by `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListItem {
    #[serde(flatten)]
    pub summary: Summary,
    pub replayed: bool,
    pub replays: Vec<Mark>,
}

impl ListItem {
    /// A summary with the replays the ledger has of it.
    pub fn new(summary: Summary, replays: &[Mark]) -> Self {
        Self {
            replayed: !replays.is_empty(),
            replays: replays.to_vec(),
            summary,
        }
    }
}

/// Where a letter sits in the store, what its seal says and what replays it had, next to it
/// in `export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub offset: u64,
    pub origin: Origin,
    /// What its seal says; absent when seals are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Verdict>,
    pub replays: Vec<Mark>,
}

/// One line of `dlq export`: the `DeadLetter` envelope, every field as stored, plus `store`.
/// `shared::envelope::decode::<DeadLetter>` reads it back (unknown keys are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportLine {
    pub envelope: String,
    pub v: u16,
    #[serde(flatten)]
    pub letter: DeadLetter,
    pub store: StoreInfo,
}

impl ExportLine {
    pub fn new(l: &Letter, replays: &[Mark]) -> Self {
        Self {
            envelope: DeadLetter::KIND.to_owned(),
            v: DeadLetter::VERSION,
            letter: l.letter.clone(),
            store: StoreInfo {
                offset: l.offset,
                origin: l.origin,
                seal: l.seal.clone(),
                replays: replays.to_vec(),
            },
        }
    }
}

/// Counts for `dlq stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub total: u64,
    pub replayed: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub by_stage: BTreeMap<String, u64>,
    pub by_source: BTreeMap<String, u64>,
    pub by_target: BTreeMap<String, u64>,
    pub by_day: BTreeMap<String, u64>,
}

impl Stats {
    pub fn add(&mut self, s: &Summary, replayed: bool) {
        self.total += 1;
        self.replayed += u64::from(replayed);
        *self.by_reason.entry(s.reason.as_str().into()).or_default() += 1;
        *self.by_stage.entry(s.stage.as_str().into()).or_default() += 1;
        *self
            .by_source
            .entry(or_dash(&s.source).to_owned())
            .or_default() += 1;
        *self
            .by_target
            .entry(s.target.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
        let day = if s.dead_at == DateTime::<Utc>::UNIX_EPOCH {
            "unknown".to_owned()
        } else {
            s.dead_at.format("%Y-%m-%d").to_string()
        };
        *self.by_day.entry(day).or_default() += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use shared::envelope::Reason;
    use uuid::Uuid;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().unwrap()
    }

    /// A dead letter as it is on the wire: the JSON contract these shapes carry, whatever
    /// types read it.
    fn letter() -> Letter {
        let wire = serde_json::json!({
            "id": Uuid::from_u128(1), "stage": "deliver", "reason": "exhausted",
            "error": "503 after 3 tries", "source": "crm", "target": "ops",
            "event_id": Uuid::from_u128(2),
            "message": {"id": "j", "text": "ünïcode ✓ \"quoted\"\nline"},
            "attempts": [{
                "at": at(5), "outcome": "retry", "status": 503, "code": "E42",
                "error": "upstream said no", "excerpt": "{\"message\":\"nope\"}",
                "duration_ms": 40,
            }],
            "first_attempt_at": at(5), "last_attempt_at": at(5), "dead_at": at(306),
        });
        Letter {
            offset: 12,
            origin: Origin::Envelope,
            letter: serde_json::from_value(wire).unwrap(),
            seal: Some(shared::seal::Verdict::Verified {
                key_id: "0011223344556677".into(),
            }),
        }
    }

    #[test]
    fn export_lines_round_trip_every_field() {
        let l = letter();
        let marks = vec![Mark {
            replay_id: Uuid::from_u128(9),
            at: at(400),
            actor: "alice".into(),
        }];
        let line = serde_json::to_string(&ExportLine::new(&l, &marks)).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            shared::envelope::decode::<DeadLetter>(line.as_bytes()).unwrap(),
            l.letter
        );
        let back: ExportLine = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ExportLine::new(&l, &marks));
    }

    #[test]
    fn stats_count_by_each_dimension() {
        let mut s = Stats::default();
        let a = Summary::of(&letter());
        let mut b = a.clone();
        b.reason = Reason::Poison;
        b.target = None;
        b.source = String::new();
        b.dead_at = DateTime::<Utc>::UNIX_EPOCH;
        s.add(&a, true);
        s.add(&a, false);
        s.add(&b, false);
        assert_eq!((s.total, s.replayed), (3, 1));
        assert_eq!(s.by_reason.get("exhausted"), Some(&2));
        assert_eq!(s.by_reason.get("poison"), Some(&1));
        assert_eq!(s.by_stage.get("deliver"), Some(&3));
        assert_eq!(s.by_target.get("-"), Some(&1));
        assert_eq!(s.by_source.get("-"), Some(&1));
        assert_eq!(s.by_day.get("2023-11-14"), Some(&2));
        assert_eq!(s.by_day.get("unknown"), Some(&1));
    }

    #[test]
    fn list_items_say_whether_and_how_often_a_letter_was_replayed() {
        let s = Summary::of(&letter());
        assert!(!ListItem::new(s.clone(), &[]).replayed);
        let mark = Mark {
            replay_id: Uuid::from_u128(9),
            at: at(400),
            actor: "alice".into(),
        };
        let item = ListItem::new(s, &[mark.clone(), mark]);
        assert!(item.replayed);
        assert_eq!(item.replays.len(), 2);
        let json = serde_json::to_value(&item).unwrap();
        assert_eq!(json["id"], Uuid::from_u128(1).to_string());
        assert_eq!(json["replayed"], true);
    }
}
