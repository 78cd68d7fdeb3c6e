//! Slack apps (`platform = "slack"`). This module owns the keys `signing_secret` and
//! `bot_user_id` (optional); the v0 signature (`X-Slack-Signature` over
//! `v0:{X-Slack-Request-Timestamp}:{raw body}`) with the `max_skew_secs` window (Slack's 300 s by
//! default); the Events API (`url_verification` challenge, `message` and `app_mention`) and slash
//! commands (form-encoded). It drops what must not be answered: the bot's own messages (or it
//! answers itself forever), edits, deletions, joins and other subtypes. Dedup is on `event_id`
//! (slash commands: `trigger_id`); a retry (`X-Slack-Retry-Num`) keeps the key, so the server's
//! door dedup answers it as a success. Replies use keys the dispatcher's reply channel declares
//! (`bot_token`, `api_base`). It must not do I/O.
//!
//! In Socket Mode (`mode = "stream"`) the connector pushes each envelope's `payload` through
//! [`Platform::pushed`]: an Events API `event_callback` (the HTTP callback's own JSON) or a
//! slash command (its form fields as a JSON object). The connection authenticated it, so
//! `signing_secret` is not needed; the normalisation, the event and the dedup key are this
//! module's, as over HTTP.
use super::sender::SignedRequest;
use super::verify::{check_window_text, ct_eq, hmac_sha256, json_body, json_str, looks_like_json};
use super::{HookReply, HookRequest, Intake, NewEvent, Normalised, Platform, Rejection};
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig, SourceMode};
use shared::envelope::{ChatType, Conversation, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;

/// The keys this module reads (the reply channel declares its own).
pub const KEYS: &[&str] = &["signing_secret", "bot_user_id"];

pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
pub const SIGNATURE_HEADER: &str = "x-slack-signature";

#[derive(Debug)]
pub struct Slack {
    /// None only in Socket Mode, whose sources the ingress does not serve.
    signing_secret: Option<Secret>,
    /// The bot's own user id (`U…`): its messages are dropped and its mentions stripped.
    bot_user_id: Option<String>,
    max_skew_secs: u64,
}

impl Slack {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        // A Socket Mode source's events come over the connection: nothing to sign them with.
        let stream = source.mode == SourceMode::Stream;
        let signing_secret = if stream {
            keys.secret("signing_secret")
        } else {
            keys.required_secret("signing_secret")
        };
        let bot_user_id = keys.str("bot_user_id");
        let value = (stream || signing_secret.is_some()).then_some(Self {
            signing_secret,
            bot_user_id,
            max_skew_secs: source.max_skew_secs,
        });
        keys.finish(value)
    }
}

/// `X-Slack-Signature`: `v0=` + hex(hmac_sha256(signing_secret, "v0:" + timestamp + ":" + body)).
pub fn signature(signing_secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(
        signing_secret.as_bytes(),
        &[b"v0:", timestamp.as_bytes(), b":", body],
    );
    format!("v0={}", hex::encode(mac))
}

impl Platform for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        // A Socket Mode source has no secret to verify a callback with: it takes none.
        let secret = self
            .signing_secret
            .as_ref()
            .ok_or(Rejection::BadSignature)?;
        let ts = req
            .header(TIMESTAMP_HEADER)
            .ok_or(Rejection::MissingSignature)?;
        let presented = req
            .header(SIGNATURE_HEADER)
            .ok_or(Rejection::MissingSignature)?;
        let expected = signature(secret.expose(), ts, &req.body);
        if !ct_eq(
            presented.trim().to_ascii_lowercase().as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(Rejection::BadSignature);
        }
        check_window_text(ts, req.now, self.max_skew_secs)?;
        let form = match req.header("content-type") {
            Some(ct) if ct.starts_with("application/x-www-form-urlencoded") => true,
            Some(ct) if ct.starts_with("application/json") => false,
            _ => !looks_like_json(&req.body),
        };
        if form {
            let fields: serde_json::Map<String, Value> = url::form_urlencoded::parse(&req.body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect();
            let payload = Value::Object(fields);
            return Ok(Intake::answered_empty(self.command(&payload)?, payload));
        }
        self.json_intake(json_body(&req.body)?)
    }

    /// A Socket Mode envelope's `payload`: an `event_callback`, or a slash command's fields
    /// (a JSON object with `command`, where the callback sends a form).
    fn pushed(&self, payload: &[u8]) -> Result<Intake, Rejection> {
        let body = json_body(payload)?;
        if body.get("type").is_none() && body.get("command").is_some() {
            return Ok(Intake::answered_empty(self.command(&body)?, body));
        }
        self.json_intake(body)
    }
}

