//! The retry decision: given how many attempts were made and what the other side asked for,
//! when to try again or whether to give up. Pure: randomness comes in as an argument so the
//! schedule and its jitter are tested without a clock or a network.
use std::time::Duration;

/// A schedule of delays before each attempt; entry 0 is the delay of the first attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    /// Fraction (0..1) of each delay that may be taken off at random.
    pub jitter: f64,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this long.
    RetryIn(Duration),
    /// The schedule is exhausted.
    GiveUp,
}

/// `Retry-After` is honoured up to this, or twice the scheduled step if that is longer.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

impl RetryPolicy {
    pub fn new(schedule: Vec<Duration>, jitter: f64) -> Self {
        Self { schedule, jitter }
    }

    /// How many attempts the schedule allows in all.
    pub fn max_attempts(&self) -> usize {
        self.schedule.len()
    }

    /// After `attempts_made` failed attempts (1 after the first), decide the next step.
    /// `unit` is a random number in `[0, 1)`; `retry_after` is the receiver's wish, if any.
    pub fn after_failure(
        &self,
        attempts_made: usize,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> RetryDecision {
        let Some(&step) = self.schedule.get(attempts_made) else {
            return RetryDecision::GiveUp;
        };
        let jittered = step.mul_f64(1.0 - self.jitter * unit.clamp(0.0, 1.0));
        let delay = match retry_after {
            // Honour the receiver's wish, but never sooner than our own step and never more
            // than twice the step (or an hour, for the short early steps).
            Some(wish) => wish.min((step * 2).max(RETRY_AFTER_CAP)).max(jittered),
            None => jittered,
        };
        RetryDecision::RetryIn(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RetryDecision::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn schedule_table() {
        let p = RetryPolicy::new(vec![s(0), s(5), s(300), s(1800)], 0.2);
        let cases: &[(usize, Option<Duration>, f64, RetryDecision)] = &[
            (1, None, 0.0, RetryIn(s(5))),
            (1, None, 0.5, RetryIn(Duration::from_millis(4500))),
            (
                2,
                None,
                0.999_999,
                RetryIn(Duration::from_secs_f64(300.0 * (1.0 - 0.2 * 0.999_999))),
            ),
            (3, None, 0.0, RetryIn(s(1800))),
            (4, None, 0.0, GiveUp),
            (9, None, 0.0, GiveUp),
            // Retry-After longer than the step is honoured...
            (1, Some(s(30)), 0.0, RetryIn(s(30))),
            // ...shorter than the step is not allowed to hurry us...
            (2, Some(s(1)), 0.0, RetryIn(s(300))),
            // ...and an absurd wish is capped.
            (1, Some(s(86_400)), 0.0, RetryIn(RETRY_AFTER_CAP)),
            (3, Some(s(86_400)), 0.0, RetryIn(s(3600))),
        ];
        for &(n, ra, u, want) in cases {
            assert_eq!(
                p.after_failure(n, ra, u),
                want,
                "attempts={n} retry_after={ra:?} u={u}"
            );
        }
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_its_fraction() {
        let p = RetryPolicy::new(vec![s(0), s(100)], 0.2);
        for i in 0..100 {
            let RetryIn(d) = p.after_failure(1, None, i as f64 / 100.0) else {
                panic!()
            };
            assert!(d <= s(100) && d >= s(80), "{d:?}");
        }
    }
}
