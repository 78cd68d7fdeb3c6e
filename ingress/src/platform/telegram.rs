//! Telegram bot webhooks (`platform = "telegram"`). This module owns the key `secret_token`
//! (1–256 characters of `[A-Za-z0-9_-]`, the value given to `setWebhook`), checked against the
//! `X-Telegram-Bot-Api-Secret-Token` header; and the `Update` body: text messages of private
//! chats (single) and groups/supergroups (group), deduplicated on `update_id`. Edits, channel
//! posts, joins, stickers and other updates are dropped by rule. Telegram signs nothing and sends
//! no timestamp: the secret token is the only proof. Replies use keys the dispatcher's reply
//! channel declares (`bot_token`, `api_base`). It must not do I/O.
use super::sender::SignedRequest;
use super::verify::{ct_eq, json_body, json_str};
use super::{HookRequest, Intake, NewEvent, Normalised, Platform, Rejection};
use axum::http::Method;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{ChatType, Conversation, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;

/// The keys this module reads (the reply channel declares its own).
pub const KEYS: &[&str] = &["secret_token"];

pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

#[derive(Debug)]
pub struct Telegram {
    secret_token: Secret,
}

impl Telegram {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let secret_token = keys.required_secret("secret_token").and_then(|s| {
            let v = s.expose();
            // Telegram's own rule for setWebhook's secret_token; another value could never be sent.
            let valid = (1..=256).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if valid {
                Some(s)
            } else {
                keys.issue(
                    "secret_token",
                    "must be 1 to 256 characters of A-Z, a-z, 0-9, `_` and `-`",
                );
                None
            }
        });
        let value = secret_token.map(|secret_token| Self { secret_token });
        keys.finish(value)
    }
}

impl Platform for Telegram {
    fn name(&self) -> &'static str {
        "telegram"
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let presented = req
            .header(SECRET_HEADER)
            .ok_or(Rejection::MissingSignature)?;
        if !ct_eq(presented.as_bytes(), self.secret_token.expose().as_bytes()) {
            return Err(Rejection::BadToken);
        }
        let update = json_body(&req.body)?;
        Ok(Intake::answered_empty(normalise(&update)?, update))
    }
}

/// The event of an `Update`, or why it is dropped.
fn normalise(update: &Value) -> Result<Normalised, Rejection> {
    let update_id = update
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| Rejection::malformed("no update_id"))?;
    let Some(message) = update.get("message") else {
        return Ok(Err(update_reason(update)));
    };
    let chat = message
        .get("chat")
        .ok_or_else(|| Rejection::malformed("no message.chat"))?;
    let chat_id = chat
        .get("id")
        .and_then(Value::as_i64)
        .ok_or_else(|| Rejection::malformed("no chat.id"))?;
    let chat_type = match json_str(chat, "type").as_deref() {
        Some("private") => ChatType::Single,
        Some("group") | Some("supergroup") => ChatType::Group,
        _ => return Ok(Err("channel_post")),
    };
    let from = message.get("from");
    if from.and_then(|f| f.get("is_bot")).and_then(Value::as_bool) == Some(true) {
        return Ok(Err("bot_echo"));
    }
    if message.get("new_chat_members").is_some() || message.get("left_chat_member").is_some() {
        return Ok(Err("join"));
    }
    let Some(text) = json_str(message, "text").map(|t| t.trim().to_owned()) else {
        return Ok(Err("not_text"));
    };
    if text.is_empty() {
        return Ok(Err("empty"));
    }
    let sender_id = from
        .and_then(|f| f.get("id"))
        .and_then(Value::as_i64)
        .map(|id| id.to_string())
        // An anonymous group admin posts as the chat itself.
        .unwrap_or_else(|| chat_id.to_string());
    let sender_name =
        from.and_then(|f| json_str(f, "username").or_else(|| json_str(f, "first_name")));
    let message_id = message.get("message_id").and_then(Value::as_i64);
    Ok(Ok(NewEvent {
        dedup_key: update_id.to_string(),
        kind: "message".into(),
        conversation: Conversation {
            chat_id: chat_id.to_string(),
            chat_type,
            sender_id,
            sender_name,
            // Forum topics: replies must stay in the topic.
            thread_id: message
                .get("message_thread_id")
                .and_then(Value::as_i64)
                .map(|t| t.to_string()),
        },
        text,
        reply: Some(ReplyHandle::Telegram {
            chat_id,
            message_id,
        }),
        payload: Value::Null,
    }))
}

/// The metric label of an update that carries no new message.
fn update_reason(update: &Value) -> &'static str {
    let has = |k: &str| update.get(k).is_some();
    if has("edited_message") || has("edited_channel_post") || has("edited_business_message") {
        "edited"
    } else if has("channel_post") {
        "channel_post"
    } else if has("callback_query") || has("inline_query") || has("chosen_inline_result") {
        "interaction"
    } else if has("my_chat_member") || has("chat_member") || has("chat_join_request") {
        "join"
    } else if has("message_reaction") || has("message_reaction_count") {
        "reaction"
    } else {
        "update"
    }
}

