//! Feishu/Lark long connection (`platform = "feishu"` / `"lark"`, `mode = "stream"`). This
//! module owns nothing new: it reads `app_id` and `app_secret` (the reply channel's too) and
//! `api_base` (Feishu `https://open.feishu.cn`, Lark `https://open.larksuite.com`), and speaks
//! the protocol of the official SDKs (`larksuite/oapi-sdk-go`, package `ws`):
//!
//! - **open**: `POST {api_base}/callback/ws/endpoint` with `{AppID, AppSecret}` answers `{code,
//!   msg, data: {URL, ClientConfig}}`: the `wss` URL (its query names `device_id` and
//!   `service_id`) and the client settings (`PingInterval`, `ReconnectCount`,
//!   `ReconnectInterval`, `ReconnectNonce`, seconds). Code 0 is success; 1 (busy) and 1000040343
//!   (internal error) are retried with backoff; any other code is the platform refusing the app
//!   (as the SDK makes it a client error). Every reconnect opens again.
//! - **frames** are binary `pbbp2.Frame`s (`frame`). The client sends a `ping` control frame for
//!   the URL's `service_id` at once and then every `PingInterval`; the `pong` may carry a new
//!   `ClientConfig`, whose interval then holds. A data frame of `type` `event` carries the
//!   event's JSON (schema 2.0, plain: the connection is the authentication), in `sum` fragments
//!   numbered by `seq` under one `message_id` when it is large: they are put back together
//!   (a message not complete within 5 s is dropped, as the SDK's cache drops it). The event is
//!   acknowledged once kept by sending its frame back with a `biz_rt` header (milliseconds
//!   taken) and the payload `{"code":200}`; what is not acknowledged, Feishu delivers again.
//!   `card` frames are left unanswered, as by the SDK.
//!
//! Reconnects follow `[connector]`'s backoff, not the server's `Reconnect*` hints.
use super::{Frame, OpenError, Protocol, Read, Session, Step};
use frame::{PbFrame, METHOD_CONTROL, METHOD_DATA};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::keys::Keys;
use shared::Secret;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod frame;

/// The keys of a source's block this module reads (all three are also the reply channel's).
pub const KEYS: &[&str] = &["app_id", "app_secret", "api_base"];
pub const FEISHU_BASE: &str = "https://open.feishu.cn";
pub const LARK_BASE: &str = "https://open.larksuite.com";
pub const ENDPOINT_PATH: &str = "/callback/ws/endpoint";
/// The SDK's ping interval until the server says otherwise.
pub const DEFAULT_PING: Duration = Duration::from_secs(120);
/// The shortest ping interval followed, whatever the server says.
const MIN_PING: Duration = Duration::from_millis(100);
/// How long the fragments of one message wait for the rest (the SDK's cache).
pub const FRAGMENTS_KEPT: Duration = Duration::from_secs(5);
/// The open's codes that a retry may cure (the SDK's server errors).
const BUSY: &[i64] = &[1, 1_000_040_343];

#[derive(Debug)]
pub struct FeishuWs {
    lark: bool,
    app_id: String,
    app_secret: Secret,
    api_base: String,
    /// The settings the last open gave with its URL, for the connection to that URL.
    opened: Mutex<Option<(String, ClientConfig)>>,
}

impl FeishuWs {
    pub fn from_config(source: &SourceConfig, lark: bool) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let app_id = keys.required_str("app_id");
        let app_secret = keys.required_secret("app_secret");
        let api_base = keys.base_url("api_base", if lark { LARK_BASE } else { FEISHU_BASE });
        let value = match (app_id, app_secret) {
            (Some(app_id), Some(app_secret)) => Some(Self {
                lark,
                app_id,
                app_secret,
                api_base,
                opened: Mutex::new(None),
            }),
            _ => None,
        };
        keys.finish(value)
    }
}

