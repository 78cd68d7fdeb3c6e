//! Messages from Discord's Gateway (`mode = "stream"`): the connector's Discord protocol hands
//! each `MESSAGE_CREATE` it reads to [`Platform::pushed`](super::super::Platform::pushed) as a
//! [`pushed_payload`], the message object with what the connection learnt at READY (the bot's
//! own user id and the application id), and this module decides, purely, what it is:
//!
//! - a message by a bot (`author.bot`, the bot itself) or by a webhook is `bot_echo`;
//! - a message in a server that does not mention the bot (its user: a mention of the bot's role
//!   is not one) is `not_mentioned`; a DM (no `guild_id`) needs no mention;
//! - a system message (joins, pins, boosts…) is `join` or `subtype`; one with no text left once
//!   the bot's mention is removed is `not_text` (attachments, stickers) or `empty`;
//! - anything else is an event: dedup key the message id (Discord's snowflake, unique for
//!   ever), text the content without the bot's mention, a group conversation in a server (the
//!   channel, or the thread, is the chat) and a single one in a DM, and a reply handle without an
//!   interaction token naming the message, so that the answer is a reply to it in its channel
//!   (`message_reference`, through the bot).
use super::super::verify::json_str;
use super::super::{Intake, NewEvent, Rejection};
use serde_json::{json, Value};
use shared::envelope::{ChatType, Conversation, ReplyHandle};

/// Message types (Discord's `MessageType`) that are somebody writing: `DEFAULT` and `REPLY`.
const DEFAULT: u64 = 0;
const REPLY: u64 = 19;
/// `USER_JOIN`: "… joined the server".
const USER_JOIN: u64 = 7;

/// What the connector hands the platform for one `MESSAGE_CREATE`: the message object (`d`)
/// and what READY said about the bot (its user id; the application id, empty if unknown).
pub fn pushed_payload(bot_user_id: &str, application_id: &str, message: &Value) -> Vec<u8> {
    json!({
        "bot_user_id": bot_user_id,
        "application_id": application_id,
        "message": message,
    })
    .to_string()
    .into_bytes()
}

/// The intake of a pushed message: an event, or the reason it is dropped.
pub fn pushed(payload: &[u8]) -> Result<Intake, Rejection> {
    let mut body: Value =
        serde_json::from_slice(payload).map_err(|e| Rejection::malformed(e.to_string()))?;
    let bot = json_str(&body, "bot_user_id")
        .ok_or_else(|| Rejection::malformed("no bot_user_id: the connection is not READY"))?;
    let application_id = json_str(&body, "application_id").unwrap_or_default();
    let message = body
        .get_mut("message")
        .map(Value::take)
        .filter(Value::is_object)
        .ok_or_else(|| Rejection::malformed("no message"))?;
    let normalised = normalise(&bot, &application_id, &message)?;
    Ok(Intake::answered_empty(normalised, message))
}

/// A Gateway message as an event, or why it is dropped.
pub fn normalise(
    bot: &str,
    application_id: &str,
    m: &Value,
) -> Result<Result<NewEvent, &'static str>, Rejection> {
    let id = json_str(m, "id").ok_or_else(|| Rejection::malformed("no id"))?;
    let channel_id =
        json_str(m, "channel_id").ok_or_else(|| Rejection::malformed("no channel_id"))?;
    let author = m
        .get("author")
        .ok_or_else(|| Rejection::malformed("no author"))?;
    let author_id = json_str(author, "id").ok_or_else(|| Rejection::malformed("no author.id"))?;
    let by_bot = author.get("bot").and_then(Value::as_bool) == Some(true);
    if by_bot || author_id == bot || json_str(m, "webhook_id").is_some() {
        return Ok(Err("bot_echo"));
    }
    match m.get("type").and_then(Value::as_u64).unwrap_or(DEFAULT) {
        DEFAULT | REPLY => {}
        USER_JOIN => return Ok(Err("join")),
        _ => return Ok(Err("subtype")),
    }
    let in_guild = json_str(m, "guild_id").is_some();
    if in_guild && !mentions(m, bot) {
        return Ok(Err("not_mentioned"));
    }
    let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
    let text = without_mention(content, bot);
    if text.is_empty() {
        let attached = ["attachments", "sticker_items", "embeds"].iter().any(|k| {
            m.get(*k)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        });
        return Ok(Err(if attached { "not_text" } else { "empty" }));
    }
    // In a server the member's nickname is what the others see.
    let sender_name = m
        .pointer("/member/nick")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| json_str(author, "global_name"))
        .or_else(|| json_str(author, "username"));
    Ok(Ok(NewEvent {
        dedup_key: id.clone(),
        kind: "message".into(),
        conversation: Conversation {
            chat_id: channel_id.clone(),
            chat_type: if in_guild {
                ChatType::Group
            } else {
                ChatType::Single
            },
            sender_id: author_id,
            sender_name,
            thread_id: None,
        },
        text,
        reply: Some(ReplyHandle::Discord {
            application_id: application_id.to_owned(),
            channel_id,
            interaction_token: None,
            token_expires_at: None,
            message_id: Some(id),
        }),
        payload: Value::Null,
    }))
}

/// Whether the message mentions the bot's user (`mentions`, which Discord fills from the
/// content's `<@id>` and from a reply that pings).
fn mentions(m: &Value, bot: &str) -> bool {
    m.get("mentions")
        .and_then(Value::as_array)
        .is_some_and(|all| {
            all.iter()
                .any(|u| json_str(u, "id").as_deref() == Some(bot))
        })
}

