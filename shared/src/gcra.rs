//! The generic cell rate algorithm, as a pure decision: given the time, each limit's stored
//! theoretical arrival time (TAT) and its pacing, admit and advance every limit, or say how long
//! until all conform. Where the state lives is the caller's business: the dispatcher keeps it in
//! Redis (one Lua script mirrors [`decide`], so every process shares one limit), the ingress in
//! process memory (a per-process inbound rate). Times are microseconds on any one clock.

/// The GCRA parameters of one limit, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Theoretical time between two admissions.
    pub interval_us: u64,
    /// How far ahead of its theoretical time an admission may come (the burst).
    pub tolerance_us: u64,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; the new theoretical arrival times.
    Go(Vec<u64>),
    /// Refused; microseconds until every limit conforms.
    Wait(u64),
}

/// GCRA over several limits at `now`: `tats[i]` is limit `i`'s stored theoretical arrival time
/// (0 when absent). Admits only if every limit conforms, then advances every one.
pub fn decide(now: u64, tats: &[u64], pacings: &[Pacing]) -> Decision {
    let mut wait = 0;
    let mut next = Vec::with_capacity(pacings.len());
    for (tat, p) in tats.iter().zip(pacings) {
        let tat = (*tat).max(now);
        wait = wait.max(tat.saturating_sub(p.tolerance_us).saturating_sub(now));
        next.push(tat + p.interval_us);
    }
    if wait > 0 {
        Decision::Wait(wait)
    } else {
        Decision::Go(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_table() {
        let p = Pacing {
            interval_us: 100,
            tolerance_us: 0,
        };
        let b = Pacing {
            interval_us: 100,
            tolerance_us: 200,
        };
        let cases: &[(u64, &[u64], &[Pacing], Decision)] = &[
            (1_000, &[0], &[p], Decision::Go(vec![1_100])),
            (1_000, &[1_000], &[p], Decision::Go(vec![1_100])),
            (1_000, &[1_050], &[p], Decision::Wait(50)),
            (1_000, &[1_200], &[b], Decision::Go(vec![1_300])),
            (1_000, &[1_250], &[b], Decision::Wait(50)),
            // Several limits: the furthest decides the wait; nothing moves on a refusal.
            (1_000, &[0, 1_080], &[p, p], Decision::Wait(80)),
            (1_000, &[990, 0], &[p, b], Decision::Go(vec![1_100, 1_100])),
        ];
        for (now, tats, pacings, want) in cases {
            assert_eq!(&decide(*now, tats, pacings), want, "{now} {tats:?}");
        }
    }
}
