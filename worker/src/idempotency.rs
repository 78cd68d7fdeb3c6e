//! The once-per-event record in Redis. One hash per event (source + the platform's dedup key)
//! holds a lease (owner, fencing token, expiry) while a worker calls Dify, the Dify ids as soon as
//! a stream reveals them (so a worker taking over can recover the run instead of repeating it),
//! and finally the answer with the id of the event it answered, kept for `answer_ttl` so a
//! redelivered or replayed event is answered from the record (and a second copy of the platform
//! event, kept under another event id, is recognised as one). Every transition is one Lua script, so two workers racing for one event
//! cannot both win, and a worker whose lease was taken over cannot overwrite the new owner.
//!
//! A claim carries a token the worker made for it (the lease's `owner`): when a claim's reply is
//! lost (a response timeout, a broken connection), Redis may have run it, and the worker gives
//! back whatever that claim took by the same token ([`Idempotency::release_lost`], a
//! compare-and-delete) instead of finding its own lease held for a whole `lease`.
//! The transitions are Lua functions (`RECORD_LUA`) that `crate::hold` also runs together
//! with the conversation's turn.
use deadpool_redis::redis::{self, Script};
use serde::{Deserialize, Serialize};
use shared::envelope::Answer;
use shared::store::{Store, StoreError};
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

/// Dify's ids for a run, recorded as they become known (mirrors the Dify client's ids).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunIds {
    pub task_id: Option<String>,
    pub message_id: Option<String>,
    pub conversation_id: Option<String>,
    pub workflow_run_id: Option<String>,
    /// The Dify `user` the run was made for (needed to look it up).
    pub user: Option<String>,
    /// When the run started, ms since the epoch (resume gives up after the app's timeout).
    pub started_ms: Option<i64>,
}

impl RunIds {
    /// Whether anything identifies a run that Dify could be asked about.
    pub fn identifies_run(&self) -> bool {
        self.message_id.is_some() || self.workflow_run_id.is_some()
    }
}

/// What a worker may do with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The answer is recorded: dispatch it, don't call Dify. `by` is the event id it was
    /// recorded for (`None` in a record written before versions kept it).
    Done {
        answer: Box<Answer>,
        by: Option<Uuid>,
    },
    /// An answer is recorded but does not open (encrypted with a key this process does not
    /// hold, or changed): why, in words without the answer.
    Unreadable(String),
    /// Another live worker holds the lease; come back after this long.
    Held(Duration),
    /// The event is free, but its conversation's turn is another event's for this long; nothing
    /// was taken (only a claim with its turn, `crate::hold`, says this).
    Busy(Duration),
    /// This worker holds the lease with `token`. `previous` holds the ids an earlier owner
    /// recorded (it died mid-call, or gave the claim back before calling): recover before
    /// calling again.
    /// `takeovers` counts the workers that died holding this event (their leases lapsed).
    Acquired {
        token: i64,
        previous: Option<RunIds>,
        takeovers: u32,
    },
}

/// The idempotency records of one worker process.
#[derive(Clone, Debug)]
pub struct Idempotency {
    store: Store,
    owner: String,
    lease: Duration,
    ttl: Duration,
}

/// The record's transitions as Lua functions, for the scripts here and in `crate::hold` (which
/// runs them with the conversation's turn in one script). Redis's clock decides leases, so
/// that workers with skewed clocks agree on expiry. `claimant` is the token the worker made for
/// one claim (stored as the record's `owner`); `token` is the record's fencing counter.
pub(crate) const RECORD_LUA: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- What stops a claim: {'done', answer, event} or {'held', ms}; nil if the event may be claimed.
-- Also the fields a claim needs.
local function look(record, now)
  local f = redis.call('HMGET', record, 'state', 'lease_until', 'takeovers', 'ids', 'token')
  if f[1] == 'done' then
    local d = redis.call('HMGET', record, 'answer', 'event')
    return {'done', d[1] or '', d[2] or ''}, f
  end
  if f[1] == 'leased' then
    local until_ms = tonumber(f[2] or '0')
    -- A live lease excludes every other claim, also one from the same process: two copies of
    -- an event handled at once by one worker must not both call Dify.
    if until_ms > now then
      return {'held', tostring(until_ms - now)}, f
    end
  end
  return nil, f
