//! Replies through Slack (`platform = "slack"`): a slash command's answer goes to its
//! `response_url` (visible in the channel); a message's answer is posted with the bot token by
//! `chat.postMessage` in the message's thread. Keys (shared with the ingress): `bot_token`
//! (needed for messages; slash commands can do without), `api_base` (default
//! `https://slack.com/api`).
use super::super::parts::{deliver_parts, local_outcome};
use super::super::slack::{
    classify_api, classify_webhook, post_message_body, DEFAULT_API_BASE, LIMIT,
};
use super::super::{send, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use async_trait::async_trait;
use serde_json::json;
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &["bot_token", "api_base"];

#[derive(Debug)]
pub struct SlackReply {
    token: Option<Secret>,
    api_base: String,
}

impl SlackReply {
    pub fn from_source(s: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        let token = k.secret("bot_token");
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        k.finish(Some(Self { token, api_base }))
    }
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
        let parts = self.parts(&job.payload.answer.text);
        deliver_parts(job, ctx, &parts, |_, part| {
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
}
