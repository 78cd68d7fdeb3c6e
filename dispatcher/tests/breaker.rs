//! The circuit breaker: its state machine as tables (pure), then against the real Redis with two
//! independent instances (separate pools, as two dispatcher processes would have): it opens
//! after continuous failures only, one probe goes out however many ask, a failed probe re-opens
//! for longer, a success closes and leaves nothing behind, a lost probe is freed by its lease;
//! and the state is exported as a metric.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use dispatcher::breaker::{cooldown, next, phase, Breaker, BreakerPolicy, Gate, Phase, State};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder};
use metrics::{SharedString, Unit};
use shared::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use testkit::{keys, Fixture};

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        failures: 3,
        span: Duration::from_secs(10),
        cooldown: Duration::from_secs(30),
        max_cooldown: Duration::from_secs(120),
        ..BreakerPolicy::default()
    }
}

fn closed(failures: u32, since_ms: u64) -> State {
    State::Closed { failures, since_ms }
}

fn open(until_ms: u64, trips: u32) -> State {
    State::Open { until_ms, trips }
}

#[test]
fn transitions_table() {
    let p = policy();
    let (ok, fail) = (true, false);
    let cases = [
        // A streak starts and grows while it is too short to open.
        (State::HEALTHY, fail, 1_000, closed(1, 1_000)),
        (closed(1, 1_000), fail, 2_000, closed(2, 1_000)),
        (closed(2, 1_000), fail, 5_000, closed(3, 1_000)),
        (closed(9, 1_000), fail, 10_999, closed(10, 1_000)),
        // Enough failures over at least `span`: open for the first cool-down.
        (closed(2, 1_000), fail, 11_000, open(41_000, 1)),
        (closed(3, 1_000), fail, 11_000, open(41_000, 1)),
        // Any success ends the streak.
        (closed(4, 1_000), ok, 9_000, State::HEALTHY),
        (State::HEALTHY, ok, 9_000, State::HEALTHY),
        // While open, late outcomes of attempts that began before: failures change nothing,
        // a success shows the receiver is back.
        (open(41_000, 1), fail, 20_000, open(41_000, 1)),
        (open(41_000, 1), ok, 20_000, State::HEALTHY),
        // Half-open: a failed probe re-opens for twice as long, up to the cap.
        (open(41_000, 1), fail, 41_000, open(101_000, 2)),
        (open(101_000, 2), fail, 102_000, open(222_000, 3)),
        (open(222_000, 3), fail, 230_000, open(350_000, 4)),
        (open(350_000, 40), fail, 350_000, open(470_000, 41)),
        (open(350_000, 4), ok, 360_000, State::HEALTHY),
    ];
    for (state, success, now, want) in cases {
        assert_eq!(
            next(&p, state, success, now),
            want,
            "{state:?} {success} @{now}"
        );
    }
    // `failures: 0` means one; `span: 0` opens at once.
    let eager = BreakerPolicy {
        failures: 0,
        span: Duration::ZERO,
        ..p
    };
    assert_eq!(next(&eager, State::HEALTHY, false, 7), open(30_007, 1));
}

#[test]
fn phases_cooldowns_and_gauge_values() {
    let cases = [
        (State::HEALTHY, 5, Phase::Closed),
        (closed(2, 1), 5, Phase::Closed),
        (
            open(5_000, 1),
            4_000,
            Phase::Open {
                wait: Duration::from_secs(1),
            },
        ),
        (open(5_000, 1), 5_000, Phase::HalfOpen),
        (open(5_000, 1), 9_000, Phase::HalfOpen),
    ];
    for (state, now, want) in cases {
        assert_eq!(phase(state, now), want, "{state:?} @{now}");
    }
    let p = policy();
    let s = Duration::from_secs;
    for (trips, want) in [
        (0, s(30)),
        (1, s(30)),
        (2, s(60)),
        (3, s(120)),
        (4, s(120)),
        (99, s(120)),
    ] {
        assert_eq!(cooldown(&p, trips), want, "trip {trips}");
    }
    let gauges = [
        (Phase::Closed, 0.0),
        (Phase::HalfOpen, 1.0),
        (Phase::Open { wait: s(1) }, 2.0),
    ];
    for (phase, value) in gauges {
        assert_eq!(phase.gauge(), value, "{phase:?}");
    }
}

