//! Replies into the conversation an event came from (`Destination::Reply`): one channel per
//! source with `reply = true`, built from keys of the source's own block — the block the ingress
//! reads for the platform. Each channel declares the keys it reads ([`keys`]); the block may hold
//! those and the platform's, and nothing else (the binary checks the union, so neither role needs
//! to know the other's keys). Each platform module renders the answer, sends it with the job's
//! [`ReplyHandle`] (fetching the app's access token through [`crate::tokens`] where the platform
//! needs one) and classifies the answer.
use super::parts::local_outcome;
use super::{Outcome, Target, Verdict};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{Destination, DispatchJob, ReplyHandle};
use std::sync::Arc;

pub mod dingtalk;
pub mod discord;
pub mod feishu;
pub mod slack;
pub mod telegram;
pub mod wecom;

/// The keys the reply channel of `platform` reads from its source's block (none for a platform
/// without one).
pub fn keys(platform: &str) -> &'static [&'static str] {
    match platform {
        "wecom" => wecom::KEYS,
        "dingtalk" => dingtalk::KEYS,
        "feishu" | "lark" => feishu::KEYS,
        "slack" => slack::KEYS,
        "telegram" => telegram::KEYS,
        "discord" => discord::KEYS,
        _ => &[],
    }
}

/// The platforms whose replies can stream (`stream = true`).
pub const STREAMING: &[&str] = &["telegram", "slack", "dingtalk", "feishu", "lark"];

/// Builds the reply channel of a source that answers into its conversations; a source that
/// asks to stream must be on a platform that can grow a message.
pub fn build(source: &SourceConfig) -> Result<Arc<dyn Target>, Vec<ConfigIssue>> {
    let channel = build_channel(source)?;
    if source.stream && channel.grow().is_none() {
        let why = match source.platform.as_str() {
            "wecom" => "WeCom app messages cannot be edited once sent, so its replies arrive whole",
            _ => "replies on this platform do not stream (yet)",
        };
        return Err(vec![ConfigIssue {
            key: format!("sources.{}.stream", source.id),
            problem: format!(
                "platform `{}`: {why}; remove `stream` (streaming platforms: {})",
                source.platform,
                STREAMING.join(", ")
            ),
        }]);
    }
    Ok(channel)
}

fn build_channel(source: &SourceConfig) -> Result<Arc<dyn Target>, Vec<ConfigIssue>> {
    match source.platform.as_str() {
        "wecom" => Ok(Arc::new(wecom::WecomReply::from_source(source)?)),
        "dingtalk" => Ok(Arc::new(dingtalk::DingtalkReply::from_source(source)?)),
        "feishu" => Ok(Arc::new(feishu::FeishuReply::from_source(source, false)?)),
        "lark" => Ok(Arc::new(feishu::FeishuReply::from_source(source, true)?)),
        "slack" => Ok(Arc::new(slack::SlackReply::from_source(source)?)),
        "telegram" => Ok(Arc::new(telegram::TelegramReply::from_source(source)?)),
        "discord" => Ok(Arc::new(discord::DiscordReply::from_source(source)?)),
        other => Err(vec![ConfigIssue {
            key: format!("sources.{}.reply", source.id),
            problem: format!(
                "platform `{other}` has no conversation to reply into \
                 (wecom, dingtalk, feishu, lark, slack, telegram and discord have)"
            ),
        }]),
    }
}

/// The reply handle a job carries; a channel matches it against its own platform's and answers
/// any other with [`wrong_handle`].
pub(crate) fn handle(job: &DispatchJob) -> Option<&ReplyHandle> {
    match &job.destination {
        Destination::Reply { handle } => Some(handle),
        Destination::Target { .. } => None,
    }
}

/// The job's reply handle with the reply URL or interaction token the ingress kept aside
/// (`shared::reply_credentials`) put back, when the handle carries none and it is still kept. `Err`: Redis could not be
/// asked, the job waits (answering by the fallback instead would post where the user did not
/// ask, or fail for want of a bot token).
pub(crate) async fn restored(
    job: &DispatchJob,
    ctx: &crate::target::Context,
) -> Result<Option<ReplyHandle>, Outcome> {
    use shared::reply_credentials::{find, CredentialsError};
    let Some(handle) = handle(job) else {
        return Ok(None);
    };
    let mut handle = handle.clone();
    let slot = match &mut handle {
        ReplyHandle::Dingtalk {
            session_webhook: slot @ None,
            ..
        } => slot,
        ReplyHandle::Slack {
            response_url: slot @ None,
            ..
        } => slot,
        // A slash command's token (the handle keeps its expiry); a message has none to find.
        ReplyHandle::Discord {
            interaction_token: slot @ None,
            token_expires_at: Some(_),
            ..
        } => slot,
        _ => return Ok(Some(handle)),
    };
    match find(&ctx.store, job.payload.event_id).await {
        Ok(Some(c)) => *slot = c.session_webhook.or(c.response_url).or(c.interaction_token),
        Ok(None) => {}
        Err(CredentialsError::Store(e)) => {
            return Err(local_outcome(
                crate::target::Verdict::Retry { retry_after: None },
                format!("reply credentials unavailable: {e}"),
            ))
        }
        Err(e) => {
            // A key this process does not hold: answered as if the URL had expired.
            tracing::warn!(error = %e, "the event's reply URL does not open; using the fallback");
        }
    }
    Ok(Some(handle))
}

