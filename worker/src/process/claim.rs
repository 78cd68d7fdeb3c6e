//! The first step for an event: claim it in the idempotency record (or find its answer recorded
//! there), then take its conversation's turn, so that a conversation's messages reach Dify one
//! at a time and in order. An event that cannot be claimed or whose conversation is busy waits
//! in a delay queue; one that keeps killing its workers becomes a dead letter. Must not call
//! Dify.
use super::{Claimed, Hold, Worker, STORE_WAIT};
use crate::conversation::conversation_of;
use crate::idempotency::Claim;
use shared::config::SourceConfig;
use shared::envelope::{InboundEvent, Reason};
use shared::stage::Settle;
use std::time::Duration;

impl Worker {
    /// Claims the event and takes its conversation's turn; `Err`: the event was settled instead
    /// (parked or dead-lettered), holding nothing.
    pub(super) async fn claim_and_turn(
        &self,
        event: &InboundEvent,
        source: &SourceConfig,
    ) -> Result<Hold, Settle> {
        let key = self.idem.key(&event.source, &event.dedup_key);
        let claim = match self.idem.claim(&key).await {
            Ok(c) => c,
            Err(e) => {
                // Without the record we cannot promise "once": don't call Dify, come back later.
                tracing::warn!(error = %e, "idempotency store unavailable; deferring");
                return Err(self.defer(event, STORE_WAIT).await);
            }
        };
        let (token, previous, takeovers) = match claim {
            Claim::Done(answer) => {
                tracing::info!("answer already recorded; dispatching it without calling Dify");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "from_record")
                    .increment(1);
                return Ok(Hold::Recorded(answer));
            }
            Claim::Held(wait) => {
                tracing::info!(?wait, "another worker is answering this event; waiting");
                metrics::counter!("switchboard_worker_events_total", "outcome" => "held")
                    .increment(1);
                return Err(self.defer(event, wait + Duration::from_millis(250)).await);
            }
            Claim::Acquired {
                token,
                previous,
                takeovers,
            } => (token, previous, takeovers),
        };
        // Workers keep dying on this event: the broker's delivery limit cannot see that (a held
        // event is re-published, which resets its delivery count), so the record counts the
        // deaths and the same limit applies.
        if takeovers >= self.config.broker.delivery_limit {
            let _ = self.idem.release_failed(&key, token).await;
            let why = format!("{takeovers} workers died while answering this event");
            return Err(self.dead_letter(event, Reason::Poison, &why).await);
        }
        let claimed = self.take_turn(event, source, key, token).await?;
        Ok(Hold::Turn { claimed, previous })
    }

    /// Takes the conversation's turn for the event claimed under `key` with `token`; `Err`: the
    /// conversation is busy or cannot be read, so the claim is released and the event parked.
    async fn take_turn(
        &self,
        event: &InboundEvent,
        source: &SourceConfig,
        key: String,
        token: i64,
    ) -> Result<Claimed, Settle> {
        let conv = conversation_of(
            &event.source,
            &event.conversation,
            source.group_conversation,
            &self.services.store,
        );
        // Unique per claim, so two copies of one event cannot share a turn.
        let holder = format!("{}:{token}", event.id);
        // The turn lasts as long as the lease and is renewed with it, so a dead worker's turn
        // lapses with its claim.
        let wait = match self
            .conversations
            .take_turn(&conv, &holder, self.idem.lease())
            .await
        {
            Ok(None) => {
                return Ok(Claimed {
                    key,
                    token,
                    conv,
                    holder,
                })
            }
            Ok(Some(wait)) => {
                tracing::debug!(?wait, "conversation busy with an earlier message; waiting");
                wait.min(Duration::from_secs(1))
            }
            Err(e) => {
                tracing::warn!(error = %e, "conversation store unavailable; deferring");
                STORE_WAIT
            }
        };
        let _ = self.idem.release(&key, token).await;
        Err(self.defer(event, wait).await)
    }
}