/// The content without the bot's mentions (`<@id>`, and the older `<@!id>`), trimmed.
pub fn without_mention(content: &str, bot: &str) -> String {
    content
        .replace(&format!("<@!{bot}>"), " ")
        .replace(&format!("<@{bot}>"), " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `MESSAGE_CREATE` object as Discord sends it (for tests): `content` by `author` (a bot when
/// `author_is_bot`) in `channel`, of `guild` (none: a DM), mentioning `mentioned` users.
pub fn message(
    id: &str,
    guild: Option<&str>,
    channel: &str,
    author: &str,
    author_is_bot: bool,
    content: &str,
    mentioned: &[&str],
) -> Value {
    let user =
        json!({ "id": author, "username": "ada", "global_name": "Ada", "bot": author_is_bot });
    let mut m = json!({
        "id": id, "channel_id": channel, "author": user, "content": content, "type": DEFAULT,
        "timestamp": "2024-01-01T00:00:00.000000+00:00", "edited_timestamp": null, "tts": false,
        "mention_everyone": false, "mention_roles": [], "attachments": [], "embeds": [],
        "pinned": false,
        "mentions": mentioned.iter().map(|u| json!({ "id": u, "username": "bot", "bot": true })).collect::<Vec<_>>(),
    });
    if let Some(g) = guild {
        m["guild_id"] = json!(g);
        m["member"] = json!({ "roles": [], "nick": null });
    }
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::platform::testkit::{event, outcome};

    const BOT: &str = "900000000000000042";

    fn intake(m: &Value) -> Result<Intake, Rejection> {
        pushed(&pushed_payload(BOT, "app1", m))
    }

    #[test]
    fn a_mention_in_a_server_or_any_dm_is_an_event_answered_as_a_reply() {
        let mention = message(
            "m1",
            Some("g1"),
            "c1",
            "u1",
            false,
            &format!("<@{BOT}>   what is   the time?"),
            &[BOT],
        );
        let e = event(intake(&mention));
        assert_eq!(e.dedup_key, "m1");
        assert_eq!(e.kind, "message");
        assert_eq!(e.text, "what is the time?");
        assert_eq!(e.conversation.chat_id, "c1");
        assert_eq!(e.conversation.chat_type, ChatType::Group);
        assert_eq!(e.conversation.sender_id, "u1");
        assert_eq!(e.conversation.sender_name.as_deref(), Some("Ada"));
        assert_eq!(
            e.reply,
            Some(ReplyHandle::Discord {
                application_id: "app1".into(),
                channel_id: "c1".into(),
                interaction_token: None,
                token_expires_at: None,
                message_id: Some("m1".into()),
            })
        );
        assert_eq!(
            e.payload, mention,
            "the payload is Discord's message object"
        );
        // The older nickname form, in the middle of the text.
        let nick = message(
            "m2",
            Some("g1"),
            "c1",
            "u1",
            false,
            &format!("hey <@!{BOT}> there"),
            &[BOT],
        );
        assert_eq!(event(intake(&nick)).text, "hey there");
        // A DM needs no mention.
        let dm = event(intake(&message(
            "m3",
            None,
            "dm1",
            "u1",
            false,
            " hi ",
            &[],
        )));
        assert_eq!(dm.text, "hi");
        assert_eq!(dm.conversation.chat_type, ChatType::Single);
    }

    #[test]
    fn what_is_not_a_question_to_the_bot_is_dropped_by_rule() {
        let mention = format!("<@{BOT}> hi");
        let mut join = message("j", Some("g"), "c", "u1", false, "", &[]);
        join["type"] = json!(USER_JOIN);
        let mut pin = message("p", Some("g"), "c", "u1", false, &mention, &[BOT]);
        pin["type"] = json!(6);
        let mut hooked = message("w", Some("g"), "c", "u1", false, &mention, &[BOT]);
        hooked["webhook_id"] = json!("555");
        let mut picture = message("a", None, "dm", "u1", false, "", &[]);
        picture["attachments"] = json!([{ "id": "1", "filename": "x.png" }]);
        let mut role_only = message("r", Some("g"), "c", "u1", false, "<@&777> hi", &[]);
        role_only["mention_roles"] = json!(["777"]);
        for (m, want) in [
            (
                message("b", Some("g"), "c", "u2", true, &mention, &[BOT]),
                "ignore:bot_echo",
            ),
            (
                message("me", None, "dm", BOT, true, "my own answer", &[]),
                "ignore:bot_echo",
            ),
            (
                message("me2", Some("g"), "c", BOT, false, &mention, &[BOT]),
                "ignore:bot_echo",
            ),
            (hooked, "ignore:bot_echo"),
            (
                message("n", Some("g"), "c", "u1", false, "just chatting", &[]),
                "ignore:not_mentioned",
            ),
            (
                message("o", Some("g"), "c", "u1", false, "<@123> hi", &["123"]),
                "ignore:not_mentioned",
            ),
            (role_only, "ignore:not_mentioned"),
            (join, "ignore:join"),
            (pin, "ignore:subtype"),
            (picture, "ignore:not_text"),
            (
                message(
                    "e",
                    Some("g"),
                    "c",
                    "u1",
                    false,
                    &format!("<@{BOT}>"),
                    &[BOT],
                ),
                "ignore:empty",
            ),
        ] {
            assert_eq!(outcome(&intake(&m)), want, "{m}");
        }
        for bad in [
            &b"not json"[..],
            br#"{"message": {"id": "1"}}"#,
            br#"{"bot_user_id": "1", "message": "text"}"#,
            br#"{"bot_user_id": "1", "message": {"channel_id": "c", "author": {"id": "u"}}}"#,
        ] {
            assert_eq!(
                outcome(&pushed(bad)),
                "malformed",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
