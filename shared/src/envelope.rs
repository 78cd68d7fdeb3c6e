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

/// Room reserved for an encoded message: an event or a job with a short answer fits, so the
/// buffer is not grown and copied three times on the way (serde_json starts at 128 bytes).
const ENCODE_CAPACITY: usize = 1024;

/// Encodes an envelope with its kind and version: `{"envelope":KIND,"v":VERSION,` and then the
/// message's own fields. The bytes are those of a struct with the message flattened into it
/// (tested), written without serde's `flatten`, which sends every field through a map
/// serializer (with the buffer's growth, a tenth of the ingress's `encode`).
pub fn encode<T: Envelope>(msg: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    out.extend_from_slice(br#"{"envelope":"#);
    // A kind and a number: nothing here can fail to serialize.
    let _ = serde_json::to_writer(&mut out, T::KIND);
    out.extend_from_slice(br#","v":"#);
    let _ = serde_json::to_writer(&mut out, &T::VERSION);
    let body = out.len();
    // Our own plain structs cannot fail to serialize (no maps with non-string keys); anything
    // else is written the general way.
    if serde_json::to_writer(&mut out, msg).is_err() || out.get(body) != Some(&b'{') {
        return flattened(msg);
    }
    if out.len() == body + 2 {
        // An object without fields: the head closes the message.
        out.truncate(body);
        out.push(b'}');
    } else {
        // The message's `{` becomes the comma after the head.
        out[body] = b',';
    }
    out
}

/// [`encode`] by serde's `flatten`: the general way, and what `encode` must write the same as.
fn flattened<T: Envelope>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(&WireOut {
        envelope: T::KIND,
        v: T::VERSION,
        body: msg,
    })
    .unwrap_or_default()
}

/// Decodes an envelope, checking kind and version first. A message as [`encode`] writes it
/// names both at its very start, read there without a pass of their own ([`written_head`]): the
/// body is then parsed once. Any other layout (another writer's field order, whitespace) has its
/// head parsed first, as a whole document.
pub fn decode<T: Envelope>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (kind, v) = match written_head(bytes) {
        Some((kind, v)) => (std::borrow::Cow::Borrowed(kind), v),
        None => {
            let head: WireHead = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
            (std::borrow::Cow::Owned(head.envelope), head.v)
        }
    };
    if kind != T::KIND || v != T::VERSION {
        return Err(DecodeError::WrongKind {
            expected: T::KIND,
            version: T::VERSION,
            kind: kind.into_owned(),
            v,
        });
    }
    crate::json::from_bytes(bytes).map_err(DecodeError::Body)
}

