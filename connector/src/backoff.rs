//! How long to wait before the next connection attempt: exponential backoff with full jitter
//! (a uniform draw between zero and `initial × 2^failures`, capped at `max`), so that many
//! connectors cut off together do not come back together. Refused credentials wait the long,
//! fixed `refused_retry` instead: a wrong secret is not fixed by asking again soon. Pure.
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// The ceiling of the next wait: `initial × 2^failures`, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next wait, drawn with `draw` (a number in [0, 1)), and one more failure counted.
    pub fn next_with(&mut self, draw: f64) -> Duration {
        let wait = self.ceiling().mul_f64(draw.clamp(0.0, 1.0));
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// The next wait, drawn at random.
    pub fn next_wait(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// A connection that worked starts the count again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_secs();
                b.next_with(0.5);
                c
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(60));
        assert_eq!(b.clone().next_with(0.0), Duration::ZERO);
        assert_eq!(b.clone().next_with(0.999_999).as_secs(), 7);
        let waits: Vec<Duration> = (0..200).map(|_| b.clone().next_wait()).collect();
        assert!(waits.iter().all(|w| *w < Duration::from_secs(8)));
        assert!(waits.iter().any(|w| *w < Duration::from_secs(2)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(6)));
        b.failures = u32::MAX;
        assert_eq!(b.ceiling(), Duration::from_secs(60), "no overflow");
    }
}
