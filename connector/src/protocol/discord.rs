//! Discord's Gateway (`platform = "discord"`, `mode = "stream"`): the bot's own WebSocket
//! connection, over which Discord pushes the messages the bot may see. This module owns the key
//! `message_content` (whether to ask for the privileged Message Content intent; `true` by
//! default) and shares `bot_token` and `api_base` with the reply channel. It follows Discord's
//! documented Gateway (API v10, JSON, no compression):
//!
//! - **open**: `GET {api_base}/gateway/bot` with `Authorization: Bot <token>` answers the
//!   Gateway's `url` (401: a refused token) and `session_start_limit` (none left: wait for its
//!   `reset_after`); the connection is `{url}/?v=10&encoding=json`. A session to resume is
//!   connected at its `resume_gateway_url` instead, without asking (after three resumes in a row
//!   that never reached RESUMED, the session is given up and a fresh one identified).
//! - **op 10 Hello** gives `heartbeat_interval`: the first heartbeat (op 1, `d` the last sequence
//!   number) goes after `interval × jitter` (jitter uniform in [0, 1)), then one every interval.
//!   A beat due while the previous one has no **op 11** ack yet means a zombie connection: it
//!   is closed and the session resumed. An **op 1** from the server is answered with a beat at
//!   once. Hello is answered with **op 2 Identify** (token, intents `GUILD_MESSAGES |
//!   DIRECT_MESSAGES | MESSAGE_CONTENT`, properties), or with **op 6 Resume** (token,
//!   session_id, the last `s`) when there is a session to resume.
//! - **op 0** dispatches carry `s`, the last of which is kept: **READY** gives the session id,
//!   the resume URL and the bot's user id (the connection is up); **RESUMED** ends a resume (up
//!   again: Discord replayed what was missed before it); **MESSAGE_CREATE** is an event, read by
//!   the ingress's Discord module (`ingress::platform::discord::gateway`).
//! - **op 7 Reconnect**, a dropped connection, a zombie: reconnect and resume. Closing to resume
//!   uses code 4000 (1000 and 1001 would end the session). **op 9 Invalid Session**: `d = true`
//!   resume, `d = false` forget the session; either after a random 1–5 s.
//! - **close codes** ([`on_close`]): 4004 (authentication failed) and 4010–4014 (shard,
//!   version, intents) cannot be fixed by reconnecting: a clear error in the log and `/readyz`,
//!   retried only every `refused_retry`; 4007 and 4009 need a fresh session; others resume.
//!
//! Discord has no acks and does not redeliver: a message is kept through the ingress's path,
//! and one the broker cannot take is held and published later (`crate::hold`). The resume state
//! (session id, sequence, resume URL) lives in the protocol, one per connection slot, so that it
//! outlives each connection; a slot never overlaps two connections, since Discord's session is
//! one connection.
//!
//! The frames this module writes carry the bot token: they are never logged.
use super::{Ended, Frame, Next, OpenError, Protocol, Read, Session, Step};
use ingress::platform::discord::gateway::pushed_payload;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::keys::Keys;
use shared::Secret;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// The keys this module reads (`bot_token` and `api_base` are also the reply channel's).
pub const KEYS: &[&str] = &["bot_token", "api_base", "message_content"];
pub const DEFAULT_API_BASE: &str = "https://discord.com/api/v10";
/// The query of every Gateway connection: API version 10, JSON, no compression.
pub const GATEWAY_QUERY: &str = "v=10&encoding=json";

/// Gateway intents (bit flags).
pub mod intents {
    pub const GUILD_MESSAGES: u64 = 1 << 9;
    pub const DIRECT_MESSAGES: u64 = 1 << 12;
    /// Privileged: enabled in the Developer Portal, else Discord closes with 4014.
    pub const MESSAGE_CONTENT: u64 = 1 << 15;
}

/// Gateway opcodes.
pub mod op {
    pub const DISPATCH: u64 = 0;
    pub const HEARTBEAT: u64 = 1;
    pub const IDENTIFY: u64 = 2;
    pub const RESUME: u64 = 6;
    pub const RECONNECT: u64 = 7;
    pub const INVALID_SESSION: u64 = 9;
    pub const HELLO: u64 = 10;
    pub const HEARTBEAT_ACK: u64 = 11;
}

/// The close code of a connection we leave meaning to resume its session (Discord ends the
/// session on 1000 and 1001).
pub const RESUMABLE_CLOSE: u16 = 4000;
/// Resumes in a row that may fail to reach RESUMED before the session is given up.
pub const RESUME_TRIES: u32 = 3;

