//! The per-target circuit breaker: a receiver that fails continuously is paused (its jobs wait
//! without burning attempts) and probed before traffic resumes. The state is shared by every
//! dispatcher process through Redis; the decisions ([`next`], [`phase`], [`cooldown`]) are a
//! pure state machine, and storage is read-compute-compare-and-set, so the machine is written
//! once, in Rust, and tested as a table.
//!
//! Closed: attempts flow; failures are counted. After `failures` consecutive failed attempts
//! whose first and last are at least `span` apart, the circuit opens (a burst of in-flight
//! failures from one short blip does not). Open: [`Gate::Open`] until the cool-down has passed
//! (`cooldown`, doubling on each consecutive trip up to `max_cooldown`). Half-open: the first
//! process to ask takes the only probe (`SET NX` with a lease, so a prober that dies frees it);
//! a success closes the circuit, a failure re-opens it for a longer cool-down.
//!
//! This module never sleeps or sends; the delivery loop asks [`Breaker::gate`] before an attempt
//! (or reads the state itself, as a [`Reading`], and asks [`Breaker::gate_on`]) and reports the
//! attempt's outcome with [`Breaker::record`].
use deadpool_redis::redis;
use shared::store::{Store, StoreError};
use std::time::Duration;

/// When a target's circuit opens and how long it stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the circuit ...
    pub failures: u32,
    /// ... provided the first and the last of them are at least this far apart.
    pub span: Duration,
    /// The first cool-down; each consecutive trip doubles it.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// How long a probe may be out before another process may probe instead.
    pub probe_lease: Duration,
    /// The longest a job waits while another process's probe is out.
    pub recheck: Duration,
    /// A failure streak, or a trip count, untouched for this long is forgotten.
    pub forget_after: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 5,
            span: Duration::from_secs(30),
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(600),
            // Longer than any request timeout worth having (the default is 15 s).
            probe_lease: Duration::from_secs(60),
            recheck: Duration::from_secs(5),
            forget_after: Duration::from_secs(3600),
        }
    }
}

/// A target's stored state (times in Redis milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `failures` consecutive failures, the first at `since_ms` (0 when there are none).
    Closed { failures: u32, since_ms: u64 },
    /// Open until `until_ms`; half-open after it. `trips`: consecutive openings.
    Open { until_ms: u64, trips: u32 },
}

impl State {
    pub const HEALTHY: State = State::Closed {
        failures: 0,
        since_ms: 0,
    };
}

/// What a state means at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open { wait: Duration },
    HalfOpen,
}

impl Phase {
    /// The value of the `switchboard_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            Phase::Closed => 0.0,
            Phase::HalfOpen => 1.0,
            Phase::Open { .. } => 2.0,
        }
    }
}

/// What the delivery loop may do with a job for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Deliver as usual.
    Pass,
    /// Deliver: this job is the one probe. Its outcome must be recorded.
    Probe,
    /// Park the job for `wait` without counting an attempt.
    Open { wait: Duration },
}

/// A target's state as read from Redis, with Redis' clock at the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub now_ms: u64,
    pub state: State,
}

impl Reading {
    /// From Redis' `TIME` (seconds, microseconds) and the stored value of `key` (empty: absent,
    /// healthy; unreadable: healthy, with a warning).
    pub fn of(secs: u64, micros: u64, raw: &str, key: &str) -> Reading {
        let state = if raw.is_empty() {
            State::HEALTHY
        } else {
            decode(raw).unwrap_or_else(|| {
                tracing::warn!(
                    key,
                    "unreadable breaker state; treating the target as healthy"
                );
                State::HEALTHY
            })
        };
        Reading {
            now_ms: secs * 1000 + micros / 1000,
            state,
        }
    }

    /// Closed with no failure counted: a success recorded now would change nothing (see
    /// [`next`]), so a caller may skip writing it.
    pub fn clean(&self) -> bool {
        self.state == State::HEALTHY
    }
}

/// The cool-down after the `trips`-th consecutive opening (1-based).
pub fn cooldown(policy: &BreakerPolicy, trips: u32) -> Duration {
    let doublings = trips.saturating_sub(1).min(31);
    policy
        .cooldown
        .saturating_mul(1 << doublings)
        .min(policy.max_cooldown.max(policy.cooldown))
}

/// The phase of `state` at `now_ms`.
pub fn phase(state: State, now_ms: u64) -> Phase {
    match state {
        State::Closed { .. } => Phase::Closed,
        State::Open { until_ms, .. } if now_ms < until_ms => Phase::Open {
            wait: Duration::from_millis(until_ms - now_ms),
        },
        State::Open { .. } => Phase::HalfOpen,
    }
}

