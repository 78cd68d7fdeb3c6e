//! Sessions and sign-in limits, in Redis so that they hold across any number of console
//! processes. A session is a random id in an HttpOnly cookie; Redis keeps it under the id's
//! SHA-256 (so a Redis dump holds no usable cookie) with the user and the session's CSRF token,
//! for `[console] session_ttl`. Failed sign-ins are counted per user and per client address
//! in a window; past the limit a sign-in is refused before its password is even checked.
use deadpool_redis::redis::{self, AsyncCommands};
use serde::{Deserialize, Serialize};
use shared::store::Store;
use std::net::IpAddr;
use std::time::Duration;

use super::password::{random_token, token_sha256};
use crate::error::ConsoleError;

// KEYS[1] count. ARGV: window ms. Counts a failure; the window starts at the first one.
const COUNT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

/// What Redis keeps of a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub csrf: String,
}

/// Sessions and sign-in counts in Redis.
#[derive(Debug, Clone)]
pub struct Sessions {
    redis: Store,
    ttl: Duration,
    attempts: u32,
    window: Duration,
}

impl Sessions {
    pub fn new(redis: Store, ttl: Duration, attempts: u32, window: Duration) -> Self {
        Self {
            redis,
            ttl,
            attempts,
            window,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(&self, sid: &str) -> String {
        self.redis.key(&["console", "session", &token_sha256(sid)])
    }

    async fn conn(&self) -> Result<shared::store::Connection, ConsoleError> {
        self.redis.conn().await.map_err(unavailable)
    }

    /// Starts a session for `user`; returns its id (for the cookie) and the session.
    pub async fn start(&self, user: &str) -> Result<(String, Session), ConsoleError> {
        let sid = random_token();
        let s = Session {
            user: user.to_owned(),
            csrf: random_token(),
        };
        let json = serde_json::to_string(&s).unwrap_or_default();
        let mut c = self.conn().await?;
        let _: () = c
            .set_ex(self.key(&sid), json, self.ttl.as_secs().max(1))
            .await
            .map_err(unavailable)?;
        Ok((sid, s))
    }

    pub async fn get(&self, sid: &str) -> Result<Option<Session>, ConsoleError> {
        let mut c = self.conn().await?;
        let json: Option<String> = c.get(self.key(sid)).await.map_err(unavailable)?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    pub async fn end(&self, sid: &str) -> Result<(), ConsoleError> {
        let mut c = self.conn().await?;
        let _: () = c.del(self.key(sid)).await.map_err(unavailable)?;
        Ok(())
    }

    fn limit_keys(&self, user: &str, addr: Option<IpAddr>) -> Vec<(String, u32)> {
        let mut keys = vec![(
            self.redis
                .key(&["console", "login", "user", &token_sha256(user)]),
            self.attempts,
        )];
        if let Some(a) = addr {
            keys.push((
                self.redis
                    .key(&["console", "login", "addr", &a.to_string()]),
                self.attempts.saturating_mul(4),
            ));
        }
        keys
    }

    /// Refuses a sign-in for `user` from `addr` that is over the limit (with how long to wait).
    pub async fn check_limit(&self, user: &str, addr: Option<IpAddr>) -> Result<(), ConsoleError> {
        let mut c = self.conn().await?;
        for (key, limit) in self.limit_keys(user, addr) {
            let (count, ttl): (Option<u32>, i64) = redis::pipe()
                .get(&key)
                .pttl(&key)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if count.unwrap_or(0) >= limit {
                return Err(ConsoleError::TooMany(Duration::from_millis(
                    ttl.max(1000) as u64
                )));
            }
        }
        Ok(())
    }

    /// Counts a failed sign-in; the window starts at the first failure.
    pub async fn failed(&self, user: &str, addr: Option<IpAddr>) -> Result<(), ConsoleError> {
        let mut c = self.conn().await?;
        let window = self.window.as_millis() as u64;
        for (key, _) in self.limit_keys(user, addr) {
            let _: i64 = redis::Script::new(COUNT)
                .key(&key)
                .arg(window)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// A good sign-in clears the user's count (not the address's).
    pub async fn succeeded(&self, user: &str) -> Result<(), ConsoleError> {
        let mut c = self.conn().await?;
        let key = self.limit_keys(user, None).remove(0).0;
        let _: () = c.del(key).await.map_err(unavailable)?;
        Ok(())
    }
}

fn unavailable(e: impl std::fmt::Display) -> ConsoleError {
    tracing::error!(error = %e, "Redis unavailable for sessions");
    ConsoleError::Unavailable("the session store (Redis) is unavailable".into())
}
