//! `kind = "slack"`: either an incoming webhook (`url`, a secret: the path is the credential) or a
//! bot token posting with `chat.postMessage` (`bot_token`, `channel`, optional `thread_ts` to
//! answer in a thread, `api_base` default `https://slack.com/api`). Slack asks for about one
//! message a second per channel and answers 429 with `Retry-After` beyond; the Web API reports
//! failures as `{"ok": false, "error": …}` with HTTP 200 (see [`classify_api`]). Text is split at
//! 4 000 characters, Slack's advice for readable messages (it truncates at 40 000).
use super::parts::deliver_parts;
use super::{classify_http, retry_after, send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
use shared::keys::Keys;
use shared::units::Rate;
use shared::Secret;
use std::time::Duration;

pub const KIND: &str = "slack";
pub const DEFAULT_API_BASE: &str = "https://slack.com/api";
pub const LIMIT: Limit = Limit::chars(4_000);

#[derive(Debug)]
enum Mode {
    Webhook {
        url: Secret,
    },
    Bot {
        token: Secret,
        channel: String,
        thread_ts: Option<String>,
        api_base: String,
    },
}

#[derive(Debug)]
pub struct Slack {
    mode: Mode,
}

impl Slack {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&["url", "bot_token", "channel", "thread_ts", "api_base"]);
        let mode = match (k.has("url"), k.has("bot_token")) {
            (true, false) => k.secret_url("url").map(|url| Mode::Webhook { url }),
            (false, true) => {
                let token = k.required_secret("bot_token");
                let channel = k.required_str("channel");
                let thread_ts = k.str("thread_ts");
                let api_base = k.base_url("api_base", DEFAULT_API_BASE);
                match (token, channel) {
                    (Some(token), Some(channel)) => Some(Mode::Bot {
                        token,
                        channel,
                        thread_ts,
                        api_base,
                    }),
                    _ => None,
                }
            }
            _ => {
                k.issue("url", "set either `url` (incoming webhook) or `bot_token` and `channel` (chat.postMessage)");
                None
            }
        };
        k.finish(mode.map(|mode| Self { mode }))
    }

    /// The body of one message.
    pub fn render(&self, text: &str) -> Value {
        match &self.mode {
            Mode::Webhook { .. } => json!({ "text": text }),
            Mode::Bot {
                channel, thread_ts, ..
            } => post_message_body(channel, text, thread_ts.as_deref()),
        }
    }
}

/// `chat.postMessage`'s body, in the thread when `thread_ts` is given.
pub fn post_message_body(channel: &str, text: &str, thread_ts: Option<&str>) -> Value {
    let mut body = json!({ "channel": channel, "text": text });
    if let Some(ts) = thread_ts {
        body["thread_ts"] = json!(ts);
    }
    body
}

/// Web API errors that mean slow down.
const RATE_LIMITED: &[&str] = &["ratelimited", "rate_limited", "message_limit_exceeded"];
/// Web API errors that only a config change fixes.
const PERMANENT: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "msg_too_long",
    "no_text",
    "invalid_blocks",
    "invalid_arguments",
    "restricted_action",
    "ekm_access_denied",
    "invalid_charset",
    "thread_reply_not_found",
];

/// The Web API's answer (`chat.postMessage`):
///
/// | answer | verdict |
/// |---|---|
/// | HTTP 200 `ok: true` | Delivered |
/// | HTTP 429, or `ratelimited` | Retry after `Retry-After` |
/// | `internal_error`, `fatal_error`, `service_unavailable`, `request_timeout` | Retry |
/// | `invalid_auth`, `not_authed`, `token_revoked`, `channel_not_found`, `not_in_channel`, `is_archived`, `msg_too_long`, `missing_scope` … | Permanent |
/// | another `error` | Retry (bounded by the schedule, then dead letter) |
/// | other HTTP statuses | as plain HTTP |
pub fn classify_api(answer: &Answer) -> Verdict {
    if answer.status == 429 {
        return Verdict::Retry {
            retry_after: retry_after(&answer.headers),
        };
    }
    if answer.status != 200 {
        return classify_http(answer);
    }
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        return Verdict::Delivered;
    }
    let error = v.get("error").and_then(Value::as_str).unwrap_or_default();
    if RATE_LIMITED.contains(&error) {
        Verdict::Retry {
            retry_after: retry_after(&answer.headers),
        }
    } else if PERMANENT.contains(&error) {
        Verdict::Permanent
    } else {
        // Transient errors (internal_error, fatal_error, …) and ones we do not know yet.
        Verdict::Retry { retry_after: None }
    }
}

