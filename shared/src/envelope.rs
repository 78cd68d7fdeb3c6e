//! The messages that travel between roles: [`InboundEvent`] (ingress -> worker),
//! [`DispatchJob`] (worker -> dispatcher) and [`DeadLetter`] (either stage -> the dead-letter
//! store). Each is encoded as JSON with its `envelope` name and a schema version `v` so that a role can
//! refuse a message it does not understand instead of misreading it. Attempt counts live in the
//! messages themselves, not in broker headers (RabbitMQ 4 ignores client-set `x-death`).
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

/// A message type with a wire name and schema version.
pub trait Envelope: Serialize + DeserializeOwned {
    const KIND: &'static str;
    const VERSION: u16;
}

#[derive(Serialize)]
struct WireOut<'a, T> {
    envelope: &'static str,
    v: u16,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Deserialize)]
struct WireHead {
    envelope: String,
    v: u16,
}

/// Why a message body could not be read as the envelope a queue carries.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON or missing envelope/v: {0}")]
    Malformed(serde_json::Error),
    #[error("expected {expected} v{version}, got {kind} v{v}")]
    WrongKind {
        expected: &'static str,
        version: u16,
        kind: String,
        v: u16,
    },
    #[error("{0}")]
    Body(serde_json::Error),
}

/// Encodes an envelope with its kind and version.
pub fn encode<T: Envelope>(msg: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(&WireOut {
        envelope: T::KIND,
        v: T::VERSION,
        body: msg,
    })
    .unwrap_or_default()
}

/// Decodes an envelope, checking kind and version first.
pub fn decode<T: Envelope>(bytes: &[u8]) -> Result<T, DecodeError> {
    let head: WireHead = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
    if head.envelope != T::KIND || head.v != T::VERSION {
        return Err(DecodeError::WrongKind {
            expected: T::KIND,
            version: T::VERSION,
            kind: head.envelope,
            v: head.v,
        });
    }
    serde_json::from_slice(bytes).map_err(DecodeError::Body)
}

/// Single or group conversation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    Single,
    Group,
}

/// Where an event was said and by whom.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conversation {
    pub chat_id: String,
    pub chat_type: ChatType,
    pub sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// A thread inside the chat (Slack `thread_ts`), when the platform has threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
}

/// What the dispatcher needs to answer into the conversation an event came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "platform", rename_all = "snake_case")]
pub enum ReplyHandle {
    /// WeCom app: `message/send` to the user through the agent.
    Wecom {
        to_user: String,
        agent_id: Option<String>,
    },
    /// DingTalk: the session webhook until it expires, then the robot API.
    Dingtalk {
        session_webhook: Option<String>,
        /// Milliseconds since the epoch.
        session_webhook_expires_at: Option<i64>,
        conversation_id: String,
        robot_code: Option<String>,
        sender_staff_id: Option<String>,
    },
    /// Feishu / Lark: reply to the message.
    Feishu {
        message_id: String,
        chat_id: String,
        lark: bool,
    },
    /// Slack: post in the channel, in the thread of the message.
    Slack {
        channel: String,
        thread_ts: Option<String>,
        response_url: Option<String>,
    },
    /// Telegram: `sendMessage` replying to the message.
    Telegram {
        chat_id: i64,
        message_id: Option<i64>,
    },
}

/// One platform event, verified and normalised by the ingress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboundEvent {
    /// Ours, UUID v7 (time-ordered); also Dify's `X-Trace-Id`.
    pub id: Uuid,
    pub source: String,
    pub platform: String,
    /// The platform's own id for the event; with `source` it identifies the event across
    /// platform retries. The worker's idempotency key is made from it.
    pub dedup_key: String,
    /// What happened (`message`, a GitHub event name, …).
    pub kind: String,
    pub received_at: DateTime<Utc>,
    pub conversation: Conversation,
    /// The user's text, extracted from the platform's message.
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyHandle>,
    /// The platform's payload, decrypted, for workflows that want more than the text.
    pub payload: serde_json::Value,
    /// Attempts made by workers so far.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// Set when a dead letter was replayed: the dead letter's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Uuid>,
}

impl Envelope for InboundEvent {
    const KIND: &'static str = "inbound_event";
    const VERSION: u16 = 1;
}

/// One try at a stage: calling Dify for an event, or delivering a job to a target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// `ok`, `retry`, `permanent`, `rate_limited`, …
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The platform's or Dify's error code from the answer body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What went wrong, short; never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first bytes of the answer, for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
    pub duration_ms: u64,
}

/// Dify's answer to one event, as recorded and as fanned out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Answer {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run_id: Option<String>,
    /// Dify's `metadata.usage` (tokens, price) as it sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
    /// Workflow outputs, when the app is a workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<serde_json::Value>,
}

/// Where a job goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Destination {
    /// Back into the conversation the event came from.
    Reply { handle: ReplyHandle },
    /// A configured `[[targets]]` entry.
    Target { id: String },
}

impl Destination {
    /// A stable name for logs, metrics and dead letters.
    pub fn name(&self) -> String {
        match self {
            Destination::Reply { .. } => "reply".into(),
            Destination::Target { id } => id.clone(),
        }
    }
}

/// The documented JSON every `webhook` target receives (see docs/PAYLOAD.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnswerPayload {
    pub event_id: Uuid,
    pub source: String,
    pub platform: String,
    pub conversation: Conversation,
    pub query: String,
    pub answer: Answer,
    pub timings: Timings,
}

