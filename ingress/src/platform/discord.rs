//! Discord's interactions endpoint (`platform = "discord"`). This module owns the keys
//! `public_key` (the application's Ed25519 public key, 64 hex digits from the Developer Portal)
//! and `application_id` (optional: when set, interactions of another application are refused);
//! the signature (`X-Signature-Ed25519` over `X-Signature-Timestamp` + the raw body, which Discord
//! probes with invalid signatures when the URL is saved: they must get 401) with the source's
//! `max_skew_secs` window against replays; and the interaction body. PING (type 1) is answered
//! `{"type":1}`; an application command (type 2) becomes an event deduplicated on the
//! interaction's id and is answered with a deferred response (type 5, "thinking…") once the
//! broker confirmed it: the dispatcher's reply channel later edits that response. Components and
//! modal submissions are acknowledged without an event (type 6), autocomplete with no choices.
//! The interaction token (valid 15 minutes) goes into the reply handle, and out of the payload.
//! Replies use keys the dispatcher's reply channel declares (`bot_token`, `api_base`). It must not
//! do I/O.
//!
//! A source with `mode = "stream"` takes messages from Discord's Gateway instead, through the
//! connector's Discord protocol: it needs no `public_key` (the connection is the
//! authentication), and its messages are [`gateway`]'s to read.
use super::sender::SignedRequest;
use super::verify::{check_window_text, json_body, json_str};
use super::{HookReply, HookRequest, Intake, NewEvent, Platform, Rejection};
use axum::http::{Method, StatusCode};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig, SourceMode};
use shared::envelope::{ChatType, Conversation, ReplyHandle};
use shared::keys::Keys;

/// The keys this module reads (the reply channel declares its own).
pub const KEYS: &[&str] = &["public_key", "application_id"];

pub const SIGNATURE_HEADER: &str = "x-signature-ed25519";
pub const TIMESTAMP_HEADER: &str = "x-signature-timestamp";

/// How long Discord accepts an interaction token: the answer must be written within it.
pub const TOKEN_LIFETIME_MS: i64 = 15 * 60 * 1000;

/// Interaction types (Discord's `InteractionType`).
const PING: u64 = 1;
const APPLICATION_COMMAND: u64 = 2;
const MESSAGE_COMPONENT: u64 = 3;
const AUTOCOMPLETE: u64 = 4;
const MODAL_SUBMIT: u64 = 5;

/// Interaction callback types (Discord's `InteractionCallbackType`).
const PONG: u64 = 1;
const DEFERRED_CHANNEL_MESSAGE: u64 = 5;
const DEFERRED_UPDATE_MESSAGE: u64 = 6;
const AUTOCOMPLETE_RESULT: u64 = 8;

/// Application command types whose target is a message (`MESSAGE`: "Apps → Ask about this").
const MESSAGE_COMMAND: u64 = 3;

pub mod gateway;

#[derive(Debug)]
pub struct Discord {
    /// None only for a stream source, which takes no interactions.
    public_key: Option<VerifyingKey>,
    application_id: Option<String>,
    max_skew_secs: u64,
}

impl Discord {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        // A stream source's messages come over the Gateway connection: nothing to verify.
        let stream = source.mode == SourceMode::Stream;
        let hex_key = if stream {
            keys.str("public_key")
        } else {
            keys.required_str("public_key")
        };
        let parsed = hex_key.map(|hex_key| match parse_public_key(&hex_key) {
            Ok(key) => Some(key),
            Err(problem) => {
                keys.issue("public_key", problem);
                None
            }
        });
        let application_id = keys.id("application_id");
        let value = match parsed {
            Some(None) => None,
            Some(Some(key)) => Some(Some(key)),
            None if stream => Some(None),
            None => None,
        }
        .map(|public_key| Self {
            public_key,
            application_id,
            max_skew_secs: source.max_skew_secs,
        });
        keys.finish(value)
    }
}

