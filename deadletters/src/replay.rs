//! What a replay sends, decided without the broker: which selected dead letters go and which
//! are skipped as already replayed ([`plan`]), and the message each one becomes on its way
//! back to its stage ([`rearm`]): the original `InboundEvent` or `DispatchJob` with its attempts
//! cleared, so the stage counts from zero again, and `replay_of` naming the dead letter. A
//! letter whose seal is checked and does not verify is refused, unless an admin allows it.
use shared::envelope::{DeadLetter, DispatchJob, InboundEvent, Stage};
use std::collections::HashSet;
use std::time::Duration;

use super::audit::Ledger;
use super::record::Letter;

/// The outcome of planning a replay.
#[derive(Debug, Default)]
pub struct Plan {
    /// To republish, in store order.
    pub send: Vec<Letter>,
    /// Already replayed and not forced.
    pub skipped: Vec<Letter>,
    /// Not sent because its seal does not verify, and why.
    pub refused: Vec<(Letter, String)>,
}

impl Plan {
    /// How many go to each stage.
    pub fn per_stage(&self) -> (usize, usize) {
        let work = self
            .send
            .iter()
            .filter(|l| l.letter.stage == Stage::Work)
            .count();
        (work, self.send.len() - work)
    }
}

/// What a replay was asked to allow beyond the usual.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allow {
    /// Send letters that were already replayed.
    pub force: bool,
    /// Send letters whose seal does not verify (records from before the audit key).
    pub unverified: bool,
}

/// Splits the selected letters into those to send, those to skip and those refused. A letter
/// selected twice goes once.
pub fn plan(letters: Vec<Letter>, ledger: &Ledger, allow: Allow) -> Plan {
    let mut seen = HashSet::new();
    let mut out = Plan::default();
    for l in letters {
        if !seen.insert(l.letter.id) {
            continue;
        }
        if let Some(why) = l.unverified().filter(|_| !allow.unverified) {
            out.refused.push((l, why));
        } else if !allow.force && ledger.replayed(l.letter.id) {
            out.skipped.push(l);
        } else {
            out.send.push(l);
        }
    }
    out
}

/// Why a dead letter cannot be republished.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RearmError {
    #[error("its original message is not a readable {expected}: {why}")]
    Unreadable { expected: &'static str, why: String },
}

/// The message to republish for a dead letter: its original message with attempts cleared and
/// `replay_of` set, encoded as the envelope its stage consumes.
pub fn rearm(dead: &DeadLetter) -> Result<Vec<u8>, RearmError> {
    // A raw (poison) message kept its envelope head; a DeadLetter's message has none. Either
    // way the head, if present, must name the stage's envelope.
    let head = dead.message.get("envelope").and_then(|v| v.as_str());
    match dead.stage {
        Stage::Work => {
            check_head(head, "inbound_event")?;
            let mut event: InboundEvent = serde_json::from_value(dead.message.clone())
                .map_err(|e| unreadable("inbound_event", e))?;
            event.attempts.clear();
            event.replay_of = Some(dead.id);
            Ok(shared::envelope::encode(&event))
        }
        Stage::Deliver => {
            check_head(head, "dispatch_job")?;
            let mut job: DispatchJob = serde_json::from_value(dead.message.clone())
                .map_err(|e| unreadable("dispatch_job", e))?;
            job.attempts.clear();
            job.replay_of = Some(dead.id);
            Ok(shared::envelope::encode(&job))
        }
    }
}

fn check_head(head: Option<&str>, expected: &'static str) -> Result<(), RearmError> {
    match head {
        Some(h) if h != expected => Err(RearmError::Unreadable {
            expected,
            why: format!("it is a `{h}`"),
        }),
        _ => Ok(()),
    }
}

fn unreadable(expected: &'static str, e: serde_json::Error) -> RearmError {
    RearmError::Unreadable {
        expected,
        why: e.to_string(),
    }
}

