//! DingTalk enterprise robots in HTTP mode (`platform = "dingtalk"`). This module owns the key
//! `app_secret`; the `timestamp` (ms) / `sign` headers, `sign = base64(hmac_sha256(app_secret,
//! timestamp + "\n" + app_secret))`, with DingTalk's one-hour window; and the message body
//! (`msgId`, `conversationId`, `conversationType` 1 single / 2 group, `senderStaffId`,
//! `text.content`, `sessionWebhook` and its expiry), answered with 200 and an empty body. The
//! session webhook and its expiry go into the reply handle; the dispatcher falls back to the robot
//! API with keys its reply channel declares (`app_key`, `robot_code`, …); `robot_code` is also
//! this module's, for handles whose message carries none.
//!
//! DingTalk signs the timestamp, not the body: one observed `timestamp`/`sign` pair would let
//! anyone post any body for as long as it is valid. So the window is DingTalk's hour and never
//! more (`max_skew_secs` above 3600, or 0, is a config error), and the module hands the server
//! the signature's identity and remaining validity ([`Platform::body_free_signature`]): the
//! server lets one signature vouch for one body only. The reply URL a body names is the
//! dispatcher's to check against DingTalk's hosts. It must not do I/O.
//!
//! In Stream mode (`mode = "stream"`) the connector pushes the same message JSON through
//! [`Platform::pushed`]: the connection authenticated it, so `app_secret` is not needed (the
//! connector's `client_id`/`client_secret` open the connection) and the normalisation is
//! this module's.
use super::sender::SignedRequest;
use super::verify::{
    check_window_ms, ct_eq, hmac_sha256, json_at, json_body, json_str, B64_LENIENT,
};
use super::{BodyFreeSignature, HookRequest, Intake, NewEvent, Normalised, Platform, Rejection};
use axum::http::Method;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use shared::config::{ConfigIssue, SourceConfig, SourceMode};
use shared::envelope::{ChatType, Conversation, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;
use std::time::Duration;

/// The keys this module reads (the reply channel declares its own).
pub const KEYS: &[&str] = &["app_secret", "robot_code"];

/// DingTalk's own rule: a callback more than an hour off is refused. It is also the longest a
/// signature may be valid: it covers no body.
pub const PLATFORM_WINDOW_SECS: u64 = 3600;

#[derive(Debug)]
pub struct Dingtalk {
    /// None only in Stream mode, whose sources the ingress does not serve.
    app_secret: Option<Secret>,
    robot_code: Option<String>,
}

impl Dingtalk {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let stream = source.mode == SourceMode::Stream;
        // A stream source's events come over the connection: nothing to sign them with.
        let app_secret = if stream {
            keys.secret("app_secret")
        } else {
            keys.required_secret("app_secret")
        };
        let robot_code = keys.str("robot_code");
        // The window is always DingTalk's hour: a narrower one would refuse DingTalk's own
        // retries, a wider one (or none) would let an observed signature sign any body longer.
        if !stream && (source.max_skew_secs == 0 || source.max_skew_secs > PLATFORM_WINDOW_SECS) {
            keys.issue(
                "max_skew_secs",
                format!(
                    "must be 1 to {PLATFORM_WINDOW_SECS} for DingTalk (its signature covers only \
                     a timestamp, so the window cannot be disabled or widened; it is always \
                     DingTalk's hour)"
                ),
            );
        }
        let value = (stream || app_secret.is_some()).then_some(Self {
            app_secret,
            robot_code,
        });
        keys.finish(value)
    }
}

/// `sign` for a timestamp in milliseconds (also the custom robot's outbound `sign`, before URL-encoding).
pub fn sign(secret: &str, timestamp_ms: i64) -> String {
    let msg = format!("{timestamp_ms}\n{secret}");
    B64.encode(hmac_sha256(secret.as_bytes(), &[msg.as_bytes()]))
}

