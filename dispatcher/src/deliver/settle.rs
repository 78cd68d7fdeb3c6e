//! Acting on an attempt's verdict: the breaker is told, the attempt joins the job's history, and
//! the job is marked delivered, parked (a platform's "slow down", a retry on the schedule, the
//! rest of a split answer waiting for its rate limit, carrying only its parts left) or
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
            Verdict::Wait { .. }
                if waited_too_long(&job.attempts, chrono::Utc::now(), self.wait_budget) =>
            {
                let why = format!(
                    "told to wait for longer than dispatcher.wait_budget ({:?}): {}",
                    self.wait_budget,
                    last_error(&job.attempts)
                );
                self.dead_letter(&job, Reason::Exhausted, &why).await
            }
            Verdict::Wait { wait } => {
                metrics::counter!("switchboard_dispatch_total", "outcome" => "platform_wait")
                    .increment(1);
                // Never parked past the budget's end: the attempt then is the last.
                let wait = wait.min(
                    wait_left(&job.attempts, chrono::Utc::now(), self.wait_budget)
                        .max(Duration::from_millis(100)),
                );
                self.defer(&job, wait).await
            }
            // Parts went out; the rest continues on its own admission, carrying only itself.
            Verdict::Continue { wait, left } => self.defer(&job.continued(left), wait).await,
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

/// Whether the job has been told to wait (`wait` answers, not parts waiting their turn) for
/// longer than `budget`, counted from the first such answer to `now` (pure).
pub(super) fn waited_too_long(
    attempts: &[Attempt],
    now: chrono::DateTime<chrono::Utc>,
    budget: Duration,
) -> bool {
    attempts
        .iter()
        .find(|a| a.outcome == AttemptOutcome::Wait)
        .is_some_and(|first| {
            (now - first.at)
                .to_std()
                .is_ok_and(|waited| waited > budget)
        })
}

/// What is left of the wait budget (the whole of it before the first wait) (pure).
pub(super) fn wait_left(
    attempts: &[Attempt],
    now: chrono::DateTime<chrono::Utc>,
    budget: Duration,
) -> Duration {
    match attempts.iter().find(|a| a.outcome == AttemptOutcome::Wait) {
        Some(first) => budget.saturating_sub((now - first.at).to_std().unwrap_or_default()),
        None => budget,
    }
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
    fn waits_have_a_total_budget_from_the_first_wait() {
        let now = chrono::Utc::now();
        let at = |outcome: &str, ago_secs: i64| Attempt {
            at: now - chrono::Duration::seconds(ago_secs),
            ..attempt(outcome, None, None, None)
        };
        let budget = Duration::from_secs(3600);
        let cases = [
            (vec![], false),
            (vec![at("wait", 10)], false),
            (vec![at("wait", 3601)], true),
            (vec![at("wait", 3601), at("wait", 5)], true),
            // Parts waiting their turn and failures are not waits the platform asked for.
            (vec![at("partial", 9000), at("retry", 9000)], false),
            (vec![at("partial", 9000), at("wait", 60)], false),
        ];
        for (attempts, want) in cases {
            assert_eq!(
                waited_too_long(&attempts, now, budget),
                want,
                "{attempts:?}"
            );
        }
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
