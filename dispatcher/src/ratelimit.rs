//! Per-target rate limits that hold across every dispatcher process. The state lives in Redis
//! and each decision is one Lua script (GCRA) run on Redis' own clock (`TIME`), so processes on
//! any number of machines share one limit with no clock of their own involved. A target may
//! carry several limits (Feishu: 5/s and 100/min); the script admits only when all conform and
//! then advances all of them, atomically.
//!
//! The guarantee is the receivers' own: **no window of a limit's length holds more than its
//! count**, measured at the receiver. A GCRA (like a token bucket) with a burst of N lets up to
//! 2N-1 through in a sliding window, so the burst tolerance is chosen from the window bound
//! instead: with burst `b`, interval `I = (per + margin) / (count - b + 1)` and tolerance
//! `(b - 1) * I`, any span of `per + jitter` (jitter < margin) holds at most `count`. The default
//! burst is 1 (even pacing at `(per + margin) / count`); a larger burst buys promptness for
//! short bursts with sustained throughput. The margin (`max(50 ms, per / 100)` by default)
//! absorbs the jitter between the admission and the receiver's arrival time.
//!
//! The decision itself is `shared::gcra::decide`, which the Lua script below mirrors. This
//! module decides; it never sleeps. A job told to [`Admission::Wait`] is parked by the
//! delivery loop in a delay queue and does not count as an attempt. Nothing is reserved for a
//! waiting job, so a late or lost job never holds a slot.
use deadpool_redis::redis;
use shared::store::{Store, StoreError};
use shared::units::Rate;
use std::time::Duration;

/// The smallest safety margin added to every limit's period.
pub const DEFAULT_MIN_MARGIN: Duration = Duration::from_millis(50);

/// What the limiter says about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send now; the slot is taken.
    Go,
    /// Not before this long from now; nothing was taken.
    Wait(Duration),
}

pub use shared::gcra::{decide, Decision, Pacing};

/// The safety margin of a limit: `max(min, per / 100)`.
pub fn margin(rate: Rate, min: Duration) -> Duration {
    min.max(rate.per / 100)
}

/// The pacing that keeps every window of `per + jitter` (jitter below `margin`) at or under
/// `count`, allowing bursts of `burst` (clamped to 1..=count).
pub fn pacing(rate: Rate, margin: Duration, burst: u32) -> Pacing {
    let count = u64::from(rate.count.max(1));
    let burst = u64::from(burst.clamp(1, rate.count.max(1)));
    let span = (rate.per + margin).as_micros() as u64;
    // Rounded up: a shorter interval would let the last admission of a window in early.
    let interval_us = span.div_ceil(count - burst + 1).max(1);
    Pacing {
        interval_us,
        tolerance_us: (burst - 1) * interval_us,
    }
}

/// The script: KEYS[1] the target's hash (field per limit -> TAT in µs); ARGV[1] the number of
/// limits, then per limit its field, interval and tolerance (µs). Returns {1, 0} or {0, wait}.
const GCRA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local wait = 0
local tats = {}
for i = 1, n do
  local b = 1 + (i - 1) * 3
  local tat = tonumber(redis.call('HGET', KEYS[1], ARGV[b + 1]) or '0') or 0
  if tat < now then tat = now end
  local w = tat - tonumber(ARGV[b + 3]) - now
  if w > wait then wait = w end
  tats[i] = tat + tonumber(ARGV[b + 2])
end
if wait > 0 then return {0, wait} end
for i = 1, n do
  local b = 1 + (i - 1) * 3
  redis.call('HSET', KEYS[1], ARGV[b + 1], string.format("%d", tats[i]))
end
-- A passed TAT equals no state: drop such fields (limits no longer configured) and keep the
-- key only as long as some TAT lies ahead.
local live = 0
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local left = (tonumber(all[j + 1]) or 0) - now
  if left <= 0 then redis.call('HDEL', KEYS[1], all[j]) elseif left > live then live = left end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(live / 1000) + 1)
return {1, 0}
"#;

/// The shared limiter; clone it freely.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    store: Store,
    script: redis::Script,
    min_margin: Duration,
    burst: u32,
}

