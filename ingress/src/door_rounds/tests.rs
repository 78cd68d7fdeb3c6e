use super::*;
use crate::door::test_store as store;
use futures_util::future::join_all;

/// Long enough for a loaded machine; a read that waited for a batch to fill would never finish.
const T: Duration = Duration::from_secs(10);

/// A store under a prefix of its own where event 1 was kept, as `e-1`.
async fn with_one_kept() -> Store {
    let prefix = format!("test-door-rounds-{}", uuid::Uuid::now_v7());
    let store = store("redis://127.0.0.1:6379", &prefix);
    seen(&store, 1)
        .remember(&store, "e-1", Duration::from_secs(60))
        .await
        .expect("redis");
    store
}

fn rounds(store: &Store) -> DoorRounds {
    DoorRounds::new(store.clone(), Duration::from_secs(60), "lost")
}

fn seen(store: &Store, i: usize) -> SeenKeys {
    SeenKeys::of(store, "src", &format!("d-{i}"), None)
}

/// Deletes what `remember` wrote for events `ids`.
async fn clean(store: &Store, ids: impl Iterator<Item = usize>) {
    let mut keys = Vec::new();
    for i in ids {
        keys.extend(seen(store, i).keys().iter().cloned());
        keys.push(store.key(&["event", &format!("e-{i}")]));
    }
    delete(store, keys).await;
}

