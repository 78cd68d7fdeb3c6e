//! The persistent-connection protocols, one module each behind [`Protocol`]: how to get a fresh
//! connection URL from the platform (a ticket, single-use; or, for Discord, the URL of the session
//! to resume), what each frame on the connection means ([`Session`]), what a protocol's timer asks
//! (Discord's heartbeat), and what to do once a connection ended ([`Protocol::ended`]). A protocol
//! is pure apart from its `open` request: it never touches the socket, the broker or Redis. The
//! connection (`crate::link`) does the I/O and keeps every pushed event through the ingress's own
//! path before sending the ack the protocol prepared, when it prepared one. A new platform is one
//! more module and one more arm in [`build`] and [`keys`].
//!
//! A protocol is built once per connection slot (not per source), so what it must remember from
//! one connection to the next (Discord's session, sequence number and resume URL) lives in it.
use shared::config::{ConfigIssue, SourceConfig};
use std::time::Duration;
use tokio::time::Instant;

pub mod dingtalk;
pub mod discord;
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

/// What one frame from the server (or the session's timer) asks of the connection.
pub enum Step {
    /// Send this now (a pong, the answer to a control frame, a heartbeat, Identify).
    Send(Frame),
    /// A pushed event: the platform's message JSON, to go through the platform module and the
    /// door. With an `ack`, the ack is sent only if it was kept (or was a retry of a kept one),
    /// and what is not acked the platform delivers again. Without one (Discord: no acks, no
    /// redelivery), an event the broker could not take is held in memory and published later
    /// (`crate::hold`).
    Event {
        /// The platform's id of this delivery, for logs.
        delivery: String,
        payload: Vec<u8>,
        ack: Option<Ack>,
    },
    /// The server will close this connection soon: open a new one, then let this one go.
    Refresh { reason: String },
    /// The connection now serves events (Discord: READY or RESUMED), for protocols whose
    /// connection is not ready at the handshake ([`Protocol::up_at_handshake`]).
    Up,
    /// Close this connection now with `code` (events in flight are not waited for: there is no
    /// ack to send), and connect again after `after` (Discord: op 7, op 9, a zombie
    /// connection). `label` is the `reason` of `switchboard_connector_reconnects_total`.
    Reconnect {
        code: u16,
        reason: String,
        label: &'static str,
        after: Duration,
    },
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
                delivery,
                payload,
                ack,
            } => f
                .debug_struct("Event")
                .field("delivery", delivery)
                .field("payload_bytes", &payload.len())
                .field("acked", &ack.is_some())
                .finish(),
            Step::Refresh { reason } => f.debug_struct("Refresh").field("reason", reason).finish(),
            Step::Up => f.write_str("Up"),
            Step::Reconnect {
                code,
                reason,
                label,
                after,
            } => f
                .debug_struct("Reconnect")
                .field("code", code)
                .field("reason", reason)
                .field("label", label)
                .field("after", after)
                .finish(),
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
    /// The platform asks us to wait this long before opening again (Discord: no session
    /// starts left until the limit resets).
    #[error("{0}")]
    Later(String, Duration),
    /// Anything else (network, 5xx, a malformed answer): retried with backoff.
    #[error("{0}")]
    Failed(String),
}

/// How a connection ended, as far as the protocol cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// The server's close frame: its code and reason.
    pub close: Option<(u16, String)>,
    /// The session asked to reconnect ([`Step::Reconnect`]): its label and wait.
    pub asked: Option<(&'static str, Duration)>,
}

/// What the slot does once a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Connect again after the slot's backoff.
    Backoff,
    /// Connect again after this (`label`: the reconnect metric's reason).
    After(&'static str, Duration),
    /// The platform refused this connection for a reason asking again soon will not fix (a
    /// wrong token, an intent the bot may not have): retried only after `refused_retry`, with
    /// the reason in the log and in `/readyz`.
    Refused(String),
}

/// A platform's persistent-connection mode, for one connection slot.
#[async_trait::async_trait]
pub trait Protocol: Send + Sync + std::fmt::Debug {
    /// The platform word (`dingtalk`, …).
    fn name(&self) -> &'static str;
    /// Asks the platform for a fresh connection: the WebSocket URL (with its single-use
    /// ticket, or the URL of the session to resume).
    async fn open(&self, http: &reqwest::Client) -> Result<url::Url, OpenError>;
    /// The state of one new connection.
    fn session(&self) -> Box<dyn Session>;
    /// Whether the platform acknowledges events on the connection and redelivers what was not
    /// acknowledged (DingTalk). Without acks, events the broker could not take are held.
    fn acks(&self) -> bool {
        true
    }
    /// Whether a quiet connection is probed with WebSocket pings (`[connector] heartbeat`);
    /// a protocol with its own heartbeat (Discord) says no.
    fn pings(&self) -> bool {
        true
    }
    /// Whether a connection is up once the WebSocket handshake is done; if not, it is up at
    /// the session's [`Step::Up`].
    fn up_at_handshake(&self) -> bool {
        true
    }
    /// What to do once a connection ended.
    fn ended(&self, _end: &Ended) -> Next {
        Next::Backoff
    }
    /// The state of a new connection to `url`, the one `open` gave, for protocols whose
    /// connection depends on what the open answered (Feishu's service id and ping interval).
    fn session_for(&self, _url: &url::Url) -> Box<dyn Session> {
        self.session()
    }
}

/// One connection's conversation with the server.
pub trait Session: Send + std::fmt::Debug {
    /// Reads one frame from the server, received at `now`.
    fn read(&mut self, frame: Frame, now: Instant) -> Read;
    /// When the session wants [`Session::timer`] called: its one clock (Discord: the next
    /// heartbeat, with its acks and zombie rule; Feishu: the next ping frame at the server's
    /// interval). Asked again after every frame read and every timer call. `None`: no clock.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// The deadline passed; `now` is the time.
    fn timer(&mut self, _now: Instant) -> Read {
        Read::of("timer", Vec::new())
    }
}

/// Every platform word that has a persistent-connection mode.
pub const PROTOCOLS: &[&str] = &["dingtalk", "discord", "feishu", "lark", "slack"];

/// The keys a source's block holds for its connection (`None`: the platform has no stream mode
/// here).
pub fn keys(platform: &str) -> Option<&'static [&'static str]> {
    match platform {
        "dingtalk" => Some(dingtalk::KEYS),
        "discord" => Some(discord::KEYS),
        "slack" => Some(slack::KEYS),
        "feishu" | "lark" => Some(feishu::KEYS),
        _ => None,
    }
}

/// The protocol of a stream source, from its block (one per connection slot).
pub fn build(source: &SourceConfig) -> Result<Box<dyn Protocol>, Vec<ConfigIssue>> {
    match source.platform.as_str() {
        "dingtalk" => Ok(Box::new(dingtalk::DingtalkStream::from_config(source)?)),
        "discord" => Ok(Box::new(discord::DiscordGateway::from_config(source)?)),
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