/// The state after an attempt that succeeded or failed at `now_ms`.
pub fn next(policy: &BreakerPolicy, state: State, success: bool, now_ms: u64) -> State {
    if success {
        // Any success shows the receiver answers: close, and forget earlier trips.
        return State::HEALTHY;
    }
    let open = |trips: u32| State::Open {
        until_ms: now_ms.saturating_add(cooldown(policy, trips).as_millis() as u64),
        trips,
    };
    match state {
        State::Closed { failures, since_ms } => {
            let since_ms = if failures == 0 { now_ms } else { since_ms };
            let failures = failures.saturating_add(1);
            let long_enough = now_ms.saturating_sub(since_ms) >= policy.span.as_millis() as u64;
            if failures >= policy.failures.max(1) && long_enough {
                open(1)
            } else {
                State::Closed { failures, since_ms }
            }
        }
        // An attempt that began before the circuit opened: nothing new.
        State::Open { until_ms, .. } if now_ms < until_ms => state,
        // Half-open: the probe (or a straggler) failed. Open again, for longer.
        State::Open { trips, .. } => open(trips.saturating_add(1)),
    }
}

/// How long Redis keeps a state; `None`: delete it (a healthy target leaves nothing).
fn keep_for(policy: &BreakerPolicy, state: State, now_ms: u64) -> Option<Duration> {
    match state {
        State::Closed { failures: 0, .. } => None,
        State::Closed { .. } => Some(policy.forget_after),
        State::Open { until_ms, .. } => {
            Some(Duration::from_millis(until_ms.saturating_sub(now_ms)) + policy.forget_after)
        }
    }
}

fn encode(state: State) -> String {
    match state {
        State::Closed { failures, since_ms } => format!("c:{failures}:{since_ms}"),
        State::Open { until_ms, trips } => format!("o:{until_ms}:{trips}"),
    }
}

fn decode(raw: &str) -> Option<State> {
    let mut parts = raw.split(':');
    let (kind, a, b) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    match kind {
        "c" => Some(State::Closed {
            failures: a.parse().ok()?,
            since_ms: b.parse().ok()?,
        }),
        "o" => Some(State::Open {
            until_ms: a.parse().ok()?,
            trips: b.parse().ok()?,
        }),
        _ => None,
    }
}

/// Compare-and-set: KEYS[1] the state, KEYS[2] the probe lease; ARGV[1] the state read (''
/// when absent), ARGV[2] the new one ('' deletes), ARGV[3] its TTL in ms. Returns 1 if written.
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
-- Every change ends a half-open phase (or never was one): free the probe for the next.
redis.call('DEL', KEYS[2])
return 1
"#;

/// Concurrent writers beyond this many rounds lose their update (logged); the breaker is advice.
const CAS_ROUNDS: usize = 32;

/// The shared breaker; clone it freely.
#[derive(Debug, Clone)]
pub struct Breaker {
    store: Store,
    policy: BreakerPolicy,
    cas: redis::Script,
}

impl Breaker {
    pub fn new(store: Store, policy: BreakerPolicy) -> Self {
        Self {
            store,
            policy,
            cas: redis::Script::new(CAS),
        }
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    fn keys(&self, target: &str) -> (String, String) {
        (
            self.store.key(&["breaker", target]),
            self.store.key(&["breaker", target, "probe"]),
        )
    }

    /// The Redis key of `target`'s state, for a caller that reads it in a round trip of its own
    /// (the dispatcher reads it with the job's marks) and decides with [`Breaker::gate_on`].
    pub fn state_key(&self, target: &str) -> String {
        self.keys(target).0
    }

    /// Redis' clock and the stored state (raw and decoded), in one round trip.
    async fn read(
        &self,
        conn: &mut shared::store::Connection,
        key: &str,
    ) -> Result<(u64, String, State), StoreError> {
        let ((secs, micros), raw): ((u64, u64), Option<String>) = redis::pipe()
            .cmd("TIME")
            .cmd("GET")
            .arg(key)
            .query_async(conn)
            .await?;
        let raw = raw.unwrap_or_default();
        let reading = Reading::of(secs, micros, &raw, key);
        Ok((reading.now_ms, raw, reading.state))
    }

    /// May a job for `target` be attempted now?
    pub async fn gate(&self, target: &str) -> Result<Gate, StoreError> {
        let (key, _) = self.keys(target);
        let mut conn = self.store.conn().await?;
        let (now_ms, _, state) = self.read(&mut conn, &key).await?;
        drop(conn);
        self.gate_on(target, Reading { now_ms, state }).await
    }

    /// [`Breaker::gate`] on a state already read: only a half-open circuit goes to Redis again
    /// (for the probe).
    pub async fn gate_on(&self, target: &str, reading: Reading) -> Result<Gate, StoreError> {
        let (_, probe) = self.keys(target);
        let now = reading.now_ms;
        let phase = phase(reading.state, now);
        let gate = match phase {
            Phase::Closed => Gate::Pass,
            Phase::Open { wait } => Gate::Open { wait },
            Phase::HalfOpen => {
                let mut conn = self.store.conn().await?;
                // One process wins the probe; the lease frees it if that process dies.
                let won: Option<String> = redis::cmd("SET")
                    .arg(&probe)
                    .arg(now)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.policy.probe_lease.as_millis() as u64)
                    .query_async(&mut conn)
                    .await?;
                if won.is_some() {
                    transition(target, "half_open");
                    Gate::Probe
                } else {
                    let left: i64 = redis::cmd("PTTL")
                        .arg(&probe)
                        .query_async(&mut conn)
                        .await?;
                    let recheck = self.policy.recheck.as_millis() as i64;
                    Gate::Open {
                        wait: Duration::from_millis(left.clamp(1, recheck.max(1)) as u64),
                    }
                }
            }
        };
        set_gauge(target, phase);
        Ok(gate)
    }