end

-- Claims the record `look` let through (its fields `f`) for `claimant`.
local function acquire(record, f, now, claimant, lease_ms, ttl_ms)
  local takeovers = tonumber(f[3] or '0')
  if f[1] == 'leased' then
    -- The lease lapsed with its owner still holding it: that worker died answering this event.
    takeovers = takeovers + 1
  end
  local token = tonumber(f[5] or '0') + 1
  -- Ids a previous owner recorded stay until a new call records its own (or a failed call
  -- clears them): a claim given back before calling must not lose them.
  redis.call('HSET', record, 'state', 'leased', 'owner', claimant, 'token', tostring(token),
    'takeovers', tostring(takeovers), 'lease_until', tostring(now + tonumber(lease_ms)))
  redis.call('PEXPIRE', record, ttl_ms)
  return {'acquired', tostring(token), f[4] or '', tostring(takeovers)}
end

-- Claims the record for `claimant` unless it is answered or leased, or `gate` (if any) returns
-- what stops the claim.
local function claim(record, claimant, lease_ms, ttl_ms, gate)
  local now = now_ms()
  local seen, f = look(record, now)
  if seen then
    return seen
  end
  local stop = gate and gate()
  if stop then
    return stop
  end
  return acquire(record, f, now, claimant, lease_ms, ttl_ms)
end

-- Whether the lease is still the one `token` fenced.
local function holds(record, token)
  local f = redis.call('HMGET', record, 'state', 'token')
  return f[1] == 'leased' and f[2] == token
end

-- Records the answer, and the event it answered, if `token` still holds the lease.
local function complete(record, token, answer, ttl_ms, event)
  if not holds(record, token) then
    return 0
  end
  redis.call('HSET', record, 'state', 'done', 'answer', answer, 'event', event)
  redis.call('HDEL', record, 'owner', 'lease_until', 'ids')
  redis.call('PEXPIRE', record, ttl_ms)
  return 1
end

-- Gives the lease back if its `field` ('token', or 'owner': the claimant) is `value`. `clear`
-- ('1' after a failed call, or an event given up) also drops the run's ids and the deaths
-- counted: the next claim starts afresh.
local function give_back(record, field, value, clear)
  local f = redis.call('HMGET', record, 'state', field)
  if f[1] ~= 'leased' or f[2] ~= value then
    return 0
  end
  redis.call('HSET', record, 'state', 'free')
  redis.call('HDEL', record, 'owner', 'lease_until')
  if clear == '1' then
    redis.call('HDEL', record, 'ids', 'takeovers')
  end
  return 1
end
"#;

/// A script made of [`RECORD_LUA`] (and any other functions) and a body; hashed once.
pub(crate) fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

// KEYS[1] record. ARGV: claimant, lease_ms, ttl_ms.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        "return claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])",
    ])
});

// KEYS[1]. ARGV: token, lease_ms. Extends the lease if we still hold it.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        r#"
if not holds(KEYS[1], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_until', tostring(now_ms() + tonumber(ARGV[2])))
return 1
"#,
    ])
});

// KEYS[1]. ARGV: token, ids json. Records Dify's ids under our lease.
static RECORD_IDS: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        r#"
if not holds(KEYS[1], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'ids', ARGV[2])
return 1
"#,
    ])
});

// KEYS[1]. ARGV: token, answer json, ttl_ms, event id.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        "return complete(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])",
    ])
});

// KEYS[1]. ARGV: 'token' or 'owner', its value, clear.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        "return give_back(KEYS[1], ARGV[1], ARGV[2], ARGV[3])",
    ])
});

