//! Discord's own rate limits, on top of the shared limiter: Discord tells the limits in every
//! answer (`X-RateLimit-Bucket`, `-Remaining`, `-Reset-After`) and refuses beyond them with 429
//! and `retry_after` (`X-RateLimit-Global` / `"global": true` for the bot-wide limit). What it
//! said is kept in Redis so that every dispatcher process honours it:
//!
//! - `{prefix}:discord:route:{route}` — the bucket a route (method and path template) belongs
//!   to, as Discord named it (a day);
//! - `{prefix}:discord:bucket:{bucket}:{major}` — requests left in that bucket for that major
//!   parameter (channel, webhook), expiring when the bucket resets; each request takes one
//!   atomically, and none is sent when none is left;
//! - `{prefix}:discord:global:{scope}` — present while Discord's global limit holds for that bot.
//!
//! Reading the headers is pure ([`Limits::read`]); [`Buckets`] does the Redis side. A request
//! that must wait is not sent: the caller parks the job for the wait (not a failed attempt).
use super::super::Answer;
use deadpool_redis::redis;
use serde_json::Value;
use shared::store::{Store, StoreError};
use std::time::Duration;

/// Where one request goes, for Discord's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Method and path template (`POST /channels/{id}/messages`): what Discord maps to a bucket.
    pub template: &'static str,
    /// The major parameter's value (a channel id, or a digest of a webhook's id and token —
    /// never the token itself).
    pub major: String,
    /// Whose global limit applies (a digest of the bot token; a webhook's own).
    pub scope: String,
}

/// What one of Discord's answers says about its limits (pure).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub bucket: Option<String>,
    pub remaining: Option<u64>,
    pub reset_after: Option<Duration>,
    /// A 429: how long to wait, and whether the limit is the global one.
    pub retry_after: Option<Duration>,
    pub global: bool,
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.headers.get(name)?.to_str().ok().map(str::trim)
}

/// Seconds with a fraction (`0.423`), as Discord writes them.
fn seconds(v: f64) -> Option<Duration> {
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(86_400.0)))
}

impl Limits {
    pub fn read(answer: &Answer) -> Self {
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let retry_after = (answer.status == 429)
            .then(|| {
                body.get("retry_after")
                    .and_then(Value::as_f64)
                    .or_else(|| header(answer, "retry-after")?.parse().ok())
                    .and_then(seconds)
                    // A 429 without a wait: Discord's documented minimum is a second.
                    .or(Some(Duration::from_secs(1)))
            })
            .flatten();
        let global = answer.status == 429
            && (header(answer, "x-ratelimit-global")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                || body.get("global").and_then(Value::as_bool) == Some(true));
        Self {
            bucket: header(answer, "x-ratelimit-bucket")
                .filter(|b| !b.is_empty())
                .map(str::to_owned),
            remaining: header(answer, "x-ratelimit-remaining").and_then(|v| v.parse().ok()),
            reset_after: header(answer, "x-ratelimit-reset-after")
                .and_then(|v| v.parse().ok())
                .and_then(seconds),
            retry_after,
            global,
        }
    }
}

/// The script that takes one request from a bucket. KEYS[1] the global key, KEYS[2] the
/// bucket's; returns the milliseconds to wait (0: go, and one request was taken).
const TAKE: &str = r#"
local g = redis.call('PTTL', KEYS[1])
if g > 0 then return g end
local r = redis.call('HGET', KEYS[2], 'remaining')
if r then
  if tonumber(r) <= 0 then
    local t = redis.call('PTTL', KEYS[2])
    if t > 0 then return t end
    return 0
  end
  redis.call('HINCRBY', KEYS[2], 'remaining', -1)
end
return 0
"#;

/// How long a route's bucket name is remembered.
const ROUTE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Discord's limits as every dispatcher process sees them.
#[derive(Debug, Clone)]
pub struct Buckets {
    store: Store,
    take: redis::Script,
}