/// The application's public key as the Developer Portal shows it: 64 hex digits.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, &'static str> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("must be 64 hex digits (the application's public key)")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "is not an Ed25519 public key")
}

/// Whether `signature_hex` is the key's signature of `timestamp` + `body` (strict Ed25519: no
/// malleable or small-order signatures).
pub fn verify(key: &VerifyingKey, timestamp: &str, body: &[u8], signature_hex: &str) -> bool {
    let Some(bytes) = hex::decode(signature_hex.trim())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    let signature = Signature::from_bytes(&bytes);
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify_strict(&signed, &signature).is_ok()
}

/// `X-Signature-Ed25519` as Discord writes it: hex of the signature of `timestamp` + `body`.
pub fn signature(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    hex::encode(key.sign(&signed).to_bytes())
}

fn callback(kind: u64) -> HookReply {
    HookReply::json(StatusCode::OK, &json!({ "type": kind }))
}

impl Platform for Discord {
    fn name(&self) -> &'static str {
        "discord"
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let ts = req
            .header(TIMESTAMP_HEADER)
            .ok_or(Rejection::MissingSignature)?;
        let presented = req
            .header(SIGNATURE_HEADER)
            .ok_or(Rejection::MissingSignature)?;
        let Some(public_key) = &self.public_key else {
            return Err(Rejection::BadSignature);
        };
        if !verify(public_key, ts, &req.body, presented) {
            return Err(Rejection::BadSignature);
        }
        check_window_text(ts, req.now, self.max_skew_secs)?;
        let mut body = json_body(&req.body)?;
        if let (Some(ours), Some(theirs)) = (
            &self.application_id,
            json_str(&body, "application_id").as_ref(),
        ) {
            if ours != theirs {
                return Err(Rejection::WrongReceiver);
            }
        }
        let kind = body
            .get("type")
            .and_then(Value::as_u64)
            .ok_or_else(|| Rejection::malformed("no type"))?;
        match kind {
            PING => Ok(Intake::Reply(callback(PONG))),
            APPLICATION_COMMAND => {
                let event = command(&body, req.now.timestamp_millis())?;
                // The token is a credential: it lives in the reply handle only.
                if let Some(obj) = body.as_object_mut() {
                    obj.remove("token");
                }
                Ok(Intake::Event {
                    event: NewEvent {
                        payload: body,
                        ..event
                    },
                    reply: callback(DEFERRED_CHANNEL_MESSAGE),
                })
            }
            MESSAGE_COMPONENT | MODAL_SUBMIT => Ok(Intake::Ignore {
                reason: "interaction",
                reply: callback(DEFERRED_UPDATE_MESSAGE),
            }),
            AUTOCOMPLETE => Ok(Intake::Ignore {
                reason: "autocomplete",
                reply: HookReply::json(
                    StatusCode::OK,
                    &json!({ "type": AUTOCOMPLETE_RESULT, "data": { "choices": [] } }),
                ),
            }),
            other => Err(Rejection::malformed(format!(
                "unknown interaction type {other}"
            ))),
        }
    }

    /// A message from the Gateway, as the connector hands it over
    /// ([`gateway::pushed_payload`]).
    fn pushed(&self, payload: &[u8]) -> Result<Intake, Rejection> {
        gateway::pushed(payload)
    }
}

