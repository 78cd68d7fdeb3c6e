//! Admission of one job: its target's circuit breaker (on the state read with the job's marks),
//! then its rate limit. A job that is not admitted waits in a delay queue without counting an
//! attempt. A success is not written to a breaker that was clean when the job was admitted
//! ([`breaker_news`]): it would change nothing, and it would cost a round trip per delivery. The
//! breaker may pick the job as
//! its one probe; [`Admitted`] holds that probe until the attempt's verdict is reported and gives
//! it back when dropped unreported (the job was parked after all, another dispatcher held its
//! lock, the token was refused), so that another process may probe at once instead of after the
//! probe's lease. This module never sends, parks or acks.
use super::{Dispatcher, Route};
use crate::breaker::{Breaker, Gate, Reading};
use crate::ratelimit::Admission;
use crate::target::{Outcome, Verdict};
use crate::STORE_WAIT;
use shared::envelope::{Destination, DispatchJob};
use std::time::Duration;

/// A job let through to its attempt.
pub(super) struct Admitted<'a> {
    breaker: &'a Breaker,
    /// The target's name for the breaker and the limiter.
    target: String,
    /// This job is the breaker's probe and its verdict has not been reported yet.
    probe: bool,
    /// The breaker was closed with no failure counted when the job was admitted.
    clean: bool,
}

impl Admitted<'_> {
    /// Tells the breaker what the attempt said about the receiver (see [`breaker_news`]); an
    /// outcome that says nothing leaves the breaker alone and gives a probe back.
    pub(super) async fn report(mut self, outcome: &Outcome) {
        if let Some(alive) = breaker_news(receiver_alive(outcome), self.clean) {
            self.probe = false;
            let _ = self.breaker.record(&self.target, alive).await;
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.probe {
            return;
        }
        // A drop cannot wait: the probe is given back by a task of its own. Should that fail
        // (no runtime, Redis away), the probe's lease frees it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let breaker = self.breaker.clone();
        let target = std::mem::take(&mut self.target);
        runtime.spawn(async move {
            let _ = breaker.release_probe(&target).await;
        });
    }
}

/// What an attempt says about the receiver (pure). The breaker watches whether the receiver is
/// reachable and working: a refusal or a "slow down" is an answer (alive), a retryable failure
/// is not; a refused access token, and an outcome decided without a request (a session webhook
/// off DingTalk's hosts, an address the SSRF guard refuses), say nothing about the receiver.
pub(super) fn receiver_alive(outcome: &Outcome) -> Option<bool> {
    if !outcome.sent {
        return None;
    }
    match &outcome.verdict {
        Verdict::Delivered
        | Verdict::Wait { .. }
        | Verdict::Continue { .. }
        | Verdict::Permanent => Some(true),
        Verdict::Retry { .. } => Some(false),
        Verdict::TokenInvalid => None,
    }
}

/// What the breaker must be told of an attempt (pure): what it says about the receiver, except a
/// success when the breaker was clean at admission — recording it would write nothing. A success
/// after failures (a breaker that was not clean) is always told: it closes the circuit and clears
/// the streak. The one thing skipped is a success overlapping failures other jobs recorded since
/// this job's read; the next success admitted after them clears them, and a streak opens the
/// circuit only over `span` (30 s by default), far longer than one delivery.
pub(super) fn breaker_news(alive: Option<bool>, clean: bool) -> Option<bool> {
    match alive {
        Some(true) if clean => None,
        news => news,
    }
}

/// The name a job's target goes by in the breaker and the limiter: a target's id, or
/// `reply:<source>` for a source's reply channel.
pub(super) fn target_name(job: &DispatchJob) -> String {
    name_of(&job.destination, &job.payload.source)
}

/// [`target_name`] of a destination of an event of `source`.
pub(super) fn name_of(destination: &Destination, source: &str) -> String {
    match destination {
        Destination::Target { id } => id.clone(),
        Destination::Reply { .. } => format!("reply:{source}"),
    }
}

impl Dispatcher {
    /// Asks the breaker (on `breaker`, the state of `target`'s breaker read with the job's
    /// marks), then the limiter; `Err(wait)`: park the job for `wait` without counting an
    /// attempt. A breaker that cannot be asked lets the job through (it protects the receiver,
    /// not a promise); a limiter that cannot be read parks it (the platform's limit is a promise:
    /// a robot that sends too fast is muted).
    pub(super) async fn admit(
        &self,
        job: &DispatchJob,
        route: &Route,
        target: String,
        breaker: Reading,
    ) -> Result<Admitted<'_>, Duration> {
        let probe = match self.breaker.gate_on(&target, breaker).await {
            Ok(Gate::Open { wait }) => {
                tracing::info!(?wait, "target paused by its circuit breaker");
                return Err(wait);
            }
            Ok(gate) => gate == Gate::Probe,
            Err(e) => {
                tracing::warn!(error = %e, "breaker state unavailable; delivering anyway");
                false
            }
        };
        // From here on a probe that is not used goes back when `admitted` is dropped.
        let admitted = Admitted {
            breaker: &self.breaker,
            target,
            probe,
            clean: breaker.clean(),
        };
        // A streamed reply's final answer is one more edit in its chat: the chat's limit too.
        let chat = super::progress::chat_limit(route, &job.destination, &job.payload);
        if let Some((name, rates)) = chat {
            self.acquire(&name, &rates).await?;
        }
        // …and, where the platform limits edits on their own, one edit.
        let edit = super::progress::edit_limit(route, &job.destination, &job.payload);
        if let Some((name, rates)) = edit {
            self.acquire(&name, &rates).await?;
        }
        if route.rates.is_empty() {
            return Ok(admitted);
        }
        self.acquire(&admitted.target, &route.rates).await?;
        Ok(admitted)
    }

    /// One limiter decision: `Err(wait)` when the job must wait.
    async fn acquire(&self, name: &str, rates: &[shared::units::Rate]) -> Result<(), Duration> {
        match self.limiter.acquire(name, rates).await {
            Ok(Admission::Go) => Ok(()),
            Ok(Admission::Wait(wait)) => {
                metrics::counter!("switchboard_dispatch_total", "outcome" => "rate_limited")
                    .increment(1);
                Err(wait)
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; job waits");
                Err(STORE_WAIT)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::target::parts::local_outcome;

    #[test]
    fn a_success_on_a_clean_breaker_is_not_written() {
        let cases = [
            // (what the attempt says, breaker clean at admission) → what is recorded
            ((Some(true), true), None),
            ((Some(true), false), Some(true)),
            ((Some(false), true), Some(false)),
            ((Some(false), false), Some(false)),
            ((None, true), None),
            ((None, false), None),
        ];
        for ((alive, clean), want) in cases {
            assert_eq!(breaker_news(alive, clean), want, "{alive:?} {clean}");
        }
    }

    #[test]
    fn what_verdicts_tell_the_breaker() {
        let cases = [
            (Verdict::Delivered, Some(true)),
            (
                Verdict::Wait {
                    wait: Duration::from_secs(60),
                },
                Some(true),
            ),
            (Verdict::Permanent, Some(true)),
            (Verdict::Retry { retry_after: None }, Some(false)),
            (Verdict::TokenInvalid, None),
        ];
        for (verdict, want) in cases {
            let mut sent = local_outcome(verdict.clone(), "x");
            sent.sent = true;
            assert_eq!(receiver_alive(&sent), want, "{verdict:?}");
            // Decided without a request: nothing about the receiver, whatever the verdict.
            assert_eq!(
                receiver_alive(&local_outcome(verdict.clone(), "x")),
                None,
                "{verdict:?}"
            );
        }
    }
}