/// An incoming webhook's (or a `response_url`'s) answer: `ok` with 200; errors are words with a
/// 4xx (`invalid_payload`, `channel_not_found`, `no_service`: permanent); 429 and 5xx retry.
pub fn classify_webhook(answer: &Answer) -> Verdict {
    classify_http(answer)
}

#[async_trait]
impl Target for Slack {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_rate(&self) -> Option<Rate> {
        Some(Rate {
            count: 1,
            per: Duration::from_secs(1),
        })
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |_, part| {
            let body = self.render(&part);
            let (request, classify): (_, fn(&Answer) -> Verdict) = match &self.mode {
                Mode::Webhook { url } => {
                    (ctx.http.post(url.expose()).json(&body), classify_webhook)
                }
                Mode::Bot {
                    token, api_base, ..
                } => (
                    ctx.http
                        .post(format!("{api_base}/chat.postMessage"))
                        .bearer_auth(token.expose())
                        .json(&body),
                    classify_api,
                ),
            };
            Box::pin(async move { send(ctx, request, classify).await.0 })
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;

    /// A Web API answer: `status`, `body`, and `Retry-After` when given.
    pub(crate) fn answer(status: u16, body: &str, retry: Option<&str>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(r) = retry {
            headers.insert(reqwest::header::RETRY_AFTER, r.parse().unwrap());
        }
        Answer {
            status,
            headers,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn web_api_answers_are_classified() {
        let s = Duration::from_secs;
        let cases = [
            (200, r#"{"ok":true,"ts":"1.2"}"#, None, Verdict::Delivered),
            (
                429,
                "",
                Some("3"),
                Verdict::Retry {
                    retry_after: Some(s(3)),
                },
            ),
            (
                200,
                r#"{"ok":false,"error":"ratelimited"}"#,
                Some("1"),
                Verdict::Retry {
                    retry_after: Some(s(1)),
                },
            ),
            (
                200,
                r#"{"ok":false,"error":"invalid_auth"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"channel_not_found"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"not_in_channel"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"internal_error"}"#,
                None,
                Verdict::Retry { retry_after: None },
            ),
            (
                200,
                r#"{"ok":false,"error":"something_new"}"#,
                None,
                Verdict::Retry { retry_after: None },
            ),
            (503, "", None, Verdict::Retry { retry_after: None }),
        ];
        for (status, body, retry, want) in cases {
            assert_eq!(
                classify_api(&answer(status, body, retry)),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn webhook_answers_are_classified() {
        let cases = [
            (200, "ok", None, Verdict::Delivered),
            (
                429,
                "",
                Some("2"),
                Verdict::Retry {
                    retry_after: Some(Duration::from_secs(2)),
                },
            ),
            (400, "invalid_payload", None, Verdict::Permanent),
            (404, "no_service", None, Verdict::Permanent),
            (410, "channel_is_archived", None, Verdict::Permanent),
            (500, "", None, Verdict::Retry { retry_after: None }),
        ];
        for (status, body, retry, want) in cases {
            assert_eq!(
                classify_webhook(&answer(status, body, retry)),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn renders_webhook_and_thread_messages() {
        let t: TargetConfig = toml::from_str(
            "id = \"s\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/X\"",
        )
        .unwrap();
        assert_eq!(
            Slack::from_config(&t).unwrap().render("hi"),
            json!({"text": "hi"})
        );
        let t: TargetConfig = toml::from_str(
            "id = \"s\"\nkind = \"slack\"\nbot_token = \"xoxb-1\"\nchannel = \"C1\"\nthread_ts = \"1700.1\"",
        )
        .unwrap();
        assert_eq!(
            Slack::from_config(&t).unwrap().render("hi"),
            json!({"channel": "C1", "text": "hi", "thread_ts": "1700.1"})
        );
        let t: TargetConfig = toml::from_str("id = \"s\"\nkind = \"slack\"").unwrap();
        assert_eq!(Slack::from_config(&t).unwrap_err()[0].key, "targets.s.url");
    }
}
