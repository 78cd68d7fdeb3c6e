//! The benchmarks' arithmetic, kept pure so it can be tested without a broker: percentiles of
//! latency samples, rates over a run's steady part, the busiest window of arrivals at a
//! receiver, counts per item (Dify calls per event, deliveries per job) and ratios. Nothing here
//! measures, sleeps or does I/O; the scenarios hand it numbers.
use serde::Serialize;
use std::time::Duration;

/// Latency samples in microseconds, summarised in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    pub const EMPTY: Summary = Summary {
        count: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        mean_ms: 0.0,
    };
}

/// The nearest-rank percentile (`q` in 0..=1) of samples sorted ascending: the smallest sample
/// with at least `q` of all samples at or below it.
pub fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p99, max and mean of samples in microseconds (they may be negative: a difference of
/// two clocks can be). Sorts in place.
pub fn summarize(samples_us: &mut [i64]) -> Summary {
    if samples_us.is_empty() {
        return Summary::EMPTY;
    }
    samples_us.sort_unstable();
    let ms = |us: i64| us as f64 / 1000.0;
    let sum: i128 = samples_us.iter().map(|&v| i128::from(v)).sum();
    Summary {
        count: samples_us.len(),
        p50_ms: ms(percentile(samples_us, 0.50).unwrap_or(0)),
        p99_ms: ms(percentile(samples_us, 0.99).unwrap_or(0)),
        max_ms: ms(*samples_us.last().unwrap_or(&0)),
        mean_ms: sum as f64 / samples_us.len() as f64 / 1000.0,
    }
}

/// Events per second; zero for an empty span.
pub fn per_second(count: usize, span: Duration) -> f64 {
    if span.is_zero() {
        0.0
    } else {
        count as f64 / span.as_secs_f64()
    }
}

/// `value / reference`, when the reference is positive.
pub fn ratio(value: f64, reference: f64) -> Option<f64> {
    (reference > 0.0).then(|| value / reference)
}

/// The rate over the steady part of a run: completion times (offsets from any common origin,
/// sorted ascending) between the `from` and `to` fractions of all completions, so that the
/// ramp-up (first calls still in flight) and the tail (last stragglers) do not count.
/// `None` with fewer than two completions in that part or no time between them.
pub fn steady_rate(sorted: &[Duration], from: f64, to: f64) -> Option<f64> {
    if sorted.len() < 2 {
        return None;
    }
    let last = sorted.len() - 1;
    let lo = ((from.clamp(0.0, 1.0) * last as f64).round() as usize).min(last);
    let hi = ((to.clamp(0.0, 1.0) * last as f64).round() as usize).min(last);
    if hi <= lo {
        return None;
    }
    let span = sorted[hi].checked_sub(sorted[lo])?;
    (!span.is_zero()).then(|| (hi - lo) as f64 / span.as_secs_f64())
}

/// The window of `len` holding the most arrivals: how many, and when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub count: usize,
    /// Offset of the window's first arrival.
    #[serde(with = "millis")]
    pub start: Duration,
}

/// The busiest closed window `[t, t + len]` over arrival times sorted ascending. Every window
/// worth considering starts at an arrival, so this slides over arrivals, not over time.
pub fn busiest_window(sorted: &[Duration], len: Duration) -> Window {
    let mut best = Window {
        count: 0,
        start: Duration::ZERO,
    };
    let mut end = 0;
    for (start, t) in sorted.iter().enumerate() {
        end = end.max(start);
        while end < sorted.len() && sorted[end].saturating_sub(*t) <= len {
            end += 1;
        }
        if end - start > best.count {
            best = Window {
                count: end - start,
                start: *t,
            };
        }
    }
    best
}

/// How often each item was counted (Dify calls per event, deliveries per job).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerItem {
    /// Items expected (events accepted, jobs published).
    pub expected: usize,
    /// Items counted at least once.
    pub seen: usize,
    /// Counts added up.
    pub total: u64,
    /// Items counted more than once.
    pub repeated: usize,
    pub max: u64,
}

impl PerItem {
    /// Counts per item: `total / expected`, 1.000 when every expected item was counted once.
    pub fn per_item(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.total as f64 / self.expected as f64
        }
    }

    /// Exactly once each: nothing missing, nothing repeated, nothing unexpected.
    pub fn exactly_once(&self) -> bool {
        self.seen == self.expected && self.repeated == 0 && self.total == self.expected as u64
    }

    /// Adds the counts of another batch of other items (rounds of one scenario).
    pub fn add(&mut self, other: &PerItem) {
        self.expected += other.expected;
        self.seen += other.seen;
        self.total += other.total;
        self.repeated += other.repeated;
        self.max = self.max.max(other.max);
    }
}

