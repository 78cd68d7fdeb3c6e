//! Slack Socket Mode (`platform = "slack"`, `mode = "stream"`). This module owns the key
//! `app_token` (the app-level token, `xapp-…`, with `connections:write`), shares `api_base` with
//! the reply channel (replies still go out with the bot token by `chat.postMessage`), and speaks
//! the protocol of Slack's official SDKs (`slack_sdk.socket_mode`):
//!
//! - **open**: `POST {api_base}/apps.connections.open` with `Authorization: Bearer <app token>`
//!   answers `{ok, url}`; a URL serves one connection, so every reconnect opens again. Slack
//!   answers HTTP 200 either way: `{ok: false, error}` with `invalid_auth`,
//!   `not_allowed_token_type` (a bot or user token instead of the app-level one) and the like
//!   is refused credentials; `ratelimited` (HTTP 429) and anything else is retried with backoff.
//! - **frames** are JSON text. `hello` (`num_connections`, `debug_info`) opens the
//!   conversation. An envelope `{envelope_id, type, payload, accepts_response_payload,
//!   retry_attempt, retry_reason}` is acknowledged with `{"envelope_id": …}` (no payload: the
//!   answer goes out later by the reply channel). `events_api` and `slash_commands` carry the
//!   HTTP callback's own JSON (a slash command's form fields as an object): they are the event,
//!   acknowledged only once kept; what is not acknowledged within 3 s, Slack delivers again with
//!   `retry_attempt` one higher (an Events API event; a slash command is not retried: its user
//!   sees Slack's timeout and may send it again). `interactive` payloads (buttons, shortcuts,
//!   modals) are acknowledged at once and dropped, as over HTTP.
//! - `{"type": "disconnect", "reason"}`: `refresh_requested`, `warning` (and any other reason)
//!   ask for a new connection, opened before this one goes; `link_disabled` means Socket Mode was
//!   turned off for the app: the connection is let go and not replaced until `refused_retry`,
//!   and `/readyz` says why. Slack's WebSocket pings are answered by the WebSocket layer, which
//!   also pings a quiet connection itself (`crate::link`).
use super::{Frame, OpenError, Protocol, Read, Session, Step};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::keys::Keys;
use shared::Secret;
use tokio::time::Instant;

/// The keys of a source's block this module reads (`api_base` is also the reply channel's).
pub const KEYS: &[&str] = &["app_token", "api_base"];
pub const DEFAULT_API_BASE: &str = "https://slack.com/api";
pub const OPEN_METHOD: &str = "apps.connections.open";
/// What an app-level token starts with.
pub const APP_TOKEN_PREFIX: &str = "xapp-";
/// The `disconnect` reason that means Socket Mode is off for the app.
pub const LINK_DISABLED: &str = "link_disabled";

/// The `error`s of `apps.connections.open` that no retry will cure: the token is wrong,
/// revoked, of the wrong kind or without the scope.
const REFUSALS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "not_allowed_token_type",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "missing_scope",
    "no_permission",
];

#[derive(Debug)]
pub struct SlackSocket {
    app_token: Secret,
    api_base: String,
}

impl SlackSocket {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let app_token = keys.required_secret("app_token");
        let api_base = keys.base_url("api_base", DEFAULT_API_BASE);
        if let Some(token) = &app_token {
            if !token.expose().starts_with(APP_TOKEN_PREFIX) {
                keys.issue(
                    "app_token",
                    "must be the app-level token (xapp-…, Basic Information → App-Level Tokens, \
                     scope connections:write): a bot or user token cannot open Socket Mode",
                );
            }
        }
        let value = app_token.map(|app_token| Self {
            app_token,
            api_base,
        });
        keys.finish(value)
    }
}

/// The answer of `apps.connections.open`.
#[derive(Debug, Deserialize)]
struct Opened {
    ok: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// What a failed open means, in Slack's words and ours (never the token).
fn open_failure(error: &str) -> OpenError {
    if REFUSALS.contains(&error) {
        let hint = match error {
            "not_allowed_token_type" => ": app_token must be the app-level token (xapp-…)",
            "missing_scope" => ": the app-level token needs the connections:write scope",
            _ => ": check app_token against the app's Basic Information page",
        };
        OpenError::Refused(format!("{OPEN_METHOD}: {error}{hint}"))
    } else {
        OpenError::Failed(format!("{OPEN_METHOD}: {error}"))
    }
}

#[async_trait::async_trait]
impl Protocol for SlackSocket {
    fn name(&self) -> &'static str {
        "slack"
    }