/// The kind and version a message starts with when [`encode`] wrote it:
/// `{"envelope":"<kind>","v":<v>,` (or `}`), the kind without escapes, `v` in plain digits; `None`
/// for anything else, which is then parsed (pure; it reads only the head, so whether the rest is
/// JSON is the body parse's to say).
pub fn written_head(bytes: &[u8]) -> Option<(&str, u16)> {
    let rest = bytes.strip_prefix(br#"{"envelope":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (kind, rest) = rest.split_at(end);
    if kind.contains(&b'\\') {
        return None;
    }
    let rest = rest.strip_prefix(br#"","v":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // JSON numbers have no leading zeros; a version beyond u16 is the head parse's to refuse.
    if digits == 0 || digits > 5 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    if !matches!(rest.get(digits), Some(b',' | b'}')) {
        return None;
    }
    let v = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((std::str::from_utf8(kind).ok()?, v))
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
    /// Discord: an interaction's deferred response edited while its token lives, else a message
    /// in the channel through the bot (replying to `message_id` when there is one).
    Discord {
        application_id: String,
        channel_id: String,
        /// CREDENTIAL (like DingTalk's `session_webhook` and Slack's `response_url`): the
        /// interaction token, which alone authorises writing the answer. Never logged. The
        /// ingress takes it out before the event is published (`crate::reply_credentials`), so
        /// in a queued event or a dead letter it is `None` and `token_expires_at` says there was
        /// one; the dispatcher puts it back from Redis.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interaction_token: Option<String>,
        /// When the interaction token stops working, in milliseconds since the epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_expires_at: Option<i64>,
        /// The message to reply to (`message_reference`), for messages rather than commands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
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
    #[serde(with = "crate::timestamp")]
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
    #[serde(with = "crate::timestamp")]
    pub at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
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

/// What one attempt came to. On the wire it is a word (`ok`, `retry`, …): jobs, events and dead
/// letters already in queues and streams carry these words, so they never change, and a word this
/// version does not know (written by a newer or an older one) is kept as it is, not refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// `ok`: the receiver took the job.
    Delivered,
    /// `retry`: failed this time; tried again on the schedule.
    Retry,
    /// `wait`: the platform asked us to slow down or paused the target; not a failed attempt.
    Wait,
    /// `partial`: some parts of a split answer went out; the rest waits for its admission.
    Partial,
    /// `token_invalid`: the platform refused the access token.
    TokenInvalid,
    /// `permanent`: refused for good.
    Permanent,
    /// `conversation_lost`: Dify no longer knew the conversation (worker stage).
    ConversationLost,
    /// Any other word, kept as written.
    Other(String),
}

impl AttemptOutcome {
    /// The word on the wire and in the audit.
    pub fn as_str(&self) -> &str {
        match self {
            AttemptOutcome::Delivered => "ok",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Wait => "wait",
            AttemptOutcome::Partial => "partial",
            AttemptOutcome::TokenInvalid => "token_invalid",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::ConversationLost => "conversation_lost",
            AttemptOutcome::Other(word) => word,
        }
    }
}

impl From<&str> for AttemptOutcome {
    fn from(word: &str) -> Self {
        match word {
            "ok" => AttemptOutcome::Delivered,
            "retry" => AttemptOutcome::Retry,
            "wait" => AttemptOutcome::Wait,
            "partial" => AttemptOutcome::Partial,
            "token_invalid" => AttemptOutcome::TokenInvalid,
            "permanent" => AttemptOutcome::Permanent,
            "conversation_lost" => AttemptOutcome::ConversationLost,
            other => AttemptOutcome::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AttemptOutcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttemptOutcome {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = String::deserialize(deserializer)?;
        Ok(AttemptOutcome::from(word.as_str()))
    }
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
    /// The event's body (its platform payload), only on jobs to a target with a body template
    /// that may use it; the default payload has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

/// When things happened, so receivers can see where time went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timings {
    #[serde(default, with = "crate::timestamp::option")]
    pub received_at: Option<DateTime<Utc>>,
    #[serde(default, with = "crate::timestamp::option")]
    pub dify_started_at: Option<DateTime<Utc>>,
    pub dify_ms: Option<u64>,
    #[serde(default, with = "crate::timestamp::option")]
    pub answered_at: Option<DateTime<Utc>>,
}

/// One answer on its way to one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DispatchJob {
    /// Derived from the platform's identity of the event (source + dedup key) and the
    /// destination ([`DispatchJob::job_id`]), so a republished job — or the job of a second copy
    /// of the same platform event kept under another event id — has the same id and the
    /// dispatcher recognises it as delivered. It is the receivers' `webhook-id`. Read from the
    /// wire as written: a job published by an older version keeps the id it was given.
    pub id: Uuid,
    pub destination: Destination,
    pub payload: AnswerPayload,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Uuid>,
    /// A split answer partly sent: the parts still to go, carried *instead of* the answer's
    /// text (and its workflow outputs), so that a job waiting between parts for its target's
    /// rate limit is republished with what is left to send, not the whole answer each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts_left: Option<PartsLeft>,
}

/// The parts of a split answer not yet sent, as the target split it (numbered `(i/n)` already).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartsLeft {
    /// How many parts went out before these: the first of `parts` is part `sent + 1`.
    pub sent: usize,
    pub parts: Vec<String>,
}

impl Envelope for DispatchJob {
    const KIND: &'static str = "dispatch_job";
    const VERSION: u16 = 1;
}

/// The namespace of job ids derived from the platform's identity of an event (UUID v5).
const PLATFORM_EVENT_JOBS: Uuid = Uuid::from_u128(0x5b1e_7c4a_9d1f_4e0b_8a6c_2f3d_0e91_b7a4);

impl DispatchJob {
    /// The job id of `event`'s answer to `destination` (UUID v5, deterministic):
    ///
    /// - from the platform's identity of the event — its source, its dedup key and the
    ///   destination's name — so that two copies of one platform event kept under two event ids
    ///   (a 503 whose publish did reach the queue, then the platform's retry) give one job id,
    ///   and the delivered marker and the receivers' `webhook-id` dedup recognise it;
    /// - from the event id ([`DispatchJob::job_id_of_event`], the rule of earlier versions) for a
    ///   replayed event (`replay_of`: a replay is meant to be delivered) and for an event without
    ///   a dedup key.
    pub fn job_id(event: &InboundEvent, destination: &Destination) -> Uuid {
        if event.replay_of.is_some() || event.dedup_key.is_empty() {
            return Self::job_id_of_event(event.id, destination);
        }
        Self::job_id_of_platform_event(&event.source, &event.dedup_key, destination)
    }

    /// The id from the platform's identity: the three parts are length-prefixed, so distinct
    /// `(source, dedup key, destination)` tuples never give the same name.
    pub fn job_id_of_platform_event(
        source: &str,
        dedup_key: &str,
        destination: &Destination,
    ) -> Uuid {
        let mut name = Vec::new();
        for part in [source, dedup_key, destination.name().as_str()] {
            name.extend_from_slice(part.len().to_string().as_bytes());
            name.push(b':');
            name.extend_from_slice(part.as_bytes());
        }
        Uuid::new_v5(&PLATFORM_EVENT_JOBS, &name)
    }

    /// The id from the event id and the destination: replays, events without a dedup key, and
    /// every job published before ids came from the platform's identity.
    pub fn job_id_of_event(event_id: Uuid, destination: &Destination) -> Uuid {
        let name = format!("{event_id}/{}", destination.name());
        Uuid::new_v5(&event_id, name.as_bytes())
    }

    /// The job to publish once the first `left.sent` parts of its split answer went out: it
    /// carries the parts left instead of the answer's text and workflow outputs (which no
    /// chat target sends), so its size no longer depends on the answer's. Everything else —
    /// id, destination, the event, the attempts so far — stays.
    pub fn continued(mut self, left: PartsLeft) -> Self {
        self.payload.answer.text.clear();
        self.payload.answer.outputs = None;
        self.parts_left = Some(left);
        self
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
    fn what_encode_writes_names_its_kind_and_version_at_the_start() {
        assert_eq!(
            written_head(&encode(&event())),
            Some((InboundEvent::KIND, InboundEvent::VERSION))
        );
        let job: DispatchJob = decode(OLD_JOB.as_bytes()).unwrap();
        assert_eq!(
            written_head(&encode(&job)),
            Some((DispatchJob::KIND, DispatchJob::VERSION))
        );
        assert_eq!(written_head(br#"{"envelope":"x","v":12}"#), Some(("x", 12)));
        // Anything else is left to the parse of the whole head.
        for other in [
            &br#"{"v":1,"envelope":"inbound_event","id":1}"#[..],
            br#"{ "envelope":"inbound_event","v":1,"id":1}"#,
            br#"{"envelope":"inbound\u005fevent","v":1,"id":1}"#,
            br#"{"envelope":"inbound_event","v":01,"id":1}"#,
            br#"{"envelope":"inbound_event","v":1.0,"id":1}"#,
            br#"{"envelope":"inbound_event","v":123456,"id":1}"#,
            br#"{"envelope":"inbound_event","v":"#,
            b"",
        ] {
            assert_eq!(
                written_head(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// What `encode` writes is byte for byte what serde's `flatten` writes, for every kind of
    /// message and for optional fields present and absent.
    #[test]
    fn encode_writes_what_a_flattened_struct_writes() {
        fn same<T: Envelope + std::fmt::Debug + PartialEq>(msg: &T) {
            let bytes = encode(msg);
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&flattened(msg))
            );
            assert_eq!(&decode::<T>(&bytes).unwrap(), msg);
        }
        let mut e = event();
        same(&e);
        e.replay_of = Some(Uuid::now_v7());
        e.reply = None;
        e.payload = serde_json::json!({"text": "quote \" and \u{1F600} and \n", "n": [1, 2.5]});
        same(&e);
        let job: DispatchJob = decode(OLD_JOB.as_bytes()).unwrap();
        same(&job);
        let mut continued = job.clone().continued(PartsLeft {
            sent: 1,
            parts: vec!["(2/2) b".into()],
        });
        continued.replay_of = Some(Uuid::now_v7());
        same(&continued);
        same(&DeadLetter::from_job(&job, Reason::Permanent, "gone"));
        same(&DeadLetter::from_event(&e, Reason::Poison, "crashed"));
        same(&crate::progress::ReplyProgress {
            job_id: job.id,
            destination: job.destination.clone(),
            payload: job.payload.clone(),
            epoch: 3,
            seq: 7,
        });
    }

    /// A message without fields still makes a whole object.
    #[test]
    fn a_message_without_fields_closes_after_the_head() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Nothing {}
        impl Envelope for Nothing {
            const KIND: &'static str = "nothing";
            const VERSION: u16 = 3;
        }
        assert_eq!(encode(&Nothing {}), br#"{"envelope":"nothing","v":3}"#);
        assert_eq!(encode(&Nothing {}), flattened(&Nothing {}));
        assert_eq!(decode::<Nothing>(&encode(&Nothing {})).unwrap(), Nothing {});
    }

    #[test]
    fn a_message_in_another_layout_decodes_the_same_and_a_broken_body_is_refused() {
        let e = event();
        let bytes = encode(&e);
        // The same fields, the head last and spaced out: read by parsing the head.
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).unwrap();
        let (kind, version) = (v.remove("envelope").unwrap(), v.remove("v").unwrap());
        v.insert("v".into(), version);
        v.insert("envelope".into(), kind);
        let reordered = serde_json::to_vec_pretty(&v).unwrap();
        assert_eq!(written_head(&reordered), None);
        assert_eq!(decode::<InboundEvent>(&reordered).unwrap(), e);
        // A head read at the start vouches for nothing after it.
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            decode::<InboundEvent>(cut),
            Err(DecodeError::Body(_))
        ));
        assert!(decode::<InboundEvent>(br#"{"envelope":"inbound_event","v":1}"#).is_err());
    }

    /// A job as this version's predecessor wrote it to the deliver queue, attempts as words.
    const OLD_JOB: &str = r#"{"envelope":"dispatch_job","v":1,
        "id":"0190a3c4-0000-5000-8000-000000000001",
        "destination":{"type":"target","id":"crm"},
        "payload":{"event_id":"0190a3c4-0000-7000-8000-000000000002","source":"crm",
            "platform":"bearer","conversation":{"chat_id":"c","chat_type":"single","sender_id":"u"},
            "query":"hi","answer":{"text":"hello"},
            "timings":{"received_at":null,"dify_started_at":null,"dify_ms":null,"answered_at":null}},
        "attempts":[
            {"at":"2024-07-01T10:00:00Z","outcome":"retry","status":503,"duration_ms":12},
            {"at":"2024-07-01T10:00:05Z","outcome":"partial","error":"part 1/3 delivered","duration_ms":0},
            {"at":"2024-07-01T10:00:06Z","outcome":"wait","duration_ms":3},
            {"at":"2024-07-01T10:00:07Z","outcome":"token_invalid","code":"40014","duration_ms":9},
            {"at":"2024-07-01T10:00:08Z","outcome":"rate_limited","duration_ms":1},
            {"at":"2024-07-01T10:00:09Z","outcome":"ok","status":200,"duration_ms":30}]}"#;

    #[test]
    fn attempt_outcomes_read_and_write_the_words_already_on_the_wire() {
        let job = decode::<DispatchJob>(OLD_JOB.as_bytes()).unwrap();
        let outcomes: Vec<AttemptOutcome> =
            job.attempts.iter().map(|a| a.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            [
                AttemptOutcome::Retry,
                AttemptOutcome::Partial,
                AttemptOutcome::Wait,
                AttemptOutcome::TokenInvalid,
                AttemptOutcome::Other("rate_limited".into()),
                AttemptOutcome::Delivered,
            ]
        );
        // Written back, every word is the one that was read, the unknown one included.
        let again: serde_json::Value = serde_json::from_slice(&encode(&job)).unwrap();
        let old: serde_json::Value = serde_json::from_str(OLD_JOB).unwrap();
        assert_eq!(again["attempts"], old["attempts"]);
        let words = [
            (AttemptOutcome::Delivered, "ok"),
            (AttemptOutcome::Retry, "retry"),
            (AttemptOutcome::Wait, "wait"),
            (AttemptOutcome::Partial, "partial"),
            (AttemptOutcome::TokenInvalid, "token_invalid"),
            (AttemptOutcome::Permanent, "permanent"),
            (AttemptOutcome::ConversationLost, "conversation_lost"),
            (AttemptOutcome::Other("later".into()), "later"),
        ];
        for (outcome, word) in words {
            assert_eq!(serde_json::to_value(&outcome).unwrap(), word);
            assert_eq!(AttemptOutcome::from(word), outcome, "{word}");
        }
    }

    #[test]
    fn an_old_dead_letter_still_parses() {
        // A worker-stage dead letter as the stream holds it, its event inside as the message.
        let letter = r#"{"envelope":"dead_letter","v":1,
            "id":"0190a3c4-0000-7000-8000-000000000009","stage":"work","reason":"exhausted",
            "error":"Dify answered 503","source":"crm",
            "event_id":"0190a3c4-0000-7000-8000-000000000002",
            "message":{"id":"0190a3c4-0000-7000-8000-000000000002","source":"crm",
                "platform":"bearer","dedup_key":"k1","kind":"message",
                "received_at":"2024-07-01T09:59:59Z",
                "conversation":{"chat_id":"c","chat_type":"group","sender_id":"u"},
                "text":"hi","payload":{},
                "attempts":[{"at":"2024-07-01T10:00:00Z","outcome":"conversation_lost","duration_ms":5}]},
            "attempts":[
                {"at":"2024-07-01T10:00:00Z","outcome":"conversation_lost","duration_ms":5},
                {"at":"2024-07-01T10:00:01Z","outcome":"permanent","status":400,"code":"invalid_param","duration_ms":7}],
            "first_attempt_at":"2024-07-01T10:00:00Z","last_attempt_at":"2024-07-01T10:00:01Z",
            "dead_at":"2024-07-01T10:00:02Z"}"#;
        let dl = decode::<DeadLetter>(letter.as_bytes()).unwrap();
        assert_eq!(
            dl.attempts
                .iter()
                .map(|a| a.outcome.as_str())
                .collect::<Vec<_>>(),
            ["conversation_lost", "permanent"]
        );
        let event: InboundEvent = serde_json::from_value(dl.message.clone()).unwrap();
        assert_eq!(event.attempts[0].outcome, AttemptOutcome::ConversationLost);
        let again: serde_json::Value = serde_json::from_slice(&encode(&dl)).unwrap();
        let old: serde_json::Value = serde_json::from_str(letter).unwrap();
        assert_eq!(again, old, "written back unchanged");
    }

    #[test]
    fn job_ids_are_deterministic_per_event_and_destination() {
        let id = Uuid::now_v7();
        let a = Destination::Target { id: "crm".into() };
        let b = Destination::Target { id: "ops".into() };
        let of = DispatchJob::job_id_of_event;
        assert_eq!(of(id, &a), of(id, &a));
        assert_ne!(of(id, &a), of(id, &b));
    }

    #[test]
    fn a_continued_job_carries_its_parts_left_instead_of_the_answer() {
        let destination = Destination::Target { id: "tg".into() };
        let job = DispatchJob {
            id: Uuid::now_v7(),
            destination,
            payload: AnswerPayload {
                event_id: Uuid::now_v7(),
                source: "crm".into(),
                platform: "bearer".into(),
                conversation: Conversation {
                    chat_id: "c1".into(),
                    chat_type: ChatType::Single,
                    sender_id: "u1".into(),
                    sender_name: None,
                    thread_id: None,
                },
                query: "the question".into(),
                answer: Answer {
                    text: "x".repeat(1 << 20),
                    outputs: Some(serde_json::json!({"report": "y".repeat(1 << 19)})),
                    ..Answer::default()
                },
                timings: Timings::default(),
                event: None,
            },
            attempts: vec![],
            replay_of: None,
            parts_left: None,
        };
        // Written before parts were carried: still read, with none.
        let old = encode(&job);
        assert!(!String::from_utf8_lossy(&old).contains("parts_left"));
        assert_eq!(decode::<DispatchJob>(&old).unwrap().parts_left, None);
        let left = PartsLeft {
            sent: 1,
            parts: vec!["(2/3) b".into(), "(3/3) c".into()],
        };
        let continued = job.clone().continued(left.clone());
        assert_eq!(continued.parts_left.as_ref(), Some(&left));
        assert_eq!(continued.payload.answer.text, "");
        assert_eq!(continued.payload.answer.outputs, None);
        assert_eq!(continued.id, job.id);
        assert_eq!(continued.payload.query, "the question");
        let wire = encode(&continued);
        assert!(wire.len() < 1024, "{} bytes on the wire", wire.len());
        assert_eq!(decode::<DispatchJob>(&wire).unwrap(), continued);
    }

    #[test]
    fn two_copies_of_one_platform_event_give_one_job_id_per_destination() {
        let first = event();
        let second = InboundEvent {
            id: Uuid::now_v7(),
            ..first.clone()
        };
        let a = Destination::Target { id: "crm".into() };
        let b = Destination::Target { id: "ops".into() };
        assert_eq!(
            DispatchJob::job_id(&first, &a),
            DispatchJob::job_id(&second, &a)
        );
        assert_ne!(
            DispatchJob::job_id(&first, &a),
            DispatchJob::job_id(&first, &b)
        );
        // Another dedup key or another source is another platform event.
        let other_key = InboundEvent {
            dedup_key: "k2".into(),
            ..first.clone()
        };
        let other_source = InboundEvent {
            source: "ops".into(),
            ..first.clone()
        };
        assert_ne!(
            DispatchJob::job_id(&first, &a),
            DispatchJob::job_id(&other_key, &a)
        );
        assert_ne!(
            DispatchJob::job_id(&first, &a),
            DispatchJob::job_id(&other_source, &a)
        );
        // The parts cannot run into each other: ("a:b", "c") is not ("a", "b:c").
        let split = |s: &str, k: &str| DispatchJob::job_id_of_platform_event(s, k, &a);
        assert_ne!(split("a:b", "c"), split("a", "b:c"));
        assert_ne!(split("a1", "1:c"), split("a", "11:c"));
    }

    #[test]
    fn replays_and_events_without_a_dedup_key_keep_the_event_id_rule() {
        let a = Destination::Target { id: "crm".into() };
        let replayed = InboundEvent {
            replay_of: Some(Uuid::now_v7()),
            ..event()
        };
        assert_eq!(
            DispatchJob::job_id(&replayed, &a),
            DispatchJob::job_id_of_event(replayed.id, &a)
        );
        let keyless = InboundEvent {
            dedup_key: String::new(),
            ..event()
        };
        assert_eq!(
            DispatchJob::job_id(&keyless, &a),
            DispatchJob::job_id_of_event(keyless.id, &a)
        );
        let plain = event();
        assert_ne!(
            DispatchJob::job_id(&plain, &a),
            DispatchJob::job_id_of_event(plain.id, &a)
        );
    }
}
