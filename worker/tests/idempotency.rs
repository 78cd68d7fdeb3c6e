//! The once-per-event record against the real Redis: racing claims, lease takeover with the
//! recorded Dify ids, fencing, a claim whose reply was lost given back by its token, and the
//! recorded answer served to later claims.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use shared::envelope::Answer;
use std::time::Duration;
use testkit::Fixture;
use worker::idempotency::{Claim, Idempotency, RunIds};

#[tokio::test]
async fn of_many_racing_claims_exactly_one_wins() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(8);
    let workers: Vec<_> = (0..16)
        .map(|i| {
            Idempotency::new(
                s.clone(),
                format!("w{i}"),
                Duration::from_secs(30),
                Duration::from_secs(60),
            )
        })
        .collect();
    let key = workers[0].key("src", "evt-race");
    let claimants: Vec<_> = workers.iter().map(Idempotency::claimant).collect();
    let claims = futures_util::future::join_all(
        workers
            .iter()
            .zip(&claimants)
            .map(|(w, c)| w.claim(&key, c)),
    )
    .await;
    let won = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Acquired { .. })))
        .count();
    let held = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Held(_))))
        .count();
    assert_eq!((won, held), (1, 15));
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_with_the_recorded_ids_and_the_old_owner_is_fenced() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(8);
    let a = Idempotency::new(
        s.clone(),
        "a".into(),
        Duration::from_millis(200),
        Duration::from_secs(60),
    );
    let b = Idempotency::new(
        s.clone(),
        "b".into(),
        Duration::from_millis(200),
        Duration::from_secs(60),
    );
    let key = a.key("src", "evt-takeover");
    let Claim::Acquired {
        token: ta,
        previous: None,
        takeovers: 0,
    } = a.claim(&key, &a.claimant()).await.unwrap()
    else {
        panic!()
    };
    let ids = RunIds {
        message_id: Some("m-1".into()),
        conversation_id: Some("c-1".into()),
        ..Default::default()
    };
    assert!(a.record_ids(&key, ta, &ids).await.unwrap());
    assert!(
        matches!(b.claim(&key, &b.claimant()).await.unwrap(), Claim::Held(_)),
        "a live lease holds"
    );
    // a dies: its lease lapses.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (tb, previous) = loop {
        match b.claim(&key, &b.claimant()).await.unwrap() {
            Claim::Acquired {
                token,
                previous,
                takeovers,
            } => {
                assert_eq!(takeovers, 1, "a's death is counted");
                break (token, previous);
            }
            _ => assert!(std::time::Instant::now() < deadline),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        previous,
        Some(ids),
        "the new owner sees what the old one recorded"
    );
    assert!(tb > ta);
    let answer = Answer {
        text: "late".into(),
        ..Default::default()
    };
    assert!(
        !a.complete(&key, ta, &answer, uuid::Uuid::now_v7())
            .await
            .unwrap(),
        "the old owner is fenced out"
    );
    let answer = Answer {
        text: "recovered".into(),
        ..Default::default()
    };
    let answering = uuid::Uuid::now_v7();
    assert!(b.complete(&key, tb, &answer, answering).await.unwrap());
    assert_eq!(
        a.claim(&key, &a.claimant()).await.unwrap(),
        Claim::Done {
            answer: Box::new(answer),
            by: Some(answering)
        },
        "later claims get the recorded answer, and the event it answered"
    );
}

