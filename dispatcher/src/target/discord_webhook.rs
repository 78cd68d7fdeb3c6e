//! `kind = "discord_webhook"`: execute a Discord webhook (`POST {url}?wait=true`, so Discord
//! answers with the message and its id). Keys: `url` (a secret: the token is in the path),
//! `username` and `avatar_url` (override the webhook's name and picture), `thread_id` (post in
//! a thread or forum post of the channel), `allowed_mentions` (what the answer may ping, among
//! `users`, `roles`, `everyone`; none by default, so an answer never pings @everyone).
//! Messages hold 2 000 characters. Discord's own limits for the webhook are read from its
//! answers and kept in Redis (`discord::buckets`); the shared limiter paces the target at
//! Discord's documented 5 requests per 2 s per webhook and 30 messages a minute per channel.
use super::address::TargetUrl;
use super::discord::buckets::Route;
use super::discord::{digest, message_body, send_limited, LIMIT, MENTION_KINDS};
use super::parts::deliver_parts;
use super::{Context, Outcome, Target};
use crate::split::Limit;
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
use shared::keys::Keys;
use shared::units::Rate;
use std::time::Duration;

pub const KIND: &str = "discord_webhook";

#[derive(Debug)]
pub struct DiscordWebhook {
    url: TargetUrl,
    username: Option<String>,
    avatar_url: Option<String>,
    thread_id: Option<String>,
    mentions: Vec<String>,
}

impl DiscordWebhook {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&[
            "url",
            "username",
            "avatar_url",
            "thread_id",
            "allowed_mentions",
        ]);
        let url = TargetUrl::read(&mut k, "url");
        let username = k.str("username");
        let avatar_url = k.str("avatar_url");
        let thread_id = k.id("thread_id");
        let mentions = k.list("allowed_mentions");
        if let Some(bad) = mentions
            .iter()
            .find(|m| !MENTION_KINDS.contains(&m.as_str()))
        {
            k.issue(
                "allowed_mentions",
                format!(
                    "`{bad}` is not one of {} (none by default)",
                    MENTION_KINDS.join(", ")
                ),
            );
        }
        k.finish(url.map(|url| Self {
            url,
            username,
            avatar_url,
            thread_id,
            mentions,
        }))
    }

    /// The body of one message (pure).
    pub fn render(&self, text: &str) -> Value {
        let mut body = message_body(text, &self.mentions, None);
        if let Some(name) = &self.username {
            body["username"] = json!(name);
        }
        if let Some(avatar) = &self.avatar_url {
            body["avatar_url"] = json!(avatar);
        }
        body
    }

    fn route(&self) -> Route {
        let webhook = digest(self.url.as_str());
        Route {
            template: "POST /webhooks/{webhook_id}/{webhook_token}",
            major: webhook.clone(),
            scope: format!("webhook-{webhook}"),
        }
    }
}

#[async_trait]
impl Target for DiscordWebhook {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_rates(&self) -> Vec<Rate> {
        vec![
            Rate {
                count: 5,
                per: Duration::from_secs(2),
            },
            Rate {
                count: 30,
                per: Duration::from_secs(60),
            },
        ]
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let parts = self.parts_of(job);
        let route = self.route();
        let mut query = vec![("wait", "true")];
        if let Some(thread) = &self.thread_id {
            query.push(("thread_id", thread));
        }
        deliver_parts(job, ctx, parts, |_, part| {
            let request = ctx
                .http
                .post(self.url.get())
                .query(&query)
                .json(&self.render(&part));
            let route = &route;
            Box::pin(async move { send_limited(ctx, route, request).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(extra: &str) -> Result<DiscordWebhook, Vec<ConfigIssue>> {
        let t: TargetConfig = toml::from_str(&format!(
            "id = \"d\"\nkind = \"discord_webhook\"\nurl = \"https://discord.com/api/webhooks/1/tok\"\n{extra}"
        ))
        .unwrap();
        DiscordWebhook::from_config(&t)
    }

    #[test]
    fn renders_with_no_mentions_by_default() {
        let d = target("").unwrap();
        assert_eq!(
            d.render("@everyone look"),
            json!({"content": "@everyone look", "allowed_mentions": {"parse": []}})
        );
        let d = target("username = \"Helper\"\nallowed_mentions = [\"users\"]").unwrap();
        assert_eq!(
            d.render("hi"),
            json!({"content": "hi", "allowed_mentions": {"parse": ["users"]}, "username": "Helper"})
        );
        assert!(!format!("{d:?}").contains("tok"), "the url is a secret");
        assert_eq!(d.parts(&"x".repeat(4_001)).len(), 3);
        assert!(!d.route().major.contains("tok"));
    }

    #[test]
    fn config_table() {
        let key = |r: Result<DiscordWebhook, Vec<ConfigIssue>>| r.unwrap_err()[0].key.clone();
        assert_eq!(
            key(target("allowed_mentions = [\"here\"]")),
            "targets.d.allowed_mentions"
        );
        assert_eq!(key(target("channel = \"c\"")), "targets.d.channel");
        let t: TargetConfig = toml::from_str("id = \"d\"\nkind = \"discord_webhook\"").unwrap();
        assert_eq!(
            DiscordWebhook::from_config(&t).unwrap_err()[0].key,
            "targets.d.url"
        );
    }
}
