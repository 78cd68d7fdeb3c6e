//! Platform access tokens (WeCom `gettoken`, Feishu `tenant_access_token`, DingTalk app token),
//! shared by every dispatcher process through Redis: fetched once, cached under
//! `token:<platform>:<app>` until shortly before the platform's expiry, fetched by one process at
//! a time (a `SET NX PX` lock; the others poll briefly for the winner's token), and — when the
//! platform refuses a token with its invalid-token errcode — invalidated (only if it is still the
//! token that was refused), fetched again and the send retried once within the same delivery.
//! Tokens are secrets: they live in [`Secret`]s and never reach a log line, an error or an
//! attempt record. What a platform's token request and answer look like is its reply module's
//! business ([`TokenSource`]); this module owns caching and the once-only retry.
use crate::target::{describe_transport_error, Context, Outcome, Verdict};
use deadpool_redis::redis;
use futures_util::future::BoxFuture;
use shared::envelope::Attempt;
use shared::Secret;
use std::time::{Duration, Instant};

/// How long the fetching process holds the lock: longer than a token request may take.
pub const LOCK_TTL: Duration = Duration::from_secs(20);
/// The most of a token answer that is read; a longer one is refused as malformed.
pub const MAX_TOKEN_ANSWER: usize = 64 * 1024;
/// How long a process waits for another's fetch before giving up on this delivery.
pub const WAIT_FOR_OTHERS: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);
/// A cached token is dropped this long before the platform says it expires (at most a quarter
/// of its life), so that no send goes out with a token about to lapse.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// A token as the platform issued it.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub token: Secret,
    pub expires_in: Duration,
}

/// Why no token could be had. Never contains the token or the app secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token store: {0}")]
    Store(String),
    #[error("token request failed: {0}")]
    Transport(String),
    #[error("token refused: HTTP {status}, code {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
        /// The platform says the app's credentials are wrong: retrying will not help.
        permanent: bool,
    },
    #[error("token answer unreadable (HTTP {status})")]
    Malformed { status: u16 },
    #[error("another process is fetching the token and did not finish in time")]
    Busy,
    /// The token endpoint's URL is refused by the SSRF guard (or cannot be built): permanent,
    /// and nothing was sent.
    #[error("{0}")]
    Unsendable(String),
}

impl From<shared::store::StoreError> for TokenError {
    fn from(e: shared::store::StoreError) -> Self {
        TokenError::Store(e.to_string())
    }
}

impl From<redis::RedisError> for TokenError {
    fn from(e: redis::RedisError) -> Self {
        TokenError::Store(e.to_string())
    }
}

impl TokenError {
    /// The outcome of a delivery that could not get a token.
    pub fn outcome(&self) -> Outcome {
        let verdict = match self {
            TokenError::Refused {
                permanent: true, ..
            }
            | TokenError::Unsendable(_) => Verdict::Permanent,
            _ => Verdict::Retry { retry_after: None },
        };
        let (status, code) = match self {
            TokenError::Refused { status, code, .. } => (Some(*status), Some(code.clone())),
            TokenError::Malformed { status } => (Some(*status), None),
            _ => (None, None),
        };
        Outcome {
            attempt: Attempt {
                at: chrono::Utc::now(),
                outcome: verdict.outcome(),
                status,
                code,
                error: Some(format!("access token: {self}")),
                excerpt: None,
                duration_ms: 0,
            },
            // The platform's token endpoint was asked, unless the cache or its lock failed.
            sent: !matches!(
                self,
                TokenError::Store(_) | TokenError::Busy | TokenError::Unsendable(_)
            ),
            verdict,
        }
    }
}

/// One app's token endpoint.
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// Who the token belongs to, as key parts after `token` (`["wecom", corpid, agentid]`).
    /// Never a secret.
    fn cache_id(&self) -> Vec<String>;
    /// The request that asks the platform for a token.
    fn request(&self, http: &reqwest::Client) -> reqwest::RequestBuilder;
    /// Reads the platform's answer (pure).
    fn parse(&self, status: u16, body: &[u8]) -> Result<Fresh, TokenError>;
}

/// Where a platform's JSON token answer keeps its fields.
#[derive(Debug, Clone, Copy)]
pub struct TokenAnswer {
    /// The result code (`errcode`, `code`); absent counts as success.
    pub code: &'static str,
    pub message: &'static str,
    pub token: &'static str,
    pub expires_in: &'static str,
    /// Codes that mean the configured credentials are wrong.
    pub permanent: &'static [i64],
}