impl Idempotency {
    /// `owner` names this process (unique per process start).
    pub fn new(store: Store, owner: String, lease: Duration, ttl: Duration) -> Self {
        Self {
            store,
            owner,
            lease,
            ttl,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How long a recorded answer is kept.
    pub fn answer_ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// A new token for one claim: this process's name and a fresh id, so no other claim, in
    /// this process or another, ever makes the same.
    pub fn claimant(&self) -> String {
        format!("{}/{}", self.owner, Uuid::now_v7().simple())
    }

    /// The record's key for an event of `source` with the platform's `dedup_key`.
    pub fn key(&self, source: &str, dedup_key: &str) -> String {
        self.store.key(&["idem", source, dedup_key])
    }

    /// Claims the event for `claimant` (made by [`Idempotency::claimant`]): if the reply is
    /// lost, [`Idempotency::release_lost`] with the same claimant gives back what Redis took.
    pub async fn claim(&self, key: &str, claimant: &str) -> Result<Claim, StoreError> {
        let mut conn = self.store.conn().await?;
        let reply: Vec<String> = CLAIM
            .key(key)
            .arg(claimant)
            .arg(self.lease.as_millis() as u64)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(self.parse_claim(key, &reply))
    }

    /// Reads a claim's reply, opening a recorded answer with the store's keys.
    pub(crate) fn parse_claim(&self, key: &str, reply: &[String]) -> Claim {
        parse_claim(reply, |stored| {
            self.store
                .vault()
                .open(key, stored)
                .map(|a| a.into_owned())
                .map_err(|e| e.to_string())
        })
    }

    /// Extends our lease; false if it was lost (taken over after it lapsed).
    pub async fn renew(&self, key: &str, token: i64) -> Result<bool, StoreError> {
        let lease = (self.lease.as_millis() as u64).to_string();
        self.fenced(&RENEW, key, &[&token.to_string(), &lease])
            .await
    }

    pub async fn record_ids(
        &self,
        key: &str,
        token: i64,
        ids: &RunIds,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(ids).unwrap_or_default();
        self.fenced(&RECORD_IDS, key, &[&token.to_string(), &json])
            .await
    }

    /// The answer as the record keeps it: JSON, encrypted when a key is configured (the
    /// answer is the customer's words).
    pub(crate) fn sealed(&self, key: &str, answer: &Answer) -> String {
        let json = serde_json::to_string(answer).unwrap_or_default();
        self.store.vault().seal(key, &json)
    }

    /// Records the answer to the event `event_id`; false if the lease was lost (the new owner
    /// will dispatch).
    pub async fn complete(
        &self,
        key: &str,
        token: i64,
        answer: &Answer,
        event_id: Uuid,
    ) -> Result<bool, StoreError> {
        let ttl = (self.ttl.as_millis() as u64).to_string();
        let args = [
            &token.to_string(),
            &self.sealed(key, answer),
            &ttl,
            &event_id.to_string(),
        ];
        self.fenced(&COMPLETE, key, &args.map(String::as_str)).await
    }

    /// Gives the claim back before calling Dify: ids a previous owner recorded are kept for
    /// the next claim to recover.
    pub async fn release(&self, key: &str, token: i64) -> Result<bool, StoreError> {
        let token = token.to_string();
        self.fenced(&GIVE_BACK, key, &["token", &token, "0"]).await
    }

    /// Gives the claim back after a failed call: that run's ids are cleared.
    pub async fn release_failed(&self, key: &str, token: i64) -> Result<bool, StoreError> {
        let token = token.to_string();
        self.fenced(&GIVE_BACK, key, &["token", &token, "1"]).await
    }

    /// Gives back the claim `claimant` made, if it holds the lease: for a claim whose reply was
    /// lost (Redis may or may not have run it). False if it does not (the claim did not run,
    /// found the event held or answered, or someone else's claim holds it now).
    pub async fn release_lost(&self, key: &str, claimant: &str) -> Result<bool, StoreError> {
        self.fenced(&GIVE_BACK, key, &["owner", claimant, "0"])
            .await
    }

    /// Runs one of the record's scripts on `key` with `args`; whether it did its work.
    async fn fenced(&self, script: &Script, key: &str, args: &[&str]) -> Result<bool, StoreError> {
        let mut conn = self.store.conn().await?;
        let mut inv = script.prepare_invoke();
        inv.key(key);
        for a in args {
            inv.arg(*a);
        }
        let ok: i64 = inv.invoke_async(&mut conn).await?;
        Ok(ok == 1)
    }
}

/// Reads the acquire script's reply (pure); `open` turns the stored answer into its JSON.
fn parse_claim(reply: &[String], open: impl Fn(&str) -> Result<String, String>) -> Claim {
    match reply.first().map(String::as_str) {
        Some("done") => {
            let stored = reply.get(1).map(String::as_str).unwrap_or_default();
            let by = reply.get(2).and_then(|e| Uuid::parse_str(e).ok());
            match open(stored).and_then(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| format!("the recorded answer is not an answer: {e}"))
            }) {
                Ok(answer) => Claim::Done {
                    answer: Box::new(answer),
                    by,
                },
                Err(why) => Claim::Unreadable(why),
            }
        }
        Some(wait @ ("held" | "busy")) => {
            let ms = reply.get(1).and_then(|m| m.parse().ok()).unwrap_or(1000);
            let ms = Duration::from_millis(ms);
            if wait == "held" {
                Claim::Held(ms)
            } else {
                Claim::Busy(ms)
            }
        }
        _ => {
            let token = reply.get(1).and_then(|t| t.parse().ok()).unwrap_or(0);
            let previous = reply
                .get(2)
                .filter(|s| !s.is_empty())
                .and_then(|s| serde_json::from_str::<RunIds>(s).ok());
            let takeovers = reply.get(3).and_then(|t| t.parse().ok()).unwrap_or(0);
            Claim::Acquired {
                token,
                previous,
                takeovers,
            }
        }
    }
}