/// A target failing for a minute at one attempt per second: the breaker opens once the streak
/// spans the policy's span, and a receiver that comes back closes it at the next probe.
#[test]
fn a_down_receiver_is_paused_and_resumed() {
    let p = BreakerPolicy {
        failures: 5,
        span: Duration::from_secs(30),
        cooldown: Duration::from_secs(10),
        ..BreakerPolicy::default()
    };
    let mut state = State::HEALTHY;
    let mut opened_at = None;
    let mut attempts = 0;
    for now in (0..120_000u64).step_by(1_000) {
        match phase(state, now) {
            Phase::Open { .. } => continue,
            Phase::Closed | Phase::HalfOpen => {}
        }
        attempts += 1;
        let up = now >= 90_000;
        state = next(&p, state, up, now);
        if opened_at.is_none() && matches!(state, State::Open { .. }) {
            opened_at = Some(now);
        }
    }
    assert_eq!(opened_at, Some(30_000), "opens when the streak spans 30 s");
    // 31 attempts to open (0..=30 s), probes at 40, 60 and 100 s (cool-downs 10, 20, 40 s), the
    // last one succeeding, then 19 more.
    assert_eq!(attempts, 31 + 3 + 19);
    assert_eq!(state, State::HEALTHY);
}

// ---------------------------------------------------------------------------------------------
// Against Redis.

/// Two breakers on separate pools sharing one prefix, as two dispatcher processes would; the
/// fixture removes the prefix's keys when the test ends, passed or not.
fn pair(policy: BreakerPolicy) -> (Breaker, Breaker, Store, Fixture) {
    let kit = Fixture::new("t");
    let (a, b) = (kit.store_with_pool(8), kit.store_with_pool(8));
    (
        Breaker::new(a.clone(), policy.clone()),
        Breaker::new(b, policy),
        a,
        kit,
    )
}

fn quick() -> BreakerPolicy {
    BreakerPolicy {
        failures: 3,
        span: Duration::from_millis(300),
        cooldown: Duration::from_millis(500),
        max_cooldown: Duration::from_secs(5),
        probe_lease: Duration::from_secs(10),
        recheck: Duration::from_millis(200),
        forget_after: Duration::from_secs(60),
    }
}

/// Everyone asks at once; returns the gates.
async fn stampede(breakers: &[&Breaker], target: &str, each: usize) -> Vec<Gate> {
    let mut joins = Vec::new();
    for b in breakers {
        for _ in 0..each {
            let (b, target) = ((*b).clone(), target.to_owned());
            joins.push(tokio::spawn(async move { b.gate(&target).await.unwrap() }));
        }
    }
    let mut out = Vec::new();
    for j in joins {
        out.push(j.await.unwrap());
    }
    out
}

async fn sleep_out(gate: Gate) {
    match gate {
        Gate::Open { wait } => tokio::time::sleep(wait).await,
        other => panic!("expected an open circuit, got {other:?}"),
    }
}

