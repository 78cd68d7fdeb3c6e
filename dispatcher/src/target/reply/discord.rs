//! Replies through Discord (`platform = "discord"`). A slash command's answer edits the deferred
//! response the ingress gave (`PATCH /webhooks/{application_id}/{token}/messages/@original`),
//! and further parts of a long answer are follow-up messages (`POST /webhooks/{application_id}/
//! {token}`): both need only the interaction token, which Discord honours for 15 minutes. Past
//! that (less a margin) the answer goes to the channel through the bot instead
//! (`POST /channels/{channel_id}/messages`, replying with `message_reference` when the handle
//! names a message), and the log says so; so it does when Discord refuses the token earlier
//! (401 or 404: the interaction was not acknowledged in time, or is unknown). The token does
//! not travel with the job: the ingress keeps it aside in Redis under the event id
//! (`shared::reply_credentials`) and [`super::restored`] puts it back; a job whose token is no
//! longer kept (past its 15 minutes) answers in the channel. A message from the Gateway
//! (`mode = "stream"`) has no interaction token: its answer is always a reply in its channel
//! through the bot. Keys (shared with the ingress and the connector): `bot_token` (for the
//! channel messages; without it an answer later than the token is a permanent failure),
//! `api_base` (default `https://discord.com/api/v10`). No answer pings anyone
//! (`allowed_mentions` is empty).
use super::super::discord::buckets::Route;
use super::super::discord::{digest, message_body, send_limited, DEFAULT_API_BASE, LIMIT};
use super::super::parts::{deliver_parts, local_outcome};
use super::super::{Context, Outcome, Target, Verdict};
use crate::split::Limit;
use async_trait::async_trait;
use reqwest::Method;
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &["bot_token", "api_base"];
/// An interaction token this close to its end is not used: the request could arrive after it.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct DiscordReply {
    bot_token: Option<Secret>,
    api_base: String,
}

/// How one part goes out (pure).
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    /// With the interaction token: method, path under `api_base` (it holds the token, a
    /// credential, so it is never logged).
    Interaction(Method, Secret),
    /// Through the bot, into the channel (path under `api_base`), replying to a message.
    Channel(String, Option<String>),
    /// Neither is possible: why.
    None(&'static str),
}

/// Why a late answer is not written.
pub const NO_BOT: &str =
    "the interaction token has expired and no bot_token is configured for a channel message";

impl DiscordReply {
    pub fn from_source(s: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        let bot_token = k.secret("bot_token");
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        k.finish(Some(Self {
            bot_token,
            api_base,
        }))
    }

    /// How part `index` goes out at `now_ms`: the interaction's response (the first part) or a
    /// follow-up (the others) while the token lives, else a channel message through the bot.
    pub fn via(&self, handle: &ReplyHandle, index: usize, now_ms: i64) -> Via {
        let ReplyHandle::Discord {
            application_id,
            channel_id,
            interaction_token,
            token_expires_at,
            message_id,
        } = handle
        else {
            return Via::None("the job's reply handle is not a `discord` handle");
        };
        let margin = TOKEN_MARGIN.as_millis() as i64;
        if let Some(token) = interaction_token {
            if token_expires_at
                .is_none_or(|at| at.checked_sub(margin).is_some_and(|until| until > now_ms))
            {
                return if index == 0 {
                    Via::Interaction(
                        Method::PATCH,
                        Secret::new(format!(
                            "/webhooks/{application_id}/{token}/messages/@original"
                        )),
                    )
                } else {
                    Via::Interaction(
                        Method::POST,
                        Secret::new(format!("/webhooks/{application_id}/{token}")),
                    )
                };
            }
        }
        if self.bot_token.is_none() {
            return Via::None(NO_BOT);
        }
        Via::Channel(
            format!("/channels/{channel_id}/messages"),
            message_id.clone().filter(|_| index == 0),
        )
    }

    fn bot_scope(&self) -> String {
        self.bot_token
            .as_ref()
            .map(|t| format!("bot-{}", digest(t.expose())))
            .unwrap_or_default()
    }
}

