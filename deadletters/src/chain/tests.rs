//! Chains made by hand: intact from the genesis or from a cut retention explains, and broken
//! in each way the verifier names (a gap, a fork, a forged record, a truncated tail, a stream
//! emptied or replaced, a start cut later than retention explains).
use super::*;
use chrono::TimeZone;
use shared::seal::{digest, Verdict};

fn at(hours: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap() + Duration::hours(hours)
}

fn ok() -> Option<Verdict> {
    Some(Verdict::Verified { key_id: "k".into() })
}

/// A chain of `n` records starting at `first`, each written an hour after the one before.
fn chain(first: u64, n: u64, start_hour: i64) -> Vec<Link> {
    let mut prev = if first == 0 {
        GENESIS_PREV.to_owned()
    } else {
        digest(format!("record {}", first - 1).as_bytes())
    };
    (first..first + n)
        .map(|seq| {
            let d = digest(format!("record {seq}").as_bytes());
            let l = Link {
                offset: seq * 10,
                digest: d.clone(),
                seal: ok(),
                place: Some(Place {
                    seq,
                    prev: prev.clone(),
                }),
                at: at(start_hour + (seq - first) as i64),
                checkpoint: false,
            };
            prev = d;
            l
        })
        .collect()
}

fn horizon(now_hour: i64) -> Horizon {
    Horizon {
        now: at(now_hour),
        max_age: Duration::days(30),
        checkpoint_every: Duration::days(1),
    }
}

fn head_of(links: &[Link]) -> Head {
    let l = links.last().unwrap();
    Head {
        seq: l.place.as_ref().unwrap().seq,
        digest: l.digest.clone(),
        at: l.at,
    }
}

fn why(r: &ChainReport) -> String {
    match &r.state {
        ChainState::Broken { why, .. } => why.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn an_intact_chain_from_its_genesis() {
    let links = chain(0, 5, 0);
    let r = verify(&links, Some(&head_of(&links)), horizon(10));
    assert_eq!(r.state, ChainState::Intact);
    assert_eq!(r.start, ChainStart::Genesis);
    assert_eq!((r.records, r.tip.as_ref().map(|t| t.0)), (5, Some(4)));
    assert_eq!(verify(&[], None, horizon(10)).state, ChainState::Empty);
}

#[test]
fn each_break_is_found_where_it_is() {
    let h = horizon(10);
    let good = chain(0, 5, 0);
    let head = head_of(&good);

    let mut gap = good.clone();
    gap.remove(2);
    let r = verify(&gap, Some(&head), h);
    assert!(
        matches!(
            r.state,
            ChainState::Broken {
                seq: Some(3),
                offset: Some(30),
                ..
            }
        ),
        "{r:?}"
    );
    assert!(why(&r).contains("records 2..2 are missing"), "{}", why(&r));

    // A second writer linked to record 2 as well.
    let mut fork = good.clone();
    let mut twin = fork[3].clone();
    twin.digest = digest(b"another record 3");
    twin.offset = 35;
    fork.insert(4, twin);
    let r = verify(&fork, Some(&head), h);
    assert!(why(&r).contains("forks"), "{}", why(&r));

    // A record that claims a place without a valid seal is rejected, and the chain holds.
    let mut forged = good.clone();
    let mut f = forged[4].clone();
    f.seal = Some(Verdict::Forged { key_id: "k".into() });
    f.digest = digest(b"forged");
    f.offset = 45;
    forged.push(f);
    let r = verify(&forged, Some(&head), h);
    assert_eq!(r.state, ChainState::Intact);
    assert_eq!(r.rejected.len(), 1);
    assert!(r.rejected[0].1.contains("forged"), "{:?}", r.rejected);

    // The last two records are gone: the head in Redis says so.
    let r = verify(&good[..3], Some(&head), h);
    assert!(
        why(&r).contains("last 2 record(s) are missing"),
        "{}",
        why(&r)
    );

    // The stream was emptied while the head is recent.
    let r = verify(&[], Some(&head), h);
    assert!(why(&r).contains("emptied or replaced"), "{}", why(&r));
    // ... but a head older than retention means everything simply expired.
    assert_eq!(
        verify(&[], Some(&head), horizon(24 * 40)).state,
        ChainState::Empty
    );
}

#[test]
fn duplicates_and_records_from_before_the_key_do_not_break_it() {
    let mut links = chain(0, 3, 0);
    links.push(links[2].clone());
    links.insert(
        0,
        Link {
            offset: 0,
            digest: digest(b"old"),
            seal: Some(Verdict::Unsealed),
            place: None,
            at: at(0),
            checkpoint: false,
        },
    );
    let r = verify(&links, Some(&head_of(&links)), horizon(10));
    assert_eq!(r.state, ChainState::Intact);
    assert_eq!((r.records, r.duplicates, r.unchained), (3, 1, 1));
}

#[test]
fn a_cut_start_holds_only_when_retention_explains_it() {
    // 40 days of hourly records; retention kept the last 30 days.
    let all = chain(0, 24 * 40, 0);
    let kept: Vec<Link> = all[24 * 10..].to_vec();
    let head = head_of(&all);
    let now = horizon(24 * 40);
    let r = verify(&kept, Some(&head), now);
    assert_eq!(r.state, ChainState::Intact, "{}", why(&r));
    assert!(matches!(r.start, ChainStart::Cut { seq: 240, .. }));
    // Someone removed the first 20 days: the start is far younger than retention explains.
    let r = verify(&all[24 * 20..], Some(&head), now);
    assert!(
        why(&r).contains("later than retention explains"),
        "{}",
        why(&r)
    );
}