/// Keeps `redis` in the public API names used by tests.
pub type RedisError = redis::RedisError;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_claim(reply: &[String]) -> Claim {
        super::parse_claim(reply, |s| Ok(s.to_owned()))
    }

    #[test]
    fn an_answer_that_does_not_open_is_unreadable_not_empty() {
        let reply = ["done".to_owned(), "enc1:abc:xyz".to_owned()];
        assert_eq!(
            super::parse_claim(&reply, |_| Err("no key".into())),
            Claim::Unreadable("no key".into())
        );
        assert!(matches!(
            parse_claim(&["done".to_owned(), "{not json".to_owned()]),
            Claim::Unreadable(_)
        ));
    }

    #[test]
    fn claim_replies_parse() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_claim(&s(&["held", "1500"])),
            Claim::Held(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_claim(&s(&["busy", "700"])),
            Claim::Busy(Duration::from_millis(700))
        );
        assert_eq!(
            parse_claim(&s(&["acquired", "3", "", "2"])),
            Claim::Acquired {
                token: 3,
                previous: None,
                takeovers: 2
            }
        );
        let ids = RunIds {
            message_id: Some("m".into()),
            ..Default::default()
        };
        let json = serde_json::to_string(&ids).unwrap();
        assert_eq!(
            parse_claim(&s(&["acquired", "4", &json, "0"])),
            Claim::Acquired {
                token: 4,
                previous: Some(ids),
                takeovers: 0
            }
        );
        let answer = Answer {
            text: "hi".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&answer).unwrap();
        // A record written before the answering event was kept: no `event`.
        assert_eq!(
            parse_claim(&s(&["done", &json])),
            Claim::Done {
                answer: Box::new(answer.clone()),
                by: None
            }
        );
        assert_eq!(
            parse_claim(&s(&["done", &json, ""])),
            Claim::Done {
                answer: Box::new(answer.clone()),
                by: None
            }
        );
        let id = Uuid::now_v7();
        assert_eq!(
            parse_claim(&s(&["done", &json, &id.to_string()])),
            Claim::Done {
                answer: Box::new(answer),
                by: Some(id)
            }
        );
    }
}