async fn delete(store: &Store, keys: Vec<String>) {
    let mut conn = store.conn().await.expect("redis");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn concurrent_reads_share_one_round_trip_and_each_gets_its_own_answer() {
    let prefix = format!("test-door-rounds-{}", uuid::Uuid::now_v7());
    let store = store("redis://127.0.0.1:6379", &prefix);
    // Every other event was kept before, under an id of its own.
    for i in (0..200).step_by(2) {
        seen(&store, i)
            .remember(&store, &format!("e-{i}"), Duration::from_secs(60))
            .await
            .expect("redis");
    }
    let reader = rounds(&store);
    let all: Vec<SeenKeys> = (0..200).map(|i| seen(&store, i)).collect();
    let before = store.round_trips();
    // On this current-thread runtime every read is queued before the reader's task runs.
    let answers = tokio::time::timeout(T, join_all(all.iter().map(|s| reader.first(s))))
        .await
        .expect("answered");
    assert_eq!(
        store.round_trips() - before,
        1,
        "one pipeline for 200 reads"
    );
    for (i, answer) in answers.into_iter().enumerate() {
        let expected = (i % 2 == 0).then(|| format!("e-{i}"));
        assert_eq!(answer.expect("redis"), expected, "read {i}");
    }
    clean(&store, (0..200).step_by(2)).await;
}

#[tokio::test]
async fn a_read_alone_is_sent_at_once_in_a_batch_of_its_own() {
    let store = with_one_kept().await;
    let reader = rounds(&store);
    // Twice: the first read also starts the reader's task.
    for _ in 0..2 {
        let before = store.round_trips();
        let answer = tokio::time::timeout(T, reader.first(&seen(&store, 1)))
            .await
            .expect("a lone read does not wait for company");
        assert_eq!(answer.expect("redis").as_deref(), Some("e-1"));
        assert_eq!(store.round_trips() - before, 1);
    }
    clean(&store, 1..2).await;
}

#[tokio::test]
async fn a_round_trips_error_reaches_every_waiter_as_a_direct_read_gives_it() {
    // Nothing listens on port 1.
    let store = store("redis://127.0.0.1:1", "test-door-rounds-away");
    let direct = seen(&store, 0).first(&store).await.expect_err("no Redis");
    let reader = rounds(&store);
    let all: Vec<SeenKeys> = (0..20).map(|i| seen(&store, i)).collect();
    let answers = tokio::time::timeout(T, join_all(all.iter().map(|s| reader.first(s))))
        .await
        .expect("answered");
    for answer in answers {
        let batched = answer.expect_err("no Redis");
        assert_eq!(batched.to_string(), direct.to_string());
    }
}

#[tokio::test]
async fn each_read_is_answered_from_its_own_keys_in_a_batch_of_one_and_two_key_reads() {
    let prefix = format!("test-door-rounds-{}", uuid::Uuid::now_v7());
    let store = store("redis://127.0.0.1:6379", &prefix);
    // Reads of two keys (a body-keyed source) between reads of one. Of the two-key reads, some
    // were kept under their body only (another delivery id, the same signed body), some under
    // both keys (the first is the answer), some not at all; every third one-key read was kept.
    let body = |i: usize| format!("body-{i}");
    let two = |i: usize, dedup: &str| SeenKeys::of(&store, "src", dedup, Some(body(i).as_bytes()));
    let mut kept = Vec::new();
    for i in 0..60 {
        let keys = match i % 6 {
            0 => two(i, &format!("other-{i}")),
            2 => two(i, &format!("d-{i}")),
            3 => seen(&store, i),
            _ => continue,
        };
        keys.remember(&store, &format!("e-{i}"), Duration::from_secs(60))
            .await
            .expect("redis");
        kept.push(keys);
    }
    let reads: Vec<SeenKeys> = (0..60)
        .map(|i| match i % 2 {
            0 => two(i, &format!("d-{i}")),
            _ => seen(&store, i),
        })
        .collect();
    assert!(reads.iter().any(|r| r.keys().len() == 2) && reads.iter().any(|r| r.keys().len() == 1));
    let reader = rounds(&store);
    let before = store.round_trips();
    let answers = tokio::time::timeout(T, join_all(reads.iter().map(|s| reader.first(s))))
        .await
        .expect("answered");
    assert_eq!(store.round_trips() - before, 1, "one MGET for 60 reads");
    for (i, answer) in answers.into_iter().enumerate() {
        let expected = matches!(i % 6, 0 | 2 | 3).then(|| format!("e-{i}"));
        assert_eq!(answer.expect("redis"), expected, "read {i}");
        // The same as the read alone.
        assert_eq!(
            reads[i].first(&store).await.expect("redis"),
            expected,
            "direct read {i}"
        );
    }
    let mut keys: Vec<String> = kept.iter().flat_map(|k| k.keys().to_vec()).collect();
    keys.extend((0..60).map(|i| store.key(&["event", &format!("e-{i}")])));
    delete(&store, keys).await;
}

fn marker(store: &Store, i: usize) -> Marker {
    Marker {
        seen: seen(store, i),
        event_id: format!("e-{i}"),
    }
}

#[tokio::test]
async fn markers_queued_are_written_to_redis_in_the_background() {
    let prefix = format!("test-door-rounds-{}", uuid::Uuid::now_v7());
    let store = store("redis://127.0.0.1:6379", &prefix);
    let rounds = rounds(&store);
    for i in 0..3 {
        rounds.remember(marker(&store, i)).expect("queued");
    }
    rounds.settle(T).await;
    let mut conn = store.conn().await.expect("redis");
    for i in 0..3 {
        let first = seen(&store, i).first(&store).await.expect("redis");
        assert_eq!(first, Some(format!("e-{i}")));
        // And each event's record under its id, for the console.
        let record: Option<String> = redis::cmd("GET")
            .arg(store.key(&["event", &format!("e-{i}")]))
            .query_async(&mut conn)
            .await
            .expect("GET");
        assert!(record.is_some_and(|r| r.contains(&format!("d-{i}"))));
    }
    clean(&store, 0..3).await;
}

#[tokio::test]
async fn reads_and_markers_queued_together_share_one_round_trip_and_a_read_sees_the_markers_before_it(
) {
    let store = with_one_kept().await;
    let rounds = rounds(&store);
    let before = store.round_trips();
    // On this current-thread runtime all of it is queued before the batching task runs: event
    // 2's marker, then reads of events 1 (kept before), 2 (its marker just queued) and 3 (never).
    rounds.remember(marker(&store, 2)).expect("queued");
    let all: Vec<SeenKeys> = (1..4).map(|i| seen(&store, i)).collect();
    let answers = tokio::time::timeout(T, join_all(all.iter().map(|s| rounds.first(s))))
        .await
        .expect("answered");
    assert_eq!(store.round_trips() - before, 1, "one pipeline for it all");
    let answers: Vec<Option<String>> = answers.into_iter().map(|a| a.expect("redis")).collect();
    assert_eq!(answers, vec![Some("e-1".into()), Some("e-2".into()), None]);
    clean(&store, 1..3).await;
}

#[tokio::test]
async fn with_redis_away_queueing_markers_never_waits_and_a_read_gets_the_error() {
    // Nothing listens on port 1: every round trip fails.
    let store = store("redis://127.0.0.1:1", "test-door-rounds-away");
    let rounds = rounds(&store);
    let queued = tokio::time::timeout(Duration::from_millis(100), async {
        for i in 0..10 {
            rounds.remember(marker(&store, i)).expect("queued");
        }
    });
    queued.await.expect("queueing does not wait for Redis");
    // A read gets the round trip's error, as it would alone.
    let direct = seen(&store, 0).first(&store).await.expect_err("no Redis");
    let read = tokio::time::timeout(T, rounds.first(&seen(&store, 0)))
        .await
        .expect("answered");
    assert_eq!(read.expect_err("no Redis").to_string(), direct.to_string());
    rounds.settle(T).await;
}

#[tokio::test]
async fn a_full_queue_hands_the_marker_back() {
    let store = store("redis://127.0.0.1:1", "test-door-rounds-full");
    let rounds = rounds(&store);
    // On a current-thread runtime the batching task does not run before this loop yields.
    let mut handed_back = 0;
    for i in 0..QUEUE + 5 {
        if let Err(m) = rounds.remember(marker(&store, i)) {
            assert_eq!(m.event_id, format!("e-{i}"));
            handed_back += 1;
        }
    }
    assert_eq!(handed_back, 5);
}
