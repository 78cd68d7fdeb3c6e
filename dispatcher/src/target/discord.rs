//! Discord's HTTP API as both Discord senders use it (the `discord_webhook` kind and the
//! `discord` reply channel): the message body (2 000 characters; `allowed_mentions` empty unless
//! configured, so an answer never pings @everyone, a role or a user), the classification of
//! Discord's answers, and sending under Discord's own per-route limits ([`buckets`]), which
//! apply on top of the shared limiter.
use super::parts::local_outcome;
use super::{classify_http, send, Answer, Context, Outcome, Verdict};
use crate::split::Limit;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub mod buckets;

use buckets::{Buckets, Limits, Route};

pub const DEFAULT_API_BASE: &str = "https://discord.com/api/v10";
/// A message's `content` holds 2 000 characters.
pub const LIMIT: Limit = Limit::chars(2_000);
/// What `allowed_mentions.parse` may name.
pub const MENTION_KINDS: &[&str] = &["users", "roles", "everyone"];

/// A short digest naming a credential-bearing thing (a webhook URL, a token) in Redis keys and
/// logs without revealing it.
pub fn digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A message's body: the text, the mentions it may ping (`parse`, empty by default), and the
/// message it replies to.
pub fn message_body(text: &str, mentions: &[String], reply_to: Option<&str>) -> Value {
    let mut body = json!({ "content": text, "allowed_mentions": { "parse": mentions } });
    if let Some(id) = reply_to {
        // The question may have been deleted since: answer anyway.
        body["message_reference"] = json!({ "message_id": id, "fail_if_not_exists": false });
    }
    body
}

/// Discord's answer:
///
/// | answer | verdict |
/// |---|---|
/// | 2xx | Delivered |
/// | 429 | Wait `retry_after` (the route, or with `X-RateLimit-Global` every route of the bot, waits too) |
/// | 400 (bad body), 401 (bad token; 50027 an expired interaction token), 403 (missing permission), 404 (unknown channel, webhook or message) | Permanent |
/// | 408, 5xx | Retry |
pub fn classify(answer: &Answer) -> Verdict {
    match answer.status {
        429 => Verdict::Wait {
            wait: Limits::read(answer)
                .retry_after
                .unwrap_or(Duration::from_secs(1)),
        },
        _ => classify_http(answer),
    }
}

/// Sends one request on `route` within Discord's limits: not at all while its bucket (or the
/// global limit) is spent — the job waits, not counted as an attempt — and keeps what Discord's
/// answer says about the limits for every process.
pub async fn send_limited(
    ctx: &Context,
    route: &Route,
    request: reqwest::RequestBuilder,
) -> Outcome {
    let buckets = Buckets::new(ctx.store.clone());
    match buckets.take(route).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            return local_outcome(
                Verdict::Wait { wait },
                format!("Discord's rate limit for {} is spent", route.template),
            )
        }
        // Without the shared state another process may have spent the bucket: later.
        Err(e) => {
            return local_outcome(
                Verdict::Retry { retry_after: None },
                format!("Discord's rate-limit state is unavailable: {e}"),
            )
        }
    }
    let (outcome, answer) = send(ctx, request, classify).await;
    if let Some(answer) = answer {
        let limits = Limits::read(&answer);
        if let Some(wait) = limits.retry_after {
            tracing::warn!(
                route = route.template,
                global = limits.global,
                ?wait,
                "Discord answered 429: waiting as it asked"
            );
        }
        if let Err(e) = buckets.record(route, &limits).await {
            tracing::warn!(route = route.template, error = %e, "could not keep Discord's rate-limit state");
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;

    #[test]
    fn bodies_ping_nobody_unless_configured() {
        assert_eq!(
            message_body("@everyone hi", &[], None),
            json!({"content": "@everyone hi", "allowed_mentions": {"parse": []}})
        );
        assert_eq!(
            message_body("hi", &["users".into()], Some("m1")),
            json!({"content": "hi", "allowed_mentions": {"parse": ["users"]},
                   "message_reference": {"message_id": "m1", "fail_if_not_exists": false}})
        );
    }

    #[test]
    fn answers_are_classified() {
        let s = Duration::from_millis;
        let cases = [
            (200, r#"{"id":"1"}"#, Verdict::Delivered),
            (204, "", Verdict::Delivered),
            (
                429,
                r#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#,
                Verdict::Wait { wait: s(1500) },
            ),
            (
                400,
                r#"{"code":50035,"message":"Invalid Form Body"}"#,
                Verdict::Permanent,
            ),
            (
                401,
                r#"{"code":50027,"message":"Invalid Webhook Token"}"#,
                Verdict::Permanent,
            ),
            (
                403,
                r#"{"code":50013,"message":"Missing Permissions"}"#,
                Verdict::Permanent,
            ),
            (
                404,
                r#"{"code":10015,"message":"Unknown Webhook"}"#,
                Verdict::Permanent,
            ),
            (502, "", Verdict::Retry { retry_after: None }),
        ];
        for (status, body, want) in cases {
            let a = Answer {
                status,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            };
            assert_eq!(classify(&a), want, "{status} {body}");
        }
        assert_eq!(digest("x").len(), 16);
        assert_ne!(digest("x"), digest("y"));
    }
}