#[tokio::test]
async fn opens_after_continuous_failures_across_processes() {
    let metrics = recorder();
    let (a, b, _, _kit) = pair(quick());
    let t = "opens";
    for br in [&a, &b, &a] {
        br.record(t, false).await.unwrap();
    }
    // Three failures, but within 300 ms: a blip, not an outage.
    assert_eq!(a.gate(t).await.unwrap(), Gate::Pass);
    assert_eq!(b.gate(t).await.unwrap(), Gate::Pass);
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.record(t, false).await.unwrap();
    let Gate::Open { wait } = a.gate(t).await.unwrap() else {
        panic!("four failures over 300 ms open the circuit");
    };
    assert!(
        wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    assert_eq!(
        metrics.value(&format!("switchboard_breaker_state{{target={t}}}")),
        Some(2.0)
    );
    let opened = format!("switchboard_breaker_transitions_total{{target={t},to=open}}");
    assert_eq!(metrics.value(&opened), Some(1.0));
    // Late failures of attempts already under way change nothing.
    a.record(t, false).await.unwrap();
    assert!(matches!(b.gate(t).await.unwrap(), Gate::Open { wait: w } if w <= wait));
    assert_eq!(metrics.value(&opened), Some(1.0));
}

#[tokio::test]
async fn one_probe_only_and_a_success_closes() {
    let metrics = recorder();
    let (a, b, store, _kit) = pair(BreakerPolicy {
        span: Duration::ZERO,
        ..quick()
    });
    let t = "probe";
    for _ in 0..3 {
        a.record(t, false).await.unwrap();
    }
    sleep_out(b.gate(t).await.unwrap()).await;

    // Cool-down over: 16 jobs in two processes ask at once; exactly one probes.
    let gates = stampede(&[&a, &b], t, 8).await;
    let probes = gates.iter().filter(|g| **g == Gate::Probe).count();
    assert_eq!(probes, 1, "{gates:?}");
    assert!(gates.iter().all(|g| match g {
        Gate::Open { wait } => *wait <= Duration::from_millis(200),
        _ => true,
    }));
    assert_eq!(
        metrics.value(&format!("switchboard_breaker_state{{target={t}}}")),
        Some(1.0)
    );

    // The probe fails: open again, for twice as long.
    b.record(t, false).await.unwrap();
    let Gate::Open { wait } = a.gate(t).await.unwrap() else {
        panic!("a failed probe re-opens");
    };
    assert!(
        wait > Duration::from_millis(900) && wait <= Duration::from_millis(1_000),
        "{wait:?}"
    );
    tokio::time::sleep(wait).await;

    // Next probe, again only one; it succeeds and both processes pass.
    let gates = stampede(&[&a, &b], t, 8).await;
    assert_eq!(
        gates.iter().filter(|g| **g == Gate::Probe).count(),
        1,
        "{gates:?}"
    );
    a.record(t, true).await.unwrap();
    assert_eq!(a.gate(t).await.unwrap(), Gate::Pass);
    assert_eq!(b.gate(t).await.unwrap(), Gate::Pass);
    let count = |to: &str| {
        metrics.value(&format!(
            "switchboard_breaker_transitions_total{{target={t},to={to}}}"
        ))
    };
    assert_eq!(
        (count("open"), count("half_open"), count("closed")),
        (Some(2.0), Some(2.0), Some(1.0))
    );
    assert_eq!(
        metrics.value(&format!("switchboard_breaker_state{{target={t}}}")),
        Some(0.0)
    );
    assert!(
        keys(&store).await.is_empty(),
        "a healthy target leaves nothing behind"
    );
}

#[tokio::test]
async fn a_lost_probe_is_freed_by_its_lease() {
    let (a, b, store, _kit) = pair(BreakerPolicy {
        span: Duration::ZERO,
        probe_lease: Duration::from_millis(400),
        ..quick()
    });
    let t = "lease";
    for _ in 0..3 {
        b.record(t, false).await.unwrap();
    }
    sleep_out(a.gate(t).await.unwrap()).await;
    // Process A takes the probe and dies without a word.
    assert_eq!(a.gate(t).await.unwrap(), Gate::Probe);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    loop {
        match b.gate(t).await.unwrap() {
            Gate::Probe => break,
            Gate::Open { wait } => {
                assert!(Instant::now() < deadline, "the probe was never freed");
                tokio::time::sleep(wait).await;
            }
            Gate::Pass => panic!("the circuit closed by itself"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    b.record(t, true).await.unwrap();
    assert_eq!(a.gate(t).await.unwrap(), Gate::Pass);
    assert!(keys(&store).await.is_empty());
}

#[tokio::test]
async fn an_unused_probe_can_be_given_back() {
    let (a, b, store, _kit) = pair(BreakerPolicy {
        span: Duration::ZERO,
        ..quick()
    });
    let t = "release";
    for _ in 0..3 {
        a.record(t, false).await.unwrap();
    }
    sleep_out(a.gate(t).await.unwrap()).await;
    assert_eq!(a.gate(t).await.unwrap(), Gate::Probe);
    assert!(matches!(b.gate(t).await.unwrap(), Gate::Open { .. }));
    // A's probe met a rate limit: it gives the probe back and B may probe at once.
    a.release_probe(t).await.unwrap();
    assert_eq!(b.gate(t).await.unwrap(), Gate::Probe);
    b.record(t, true).await.unwrap();
    assert!(keys(&store).await.is_empty());
}

#[tokio::test]
async fn failure_streaks_expire() {
    let (a, _, store, _kit) = pair(BreakerPolicy {
        forget_after: Duration::from_millis(300),
        ..quick()
    });
    a.record("idle", false).await.unwrap();
    assert_eq!(keys(&store).await.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !keys(&store).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the streak outlived forget_after"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A recorder that keeps the last value of every gauge and the total of every counter, keyed
// `name{label=value,…}`. Tests use distinct targets, so they share it safely.

#[derive(Default)]
struct Values(Mutex<HashMap<String, f64>>);

impl Values {
    fn value(&self, key: &str) -> Option<f64> {
        self.0.lock().unwrap().get(key).copied()
    }
}

struct Handle {
    key: String,
    values: &'static Values,
}

impl Handle {
    fn update(&self, f: impl FnOnce(f64) -> f64) {
        let mut map = self.values.0.lock().unwrap();
        let v = map.entry(self.key.clone()).or_insert(0.0);
        *v = f(*v);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.update(|v| v + value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|_| value as f64);
    }
}

struct Capture(&'static Values);

impl Capture {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Handle {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: self.0,
        })
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn recorder() -> &'static Values {
    static VALUES: OnceLock<&'static Values> = OnceLock::new();
    VALUES.get_or_init(|| {
        let values: &'static Values = Box::leak(Box::default());
        metrics::set_global_recorder(Capture(values)).unwrap();
        values
    })
}
