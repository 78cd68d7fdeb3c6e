//! What one entry of the dead-letter stream means. The stream holds `DeadLetter` envelopes that
//! the worker and the dispatcher publish, raw messages that RabbitMQ itself dead-lettered from a
//! stage queue past its delivery limit (poison, with `x-death`/`x-first-death-*` headers), and
//! the end markers readers append to know where the stream ends. This module turns an entry —
//! its offset, body and the AMQP facts lifted off it ([`EntryMeta`]) — into a [`Letter`] or a
//! cheap [`Summary`]; it is pure and never talks to the broker. Envelopes are read here; what a
//! raw entry (poison, or not a dead letter at all) reads as is put together in `raw`. Every
//! letter carries what its seal says ([`Verdict`]) when the reader holds the audit key: for an
//! envelope, that a stage wrote it as it is; for poison, that the original message is the one
//! a role published.
use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use shared::envelope::{DeadLetter, Envelope, Reason, Stage};
use shared::seal::{Keyring, Verdict};
use shared::topology::Topology;
use uuid::Uuid;

mod raw;

pub use raw::message_value;
use raw::raw_view;

/// Header carried by the end markers readers append (their body is empty).
pub const MARKER_HEADER: &str = "x-switchboard-end-marker";

/// Namespace of the ids given to raw (poison) entries, which carry no id of their own.
const RAW_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_2c3a_9b0e_4f47_8a55_0d2c_7e41_b9a3);

/// The AMQP facts about one stream entry that matter here, lifted off lapin's types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryMeta {
    /// Set on end markers: the reader's marker id.
    pub marker: Option<String>,
    /// The seal header, when the entry carries one.
    pub seal: Option<String>,
    /// `x-first-death-queue`: the queue the broker dead-lettered the message from.
    pub first_death_queue: Option<String>,
    /// `x-first-death-reason`: `delivery_limit`, `rejected`, `expired`, `maxlen`.
    pub first_death_reason: Option<String>,
    /// The first `x-death` entry, when the broker wrote one.
    pub death: Option<Death>,
    /// The AMQP `timestamp` property, when the publisher set one.
    pub timestamp: Option<DateTime<Utc>>,
}

/// One `x-death` entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Death {
    pub queue: Option<String>,
    pub reason: Option<String>,
    pub count: Option<u64>,
    pub time: Option<DateTime<Utc>>,
}

impl EntryMeta {
    fn dead_lettered_by_broker(&self) -> bool {
        self.first_death_queue.is_some()
            || self.first_death_reason.is_some()
            || self.death.is_some()
    }

    fn death_queue(&self) -> Option<&str> {
        self.first_death_queue
            .as_deref()
            .or_else(|| self.death.as_ref().and_then(|d| d.queue.as_deref()))
    }

    fn death_reason(&self) -> Option<&str> {
        self.first_death_reason
            .as_deref()
            .or_else(|| self.death.as_ref().and_then(|d| d.reason.as_deref()))
    }
}

/// How an entry came to be in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `DeadLetter` envelope published by the worker or the dispatcher.
    Envelope,
    /// A raw message the broker dead-lettered (poison), or something unreadable.
    Broker,
}

/// What an entry is read against: the stream (for raw ids), the stage queues, and the keys
/// its seal is checked with (none: seals are not checked).
#[derive(Debug, Clone)]
pub struct Names {
    pub stream: String,
    pub work: String,
    pub deliver: String,
    pub keyring: Option<Keyring>,
}

impl Names {
    pub fn of(topology: &Topology, keyring: Option<&Keyring>) -> Self {
        Self {
            stream: topology.dead_letters(),
            work: topology.stage_queue(Stage::Work),
            deliver: topology.stage_queue(Stage::Deliver),
            keyring: keyring.cloned(),
        }
    }

    /// What the entry's seal says, when seals are checked.
    pub fn verdict(&self, body: &[u8], meta: &EntryMeta) -> Option<Verdict> {
        self.keyring
            .as_ref()
            .map(|k| k.verify(body, meta.seal.as_deref()))
    }

    /// The queue a letter of this stage is replayed to.
    pub fn queue(&self, stage: Stage) -> &str {
        match stage {
            Stage::Work => &self.work,
            Stage::Deliver => &self.deliver,
        }
    }

    fn stage_of_queue(&self, queue: &str) -> Option<Stage> {
        if queue == self.work || queue.ends_with(".work") {
            Some(Stage::Work)
        } else if queue == self.deliver || queue.ends_with(".deliver") {
            Some(Stage::Deliver)
        } else {
            None
        }
    }

    /// The id of a raw entry: deterministic in the stream and offset, so that listing twice
    /// shows the same ids.
    pub fn raw_id(&self, offset: u64) -> Uuid {
        Uuid::new_v5(
            &RAW_ID_NAMESPACE,
            format!("{}@{offset}", self.stream).as_bytes(),
        )
    }
}

