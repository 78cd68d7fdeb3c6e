//! Replies through a Telegram bot (`platform = "telegram"`): `sendMessage` to the chat, the
//! first part replying to the question (`reply_to_message_id`, sent anyway if the question was
//! deleted) and every part in the question's forum topic when it had one. Keys (shared with the
//! ingress): `bot_token`, `api_base` (default `https://api.telegram.org`).
use super::super::parts::deliver_parts;
use super::super::telegram::{classify, send_message_url, DEFAULT_API_BASE, LIMIT};
use super::super::{send, Context, Outcome, Target};
use crate::split::Limit;
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &["bot_token", "api_base"];

#[derive(Debug)]
pub struct TelegramReply {
    token: Secret,
    api_base: String,
}

impl TelegramReply {
    pub fn from_source(s: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        let token = k.required_secret("bot_token");
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        k.finish(token.map(|token| Self { token, api_base }))
    }
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
        let parts = self.parts(&job.payload.answer.text);
        let url = send_message_url(&self.api_base, &self.token);
        deliver_parts(job, ctx, &parts, |i, part| {
            let request =
                ctx.http
                    .post(&url)
                    .json(&render(*chat_id, *message_id, topic, &part, i == 0));
            Box::pin(async move { send(ctx, request, classify).await.0 })
        })
        .await
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
}