/// Reads a token answer as `spec` describes it (pure).
pub fn parse_token_answer(
    spec: &TokenAnswer,
    status: u16,
    body: &[u8],
) -> Result<Fresh, TokenError> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(TokenError::Malformed { status });
    };
    let code = v.get(spec.code).and_then(|c| c.as_i64()).unwrap_or(0);
    let token = v
        .get(spec.token)
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty());
    match token {
        Some(token) if code == 0 && (200..300).contains(&status) => {
            let secs = v
                .get(spec.expires_in)
                .and_then(|e| e.as_u64())
                .unwrap_or(7200);
            Ok(Fresh {
                token: Secret::new(token),
                expires_in: Duration::from_secs(secs),
            })
        }
        _ if code == 0 && (200..300).contains(&status) => Err(TokenError::Malformed { status }),
        _ => Err(TokenError::Refused {
            status,
            code: code.to_string(),
            message: v
                .get(spec.message)
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect(),
            permanent: spec.permanent.contains(&code) || matches!(status, 401 | 403),
        }),
    }
}

/// How long a token that lives `expires_in` is cached; `None` when too short to bother.
pub fn cache_ttl(expires_in: Duration) -> Option<Duration> {
    let margin = EXPIRY_MARGIN.min(expires_in / 4);
    let ttl = expires_in.saturating_sub(margin);
    (ttl >= Duration::from_millis(1)).then_some(ttl)
}

/// The cached token's key and its refresh lock's key, each under its own name (a suffix on the
/// token's key could be another app's token key).
fn keys(ctx: &Context, source: &dyn TokenSource) -> (String, String) {
    let id = source.cache_id();
    let mut parts: Vec<&str> = vec!["token"];
    parts.extend(id.iter().map(String::as_str));
    let key = ctx.store.key(&parts);
    parts[0] = "token-lock";
    (key, ctx.store.key(&parts))
}