impl Buckets {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            take: redis::Script::new(TAKE),
        }
    }

    fn route_key(&self, route: &Route) -> String {
        self.store.key(&["discord", "route", route.template])
    }

    fn bucket_key(&self, bucket: &str, route: &Route) -> String {
        self.store.key(&["discord", "bucket", bucket, &route.major])
    }

    fn global_key(&self, route: &Route) -> String {
        self.store.key(&["discord", "global", &route.scope])
    }

    /// Takes one request of the route's bucket, or says how long until one is free (nothing
    /// taken). A route whose bucket is not known yet is named by its template.
    pub async fn take(&self, route: &Route) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.store.conn().await?;
        let bucket: Option<String> = redis::cmd("GET")
            .arg(self.route_key(route))
            .query_async(&mut conn)
            .await?;
        let bucket = bucket.unwrap_or_else(|| route.template.to_owned());
        let wait_ms: i64 = self
            .take
            .key(self.global_key(route))
            .key(self.bucket_key(&bucket, route))
            .invoke_async(&mut conn)
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
    }

    /// Keeps what an answer said about the limits.
    pub async fn record(&self, route: &Route, limits: &Limits) -> Result<(), StoreError> {
        let mut conn = self.store.conn().await?;
        let mut pipe = redis::pipe();
        let bucket = match &limits.bucket {
            Some(b) => {
                pipe.cmd("SET")
                    .arg(self.route_key(route))
                    .arg(b)
                    .arg("EX")
                    .arg(ROUTE_TTL.as_secs())
                    .ignore();
                b.clone()
            }
            None => route.template.to_owned(),
        };
        let key = self.bucket_key(&bucket, route);
        let ms = |d: Duration| (d.as_millis() as u64).max(1);
        match (limits.retry_after, limits.global) {
            (Some(wait), true) => {
                pipe.cmd("SET")
                    .arg(self.global_key(route))
                    .arg(1)
                    .arg("PX")
                    .arg(ms(wait))
                    .ignore();
            }
            (Some(wait), false) => {
                let wait = wait.max(limits.reset_after.unwrap_or_default());
                pipe.cmd("HSET").arg(&key).arg("remaining").arg(0).ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(ms(wait)).ignore();
            }
            (None, _) => {
                if let (Some(left), Some(reset)) = (limits.remaining, limits.reset_after) {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg("remaining")
                        .arg(left)
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&key).arg(ms(reset)).ignore();
                }
            }
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        Answer {
            status,
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn headers_and_bodies_are_read() {
        let ok = Limits::read(&answer(
            200,
            &[
                ("x-ratelimit-bucket", "abcd1234"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "1.25"),
                ("x-ratelimit-limit", "5"),
            ],
            "{}",
        ));
        assert_eq!(
            ok,
            Limits {
                bucket: Some("abcd1234".into()),
                remaining: Some(0),
                reset_after: Some(Duration::from_millis(1250)),
                retry_after: None,
                global: false,
            }
        );
        let limited = Limits::read(&answer(
            429,
            &[("x-ratelimit-scope", "user")],
            r#"{"message":"You are being rate limited.","retry_after":0.75,"global":false}"#,
        ));
        assert_eq!(limited.retry_after, Some(Duration::from_millis(750)));
        assert!(!limited.global);
        let global = Limits::read(&answer(
            429,
            &[("x-ratelimit-global", "true"), ("retry-after", "3")],
            "",
        ));
        assert_eq!(
            (global.retry_after, global.global),
            (Some(Duration::from_secs(3)), true)
        );
        let body_global = Limits::read(&answer(429, &[], r#"{"retry_after":2,"global":true}"#));
        assert!(body_global.global);
        assert_eq!(
            Limits::read(&answer(429, &[], "")).retry_after,
            Some(Duration::from_secs(1))
        );
        let odd = Limits::read(&answer(
            200,
            &[
                ("x-ratelimit-remaining", "-1"),
                ("x-ratelimit-reset-after", "NaN"),
            ],
            "",
        ));
        assert_eq!((odd.remaining, odd.reset_after), (None, None));
    }
}