/// The outcome for a job whose reply handle belongs to another platform than the source's.
pub(crate) fn wrong_handle(kind: &str) -> Outcome {
    local_outcome(
        Verdict::Permanent,
        format!("the job's reply handle is not a `{kind}` handle"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SourceConfig {
        toml::from_str(&format!("id = \"s\"\napp = \"a\"\nreply = true\n{text}")).unwrap()
    }

    #[test]
    fn each_replying_platform_builds_from_its_own_keys() {
        let cases = [
            (
                "platform = \"wecom\"\nreceive_id = \"ww\"\ncorp_secret = \"s\"\nagent_id = 1",
                Ok("wecom_reply"),
            ),
            (
                "platform = \"wecom\"\nreceive_id = \"ww\"\nagent_id = 1",
                Err("sources.s.corp_secret"),
            ),
            (
                "platform = \"dingtalk\"\napp_secret = \"s\"",
                Ok("dingtalk_reply"),
            ),
            (
                "platform = \"feishu\"\napp_id = \"cli\"\napp_secret = \"s\"",
                Ok("feishu_reply"),
            ),
            (
                "platform = \"lark\"\napp_id = \"cli\"",
                Err("sources.s.app_secret"),
            ),
            (
                "platform = \"slack\"\nbot_token = \"xoxb\"",
                Ok("slack_reply"),
            ),
            (
                "platform = \"telegram\"\nbot_token = \"1:x\"",
                Ok("telegram_reply"),
            ),
            ("platform = \"telegram\"", Err("sources.s.bot_token")),
            (
                "platform = \"discord\"\nbot_token = \"b\"",
                Ok("discord_reply"),
            ),
            ("platform = \"discord\"", Ok("discord_reply")),
            (
                "platform = \"bearer\"\ntoken = \"t\"",
                Err("sources.s.reply"),
            ),
        ];
        for (text, want) in cases {
            let got = build(&source(text))
                .map(|t| t.kind())
                .map_err(|e| e[0].key.clone());
            assert_eq!(got, want.map_err(str::to_owned), "{text}");
        }
        // Streaming where the platform can edit a message, a clear refusal elsewhere.
        let streams = |text: &str| {
            build(&source(&format!("stream = true\n{text}")))
                .map(|t| t.grow().is_some())
                .map_err(|e| (e[0].key.clone(), e[0].problem.clone()))
        };
        assert_eq!(
            streams("platform = \"telegram\"\nbot_token = \"1:x\""),
            Ok(true)
        );
        let (key, problem) =
            streams("platform = \"wecom\"\nreceive_id = \"ww\"\ncorp_secret = \"s\"\nagent_id = 1")
                .unwrap_err();
        assert_eq!(key, "sources.s.stream");
        assert!(problem.contains("cannot be edited"), "{problem}");
        assert_eq!(
            streams("platform = \"slack\"\nbot_token = \"xoxb\""),
            Ok(true)
        );
        assert_eq!(
            streams("platform = \"feishu\"\napp_id = \"cli\"\napp_secret = \"s\"").map_err(|e| e.0),
            Ok(true)
        );
        // Discord's replies do not stream (yet): a clear refusal.
        assert_eq!(
            streams("platform = \"discord\"\npublic_key = \"k\"\nbot_token = \"b\"")
                .map_err(|e| e.0),
            Err("sources.s.stream".to_owned())
        );
        // DingTalk streams into an AI card of the source's template: without one, a clear word.
        assert_eq!(
            streams("platform = \"dingtalk\"\napp_key = \"k\"\napp_secret = \"s\"\ncard_template_id = \"t\""),
            Ok(true)
        );
        assert_eq!(
            streams("platform = \"dingtalk\"\napp_key = \"k\"\napp_secret = \"s\"")
                .map_err(|e| e.0),
            Err("sources.s.card_template_id".to_owned())
        );
        assert_eq!(
            streams("platform = \"lark\"\napp_id = \"cli\"\napp_secret = \"s\""),
            Ok(true)
        );
        let plain = build(&source("platform = \"telegram\"\nbot_token = \"1:x\"")).unwrap();
        assert!(plain.grow().is_none(), "off by default");
        let quiet: SourceConfig =
            toml::from_str("id = \"q\"\napp = \"a\"\nplatform = \"bearer\"").unwrap();
        assert!(super::super::build_reply(&quiet).unwrap().is_none());
    }
}
