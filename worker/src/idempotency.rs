//! The once-per-event record in Redis. One hash per event (source + the platform's dedup key)
//! holds a lease (owner, fencing token, expiry) while a worker calls Dify, the Dify ids as soon as
//! a stream reveals them (so a worker taking over can recover the run instead of repeating it),
//! and finally the answer with the id of the event it answered, kept for `answer_ttl` so a
//! redelivered or replayed event is answered from the record (and a second copy of the platform
//! event, kept under another event id, is recognised as one). Every transition is one Lua script, so two workers racing for one event
//! cannot both win, and a worker whose lease was taken over cannot overwrite the new owner.
use deadpool_redis::redis::{self, Script};
use serde::{Deserialize, Serialize};
use shared::envelope::Answer;
use shared::store::{Store, StoreError};
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

// KEYS[1] record. ARGV: owner, lease_ms, ttl_ms.
// Uses Redis's clock so that workers with skewed clocks agree on lease expiry.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then
  return {'done', redis.call('HGET', KEYS[1], 'answer'), redis.call('HGET', KEYS[1], 'event') or ''}
end
local takeovers = 0
if state == 'leased' then
  local until_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  -- A live lease excludes every other claim, also one from the same process: two copies of
  -- an event handled at once by one worker must not both call Dify.
  if until_ms > now then
    return {'held', tostring(until_ms - now)}
  end
  -- The lease lapsed with its owner still holding it: that worker died answering this event.
  takeovers = redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
else
  takeovers = tonumber(redis.call('HGET', KEYS[1], 'takeovers') or '0')
end
-- Ids a previous owner recorded stay until a new call records its own (or a failed call
-- clears them): a claim given back before calling must not lose them.
local previous = redis.call('HGET', KEYS[1], 'ids') or ''
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('HSET', KEYS[1], 'state', 'leased', 'owner', ARGV[1], 'lease_until', tostring(now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'acquired', tostring(token), previous, tostring(takeovers)}
"#;

// KEYS[1]. ARGV: token, lease_ms. Extends the lease if we still hold it.
const RENEW: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'leased' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'lease_until', tostring(now + tonumber(ARGV[2])))
return 1
"#;

// KEYS[1]. ARGV: token, ids json. Records Dify's ids under our lease.
const RECORD_IDS: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'leased' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'ids', ARGV[2])
return 1
"#;

// KEYS[1]. ARGV: token, answer json, ttl_ms, event id. Records the answer, and the event it
// answered, if we still hold the lease.
const COMPLETE: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'leased' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'answer', ARGV[2], 'event', ARGV[4])
redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'ids')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

// KEYS[1]. ARGV: token, clear ('1' after a failed call: its run's ids are worthless).
// Gives the event up so the next attempt may claim it.
const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'free')
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
if ARGV[2] == '1' then
  -- A call that failed (or an event given up) starts afresh: no ids, no crash count.
  redis.call('HDEL', KEYS[1], 'ids', 'takeovers')
end
return 1
"#;

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

    /// The record's key for an event of `source` with the platform's `dedup_key`.
    pub fn key(&self, source: &str, dedup_key: &str) -> String {
        self.store.key(&["idem", source, dedup_key])
    }

    pub async fn claim(&self, key: &str) -> Result<Claim, StoreError> {
        let mut conn = self.store.conn().await?;
        let reply: Vec<String> = Script::new(ACQUIRE)
            .key(key)
            .arg(&self.owner)
            .arg(self.lease.as_millis() as u64)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(parse_claim(&reply, |stored| {
            self.store
                .vault()
                .open(key, stored)
                .map(|a| a.into_owned())
                .map_err(|e| e.to_string())
        }))
    }

    /// Extends our lease; false if it was lost (taken over after it lapsed).
    pub async fn renew(&self, key: &str, token: i64) -> Result<bool, StoreError> {
        self.fenced(
            RENEW,
            key,
            token,
            &[&(self.lease.as_millis() as u64).to_string()],
        )
        .await
    }

    pub async fn record_ids(
        &self,
        key: &str,
        token: i64,
        ids: &RunIds,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(ids).unwrap_or_default();
        self.fenced(RECORD_IDS, key, token, &[&json]).await
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
        let json = serde_json::to_string(answer).unwrap_or_default();
        // The answer is the customer's words: encrypted when a key is configured.
        let json = self.store.vault().seal(key, &json);
        self.fenced(
            COMPLETE,
            key,
            token,
            &[
                &json,
                &(self.ttl.as_millis() as u64).to_string(),
                &event_id.to_string(),
            ],
        )
        .await
    }

    /// Gives the claim back before calling Dify: ids a previous owner recorded are kept for
    /// the next claim to recover.
    pub async fn release(&self, key: &str, token: i64) -> Result<bool, StoreError> {
        self.fenced(RELEASE, key, token, &["0"]).await
    }

    /// Gives the claim back after a failed call: that run's ids are cleared.
    pub async fn release_failed(&self, key: &str, token: i64) -> Result<bool, StoreError> {
        self.fenced(RELEASE, key, token, &["1"]).await
    }

    async fn fenced(
        &self,
        script: &str,
        key: &str,
        token: i64,
        args: &[&str],
    ) -> Result<bool, StoreError> {
        let mut conn = self.store.conn().await?;
        let script = Script::new(script);
        let mut inv = script.prepare_invoke();
        inv.key(key).arg(token);
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
        Some("held") => {
            let ms = reply.get(1).and_then(|m| m.parse().ok()).unwrap_or(1000);
            Claim::Held(Duration::from_millis(ms))
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