/// `ClientConfig`, as the server sends it (seconds).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClientConfig {
    pub reconnect_count: i64,
    pub reconnect_interval: u64,
    pub reconnect_nonce: u64,
    pub ping_interval: u64,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    #[serde(rename = "URL", default)]
    url: String,
    #[serde(rename = "ClientConfig", default)]
    client_config: Option<ClientConfig>,
}

#[derive(Debug, Deserialize)]
struct EndpointAnswer {
    code: i64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    data: Option<Endpoint>,
}

/// What an endpoint answer comes to: the URL and its settings, or why not.
fn endpoint(answer: EndpointAnswer) -> Result<(url::Url, ClientConfig), OpenError> {
    let said = format!("{ENDPOINT_PATH}: code {} {}", answer.code, answer.msg);
    match answer.code {
        0 => {}
        code if BUSY.contains(&code) => return Err(OpenError::Failed(said)),
        _ => {
            return Err(OpenError::Refused(format!(
                "{said} (check app_id/app_secret)"
            )))
        }
    }
    let data = answer
        .data
        .filter(|d| !d.url.is_empty())
        .ok_or_else(|| OpenError::Failed(format!("{ENDPOINT_PATH}: no URL")))?;
    let url = url::Url::parse(&data.url)
        .map_err(|e| OpenError::Failed(format!("{ENDPOINT_PATH} URL: {e}")))?;
    Ok((url, data.client_config.unwrap_or_default()))
}

#[async_trait::async_trait]
impl Protocol for FeishuWs {
    fn name(&self) -> &'static str {
        if self.lark {
            "lark"
        } else {
            "feishu"
        }
    }

    async fn open(&self, http: &reqwest::Client) -> Result<url::Url, OpenError> {
        let body = json!({"AppID": self.app_id, "AppSecret": self.app_secret.expose()});
        let resp = http
            .post(format!("{}{ENDPOINT_PATH}", self.api_base))
            .header("locale", "zh")
            .json(&body)
            .send()
            .await
            .map_err(|e| OpenError::Failed(format!("open request failed: {e}")))?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(OpenError::Failed(format!("{ENDPOINT_PATH}: HTTP {status}")));
        }
        let answer: EndpointAnswer = resp
            .json()
            .await
            .map_err(|e| OpenError::Failed(format!("{ENDPOINT_PATH}: not its JSON: {e}")))?;
        let (url, config) = endpoint(answer)?;
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        *opened = Some((url.to_string(), config));
        Ok(url)
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(WsSession::new(0, ClientConfig::default()))
    }

    fn session_for(&self, url: &url::Url) -> Box<dyn Session> {
        let service = url
            .query_pairs()
            .find(|(k, _)| k == "service_id")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let config = match &*opened {
            Some((u, config)) if *u == url.as_str() => *config,
            _ => ClientConfig::default(),
        };
        Box::new(WsSession::new(service, config))
    }
}

/// One connection: its service id, ping interval (and when the next ping is due: at once on a
/// new connection, then every interval, a new interval counting from when the server said it)
/// and the fragments of messages in flight.
#[derive(Debug)]
struct WsSession {
    service: i32,
    ping_every: Duration,
    next_ping: tokio::time::Instant,
    parts: HashMap<String, Fragments>,
}

/// The fragments of one message so far.
#[derive(Debug)]
struct Fragments {
    first: Instant,
    parts: Vec<Option<Vec<u8>>>,
}

impl WsSession {
    fn new(service: i32, config: ClientConfig) -> Self {
        let mut session = Self {
            service,
            ping_every: DEFAULT_PING,
            next_ping: tokio::time::Instant::now(),
            parts: HashMap::new(),
        };
        session.configure(config);
        session
    }

    fn configure(&mut self, config: ClientConfig) {
        if config.ping_interval > 0 {
            self.ping_every = Duration::from_secs(config.ping_interval);
        }
    }

