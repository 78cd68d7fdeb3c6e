//! `kind = "telegram"`: a bot's `sendMessage` (`{api_base}/bot<token>/sendMessage`). Keys:
//! `bot_token` (a secret: it is in the URL path, which is therefore never logged), `chat_id` (a
//! number, or `@channelname`), `api_base` (default `https://api.telegram.org`). Messages hold
//! 4 096 characters as Telegram counts them (UTF-16 code units). Telegram allows about one
//! message a second per chat and 20 a minute per group, and answers 429 with
//! `parameters.retry_after` beyond.
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

pub const KIND: &str = "telegram";
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";
pub const LIMIT: Limit = Limit::utf16(4_096);

#[derive(Debug)]
pub struct Telegram {
    token: Secret,
    chat_id: Value,
    api_base: String,
}

impl Telegram {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&["bot_token", "chat_id", "api_base"]);
        let token = k.required_secret("bot_token");
        let chat_id = match k.value("chat_id") {
            Some(toml::Value::Integer(i)) => Some(json!(i)),
            Some(toml::Value::String(s)) => Some(match s.parse::<i64>() {
                Ok(i) => json!(i),
                Err(_) => json!(s),
            }),
            _ => {
                k.issue("chat_id", "is required: a chat id (number) or @channelname");
                None
            }
        };
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        let built = match (token, chat_id) {
            (Some(token), Some(chat_id)) => Some(Self {
                token,
                chat_id,
                api_base,
            }),
            _ => None,
        };
        k.finish(built)
    }

    pub fn render(&self, text: &str) -> Value {
        json!({ "chat_id": self.chat_id, "text": text })
    }
}

/// `sendMessage`'s URL; it carries the token, so it is never logged.
pub fn send_message_url(api_base: &str, token: &Secret) -> String {
    format!("{api_base}/bot{}/sendMessage", token.expose())
}

/// The Bot API's answer:
///
/// | answer | verdict |
/// |---|---|
/// | 200 `ok: true` | Delivered |
/// | 429 | Retry after `parameters.retry_after` (or `Retry-After`) |
/// | 400 (chat not found, message too long, group migrated …), 401 (bad token), 403 (bot blocked or removed), 404 | Permanent |
/// | 5xx | Retry |
pub fn classify(answer: &Answer) -> Verdict {
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    match answer.status {
        429 => {
            let wait = v
                .pointer("/parameters/retry_after")
                .and_then(Value::as_u64)
                .map(Duration::from_secs);
            Verdict::Retry {
                retry_after: wait.or_else(|| retry_after(&answer.headers)),
            }
        }
        200 if v.get("ok").and_then(Value::as_bool) == Some(true) => Verdict::Delivered,
        200 => Verdict::Retry { retry_after: None },
        _ => classify_http(answer),
    }
}

#[async_trait]
impl Target for Telegram {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_rate(&self) -> Option<Rate> {
        // Negative ids are groups and channels: 20 a minute there, one a second in private chats.
        match self.chat_id.as_i64() {
            Some(id) if id > 0 => Some(Rate {
                count: 1,
                per: Duration::from_secs(1),
            }),
            _ => Some(Rate {
                count: 20,
                per: Duration::from_secs(60),
            }),
        }
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let parts = self.parts_of(job);
        let url = send_message_url(&self.api_base, &self.token);
        deliver_parts(job, ctx, parts, |_, part| {
            let request = ctx.http.post(&url).json(&self.render(&part));
            Box::pin(async move { send(ctx, request, classify).await.0 })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;

    #[test]
    fn answers_are_classified() {
        let s = Duration::from_secs;
        let cases = [
            (
                200,
                r#"{"ok":true,"result":{"message_id":5}}"#,
                Verdict::Delivered,
            ),
            (
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#,
                Verdict::Retry {
                    retry_after: Some(s(7)),
                },
            ),
            (
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
                Verdict::Permanent,
            ),
            (
                401,
                r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#,
                Verdict::Permanent,
            ),
            (
                403,
                r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
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
            assert_eq!(classify(&a), want, "{body}");
        }
    }

    #[test]
    fn renders_and_rates_by_chat() {
        let t: TargetConfig = toml::from_str(
            "id = \"tg\"\nkind = \"telegram\"\nbot_token = \"1:x\"\nchat_id = -100123",
        )
        .unwrap();
        let tg = Telegram::from_config(&t).unwrap();
        assert_eq!(tg.render("hi"), json!({"chat_id": -100123, "text": "hi"}));
        assert_eq!(tg.default_rate().unwrap().count, 20);
        let t: TargetConfig = toml::from_str(
            "id = \"tg\"\nkind = \"telegram\"\nbot_token = \"1:x\"\nchat_id = \"@news\"",
        )
        .unwrap();
        assert_eq!(
            Telegram::from_config(&t).unwrap().render("hi"),
            json!({"chat_id": "@news", "text": "hi"})
        );
        assert!(!format!("{tg:?}").contains("1:x"));
    }
}