    async fn open(&self, http: &reqwest::Client) -> Result<url::Url, OpenError> {
        let resp = http
            .post(format!("{}/{OPEN_METHOD}", self.api_base))
            .bearer_auth(self.app_token.expose())
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .map_err(|e| OpenError::Failed(format!("open request failed: {e}")))?;
        let status = resp.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            return Err(OpenError::Failed(format!(
                "{OPEN_METHOD}: ratelimited (Retry-After {wait})"
            )));
        }
        let text = resp
            .text()
            .await
            .map_err(|e| OpenError::Failed(format!("open answer not read: {e}")))?;
        let opened: Opened = serde_json::from_str(&text).map_err(|_| {
            OpenError::Failed(format!("{OPEN_METHOD}: HTTP {status}, not Slack's JSON"))
        })?;
        if !opened.ok {
            return Err(open_failure(opened.error.as_deref().unwrap_or("unknown")));
        }
        let url = opened
            .url
            .ok_or_else(|| OpenError::Failed(format!("{OPEN_METHOD}: ok without a url")))?;
        url::Url::parse(&url).map_err(|e| OpenError::Failed(format!("{OPEN_METHOD} url: {e}")))
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(SocketSession)
    }
}

/// Slack's envelopes carry everything they need: a connection keeps no state.
#[derive(Debug)]
struct SocketSession;

/// One frame as Slack sends it: `hello`, `disconnect` or an envelope.
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    retry_attempt: Option<u64>,
    #[serde(default)]
    retry_reason: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    num_connections: Option<u64>,
}

/// The acknowledgement of an envelope.
pub fn ack(envelope_id: &str) -> Frame {
    Frame::Text(json!({ "envelope_id": envelope_id }).to_string())
}

impl Session for SocketSession {
    fn read(&mut self, frame: Frame, _now: Instant) -> Read {
        let Frame::Text(text) = frame else {
            return Read::of("unknown", Vec::new());
        };
        let Ok(mut message) = serde_json::from_str::<Message>(&text) else {
            tracing::warn!("a frame that is not Slack's JSON; ignored");
            return Read::of("malformed", Vec::new());
        };
        let kind = std::mem::take(&mut message.kind);
        match kind.as_str() {
            "hello" => {
                tracing::info!(
                    num_connections = message.num_connections,
                    "Socket Mode connection ready"
                );
                Read::of("hello", Vec::new())
            }
            "disconnect" => disconnect(message.reason.unwrap_or_default()),
            kind => envelope(kind, message),
        }
    }
}

fn disconnect(reason: String) -> Read {
    if reason == LINK_DISABLED {
        let reason = format!(
            "Socket Mode is turned off for the app ({LINK_DISABLED}): turn it on in the app's \
             settings, or set mode = \"http\""
        );
        return Read::of("disconnect", vec![Step::Disabled { reason }]);
    }
    Read::of("disconnect", vec![Step::Refresh { reason }])
}

fn envelope(kind: &str, message: Message) -> Read {
    let Some(id) = message.envelope_id else {
        return Read::of("unknown", Vec::new());
    };
    match (kind, message.payload) {
        ("events_api" | "slash_commands", Some(payload)) => {
            let delivery = match message.retry_attempt {
                Some(n) if n > 0 => format!(
                    "{id} (retry {n}: {})",
                    message.retry_reason.unwrap_or_default()
                ),
                _ => id.clone(),
            };
            Read::of(
                if kind == "events_api" {
                    "events_api"
                } else {
                    "slash_commands"
                },
                vec![Step::Event {
                    delivery,
                    payload: payload.to_string().into_bytes(),
                    ack: Some(Box::new(move |_took| ack(&id))),
                }],
            )
        }
        // Buttons, shortcuts, modals: nothing to answer with Dify, as over HTTP.
        ("interactive", _) => Read::of("interactive", vec![Step::Send(ack(&id))]),
        // An envelope of a kind this client does not take: acknowledged, so it is not retried.
        _ => Read::of("other", vec![Step::Send(ack(&id))]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