/// Tallies the counts of the items seen against the number expected.
pub fn per_item(expected: usize, counts: impl IntoIterator<Item = u64>) -> PerItem {
    let mut p = PerItem {
        expected,
        seen: 0,
        total: 0,
        repeated: 0,
        max: 0,
    };
    for c in counts {
        if c == 0 {
            continue;
        }
        p.seen += 1;
        p.total += c;
        p.max = p.max.max(c);
        if c > 1 {
            p.repeated += 1;
        }
    }
    p
}

/// CPU used over a span as a percentage of one core (200% is both cores of this machine).
pub fn cpu_percent(ticks: u64, ticks_per_sec: u64, span: Duration) -> f64 {
    if span.is_zero() || ticks_per_sec == 0 {
        return 0.0;
    }
    ticks as f64 / ticks_per_sec as f64 / span.as_secs_f64() * 100.0
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn rounds_add_up_to_once_each_only_if_every_round_was() {
        let mut all = per_item(3, [1, 1, 1]);
        all.add(&per_item(2, [1, 1]));
        assert!(all.exactly_once());
        assert_eq!((all.expected, all.seen, all.total), (5, 5, 5));
        all.add(&per_item(2, [1, 2]));
        assert!(!all.exactly_once());
        assert_eq!((all.repeated, all.max), (1, 2));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<i64> = (1..=100).collect();
        for (q, want) in [
            (0.0, 1),
            (0.01, 1),
            (0.5, 50),
            (0.99, 99),
            (0.999, 100),
            (1.0, 100),
        ] {
            assert_eq!(percentile(&hundred, q), Some(want), "q = {q}");
        }
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[1, 2], 0.5), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn summaries_sort_and_convert_to_milliseconds() {
        let mut v = vec![3000, 1000, 2000, -1000];
        let s = summarize(&mut v);
        assert_eq!(v, [-1000, 1000, 2000, 3000]);
        assert_eq!(
            s,
            Summary {
                count: 4,
                p50_ms: 1.0,
                p99_ms: 3.0,
                max_ms: 3.0,
                mean_ms: 1.25,
            }
        );
        assert_eq!(summarize(&mut []), Summary::EMPTY);
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(per_second(500, ms(250)), 2000.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
        assert_eq!(ratio(800.0, 1000.0), Some(0.8));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn the_steady_rate_leaves_out_ramp_and_tail() {
        // A slow start (ramp), then one completion per millisecond, then a straggler.
        let mut t: Vec<Duration> = vec![ms(0), ms(500)];
        t.extend((0..=96).map(|i| ms(1000 + i)));
        t.push(ms(5000));
        assert_eq!(t.len(), 100);
        let rate = steady_rate(&t, 0.1, 0.9).unwrap();
        assert!((rate - 1000.0).abs() < 1e-6, "{rate}");
        // The whole run, ramp and tail included, is far slower.
        assert!(steady_rate(&t, 0.0, 1.0).unwrap() < 25.0);
        assert_eq!(steady_rate(&[ms(1)], 0.1, 0.9), None);
        assert_eq!(steady_rate(&[ms(1), ms(1), ms(1)], 0.0, 1.0), None);
    }

    #[test]
    fn the_busiest_window_counts_both_ends() {
        let t: Vec<Duration> = [0, 400, 800, 1200, 1600, 2000, 2400, 3000]
            .into_iter()
            .map(ms)
            .collect();
        // 0..=2000 holds six arrivals; a window is closed at both ends.
        assert_eq!(
            busiest_window(&t, ms(2000)),
            Window {
                count: 6,
                start: ms(0)
            }
        );
        assert_eq!(busiest_window(&t, ms(1999)).count, 5);
        assert_eq!(
            busiest_window(&t, ms(0)),
            Window {
                count: 1,
                start: ms(0)
            }
        );
        let burst: Vec<Duration> = [0, 100, 5000, 5001, 5002].into_iter().map(ms).collect();
        assert_eq!(
            busiest_window(&burst, ms(10)),
            Window {
                count: 3,
                start: ms(5000)
            }
        );
        assert_eq!(busiest_window(&[], ms(1)).count, 0);
    }

    #[test]
    fn counts_per_item() {
        let once = per_item(3, [1, 1, 1]);
        assert!(once.exactly_once());
        assert_eq!(once.per_item(), 1.0);
        let twice = per_item(3, [1, 2, 1]);
        assert!(!twice.exactly_once());
        assert_eq!((twice.repeated, twice.max, twice.total), (1, 2, 4));
        assert!((twice.per_item() - 4.0 / 3.0).abs() < 1e-9);
        let missing = per_item(3, [1, 0, 1]);
        assert_eq!((missing.seen, missing.exactly_once()), (2, false));
        assert_eq!(per_item(0, []).per_item(), 0.0);
    }

    #[test]
    fn cpu_as_a_share_of_one_core() {
        assert_eq!(cpu_percent(150, 100, Duration::from_secs(1)), 150.0);
        assert_eq!(cpu_percent(50, 100, Duration::from_secs(2)), 25.0);
        assert_eq!(cpu_percent(1, 0, Duration::from_secs(1)), 0.0);
    }
}
