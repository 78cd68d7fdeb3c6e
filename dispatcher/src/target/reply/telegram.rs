//! Replies through a Telegram bot (`platform = "telegram"`): `sendMessage` to the chat, the
//! first part replying to the question (`reply_to_message_id`, sent anyway if the question was
//! deleted) and every part in the question's forum topic when it had one. Keys (shared with the
//! ingress): `bot_token`, `api_base` (default `https://api.telegram.org`).
//!
//! With `stream = true` the reply grows ([`crate::stream::Grow`]): the first update is the
//! `sendMessage` above, every later one and the final answer `editMessageText` of that message
//! (Telegram's "message is not modified" means it already shows the text). Telegram allows
//! about one message a second in a chat and 20 a minute in a group, and edits count: that is
//! the chat's limit for updates and the final answer.
use super::super::parts::deliver_parts;
use super::super::parts::local_outcome;
use super::super::telegram::{classify, send_message_url, DEFAULT_API_BASE, LIMIT};
use super::super::{send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use crate::stream::{Grow, Reply};
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::Destination;
use shared::envelope::{DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::units::Rate;
use shared::Secret;
use std::time::Duration;

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &["bot_token", "api_base"];

#[derive(Debug)]
pub struct TelegramReply {
    token: Secret,
    api_base: String,
    /// The source streams its replies.
    stream: bool,
}

impl TelegramReply {
    pub fn from_source(s: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        let token = k.required_secret("bot_token");
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        let stream = s.stream;
        k.finish(token.map(|token| Self {
            token,
            api_base,
            stream,
        }))
    }

    fn url(&self, method: &str) -> String {
        match method {
            "sendMessage" => send_message_url(&self.api_base, &self.token),
            _ => format!("{}/bot{}/{method}", self.api_base, self.token.expose()),
        }
    }
}

/// Where a reply goes: the chat, the question, the forum topic.
struct Chat {
    chat_id: i64,
    question: Option<i64>,
    topic: Option<i64>,
}

fn chat_of(reply: Reply<'_>) -> Option<Chat> {
    let Destination::Reply {
        handle: ReplyHandle::Telegram {
            chat_id,
            message_id,
        },
    } = reply.destination
    else {
        return None;
    };
    let topic = reply
        .payload
        .conversation
        .thread_id
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok());
    Some(Chat {
        chat_id: *chat_id,
        question: *message_id,
        topic,
    })
}

/// `editMessageText`'s answer: Telegram's "message is not modified" (the message already shows
/// this text: an edit repeated after a crash) is delivered; the rest as `sendMessage`'s.
pub fn classify_edit(answer: &Answer) -> Verdict {
    if answer.status == 400 {
        let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let d = v
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if d.contains("message is not modified") {
            return Verdict::Delivered;
        }
    }
    classify(answer)
}

/// `editMessageText`'s body (pure).
pub fn render_edit(chat_id: i64, message_id: i64, text: &str) -> Value {
    json!({ "chat_id": chat_id, "message_id": message_id, "text": text })
}

/// `sendMessage`'s body for one part (pure).
pub fn render(
    chat_id: i64,
    reply_to: Option<i64>,
    topic: Option<i64>,
    text: &str,
    first: bool,
) -> Value {
    let mut body = json!({ "chat_id": chat_id, "text": text });
    if let (Some(id), true) = (reply_to, first) {
        body["reply_to_message_id"] = json!(id);
        body["allow_sending_without_reply"] = json!(true);
    }
    if let Some(t) = topic {
        body["message_thread_id"] = json!(t);
    }
    body
}

#[async_trait]
impl Target for TelegramReply {
    fn kind(&self) -> &'static str {
        "telegram_reply"
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let Some(ReplyHandle::Telegram {
            chat_id,
            message_id,
        }) = super::handle(job)
        else {
            return super::wrong_handle("telegram");
        };
        let topic = job
            .payload
            .conversation
            .thread_id
            .as_deref()
            .and_then(|t| t.parse::<i64>().ok());
        let parts = self.parts_of(job);
        let url = send_message_url(&self.api_base, &self.token);
        deliver_parts(job, ctx, parts, |i, part| {
            let request =
                ctx.http
                    .post(&url)
                    .json(&render(*chat_id, *message_id, topic, &part, i == 0));
            Box::pin(async move { send(ctx, request, classify).await.0 })
        })
        .await
    }

    fn grow(&self) -> Option<&dyn Grow> {
        self.stream.then_some(self as &dyn Grow)
    }
}