/// An application command (type 2) received at `now_ms`, as an event.
fn command(body: &Value, now_ms: i64) -> Result<NewEvent, Rejection> {
    let id = json_str(body, "id").ok_or_else(|| Rejection::malformed("no id"))?;
    let token = json_str(body, "token").ok_or_else(|| Rejection::malformed("no token"))?;
    let application_id = json_str(body, "application_id")
        .ok_or_else(|| Rejection::malformed("no application_id"))?;
    let channel_id = json_str(body, "channel_id")
        .or_else(|| body.pointer("/channel/id").and_then(scalar))
        .ok_or_else(|| Rejection::malformed("no channel_id"))?;
    let data = body
        .get("data")
        .ok_or_else(|| Rejection::malformed("no data"))?;
    let name = json_str(data, "name").ok_or_else(|| Rejection::malformed("no data.name"))?;
    // In a server the user is the member's; in a DM it is the interaction's own.
    let user = body
        .pointer("/member/user")
        .or_else(|| body.get("user"))
        .ok_or_else(|| Rejection::malformed("no user"))?;
    let user_id = json_str(user, "id").ok_or_else(|| Rejection::malformed("no user.id"))?;
    let in_guild = json_str(body, "guild_id").is_some();
    let text = command_text(data, &name);
    Ok(NewEvent {
        dedup_key: id,
        kind: "command".into(),
        conversation: Conversation {
            chat_id: channel_id.clone(),
            chat_type: if in_guild {
                ChatType::Group
            } else {
                ChatType::Single
            },
            sender_id: user_id,
            sender_name: json_str(user, "global_name").or_else(|| json_str(user, "username")),
            thread_id: None,
        },
        text,
        reply: Some(ReplyHandle::Discord {
            application_id,
            channel_id,
            interaction_token: Some(token),
            token_expires_at: Some(now_ms + TOKEN_LIFETIME_MS),
            message_id: None,
        }),
        payload: Value::Null,
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The question a command asks: the values of its options in order (through subcommands), the
/// content of the message a message command targets, or the bare command (`/help`).
pub fn command_text(data: &Value, name: &str) -> String {
    if data.get("type").and_then(Value::as_u64) == Some(MESSAGE_COMMAND) {
        if let Some(target) = json_str(data, "target_id") {
            let content = data
                .pointer(&format!("/resolved/messages/{target}/content"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim();
            if !content.is_empty() {
                return content.to_owned();
            }
        }
    }
    let mut values = Vec::new();
    option_values(data.get("options"), &mut values);
    let text = values.join(" ").trim().to_owned();
    if text.is_empty() {
        format!("/{name}")
    } else {
        text
    }
}

fn option_values(options: Option<&Value>, out: &mut Vec<String>) {
    for option in options.and_then(Value::as_array).into_iter().flatten() {
        match option.get("value") {
            Some(Value::String(s)) => out.push(s.clone()),
            Some(Value::Number(n)) => out.push(n.to_string()),
            Some(Value::Bool(b)) => out.push(b.to_string()),
            _ => option_values(option.get("options"), out),
        }
    }
}

/// An interaction as Discord sends it, signed with `key` at `timestamp`.
pub fn request(key: &SigningKey, timestamp: i64, body: &str) -> SignedRequest {
    let ts = timestamp.to_string();
    SignedRequest::new(Method::POST, body.to_owned())
        .with_header("content-type", "application/json")
        .with_header(TIMESTAMP_HEADER, &ts)
        .with_header(SIGNATURE_HEADER, signature(key, &ts, body.as_bytes()))
}

/// A slash command `/name` with one string option `question`, run by `user` in `channel` of
/// `guild` (none: a DM).
pub fn slash_command(
    id: &str,
    application_id: &str,
    token: &str,
    guild: Option<&str>,
    channel: &str,
    user: &str,
    question: &str,
) -> String {
    let user = json!({ "id": user, "username": "ada", "global_name": "Ada" });
    let mut body = json!({
        "id": id, "application_id": application_id, "type": APPLICATION_COMMAND, "token": token,
        "version": 1, "channel_id": channel, "channel": { "id": channel, "type": 0 },
        "data": { "id": "cmd1", "name": "ask", "type": 1,
                  "options": [{ "name": "question", "type": 3, "value": question }] },
    });
    match guild {
        Some(g) => {
            body["guild_id"] = json!(g);
            body["member"] = json!({ "user": user, "roles": [] });
        }
        None => body["user"] = user,
    }
    body.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