/// What an entry is, before decoding its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A reader's end marker, with its id.
    Marker(String),
    /// Anything else: a dead letter, of either origin.
    Letter,
}

pub fn kind(meta: &EntryMeta) -> Kind {
    match &meta.marker {
        Some(m) => Kind::Marker(m.clone()),
        None => Kind::Letter,
    }
}

/// One dead letter as the store shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    pub offset: u64,
    pub origin: Origin,
    pub letter: DeadLetter,
    /// What its seal says; `None` when seals are not checked (no audit key).
    pub seal: Option<Verdict>,
}

impl Letter {
    /// Why a replay must not send it: its seal is checked and does not verify.
    pub fn unverified(&self) -> Option<String> {
        match &self.seal {
            Some(v) if !v.is_verified() => Some(v.explain()),
            _ => None,
        }
    }
}

/// The fields that filters, tables and stats need, decoded without building the original
/// message (fast over a large store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub id: Uuid,
    pub offset: u64,
    pub origin: Origin,
    pub stage: Stage,
    pub reason: Reason,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub dead_at: DateTime<Utc>,
    pub attempts: usize,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal: Option<Verdict>,
}

impl Summary {
    pub fn of(letter: &Letter) -> Self {
        let l = &letter.letter;
        Self {
            id: l.id,
            offset: letter.offset,
            origin: letter.origin,
            stage: l.stage,
            reason: l.reason,
            source: l.source.clone(),
            target: l.target.clone(),
            dead_at: l.dead_at,
            attempts: l.attempts.len(),
            error: l.error.clone(),
            seal: letter.seal.clone(),
        }
    }
}

/// The head of a `DeadLetter` envelope: everything but the original message and the attempts'
/// contents, which serde skips without building them.
#[derive(Deserialize)]
struct Head {
    envelope: String,
    v: u16,
    id: Uuid,
    stage: Stage,
    reason: Reason,
    error: String,
    source: String,
    #[serde(default)]
    target: Option<String>,
    attempts: Vec<IgnoredAny>,
    dead_at: DateTime<Utc>,
}

/// The summary of an entry. Envelopes are read by their head only; raw entries are read whole.
pub fn summary(offset: u64, body: &[u8], meta: &EntryMeta, names: &Names) -> Summary {
    if !meta.dead_lettered_by_broker() {
        if let Ok(h) = serde_json::from_slice::<Head>(body) {
            if h.envelope == DeadLetter::KIND && h.v == DeadLetter::VERSION {
                return Summary {
                    id: h.id,
                    offset,
                    origin: Origin::Envelope,
                    stage: h.stage,
                    reason: h.reason,
                    source: h.source,
                    target: h.target,
                    dead_at: h.dead_at,
                    attempts: h.attempts.len(),
                    error: h.error,
                    seal: names.verdict(body, meta),
                };
            }
        }
    }
    Summary::of(&raw_view(offset, body, meta, names))
}

