//! Standard Webhooks sources (`platform = "standard"`): `webhook-id`, `webhook-timestamp`,
//! `webhook-signature` (`v1,<base64>` entries, any may match) over `id.timestamp.body` with the
//! secret's decoded bytes. The event is the JSON body, any object; its `text` (or `message`,
//! `content`) field is the query unless the source names another (`text_field`, see
//! [`super::fields`]), its `chat_id`/`sender_id` fields the conversation when present. Dedup on
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
/// a body that is not a JSON object is malformed. A body without text has an empty text: whether
/// that is acceptable is the source's ([`super::fields::BodyFields`]).
pub fn generic_event(dedup_key: &str, payload: serde_json::Value) -> Result<NewEvent, Rejection> {
    if !payload.is_object() {
        return Err(Rejection::malformed("the JSON body is not an object"));
    }
    // Empty strings count as absent: an empty text is no question, an empty id no sender.
    let field = |names: &[&str]| names.iter().find_map(|n| json_str(&payload, n));
    let text = field(&["text", "message", "content", "query"]).unwrap_or_default();
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
        // Any object is an event (its text, if any, is the source's to require); anything
        // else is malformed.
        let no_text = r#"{"type":"invoice.paid","data":{"id":7}}"#;
        let sig = key.sign("evt-1", now, no_text.as_bytes());
        match p.receive(&request(no_text, &sig, now, now)).unwrap() {
            Intake::Event { event, .. } => {
                assert_eq!(
                    (event.text.as_str(), event.kind.as_str()),
                    ("", "invoice.paid")
                );
            }
            other => panic!("{other:?}"),
        }
        for not_object in ["[1,2]", "\"text\"", "42", "not json"] {
            let sig = key.sign("evt-1", now, not_object.as_bytes());
            let refused = p.receive(&request(not_object, &sig, now, now)).unwrap_err();
            assert_eq!(refused.reason(), "malformed", "{not_object}");
        }
        let mut get = request(body, &good, now, now);
        get.method = Method::GET;
        assert_eq!(p.receive(&get).unwrap_err(), Rejection::MethodNotAllowed);
    }

    /// The official Standard Webhooks vector (platforms.md): its body has no text, and is
    /// accepted as it is.
    #[test]
    fn the_official_vector_is_accepted() {
        let p = Standard {
            key: SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            max_skew_secs: 300,
        };
        let ts = 1_614_265_330;
        let mut req = request(
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ts,
            ts + 5,
        );
        req.headers.insert(
            "webhook-id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap(),
        );
        match p.receive(&req).unwrap() {
            Intake::Event { event, .. } => {
                assert_eq!(event.dedup_key, "msg_p5jXN8AQM9LWM0D4loKWxJek");
                assert_eq!(event.payload, serde_json::json!({"test": 2432232314_u64}));
            }
            other => panic!("{other:?}"),
        }
        let mut get = request("{}", "v1,x", ts, ts);
        get.method = Method::GET;
        assert_eq!(p.receive(&get).unwrap_err(), Rejection::MethodNotAllowed);
    }
}