impl Platform for Dingtalk {
    fn name(&self) -> &'static str {
        "dingtalk"
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        // A Stream-mode source has no secret to verify a callback with: it takes none.
        let secret = self.app_secret.as_ref().ok_or(Rejection::BadSignature)?;
        let ts = req.header("timestamp").ok_or(Rejection::MissingSignature)?;
        let presented = req.header("sign").ok_or(Rejection::MissingSignature)?;
        let ts = ts.trim();
        let secret = secret.expose();
        // The timestamp is signed as sent, not as we would write the number.
        let expected = hmac_sha256(
            secret.as_bytes(),
            &[ts.as_bytes(), b"\n", secret.as_bytes()],
        );
        // Compare the MACs, not their text: base64 may arrive with or without padding.
        let presented = B64_LENIENT
            .decode(presented.trim())
            .map_err(|_| Rejection::BadSignature)?;
        if !ct_eq(&presented, &expected) {
            return Err(Rejection::BadSignature);
        }
        let ts_ms: i64 = ts.parse().map_err(|_| Rejection::StaleTimestamp)?;
        check_window_ms(ts_ms, req.now, PLATFORM_WINDOW_SECS)?;
        let payload = json_body(&req.body)?;
        Ok(Intake::answered_empty(self.normalise(&payload)?, payload))
    }

    /// The signed timestamp, as sent, is the signature's identity (the `sign` is a function of
    /// it alone, and base64 may be padded either way); it is valid until an hour after it.
    fn body_free_signature(&self, req: &HookRequest) -> Option<BodyFreeSignature> {
        let ts = req.header("timestamp")?.trim();
        let ts_ms: i64 = ts.parse().ok()?;
        let window_ms = i64::try_from(PLATFORM_WINDOW_SECS * 1000).ok()?;
        let left_ms = ts_ms
            .saturating_add(window_ms)
            .saturating_sub(req.now.timestamp_millis());
        Some(BodyFreeSignature {
            id: ts.to_owned(),
            // At least a second: a signature at the window's edge is still remembered.
            valid_for: Duration::from_millis(u64::try_from(left_ms).unwrap_or(0).max(1000)),
        })
    }

    /// A robot message pushed in Stream mode: the callback's own JSON.
    fn pushed(&self, payload: &[u8]) -> Result<Intake, Rejection> {
        let payload = json_body(payload)?;
        Ok(Intake::answered_empty(self.normalise(&payload)?, payload))
    }
}

impl Dingtalk {
    /// The event of a robot message, or why it is dropped.
    fn normalise(&self, body: &Value) -> Result<Normalised, Rejection> {
        let msg_id = json_str(body, "msgId").ok_or_else(|| Rejection::malformed("no msgId"))?;
        let conversation_id = json_str(body, "conversationId")
            .ok_or_else(|| Rejection::malformed("no conversationId"))?;
        let msg_type = json_str(body, "msgtype").unwrap_or_else(|| "text".into());
        if msg_type != "text" {
            return Ok(Err("not_text"));
        }
        // DingTalk removes the @robot mention but leaves the blank before the text.
        let text = json_at(body, "/text/content")
            .unwrap_or_default()
            .trim()
            .to_owned();
        if text.is_empty() {
            return Ok(Err("empty"));
        }
        let staff_id = json_str(body, "senderStaffId").filter(|s| !s.is_empty());
        let sender_id = staff_id
            .clone()
            .or_else(|| json_str(body, "senderId"))
            .ok_or_else(|| Rejection::malformed("no senderStaffId or senderId"))?;
        // conversationType is "1" (single) or "2" (group), as a string or a number.
        let chat_type = match json_str(body, "conversationType").as_deref() {
            Some("2") => ChatType::Group,
            _ => ChatType::Single,
        };
        let robot_code = json_str(body, "robotCode").or_else(|| self.robot_code.clone());
        Ok(Ok(NewEvent {
            dedup_key: msg_id,
            kind: "message".into(),
            conversation: Conversation {
                chat_id: conversation_id.clone(),
                chat_type,
                sender_id,
                sender_name: json_str(body, "senderNick"),
                thread_id: None,
            },
            text,
            reply: Some(ReplyHandle::Dingtalk {
                session_webhook: json_str(body, "sessionWebhook"),
                session_webhook_expires_at: body
                    .get("sessionWebhookExpiredTime")
                    .and_then(Value::as_i64),
                conversation_id,
                robot_code,
                sender_staff_id: staff_id,
            }),
            payload: Value::Null,
        }))
    }
}

/// A callback as DingTalk sends it: `body` (JSON) with the signed `timestamp`/`sign` headers.
pub fn request(app_secret: &str, timestamp_ms: i64, body: &str) -> SignedRequest {
    SignedRequest::new(Method::POST, body.to_owned())
        .with_header("content-type", "application/json")
        .with_header("timestamp", timestamp_ms.to_string())
        .with_header("sign", sign(app_secret, timestamp_ms))
}

