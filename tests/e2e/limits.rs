//! A target's rate limit holds across dispatcher processes: two dispatchers share one target
//! limited to 5 a second, and at the receiver no one-second window ever holds more than 5.
use crate::common::*;
use std::time::Duration;

const LIMITED: &str = r#"
[[sources]]
id = "burst"
platform = "bearer"
token = "burst-token"
app = "support"
targets = ["limited"]

[[targets]]
id = "limited"
kind = "webhook"
url = "{receiver}/limited"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
rate = "5/1s"
"#;

/// The most arrivals within any window of `len` (sorted instants).
fn busiest_window(mut at: Vec<std::time::Instant>, len: Duration) -> usize {
    at.sort();
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t - at[i] < len).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn two_dispatchers_share_one_rate_limit() {
    let mut app = TestApp::spawn(Options {
        extra: LIMITED.into(),
        ..Default::default()
    })
    .await;
    app.add_dispatcher();
    let n = 16;
    for i in 0..n {
        let body = format!(r#"{{"id":"b-{i}","text":"burst {i}","sender_id":"s{i}"}}"#);
        let resp = app
            .post(
                "/hooks/burst",
                &[
                    ("authorization", "Bearer burst-token"),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
        assert_eq!(resp.status(), 202);
    }
    let r = app.receiver.clone();
    wait_for("every burst answer", Duration::from_secs(40), || {
        let r = r.clone();
        async move { r.accepted() == n }
    })
    .await;
    let arrivals: Vec<_> = app.receiver.received().iter().map(|r| r.at).collect();
    let busiest = busiest_window(arrivals.clone(), Duration::from_secs(1));
    assert!(
        busiest <= 5,
        "a one-second window held {busiest} deliveries"
    );
    // And the limit is a pace, not a stall: 16 deliveries at 5/s take about 3 s.
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    assert!(span >= Duration::from_millis(2_500), "{span:?}");
    assert!(
        app.receiver.accepted_per_id().values().all(|n| *n == 1),
        "each job once"
    );
    app.shutdown().await;
}

#[test]
fn busiest_window_counts_half_open_windows() {
    let t0 = std::time::Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    assert_eq!(
        busiest_window(
            vec![at(0), at(999), at(1000), at(1001)],
            Duration::from_secs(1)
        ),
        3
    );
    assert_eq!(busiest_window(vec![], Duration::from_secs(1)), 0);
}