/// An update as Telegram posts it, with the secret-token header.
pub fn request(secret_token: &str, body: &str) -> SignedRequest {
    SignedRequest::new(Method::POST, body.to_owned())
        .with_header("content-type", "application/json")
        .with_header(SECRET_HEADER, secret_token)
}

/// A text message update; a negative `chat_id` with `chat_type` `group`/`supergroup` is a group.
pub fn text_update(
    update_id: i64,
    chat_id: i64,
    chat_type: &str,
    from_id: i64,
    text: &str,
) -> String {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id % 100_000,
            "from": { "id": from_id, "is_bot": false, "first_name": "Ada", "username": "ada" },
            "chat": { "id": chat_id, "type": chat_type },
            "date": 1_700_000_000,
            "text": text,
        },
    })
    .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};

    #[test]
    fn receive_table() {
        let p = Telegram::from_config(&source(
            "telegram",
            300,
            json!({"secret_token": "s3cr3t_-T"}),
        ))
        .unwrap();
        let now = at(1_700_000_000);
        let req = |secret: &str, body: &str| request(secret, body).to_hook_request(now);
        let private = text_update(10, 42, "private", 42, "hello");
        let base: Value = serde_json::from_str(&private).unwrap();
        let variant = |f: &dyn Fn(&mut Value)| {
            let mut v = base.clone();
            f(&mut v);
            req("s3cr3t_-T", &v.to_string())
        };
        let edited = json!({"update_id": 11, "edited_message": base["message"]}).to_string();
        let cases: Vec<(&str, HookRequest, &str)> = vec![
            ("private", req("s3cr3t_-T", &private), "event"),
            (
                "supergroup",
                req(
                    "s3cr3t_-T",
                    &text_update(12, -100, "supergroup", 7, "hi all"),
                ),
                "event",
            ),
            (
                "channel",
                req("s3cr3t_-T", &text_update(13, -200, "channel", 7, "news")),
                "ignore:channel_post",
            ),
            ("edited", req("s3cr3t_-T", &edited), "ignore:edited"),
            (
                "sticker",
                variant(&|v| {
                    v["message"].as_object_mut().unwrap().remove("text");
                    v["message"]["sticker"] = json!({});
                }),
                "ignore:not_text",
            ),
            (
                "join",
                variant(&|v| {
                    v["message"].as_object_mut().unwrap().remove("text");
                    v["message"]["new_chat_members"] = json!([]);
                }),
                "ignore:join",
            ),
            (
                "bot",
                variant(&|v| v["message"]["from"]["is_bot"] = json!(true)),
                "ignore:bot_echo",
            ),
            (
                "callback",
                req(
                    "s3cr3t_-T",
                    &json!({"update_id": 14, "callback_query": {}}).to_string(),
                ),
                "ignore:interaction",
            ),
            (
                "no update_id",
                req(
                    "s3cr3t_-T",
                    &json!({"message": base["message"]}).to_string(),
                ),
                "malformed",
            ),
            ("not json", req("s3cr3t_-T", "]"), "malformed"),
            ("wrong secret", req("s3cr3t_-t", &private), "bad_token"),
            (
                "no secret",
                SignedRequest::new(Method::POST, private.clone()).to_hook_request(now),
                "missing_signature",
            ),
            (
                "GET",
                SignedRequest::new(Method::GET, Vec::new()).to_hook_request(now),
                "method_not_allowed",
            ),
        ];
        for (name, r, want) in cases {
            assert_eq!(outcome(&p.receive(&r)), want, "{name}");
        }
        let e = event(p.receive(&req("s3cr3t_-T", &private)));
        assert_eq!(
            (
                e.dedup_key.as_str(),
                e.text.as_str(),
                e.conversation.chat_type
            ),
            ("10", "hello", ChatType::Single)
        );
        assert_eq!(
            e.reply,
            Some(ReplyHandle::Telegram {
                chat_id: 42,
                message_id: Some(10)
            })
        );
        assert_eq!(e.conversation.sender_name.as_deref(), Some("ada"));
        let e = event(p.receive(&req(
            "s3cr3t_-T",
            &text_update(12, -100, "supergroup", 7, "hi all"),
        )));
        assert_eq!(
            (
                e.conversation.chat_id.as_str(),
                e.conversation.sender_id.as_str(),
                e.conversation.chat_type
            ),
            ("-100", "7", ChatType::Group)
        );
    }

    #[test]
    fn config_table() {
        assert!(Telegram::from_config(&source(
            "telegram",
            0,
            json!({"secret_token": "a", "bot_token": "1:x", "api_base": "x"})
        ))
        .is_ok());
        let long = "a".repeat(257);
        for (settings, key) in [
            (json!({}), "sources.src.secret_token"),
            (
                json!({"secret_token": "has space"}),
                "sources.src.secret_token",
            ),
            (json!({"secret_token": "ünï"}), "sources.src.secret_token"),
            (json!({"secret_token": long}), "sources.src.secret_token"),
            (
                json!({"secret_token": "ok", "token": "x"}),
                "sources.src.token",
            ),
        ] {
            let src = source("telegram", 0, settings);
            let issues = problems(Telegram::from_config(&src), &src);
            assert_eq!(issue_keys(&issues), [key]);
            assert!(
                !format!("{issues:?}").contains("has space"),
                "the value is not echoed"
            );
        }
    }
}
