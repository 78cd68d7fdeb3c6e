//! The persistent-connection protocols, one module each behind [`Protocol`]: how to get a fresh
//! connection URL from the platform (a ticket, single-use), and what each frame on the
//! connection means ([`Session`]). A protocol is pure apart from its `open` request: it never
//! touches the socket, the broker or Redis. The connection (`crate::link`) does the I/O and
//! keeps every pushed event through the ingress's own path before sending the ack the protocol
//! prepared. A new platform (Discord's Gateway) is one more module and one more arm in
//! [`build`] and [`keys`].
use shared::config::{ConfigIssue, SourceConfig};
use std::time::Duration;

pub mod dingtalk;
pub mod feishu;
pub mod slack;

/// One WebSocket message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// The ack of a pushed event, written once the event is kept: `took` is how long keeping it
/// took (some platforms want it back).
pub type Ack = Box<dyn FnOnce(Duration) -> Frame + Send>;

/// What one frame from the server asks of the connection.
pub enum Step {
    /// Send this now (a pong, the answer to a control frame).
    Send(Frame),
    /// A pushed event: the platform's message JSON, to go through the platform module and the
    /// door. `ack` is sent only if it was kept (or was a retry of a kept one).
    Event {
        /// The platform's id of this delivery, for logs.
        delivery: String,
        payload: Vec<u8>,
        ack: Ack,
    },
    /// The server will close this connection soon: open a new one, then let this one go.
    Refresh { reason: String },
    /// The platform turned this mode off for the app (Slack's `link_disabled`): let this
    /// connection go once its events are settled, and open none until `refused_retry`, saying
    /// `reason` in `/readyz` as for refused credentials.
    Disabled { reason: String },
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Send(frame) => f.debug_tuple("Send").field(frame).finish(),
            Step::Event {
                delivery, payload, ..
            } => f
                .debug_struct("Event")
                .field("delivery", delivery)
                .field("payload_bytes", &payload.len())
                .finish_non_exhaustive(),
            Step::Refresh { reason } => f.debug_struct("Refresh").field("reason", reason).finish(),
            Step::Disabled { reason } => {
                f.debug_struct("Disabled").field("reason", reason).finish()
            }
        }
    }
}

/// What a frame was (the `type` label of `switchboard_connector_frames_total`) and what it asks.
#[derive(Debug)]
pub struct Read {
    pub kind: &'static str,
    pub steps: Vec<Step>,
}

impl Read {
    pub fn of(kind: &'static str, steps: Vec<Step>) -> Self {
        Self { kind, steps }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The platform refused the credentials: retried slowly, and `/readyz` says so.
    #[error("credentials refused by the platform: {0}")]
    Refused(String),
    /// Anything else (network, 5xx, a malformed answer): retried with backoff.
    #[error("{0}")]
    Failed(String),
}

/// A platform's persistent-connection mode.
#[async_trait::async_trait]
pub trait Protocol: Send + Sync + std::fmt::Debug {
    /// The platform word (`dingtalk`, …).
    fn name(&self) -> &'static str;
    /// Asks the platform for a fresh connection: the WebSocket URL with its single-use ticket.
    async fn open(&self, http: &reqwest::Client) -> Result<url::Url, OpenError>;
    /// The state of one new connection.
    fn session(&self) -> Box<dyn Session>;
    /// The state of a new connection to `url`, the one `open` gave, for protocols whose
    /// connection depends on what the open answered (Feishu's service id and ping interval).
    fn session_for(&self, _url: &url::Url) -> Box<dyn Session> {
        self.session()
    }
}

/// One connection's conversation with the server.
pub trait Session: Send + std::fmt::Debug {
    /// Reads one frame from the server.
    fn read(&mut self, frame: Frame) -> Read;
    /// How often the platform wants a keep-alive frame of its own besides the WebSocket pings
    /// (Feishu's ping frame, at the server's interval); asked again after every frame read, as
    /// the server may change it. `None`: none.
    fn keepalive_every(&self) -> Option<Duration> {
        None
    }
    /// The keep-alive frame to send now.
    fn keepalive(&mut self) -> Option<Frame> {
        None
    }
}

/// Every platform word that has a persistent-connection mode.
pub const PROTOCOLS: &[&str] = &["dingtalk", "feishu", "lark", "slack"];

/// The keys a source's block holds for its connection (`None`: the platform has no stream mode
/// here).
pub fn keys(platform: &str) -> Option<&'static [&'static str]> {
    match platform {
        "dingtalk" => Some(dingtalk::KEYS),
        "slack" => Some(slack::KEYS),
        "feishu" | "lark" => Some(feishu::KEYS),
        _ => None,
    }
}

/// The protocol of a stream source, from its block.
pub fn build(source: &SourceConfig) -> Result<Box<dyn Protocol>, Vec<ConfigIssue>> {
    match source.platform.as_str() {
        "dingtalk" => Ok(Box::new(dingtalk::DingtalkStream::from_config(source)?)),
        "slack" => Ok(Box::new(slack::SlackSocket::from_config(source)?)),
        "feishu" => Ok(Box::new(feishu::FeishuWs::from_config(source, false)?)),
        "lark" => Ok(Box::new(feishu::FeishuWs::from_config(source, true)?)),
        other => Err(vec![ConfigIssue {
            key: format!("sources.{}.mode", source.id),
            problem: format!(
                "platform `{other}` has no stream mode here (stream mode: {})",
                PROTOCOLS.join(", ")
            ),
        }]),
    }
}
