//! Target kinds: one module each, behind the [`Target`] trait. A kind owns its config keys, its
//! rendering, its URL, its platform limits and a pure classifier of the receiver's answer (HTTP
//! status *and* the platform's errcode in the body) into a [`Verdict`] — for the errcode
//! platforms, just its table for [`errcode::Errcodes`]. What every kind would otherwise repeat
//! is the trait's: no rate of its own, the answer split to the kind's message limit and counted
//! from those parts. The delivery loop (`crate::deliver`) owns everything around a kind: rate
//! limits, retries, dead letters, the delivered marker. A kind never retries or sleeps by itself.
use crate::split::{split, Limit};
use crate::ssrf::SendError;
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use shared::config::{ConfigIssue, SourceConfig, TargetConfig};
use shared::envelope::{Attempt, AttemptOutcome, DispatchJob};
use shared::store::Store;
use shared::units::Rate;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod address;
pub mod dingtalk_robot;
pub mod discord;
pub mod discord_webhook;
pub mod errcode;
pub mod feishu_bot;
pub mod parts;
pub mod reply;
pub mod rocketchat;
pub mod slack;
pub mod telegram;
pub mod template;
pub mod webhook;
pub mod wecom_robot;

use dingtalk_robot::DingtalkRobot;
use feishu_bot::FeishuBot;

/// What a receiver's answer means for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken: the job is done.
    Delivered,
    /// Failed this time; try again on the schedule (honouring `retry_after` within bounds).
    Retry { retry_after: Option<Duration> },
    /// The platform asked us to slow down or paused the target (a rate-limit errcode, a muted
    /// robot): come back after `wait` without counting a failed attempt.
    Wait { wait: Duration },
    /// The access token was refused: refresh it and try once more at once.
    TokenInvalid,
    /// Some parts of a split answer were taken and the rest waits for its own admission from
    /// the target's rate limit: the job goes on after `wait` with only the parts `left`,
    /// without counting an attempt.
    Continue {
        wait: Duration,
        left: shared::envelope::PartsLeft,
    },
    /// Refused for good: dead letter.
    Permanent,
}

impl Verdict {
    /// What the attempt that came to this verdict is recorded as.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Verdict::Delivered => AttemptOutcome::Delivered,
            Verdict::Retry { .. } => AttemptOutcome::Retry,
            Verdict::Wait { .. } => AttemptOutcome::Wait,
            Verdict::TokenInvalid => AttemptOutcome::TokenInvalid,
            Verdict::Continue { .. } => AttemptOutcome::Partial,
            Verdict::Permanent => AttemptOutcome::Permanent,
        }
    }
}

/// A receiver's answer, as the classifiers see it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The result of one delivery attempt: the verdict and the attempt to record on the job.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    pub attempt: Attempt,
    /// Whether a request went out (to the receiver or its platform's token endpoint). An outcome
    /// decided here without one (a refused URL, a store failure) says nothing about the receiver,
    /// so the circuit breaker is not told of it.
    pub sent: bool,
}

/// What a kind may use while delivering.
#[derive(Clone, Debug)]
pub struct Context {
    /// The outbound client: no redirects, timeouts, SSRF-guarded resolver.
    pub http: reqwest::Client,
    pub store: Store,
    /// Private networks receivers may nevertheless be on (`dispatcher.allow_private`): the
    /// resolver checks names, [`send`] checks IP-literal hosts, which no resolver sees.
    pub allow_private: Vec<ipnet::IpNet>,
    /// What each further part of a split answer must be admitted by (`None`: all parts go at
    /// once). A rate-limited target's: each part is its own admission, so no window exceeds
    /// the limit.
    pub pace: Option<parts::Pace>,
}