/// What a slot remembers from one connection to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub session_id: Option<String>,
    pub resume_url: Option<String>,
    /// The last sequence number received.
    pub seq: Option<u64>,
    /// The bot's own user id (READY): a message mentions the bot when it names this id.
    pub bot_user_id: Option<String>,
    pub application_id: Option<String>,
    /// Resumes started since the session last reached READY or RESUMED.
    pub resume_tries: u32,
}

impl Memory {
    /// Forgets the session: the next connection identifies afresh.
    pub fn forget(&mut self) {
        self.session_id = None;
        self.resume_url = None;
        self.seq = None;
        self.resume_tries = 0;
    }

    fn can_resume(&self) -> bool {
        self.session_id.is_some() && self.resume_url.is_some()
    }
}

/// What a server's close code asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClose {
    /// Reconnect and resume the session.
    Resume,
    /// Reconnect with a fresh session (the old one cannot be resumed).
    Identify,
    /// Do not reconnect soon: what to tell the operator.
    Fatal(&'static str),
}

/// Discord's close codes, as its documentation lists them.
pub fn on_close(code: u16) -> OnClose {
    match code {
        4004 => OnClose::Fatal(
            "authentication failed: the bot_token is wrong or was reset (Developer Portal → your application → Bot → Reset Token)",
        ),
        4010 => OnClose::Fatal("invalid shard"),
        4011 => OnClose::Fatal(
            "sharding required: the bot is in too many servers for one connection, and sharding is not supported here",
        ),
        4012 => OnClose::Fatal("invalid API version"),
        4013 => OnClose::Fatal("invalid intents"),
        4014 => OnClose::Fatal(
            "disallowed intent: enable Message Content Intent (Developer Portal → your application → Bot → Privileged Gateway Intents), or set message_content = false",
        ),
        // Invalid sequence, session timed out: that session is gone.
        4007 | 4009 => OnClose::Identify,
        _ => OnClose::Resume,
    }
}

/// One connection slot's Gateway: the bot token, where to ask for the Gateway, and the session
/// it keeps resuming.
#[derive(Debug)]
pub struct DiscordGateway {
    token: Secret,
    api_base: String,
    intents: u64,
    memory: Arc<Mutex<Memory>>,
}

impl DiscordGateway {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let token = keys.required_secret("bot_token");
        let api_base = keys.base_url("api_base", DEFAULT_API_BASE);
        let message_content = !keys.has("message_content") || keys.bool("message_content");
        let intents = intents::GUILD_MESSAGES
            | intents::DIRECT_MESSAGES
            | if message_content {
                intents::MESSAGE_CONTENT
            } else {
                0
            };
        let value = token.map(|token| Self {
            token,
            api_base,
            intents,
            memory: Arc::default(),
        });
        keys.finish(value)
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        lock(&self.memory)
    }

    /// What this slot remembers now (for tests and logs).
    pub fn remembered(&self) -> Memory {
        self.memory().clone()
    }
}

fn lock(memory: &Mutex<Memory>) -> MutexGuard<'_, Memory> {
    memory.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Gateway connection at `base` (`wss://gateway.discord.gg`, a resume URL).
pub fn connection_url(base: &str) -> Result<url::Url, OpenError> {
    let mut url = url::Url::parse(base)
        .map_err(|e| OpenError::Failed(format!("the Gateway URL `{base}`: {e}")))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(OpenError::Failed(format!(
            "the Gateway URL `{base}` is not ws:// or wss://"
        )));
    }
    if url.path().is_empty() {
        url.set_path("/");
    }
    url.set_query(Some(GATEWAY_QUERY));
    Ok(url)
}

/// `GET /gateway/bot`'s answer.
#[derive(Debug, Deserialize)]
struct GatewayBot {
    url: String,
    #[serde(default)]
    session_start_limit: Option<StartLimit>,
}

#[derive(Debug, Deserialize)]
struct StartLimit {
    remaining: u64,
    /// Milliseconds.
    reset_after: u64,
}

/// What `GET /gateway/bot` answered, as an open: the URL, or why not.
pub fn gateway_bot_answer(status: u16, body: &str) -> Result<url::Url, OpenError> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let said = || {
        let message = parsed.get("message").and_then(Value::as_str).unwrap_or("");
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        format!("HTTP {status} {reason} {message}")
            .trim()
            .to_owned()
    };
    match status {
        200..=299 => {}
        401 | 403 => return Err(OpenError::Refused(said())),
        429 => {
            let wait = parsed
                .get("retry_after")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(Duration::from_secs(5));
            return Err(OpenError::Later(said(), wait));
        }
        _ => return Err(OpenError::Failed(said())),
    }
    let answer: GatewayBot = serde_json::from_str(body)
        .map_err(|e| OpenError::Failed(format!("GET /gateway/bot answered without url: {e}")))?;
    if let Some(limit) = answer.session_start_limit {
        if limit.remaining == 0 {
            let wait = Duration::from_millis(limit.reset_after.max(1000));
            return Err(OpenError::Later(
                format!("no session starts left for this bot until Discord resets the limit in {wait:?}"),
                wait,
            ));
        }
    }
    connection_url(&answer.url)
}

