//! What the scheduler processes share in Redis, per schedule: one key per tick (`claimed by
//! <owner>` for `claim_lease`, then `fired` for a week), the cursor (when some process last
//! looked, so downtime can be measured and caught up by exactly one process), the first start
//! (`since`: ticks before it are not this deployment's), and the last run with its outcome.
//! A tick is published only by the process whose `SET NX` claimed it; a claimer that dies
//! before publishing lets its claim lapse and another process fires the tick.
use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands, Script};
use serde_json::json;
use shared::store::{Store, StoreError};
use std::time::Duration;

/// How long a fired tick is remembered.
const FIRED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

// KEYS[1] cursor. ARGV: expected ('' for none), new. Moves the cursor only from what the caller
// saw: of processes racing after downtime, one wins the missed ticks.
const MOVE_CURSOR: &str = r"
local c = redis.call('GET', KEYS[1])
if (c == false and ARGV[1] == '') or c == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// The Redis side of the schedules.
#[derive(Clone, Debug)]
pub struct Claims {
    store: Store,
    owner: String,
}

/// The last run of a schedule, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastRun {
    pub tick: String,
    pub at: String,
    pub trigger: String,
    pub event_id: String,
    pub dedup_key: String,
}

impl Claims {
    pub fn new(store: Store, owner: String) -> Self {
        Self { store, owner }
    }

    fn key(&self, schedule: &str, what: &str) -> String {
        self.store.key(&["schedule", schedule, what])
    }

    fn tick_key(&self, schedule: &str, tick: DateTime<Utc>) -> String {
        self.store.key(&[
            "schedule",
            schedule,
            "tick",
            &tick.timestamp_millis().to_string(),
        ])
    }

    /// The first start of the schedule (set now if it had none).
    pub async fn since(
        &self,
        schedule: &str,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut c = self.store.conn().await?;
        let key = self.key(schedule, "since");
        let _: bool = c.set_nx(&key, now.timestamp_millis()).await?;
        let ms: i64 = c.get(&key).await?;
        Ok(DateTime::from_timestamp_millis(ms).unwrap_or(now))
    }

    /// The cursor as stored (raw, for [`Claims::move_cursor`]) and as a time.
    pub async fn cursor(
        &self,
        schedule: &str,
    ) -> Result<(String, Option<DateTime<Utc>>), StoreError> {
        let mut c = self.store.conn().await?;
        let raw: Option<String> = c.get(self.key(schedule, "cursor")).await?;
        let at = raw
            .as_deref()
            .and_then(|s| s.parse().ok())
            .and_then(DateTime::from_timestamp_millis);
        Ok((raw.unwrap_or_default(), at))
    }

    /// Moves the cursor from `seen` to `now`; false if another process moved it first.
    pub async fn move_cursor(
        &self,
        schedule: &str,
        seen: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut c = self.store.conn().await?;
        let moved: i64 = Script::new(MOVE_CURSOR)
            .key(self.key(schedule, "cursor"))
            .arg(seen)
            .arg(now.timestamp_millis())
            .invoke_async(&mut c)
            .await?;
        Ok(moved == 1)
    }

    /// Which of `ticks` no process has claimed or fired.
    pub async fn open(
        &self,
        schedule: &str,
        ticks: &[DateTime<Utc>],
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        if ticks.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.store.conn().await?;
        let keys: Vec<String> = ticks.iter().map(|t| self.tick_key(schedule, *t)).collect();
        let states: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        Ok(ticks
            .iter()
            .zip(states)
            .filter(|(_, s)| s.is_none())
            .map(|(t, _)| *t)
            .collect())
    }

    /// Claims a tick for `lease`; false if another process has it.
    pub async fn claim(
        &self,
        schedule: &str,
        tick: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.store.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.tick_key(schedule, tick))
            .arg(format!("claimed by {}", self.owner))
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    /// Marks a claimed tick fired.
    pub async fn fired(&self, schedule: &str, tick: DateTime<Utc>) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: () = c
            .set_ex(self.tick_key(schedule, tick), "fired", FIRED_TTL.as_secs())
            .await?;
        Ok(())
    }

    /// Gives a claim back (the publish failed): another pass may fire the tick.
    pub async fn release(&self, schedule: &str, tick: DateTime<Utc>) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: i64 = c.del(self.tick_key(schedule, tick)).await?;
        Ok(())
    }

    pub async fn record_last(&self, schedule: &str, run: &LastRun) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: () = c
            .set(self.key(schedule, "last"), json!(run).to_string())
            .await?;
        Ok(())
    }

    pub async fn last(&self, schedule: &str) -> Result<Option<LastRun>, StoreError> {
        let mut c = self.store.conn().await?;
        let raw: Option<String> = c.get(self.key(schedule, "last")).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// What the worker made of an event so far, from its idempotency record: `answered`,
    /// `running`, `retrying`, or `queued` (no record yet, or expired).
    pub async fn outcome(
        &self,
        schedule: &str,
        dedup_key: &str,
    ) -> Result<&'static str, StoreError> {
        let mut c = self.store.conn().await?;
        let state: Option<String> = c
            .hget(self.store.key(&["idem", schedule, dedup_key]), "state")
            .await?;
        Ok(match state.as_deref() {
            Some("done") => "answered",
            Some("leased") => "running",
            Some(_) => "retrying",
            None => "queued",
        })
    }

    /// Every key of a schedule (tests clean up with it).
    pub fn pattern(&self, schedule: &str) -> String {
        self.key(schedule, "*")
    }
}
