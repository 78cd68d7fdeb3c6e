//! The platforms a source can be: one module each, behind the [`Platform`] trait. A platform owns
//! its config keys (declared in its `KEYS`, read with `shared::keys::Keys`; the dispatcher's reply
//! channel declares its own keys of the same block, and the binary refuses keys neither reads),
//! its handshake, its verification over the raw body, its normalisation into a [`NewEvent`] and
//! the answer the platform expects. It is pure: no I/O, the clock comes in the
//! request, so every scheme is tested with official vectors and no network. The HTTP server
//! (`crate::server`) does the I/O around it: broker, door dedup, metrics.
use axum::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{Conversation, ReplyHandle};
use std::time::Duration;

pub mod bearer;
pub mod dingtalk;
pub mod discord;
pub mod feishu;
pub mod fields;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod fuzz;
pub mod github;
pub mod hmac;
pub mod sender;
pub mod slack;
pub mod standard;
pub mod telegram;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod testkit;
pub mod verify;
pub mod wecom;
pub mod xml;

/// One HTTP request to `/hooks/{source}`, as received.
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub method: Method,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The raw body bytes: signatures are verified over these, before any parsing.
    pub body: Bytes,
    pub now: DateTime<Utc>,
}

impl HookRequest {
    /// A header as UTF-8 text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A query parameter, URL-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// The answer a platform expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl HookReply {
    /// 200 with an empty body (WeCom, DingTalk, Telegram, Slack events…).
    pub fn ok_empty() -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/plain",
            body: Bytes::new(),
        }
    }

    /// 202 with `{"status":"accepted"}` (generic senders): the same bytes every time, not built
    /// per request.
    pub fn accepted() -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            content_type: "application/json",
            body: Bytes::from_static(br#"{"status":"accepted"}"#),
        }
    }

    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
        }
    }

    pub fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: Bytes::from(text.into()),
        }
    }
}

/// A verified user message, everything the platform knows of it. The server adds our id, the
/// source and the time of receipt to make the `InboundEvent`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The platform's own id for the event (MsgId, event_id, update_id, delivery id…).
    pub dedup_key: String,
    /// `message`, or the platform's event name (GitHub `X-GitHub-Event`).
    pub kind: String,
    pub conversation: Conversation,
    pub text: String,
    pub reply: Option<ReplyHandle>,
    /// The platform's payload, decrypted.
    pub payload: serde_json::Value,
}

/// What a platform made of a request.
// One per request, moved once to the server: boxing the event would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    /// Answer this and enqueue nothing: a handshake or a challenge.
    Reply(HookReply),
    /// Acknowledge and drop by rule: not a user message (joins, reactions, edits, read
    /// receipts, the bot's own echoes). `reason` is a metric label.
    Ignore {
        reason: &'static str,
        reply: HookReply,
    },
    /// Enqueue this, then answer `reply` once the broker confirmed it.
    Event { event: NewEvent, reply: HookReply },
}

/// What a platform made of a verified message: a user message, or the reason it is dropped
/// (a metric label).
pub type Normalised = Result<NewEvent, &'static str>;

impl Intake {
    /// The intake of a verified message that the platform expects answered with 200 and an
    /// empty body whatever became of it: the event, carrying the platform's `payload`, or the
    /// reason it is ignored.
    pub fn answered_empty(normalised: Normalised, payload: serde_json::Value) -> Self {
        let reply = HookReply::ok_empty();
        match normalised {
            Ok(mut event) => {
                event.payload = payload;
                Intake::Event { event, reply }
            }
            Err(reason) => Intake::Ignore { reason, reply },
        }
    }
}

/// Why a request was refused. The reason string is machine-readable, goes in the body and the
/// metrics, and never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing_signature")]
    MissingSignature,
    #[error("bad_signature")]
    BadSignature,
    #[error("stale_timestamp")]
    StaleTimestamp,
    #[error("bad_token")]
    BadToken,
    #[error("undecryptable")]
    Undecryptable,
    #[error("wrong_receiver")]
    WrongReceiver,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("method_not_allowed")]
    MethodNotAllowed,
    /// A signature that covers no body was presented again with another body.
    #[error("replayed_signature")]
    ReplayedSignature,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The metric label and body `error` field.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingSignature => "missing_signature",
            Rejection::BadSignature => "bad_signature",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::BadToken => "bad_token",
            Rejection::Undecryptable => "undecryptable",
            Rejection::WrongReceiver => "wrong_receiver",
            Rejection::Malformed(_) => "malformed",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::ReplayedSignature => "replayed_signature",
        }
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Rejection::Malformed(detail.into())
    }
}