/// When the `n`th message (from 0) of a paced replay may go: evenly spaced from the start, so
/// that a slow moment is caught up rather than lost and the average holds the rate.
pub fn due(n: u64, interval: Option<Duration>) -> Duration {
    match interval {
        None => Duration::ZERO,
        Some(i) => i.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::{ReplayRecord, RunState, Selection};
    use crate::record::Origin;
    use chrono::Utc;
    use shared::envelope::{
        Answer, AnswerPayload, Attempt, ChatType, Conversation, Destination, Reason, Timings,
    };
    use uuid::Uuid;

    fn attempt() -> Attempt {
        Attempt {
            at: Utc::now(),
            outcome: "retry".into(),
            status: Some(500),
            code: None,
            error: None,
            excerpt: None,
            duration_ms: 1,
        }
    }

    fn conversation() -> Conversation {
        Conversation {
            chat_id: "c".into(),
            chat_type: ChatType::Group,
            sender_id: "u".into(),
            sender_name: None,
            thread_id: None,
        }
    }

    fn event() -> InboundEvent {
        InboundEvent {
            id: Uuid::now_v7(),
            source: "crm".into(),
            platform: "bearer".into(),
            dedup_key: "k".into(),
            kind: "message".into(),
            received_at: Utc::now(),
            conversation: conversation(),
            text: "hi".into(),
            reply: None,
            payload: serde_json::json!({"x": [1, 2]}),
            attempts: vec![attempt(), attempt()],
            replay_of: None,
        }
    }

    fn job() -> DispatchJob {
        DispatchJob {
            id: Uuid::now_v7(),
            destination: Destination::Target { id: "ops".into() },
            payload: AnswerPayload {
                event: None,
                event_id: Uuid::now_v7(),
                source: "crm".into(),
                platform: "bearer".into(),
                conversation: conversation(),
                query: "q".into(),
                answer: Answer::default(),
                timings: Timings::default(),
            },
            attempts: vec![attempt()],
            replay_of: Some(Uuid::now_v7()),
            parts_left: None,
        }
    }

    #[test]
    fn rearmed_messages_start_over_and_point_back() {
        let e = event();
        let dl = DeadLetter::from_event(&e, Reason::Exhausted, "503");
        let back: InboundEvent = shared::envelope::decode(&rearm(&dl).unwrap_or_default())
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(back.attempts, vec![]);
        assert_eq!(back.replay_of, Some(dl.id));
        assert_eq!((back.id, back.payload), (e.id, e.payload));

        let j = job();
        let dl = DeadLetter::from_job(&j, Reason::Permanent, "410");
        let back: DispatchJob = shared::envelope::decode(&rearm(&dl).unwrap_or_default())
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(back.attempts, vec![]);
        assert_eq!(back.replay_of, Some(dl.id));
        assert_eq!((back.id, back.destination), (j.id, j.destination));
    }

    #[test]
    fn raw_messages_rearm_only_when_readable_as_their_stage() {
        let raw_event: serde_json::Value =
            serde_json::from_slice(&shared::envelope::encode(&event())).unwrap_or_default();
        let mut dl = DeadLetter::from_event(&event(), Reason::Poison, "poison");
        let cases: Vec<(Stage, serde_json::Value, bool)> = vec![
            (Stage::Work, raw_event.clone(), true),
            (Stage::Deliver, raw_event, false),
            (Stage::Work, serde_json::json!("garbage"), false),
            (
                Stage::Deliver,
                serde_json::json!({"envelope": "dispatch_job"}),
                false,
            ),
        ];
        for (i, (stage, message, ok)) in cases.into_iter().enumerate() {
            dl.stage = stage;
            dl.message = message;
            assert_eq!(rearm(&dl).is_ok(), ok, "case {i}");
        }
    }

    fn letter(n: u128) -> Letter {
        let mut dl = DeadLetter::from_event(&event(), Reason::Exhausted, "x");
        dl.id = Uuid::from_u128(n);
        Letter {
            offset: n as u64,
            origin: Origin::Envelope,
            letter: dl,
            seal: None,
        }
    }

    #[test]
    fn replayed_letters_are_skipped_unless_forced() {
        let ledger = Ledger::from_records(vec![(
            ReplayRecord {
                replay_id: Uuid::now_v7(),
                part: 0,
                state: RunState::Done,
                actor: "a".into(),
                host: "h".into(),
                started_at: Utc::now(),
                at: Utc::now(),
                selection: Selection::Ids { ids: vec![] },
                force: false,
                rate: None,
                matched: 1,
                sent: 1,
                skipped: 0,
                failed: 0,
                sent_ids: vec![Uuid::from_u128(2)],
                failures: vec![],
                via: None,
                seq: None,
                prev: None,
            },
            true,
        )]);
        let ids = |v: &[Letter]| v.iter().map(|l| l.letter.id.as_u128()).collect::<Vec<_>>();
        let p = plan(
            vec![letter(1), letter(2), letter(3), letter(1)],
            &ledger,
            Allow::default(),
        );
        assert_eq!((ids(&p.send), ids(&p.skipped)), (vec![1, 3], vec![2]));
        let forced = Allow {
            force: true,
            ..Allow::default()
        };
        let p = plan(vec![letter(1), letter(2), letter(3)], &ledger, forced);
        assert_eq!((ids(&p.send), ids(&p.skipped)), (vec![1, 2, 3], vec![]));
        assert_eq!(p.per_stage(), (3, 0));
    }

    #[test]
    fn letters_that_do_not_verify_are_refused_unless_allowed() {
        use shared::seal::Verdict;
        let mut forged = letter(1);
        forged.seal = Some(Verdict::Forged { key_id: "k".into() });
        let mut good = letter(2);
        good.seal = Some(Verdict::Verified { key_id: "k".into() });
        let mut old = letter(3);
        old.seal = Some(Verdict::Unsealed);
        let all = vec![forged, good, old];
        let p = plan(all.clone(), &Ledger::default(), Allow::default());
        let refused: Vec<u128> = p
            .refused
            .iter()
            .map(|(l, _)| l.letter.id.as_u128())
            .collect();
        assert_eq!((refused, p.send.len()), (vec![1, 3], 1));
        assert!(p.refused[0].1.contains("forged"), "{}", p.refused[0].1);
        let allow = Allow {
            unverified: true,
            ..Allow::default()
        };
        assert_eq!(plan(all, &Ledger::default(), allow).send.len(), 3);
    }

    #[test]
    fn paced_messages_are_evenly_spaced() {
        let ms = Duration::from_millis;
        let cases = [
            (0, None, ms(0)),
            (5, None, ms(0)),
            (0, Some(ms(10)), ms(0)),
            (3, Some(ms(10)), ms(30)),
        ];
        for (n, interval, want) in cases {
            assert_eq!(due(n, interval), want);
        }
    }
}