/// Compare-and-delete: only the holder's value is removed.
const DELETE_IF_EQUAL: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The cached token, or a fresh one fetched by this process or another.
pub async fn get(ctx: &Context, source: &dyn TokenSource) -> Result<Secret, TokenError> {
    let (key, lock) = keys(ctx, source);
    let deadline = Instant::now() + WAIT_FOR_OTHERS;
    loop {
        let mut conn = ctx.store.conn().await?;
        let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        if let Some(t) = open(ctx, &key, cached) {
            return Ok(t);
        }
        let me = uuid::Uuid::now_v7().to_string();
        let won: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(&me)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if won.is_some() {
            // Another process may have stored its token between our GET and our lock.
            let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            let result = match open(ctx, &key, cached) {
                Some(t) => Ok(t),
                None => {
                    drop(conn);
                    fetch_and_store(ctx, source, &key).await
                }
            };
            release(ctx, &lock, &me).await;
            return result;
        }
        drop(conn);
        if Instant::now() >= deadline {
            return Err(TokenError::Busy);
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn fetch_and_store(
    ctx: &Context,
    source: &dyn TokenSource,
    key: &str,
) -> Result<Secret, TokenError> {
    let fresh = fetch(ctx, source).await?;
    if let Some(ttl) = cache_ttl(fresh.expires_in) {
        let mut conn = ctx.store.conn().await?;
        redis::cmd("SET")
            .arg(key)
            .arg(ctx.store.vault().seal(key, fresh.token.expose()))
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async::<()>(&mut conn)
            .await?;
    }
    metrics::counter!("switchboard_dispatcher_token_fetches_total", "platform" => source.cache_id().first().cloned().unwrap_or_default()).increment(1);
    Ok(fresh.token)
}

async fn fetch(ctx: &Context, source: &dyn TokenSource) -> Result<Fresh, TokenError> {
    // Through the SSRF guard like every delivery: `api_base` comes from the config, and an IP
    // literal there would reach no resolver.
    let resp = crate::ssrf::send(source.request(&ctx.http), &ctx.allow_private)
        .await
        .map_err(|e| match e {
            crate::ssrf::SendError::Transport(_) => TokenError::Transport(e.to_string()),
            refused => TokenError::Unsendable(refused.to_string()),
        })?;
    let status = resp.status().as_u16();
    let body = crate::target::read_capped(resp, MAX_TOKEN_ANSWER)
        .await
        .map_err(|e| TokenError::Transport(describe_transport_error(&e)))?;
    if body.len() >= MAX_TOKEN_ANSWER {
        // A token answer is a few hundred bytes: this is not one.
        return Err(TokenError::Malformed { status });
    }
    source.parse(status, &body)
}

/// The cached token in `stored`, opened. One that does not open (encrypted with a key this
/// process does not hold, or changed) is taken for absent: a fresh token replaces it.
fn open(ctx: &Context, key: &str, stored: Option<String>) -> Option<Secret> {
    let stored = stored?;
    match ctx.store.vault().open(key, &stored) {
        Ok(t) => Some(Secret::new(t.into_owned())),
        Err(e) => {
            tracing::warn!(error = %e, "a cached access token does not open; fetching a fresh one");
            metrics::counter!("switchboard_store_unreadable_total", "record" => "token")
                .increment(1);
            None
        }
    }
}

async fn release(ctx: &Context, lock: &str, me: &str) {
    let result = async {
        let mut conn = ctx.store.conn().await?;
        redis::cmd("EVAL")
            .arg(DELETE_IF_EQUAL)
            .arg(1)
            .arg(lock)
            .arg(me)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok::<_, TokenError>(())
    }
    .await;
    if let Err(e) = result {
        // The lock lapses by itself after LOCK_TTL.
        tracing::warn!(error = %e, "could not release a token lock");
    }
}

/// Drops the cached token if it is still `stale` (another process may have refreshed it already).
pub async fn invalidate(
    ctx: &Context,
    source: &dyn TokenSource,
    stale: &Secret,
) -> Result<(), TokenError> {
    let (key, _) = keys(ctx, source);
    let mut conn = ctx.store.conn().await?;
    let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    // Each sealing differs, so the stored form is compared, once its token is known to be
    // the stale one.
    let Some(stored) = stored
        .filter(|s| open(ctx, &key, Some(s.clone())).is_none_or(|t| t.expose() == stale.expose()))
    else {
        return Ok(());
    };
    redis::cmd("EVAL")
        .arg(DELETE_IF_EQUAL)
        .arg(1)
        .arg(&key)
        .arg(&stored)
        .query_async::<i64>(&mut conn)
        .await?;
    Ok(())
}

/// Sends with the app's token; if the platform says the token is invalid, invalidates it, gets
/// a fresh one and sends once more. A second refusal is an ordinary failed attempt.
pub async fn send_with_token<'a>(
    ctx: &Context,
    source: &dyn TokenSource,
    mut send: impl FnMut(Secret) -> BoxFuture<'a, Outcome>,
) -> Outcome {
    let token = match get(ctx, source).await {
        Ok(t) => t,
        Err(e) => return e.outcome(),
    };
    let first = send(token.clone()).await;
    if first.verdict != Verdict::TokenInvalid {
        return first;
    }
    if let Err(e) = invalidate(ctx, source, &token).await {
        return e.outcome();
    }
    let token = match get(ctx, source).await {
        Ok(t) => t,
        Err(e) => return e.outcome(),
    };
    let mut second = send(token).await;
    if second.verdict == Verdict::TokenInvalid {
        second.verdict = Verdict::Retry { retry_after: None };
        second.attempt.outcome = second.verdict.outcome();
        second.attempt.error = Some("access token refused again right after a refresh".into());
    } else if second.attempt.error.is_none() && second.verdict != Verdict::Delivered {
        second.attempt.error = Some("after refreshing the access token".into());
    }
    second
}

#[cfg(test)]
mod tests {
    use super::*;

    const WECOM: TokenAnswer = TokenAnswer {
        code: "errcode",
        message: "errmsg",
        token: "access_token",
        expires_in: "expires_in",
        permanent: &[40001, 40013],
    };

    #[test]
    fn token_answers_are_read_and_refusals_classified() {
        let ok = parse_token_answer(
            &WECOM,
            200,
            br#"{"errcode":0,"errmsg":"ok","access_token":"tok","expires_in":7200}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.token.expose(), ok.expires_in),
            ("tok", Duration::from_secs(7200))
        );
        let cases: [(u16, &[u8], TokenError); 4] = [
            (
                200,
                br#"{"errcode":40013,"errmsg":"invalid corpid"}"#,
                TokenError::Refused {
                    status: 200,
                    code: "40013".into(),
                    message: "invalid corpid".into(),
                    permanent: true,
                },
            ),
            (
                200,
                br#"{"errcode":-1,"errmsg":"system busy"}"#,
                TokenError::Refused {
                    status: 200,
                    code: "-1".into(),
                    message: "system busy".into(),
                    permanent: false,
                },
            ),
            (
                502,
                b"<html>bad gateway</html>",
                TokenError::Malformed { status: 502 },
            ),
            (
                200,
                br#"{"errcode":0,"errmsg":"ok"}"#,
                TokenError::Malformed { status: 200 },
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(parse_token_answer(&WECOM, status, body).unwrap_err(), want);
        }
    }

    #[test]
    fn tokens_are_cached_until_shortly_before_expiry() {
        let s = Duration::from_secs;
        let cases = [(s(7200), Some(s(6900))), (s(60), Some(s(45))), (s(0), None)];
        for (expires_in, want) in cases {
            assert_eq!(cache_ttl(expires_in), want, "{expires_in:?}");
        }
    }

    #[test]
    fn refusals_become_outcomes_without_secrets() {
        let e = TokenError::Refused {
            status: 200,
            code: "40001".into(),
            message: "invalid credential".into(),
            permanent: true,
        };
        let o = e.outcome();
        assert_eq!(o.verdict, Verdict::Permanent);
        assert_eq!(o.attempt.code.as_deref(), Some("40001"));
        assert_eq!(
            TokenError::Busy.outcome().verdict,
            Verdict::Retry { retry_after: None }
        );
    }
}
