//! The index on rows made by hand: every filter selects what it names, pages go newest first
//! and page on without gaps or repeats, lookups by event and message id, stats and per-day
//! counts, and a letter seen twice is indexed once.
use super::*;
use chrono::{Duration, TimeZone};
use deadletters::record::Origin;
use shared::envelope::{Reason, Stage};
use shared::seal::Verdict;

fn at(h: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().unwrap() + Duration::hours(h)
}

fn row(n: u64) -> Row {
    let reason = [Reason::Exhausted, Reason::Permanent, Reason::Poison][n as usize % 3];
    let stage = if n.is_multiple_of(2) {
        Stage::Deliver
    } else {
        Stage::Work
    };
    Row {
        offset: n * 2,
        id: Uuid::from_u128(n as u128 + 1),
        origin: Origin::Envelope,
        stage,
        reason,
        source: ["crm", "github"][n as usize % 2].into(),
        target: (stage == Stage::Deliver).then(|| "ops".to_owned()),
        dead_at: at(n as i64),
        attempts: 3,
        error: format!("error {n}"),
        event_id: Some(Uuid::from_u128(1000 + n as u128 / 2)),
        dedup_key: Some(format!("msg-{}", n / 2)),
        seal: Some(if n == 7 {
            Verdict::Forged { key_id: "k".into() }
        } else {
            Verdict::Verified { key_id: "k".into() }
        }),
        search: format!("order {n}\nerror {n}").into_boxed_str(),
    }
}

fn index(n: u64) -> Index {
    let i = Index::default();
    for k in 0..n {
        i.add(row(k));
    }
    i
}

fn query(f: impl FnOnce(&mut Query)) -> Query {
    let mut q = Query::default();
    f(&mut q);
    q
}

#[test]
fn each_filter_selects_what_it_names() {
    let i = index(30);
    #[rustfmt::skip]
    let cases: Vec<(&str, Query, usize)> = vec![
        ("all", Query::default(), 30),
        ("reason", query(|q| q.filter.reasons = vec![Reason::Poison]), 10),
        ("stage", query(|q| q.filter.stages = vec![Stage::Work]), 15),
        ("source", query(|q| q.filter.sources = vec!["crm".into()]), 15),
        ("target", query(|q| q.filter.targets = vec!["ops".into()]), 15),
        ("since", query(|q| q.filter.since = Some(at(20))), 10),
        ("until", query(|q| q.filter.until = Some(at(5))), 5),
        ("text", query(|q| q.text = Some("order 1".into())), 11),
        ("unverified", query(|q| q.verified = Some(false)), 1),
        ("together", query(|q| { q.filter.reasons = vec![Reason::Exhausted]; q.filter.stages = vec![Stage::Deliver] }), 5),
    ];
    for (name, q, want) in cases {
        assert_eq!(i.page(&q, None, 100).total, want, "{name}");
        assert_eq!(i.all(&q).len(), want, "{name}");
    }
}

#[test]
fn pages_go_newest_first_without_gaps() {
    let i = index(25);
    let q = Query::default();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let p = i.page(&q, before, 10);
        assert_eq!(p.total, 25);
        seen.extend(p.rows.iter().map(|r| r.offset / 2));
        match p.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).rev().collect::<Vec<_>>());
}

#[test]
fn lookups_stats_and_duplicates() {
    let i = index(6);
    i.add(row(3));
    assert_eq!(i.len(), 6, "a letter seen twice is indexed once");
    assert_eq!(i.of_event(Uuid::from_u128(1001)).len(), 2);
    assert_eq!(i.of_dedup("msg-2").len(), 2);
    assert_eq!(i.get(Uuid::from_u128(4)).map(|r| r.offset), Some(6));
    let s = i.stats(&Query::default());
    assert_eq!((s.total, s.by_reason.get("poison")), (6, Some(&2)));
    let days = i.per_day(&Query::default());
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].1.values().sum::<u64>(), 6);
    let (sources, targets) = i.names();
    assert_eq!((sources.len(), targets), (2, vec!["ops".to_owned()]));
}