impl Slack {
    /// A JSON body: the `url_verification` challenge or an Events API callback.
    fn json_intake(&self, body: Value) -> Result<Intake, Rejection> {
        let normalised = match json_str(&body, "type").as_deref() {
            Some("url_verification") => {
                let challenge = json_str(&body, "challenge")
                    .ok_or_else(|| Rejection::malformed("no challenge"))?;
                let reply = HookReply::json(StatusCode::OK, &json!({ "challenge": challenge }));
                return Ok(Intake::Reply(reply));
            }
            Some("event_callback") => self.event(&body)?,
            Some("app_rate_limited") => Err("rate_limited"),
            Some(_) => Err("event"),
            None => return Err(Rejection::malformed("no type")),
        };
        Ok(Intake::answered_empty(normalised, body))
    }

    /// An Events API `event_callback`.
    fn event(&self, body: &Value) -> Result<Normalised, Rejection> {
        let event_id =
            json_str(body, "event_id").ok_or_else(|| Rejection::malformed("no event_id"))?;
        let event = body
            .get("event")
            .ok_or_else(|| Rejection::malformed("no event"))?;
        let kind = json_str(event, "type").unwrap_or_default();
        match kind.as_str() {
            "message" | "app_mention" => {}
            "reaction_added" | "reaction_removed" => return Ok(Err("reaction")),
            "member_joined_channel" | "member_left_channel" | "team_join" => {
                return Ok(Err("join"))
            }
            _ => return Ok(Err("event")),
        }
        let user = json_str(event, "user");
        // The bot's own posts come back as events: answering them would loop forever.
        if event.get("bot_id").is_some_and(|b| !b.is_null())
            || (user.is_some() && user == self.bot_user_id)
        {
            return Ok(Err("bot_echo"));
        }
        if let Some(subtype) = json_str(event, "subtype") {
            return Ok(Err(subtype_reason(&subtype)));
        }
        let user = user.ok_or_else(|| Rejection::malformed("no event.user"))?;
        let channel =
            json_str(event, "channel").ok_or_else(|| Rejection::malformed("no event.channel"))?;
        let channel_type = json_str(event, "channel_type");
        let raw_text = json_str(event, "text").unwrap_or_default();
        if let Some(bot) = &self.bot_user_id {
            // A channel message that mentions the bot also arrives as `app_mention`: answer that one.
            if kind == "message"
                && channel_type.as_deref() != Some("im")
                && raw_text.contains(&format!("<@{bot}>"))
            {
                return Ok(Err("mention_duplicate"));
            }
        }
        let text = self.strip_mentions(&raw_text, kind == "app_mention");
        if text.is_empty() {
            return Ok(Err("empty"));
        }
        let ts = json_str(event, "ts");
        let thread_ts = json_str(event, "thread_ts");
        // Direct messages are `im`; app mentions carry no channel_type, but DM channel ids start with D.
        let single = channel_type.as_deref() == Some("im")
            || (channel_type.is_none() && channel.starts_with('D'));
        Ok(Ok(NewEvent {
            dedup_key: event_id,
            kind: "message".into(),
            conversation: Conversation {
                chat_id: channel.clone(),
                chat_type: if single {
                    ChatType::Single
                } else {
                    ChatType::Group
                },
                sender_id: user,
                sender_name: None,
                thread_id: thread_ts.clone(),
            },
            text,
            reply: Some(ReplyHandle::Slack {
                channel,
                thread_ts: thread_ts.or(ts),
                response_url: None,
            }),
            payload: Value::Null,
        }))
    }