    fn control(&mut self, pb: &PbFrame, now: tokio::time::Instant) -> Read {
        match pb.header("type") {
            Some("pong") => {
                let payload = pb.payload.as_deref().unwrap_or_default();
                if !payload.is_empty() {
                    match serde_json::from_slice::<ClientConfig>(payload) {
                        Ok(config) => {
                            let before = self.ping_every;
                            self.configure(config);
                            if self.ping_every != before {
                                self.next_ping = now + self.ping_every;
                            }
                        }
                        Err(_) => tracing::warn!("a pong whose ClientConfig is not JSON; ignored"),
                    }
                }
                Read::of("pong", Vec::new())
            }
            _ => Read::of("control", Vec::new()),
        }
    }

    /// A fragment of `id`: the whole payload once every one of the `sum` is there.
    fn combine(&mut self, id: &str, sum: usize, seq: usize, part: Vec<u8>) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.parts
            .retain(|_, f| now.duration_since(f.first) < FRAGMENTS_KEPT);
        let fragments = self
            .parts
            .entry(id.to_owned())
            .or_insert_with(|| Fragments {
                first: now,
                parts: vec![None; sum],
            });
        *fragments.parts.get_mut(seq)? = Some(part);
        if fragments.parts.iter().any(Option::is_none) {
            return None;
        }
        let whole = self.parts.remove(id)?;
        Some(whole.parts.into_iter().flatten().flatten().collect())
    }

    fn data(&mut self, mut pb: PbFrame) -> Read {
        let id = pb.header("message_id").unwrap_or_default().to_owned();
        let (sum, seq) = (pb.header_int("sum"), pb.header_int("seq"));
        let mut payload = pb.payload.take().unwrap_or_default();
        if sum > 1 {
            match self.combine(&id, sum, seq, payload) {
                Some(whole) => payload = whole,
                None => return Read::of("fragment", Vec::new()),
            }
        }
        match pb.header("type") {
            Some("event") => Read::of(
                "event",
                vec![Step::Event {
                    delivery: id,
                    payload,
                    ack: Some(Box::new(move |took| ack(pb, took))),
                }],
            ),
            // Card callbacks are not answered (the SDK leaves them too).
            Some("card") => Read::of("card", Vec::new()),
            _ => Read::of("data_other", Vec::new()),
        }
    }
}

/// The acknowledgement of a data frame: the frame itself, with `biz_rt` and `{"code":200}`.
pub fn ack(mut pb: PbFrame, took: Duration) -> Frame {
    pb.add_header("biz_rt", took.as_millis().to_string());
    pb.payload = Some(json!({"code": 200}).to_string().into_bytes());
    Frame::Binary(pb.to_bytes())
}

impl Session for WsSession {
    fn read(&mut self, frame: Frame, now: tokio::time::Instant) -> Read {
        let Frame::Binary(bytes) = frame else {
            return Read::of("unknown", Vec::new());
        };
        let Ok(pb) = PbFrame::from_bytes(&bytes) else {
            tracing::warn!("a frame that is not a pbbp2 Frame; ignored");
            return Read::of("malformed", Vec::new());
        };
        match pb.method {
            METHOD_CONTROL => self.control(&pb, now),
            METHOD_DATA => self.data(pb),
            _ => Read::of("unknown", Vec::new()),
        }
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        Some(self.next_ping)
    }

    /// The ping frame (Feishu's own, besides the WebSocket pings) at the server's interval.
    fn timer(&mut self, now: tokio::time::Instant) -> Read {
        self.next_ping = now + self.ping_every.max(MIN_PING);
        let ping = PbFrame::control(self.service, "ping").to_bytes();
        Read::of("ping", vec![Step::Send(Frame::Binary(ping))])
    }
}

/// The `ClientConfig` JSON a server sends (for stand-ins and tests).
pub fn client_config_json(ping_secs: u64) -> Value {
    json!({"ReconnectCount": -1, "ReconnectInterval": 120, "ReconnectNonce": 30, "PingInterval": ping_secs})
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
