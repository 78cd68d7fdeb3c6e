//! Standard Webhooks sources (`platform = "standard"`): `webhook-id`, `webhook-timestamp`,
//! `webhook-signature` (`v1,<base64>` entries, any may match) over `id.timestamp.body` with the
//! secret's decoded bytes. The event is the JSON body; its `text` (or `message`, `content`)
//! field is the query, its `chat_id`/`sender_id` fields the conversation when present. Dedup on
//! `webhook-id`. Keys: `secret` (`whsec_…`).
use super::verify::{check_window, json_body, json_str};
use super::{HookReply, HookRequest, Intake, NewEvent, Platform, Rejection};
use axum::http::Method;
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{ChatType, Conversation};
use shared::keys::Keys;
pub use shared::signing::SigningKey;

/// The keys this module reads.
pub const KEYS: &[&str] = &["secret"];

#[derive(Debug)]
pub struct Standard {
    key: SigningKey,
    max_skew_secs: u64,
}

impl Standard {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let key = keys.required_secret("secret").and_then(|s| {
            SigningKey::parse(s.expose())
                .map_err(|problem| keys.issue("secret", problem))
                .ok()
        });
        let value = key.map(|key| Self {
            key,
            max_skew_secs: source.max_skew_secs,
        });
        keys.finish(value)
    }
}

impl Platform for Standard {
    fn name(&self) -> &'static str {
        "standard"
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let id = req
            .header("webhook-id")
            .filter(|id| !id.trim().is_empty())
            .ok_or(Rejection::MissingSignature)?;
        let ts = req
            .header("webhook-timestamp")
            .ok_or(Rejection::MissingSignature)?;
        let sig = req
            .header("webhook-signature")
            .ok_or(Rejection::MissingSignature)?;
        let ts: i64 = ts.trim().parse().map_err(|_| Rejection::BadSignature)?;
        if !self.key.verify(id, ts, &req.body, sig) {
            return Err(Rejection::BadSignature);
        }
        check_window(ts, req.now, self.max_skew_secs)?;
        let payload = json_body(&req.body)?;
        let event = generic_event(id, payload)?;
        Ok(Intake::Event {
            event,
            reply: HookReply::accepted(),
        })
    }
}

/// The event of a generic JSON sender: `text` (or `message`, `content`, `query`) is the query;
/// `chat_id`, `sender_id` (or `user`), `sender_name` and `chat_type` describe the conversation;
/// a body without text is malformed.
pub fn generic_event(dedup_key: &str, payload: serde_json::Value) -> Result<NewEvent, Rejection> {
    // Empty strings count as absent: an empty text is no question, an empty id no sender.
    let field = |names: &[&str]| names.iter().find_map(|n| json_str(&payload, n));
    let text = field(&["text", "message", "content", "query"])
        .ok_or_else(|| Rejection::malformed("the JSON body has no `text` string"))?;
    let sender_id = field(&["sender_id", "user", "user_id"]).unwrap_or_else(|| "anonymous".into());
    let chat_id = field(&["chat_id", "conversation_id"]).unwrap_or_else(|| sender_id.clone());
    let chat_type = match field(&["chat_type"]).as_deref() {
        Some("group") => ChatType::Group,
        _ => ChatType::Single,
    };
    Ok(NewEvent {
        dedup_key: dedup_key.to_owned(),
        kind: field(&["type", "event"]).unwrap_or_else(|| "message".into()),
        conversation: Conversation {
            chat_id,
            chat_type,
            sender_id,
            sender_name: field(&["sender_name", "user_name"]),
            thread_id: None,
        },
        text,
        reply: None,
        payload,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::TimeZone;

    fn request(body: &str, sig: &str, ts: i64, now: i64) -> HookRequest {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", "evt-1".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", sig.parse().unwrap());
        HookRequest {
            method: Method::POST,
            query: None,
            headers,
            body: Bytes::from(body.to_owned()),
            now: chrono::Utc.timestamp_opt(now, 0).unwrap(),
        }
    }

    #[test]
    fn receive_table() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let p = Standard {
            key: key.clone(),
            max_skew_secs: 300,
        };
        let body = r#"{"text":"hello","sender_id":"u1"}"#;
        let now = 1_700_000_000;
        let good = key.sign("evt-1", now, body.as_bytes());
        match p.receive(&request(body, &good, now, now + 10)).unwrap() {
            Intake::Event { event, reply } => {
                assert_eq!(
                    (event.text.as_str(), event.dedup_key.as_str()),
                    ("hello", "evt-1")
                );
                assert_eq!(event.conversation.sender_id, "u1");
                assert_eq!(reply.status, 202);
            }
            other => panic!("{other:?}"),
        }
        let stale = p
            .receive(&request(body, &good, now, now + 301))
            .unwrap_err();
        assert_eq!(stale, Rejection::StaleTimestamp);
        let bad = p
            .receive(&request(&body.replace("hello", "hellp"), &good, now, now))
            .unwrap_err();
        assert_eq!(bad, Rejection::BadSignature);
        let no_text = r#"{"nothing":1}"#;
        let sig = key.sign("evt-1", now, no_text.as_bytes());
        assert_eq!(
            p.receive(&request(no_text, &sig, now, now))
                .unwrap_err()
                .reason(),
            "malformed"
        );
        let mut get = request(body, &good, now, now);
        get.method = Method::GET;
        assert_eq!(p.receive(&get).unwrap_err(), Rejection::MethodNotAllowed);
    }
}
