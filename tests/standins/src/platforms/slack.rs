//! Slack's Web API as a bot sees it: `chat.postMessage` posts into a channel (in a thread with
//! `thread_ts`) and answers the message's `ts`; `chat.update` replaces the text of a message
//! the bot posted, named by `channel` and `ts`. Each channel keeps its messages by `ts` with
//! their current text. The errors are Slack's, as `{"ok": false, "error": …}` with HTTP 200:
//! `invalid_auth`, `channel_not_found`, `no_text`, `msg_too_long` (over 40 000 characters),
//! `message_not_found`; beyond a limit, HTTP 429 `ratelimited` with `Retry-After`.
//! `chat.postMessage`'s limit is per channel, `chat.update`'s (a Tier 3 method) per workspace,
//! which here is the bot token. Slack answers `ok` to an update that changes nothing.
use super::{api, bearer, creds, ok, parse, reply, s, PlatformStandin};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Slack truncates a message's text beyond this many characters; `chat.update` refuses it.
const MAX_TEXT: usize = 40_000;

/// The messages the bot posted, by (channel, ts): their current text.
pub(super) type Messages = HashMap<(String, String), String>;

impl PlatformStandin {
    /// A Slack channel as its members see it: every message the bot posted there (threads
    /// included), by `ts`, with its current text.
    pub fn slack_channel(&self, channel: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .lock()
            .slack
            .iter()
            .filter(|((c, _), _)| c == channel)
            .map(|((_, ts), text)| (ts.clone(), text.clone()))
            .collect();
        out.sort();
        out
    }
}

fn error(error: &str) -> Response {
    ok(json!({ "ok": false, "error": error }))
}

fn ratelimited() -> Response {
    let mut r = reply(
        StatusCode::TOO_MANY_REQUESTS,
        json!({ "ok": false, "error": "ratelimited" }),
    );
    r.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, 1.into());
    r
}

pub(super) async fn post_message(
    State(p): State<PlatformStandin>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::SLACK_API) {
        return r;
    }
    if bearer(&headers) != creds::SLACK_BOT_TOKEN {
        return error("invalid_auth");
    }
    let v = parse(&body);
    let channel = s(&v, "/channel").to_owned();
    if channel.is_empty() {
        return error("channel_not_found");
    }
    if p.over_limit(api::SLACK_API, &channel) {
        return ratelimited();
    }
    let text = s(&v, "/text").to_owned();
    if text.is_empty() {
        return error("no_text");
    }
    let thread = v
        .get("thread_ts")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ts = {
        let mut g = p.lock();
        g.serial += 1;
        let ts = format!("1700000000.{:06}", g.serial);
        g.slack.insert((channel.clone(), ts.clone()), text.clone());
        ts
    };
    p.record(api::SLACK_API, &channel, &text, thread.clone(), None, v);
    ok(json!({
        "ok": true, "channel": channel, "ts": ts,
        "message": { "type": "message", "text": text, "ts": ts, "thread_ts": thread },
    }))
}

/// `chat.update`: the message must exist in the channel; the new text replaces its text.
pub(super) async fn update(
    State(p): State<PlatformStandin>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::SLACK_UPDATE) {
        return r;
    }
    p.held(api::SLACK_UPDATE).await;
    let token = bearer(&headers);
    if token != creds::SLACK_BOT_TOKEN {
        return error("invalid_auth");
    }
    let v = parse(&body);
    let (channel, ts) = (s(&v, "/channel").to_owned(), s(&v, "/ts").to_owned());
    if channel.is_empty() {
        return error("channel_not_found");
    }
    if p.over_limit(api::SLACK_UPDATE, token) {
        return ratelimited();
    }
    let text = s(&v, "/text").to_owned();
    if text.is_empty() {
        return error("no_text");
    }
    if text.chars().count() > MAX_TEXT {
        return error("msg_too_long");
    }
    {
        let mut g = p.lock();
        match g.slack.get_mut(&(channel.clone(), ts.clone())) {
            Some(current) => *current = text.clone(),
            None => return error("message_not_found"),
        }
    }
    p.record(
        api::SLACK_UPDATE,
        &channel,
        &text,
        None,
        Some(ts.clone()),
        v,
    );
    ok(json!({
        "ok": true, "channel": channel, "ts": ts, "text": text,
        "message": { "type": "message", "text": text, "ts": ts },
    }))
}

impl super::Scripted {
    /// A Web API refusal: `{"ok": false, "error": error}` with `status` (Slack answers 200,
    /// or 429 with `Retry-After` for `ratelimited`).
    pub fn slack(status: u16, error: &str, retry_after: Option<u64>) -> Self {
        Self {
            status,
            body: json!({ "ok": false, "error": error }),
            retry_after,
        }
    }
}