/// When things happened, so receivers can see where time went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timings {
    pub received_at: Option<DateTime<Utc>>,
    pub dify_started_at: Option<DateTime<Utc>>,
    pub dify_ms: Option<u64>,
    pub answered_at: Option<DateTime<Utc>>,
}

/// One answer on its way to one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DispatchJob {
    /// Derived from event id + destination, so a republished job has the same id and the
    /// dispatcher recognises it as delivered.
    pub id: Uuid,
    pub destination: Destination,
    pub payload: AnswerPayload,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Uuid>,
}

impl Envelope for DispatchJob {
    const KIND: &'static str = "dispatch_job";
    const VERSION: u16 = 1;
}

impl DispatchJob {
    /// The job id for an event and a destination: UUID v5 over both, deterministic.
    pub fn job_id(event_id: Uuid, destination: &Destination) -> Uuid {
        let name = format!("{event_id}/{}", destination.name());
        Uuid::new_v5(&event_id, name.as_bytes())
    }
}

/// The stage a message gave up in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The worker: calling Dify.
    Work,
    /// The dispatcher: delivering to a target.
    Deliver,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Work => "work",
            Stage::Deliver => "deliver",
        }
    }
}

/// Why a message gave up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Refused for good (a 4xx, a permanent errcode, a Dify app error).
    Permanent,
    /// Every attempt of the schedule failed.
    Exhausted,
    /// The broker gave up on it: consumers kept failing on it.
    Poison,
    /// A reply handle that expired with no fallback.
    Expired,
    /// The message could not be read.
    Invalid,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Permanent => "permanent",
            Reason::Exhausted => "exhausted",
            Reason::Poison => "poison",
            Reason::Expired => "expired",
            Reason::Invalid => "invalid",
        }
    }
}

/// A message that gave up, with why and every attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub id: Uuid,
    pub stage: Stage,
    pub reason: Reason,
    /// The last error, short; never a secret.
    pub error: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// The original message, whole (an `InboundEvent` or a `DispatchJob` as JSON).
    pub message: serde_json::Value,
    pub attempts: Vec<Attempt>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub dead_at: DateTime<Utc>,
}

impl Envelope for DeadLetter {
    const KIND: &'static str = "dead_letter";
    const VERSION: u16 = 1;
}

impl DeadLetter {
    /// A dead letter for a message of the work stage.
    pub fn from_event(event: &InboundEvent, reason: Reason, error: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            stage: Stage::Work,
            reason,
            error: error.into(),
            source: event.source.clone(),
            target: None,
            event_id: Some(event.id),
            message: serde_json::to_value(event).unwrap_or_default(),
            attempts: event.attempts.clone(),
            first_attempt_at: event.attempts.first().map(|a| a.at),
            last_attempt_at: event.attempts.last().map(|a| a.at),
            dead_at: Utc::now(),
        }
    }

    /// A dead letter for a message of the deliver stage.
    pub fn from_job(job: &DispatchJob, reason: Reason, error: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            stage: Stage::Deliver,
            reason,
            error: error.into(),
            source: job.payload.source.clone(),
            target: Some(job.destination.name()),
            event_id: Some(job.payload.event_id),
            message: serde_json::to_value(job).unwrap_or_default(),
            attempts: job.attempts.clone(),
            first_attempt_at: job.attempts.first().map(|a| a.at),
            last_attempt_at: job.attempts.last().map(|a| a.at),
            dead_at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> InboundEvent {
        InboundEvent {
            id: Uuid::now_v7(),
            source: "crm".into(),
            platform: "bearer".into(),
            dedup_key: "k1".into(),
            kind: "message".into(),
            received_at: Utc::now(),
            conversation: Conversation {
                chat_id: "c".into(),
                chat_type: ChatType::Single,
                sender_id: "u".into(),
                sender_name: None,
                thread_id: None,
            },
            text: "hi".into(),
            reply: Some(ReplyHandle::Telegram {
                chat_id: -5,
                message_id: Some(7),
            }),
            payload: serde_json::json!({"a": 1}),
            attempts: vec![],
            replay_of: None,
        }
    }

    #[test]
    fn envelopes_round_trip_with_kind_and_version() {
        let e = event();
        let bytes = encode(&e);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (v["envelope"].as_str(), v["v"].as_u64()),
            (Some("inbound_event"), Some(1))
        );
        assert_eq!(decode::<InboundEvent>(&bytes).unwrap(), e);
    }

    #[test]
    fn a_message_of_another_kind_is_refused_not_misread() {
        let bytes = encode(&event());
        let err = decode::<DispatchJob>(&bytes).unwrap_err();
        assert!(err
            .to_string()
            .contains("expected dispatch_job v1, got inbound_event v1"));
        assert!(matches!(
            decode::<InboundEvent>(b"{}"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn job_ids_are_deterministic_per_event_and_destination() {
        let id = Uuid::now_v7();
        let a = Destination::Target { id: "crm".into() };
        let b = Destination::Target { id: "ops".into() };
        assert_eq!(DispatchJob::job_id(id, &a), DispatchJob::job_id(id, &a));
        assert_ne!(DispatchJob::job_id(id, &a), DispatchJob::job_id(id, &b));
    }
}