#[async_trait::async_trait]
impl Protocol for DiscordGateway {
    fn name(&self) -> &'static str {
        "discord"
    }

    async fn open(&self, http: &reqwest::Client) -> Result<url::Url, OpenError> {
        let resume = {
            let mut memory = self.memory();
            if memory.can_resume() && memory.resume_tries >= RESUME_TRIES {
                tracing::warn!(
                    tries = memory.resume_tries,
                    "the session could not be resumed; identifying afresh (what Discord sent meanwhile is lost)"
                );
                memory.forget();
            }
            if memory.can_resume() {
                memory.resume_tries += 1;
                memory.resume_url.clone()
            } else {
                None
            }
        };
        if let Some(url) = resume {
            return connection_url(&url);
        }
        let resp = http
            .get(format!("{}/gateway/bot", self.api_base))
            .header("authorization", format!("Bot {}", self.token.expose()))
            .send()
            .await
            .map_err(|e| OpenError::Failed(format!("GET /gateway/bot failed: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| OpenError::Failed(format!("GET /gateway/bot answer not read: {e}")))?;
        gateway_bot_answer(status, &text)
    }

    fn session(&self) -> Box<dyn Session> {
        let invalid_wait = Duration::from_millis(1000 + rand::random::<u64>() % 4001);
        Box::new(GatewaySession::new(
            self.token.clone(),
            self.intents,
            self.memory.clone(),
            rand::random::<f64>(),
            invalid_wait,
        ))
    }

    fn acks(&self) -> bool {
        false
    }

    fn pings(&self) -> bool {
        false
    }

    fn up_at_handshake(&self) -> bool {
        false
    }

    fn ended(&self, end: &Ended) -> Next {
        if let Some((label, after)) = end.asked {
            return Next::After(label, after);
        }
        let Some((code, reason)) = &end.close else {
            // Dropped: resume.
            return Next::Backoff;
        };
        match on_close(*code) {
            OnClose::Resume => Next::Backoff,
            OnClose::Identify => {
                self.memory().forget();
                Next::Backoff
            }
            OnClose::Fatal(hint) => {
                self.memory().forget();
                let said = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                Next::Refused(format!(
                    "Discord closed the Gateway with {code}{said}: {hint}"
                ))
            }
        }
    }
}

/// One Gateway connection: its heartbeat, and the slot's memory it updates.
#[derive(Debug)]
pub struct GatewaySession {
    token: Secret,
    intents: u64,
    memory: Arc<Mutex<Memory>>,
    /// The first heartbeat goes after `interval × jitter`.
    jitter: f64,
    /// How long to wait after op 9 before connecting again (1–5 s).
    invalid_wait: Duration,
    interval: Option<Duration>,
    next_beat: Option<Instant>,
    awaiting_ack: bool,
}

/// One Gateway payload.
#[derive(Debug, Deserialize)]
struct Payload {
    op: u64,
    #[serde(default)]
    d: Value,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default)]
    t: Option<String>,
}

impl GatewaySession {
    pub fn new(
        token: Secret,
        intents: u64,
        memory: Arc<Mutex<Memory>>,
        jitter: f64,
        invalid_wait: Duration,
    ) -> Self {
        Self {
            token,
            intents,
            memory,
            jitter: jitter.clamp(0.0, 1.0),
            invalid_wait,
            interval: None,
            next_beat: None,
            awaiting_ack: false,
        }
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        lock(&self.memory)
    }

    fn beat(&self) -> Frame {
        Frame::Text(json!({ "op": op::HEARTBEAT, "d": self.memory().seq }).to_string())
    }

    fn identify(&self) -> Frame {
        Frame::Text(
            json!({
                "op": op::IDENTIFY,
                "d": {
                    "token": self.token.expose(),
                    "intents": self.intents,
                    "properties": {
                        "os": std::env::consts::OS,
                        "browser": "switchboard",
                        "device": "switchboard",
                    },
                },
            })
            .to_string(),
        )
    }

    fn resume(&self, session_id: &str, seq: Option<u64>) -> Frame {
        Frame::Text(
            json!({
                "op": op::RESUME,
                "d": { "token": self.token.expose(), "session_id": session_id, "seq": seq },
            })
            .to_string(),
        )
    }

