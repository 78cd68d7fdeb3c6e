//! Replies through Slack (`platform = "slack"`): a slash command's answer goes to its
//! `response_url` (visible in the channel); a message's answer is posted with the bot token by
//! `chat.postMessage` in the message's thread. Keys (shared with the ingress): `bot_token`
//! (needed for messages; slash commands can do without), `api_base` (default
//! `https://slack.com/api`).
//!
//! With `stream = true` (which needs `bot_token`) a message's reply grows
//! ([`crate::stream::Grow`]): the first update is the `chat.postMessage` above, in the thread;
//! every later one and the final answer `chat.update` of that message (`channel` + `ts`; Slack
//! answers `ok` to an update that changes nothing, so an edit repeated after a crash is
//! delivered). A long answer: the message holds its first part, the rest follow in the thread
//! as today's split. A slash command's reply does not grow: its `response_url` cannot edit what
//! it posted, so its updates are dropped and its answer goes whole. Slack allows about one
//! message a second in a channel, and edits count: that is the chat's limit; `chat.update` is
//! also a Tier 3 method (about 50 a minute per workspace), the source's edit limit.
use super::super::parts::{deliver_parts, local_outcome};
use super::super::slack::{
    classify_api, classify_webhook, post_message_body, DEFAULT_API_BASE, LIMIT,
};
use super::super::{send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use crate::stream::{Grow, Reply};
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{Destination, DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::units::Rate;
use shared::Secret;
use std::time::Duration;

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &["bot_token", "api_base"];

/// Slack's per-channel message limit (about one a second); edits count like messages.
const CHANNEL_RATE: Rate = Rate {
    count: 1,
    per: Duration::from_secs(1),
};
/// `chat.update` is a Tier 3 method: 50 calls a minute per workspace (Slack allows bursts
/// beyond; we stay within).
const TIER_3: Rate = Rate {
    count: 50,
    per: Duration::from_secs(60),
};
/// `chat.update` refusals that mean the message cannot be edited any more: fall back.
const CANNOT_EDIT: &[&str] = &[
    "cant_update_message",
    "message_not_found",
    "edit_window_closed",
];

#[derive(Debug)]
pub struct SlackReply {
    token: Option<Secret>,
    api_base: String,
    /// The source streams its replies.
    stream: bool,
}

impl SlackReply {
    pub fn from_source(s: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        let token = k.secret("bot_token");
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        if s.stream && token.is_none() && !k.has_problem("bot_token") {
            k.issue(
                "bot_token",
                "a streamed reply is posted and edited with the bot token (chat:write)",
            );
        }
        let stream = s.stream;
        k.finish(Some(Self {
            token,
            api_base,
            stream,
        }))
    }

    /// A Web API call with the bot token (only built when there is one).
    fn call(&self, ctx: &Context, method: &str, body: &Value) -> Option<reqwest::RequestBuilder> {
        let token = self.token.as_ref()?;
        Some(
            ctx.http
                .post(format!("{}/{method}", self.api_base))
                .bearer_auth(token.expose())
                .json(body),
        )
    }
}

/// The channel and thread a growing reply lives in: a message's (a slash command has no
/// thread, its answer goes through `response_url`).
fn thread_of(reply: Reply<'_>) -> Option<(&str, &str)> {
    match reply.destination {
        Destination::Reply {
            handle:
                ReplyHandle::Slack {
                    channel,
                    thread_ts: Some(ts),
                    ..
                },
        } => Some((channel.as_str(), ts.as_str())),
        _ => None,
    }
}

/// `chat.update`'s body (pure).
pub fn update_body(channel: &str, ts: &str, text: &str) -> Value {
    json!({ "channel": channel, "ts": ts, "text": text })
}

/// `chat.update`'s answer: a message that can no longer be edited (deleted, not the bot's,
/// past the workspace's edit window) is permanent — the reply falls back to a single message;
/// the rest as `chat.postMessage`'s ([`classify_api`]: `ratelimited` retries after
/// `Retry-After`, `msg_too_long`, `not_in_channel`, `missing_scope` are permanent).
pub fn classify_update(answer: &Answer) -> Verdict {
    if answer.status == 200 {
        let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let error = v.get("error").and_then(Value::as_str).unwrap_or_default();
        if CANNOT_EDIT.contains(&error) {
            return Verdict::Permanent;
        }
    }
    classify_api(answer)
}

#[async_trait]
impl Target for SlackReply {
    fn kind(&self) -> &'static str {
        "slack_reply"
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let handle = match super::restored(job, ctx).await {
            Ok(handle) => handle,
            Err(outcome) => return outcome,
        };
        let Some(ReplyHandle::Slack {
            channel,
            thread_ts,
            response_url,
        }) = &handle
        else {
            return super::wrong_handle("slack");
        };
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |_, part| {
            let request = match (response_url, &self.token) {
                // A slash command: its response_url answers in the channel without a bot token.
                (Some(url), _) => Ok((
                    ctx.http
                        .post(url)
                        .json(&json!({ "text": part, "response_type": "in_channel" })),
                    true,
                )),
                (None, Some(token)) => Ok((
                    ctx.http
                        .post(format!("{}/chat.postMessage", self.api_base))
                        .bearer_auth(token.expose())
                        .json(&post_message_body(channel, &part, thread_ts.as_deref())),
                    false,
                )),
                (None, None) => Err("no bot_token is configured to post into the thread"),
            };
            Box::pin(async move {
                match request {
                    Ok((r, true)) => send(ctx, r, classify_webhook).await.0,
                    Ok((r, false)) => send(ctx, r, classify_api).await.0,
                    Err(why) => local_outcome(Verdict::Permanent, why),
                }
            })
        })
        .await
    }

    fn grow(&self) -> Option<&dyn Grow> {
        self.stream.then_some(self as &dyn Grow)
    }
}