/// A text message body as a robot receives it. `group` picks conversationType 2.
pub fn text_message(
    msg_id: &str,
    conversation_id: &str,
    group: bool,
    sender_staff_id: &str,
    text: &str,
    session_webhook: &str,
    expires_at_ms: i64,
) -> String {
    serde_json::json!({
        "msgId": msg_id,
        "msgtype": "text",
        "conversationId": conversation_id,
        "conversationType": if group { "2" } else { "1" },
        "senderStaffId": sender_staff_id,
        "senderId": format!("$:LWCP_v1:${sender_staff_id}"),
        "senderNick": sender_staff_id,
        "robotCode": "dingrobot",
        "text": { "content": format!(" {text}") },
        "sessionWebhook": session_webhook,
        "sessionWebhookExpiredTime": expires_at_ms,
        "createAt": expires_at_ms - 5_400_000,
    })
    .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};
    use serde_json::json;

    #[test]
    fn official_vector() {
        assert_eq!(
            sign("secret", 1_700_000_000_000),
            "OuzzJR5+xZ4/EYwqtNt6sMYZQMTa/HEGvc9miJe7XzY="
        );
        // The custom robot puts it in the query, URL-encoded.
        let encoded: String =
            url::form_urlencoded::byte_serialize(sign("secret", 1_700_000_000_000).as_bytes())
                .collect();
        assert_eq!(
            encoded,
            "OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"
        );
    }

    fn platform(max_skew_secs: u64) -> Dingtalk {
        Dingtalk::from_config(&source(
            "dingtalk",
            max_skew_secs,
            json!({"app_secret": "s3cret"}),
        ))
        .unwrap()
    }

    #[test]
    fn receive_table() {
        let now_ms = 1_700_000_000_000;
        let body = text_message(
            "msg-1",
            "cid-1",
            true,
            "staff-7",
            "hello",
            "https://oapi/session",
            now_ms + 5_400_000,
        );
        let good = request("s3cret", now_ms, &body).to_hook_request(at(now_ms / 1000));
        let with = |f: &dyn Fn(&mut HookRequest)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        let other_body = |b: Value| with(&|r| r.body = b.to_string().into());
        let base: Value = serde_json::from_str(&body).unwrap();
        let mut picture = base.clone();
        picture["msgtype"] = json!("picture");
        let mut blank = base.clone();
        blank["text"]["content"] = json!("  ");
        let mut no_id = base.clone();
        no_id.as_object_mut().unwrap().remove("msgId");
        let cases: Vec<(&str, HookRequest, &str)> = vec![
            ("good", good.clone(), "event"),
            (
                "within the hour",
                with(&|r| r.now = at(now_ms / 1000 + 3600)),
                "event",
            ),
            (
                "past the hour",
                with(&|r| r.now = at(now_ms / 1000 + 3601)),
                "stale_timestamp",
            ),
            (
                "before the hour",
                with(&|r| r.now = at(now_ms / 1000 - 3601)),
                "stale_timestamp",
            ),
            (
                "wrong secret",
                request("other", now_ms, &body).to_hook_request(at(now_ms / 1000)),
                "bad_signature",
            ),
            (
                "tampered sign",
                with(&|r| {
                    r.headers.insert(
                        "sign",
                        "OuzzJR5+xZ4/EYwqtNt6sMYZQMTa/HEGvc9miJe7XzY="
                            .parse()
                            .unwrap(),
                    );
                }),
                "bad_signature",
            ),
            (
                "sign not base64",
                with(&|r| {
                    r.headers.insert("sign", "%%%".parse().unwrap());
                }),
                "bad_signature",
            ),
            (
                "other timestamp",
                with(&|r| {
                    r.headers
                        .insert("timestamp", (now_ms + 1).to_string().parse().unwrap());
                }),
                "bad_signature",
            ),
            (
                "no sign",
                with(&|r| {
                    r.headers.remove("sign");
                }),
                "missing_signature",
            ),
            (
                "no timestamp",
                with(&|r| {
                    r.headers.remove("timestamp");
                }),
                "missing_signature",
            ),
            ("not json", with(&|r| r.body = "{".into()), "malformed"),
            ("no msgId", other_body(no_id), "malformed"),
            ("picture", other_body(picture), "ignore:not_text"),
            ("blank", other_body(blank), "ignore:empty"),
            (
                "GET",
                with(&|r| r.method = Method::GET),
                "method_not_allowed",
            ),
        ];
        let p = platform(300);
        for (name, req, want) in cases {
            assert_eq!(outcome(&p.receive(&req)), want, "{name}");
        }
        let e = event(p.receive(&good));
        assert_eq!((e.dedup_key.as_str(), e.text.as_str()), ("msg-1", "hello"));
        assert_eq!(
            (e.conversation.chat_id.as_str(), e.conversation.chat_type),
            ("cid-1", ChatType::Group)
        );
        assert_eq!(e.conversation.sender_id, "staff-7");
        assert_eq!(
            e.reply,
            Some(ReplyHandle::Dingtalk {
                session_webhook: Some("https://oapi/session".into()),
                session_webhook_expires_at: Some(now_ms + 5_400_000),
                conversation_id: "cid-1".into(),
                robot_code: Some("dingrobot".into()),
                sender_staff_id: Some("staff-7".into()),
            })
        );
        assert_eq!(e.payload, base);
        let single = text_message("m2", "cid-2", false, "s", "hi", "u", 0);
        let e = event(
            p.receive(&request("s3cret", now_ms, &single).to_hook_request(at(now_ms / 1000))),
        );
        assert_eq!(e.conversation.chat_type, ChatType::Single);
        // Whatever the source's window, DingTalk's hour is the window.
        for skew in [1, 300, 3600] {
            let p = platform(skew);
            assert_eq!(outcome(&p.receive(&good)), "event", "{skew}");
            let late = with(&|r| r.now = at(now_ms / 1000 + 3601));
            assert_eq!(outcome(&p.receive(&late)), "stale_timestamp", "{skew}");
        }
    }

    /// The signature covers a timestamp only: the server is told what it stands for (the
    /// timestamp as signed) and how much longer it is valid.
    #[test]
    fn the_signature_is_the_timestamp_and_valid_for_the_rest_of_its_hour() {
        let now_ms = 1_700_000_000_000;
        let p = platform(300);
        let req =
            |ts_ms: i64, now_s: i64| request("s3cret", ts_ms, "{}").to_hook_request(at(now_s));
        let cases = [
            (now_ms, now_ms / 1000, 3600),
            (now_ms, now_ms / 1000 + 600, 3000),
            // Signed in the future: valid until an hour after its own time.
            (now_ms + 1_800_000, now_ms / 1000, 5400),
            // At the edge: still remembered for a second.
            (now_ms, now_ms / 1000 + 3600, 1),
        ];
        for (ts, now_s, left) in cases {
            assert_eq!(
                p.body_free_signature(&req(ts, now_s)),
                Some(BodyFreeSignature {
                    id: ts.to_string(),
                    valid_for: Duration::from_secs(left)
                }),
                "{ts} at {now_s}"
            );
        }
    }

    #[test]
    fn config_table() {
        let ok = json!({"app_secret": "x", "app_key": "k", "robot_code": "r", "api_base": "a", "oapi_base": "o"});
        assert!(Dingtalk::from_config(&source("dingtalk", 300, ok)).is_ok());
        for (settings, key) in [
            (json!({}), "sources.src.app_secret"),
            (
                json!({"app_secret": "x", "appsecret": "y"}),
                "sources.src.appsecret",
            ),
            (json!({"app_secret": 5}), "sources.src.app_secret"),
        ] {
            let src = source("dingtalk", 300, settings);
            assert_eq!(
                issue_keys(&problems(Dingtalk::from_config(&src), &src)),
                [key]
            );
        }
        // The window can be neither disabled nor widened past DingTalk's hour.
        for skew in [0, 3601, 86_400] {
            let src = source("dingtalk", skew, json!({"app_secret": "x"}));
            assert_eq!(
                issue_keys(&problems(Dingtalk::from_config(&src), &src)),
                ["sources.src.max_skew_secs"],
                "{skew}"
            );
        }
    }

    #[test]
    fn stream_mode_needs_no_app_secret_and_normalises_a_pushed_message_as_the_callback() {
        let mut stream = source("dingtalk", 300, json!({}));
        stream.mode = SourceMode::Stream;
        let pushed = Dingtalk::from_config(&stream).unwrap();
        let body = text_message(
            "msg-9",
            "cid-9",
            false,
            "staff1",
            "hi",
            "https://oapi.dingtalk.com/robot/sendBySession?session=x",
            1_700_000_000_000,
        );
        let via_stream = event(pushed.pushed(body.as_bytes()));
        let callback =
            request("s3cret", 1_700_000_000_000, &body).to_hook_request(at(1_700_000_000));
        let via_http = event(platform(300).receive(&callback));
        assert_eq!(via_stream, via_http, "same event, same dedup key");
        assert_eq!(via_stream.dedup_key, "msg-9");
        // No secret: it takes no callback.
        assert_eq!(pushed.receive(&callback), Err(Rejection::BadSignature));
        assert!(matches!(
            pushed.pushed(b"not json"),
            Err(Rejection::Malformed(_))
        ));
        // An HTTP source still needs its secret.
        let issues = Dingtalk::from_config(&source("dingtalk", 300, json!({}))).unwrap_err();
        assert_eq!(issue_keys(&issues), ["sources.src.app_secret"]);
    }
}