/// One configured target (or a source's reply channel), ready to deliver.
#[async_trait]
pub trait Target: Send + Sync + std::fmt::Debug {
    /// The kind word (`webhook`, `wecom_robot`, …).
    fn kind(&self) -> &'static str;
    /// The platform's own limit, used when the target sets no `rate` (none: not paced).
    fn default_rate(&self) -> Option<Rate> {
        None
    }
    /// Every platform limit (Feishu has two: per second and per minute); the limiter holds all.
    fn default_rates(&self) -> Vec<Rate> {
        self.default_rate().into_iter().collect()
    }
    /// The most one message may hold (none: the answer goes whole, in one message).
    fn message_limit(&self) -> Option<Limit> {
        None
    }
    /// The messages an answer goes out as (pure): split to the message limit.
    fn parts(&self, text: &str) -> Vec<String> {
        match self.message_limit() {
            Some(limit) => split(text, limit),
            None => vec![text.to_owned()],
        }
    }
    /// The parts this delivery of `job` sends: its answer split to the message limit, or the
    /// parts a continued job carries instead of its answer ([`DispatchJob::continued`]).
    fn parts_of(&self, job: &DispatchJob) -> parts::Parts {
        match &job.parts_left {
            Some(left) => parts::Parts {
                first: left.sent,
                list: left.parts.clone(),
            },
            None => parts::Parts {
                first: 0,
                list: self.parts(&job.payload.answer.text),
            },
        }
    }
    /// How many platform messages the job (still) becomes: what its delivery spends of the
    /// platform's limit.
    fn message_count(&self, job: &DispatchJob) -> usize {
        self.parts_of(job).list.len()
    }
    /// Renders and sends the job once (the parts not yet delivered); classifies the answer.
    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome;
    /// How the channel grows one message while the answer is written, when its source
    /// streams (`stream = true`) and the platform can edit a message (see `crate::stream`).
    fn grow(&self) -> Option<&dyn crate::stream::Grow> {
        None
    }
}

/// Every kind word a target may use.
pub const KINDS: &[&str] = &[
    "webhook",
    "wecom_robot",
    "dingtalk_robot",
    "feishu_bot",
    "lark_bot",
    "slack",
    "rocketchat",
    "telegram",
    "discord_webhook",
];

/// Builds a target from its config, checking the kind's own keys.
pub fn build(target: &TargetConfig) -> Result<Arc<dyn Target>, Vec<ConfigIssue>> {
    match target.kind.as_str() {
        "webhook" => Ok(Arc::new(webhook::Webhook::from_config(target)?)),
        "wecom_robot" => Ok(Arc::new(wecom_robot::WecomRobot::from_config(target)?)),
        "dingtalk_robot" => Ok(Arc::new(DingtalkRobot::from_config(target)?)),
        "feishu_bot" => Ok(Arc::new(FeishuBot::from_config(target, "feishu_bot")?)),
        "lark_bot" => Ok(Arc::new(FeishuBot::from_config(target, "lark_bot")?)),
        "slack" => Ok(Arc::new(slack::Slack::from_config(target)?)),
        "rocketchat" => Ok(Arc::new(rocketchat::RocketChat::from_config(target)?)),
        "telegram" => Ok(Arc::new(telegram::Telegram::from_config(target)?)),
        "discord_webhook" => Ok(Arc::new(discord_webhook::DiscordWebhook::from_config(
            target,
        )?)),
        other => Err(vec![ConfigIssue {
            key: format!("targets.{}.kind", target.id),
            problem: format!("unknown kind `{other}` (one of: {})", KINDS.join(", ")),
        }]),
    }
}

/// Builds the reply channel of a source with `reply = true` (`None` when it does not reply):
/// the target that delivers `Destination::Reply` jobs of that source.
pub fn build_reply(source: &SourceConfig) -> Result<Option<Arc<dyn Target>>, Vec<ConfigIssue>> {
    if !source.reply {
        return Ok(None);
    }
    reply::build(source).map(Some)
}

