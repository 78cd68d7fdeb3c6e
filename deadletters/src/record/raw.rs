//! What a raw entry of the dead-letter stream reads as: a message the broker dead-lettered from
//! a stage queue past its delivery limit (poison), or anything else that is not a readable
//! `DeadLetter` (invalid). Such an entry carries no record of its own, so its view is put
//! together from the AMQP facts the broker stamped on it and from what its body turns out to be
//! (an `InboundEvent`, a `DispatchJob`, or neither); the original bytes are kept whole. Pure.
use base64::Engine as _;
use chrono::{DateTime, Utc};
use shared::envelope::{Attempt, DeadLetter, DispatchJob, InboundEvent, Reason, Stage};
use uuid::Uuid;

use super::{EntryMeta, Letter, Names, Origin};

/// What a raw entry's body turned out to be.
enum Body {
    Event(Box<InboundEvent>),
    Job(Box<DispatchJob>),
    Other,
}

fn read_body(body: &[u8]) -> Body {
    if let Ok(e) = shared::envelope::decode::<InboundEvent>(body) {
        return Body::Event(Box::new(e));
    }
    if let Ok(j) = shared::envelope::decode::<DispatchJob>(body) {
        return Body::Job(Box::new(j));
    }
    Body::Other
}

/// What the body itself tells of the message.
struct Facts {
    source: String,
    target: Option<String>,
    event_id: Option<Uuid>,
    attempts: Vec<Attempt>,
    /// The latest time the message knows of apart from its attempts (received or answered).
    known_at: Option<DateTime<Utc>>,
}

impl Body {
    /// The stage a body belongs to when the broker did not say which queue it came from.
    fn stage(&self) -> Stage {
        match self {
            Body::Job(_) => Stage::Deliver,
            _ => Stage::Work,
        }
    }

    fn into_facts(self) -> Facts {
        match self {
            Body::Event(e) => Facts {
                source: e.source,
                target: None,
                event_id: Some(e.id),
                attempts: e.attempts,
                known_at: Some(e.received_at),
            },
            Body::Job(j) => Facts {
                target: Some(j.destination.name()),
                event_id: Some(j.payload.event_id),
                known_at: j
                    .payload
                    .timings
                    .answered_at
                    .or(j.payload.timings.received_at),
                source: j.payload.source,
                attempts: j.attempts,
            },
            Body::Other => Facts {
                source: String::new(),
                target: None,
                event_id: None,
                attempts: Vec::new(),
                known_at: None,
            },
        }
    }
}

/// The original message as JSON: itself when it is JSON, a string when it is text, and
/// `{"base64": …}` otherwise, so that nothing is lost.
pub fn message_value(body: &[u8]) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::Value::String(text.to_owned()),
        Err(_) => serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(body)
        }),
    }
}

/// Why a raw entry is dead, and the error that says so: poison when the broker dead-lettered
/// it, invalid when it is neither that nor a readable `DeadLetter`.
fn why(body: &[u8], meta: &EntryMeta) -> (Reason, String) {
    if meta.dead_lettered_by_broker() {
        let why = meta.death_reason().unwrap_or("unknown reason");
        let count = meta
            .death
            .as_ref()
            .and_then(|d| d.count)
            .map(|c| format!(", {c} time(s)"))
            .unwrap_or_default();
        let from = meta.death_queue().unwrap_or("a stage queue");
        (
            Reason::Poison,
            format!("the broker dead-lettered it from `{from}` ({why}{count}): consumers kept failing on it"),
        )
    } else {
        let why = match shared::envelope::decode::<DeadLetter>(body) {
            Err(e) => e.to_string(),
            Ok(_) => "unreadable".to_owned(),
        };
        (Reason::Invalid, format!("not a dead letter: {why}"))
    }
}

/// When a raw entry died. RabbitMQ 3.x stamps no time on a poison message: the best
/// deterministic guess is the latest time the message itself knows of (documented in
/// docs/DEADLETTERS.md); the epoch means "unknown".
fn dead_at(meta: &EntryMeta, facts: &Facts) -> DateTime<Utc> {
    meta.death
        .as_ref()
        .and_then(|d| d.time)
        .or(meta.timestamp)
        .or(facts.attempts.last().map(|a| a.at))
        .or(facts.known_at)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A dead-letter view of a raw entry, its id deterministic in the stream and the offset.
pub(super) fn raw_view(offset: u64, body: &[u8], meta: &EntryMeta, names: &Names) -> Letter {
    let parsed = read_body(body);
    let stage = meta
        .death_queue()
        .and_then(|q| names.stage_of_queue(q))
        .unwrap_or(parsed.stage());
    let facts = parsed.into_facts();
    let (reason, error) = why(body, meta);
    let dead_at = dead_at(meta, &facts);
    Letter {
        offset,
        origin: Origin::Broker,
        seal: names.verdict(body, meta),
        letter: DeadLetter {
            id: names.raw_id(offset),
            stage,
            reason,
            error,
            source: facts.source,
            target: facts.target,
            event_id: facts.event_id,
            message: message_value(body),
            first_attempt_at: facts.attempts.first().map(|a| a.at),
            last_attempt_at: facts.attempts.last().map(|a| a.at),
            attempts: facts.attempts,
            dead_at,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_original_message_is_kept_whole() {
        let cases: Vec<(&[u8], serde_json::Value)> = vec![
            (b"{\"a\":1}", serde_json::json!({"a": 1})),
            (b"plain text", serde_json::json!("plain text")),
            (&[0xff, 0x00], serde_json::json!({"base64": "/wA="})),
        ];
        for (body, want) in cases {
            assert_eq!(message_value(body), want);
        }
    }
}
