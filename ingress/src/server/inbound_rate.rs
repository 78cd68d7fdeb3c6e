//! The per-source inbound rate (`rate` on a source): verified requests beyond it get 429 with
//! `Retry-After`. The decision is the dispatcher's GCRA (`shared::gcra`), but the state lives in
//! this process, not in Redis: the dispatcher's limit is a promise to a receiver that must hold
//! across processes, while this one protects the pipeline behind one ingress process. A Redis
//! round trip per webhook would add latency to every request, and a Redis outage would then open
//! or shut every source's door at once. So the limit is per process: with N ingress processes
//! behind a balancer, a source gets up to N times its `rate`.
//!
//! Unlike the dispatcher's window bound, an inbound rate is a token bucket: a sender may burst up
//! to `count` at once and keeps `count` per `per` on average (platforms send bursts).
use shared::config::Config;
use shared::gcra::{decide, Decision, Pacing};
use shared::units::Rate;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every source's inbound rate in this process.
#[derive(Debug)]
pub struct InboundRates {
    limits: HashMap<String, Limit>,
    epoch: Instant,
}

#[derive(Debug)]
struct Limit {
    pacing: Pacing,
    /// The theoretical arrival time, in µs since `epoch`.
    tat: Mutex<u64>,
}

/// The pacing of an inbound rate: `count` per `per` on average, `count` at once.
pub fn inbound_pacing(rate: Rate) -> Pacing {
    let per_us = u64::try_from(rate.per.as_micros()).unwrap_or(u64::MAX);
    let interval_us = (per_us / u64::from(rate.count.max(1))).max(1);
    Pacing {
        interval_us,
        tolerance_us: interval_us.saturating_mul(u64::from(rate.count.max(1)) - 1),
    }
}

impl InboundRates {
    pub fn new(config: &Config) -> Self {
        let limits = config
            .sources
            .iter()
            .filter_map(|s| {
                let rate = s.rate?;
                let limit = Limit {
                    pacing: inbound_pacing(rate),
                    tat: Mutex::new(0),
                };
                Some((s.id.clone(), limit))
            })
            .collect();
        Self {
            limits,
            epoch: Instant::now(),
        }
    }

    /// Admits one request from `source`, or says how long until one would be admitted.
    pub fn admit(&self, source: &str) -> Result<(), Duration> {
        let Some(limit) = self.limits.get(source) else {
            return Ok(());
        };
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut tat = match limit.tat.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match decide(now, &[*tat], &[limit.pacing]) {
            Decision::Go(next) => {
                *tat = next.first().copied().unwrap_or(now);
                Ok(())
            }
            Decision::Wait(us) => Err(Duration::from_micros(us)),
        }
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1);
    u64::try_from(secs).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rate(count: u32, per_ms: u64) -> Rate {
        Rate {
            count,
            per: Duration::from_millis(per_ms),
        }
    }

    #[test]
    fn a_burst_of_count_then_count_per_period() {
        let cases = [
            // (count, per) -> (interval, tolerance) in µs
            ((5, 1_000), (200_000, 800_000)),
            ((1, 1_000), (1_000_000, 0)),
            ((100, 60_000), (600_000, 59_400_000)),
            ((3, 1), (333, 666)),
        ];
        for ((n, per), (i, t)) in cases {
            let p = inbound_pacing(rate(n, per));
            assert_eq!((p.interval_us, p.tolerance_us), (i, t), "{n}/{per}ms");
        }
        // Five at once at 5/s, the sixth 200 ms later.
        let p = inbound_pacing(rate(5, 1_000));
        let mut tat = 0;
        let start = 10_000_000;
        for _ in 0..5 {
            match decide(start, &[tat], &[p]) {
                Decision::Go(next) => tat = next[0],
                Decision::Wait(w) => panic!("refused within the burst: {w}"),
            }
        }
        assert_eq!(decide(start, &[tat], &[p]), Decision::Wait(200_000));
        assert!(matches!(
            decide(start + 200_000, &[tat], &[p]),
            Decision::Go(_)
        ));
    }

    #[test]
    fn retry_after_rounds_up() {
        let ms = Duration::from_millis;
        for (wait, want) in [
            (ms(0), 1),
            (ms(1), 1),
            (ms(999), 1),
            (ms(1000), 1),
            (ms(1001), 2),
            (ms(59_500), 60),
        ] {
            assert_eq!(retry_after_secs(wait), want, "{wait:?}");
        }
    }
}
