//! Applying one progress update of a streamed reply (`shared::progress::ReplyProgress`): under
//! the reply's lock, the update is dropped if it is older than the last one applied, arrives
//! after the final answer or after a fallback (`crate::stream::decide`); otherwise it creates
//! the message or edits it, within the reply channel's rate limits and the chat's (edits count
//! like messages) and, for an edit, the platform's own limit on edits where it has one. A
//! reply its channel cannot grow (`Grow::grows`) drops its updates. An update is never retried
//! or parked: one the limiter would hold back for long, one that finds the lock taken, or one
//! that fails is dropped, and the next update or the final answer carries the text. A create or edit the platform refuses for good makes the
//! reply fall back to a single message (said once in the log). The update is always acked.
use super::admit::name_of;
use super::{Dispatcher, Route};
use crate::ratelimit::Admission;
use crate::stream::{decide, Grow, Record, Reply, Step};
use crate::target::Verdict;
use shared::envelope::{AnswerPayload, Destination};
use shared::progress::ReplyProgress;
use shared::stage::Settle;
use shared::units::Rate;
use std::time::Duration;

/// An update waits in process at most this long for the limiter; beyond, it is dropped.
const SHORT_WAIT: Duration = Duration::from_millis(250);

/// The chat's own limit of a streamed reply (its limiter name and rates), if the route's
/// channel grows messages and the platform limits a chat.
pub(super) fn chat_limit(
    route: &Route,
    destination: &Destination,
    payload: &AnswerPayload,
) -> Option<(String, Vec<Rate>)> {
    reply_limit(route, destination, payload, "chat", |grow, reply| {
        grow.chat_rate(reply)
    })
}

/// The platform's limit on edits alone of a streamed reply (its limiter name and rates), if
/// the route's channel grows messages and the platform has one (Slack's Tier 3 `chat.update`).
pub(super) fn edit_limit(
    route: &Route,
    destination: &Destination,
    payload: &AnswerPayload,
) -> Option<(String, Vec<Rate>)> {
    reply_limit(route, destination, payload, "edits", |grow, reply| {
        grow.edit_rate(reply)
    })
}

/// A limit `rate` of the route's growing channel gives for a reply, named
/// `reply:<source>:<what>:<name>`.
fn reply_limit(
    route: &Route,
    destination: &Destination,
    payload: &AnswerPayload,
    what: &str,
    rate: impl FnOnce(&dyn Grow, Reply<'_>) -> Option<(String, Vec<Rate>)>,
) -> Option<(String, Vec<Rate>)> {
    let Destination::Reply { .. } = destination else {
        return None;
    };
    let reply = Reply {
        destination,
        payload,
    };
    let (name, rates) = rate(route.target.grow()?, reply)?;
    Some((format!("reply:{}:{what}:{name}", payload.source), rates))
}

impl Dispatcher {
    /// Applies one update (or drops it) and acks it.
    pub(super) async fn progress(&self, update: ReplyProgress) -> Settle {
        let what = self.apply_progress(&update).await;
        tracing::debug!(
            epoch = update.epoch,
            seq = update.seq,
            what,
            "progress update"
        );
        metrics::counter!("switchboard_stream_updates_total", "stage" => what).increment(1);
        Settle::Ack
    }

    async fn apply_progress(&self, update: &ReplyProgress) -> &'static str {
        let Some(route) = self.replies.get(&update.payload.source) else {
            return "no_route";
        };
        let Some(grow) = route.target.grow() else {
            return "not_streaming";
        };
        let reply = Reply {
            destination: &update.destination,
            payload: &update.payload,
        };
        if !grow.grows(reply) {
            return "not_streaming";
        }
        let record = Record::of(&self.services.store, update.job_id);
        match record.lock(self.lock_ttl).await {
            Ok(true) => {}
            Ok(false) => return "busy",
            Err(_) => return "store_unavailable",
        }
        let what = self.apply_locked(route, grow, update, &record).await;
        record.unlock().await;
        what
    }

    async fn apply_locked(
        &self,
        route: &Route,
        grow: &dyn Grow,
        update: &ReplyProgress,
        record: &Record<'_>,
    ) -> &'static str {
        let Ok(state) = record.read().await else {
            return "store_unavailable";
        };
        let step = decide(&state, update.order());
        if let Step::Drop(skip) = step {
            return skip.as_str();
        }
        if !self
            .admit_edit(route, update, matches!(step, Step::Edit(_)))
            .await
        {
            return "rate_limited";
        }
        let reply = Reply {
            destination: &update.destination,
            payload: &update.payload,
        };
        // What a message shows: the first part of the text so far.
        let text = route
            .target
            .parts(&update.payload.answer.text)
            .into_iter()
            .next()
            .unwrap_or_default();
        let (outcome, created) = match step {
            Step::Create => match grow.create(reply, &self.ctx, &text).await {
                Ok(id) => (None, Some(id)),
                Err(outcome) => (Some(outcome), None),
            },
            Step::Edit(message) => {
                let outcome = grow.edit(reply, &self.ctx, &message, &text).await;
                (
                    Some(outcome).filter(|o| o.verdict != Verdict::Delivered),
                    None,
                )
            }
            Step::Drop(_) => unreachable!("dropped above"),
        };
        match outcome {
            None => match record.applied(update.order(), created.as_deref()).await {
                Ok(_) => "applied",
                Err(e) => {
                    tracing::warn!(error = %e, "could not record an applied update");
                    "applied_unrecorded"
                }
            },
            Some(refused) if refused.verdict == Verdict::Permanent => {
                crate::stream::fall_back(record, &refused).await;
                "fell_back"
            }
            Some(_) => "failed",
        }
    }

    /// Takes a slot of the channel's limits and the chat's for one update (and of the
    /// platform's edit limit when it `edits`), waiting in process only briefly; `false`: drop
    /// the update.
    async fn admit_edit(&self, route: &Route, update: &ReplyProgress, edits: bool) -> bool {
        let mut limits = Vec::new();
        if let Some(chat) = chat_limit(route, &update.destination, &update.payload) {
            limits.push(chat);
        }
        if let Some(edit) = edits
            .then(|| edit_limit(route, &update.destination, &update.payload))
            .flatten()
        {
            limits.push(edit);
        }
        if !route.rates.is_empty() {
            let name = name_of(&update.destination, &update.payload.source);
            limits.push((name, route.rates.clone()));
        }
        for (name, rates) in &limits {
            let mut waited = false;
            loop {
                match self.limiter.acquire(name, rates).await {
                    Ok(Admission::Go) => break,
                    Ok(Admission::Wait(wait)) if !waited && wait <= SHORT_WAIT => {
                        waited = true;
                        tokio::time::sleep(wait).await;
                    }
                    Ok(Admission::Wait(_)) | Err(_) => return false,
                }
            }
        }
        true
    }
}