#[async_trait]
impl Grow for SlackReply {
    async fn create(&self, reply: Reply<'_>, ctx: &Context, text: &str) -> Result<String, Outcome> {
        let Some((channel, thread)) = thread_of(reply) else {
            return Err(super::wrong_handle("slack"));
        };
        let body = post_message_body(channel, text, Some(thread));
        let Some(request) = self.call(ctx, "chat.postMessage", &body) else {
            return Err(no_token());
        };
        let (outcome, answer) = send(ctx, request, classify_api).await;
        if outcome.verdict != Verdict::Delivered {
            return Err(outcome);
        }
        let ts = answer
            .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok())
            .and_then(|v| v.get("ts").and_then(Value::as_str).map(str::to_owned));
        // Posted, but what has no ts cannot be edited: the final answer goes on its own.
        ts.ok_or_else(|| local_outcome(Verdict::Permanent, "chat.postMessage answered without ts"))
    }

    async fn edit(&self, reply: Reply<'_>, ctx: &Context, message: &str, text: &str) -> Outcome {
        let Some((channel, _)) = thread_of(reply) else {
            return super::wrong_handle("slack");
        };
        match self.call(ctx, "chat.update", &update_body(channel, message, text)) {
            Some(request) => send(ctx, request, classify_update).await.0,
            None => no_token(),
        }
    }

    async fn send_part(
        &self,
        reply: Reply<'_>,
        ctx: &Context,
        _index: usize,
        part: &str,
    ) -> Outcome {
        let Some((channel, thread)) = thread_of(reply) else {
            return super::wrong_handle("slack");
        };
        let body = post_message_body(channel, part, Some(thread));
        match self.call(ctx, "chat.postMessage", &body) {
            Some(request) => send(ctx, request, classify_api).await.0,
            None => no_token(),
        }
    }

    fn chat_rate(&self, reply: Reply<'_>) -> Option<(String, Vec<Rate>)> {
        let (channel, _) = thread_of(reply)?;
        Some((channel.to_owned(), vec![CHANNEL_RATE]))
    }

    fn grows(&self, reply: Reply<'_>) -> bool {
        thread_of(reply).is_some()
    }

    fn edit_rate(&self, reply: Reply<'_>) -> Option<(String, Vec<Rate>)> {
        thread_of(reply)?;
        Some(("chat.update".to_owned(), vec![TIER_3]))
    }
}

