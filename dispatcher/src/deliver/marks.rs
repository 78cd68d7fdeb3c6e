//! A job's two marks in Redis. `delivered:<job id>` says a receiver took the job (kept for
//! `dispatcher.delivered_ttl`), so a copy the broker redelivers is acked without posting again.
//! `delivering:<job id>` is a short lock, so that two dispatchers never post the same job at
//! once. Both are looked at, the lock taken and the target's breaker state read in one round
//! trip, by one script ([`Marks::enter`]); marking a job delivered and dropping its lock is one
//! more ([`Marks::mark_delivered`]). Concurrent jobs share those two round trips
//! (`shared::batch`): one script call enters every job queued, one pipeline marks every job
//! delivered, each job getting exactly the answer its own call would have got. What a Redis
//! error on each mark means is decided here and listed in the module notes of `crate::deliver`.
//! This module never delivers, parks or acks.
use crate::breaker::Reading;
use deadpool_redis::redis::{self, AsyncCommands};
use shared::batch::{Batcher, Limits, Round};
use shared::envelope::DispatchJob;
use shared::store::{Store, StoreError};
use std::sync::LazyLock;
use std::time::Duration;

/// Enters many jobs in order, as if each ran alone. Per job, three KEYS (its delivered mark,
/// its lock, its target's breaker state) and two ARGV (this attempt's lock token, the lock's
/// ttl in ms). A job delivered before: `{'delivered'}`, nothing taken. A lock held by another
/// (also an earlier copy in the same call): `{'busy'}`. Otherwise the lock is ours:
/// `{'held', seconds, microseconds, state}` (Redis' clock and the breaker's stored state, ''
/// when none, '?' when it is not a string), for [`crate::breaker::Breaker::gate_on`].
const ENTER: &str = r#"
local out, held = {}, {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = 3 * i, 2 * i
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then
    out[i + 1] = {'delivered'}
  elseif not redis.call('SET', KEYS[k + 2], ARGV[a + 1], 'NX', 'PX', ARGV[a + 2]) then
    out[i + 1] = {'busy'}
  else
    -- A breaker state that cannot be read (not a string) is this job's warning, not the batch's error.
    local state = redis.pcall('GET', KEYS[k + 3])
    if state == false then state = '' elseif type(state) ~= 'string' then state = '?' end
    out[i + 1] = {'held', '', '', state}
    held[#held + 1] = i + 1
  end
end
-- The clock after the writes, as Redis before 5 wants it in a script.
if #held > 0 then
  local t = redis.call('TIME')
  for _, i in ipairs(held) do out[i][2], out[i][3] = t[1], t[2] end
end
return out
"#;

/// KEYS[1] the lock; ARGV[1] a token. Deletes the lock only if it holds that token.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

static ENTER_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ENTER));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

/// One job's entry: its keys, this attempt's token and the lock's ttl.
struct EnterAsk {
    delivered: String,
    lock: String,
    breaker: String,
    token: String,
    ttl_ms: u64,
}

/// Jobs entered by one call of [`ENTER`].
struct Entering(Store);

impl Round for Entering {
    type Ask = EnterAsk;
    /// The script's words for the job.
    type Answer = Vec<String>;

    async fn run(&self, asks: Vec<EnterAsk>) -> Result<Vec<Vec<String>>, StoreError> {
        let mut call = ENTER_SCRIPT.prepare_invoke();
        for ask in &asks {
            call.key(&ask.delivered)
                .key(&ask.lock)
                .key(&ask.breaker)
                .arg(&ask.token)
                .arg(ask.ttl_ms);
        }
        let mut conn = self.0.conn().await?;
        Ok(call.invoke_async(&mut conn).await?)
    }
}

/// One delivered job: its mark, its lock, how long the mark stays (seconds).
struct DoneAsk {
    delivered: String,
    lock: String,
    ttl_secs: u64,
}

/// Jobs marked delivered (and unlocked) by one pipeline.
struct Marking(Store);

impl Round for Marking {
    type Ask = DoneAsk;
    type Answer = ();

    async fn run(&self, asks: Vec<DoneAsk>) -> Result<Vec<()>, StoreError> {
        let mut pipe = redis::pipe();
        for ask in &asks {
            pipe.cmd("SET")
                .arg(&ask.delivered)
                .arg("1")
                .arg("EX")
                .arg(ask.ttl_secs)
                .cmd("DEL")
                .arg(&ask.lock);
        }
        let mut conn = self.0.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(vec![(); asks.len()])
    }
}

/// The dispatcher's two shared round trips for marks, and its store.
pub(super) struct MarkRounds {
    store: Store,
    entering: Batcher<Entering>,
    marking: Batcher<Marking>,
}

impl MarkRounds {
    pub(super) fn new(store: Store) -> Self {
        Self {
            entering: Batcher::new(Entering(store.clone()), Limits::default()),
            marking: Batcher::new(Marking(store.clone()), Limits::default()),
            store,
        }
    }
}

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
    rounds: &'a MarkRounds,
    delivered: String,
    lock: String,
}