    /// A slash command (form fields as a JSON object).
    fn command(&self, form: &Value) -> Result<Normalised, Rejection> {
        if form.get("ssl_check").is_some() {
            return Ok(Err("ssl_check"));
        }
        if form.get("payload").is_some() {
            return Ok(Err("interaction"));
        }
        let command =
            json_str(form, "command").ok_or_else(|| Rejection::malformed("no command"))?;
        let trigger_id =
            json_str(form, "trigger_id").ok_or_else(|| Rejection::malformed("no trigger_id"))?;
        let user = json_str(form, "user_id").ok_or_else(|| Rejection::malformed("no user_id"))?;
        let channel =
            json_str(form, "channel_id").ok_or_else(|| Rejection::malformed("no channel_id"))?;
        let text = json_str(form, "text")
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        // A bare command (`/help`) is itself the question.
        let text = if text.is_empty() { command } else { text };
        let single = json_str(form, "channel_name").as_deref() == Some("directmessage");
        Ok(Ok(NewEvent {
            dedup_key: trigger_id,
            kind: "command".into(),
            conversation: Conversation {
                chat_id: channel.clone(),
                chat_type: if single {
                    ChatType::Single
                } else {
                    ChatType::Group
                },
                sender_id: user,
                sender_name: json_str(form, "user_name"),
                thread_id: None,
            },
            text,
            reply: Some(ReplyHandle::Slack {
                channel,
                thread_ts: None,
                response_url: json_str(form, "response_url"),
            }),
            payload: Value::Null,
        }))
    }

    /// Removes `<@bot>` mentions (and, in an `app_mention`, the leading mention that addressed it).
    fn strip_mentions(&self, text: &str, app_mention: bool) -> String {
        let mut text = text.to_owned();
        if let Some(bot) = &self.bot_user_id {
            text = text.replace(&format!("<@{bot}>"), "");
        } else if app_mention {
            let trimmed = text.trim_start();
            if let Some(end) = trimmed.strip_prefix("<@").and_then(|rest| rest.find('>')) {
                text = trimmed[end + 3..].to_owned();
            }
        }
        text.trim().to_owned()
    }
}

/// The metric label of a message subtype.
fn subtype_reason(subtype: &str) -> &'static str {
    match subtype {
        "bot_message" => "bot_echo",
        "message_changed" => "edited",
        "message_deleted" => "deleted",
        "channel_join"
        | "channel_leave"
        | "group_join"
        | "group_leave"
        | "member_joined_channel" => "join",
        "message_replied" => "thread_update",
        _ => "subtype",
    }
}

/// A request as Slack sends it, signed at `timestamp`. `content_type` is `application/json` for
/// events and `application/x-www-form-urlencoded` for slash commands.
pub fn request(
    signing_secret: &str,
    timestamp: i64,
    body: &str,
    content_type: &str,
) -> SignedRequest {
    let ts = timestamp.to_string();
    SignedRequest::new(Method::POST, body.to_owned())
        .with_header("content-type", content_type)
        .with_header(TIMESTAMP_HEADER, &ts)
        .with_header(
            SIGNATURE_HEADER,
            signature(signing_secret, &ts, body.as_bytes()),
        )
}

/// An Events API `event_callback` around `event`.
pub fn event_callback(event_id: &str, event: Value) -> String {
    json!({
        "token": "legacy", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
        "event_id": event_id, "event_time": 1_700_000_000, "event": event,
    })
    .to_string()
}

/// A user's `message` event; `channel_type` is `im` for a direct message, `channel` otherwise.
pub fn message_event(channel: &str, channel_type: &str, user: &str, text: &str, ts: &str) -> Value {
    json!({ "type": "message", "channel": channel, "channel_type": channel_type, "user": user, "text": text, "ts": ts })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