/// Sends one request and turns what happened into an [`Outcome`] with `classify`. Transport
/// failures (timeouts, refused connections, a guarded address) are retried, never permanent.
pub async fn send(
    ctx: &Context,
    request: reqwest::RequestBuilder,
    classify: impl FnOnce(&Answer) -> Verdict,
) -> (Outcome, Option<Answer>) {
    let started = Instant::now();
    let at = chrono::Utc::now();
    // Through the guard, the one send path: an IP-literal host never reaches the guarded
    // resolver, so the URL is checked there too, for every kind.
    match crate::ssrf::send(request, &ctx.allow_private).await {
        Err(refused @ (SendError::Build(_) | SendError::Refused(_))) => {
            // Neither the request nor the address will change by retrying: an operator must
            // fix the URL or allow it.
            (
                parts::local_outcome(Verdict::Permanent, refused.to_string()),
                None,
            )
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            // Read at most what we keep: a receiver must not fill our memory.
            let body = read_capped(resp, 64 * 1024).await.unwrap_or_default();
            let answer = Answer {
                status,
                headers,
                body,
            };
            let verdict = classify(&answer);
            let attempt = Attempt {
                at,
                outcome: verdict.outcome(),
                status: Some(status),
                code: errcode(&answer.body),
                error: None,
                excerpt: Some(excerpt(&answer.body)),
                duration_ms: started.elapsed().as_millis() as u64,
            };
            (
                Outcome {
                    verdict,
                    attempt,
                    sent: true,
                },
                Some(answer),
            )
        }
        Err(SendError::Transport(e)) => {
            let error = describe_transport_error(&e);
            let attempt = Attempt {
                at,
                outcome: AttemptOutcome::Retry,
                status: None,
                code: None,
                error: Some(error),
                excerpt: None,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            (
                Outcome {
                    verdict: Verdict::Retry { retry_after: None },
                    attempt,
                    sent: true,
                },
                None,
            )
        }
    }
}

/// At most `cap` bytes of an answer's body: a receiver cannot make us hold more. A body that
/// fails part-way returns what arrived; one that fails before any byte is the error.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Bytes, reqwest::Error> {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if buf.len() >= cap {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(Bytes::from(buf))
}

/// A transport error in words, without the URL (it may carry a key).
pub fn describe_transport_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    // The source chain says why (refused, reset, guarded address) without the URL.
    let mut cause = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}

/// The first 256 characters of an answer, for the audit.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(256).collect()
}

/// A platform errcode in a JSON body (`errcode`, `code`, `ok: false` + `error`).
pub fn errcode(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    for key in ["errcode", "code", "error_code"] {
        match v.get(key) {
            Some(serde_json::Value::Number(n)) => return Some(n.to_string()),
            Some(serde_json::Value::String(s)) => return Some(s.clone()),
            _ => {}
        }
    }
    match (v.get("ok"), v.get("error")) {
        (Some(serde_json::Value::Bool(false)), Some(serde_json::Value::String(e))) => {
            Some(e.clone())
        }
        _ => None,
    }
}

/// `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64;
    Some(Duration::from_secs(secs))
}

/// The classification every plain HTTP receiver gets: 2xx delivered; 408, 429 and 5xx retried
/// (honouring `Retry-After`); 3xx retried (we follow no redirect, so it is a failed attempt that
/// an operator may fix); any other 4xx permanent.
pub fn classify_http(answer: &Answer) -> Verdict {
    match answer.status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry {
            retry_after: retry_after(&answer.headers),
        },
        300..=399 => Verdict::Retry { retry_after: None },
        _ => Verdict::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry: Option<&str>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(r) = retry {
            headers.insert(reqwest::header::RETRY_AFTER, r.parse().unwrap());
        }
        Answer {
            status,
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn http_classification_table() {
        let s = Duration::from_secs;
        let cases = [
            (200, None, Verdict::Delivered),
            (204, None, Verdict::Delivered),
            (301, None, Verdict::Retry { retry_after: None }),
            (400, None, Verdict::Permanent),
            (401, None, Verdict::Permanent),
            (404, None, Verdict::Permanent),
            (408, None, Verdict::Retry { retry_after: None }),
            (410, None, Verdict::Permanent),
            (
                429,
                Some("7"),
                Verdict::Retry {
                    retry_after: Some(s(7)),
                },
            ),
            (500, None, Verdict::Retry { retry_after: None }),
            (
                503,
                Some("120"),
                Verdict::Retry {
                    retry_after: Some(s(120)),
                },
            ),
        ];
        for (status, ra, want) in cases {
            assert_eq!(classify_http(&answer(status, ra)), want, "{status}");
        }
    }

    #[test]
    fn errcodes_are_found_in_platform_bodies() {
        assert_eq!(
            errcode(br#"{"errcode":45009,"errmsg":"x"}"#).as_deref(),
            Some("45009")
        );
        assert_eq!(errcode(br#"{"code":11232}"#).as_deref(), Some("11232"));
        assert_eq!(
            errcode(br#"{"ok":false,"error":"ratelimited"}"#).as_deref(),
            Some("ratelimited")
        );
        assert_eq!(errcode(b"plain"), None);
    }
}
