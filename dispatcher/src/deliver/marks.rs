//! A job's two marks in Redis. `delivered:<job id>` says a receiver took the job (kept for
//! `dispatcher.delivered_ttl`), so a copy the broker redelivers is acked without posting again.
//! `delivering:<job id>` is a short lock, so that two dispatchers never post the same job at
//! once. Both are looked at, the lock taken and the target's breaker state read in one round
//! trip, by one script ([`Marks::enter`]). What a Redis error on each mark means is decided here
//! and listed in the module notes of `crate::deliver`. This module never delivers, parks or acks.
use crate::breaker::Reading;
use deadpool_redis::redis::{self, AsyncCommands};
use shared::envelope::DispatchJob;
use shared::store::{Store, StoreError};
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS[1] the delivered mark, KEYS[2] the lock, KEYS[3] the target's breaker state; ARGV[1]
/// this attempt's lock token, ARGV[2] the lock's ttl in ms. A job delivered before: `{'delivered'}`,
/// nothing taken. A lock held by another: `{'busy'}`. Otherwise the lock is ours:
/// `{'held', seconds, microseconds, state}` (Redis' clock and the breaker's stored state, '' when
/// none), for [`crate::breaker::Breaker::gate_on`].
const ENTER: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'delivered'} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'busy'} end
local t = redis.call('TIME')
return {'held', t[1], t[2], redis.call('GET', KEYS[3]) or ''}
"#;

/// KEYS[1] the lock; ARGV[1] a token. Deletes the lock only if it holds that token.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

static ENTER_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ENTER));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

/// What the job's marks say when it comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// A receiver took the job before: ack it without posting.
    Delivered,
    /// Another dispatcher is posting this job right now.
    Busy,
    /// The lock is ours; the target's breaker as it stands.
    Held(Reading),
}

impl Entry {
    /// The script's answer (pure); `None` when it is not one of the three.
    fn from_reply(reply: &[String], breaker_key: &str) -> Option<Entry> {
        match reply {
            [word] if word == "delivered" => Some(Entry::Delivered),
            [word] if word == "busy" => Some(Entry::Busy),
            [word, secs, micros, state] if word == "held" => Some(Entry::Held(Reading::of(
                secs.parse().ok()?,
                micros.parse().ok()?,
                state,
                breaker_key,
            ))),
            _ => None,
        }
    }
}

/// The marks of one job.
pub(super) struct Marks<'a> {
    store: &'a Store,
    delivered: String,
    lock: String,
}

impl<'a> Marks<'a> {
    pub(super) fn of(store: &'a Store, job: &DispatchJob) -> Self {
        Self::of_id(store, &job.id.to_string())
    }

    fn of_id(store: &'a Store, id: &str) -> Self {
        Self {
            store,
            delivered: store.key(&["delivered", id]),
            lock: store.key(&["delivering", id]),
        }
    }

    /// Was the job delivered before? If not, takes its lock for `ttl` (with `token`, this
    /// attempt's own) and reads the breaker state at `breaker_key`: one round trip. An error means
    /// Redis could not say whether the job was delivered (see [`Marks::release`] for a lock the
    /// script may have taken all the same).
    pub(super) async fn enter(
        &self,
        breaker_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Entry, StoreError> {
        let mut conn = self.store.conn().await?;
        let reply: Vec<String> = ENTER_SCRIPT
            .key(&self.delivered)
            .key(&self.lock)
            .key(breaker_key)
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?;
        Entry::from_reply(&reply, breaker_key).ok_or_else(|| {
            StoreError::from(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected answer from the job's entry script",
            )))
        })
    }

    /// Releases the lock if it still holds `token`: after [`Marks::enter`] failed, the script may
    /// have run and only its answer been lost, and the job, parked, must not find its own lock
    /// when it comes back. Best effort: a lock not released lapses after its ttl.
    pub(super) async fn release(&self, token: &str) {
        if let Ok(mut conn) = self.store.conn().await {
            let _: Result<i64, _> = RELEASE_SCRIPT
                .key(&self.lock)
                .arg(token)
                .invoke_async(&mut conn)
                .await;
        }
    }

    /// Marks the job delivered for `ttl` and releases its lock, in one round trip.
    pub(super) async fn mark_delivered(&self, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.store.conn().await?;
        redis::pipe()
            .cmd("SET")
            .arg(&self.delivered)
            .arg("1")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .ignore()
            .cmd("DEL")
            .arg(&self.lock)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Releases the job's lock; if Redis cannot, the lock lapses after its ttl.
    pub(super) async fn unlock(&self) {
        if let Ok(mut conn) = self.store.conn().await {
            let _: Result<(), _> = conn.del(&self.lock).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::breaker::State;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn entry_replies_table() {
        let failing = State::Closed {
            failures: 2,
            since_ms: 1_000,
        };
        let cases = [
            (words(&["delivered"]), Some(Entry::Delivered)),
            (words(&["busy"]), Some(Entry::Busy)),
            (
                words(&["held", "1700000000", "250999", ""]),
                Some(Entry::Held(Reading {
                    now_ms: 1_700_000_000_250,
                    state: State::HEALTHY,
                })),
            ),
            (
                words(&["held", "2", "0", "c:2:1000"]),
                Some(Entry::Held(Reading {
                    now_ms: 2_000,
                    state: failing,
                })),
            ),
            (words(&["held", "x", "0", ""]), None),
            (words(&["held"]), None),
            (words(&[]), None),
        ];
        for (reply, want) in cases {
            assert_eq!(Entry::from_reply(&reply, "k"), want, "{reply:?}");
        }
    }

    /// Against Redis: a job enters once at a time, a delivered one not at all, and the breaker's
    /// state comes with the lock.
    #[tokio::test]
    async fn a_job_enters_once_at_a_time_and_a_delivered_one_not_at_all() {
        let kit = testkit::Fixture::new("marks");
        let store = kit.store();
        let marks = Marks::of_id(&store, "job-1");
        let breaker = store.key(&["breaker", "crm"]);
        let ttl = Duration::from_secs(30);
        let Entry::Held(first) = marks.enter(&breaker, "a", ttl).await.unwrap() else {
            panic!("the first copy takes the lock");
        };
        assert!(first.clean(), "{first:?}");
        // A second copy while the first is posting waits.
        assert_eq!(marks.enter(&breaker, "b", ttl).await.unwrap(), Entry::Busy);
        // Only the token that took the lock releases it.
        marks.release("b").await;
        assert_eq!(marks.enter(&breaker, "c", ttl).await.unwrap(), Entry::Busy);
        marks.release("a").await;
        // A breaker with failures is read as it is, not as clean.
        let mut conn = store.conn().await.unwrap();
        let _: () = conn.set(&breaker, "c:2:1000").await.unwrap();
        let Entry::Held(failing) = marks.enter(&breaker, "d", ttl).await.unwrap() else {
            panic!("the lock was free");
        };
        assert_eq!(
            failing.state,
            State::Closed {
                failures: 2,
                since_ms: 1_000
            }
        );
        assert!(!failing.clean());
        // Delivered: every later copy is acked without posting, and takes no lock.
        marks.mark_delivered(ttl).await.unwrap();
        assert_eq!(
            marks.enter(&breaker, "e", ttl).await.unwrap(),
            Entry::Delivered
        );
        let locked: bool = conn.exists(&marks.lock).await.unwrap();
        assert!(!locked);
    }
}
