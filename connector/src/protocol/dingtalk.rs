//! DingTalk Stream mode (`platform = "dingtalk"`, `mode = "stream"`). This module owns the keys
//! `client_id` (the AppKey) and `client_secret` (the AppSecret), shares `api_base` with the
//! reply channel, and speaks the protocol of DingTalk's official Stream SDKs:
//!
//! - **open**: `POST {api_base}/v1.0/gateway/connections/open` with `clientId`, `clientSecret`,
//!   `subscriptions` (the robot message callback topic), `ua` and `localIp` answers
//!   `{endpoint, ticket}`; the connection is `endpoint?ticket=…`, and a ticket is single-use,
//!   so every reconnect opens again. A 4xx answer is refused credentials.
//! - **frames** are JSON text `{specVersion, type, headers: {topic, messageId, contentType,
//!   time, …}, data: "<JSON string>"}`. `SYSTEM` `ping` is answered with its own `data` and
//!   `messageId`; `SYSTEM` `disconnect` is answered, then a new connection replaces this one
//!   before the server closes it. A `CALLBACK` on the robot topic carries the HTTP callback's
//!   own JSON in `data`: it is the event, acknowledged with `code` 200, the `messageId` and
//!   `data` `{"response": null}` once kept. What is not acknowledged, DingTalk redelivers.
use super::{Frame, OpenError, Protocol, Read, Session, Step};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::keys::Keys;
use shared::Secret;
use tokio::time::Instant;

/// The keys of a source's block this module reads (`api_base` is also the reply channel's).
pub const KEYS: &[&str] = &["client_id", "client_secret", "api_base"];
pub const DEFAULT_API_BASE: &str = "https://api.dingtalk.com";
/// The topic of robot messages: the only subscription a bot needs.
pub const BOT_MESSAGE_TOPIC: &str = "/v1.0/im/bot/messages/get";
pub const OPEN_PATH: &str = "/v1.0/gateway/connections/open";

#[derive(Debug)]
pub struct DingtalkStream {
    client_id: String,
    client_secret: Secret,
    api_base: String,
}

impl DingtalkStream {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let client_id = keys.required_str("client_id");
        let client_secret = keys.required_secret("client_secret");
        let api_base = keys.base_url("api_base", DEFAULT_API_BASE);
        let value = match (client_id, client_secret) {
            (Some(client_id), Some(client_secret)) => Some(Self {
                client_id,
                client_secret,
                api_base,
            }),
            _ => None,
        };
        keys.finish(value)
    }
}

/// The `{endpoint, ticket}` of a successful open.
#[derive(Debug, Deserialize)]
struct Opened {
    endpoint: String,
    ticket: String,
}

/// The address this host would use to reach the internet (no packet is sent), as the SDKs
/// report it in `localIp`; empty when there is none.
fn local_ip() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("8.8.8.8:80")?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// What a refused open says, without anything we sent (DingTalk answers `{code, message}`).
fn refusal(status: reqwest::StatusCode, body: &str) -> String {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = parsed.get("code").and_then(Value::as_str).unwrap_or("");
    let message = parsed.get("message").and_then(Value::as_str).unwrap_or("");
    format!("HTTP {status} {code} {message}").trim().to_owned()
}