fn no_token() -> Outcome {
    local_outcome(
        Verdict::Permanent,
        "no bot_token is configured to post into the thread",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::slack::tests::answer;
    use shared::envelope::{AnswerPayload, ChatType, Conversation};

    #[test]
    fn an_update_slack_refuses_for_good_falls_back_a_rate_limit_waits() {
        let cases = [
            (200, r#"{"ok":true,"ts":"1.2"}"#, None, Verdict::Delivered),
            (
                200,
                r#"{"ok":false,"error":"cant_update_message"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"message_not_found"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"edit_window_closed"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"msg_too_long"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"not_in_channel"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"ok":false,"error":"missing_scope"}"#,
                None,
                Verdict::Permanent,
            ),
            (
                429,
                r#"{"ok":false,"error":"ratelimited"}"#,
                Some("7"),
                Verdict::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                },
            ),
            (
                200,
                r#"{"ok":false,"error":"internal_error"}"#,
                None,
                Verdict::Retry { retry_after: None },
            ),
        ];
        for (status, body, retry, want) in cases {
            assert_eq!(
                classify_update(&answer(status, body, retry)),
                want,
                "{body}"
            );
        }
        assert_eq!(
            update_body("C1", "1700.1", "t"),
            json!({"channel": "C1", "ts": "1700.1", "text": "t"})
        );
    }

    fn source(text: &str) -> SourceConfig {
        toml::from_str(&format!(
            "id = \"s\"\napp = \"a\"\nplatform = \"slack\"\nreply = true\n{text}"
        ))
        .unwrap()
    }

    #[test]
    fn a_thread_reply_grows_within_the_channel_and_tier_3_a_slash_command_does_not() {
        let r = SlackReply::from_source(&source("stream = true\nbot_token = \"xoxb\"")).unwrap();
        let payload = AnswerPayload {
            event_id: uuid::Uuid::nil(),
            source: "s".into(),
            platform: "slack".into(),
            conversation: Conversation {
                chat_id: "C1".into(),
                chat_type: ChatType::Group,
                sender_id: "U1".into(),
                sender_name: None,
                thread_id: None,
            },
            query: "q".into(),
            answer: Default::default(),
            timings: Default::default(),
            event: None,
        };
        let to = |thread_ts: Option<&str>, response_url: Option<&str>| Destination::Reply {
            handle: ReplyHandle::Slack {
                channel: "C1".into(),
                thread_ts: thread_ts.map(str::to_owned),
                response_url: response_url.map(str::to_owned),
            },
        };
        let thread = to(Some("1700.1"), None);
        let reply = Reply {
            destination: &thread,
            payload: &payload,
        };
        assert!(r.grows(reply));
        assert_eq!(r.chat_rate(reply), Some(("C1".into(), vec![CHANNEL_RATE])));
        assert_eq!(
            r.edit_rate(reply),
            Some(("chat.update".into(), vec![TIER_3]))
        );
        for slash in [
            to(None, Some("https://hooks.slack.com/commands/x")),
            to(None, None),
        ] {
            let reply = Reply {
                destination: &slash,
                payload: &payload,
            };
            assert!(!r.grows(reply));
            assert_eq!(r.chat_rate(reply), None);
            assert_eq!(r.edit_rate(reply), None);
        }
        // Streaming needs the bot token; without `stream` a slash-command-only source is fine.
        let refused = SlackReply::from_source(&source("stream = true")).unwrap_err();
        assert_eq!(refused[0].key, "sources.s.bot_token");
        assert!(SlackReply::from_source(&source("")).is_ok());
    }
}