impl<'a> Marks<'a> {
    pub(super) fn of(rounds: &'a MarkRounds, job: &DispatchJob) -> Self {
        Self::of_id(rounds, &job.id.to_string())
    }

    fn of_id(rounds: &'a MarkRounds, id: &str) -> Self {
        let store = &rounds.store;
        Self {
            rounds,
            delivered: store.key(&["delivered", id]),
            lock: store.key(&["delivering", id]),
        }
    }

    /// Was the job delivered before? If not, takes its lock for `ttl` (with `token`, this
    /// attempt's own) and reads the breaker state at `breaker_key`: one round trip, shared with
    /// the jobs entering at the same time. An error means Redis could not say whether the job
    /// was delivered (see [`Marks::release`] for a lock the script may have taken all the same).
    pub(super) async fn enter(
        &self,
        breaker_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Entry, StoreError> {
        let ask = EnterAsk {
            delivered: self.delivered.clone(),
            lock: self.lock.clone(),
            breaker: breaker_key.to_owned(),
            token: token.to_owned(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
        };
        let reply = self.rounds.entering.ask(ask).await?;
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
        if let Ok(mut conn) = self.rounds.store.conn().await {
            let _: Result<i64, _> = RELEASE_SCRIPT
                .key(&self.lock)
                .arg(token)
                .invoke_async(&mut conn)
                .await;
        }
    }

    /// Marks the job delivered for `ttl` and releases its lock, in one round trip shared with
    /// the jobs delivered at the same time.
    pub(super) async fn mark_delivered(&self, ttl: Duration) -> Result<(), StoreError> {
        let ask = DoneAsk {
            delivered: self.delivered.clone(),
            lock: self.lock.clone(),
            ttl_secs: ttl.as_secs().max(1),
        };
        self.rounds.marking.ask(ask).await
    }

    /// Releases the job's lock; if Redis cannot, the lock lapses after its ttl.
    pub(super) async fn unlock(&self) {
        if let Ok(mut conn) = self.rounds.store.conn().await {
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
        let rounds = MarkRounds::new(store.clone());
        let marks = Marks::of_id(&rounds, "job-1");
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

    /// Jobs entering (and marked delivered) at the same time share one round trip each, and
    /// every job gets what it would have got alone: a delivered job is delivered, of two copies
    /// of one job the first holds the lock and the second is busy, the rest hold their own.
    #[tokio::test]
    async fn concurrent_jobs_share_a_round_trip_and_each_gets_its_own_entry() {
        let kit = testkit::Fixture::new("marks-batch");
        let store = kit.store();
        let rounds = MarkRounds::new(store.clone());
        let breaker = store.key(&["breaker", "crm"]);
        let ttl = Duration::from_secs(30);
        let before = Marks::of_id(&rounds, "job-5");
        assert!(matches!(
            before.enter(&breaker, "t", ttl).await.unwrap(),
            Entry::Held(_)
        ));
        before.mark_delivered(ttl).await.unwrap();

        // Job 7 twice: a broker's redelivery arriving beside the first copy.
        let ids: Vec<String> = (0..20)
            .map(|i| format!("job-{i}"))
            .chain(["job-7".to_owned()])
            .collect();
        let marks: Vec<Marks<'_>> = ids.iter().map(|id| Marks::of_id(&rounds, id)).collect();
        let trips = store.round_trips();
        // On this current-thread runtime every entry is queued before the batching task runs.
        let entries = futures_util::future::join_all(
            marks
                .iter()
                .enumerate()
                .map(|(i, m)| m.enter(&breaker, ["a", "b"][usize::from(i == 20)], ttl)),
        )
        .await;
        assert_eq!(store.round_trips() - trips, 1, "one round trip for all");
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref().unwrap();
            match i {
                5 => assert_eq!(entry, &Entry::Delivered),
                20 => assert_eq!(entry, &Entry::Busy, "the second copy of job 7"),
                _ => assert!(
                    matches!(entry, Entry::Held(r) if r.clean()),
                    "{i}: {entry:?}"
                ),
            }
        }
        let mut conn = store.conn().await.unwrap();
        let holder: String = conn.get(&marks[7].lock).await.unwrap();
        assert_eq!(holder, "a", "the lock is the first copy's");

        let held: Vec<&Marks<'_>> = (0..20).filter(|i| *i != 5).map(|i| &marks[i]).collect();
        let trips = store.round_trips();
        let marked =
            futures_util::future::join_all(held.iter().map(|m| m.mark_delivered(ttl))).await;
        assert!(marked.iter().all(Result::is_ok), "{marked:?}");
        assert_eq!(store.round_trips() - trips, 1, "one round trip for all");
        for m in &held {
            assert_eq!(m.enter(&breaker, "c", ttl).await.unwrap(), Entry::Delivered);
            let locked: bool = conn.exists(&m.lock).await.unwrap();
            assert!(!locked, "delivered and unlocked");
        }
    }
}