#[async_trait::async_trait]
impl Protocol for DingtalkStream {
    fn name(&self) -> &'static str {
        "dingtalk"
    }

    async fn open(&self, http: &reqwest::Client) -> Result<url::Url, OpenError> {
        let body = json!({
            "clientId": self.client_id,
            "clientSecret": self.client_secret.expose(),
            "subscriptions": [{"type": "CALLBACK", "topic": BOT_MESSAGE_TOPIC}],
            "ua": concat!("switchboard/", env!("CARGO_PKG_VERSION")),
            "localIp": local_ip(),
        });
        let resp = http
            .post(format!("{}{OPEN_PATH}", self.api_base))
            .json(&body)
            .send()
            .await
            .map_err(|e| OpenError::Failed(format!("open request failed: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| OpenError::Failed(format!("open answer not read: {e}")))?;
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(OpenError::Refused(refusal(status, &text)));
        }
        if !status.is_success() {
            return Err(OpenError::Failed(refusal(status, &text)));
        }
        let opened: Opened = serde_json::from_str(&text)
            .map_err(|e| OpenError::Failed(format!("open answer without endpoint/ticket: {e}")))?;
        let mut url = url::Url::parse(&opened.endpoint)
            .map_err(|e| OpenError::Failed(format!("open answer's endpoint: {e}")))?;
        url.query_pairs_mut().append_pair("ticket", &opened.ticket);
        Ok(url)
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(StreamSession)
    }
}

/// DingTalk's frames carry everything they need: a connection keeps no state.
#[derive(Debug)]
struct StreamSession;

/// One frame as DingTalk sends it.
#[derive(Debug, Deserialize)]
struct Pushed {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    #[serde(default)]
    data: String,
}

impl Pushed {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// The answer to a frame: `code`, the frame's `messageId`, and `data` as a JSON string.
pub fn answer(code: u16, message_id: &str, message: &str, data: &str) -> Frame {
    Frame::Text(
        json!({
            "code": code,
            "headers": {"contentType": "application/json", "messageId": message_id},
            "message": message,
            "data": data,
        })
        .to_string(),
    )
}

impl Session for StreamSession {
    fn read(&mut self, frame: Frame, _now: Instant) -> Read {
        let Frame::Text(text) = frame else {
            return Read::of("unknown", Vec::new());
        };
        let Ok(pushed) = serde_json::from_str::<Pushed>(&text) else {
            tracing::warn!("a frame that is not DingTalk's JSON; ignored");
            return Read::of("malformed", Vec::new());
        };
        let id = pushed.header("messageId").to_owned();
        let topic = pushed.header("topic");
        match (pushed.kind.as_str(), topic) {
            ("SYSTEM", "ping") => Read::of(
                "ping",
                vec![Step::Send(answer(200, &id, "OK", &pushed.data))],
            ),
            ("SYSTEM", "disconnect") => Read::of(
                "disconnect",
                vec![
                    Step::Send(answer(200, &id, "OK", &pushed.data)),
                    Step::Refresh {
                        reason: "disconnect".into(),
                    },
                ],
            ),
            ("SYSTEM", _) => Read::of(
                "system",
                vec![Step::Send(answer(200, &id, "OK", &pushed.data))],
            ),
            ("CALLBACK", BOT_MESSAGE_TOPIC) => {
                let ack_id = id.clone();
                Read::of(
                    "callback",
                    vec![Step::Event {
                        delivery: id,
                        payload: pushed.data.into_bytes(),
                        ack: Some(Box::new(move |_took| {
                            answer(200, &ack_id, "OK", r#"{"response":null}"#)
                        })),
                    }],
                )
            }
            // Not subscribed: said to DingTalk as the SDKs' unhandled topics are.
            ("CALLBACK", _) => Read::of(
                "callback_other",
                vec![Step::Send(answer(
                    404,
                    &id,
                    "not implement",
                    r#"{"response":"not implement"}"#,
                ))],
            ),
            ("EVENT", _) => Read::of(
                "event",
                vec![Step::Send(answer(
                    200,
                    &id,
                    "OK",
                    r#"{"status":"SUCCESS"}"#,
                ))],
            ),
            _ => Read::of("unknown", Vec::new()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn frame(kind: &str, topic: &str, id: &str, data: &str) -> Frame {
        Frame::Text(
            json!({"specVersion": "1.0", "type": kind,
                   "headers": {"topic": topic, "messageId": id, "contentType": "application/json", "time": "1700000000000"},
                   "data": data})
            .to_string(),
        )
    }

    fn read(f: Frame) -> Read {
        StreamSession.read(f, Instant::now())
    }

    fn text(f: &Frame) -> Value {
        match f {
            Frame::Text(t) => serde_json::from_str(t).unwrap(),
            Frame::Binary(_) => panic!("binary"),
        }
    }

    #[test]
    fn ping_is_answered_with_its_own_data_and_id() {
        let read = read(frame("SYSTEM", "ping", "m-1", r#"{"opaque":"x"}"#));
        assert_eq!(read.kind, "ping");
        let [Step::Send(f)] = &read.steps[..] else {
            panic!("{:?}", read.steps)
        };
        let v = text(f);
        assert_eq!(v["code"], 200);
        assert_eq!(v["headers"]["messageId"], "m-1");
        assert_eq!(v["headers"]["contentType"], "application/json");
        assert_eq!(v["data"], r#"{"opaque":"x"}"#);
    }

    #[test]
    fn disconnect_asks_for_a_replacement() {
        let read = read(frame("SYSTEM", "disconnect", "m-2", "{}"));
        assert_eq!(read.kind, "disconnect");
        assert!(matches!(
            read.steps[..],
            [Step::Send(_), Step::Refresh { .. }]
        ));
    }

    #[test]
    fn a_robot_message_is_an_event_acked_only_when_asked() {
        let data = r#"{"msgId":"msg-1"}"#;
        let read = read(frame("CALLBACK", BOT_MESSAGE_TOPIC, "m-3", data));
        assert_eq!(read.kind, "callback");
        let mut steps = read.steps;
        let Some(Step::Event {
            delivery,
            payload,
            ack: Some(ack),
        }) = steps.pop()
        else {
            panic!("not an event")
        };
        assert_eq!(delivery, "m-3");
        assert_eq!(payload, data.as_bytes());
        let v = text(&ack(std::time::Duration::ZERO));
        assert_eq!(v["code"], 200);
        assert_eq!(v["headers"]["messageId"], "m-3");
        assert_eq!(v["data"], r#"{"response":null}"#);
    }

    #[test]
    fn other_frames_are_answered_or_dropped_never_kept() {
        let other = read(frame(
            "CALLBACK",
            "/v1.0/card/instances/callback",
            "m",
            "{}",
        ));
        assert!(matches!(&other.steps[..], [Step::Send(f)] if text(f)["code"] == 404));
        let event = read(frame("EVENT", "chat_update", "m", "{}"));
        assert!(
            matches!(&event.steps[..], [Step::Send(f)] if text(f)["data"] == r#"{"status":"SUCCESS"}"#)
        );
        assert!(read(Frame::Text("nope".into())).steps.is_empty());
        assert!(read(Frame::Binary(vec![1])).steps.is_empty());
    }

    #[test]
    fn refusals_say_what_dingtalk_said_and_nothing_we_sent() {
        let r = refusal(
            reqwest::StatusCode::UNAUTHORIZED,
            r#"{"code":"InvalidAuthentication","message":"clientSecret is wrong"}"#,
        );
        assert_eq!(
            r,
            "HTTP 401 Unauthorized InvalidAuthentication clientSecret is wrong"
        );
    }
}