impl RateLimiter {
    /// Even pacing (burst 1) with the default margin.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            script: redis::Script::new(GCRA),
            min_margin: DEFAULT_MIN_MARGIN,
            burst: 1,
        }
    }

    /// The smallest margin added to every period (covers admission-to-arrival jitter).
    pub fn with_min_margin(mut self, min: Duration) -> Self {
        self.min_margin = min;
        self
    }

    /// Admissions that may go at once (per limit, at most its count); see the module notes.
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// The pacing this limiter uses for `rate`.
    pub fn pacing(&self, rate: Rate) -> Pacing {
        pacing(rate, margin(rate, self.min_margin), self.burst)
    }

    /// Takes a slot of every limit of `target`, or says how long until all conform.
    pub async fn acquire(&self, target: &str, limits: &[Rate]) -> Result<Admission, StoreError> {
        if limits.is_empty() {
            return Ok(Admission::Go);
        }
        let key = self.store.key(&["rate", target]);
        let mut call = self.script.key(&key);
        call.arg(limits.len());
        for rate in limits {
            let p = self.pacing(*rate);
            // Named by the rate, so processes agree on the field whatever their margin.
            call.arg(format!("{}/{}ms", rate.count, rate.per.as_millis()))
                .arg(p.interval_us)
                .arg(p.tolerance_us);
        }
        let mut conn = self.store.conn().await?;
        let (admitted, wait): (i64, i64) = call.invoke_async(&mut conn).await?;
        Ok(if admitted == 1 {
            Admission::Go
        } else {
            Admission::Wait(Duration::from_micros(wait.max(1) as u64))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, per_ms: u64) -> Rate {
        Rate {
            count,
            per: Duration::from_millis(per_ms),
        }
    }

    #[test]
    fn pacing_table() {
        let ms = Duration::from_millis;
        let cases = [
            // (count, per, margin, burst) -> (interval µs, tolerance µs)
            ((5, 1_000, 50, 1), (210_000, 0)),
            ((20, 60_000, 600, 1), (3_030_000, 0)),
            ((20, 60_000, 600, 5), (3_787_500, 15_150_000)),
            ((5, 1_000, 50, 5), (1_050_000, 4_200_000)),
            ((5, 1_000, 50, 9), (1_050_000, 4_200_000)),
            ((1, 1_000, 50, 0), (1_050_000, 0)),
            ((3, 1, 0, 1), (334, 0)),
        ];
        for ((n, per, m, b), (i, t)) in cases {
            let p = pacing(rate(n, per), ms(m), b);
            assert_eq!(
                (p.interval_us, p.tolerance_us),
                (i, t),
                "{n}/{per}ms burst {b}"
            );
        }
        assert_eq!(margin(rate(5, 1_000), ms(50)), ms(50));
        assert_eq!(margin(rate(20, 60_000), ms(50)), ms(600));
    }

    /// Greedy clients retrying at pseudo-random times: every window of `per + jitter` holds at
    /// most `count`, for each burst, and throughput stays near the limit.
    #[test]
    fn no_window_ever_holds_more_than_the_limit() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for (n, per_ms) in [(5u32, 1_000u64), (20, 60_000), (3, 100), (1, 1_000)] {
            let r = rate(n, per_ms);
            let m = margin(r, DEFAULT_MIN_MARGIN);
            for burst in [1, 2, n] {
                let p = pacing(r, m, burst);
                let (per, jitter) = (per_ms * 1_000, m.as_micros() as u64 - 1);
                let horizon = per * 20;
                let mut tat = 0;
                let mut now = 0;
                let mut admitted = Vec::new();
                while now < horizon {
                    match decide(now, &[tat], &[p]) {
                        Decision::Go(next) => {
                            tat = next[0];
                            // Each arrival lands up to `jitter` after its admission.
                            admitted.push(now + rnd(jitter + 1));
                        }
                        Decision::Wait(_) => {}
                    }
                    now += 1 + rnd(per / u64::from(n) / 50 + 1);
                }
                admitted.sort_unstable();
                for (i, start) in admitted.iter().enumerate() {
                    let inside = admitted[i..]
                        .iter()
                        .take_while(|t| **t <= start + per)
                        .count();
                    assert!(
                        inside <= n as usize,
                        "{n}/{per_ms}ms b{burst}: {inside} at {start}"
                    );
                }
                let windows = horizon as f64 / (per + jitter + 1) as f64;
                let floor = windows * f64::from(n - burst.min(n) + 1) * 0.85;
                assert!(
                    admitted.len() as f64 >= floor,
                    "{n}/{per_ms}ms b{burst}: {}",
                    admitted.len()
                );
            }
        }
    }
}
