//! Credentials that arrive inside a platform's event and must not travel with it: DingTalk's
//! `sessionWebhook` and Slack's `response_url` (each a URL that posts into the conversation
//! without any other secret), Discord's interaction token (which alone writes the answer to a
//! slash command), and the verification tokens Slack (`token`) and Feishu
//! (`header.token`, or `token` in a 1.0 event) put in every event. The ingress takes them out of
//! the event before it is published ([`take`], pure), so that no queue, dead letter, export or
//! console shows them. The reply URLs and the interaction token are kept in Redis under `replycred:<event id>` for as long
//! as the platform honours them (encrypted with `[redis] encryption_key` when set), where the
//! dispatcher finds them by the event id — which a replayed dead letter keeps, so a replay within
//! the URL's life still answers through it, and one after falls back as an expired URL always
//! did (DingTalk's robot API, Slack's `chat.postMessage`). The verification tokens are dropped:
//! nothing after the ingress needs them.
use crate::envelope::ReplyHandle;
use crate::store::{Store, StoreError};
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// How long a Slack `response_url` is honoured (Slack: 30 minutes).
pub const SLACK_RESPONSE_URL_LIFE: Duration = Duration::from_secs(30 * 60);
/// How long a DingTalk session webhook is kept when DingTalk gives no expiry, and at most.
pub const DINGTALK_SESSION_MAX: Duration = Duration::from_secs(3 * 3600);
/// How long Discord honours an interaction token (15 minutes), and so how long it is kept.
pub const DISCORD_INTERACTION_TOKEN_LIFE: Duration = Duration::from_secs(15 * 60);

/// The reply credentials taken out of one event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction_token: Option<String>,
}

/// Takes the credentials out of an event's reply handle and payload (pure). Returns the reply
/// URLs to keep and for how long, if there are any; `now_ms` is the clock.
pub fn take(
    platform: &str,
    reply: &mut Option<ReplyHandle>,
    payload: &mut Value,
    now_ms: i64,
) -> Option<(Credentials, Duration)> {
    match platform {
        "dingtalk" => remove(payload, &["sessionWebhook"]),
        "slack" => remove(payload, &["token", "response_url"]),
        "feishu" | "lark" => {
            remove(payload, &["token"]);
            if let Some(header) = payload.get_mut("header") {
                remove(header, &["token"]);
            }
        }
        _ => {}
    }
    match reply {
        Some(ReplyHandle::Dingtalk {
            session_webhook,
            session_webhook_expires_at,
            ..
        }) => Some((
            Credentials {
                session_webhook: Some(session_webhook.take()?),
                ..Credentials::default()
            },
            life(*session_webhook_expires_at, now_ms, DINGTALK_SESSION_MAX),
        )),
        Some(ReplyHandle::Slack { response_url, .. }) => Some((
            Credentials {
                response_url: Some(response_url.take()?),
                ..Credentials::default()
            },
            SLACK_RESPONSE_URL_LIFE,
        )),
        Some(ReplyHandle::Discord {
            interaction_token,
            token_expires_at,
            ..
        }) => Some((
            Credentials {
                interaction_token: Some(interaction_token.take()?),
                ..Credentials::default()
            },
            life(*token_expires_at, now_ms, DISCORD_INTERACTION_TOKEN_LIFE),
        )),
        _ => None,
    }
}

/// How long a credential that ends at `expires_at` (milliseconds, the body's number) is kept
/// at `now_ms`: at least a second, at most `max`, `max` when no end is given. Saturating: a
/// forged expiry at either end of `i64` cannot overflow.
fn life(expires_at: Option<i64>, now_ms: i64, max: Duration) -> Duration {
    match expires_at {
        Some(at) => Duration::from_millis(at.saturating_sub(now_ms).max(1000) as u64).min(max),
        None => max,
    }
}

fn remove(v: &mut Value, fields: &[&str]) {
    if let Some(map) = v.as_object_mut() {
        for f in fields {
            map.remove(*f);
        }
    }
}

/// Why the reply URLs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored reply credentials do not open: {0}")]
    Open(#[from] crate::vault::OpenError),
}

impl From<redis::RedisError> for CredentialsError {
    fn from(e: redis::RedisError) -> Self {
        CredentialsError::Store(e.into())
    }
}

/// The Redis key of an event's reply URLs.
pub fn key(store: &Store, event_id: Uuid) -> String {
    store.key(&["replycred", &event_id.to_string()])
}

