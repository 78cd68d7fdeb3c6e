//! An event's hold against the real Redis (issue 18): the claim with its conversation's turn
//! and the conversation's id in one script, the answer with the conversation id and the turn's
//! end in another; a conversation answers one event at a time and the next continues its
//! conversation; a hold given back frees the event and the turn; a claim whose reply was really
//! lost (a response timeout while Redis was busy) is given back at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use shared::config::{GroupConversation, RedisConfig};
use shared::envelope::{Answer, ChatType, Conversation};
use shared::store::Store;
use std::time::{Duration, Instant};
use testkit::Fixture;
use uuid::Uuid;
use worker::conversation::{conversation_of, ConversationKey, Conversations};
use worker::hold::{Begun, Held, Holds};
use worker::idempotency::{Claim, Idempotency};

const LEASE: Duration = Duration::from_secs(30);

fn holds_of(store: &Store, owner: &str) -> (Idempotency, Holds) {
    let idem = Idempotency::new(store.clone(), owner.into(), LEASE, Duration::from_secs(60));
    let conversations = Conversations::new(store.clone(), Duration::from_secs(60));
    let holds = Holds::new(idem.clone(), &conversations);
    (idem, holds)
}

fn conv(store: &Store, sender: &str) -> ConversationKey {
    let c = Conversation {
        chat_id: "c1".into(),
        chat_type: ChatType::Single,
        sender_id: sender.into(),
        sender_name: None,
        thread_id: None,
    };
    conversation_of("src", &c, GroupConversation::Shared, store)
}

/// Begins `dedup` in `conv`: the hold if acquired, with the conversation id read.
async fn begin(
    idem: &Idempotency,
    holds: &Holds,
    dedup: &str,
    conv: &ConversationKey,
) -> (Begun, Option<Held>) {
    let key = idem.key("src", dedup);
    let claimant = idem.claimant();
    let begun = holds.begin(&key, conv, &claimant).await.unwrap();
    let held = match begun.claim {
        Claim::Acquired { token, .. } => Some(Held {
            key,
            token,
            claimant,
            event_id: Uuid::now_v7(),
            conv: conv.clone(),
        }),
        _ => None,
    };
    (begun, held)
}

async fn exists(store: &Store, key: &str) -> bool {
    let mut c = store.conn().await.unwrap();
    let n: i64 = deadpool_redis::redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    n == 1
}

#[tokio::test]
async fn a_conversation_answers_one_event_at_a_time_and_the_next_continues_it() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(4);
    let (idem, holds) = holds_of(&s, "w");
    let ada = conv(&s, "ada");
    let (first, held) = begin(&idem, &holds, "m-1", &ada).await;
    assert_eq!(first.conversation_id, None, "a new conversation");
    let held = held.expect("the first message is claimed with its turn");

    let (second, none) = begin(&idem, &holds, "m-2", &ada).await;
    let Claim::Busy(wait) = second.claim else {
        panic!("{second:?}")
    };
    assert!(wait <= LEASE && wait > LEASE / 2, "{wait:?}");
    assert!(none.is_none());
    assert!(
        !exists(&s, &idem.key("src", "m-2")).await,
        "a busy conversation takes nothing of the second event"
    );
    let (other, _) = begin(&idem, &holds, "m-3", &conv(&s, "bob")).await;
    assert!(
        matches!(other.claim, Claim::Acquired { .. }),
        "other conversations go on"
    );

    let answer = Answer {
        text: "hello Ada".into(),
        conversation_id: Some("dify-conv-1".into()),
        ..Default::default()
    };
    assert!(holds.finish(&held, &answer).await.unwrap());
    let (second, _) = begin(&idem, &holds, "m-2", &ada).await;
    assert!(matches!(second.claim, Claim::Acquired { .. }), "{second:?}");
    assert_eq!(
        second.conversation_id.as_deref(),
        Some("dify-conv-1"),
        "the next message continues the first's conversation"
    );
    let (again, _) = begin(&idem, &holds, "m-1", &conv(&s, "carol")).await;
    assert!(
        matches!(again.claim, Claim::Done { ref answer, .. } if answer.text == "hello Ada"),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_hold_given_back_frees_the_event_and_the_turn() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(4);
    let (idem, holds) = holds_of(&s, "w");
    let ada = conv(&s, "ada");
    let (_, held) = begin(&idem, &holds, "m-1", &ada).await;
    let held = held.unwrap();
    assert!(holds.let_go(&held, false).await.unwrap());
    assert!(!exists(&s, &ada.turn).await);
    let (next, _) = begin(&idem, &holds, "m-2", &ada).await;
    assert!(matches!(next.claim, Claim::Acquired { .. }));
    // The given-back event waits for the turn like any other, then is claimed afresh.
    let (back, _) = begin(&idem, &holds, "m-1", &ada).await;
    assert!(matches!(back.claim, Claim::Busy(_)), "{back:?}");
    // A stale hold (given back already) frees nothing of the new holder's.
    assert!(!holds.let_go(&held, true).await.unwrap());
    assert!(exists(&s, &ada.turn).await);
}

/// A begin whose reply is lost for real: its connection waits behind a `BLPOP` of 0.5 s while
/// the store waits 100 ms for a reply. Redis runs the claim after the `BLPOP`, then the
/// give-back the worker sent on the same connection: the event and the turn are free at once,
/// not held for the lease.
#[tokio::test]
async fn a_begin_whose_reply_was_lost_leaves_the_event_and_the_turn_free() {
    let kit = Fixture::new("t");
    let s = kit.store_with_pool(4);
    let (idem, holds) = holds_of(&s, "w");
    // Redis learns the scripts first (a script it does not know would not run at all).
    let (_, warm) = begin(&idem, &holds, "warm-up", &conv(&s, "warm")).await;
    holds.let_go(&warm.unwrap(), false).await.unwrap();

    let impatient = Store::new(&RedisConfig {
        url: shared::Secret::new(testkit::REDIS_URL),
        prefix: kit.prefix().into(),
        pool_size: 1,
        response_timeout: Duration::from_millis(100),
        sentinel: None,
        encryption_key: None,
        previous_encryption_keys: Vec::new(),
    })
    .unwrap();
    assert!(impatient.ping().await);
    let (lost_idem, lost_holds) = holds_of(&impatient, "impatient");
    let ada = conv(&s, "ada");
    let key = idem.key("src", "m-lost");
    let mut blocked = impatient.conn().await.unwrap();
    let mut blpop = deadpool_redis::redis::cmd("BLPOP");
    blpop
        .arg(kit.prefix().to_owned() + ":nobody-pushes")
        .arg(0.5);
    let busy = blpop.query_async::<Option<(String, String)>>(&mut blocked);
    let claimant = lost_idem.claimant();
    let (_, begun) =
        futures_util::future::join(busy, lost_holds.begin(&key, &ada, &claimant)).await;
    let lost = begun.unwrap_err();
    assert!(
        matches!(&lost, shared::store::StoreError::Redis(e) if e.is_timeout()),
        "{lost}"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = s.conn().await.unwrap();
        let state: Option<String> = deadpool_redis::redis::cmd("HGET")
            .arg(&key)
            .arg("state")
            .query_async(&mut c)
            .await
            .unwrap();
        if state.as_deref() == Some("free") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost claim was not given back: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!exists(&s, &ada.turn).await, "nor its turn");
    let (now, _) = begin(&idem, &holds, "m-lost", &ada).await;
    assert!(
        matches!(now.claim, Claim::Acquired { takeovers: 0, .. }),
        "{now:?}"
    );
}