#[async_trait]
impl Target for DiscordReply {
    fn kind(&self) -> &'static str {
        "discord_reply"
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let handle = match super::restored(job, ctx).await {
            Ok(Some(handle @ ReplyHandle::Discord { .. })) => handle,
            Ok(_) => return super::wrong_handle("discord"),
            Err(outcome) => return outcome,
        };
        let handle = &handle;
        let ReplyHandle::Discord { channel_id, .. } = handle else {
            return super::wrong_handle("discord");
        };
        // A slash command (it came with a token, whose expiry the handle keeps even once the
        // token itself is no longer kept), not a message from the Gateway.
        let has_token = matches!(
            handle,
            ReplyHandle::Discord {
                token_expires_at: Some(_),
                ..
            }
        );
        let parts = self.parts_of(job);
        // Set once Discord refused the interaction token: the remaining parts go to the channel.
        let refused = AtomicBool::new(false);
        let refused = &refused;
        deliver_parts(job, ctx, parts, |i, part| {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let via = match self.via(handle, i, now_ms) {
                Via::Interaction(..) if refused.load(Ordering::Relaxed) => {
                    self.via(&expired(handle), i, now_ms)
                }
                via => via,
            };
            let sending = match via {
                Via::Interaction(method, path) => {
                    let interaction = digest(path.expose());
                    let (template, kind) = if method == Method::PATCH {
                        ("PATCH /webhooks/{application_id}/{token}/messages/@original", "edit")
                    } else {
                        ("POST /webhooks/{application_id}/{token}", "follow-up")
                    };
                    tracing::debug!(job = %job.id, part = i + 1, kind, "answering the interaction");
                    Ok(Some((
                        ctx.http
                            .request(method, format!("{}{}", self.api_base, path.expose()))
                            .json(&message_body(&part, &[], None)),
                        Route {
                            template,
                            major: interaction.clone(),
                            scope: format!("interaction-{interaction}"),
                        },
                    )))
                }
                Via::Channel(..) => {
                    if has_token {
                        tracing::warn!(job = %job.id, channel = %channel_id, part = i + 1,
                            "the interaction token has expired: answering with a channel message through the bot instead");
                    } else {
                        // A message from the Gateway: the bot replies to it in its channel.
                        tracing::debug!(job = %job.id, channel = %channel_id, part = i + 1, "replying in the channel");
                    }
                    Ok(None)
                }
                Via::None(why) => Err(why),
            };
            let handle = handle.clone();
            Box::pin(async move {
                let outcome = match sending {
                    Ok(Some((request, route))) => send_limited(ctx, &route, request).await,
                    Ok(None) => return self.channel(ctx, &handle, i, &part).await,
                    Err(why) => return local_outcome(Verdict::Permanent, why),
                };
                // Discord no longer takes the token (the interaction was not acknowledged in
                // time, or the token ended early): the bot answers in the channel instead.
                let token_refused = outcome.verdict == Verdict::Permanent
                    && matches!(outcome.attempt.status, Some(401 | 404));
                if token_refused && self.bot_token.is_some() {
                    refused.store(true, Ordering::Relaxed);
                    tracing::warn!(job = %job.id, channel = %channel_id, part = i + 1,
                        status = outcome.attempt.status, code = outcome.attempt.code.as_deref().unwrap_or(""),
                        "Discord refused the interaction token: answering with a channel message through the bot instead");
                    return self.channel(ctx, &handle, i, &part).await;
                }
                outcome
            })
        })
        .await
    }
}

/// The handle without its interaction token: what is left once Discord refused it.
fn expired(handle: &ReplyHandle) -> ReplyHandle {
    let mut h = handle.clone();
    if let ReplyHandle::Discord {
        interaction_token, ..
    } = &mut h
    {
        *interaction_token = None;
    }
    h
}