/// Keeps an event's reply credentials for `life`.
pub async fn keep(
    store: &Store,
    event_id: Uuid,
    credentials: &Credentials,
    life: Duration,
) -> Result<(), StoreError> {
    let key = key(store, event_id);
    let json = serde_json::to_string(credentials).unwrap_or_default();
    let mut conn = store.conn().await?;
    redis::cmd("SET")
        .arg(&key)
        .arg(store.vault().seal(&key, &json))
        .arg("PX")
        .arg(life.as_millis().max(1) as u64)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// An event's reply credentials, if they are still kept.
pub async fn find(store: &Store, event_id: Uuid) -> Result<Option<Credentials>, CredentialsError> {
    let key = key(store, event_id);
    let mut conn = store.conn().await?;
    let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    let json = store.vault().open(&key, &stored)?;
    // Written by us; anything else reads as no credentials.
    Ok(serde_json::from_str(&json).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_leave_the_payload_and_the_handle() {
        let now = 1_700_000_000_000i64;
        let mut reply = Some(ReplyHandle::Dingtalk {
            session_webhook: Some("https://oapi.dingtalk.com/robot/sendBySession?session=S".into()),
            session_webhook_expires_at: Some(now + 60_000),
            conversation_id: "c".into(),
            robot_code: None,
            sender_staff_id: None,
        });
        let mut payload = json!({"sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=S", "text": {"content": "hi"}});
        let (creds, life) = take("dingtalk", &mut reply, &mut payload, now).unwrap();
        assert_eq!(life, Duration::from_secs(60));
        assert!(creds.session_webhook.unwrap().contains("session=S"));
        assert!(!payload.to_string().contains("session=S"));
        assert!(!format!("{reply:?}").contains("session=S"));

        let mut reply = Some(ReplyHandle::Slack {
            channel: "C1".into(),
            thread_ts: None,
            response_url: Some("https://hooks.slack.com/commands/T/1/secret".into()),
        });
        let mut payload = json!({"token": "verif", "response_url": "https://hooks.slack.com/commands/T/1/secret", "text": "q"});
        let (creds, life) = take("slack", &mut reply, &mut payload, now).unwrap();
        assert_eq!(life, SLACK_RESPONSE_URL_LIFE);
        assert!(creds.response_url.is_some());
        assert_eq!(payload, json!({"text": "q"}));
        assert!(!format!("{reply:?}").contains("secret"));

        let mut reply = None;
        let mut payload =
            json!({"schema": "2.0", "header": {"token": "v", "event_id": "e"}, "token": "v1"});
        assert!(take("feishu", &mut reply, &mut payload, now).is_none());
        assert_eq!(
            payload,
            json!({"schema": "2.0", "header": {"event_id": "e"}})
        );

        // A DingTalk webhook without expiry is kept for the most; an expired one for a second.
        let mut reply = Some(ReplyHandle::Dingtalk {
            session_webhook: Some("u".into()),
            session_webhook_expires_at: Some(i64::MIN),
            conversation_id: "c".into(),
            robot_code: None,
            sender_staff_id: None,
        });
        let (_, life) = take("dingtalk", &mut reply, &mut json!(null), now).unwrap();
        assert_eq!(life, Duration::from_secs(1));
        // Discord's interaction token leaves the handle; the rest of the handle stays.
        let handle = |token: Option<&str>, at: Option<i64>| {
            Some(ReplyHandle::Discord {
                application_id: "app".into(),
                channel_id: "c1".into(),
                interaction_token: token.map(Into::into),
                token_expires_at: at,
                message_id: None,
            })
        };
        let mut reply = handle(Some("itok-secret"), Some(now + 15 * 60_000));
        let (creds, life) = take("discord", &mut reply, &mut json!(null), now).unwrap();
        assert_eq!(creds.interaction_token.as_deref(), Some("itok-secret"));
        assert_eq!(life, DISCORD_INTERACTION_TOKEN_LIFE);
        assert_eq!(reply, handle(None, Some(now + 15 * 60_000)));
        let mut reply = handle(Some("t"), Some(i64::MIN));
        let (_, life) = take("discord", &mut reply, &mut json!(null), now).unwrap();
        assert_eq!(life, Duration::from_secs(1));
        // A message (no interaction) has nothing to keep.
        let mut reply = handle(None, None);
        assert!(take("discord", &mut reply, &mut json!(null), now).is_none());
        // Other platforms' payloads are left alone.
        let mut payload = json!({"token": "not ours to judge"});
        assert!(take("github", &mut None, &mut payload, now).is_none());
        assert_eq!(payload, json!({"token": "not ours to judge"}));
    }
}
