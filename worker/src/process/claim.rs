//! The first step for an event: claim it in the idempotency record (or find its answer recorded
//! there) and take its conversation's turn, in one script (`crate::hold`), so that a
//! conversation's messages reach Dify one at a time and in order. An event that cannot be claimed or whose conversation is busy waits
//! in a delay queue; one that keeps killing its workers becomes a dead letter; a second copy of
//! a platform event whose answer another event id recorded is acked without fanning out again
//! ([`fans_out_recorded`]). Must not call Dify.
use super::{Hold, Worker, STORE_WAIT};
use crate::conversation::conversation_of;
use crate::hold::{Begun, Held};
use crate::idempotency::Claim;
use shared::config::SourceConfig;
use shared::envelope::{InboundEvent, Reason};
use shared::stage::Settle;
use std::time::Duration;
use uuid::Uuid;

impl Worker {
    /// Claims the event and takes its conversation's turn (one round trip, which also reads the
    /// conversation's id); `Err`: the event was settled instead (parked or dead-lettered),
    /// holding nothing.
    pub(super) async fn claim_and_turn(
        &self,
        event: &InboundEvent,
        source: &SourceConfig,
    ) -> Result<Hold, Settle> {
        let key = self.idem.key(&event.source, &event.dedup_key);
        let conv = conversation_of(
            &event.source,
            &event.conversation,
            source.group_conversation,
            &self.services.store,
        );
        // Unique per claim, so two copies of one event cannot share a turn, and a claim whose
        // reply is lost can be given back.
        let claimant = self.idem.claimant();
        let Begun {
            claim,
            conversation_id,
        } = match self.holds.begin(&key, &conv, &claimant).await {
            Ok(b) => b,
            Err(e) => {
                // Without the record we cannot promise "once": don't call Dify, come back later.
                tracing::warn!(error = %e, "idempotency store unavailable; deferring");
                return Err(self.defer(event, STORE_WAIT).await);
            }
        };
        let (token, previous, takeovers) = match claim {
            Claim::Done { answer, by } => {
                if !fans_out_recorded(event, by) {
                    // Another copy of this platform event (kept under another event id: a 503
                    // whose publish reached the queue, then the platform's retry) was answered
                    // and fans out itself: it is acked only once its jobs are confirmed.
                    tracing::info!(answered_by = ?by, "answer recorded for another copy of this platform event; not fanned out again");
                    metrics::counter!("switchboard_worker_events_total", "outcome" => "duplicate")
                        .increment(1);
                    return Err(Settle::Ack);
                }
                tracing::info!("answer already recorded; dispatching it without calling Dify");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "from_record")
                    .increment(1);
                return Ok(Hold::Recorded(answer));
            }
            Claim::Unreadable(why) => {
                // Retrying cannot help until the key is configured; a replay then finds it.
                tracing::error!(error = %why, "the recorded answer does not open");
                metrics::counter!("switchboard_store_unreadable_total", "record" => "answer")
                    .increment(1);
                let why = format!("the recorded answer does not open: {why}");
                return Err(self.dead_letter(event, Reason::Permanent, &why).await);
            }
            Claim::Held(wait) => {
                tracing::info!(?wait, "another worker is answering this event; waiting");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "held")
                    .increment(1);
                return Err(self.defer(event, wait + Duration::from_millis(250)).await);
            }
            Claim::Busy(wait) => {
                tracing::debug!(?wait, "conversation busy with an earlier message; waiting");
                return Err(self.defer(event, wait.min(Duration::from_secs(1))).await);
            }
            Claim::Acquired {
                token,
                previous,
                takeovers,
            } => (token, previous, takeovers),
        };
        let claimed = Held {
            key,
            token,
            claimant,
            event_id: event.id,
            conv,
        };
        // Workers keep dying on this event: the broker's delivery limit cannot see that (a held
        // event is re-published, which resets its delivery count), so the record counts the
        // deaths and the same limit applies.
        if takeovers >= self.config.broker.delivery_limit {
            let _ = self.holds.let_go(&claimed, true).await;
            let why = format!("{takeovers} workers died while answering this event");
            return Err(self.dead_letter(event, Reason::Poison, &why).await);
        }
        Ok(Hold::Turn {
            claimed,
            previous,
            conversation_id,
        })
    }
}

/// Whether an event whose answer is recorded fans it out (pure). Yes for the event the answer
/// was recorded for (a redelivery: its fan-out may not have completed before a crash), for a
/// replay (meant to be delivered), and for a record that does not say which event it answered
/// (written by an earlier version). No for another copy of the platform event under another
/// event id: the answering event is not acked before its jobs are confirmed, so it fans out (or
/// is redelivered and fans out) itself.
pub fn fans_out_recorded(event: &InboundEvent, answered: Option<Uuid>) -> bool {
    match answered {
        None => true,
        Some(_) if event.replay_of.is_some() => true,
        Some(by) => by == event.id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::envelope::{ChatType, Conversation};

    fn event() -> InboundEvent {
        InboundEvent {
            id: Uuid::now_v7(),
            source: "crm".into(),
            platform: "bearer".into(),
            dedup_key: "ev2309".into(),
            kind: "message".into(),
            received_at: chrono::Utc::now(),
            conversation: Conversation {
                chat_id: "c".into(),
                chat_type: ChatType::Single,
                sender_id: "u".into(),
                sender_name: None,
                thread_id: None,
            },
            text: "hi".into(),
            reply: None,
            payload: serde_json::json!({}),
            attempts: vec![],
            replay_of: None,
        }
    }

    #[test]
    fn only_the_answering_event_a_replay_or_an_old_record_fans_out_a_recorded_answer() {
        let e = event();
        assert!(
            fans_out_recorded(&e, Some(e.id)),
            "a redelivery of the answering event"
        );
        assert!(
            fans_out_recorded(&e, None),
            "a record of an earlier version"
        );
        assert!(
            !fans_out_recorded(&e, Some(Uuid::now_v7())),
            "a second copy"
        );
        let replay = InboundEvent {
            replay_of: Some(Uuid::now_v7()),
            ..e
        };
        assert!(fans_out_recorded(&replay, Some(Uuid::now_v7())), "a replay");
    }
}