/// A verified signature that covers no body (DingTalk signs only a timestamp): its identity and
/// how much longer it is valid. The server lets it vouch for one body only for that long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFreeSignature {
    /// What the signature stands for (the same for every copy of it however it is written).
    pub id: String,
    pub valid_for: Duration,
}

/// A source's platform: verification and normalisation, no I/O.
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// The platform word from the config (`wecom`, `slack`, …).
    fn name(&self) -> &'static str;
    /// Verifies and reads one request.
    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection>;
    /// For a request [`Platform::receive`] accepted: its signature, when that covers no body
    /// (see [`BodyFreeSignature`]). Platforms whose signature covers the body have none.
    fn body_free_signature(&self, _req: &HookRequest) -> Option<BodyFreeSignature> {
        None
    }
    /// Whether a captured request stays valid forever under a fresh delivery id: its signature
    /// covers no time and its dedup key is not signed (GitHub's `X-GitHub-Delivery`, an `hmac`
    /// sender without a signed timestamp). The server then also treats the same signed body as a
    /// retry for `dedup_ttl`, whatever its id.
    fn replayable_forever(&self) -> bool {
        false
    }
    /// Reads one event pushed over a persistent connection the connector holds (`mode =
    /// "stream"`): the platform's message JSON, the same as its callback body. The connection
    /// is the authentication, so there is no signature to check; the normalisation, the
    /// `InboundEvent` and the dedup key are the HTTP mode's. Platforms without such a mode
    /// refuse it.
    fn pushed(&self, _payload: &[u8]) -> Result<Intake, Rejection> {
        Err(Rejection::malformed(format!(
            "platform `{}` has no persistent-connection mode",
            self.name()
        )))
    }
}

/// Every platform word a source may use.
pub const PLATFORMS: &[&str] = &[
    "standard", "bearer", "wecom", "dingtalk", "feishu", "lark", "slack", "telegram", "discord",
    "github", "hmac",
];

/// The keys the platform of that word reads from a source's block (`None`: no such platform).
pub fn keys(platform: &str) -> Option<&'static [&'static str]> {
    Some(match platform {
        "standard" => standard::KEYS,
        "bearer" => bearer::KEYS,
        "wecom" => wecom::KEYS,
        "dingtalk" => dingtalk::KEYS,
        "feishu" | "lark" => feishu::KEYS,
        "slack" => slack::KEYS,
        "telegram" => telegram::KEYS,
        "discord" => discord::KEYS,
        "github" => github::KEYS,
        "hmac" => hmac::KEYS,
        _ => return None,
    })
}

/// The keys of a source's block that its platform does not read and `also` does not list (what
/// other roles read of the same block: the reply channel's keys): a typo must not pass silently.
/// A platform word that is not known is `build`'s to report.
pub fn unknown_keys(source: &SourceConfig, also: &[&str]) -> Vec<ConfigIssue> {
    let Some(own) = keys(&source.platform) else {
        return Vec::new();
    };
    let mut known: Vec<&str> = own.to_vec();
    known.extend(also.iter().filter(|k| !own.contains(k)));
    shared::keys::unknown(
        &format!("sources.{}", source.id),
        &format!("platform `{}`", source.platform),
        &source.settings,
        &known,
    )
}