    /// Gives back a [`Gate::Probe`] that will not be used (the rate limiter said wait, another
    /// process holds the job): the next caller may probe at once instead of after the lease.
    pub async fn release_probe(&self, target: &str) -> Result<(), StoreError> {
        let (_, probe) = self.keys(target);
        let mut conn = self.store.conn().await?;
        let _: i64 = redis::cmd("DEL").arg(&probe).query_async(&mut conn).await?;
        Ok(())
    }

    /// Records the outcome of an attempt on `target` (a probe's or any other).
    pub async fn record(&self, target: &str, success: bool) -> Result<(), StoreError> {
        let (key, probe) = self.keys(target);
        let mut conn = self.store.conn().await?;
        for _ in 0..CAS_ROUNDS {
            let (now, raw, old) = self.read(&mut conn, &key).await?;
            let new = next(&self.policy, old, success, now);
            if new == old {
                set_gauge(target, phase(new, now));
                return Ok(());
            }
            let (value, ttl) = match keep_for(&self.policy, new, now) {
                None => (String::new(), 0),
                Some(ttl) => (encode(new), (ttl.as_millis() as u64).max(1)),
            };
            let written: i64 = self
                .cas
                .key(&key)
                .key(&probe)
                .arg(&raw)
                .arg(value)
                .arg(ttl)
                .invoke_async(&mut conn)
                .await?;
            if written == 1 {
                let (before, after) = (phase(old, now), phase(new, now));
                match (before, after) {
                    (Phase::Closed, Phase::Closed) => {}
                    (_, Phase::Closed) => transition(target, "closed"),
                    (Phase::Closed | Phase::HalfOpen, Phase::Open { .. }) => {
                        tracing::warn!(target, ?new, "circuit opened");
                        transition(target, "open");
                    }
                    _ => {}
                }
                set_gauge(target, after);
                return Ok(());
            }
        }
        tracing::warn!(
            target,
            "breaker state contended; this outcome was not recorded"
        );
        Ok(())
    }
}

fn set_gauge(target: &str, phase: Phase) {
    metrics::gauge!("switchboard_breaker_state", "target" => target.to_owned()).set(phase.gauge());
}

fn transition(target: &str, to: &'static str) {
    metrics::counter!("switchboard_breaker_transitions_total", "target" => target.to_owned(), "to" => to)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_survive_storage() {
        let cases = [
            State::HEALTHY,
            State::Closed {
                failures: 4,
                since_ms: 1_712_345_678_901,
            },
            State::Open {
                until_ms: 1_712_345_678_901,
                trips: 3,
            },
        ];
        for s in cases {
            assert_eq!(decode(&encode(s)), Some(s), "{s:?}");
        }
        for bad in ["", "x:1:2", "c:1", "o:a:1", "c:1:2:3"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_reading_is_clean_only_when_closed_without_failures() {
        let cases = [
            ("", State::HEALTHY, true),
            ("c:0:0", State::HEALTHY, true),
            ("garbled", State::HEALTHY, true),
            (
                "c:1:500",
                State::Closed {
                    failures: 1,
                    since_ms: 500,
                },
                false,
            ),
            (
                "o:9000:1",
                State::Open {
                    until_ms: 9_000,
                    trips: 1,
                },
                false,
            ),
        ];
        for (raw, state, clean) in cases {
            let r = Reading::of(7, 123_456, raw, "k");
            assert_eq!(
                (r.now_ms, r.state, r.clean()),
                (7_123, state, clean),
                "{raw}"
            );
        }
    }

    #[test]
    fn what_redis_keeps() {
        let p = BreakerPolicy::default();
        let hour = Duration::from_secs(3600);
        let cases = [
            (State::HEALTHY, None),
            (
                State::Closed {
                    failures: 2,
                    since_ms: 500,
                },
                Some(hour),
            ),
            (
                State::Open {
                    until_ms: 31_000,
                    trips: 1,
                },
                Some(hour + Duration::from_secs(30)),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(keep_for(&p, s, 1_000), want, "{s:?}");
        }
    }
}