#[async_trait]
impl Grow for TelegramReply {
    async fn create(&self, reply: Reply<'_>, ctx: &Context, text: &str) -> Result<String, Outcome> {
        let Some(c) = chat_of(reply) else {
            return Err(super::wrong_handle("telegram"));
        };
        let body = render(c.chat_id, c.question, c.topic, text, true);
        let request = ctx.http.post(self.url("sendMessage")).json(&body);
        let (outcome, answer) = send(ctx, request, classify).await;
        if outcome.verdict != Verdict::Delivered {
            return Err(outcome);
        }
        let id = answer
            .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok())
            .and_then(|v| v.pointer("/result/message_id").and_then(Value::as_i64));
        match id {
            Some(id) => Ok(id.to_string()),
            // Sent, but we cannot edit what we cannot name: the final answer goes on its own.
            None => Err(local_outcome(
                Verdict::Permanent,
                "sendMessage answered without result.message_id",
            )),
        }
    }

    async fn edit(&self, reply: Reply<'_>, ctx: &Context, message: &str, text: &str) -> Outcome {
        let (Some(c), Ok(message_id)) = (chat_of(reply), message.parse::<i64>()) else {
            return super::wrong_handle("telegram");
        };
        let request = ctx
            .http
            .post(self.url("editMessageText"))
            .json(&render_edit(c.chat_id, message_id, text));
        send(ctx, request, classify_edit).await.0
    }

    async fn send_part(
        &self,
        reply: Reply<'_>,
        ctx: &Context,
        _index: usize,
        part: &str,
    ) -> Outcome {
        let Some(c) = chat_of(reply) else {
            return super::wrong_handle("telegram");
        };
        let body = render(c.chat_id, c.question, c.topic, part, false);
        let request = ctx.http.post(self.url("sendMessage")).json(&body);
        send(ctx, request, classify).await.0
    }

    fn chat_rate(&self, reply: Reply<'_>) -> Option<(String, Vec<Rate>)> {
        let c = chat_of(reply)?;
        // Positive ids are private chats: about one message a second; groups: 20 a minute.
        let rate = if c.chat_id > 0 {
            Rate {
                count: 1,
                per: Duration::from_secs(1),
            }
        } else {
            Rate {
                count: 20,
                per: Duration::from_secs(60),
            }
        };
        Some((c.chat_id.to_string(), vec![rate]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_part_replies_and_every_part_stays_in_the_topic() {
        let cases = [
            (
                Some(7),
                None,
                true,
                json!({"chat_id": -5, "text": "t", "reply_to_message_id": 7, "allow_sending_without_reply": true}),
            ),
            (Some(7), None, false, json!({"chat_id": -5, "text": "t"})),
            (
                None,
                Some(3),
                true,
                json!({"chat_id": -5, "text": "t", "message_thread_id": 3}),
            ),
        ];
        for (reply_to, topic, first, want) in cases {
            assert_eq!(render(-5, reply_to, topic, "t", first), want);
        }
    }

    #[test]
    fn an_edit_to_the_same_text_is_delivered_other_refusals_are_not() {
        let answer = |status: u16, body: Value| Answer {
            status,
            headers: Default::default(),
            body: body.to_string().into(),
        };
        let bad = |d: &str| {
            answer(
                400,
                json!({"ok": false, "error_code": 400, "description": d}),
            )
        };
        let not_modified = "Bad Request: message is not modified: specified new message content \
                            and reply markup are exactly the same as a current content";
        assert_eq!(classify_edit(&bad(not_modified)), Verdict::Delivered);
        assert_eq!(
            classify_edit(&bad("Bad Request: message to edit not found")),
            Verdict::Permanent
        );
        assert_eq!(
            classify_edit(&answer(
                200,
                json!({"ok": true, "result": {"message_id": 5}})
            )),
            Verdict::Delivered
        );
        assert_eq!(
            classify_edit(&answer(
                429,
                json!({"ok": false, "parameters": {"retry_after": 3}})
            )),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            render_edit(-5, 9, "t"),
            json!({"chat_id": -5, "message_id": 9, "text": "t"})
        );
    }
}