/// Builds the platform of a source from its config, reading the platform's own keys (keys it
/// does not read are [`unknown_keys`]'s to report).
pub fn build(source: &SourceConfig) -> Result<Box<dyn Platform>, Vec<ConfigIssue>> {
    match source.platform.as_str() {
        "standard" => Ok(Box::new(standard::Standard::from_config(source)?)),
        "bearer" => Ok(Box::new(bearer::Bearer::from_config(source)?)),
        "wecom" => Ok(Box::new(wecom::Wecom::from_config(source)?)),
        "dingtalk" => Ok(Box::new(dingtalk::Dingtalk::from_config(source)?)),
        "feishu" => Ok(Box::new(feishu::Feishu::from_config(source, false)?)),
        "lark" => Ok(Box::new(feishu::Feishu::from_config(source, true)?)),
        "slack" => Ok(Box::new(slack::Slack::from_config(source)?)),
        "telegram" => Ok(Box::new(telegram::Telegram::from_config(source)?)),
        "discord" => Ok(Box::new(discord::Discord::from_config(source)?)),
        "github" => Ok(Box::new(github::Github::from_config(source)?)),
        "hmac" => Ok(Box::new(hmac::HmacSource::from_config(source)?)),
        other => Err(vec![ConfigIssue {
            key: format!("sources.{}.platform", source.id),
            problem: format!(
                "unknown platform `{other}` (one of: {})",
                PLATFORMS.join(", ")
            ),
        }]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use testkit::{issue_keys, source};

    #[test]
    fn the_accepted_answer_is_202_with_its_status_in_json() {
        let r = HookReply::accepted();
        assert_eq!(
            (r.status, r.content_type),
            (StatusCode::ACCEPTED, "application/json")
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, json!({"status": "accepted"}));
    }

    /// Minimal settings of every platform, and the key an empty block misses first.
    fn minimal(platform: &str) -> (serde_json::Value, &'static str) {
        match platform {
            "standard" => (
                json!({"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
                "secret",
            ),
            "bearer" => (json!({"token": "t"}), "token"),
            "wecom" => (
                json!({"token": "t", "encoding_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "receive_id": ""}),
                "token",
            ),
            "dingtalk" => (json!({"app_secret": "s"}), "app_secret"),
            "feishu" | "lark" => (
                json!({"verification_token": "t", "allow_unsigned": true}),
                "verification_token",
            ),
            "slack" => (json!({"signing_secret": "s"}), "signing_secret"),
            "telegram" => (json!({"secret_token": "s"}), "secret_token"),
            "discord" => (
                json!({"public_key": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"}),
                "public_key",
            ),
            "github" => (json!({"secret": "s"}), "secret"),
            "hmac" => (
                json!({"secret": "s", "header": "X-Sig", "algorithm": "sha256", "encoding": "hex"}),
                "secret",
            ),
            other => panic!("no minimal settings for {other}"),
        }
    }

    #[test]
    fn every_platform_builds_and_names_its_missing_and_unknown_keys() {
        for word in PLATFORMS {
            let (settings, first_required) = minimal(word);
            let built = build(&source(word, 300, settings.clone()))
                .unwrap_or_else(|e| panic!("{word}: {e:?}"));
            assert_eq!(built.name(), *word);
            let issues = build(&source(word, 300, json!({}))).unwrap_err();
            assert!(
                issue_keys(&issues).contains(&format!("sources.src.{first_required}")),
                "{word}: {issues:?}"
            );
            assert!(unknown_keys(&source(word, 300, settings.clone()), &[]).is_empty());
            let mut typo = settings;
            typo["sekret"] = json!("x");
            typo["bot_token"] = json!("x");
            let typo = source(word, 300, typo);
            assert_eq!(
                issue_keys(&unknown_keys(&typo, &["bot_token"])),
                ["sources.src.sekret"],
                "{word}: another role's keys are known when it says so"
            );
            assert_eq!(
                issue_keys(&unknown_keys(&typo, &[])),
                ["sources.src.bot_token", "sources.src.sekret"],
                "{word}"
            );
        }
        let issues = build(&source("carrier-pigeon", 300, json!({}))).unwrap_err();
        assert_eq!(issue_keys(&issues), ["sources.src.platform"]);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        for word in PLATFORMS {
            let (mut settings, _) = minimal(word);
            for v in settings.as_object_mut().unwrap().values_mut() {
                if v == "s" || v == "t" {
                    *v = json!("zzsecretzz");
                }
            }
            let shown = format!("{:?}", build(&source(word, 300, settings)).unwrap());
            for secret in [
                "zzsecretzz",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            ] {
                assert!(!shown.contains(secret), "{word}: {shown}");
            }
        }
    }
}