/// The whole letter of an entry.
pub fn letter(offset: u64, body: &[u8], meta: &EntryMeta, names: &Names) -> Letter {
    if !meta.dead_lettered_by_broker() {
        if let Ok(l) = shared::envelope::decode::<DeadLetter>(body) {
            return Letter {
                offset,
                origin: Origin::Envelope,
                letter: l,
                seal: names.verdict(body, meta),
            };
        }
    }
    raw_view(offset, body, meta, names)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use shared::envelope::{
        Answer, AnswerPayload, Attempt, ChatType, Conversation, Destination, DispatchJob,
        InboundEvent, Timings,
    };

    fn names() -> Names {
        Names {
            stream: "t.dead-letters".into(),
            work: "t.work".into(),
            deliver: "t.deliver".into(),
            keyring: None,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn attempt(s: i64) -> Attempt {
        Attempt {
            at: at(s),
            outcome: "retry".into(),
            status: Some(503),
            code: None,
            error: Some("busy".into()),
            excerpt: None,
            duration_ms: 12,
        }
    }

    fn event() -> InboundEvent {
        InboundEvent {
            id: Uuid::from_u128(7),
            source: "crm".into(),
            platform: "bearer".into(),
            dedup_key: "k".into(),
            kind: "message".into(),
            received_at: at(0),
            conversation: Conversation {
                chat_id: "c".into(),
                chat_type: ChatType::Single,
                sender_id: "u".into(),
                sender_name: None,
                thread_id: None,
            },
            text: "hello".into(),
            reply: None,
            payload: serde_json::json!({}),
            attempts: vec![attempt(1), attempt(6)],
            replay_of: None,
        }
    }

    fn job() -> DispatchJob {
        DispatchJob {
            id: Uuid::from_u128(9),
            destination: Destination::Target { id: "ops".into() },
            payload: AnswerPayload {
                event: None,
                event_id: Uuid::from_u128(7),
                source: "crm".into(),
                platform: "bearer".into(),
                conversation: event().conversation,
                query: "q".into(),
                answer: Answer::default(),
                timings: Timings {
                    answered_at: Some(at(3)),
                    ..Timings::default()
                },
            },
            attempts: vec![],
            replay_of: None,
            parts_left: None,
        }
    }

    fn poison_meta(queue: &str) -> EntryMeta {
        EntryMeta {
            first_death_queue: Some(queue.into()),
            first_death_reason: Some("delivery_limit".into()),
            ..EntryMeta::default()
        }
    }

    #[test]
    fn envelopes_read_the_same_by_head_and_whole() {
        let dl = DeadLetter::from_event(&event(), Reason::Exhausted, "Dify answered 503");
        let bytes = shared::envelope::encode(&dl);
        let whole = letter(4, &bytes, &EntryMeta::default(), &names());
        assert_eq!(whole.origin, Origin::Envelope);
        assert_eq!(whole.letter, dl);
        assert_eq!(
            summary(4, &bytes, &EntryMeta::default(), &names()),
            Summary::of(&whole)
        );
    }

    /// What a raw entry should read as.
    struct Case {
        body: Vec<u8>,
        meta: EntryMeta,
        stage: Stage,
        reason: Reason,
        source: &'static str,
        target: Option<&'static str>,
        attempts: usize,
        dead_at: DateTime<Utc>,
    }

    #[test]
    fn raw_entries_become_views() {
        let n = names();
        let ev = shared::envelope::encode(&event());
        let jb = shared::envelope::encode(&job());
        let death = EntryMeta {
            death: Some(Death {
                queue: Some("t.deliver".into()),
                reason: Some("delivery_limit".into()),
                count: Some(3),
                time: Some(at(50)),
            }),
            ..EntryMeta::default()
        };
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        #[rustfmt::skip]
        let cases = vec![
            Case { body: ev.clone(), meta: poison_meta("t.work"), stage: Stage::Work, reason: Reason::Poison, source: "crm", target: None, attempts: 2, dead_at: at(6) },
            Case { body: jb.clone(), meta: poison_meta("t.deliver"), stage: Stage::Deliver, reason: Reason::Poison, source: "crm", target: Some("ops"), attempts: 0, dead_at: at(3) },
            // The queue decides the stage, not the body.
            Case { body: jb, meta: poison_meta("t.work"), stage: Stage::Work, reason: Reason::Poison, source: "crm", target: Some("ops"), attempts: 0, dead_at: at(3) },
            Case { body: b"garbage".to_vec(), meta: poison_meta("t.work"), stage: Stage::Work, reason: Reason::Poison, source: "", target: None, attempts: 0, dead_at: epoch },
            // An x-death entry (RabbitMQ 4) gives the queue and the time.
            Case { body: b"{}".to_vec(), meta: death, stage: Stage::Deliver, reason: Reason::Poison, source: "", target: None, attempts: 0, dead_at: at(50) },
            // Neither a dead letter nor dead-lettered by the broker.
            Case { body: ev, meta: EntryMeta::default(), stage: Stage::Work, reason: Reason::Invalid, source: "crm", target: None, attempts: 2, dead_at: at(6) },
        ];
        for (i, c) in cases.into_iter().enumerate() {
            let offset = 10 + i as u64;
            let l = letter(offset, &c.body, &c.meta, &n);
            assert_eq!(l.origin, Origin::Broker, "case {i}");
            assert_eq!(l.letter.stage, c.stage, "case {i}");
            assert_eq!(l.letter.reason, c.reason, "case {i}");
            assert_eq!(l.letter.source, c.source, "case {i}");
            assert_eq!(l.letter.target.as_deref(), c.target, "case {i}");
            assert_eq!(l.letter.attempts.len(), c.attempts, "case {i}");
            assert_eq!(l.letter.dead_at, c.dead_at, "case {i}");
            assert_eq!(l.letter.id, n.raw_id(offset), "case {i}");
            assert_eq!(
                summary(offset, &c.body, &c.meta, &n),
                Summary::of(&l),
                "case {i}"
            );
        }
    }

    #[test]
    fn raw_ids_are_stable_per_stream_and_offset() {
        let n = names();
        assert_eq!(n.raw_id(5), n.raw_id(5));
        assert_ne!(n.raw_id(5), n.raw_id(6));
        let other = Names {
            stream: "u.dead-letters".into(),
            ..names()
        };
        assert_ne!(n.raw_id(5), other.raw_id(5));
    }

    #[test]
    fn markers_are_told_apart() {
        let m = EntryMeta {
            marker: Some("abc".into()),
            ..EntryMeta::default()
        };
        assert_eq!(kind(&m), Kind::Marker("abc".into()));
        assert_eq!(kind(&EntryMeta::default()), Kind::Letter);
    }
}