impl DiscordReply {
    /// Part `index` as a channel message through the bot, replying to the handle's message.
    async fn channel(
        &self,
        ctx: &Context,
        handle: &ReplyHandle,
        index: usize,
        part: &str,
    ) -> Outcome {
        let (path, reply_to) = match self.via(&expired(handle), index, 0) {
            Via::Channel(path, reply_to) => (path, reply_to),
            Via::None(why) => return local_outcome(Verdict::Permanent, why),
            Via::Interaction(..) => return local_outcome(Verdict::Permanent, NO_BOT),
        };
        let ReplyHandle::Discord { channel_id, .. } = handle else {
            return super::wrong_handle("discord");
        };
        let token = self
            .bot_token
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        let request = ctx
            .http
            .post(format!("{}{path}", self.api_base))
            .header("authorization", format!("Bot {token}"))
            .json(&message_body(part, &[], reply_to.as_deref()));
        let route = Route {
            template: "POST /channels/{channel_id}/messages",
            major: channel_id.clone(),
            scope: self.bot_scope(),
        };
        send_limited(ctx, &route, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(bot: bool) -> DiscordReply {
        let text = format!(
            "id = \"s\"\napp = \"a\"\nreply = true\nplatform = \"discord\"\npublic_key = \"k\"\n{}",
            if bot { "bot_token = \"BOTTOKEN\"" } else { "" }
        );
        DiscordReply::from_source(&toml::from_str(&text).unwrap()).unwrap()
    }

    fn handle(expires: Option<i64>, message: Option<&str>) -> ReplyHandle {
        ReplyHandle::Discord {
            application_id: "app".into(),
            channel_id: "c9".into(),
            interaction_token: expires.map(|_| "itok".into()),
            token_expires_at: expires,
            message_id: message.map(str::to_owned),
        }
    }

    #[test]
    fn the_token_answers_while_it_lives_then_the_bot_in_the_channel() {
        let now = 1_700_000_000_000;
        let live = handle(Some(now + 60_000), None);
        let path = |v: Via| match v {
            Via::Interaction(m, p) => format!("{m} {}", p.expose()),
            Via::Channel(p, r) => format!("bot {p} {r:?}"),
            Via::None(why) => why.to_owned(),
        };
        assert_eq!(
            path(reply(true).via(&live, 0, now)),
            "PATCH /webhooks/app/itok/messages/@original"
        );
        assert_eq!(
            path(reply(true).via(&live, 1, now)),
            "POST /webhooks/app/itok"
        );
        // Within the margin of its end, the token is not used any more.
        let ending = handle(Some(now + 29_000), Some("m1"));
        assert_eq!(
            path(reply(true).via(&ending, 0, now)),
            "bot /channels/c9/messages Some(\"m1\")"
        );
        assert_eq!(
            path(reply(true).via(&ending, 1, now)),
            "bot /channels/c9/messages None"
        );
        assert_eq!(path(reply(false).via(&ending, 0, now)), NO_BOT);
        // A message from the Gateway has no token: the bot replies to it.
        assert_eq!(
            path(reply(true).via(&handle(None, Some("m2")), 0, now)),
            "bot /channels/c9/messages Some(\"m2\")"
        );
        let other = ReplyHandle::Telegram {
            chat_id: 1,
            message_id: None,
        };
        assert!(matches!(reply(true).via(&other, 0, now), Via::None(_)));
        assert!(!format!("{:?}", reply(true)).contains("BOTTOKEN"));
    }

    /// Issue 11 item 13 for the token's expiry: at the ends of `i64` (a handle from an older
    /// version, or a corrupted one) the margin is subtracted without overflow.
    #[test]
    fn an_expiry_at_the_ends_of_i64_routes_without_overflow() {
        let now = 1_700_000_000_000;
        let kind = |at: i64| match reply(true).via(&handle(Some(at), None), 0, now) {
            Via::Interaction(..) => "token",
            Via::Channel(..) => "bot",
            Via::None(_) => "none",
        };
        assert_eq!(
            [i64::MIN, i64::MIN + 1, 0, i64::MAX].map(kind),
            ["bot", "bot", "bot", "token"]
        );
    }
}
