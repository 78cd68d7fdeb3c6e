//! Acting on an attempt's verdict: the breaker is told, the attempt joins the job's history, and
//! the job is marked delivered, parked (a platform's "slow down", a retry on the schedule) or
//! dead-lettered with its whole history. The job's lock is released whatever happened. Which
//! attempts count against the schedule and how the last one reads in a dead letter are decided
//! here, purely.
use super::admit::Admitted;
use super::marks::Marks;
use super::{Dispatcher, Route};
use crate::target::{Outcome, Verdict};
use shared::envelope::{Attempt, AttemptOutcome, DispatchJob, Reason};
use shared::retry::RetryDecision;
use shared::stage::Settle;
use std::time::Duration;

impl Dispatcher {
    /// Settles a job after its attempt (the verdict and the attempt in `outcome`).
    pub(super) async fn settle(
        &self,
        mut job: DispatchJob,
        route: &Route,
        admitted: Admitted<'_>,
        outcome: Outcome,
        marks: &Marks<'_>,
    ) -> Settle {
        admitted.report(&outcome).await;
        let verdict = outcome.verdict;
        job.attempts.push(outcome.attempt);
        let settle = match verdict {
            Verdict::Delivered => return self.delivered(&job, marks).await,
            Verdict::Wait { wait } => {
                metrics::counter!("switchboard_dispatch_total", "outcome" => "platform_wait")
                    .increment(1);
                self.defer(&job, wait).await
            }
            Verdict::Retry { retry_after } => self.retry_or_give_up(&job, route, retry_after).await,
            Verdict::TokenInvalid => self.retry_or_give_up(&job, route, None).await,
            Verdict::Permanent => {
                self.dead_letter(&job, Reason::Permanent, &last_error(&job.attempts))
                    .await
            }
        };
        marks.unlock().await;
        settle
    }

    /// Marks the job delivered (and unlocks it) so that a redelivered copy is not posted again.
    /// If Redis cannot take the mark the job is acked all the same: it was delivered.
    async fn delivered(&self, job: &DispatchJob, marks: &Marks<'_>) -> Settle {
        if let Err(e) = marks.mark_delivered(self.delivered_ttl).await {
            tracing::warn!(error = %e, "could not mark the job delivered");
        }
        metrics::counter!("switchboard_dispatch_total", "outcome" => "delivered", "target" => job.destination.name()).increment(1);
        Settle::Ack
    }

    /// A failed attempt: park the job until the schedule's next attempt, or dead-letter it when
    /// the schedule is spent.
    async fn retry_or_give_up(
        &self,
        job: &DispatchJob,
        route: &Route,
        retry_after: Option<Duration>,
    ) -> Settle {
        let failed = failed_attempts(&job.attempts);
        match route
            .policy
            .after_failure(failed, retry_after, rand::random::<f64>())
        {
            RetryDecision::RetryIn(wait) => {
                metrics::counter!("switchboard_dispatch_total", "outcome" => "retry").increment(1);
                tracing::info!(attempt = failed, ?wait, "retrying later");
                self.defer(job, wait).await
            }
            RetryDecision::GiveUp => {
                self.dead_letter(job, Reason::Exhausted, &last_error(&job.attempts))
                    .await
            }
        }
    }
}

/// Attempts that count against the schedule: failures, not waits the platform asked for, parts
/// that wait their turn, or words this version does not know.
pub(super) fn failed_attempts(attempts: &[Attempt]) -> usize {
    attempts
        .iter()
        .filter(|a| {
            matches!(
                a.outcome,
                AttemptOutcome::Retry | AttemptOutcome::TokenInvalid | AttemptOutcome::Permanent
            )
        })
        .count()
}

/// The last attempt in a few words, for the dead letter's `error`.
pub(super) fn last_error(attempts: &[Attempt]) -> String {
    attempts
        .last()
        .map(|a| match (&a.status, &a.code, &a.error) {
            (_, _, Some(e)) => e.clone(),
            (Some(s), Some(c), None) => format!("HTTP {s}, code {c}"),
            (Some(s), None, None) => format!("HTTP {s}"),
            _ => a.outcome.to_string(),
        })
        .unwrap_or_else(|| "no attempt".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(
        outcome: &str,
        status: Option<u16>,
        code: Option<&str>,
        error: Option<&str>,
    ) -> Attempt {
        Attempt {
            at: chrono::Utc::now(),
            outcome: outcome.into(),
            status,
            code: code.map(str::to_owned),
            error: error.map(str::to_owned),
            excerpt: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn only_failures_count_against_the_schedule() {
        let words = [
            ("retry", 1),
            ("token_invalid", 1),
            ("permanent", 1),
            ("wait", 0),
            ("partial", 0),
            ("ok", 0),
            ("rate_limited", 0),
        ];
        for (word, want) in words {
            assert_eq!(
                failed_attempts(&[attempt(word, None, None, None)]),
                want,
                "{word}"
            );
        }
        let mixed = ["retry", "wait", "partial", "retry", "token_invalid"]
            .map(|w| attempt(w, None, None, None));
        assert_eq!(failed_attempts(&mixed), 3);
    }

    #[test]
    fn the_last_attempt_in_words() {
        let cases = [
            (
                vec![attempt("retry", Some(503), None, Some("timeout"))],
                "timeout",
            ),
            (
                vec![attempt("permanent", Some(200), Some("93000"), None)],
                "HTTP 200, code 93000",
            ),
            (
                vec![attempt("permanent", Some(404), None, None)],
                "HTTP 404",
            ),
            (
                vec![attempt("rate_limited", None, None, None)],
                "rate_limited",
            ),
            (vec![], "no attempt"),
        ];
        for (attempts, want) in cases {
            assert_eq!(last_error(&attempts), want);
        }
    }
}