    fn hello(&mut self, d: &Value, now: Instant) -> Read {
        let Some(ms) = d
            .get("heartbeat_interval")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
        else {
            tracing::warn!("a Hello without heartbeat_interval; ignored");
            return Read::of("malformed", Vec::new());
        };
        let interval = Duration::from_millis(ms);
        self.interval = Some(interval);
        self.next_beat = Some(now + interval.mul_f64(self.jitter));
        self.awaiting_ack = false;
        let resume = {
            let m = self.memory();
            m.session_id
                .clone()
                .filter(|_| m.can_resume())
                .map(|id| (id, m.seq))
        };
        let first = match resume {
            Some((id, seq)) => self.resume(&id, seq),
            None => self.identify(),
        };
        Read::of("hello", vec![Step::Send(first)])
    }

    fn dispatch(&mut self, t: Option<&str>, d: Value) -> Read {
        match t {
            Some("READY") => {
                let text = |path: &str| d.pointer(path).and_then(Value::as_str).map(str::to_owned);
                let mut m = self.memory();
                m.session_id = text("/session_id");
                m.resume_url = text("/resume_gateway_url");
                m.bot_user_id = text("/user/id");
                m.application_id = text("/application/id");
                m.resume_tries = 0;
                Read::of("ready", vec![Step::Up])
            }
            Some("RESUMED") => {
                self.memory().resume_tries = 0;
                Read::of("resumed", vec![Step::Up])
            }
            Some("MESSAGE_CREATE") => {
                let (bot, application) = {
                    let m = self.memory();
                    (
                        m.bot_user_id.clone().unwrap_or_default(),
                        m.application_id.clone().unwrap_or_default(),
                    )
                };
                let delivery = d
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                Read::of(
                    "message_create",
                    vec![Step::Event {
                        delivery,
                        payload: pushed_payload(&bot, &application, &d),
                        ack: None,
                    }],
                )
            }
            _ => Read::of("dispatch", Vec::new()),
        }
    }
}

impl Session for GatewaySession {
    fn read(&mut self, frame: Frame, now: Instant) -> Read {
        let Frame::Text(text) = frame else {
            return Read::of("binary", Vec::new());
        };
        let Ok(payload) = serde_json::from_str::<Payload>(&text) else {
            tracing::warn!("a frame that is not a Gateway payload; ignored");
            return Read::of("malformed", Vec::new());
        };
        match payload.op {
            op::HELLO => self.hello(&payload.d, now),
            op::HEARTBEAT_ACK => {
                self.awaiting_ack = false;
                Read::of("heartbeat_ack", Vec::new())
            }
            op::HEARTBEAT => {
                self.awaiting_ack = true;
                Read::of("heartbeat_request", vec![Step::Send(self.beat())])
            }
            op::RECONNECT => Read::of(
                "reconnect",
                vec![Step::Reconnect {
                    code: RESUMABLE_CLOSE,
                    reason: "Discord asked to reconnect (op 7)".into(),
                    label: "reconnect",
                    after: Duration::ZERO,
                }],
            ),
            op::INVALID_SESSION => {
                let resumable = payload.d.as_bool() == Some(true);
                let reason = if resumable {
                    "invalid session (op 9), resumable: resuming"
                } else {
                    self.memory().forget();
                    "invalid session (op 9), not resumable: identifying afresh"
                };
                Read::of(
                    "invalid_session",
                    vec![Step::Reconnect {
                        code: RESUMABLE_CLOSE,
                        reason: reason.into(),
                        label: "invalid_session",
                        after: self.invalid_wait,
                    }],
                )
            }
            op::DISPATCH => {
                if let Some(s) = payload.s {
                    let mut m = self.memory();
                    m.seq = Some(m.seq.map_or(s, |last| last.max(s)));
                }
                self.dispatch(payload.t.as_deref(), payload.d)
            }
            _ => Read::of("unknown", Vec::new()),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.next_beat
    }

    fn timer(&mut self, now: Instant) -> Read {
        let (Some(at), Some(interval)) = (self.next_beat, self.interval) else {
            return Read::of("timer", Vec::new());
        };
        if now < at {
            return Read::of("timer", Vec::new());
        }
        if self.awaiting_ack {
            self.next_beat = None;
            return Read::of(
                "zombie",
                vec![Step::Reconnect {
                    code: RESUMABLE_CLOSE,
                    reason: "no heartbeat ack since the last beat: a zombie connection".into(),
                    label: "zombie",
                    after: Duration::ZERO,
                }],
            );
        }
        self.awaiting_ack = true;
        // Every interval from the last beat; after a stall, one interval from now.
        let next = at + interval;
        self.next_beat = Some(if next > now { next } else { now + interval });
        Read::of("heartbeat", vec![Step::Send(self.beat())])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