#[tokio::test]
async fn a_released_event_can_be_claimed_again() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(8);
    let a = Idempotency::new(
        s.clone(),
        "a".into(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let key = a.key("src", "evt-release");
    let Claim::Acquired { token, .. } = a.claim(&key, &a.claimant()).await.unwrap() else {
        panic!()
    };
    assert!(a.release(&key, token).await.unwrap());
    assert!(matches!(
        a.claim(&key, &a.claimant()).await.unwrap(),
        Claim::Acquired { previous: None, .. }
    ));
}

#[tokio::test]
async fn a_live_lease_holds_even_against_its_own_process() {
    // Two copies of one event handled at once by one worker must not both call Dify.
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(8);
    let a = Idempotency::new(
        s.clone(),
        "same".into(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let key = a.key("src", "evt-self");
    assert!(matches!(
        a.claim(&key, &a.claimant()).await.unwrap(),
        Claim::Acquired { .. }
    ));
    assert!(matches!(
        a.claim(&key, &a.claimant()).await.unwrap(),
        Claim::Held(_)
    ));
}

/// Issue 18: a claim Redis ran but whose reply was lost (a response timeout) is given back by
/// the token its worker made, so the event can be answered at once instead of after the lease
/// (31.8 s was seen); the same give-back by any other token frees nothing, and once the event
/// is someone else's, the lost claim's token no longer frees it either.
#[tokio::test]
async fn a_claim_whose_reply_was_lost_is_given_back_by_its_token_and_no_other() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(8);
    let idem = |owner: &str| {
        Idempotency::new(
            s.clone(),
            owner.into(),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    };
    let (a, b) = (idem("a"), idem("b"));
    let key = a.key("src", "evt-lost");
    let lost = a.claimant();
    // Redis runs the claim; its reply never reaches the worker.
    let _ = a.claim(&key, &lost).await.unwrap();
    assert!(!a.release_lost(&key, &a.claimant()).await.unwrap());
    assert!(!b.release_lost(&key, "b/not-the-token").await.unwrap());
    assert!(
        matches!(b.claim(&key, &b.claimant()).await.unwrap(), Claim::Held(_)),
        "another token freed nothing"
    );
    assert!(a.release_lost(&key, &lost).await.unwrap());
    let Claim::Acquired { token, .. } = b.claim(&key, &b.claimant()).await.unwrap() else {
        panic!("the event is answerable at once")
    };
    assert!(
        !a.release_lost(&key, &lost).await.unwrap(),
        "the lost claim's token does not free b's claim"
    );
    assert!(matches!(
        a.claim(&key, &a.claimant()).await.unwrap(),
        Claim::Held(_)
    ));
    assert!(b.renew(&key, token).await.unwrap(), "b still holds it");
}

/// A give-back that comes after the answer was recorded (a stale or repeated one) never turns
/// the answer back into a free event that would call Dify again.
#[tokio::test]
async fn a_recorded_answer_is_not_undone_by_a_late_give_back() {
    let kit = Fixture::new("t");
    let a = Idempotency::new(
        kit.store_with_pool(4),
        "a".into(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let key = a.key("src", "evt-late");
    let claimant = a.claimant();
    let Claim::Acquired { token, .. } = a.claim(&key, &claimant).await.unwrap() else {
        panic!()
    };
    let answer = Answer {
        text: "kept".into(),
        ..Default::default()
    };
    assert!(a
        .complete(&key, token, &answer, uuid::Uuid::now_v7())
        .await
        .unwrap());
    assert!(!a.release(&key, token).await.unwrap());
    assert!(!a.release_failed(&key, token).await.unwrap());
    assert!(!a.release_lost(&key, &claimant).await.unwrap());
    assert!(matches!(
        a.claim(&key, &a.claimant()).await.unwrap(),
        Claim::Done { .. }
    ));
}

#[tokio::test]
async fn ids_survive_a_claim_given_back_before_calling_and_not_a_failed_call() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(8);
    let a = Idempotency::new(
        s.clone(),
        "a".into(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let key = a.key("src", "evt-keep");
    let Claim::Acquired { token, .. } = a.claim(&key, &a.claimant()).await.unwrap() else {
        panic!()
    };
    let ids = RunIds {
        workflow_run_id: Some("run-1".into()),
        ..Default::default()
    };
    assert!(a.record_ids(&key, token, &ids).await.unwrap());
    assert!(a.release(&key, token).await.unwrap());
    let Claim::Acquired {
        token, previous, ..
    } = a.claim(&key, &a.claimant()).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(previous, Some(ids), "kept for the next claim to recover");
    assert!(a.release_failed(&key, token).await.unwrap());
    assert!(
        matches!(
            a.claim(&key, &a.claimant()).await.unwrap(),
            Claim::Acquired { previous: None, .. }
        ),
        "a failed run's ids are cleared"
    );
}

#[tokio::test]
async fn every_worker_that_dies_holding_an_event_is_counted_until_a_failed_call_resets_it() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(8);
    let w = Idempotency::new(
        s.clone(),
        "w".into(),
        Duration::from_millis(50),
        Duration::from_secs(60),
    );
    let key = w.key("src", "evt-crashy");
    let mut seen = Vec::new();
    for _ in 0..3 {
        // Claim, then "die": the lease lapses without a release.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Claim::Acquired {
                takeovers, token, ..
            } = w.claim(&key, &w.claimant()).await.unwrap()
            {
                seen.push((takeovers, token));
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
    let token = seen.last().unwrap().1;
    assert!(w.release_failed(&key, token).await.unwrap());
    assert!(matches!(
        w.claim(&key, &w.claimant()).await.unwrap(),
        Claim::Acquired { takeovers: 0, .. }
    ));
}

const K1: &str = "k1-0123456789abcdef0123456789abcdef";
const K2: &str = "k2-0123456789abcdef0123456789abcdef";

fn idem(store: shared::store::Store) -> Idempotency {
    Idempotency::new(
        store,
        "w".into(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    )
}

/// The recorded answer is the customer's words: with a key, Redis holds only its ciphertext;
/// a rotated key still reads it; a process without the key gets a clear refusal.
#[tokio::test]
async fn a_recorded_answer_is_encrypted_survives_rotation_and_a_wrong_key_is_a_clear_error() {
    let kit = Fixture::new("t");
    let w = idem(kit.store_with_keys(Some(K1), &[]));
    let key = w.key("src", "evt-sealed");
    let Claim::Acquired { token, .. } = w.claim(&key, &w.claimant()).await.unwrap() else {
        panic!()
    };
    let answer = Answer {
        text: "the PLAINTEXT secret answer".into(),
        ..Default::default()
    };
    let answering = uuid::Uuid::now_v7();
    assert!(w.complete(&key, token, &answer, answering).await.unwrap());

    let mut conn = kit.store().conn().await.unwrap();
    let raw: Vec<String> = deadpool_redis::redis::cmd("HVALS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.iter().any(|v| v.starts_with("enc1:")), "{raw:?}");
    assert!(raw.iter().all(|v| !v.contains("PLAINTEXT")), "{raw:?}");

    let rotated = idem(kit.store_with_keys(Some(K2), &[K1]));
    assert_eq!(
        rotated.claim(&key, &rotated.claimant()).await.unwrap(),
        Claim::Done {
            answer: Box::new(answer.clone()),
            by: Some(answering)
        }
    );
    for (current, previous) in [(Some(K2), vec![]), (None, vec![])] {
        let wrong = idem(kit.store_with_keys(current, &previous));
        let Claim::Unreadable(why) = wrong.claim(&key, &wrong.claimant()).await.unwrap() else {
            panic!("{current:?}")
        };
        assert!(why.contains("key"), "{why}");
        assert!(!why.contains("PLAINTEXT"));
    }
}

/// An answer recorded before a key was configured (plain JSON) is still served after.
#[tokio::test]
async fn an_answer_recorded_before_the_key_was_set_is_still_read() {
    let kit = Fixture::new("t");
    let before = idem(kit.store());
    let key = before.key("src", "evt-plain");
    let Claim::Acquired { token, .. } = before.claim(&key, &before.claimant()).await.unwrap()
    else {
        panic!()
    };
    let answer = Answer {
        text: "recorded in plain text".into(),
        ..Default::default()
    };
    let answering = uuid::Uuid::now_v7();
    assert!(before
        .complete(&key, token, &answer, answering)
        .await
        .unwrap());
    let after = idem(kit.store_with_keys(Some(K1), &[]));
    assert_eq!(
        after.claim(&key, &after.claimant()).await.unwrap(),
        Claim::Done {
            answer: Box::new(answer),
            by: Some(answering)
        }
    );
}
