use super::*;
use crate::door::test_store as store;
use futures_util::future::join_all;

/// Long enough for a loaded machine; a read that waited for a batch to fill would never finish.
const T: Duration = Duration::from_secs(10);

/// A store under a prefix of its own where event 1 was kept, as `e-1`.
async fn with_one_kept() -> Store {
    let prefix = format!("test-door-reader-{}", uuid::Uuid::now_v7());
    let store = store("redis://127.0.0.1:6379", &prefix);
    seen(&store, 1)
        .remember(&store, "e-1", Duration::from_secs(60))
        .await
        .expect("redis");
    store
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
    let prefix = format!("test-door-reader-{}", uuid::Uuid::now_v7());
    let store = store("redis://127.0.0.1:6379", &prefix);
    // Every other event was kept before, under an id of its own.
    for i in (0..200).step_by(2) {
        seen(&store, i)
            .remember(&store, &format!("e-{i}"), Duration::from_secs(60))
            .await
            .expect("redis");
    }
    let reader = DoorReader::new(store.clone());
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
    let reader = DoorReader::new(store.clone());
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
    let store = store("redis://127.0.0.1:1", "test-door-reader-away");
    let direct = seen(&store, 0).first(&store).await.expect_err("no Redis");
    let reader = DoorReader::new(store.clone());
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
    let prefix = format!("test-door-reader-{}", uuid::Uuid::now_v7());
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
    let reader = DoorReader::new(store.clone());
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
