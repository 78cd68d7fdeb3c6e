//! The retry decision for a failed Dify call, following the error table of dify.md: retry
//! (overload, server trouble, a failed model call, timeouts, broken connections and streams),
//! permanent (our request or the app's setup is wrong, a bad key, a spent quota), or
//! conversation-lost (the stored `conversation_id` is stale: drop it and retry once with a new
//! conversation). Pure: no clock, no network; `Retry-After` is parsed against a given `now`.
use super::error::DifyError;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What the caller should do with a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later (through the delay queues); Dify's `Retry-After`, if it sent one.
    Retry { retry_after: Option<Duration> },
    /// Trying again cannot help; dead-letter the event.
    Permanent,
    /// The conversation is gone: forget the mapping and call again with a new conversation.
    ConversationLost,
}

/// Classifies an error per dify.md's table.
pub fn classify(e: &DifyError) -> ErrorClass {
    match e {
        DifyError::Http {
            status,
            code,
            message,
            retry_after,
        } => classify_answer(Some(*status), code.as_deref(), message, *retry_after),
        // An `error` event is Dify's error answer arriving late: same table.
        DifyError::Stream {
            status,
            code,
            message,
        } => classify_answer(*status, code.as_deref(), message, None),
        // Nothing says the request was wrong: the network, Dify or the stream failed.
        DifyError::Timeout | DifyError::Connect(_) | DifyError::Protocol(_) => {
            ErrorClass::Retry { retry_after: None }
        }
        DifyError::WorkflowFailed { .. }
        | DifyError::MissingOutput { .. }
        | DifyError::Request(_) => ErrorClass::Permanent,
    }
}

/// Codes that mean our request or the app's setup is wrong: no retry helps until someone acts.
const PERMANENT_CODES: &[&str] = &[
    "invalid_param",
    "bad_request",
    "app_unavailable",
    "not_chat_app",
    "not_workflow_app",
    "conversation_completed",
    "provider_not_initialize",
    "provider_quota_exceeded",
    "model_currently_not_support",
    "unauthorized",
    "rate_limit_error",
];

fn classify_answer(
    status: Option<u16>,
    code: Option<&str>,
    message: &str,
    retry_after: Option<Duration>,
) -> ErrorClass {
    let retry = ErrorClass::Retry { retry_after };
    match (status, code) {
        (Some(404) | None, Some("not_found")) if conversation_gone(message) => {
            ErrorClass::ConversationLost
        }
        // 429 is either the app's concurrency limit (wait) or the cloud quota (wait for days).
        (Some(429), Some("rate_limit_error")) => ErrorClass::Permanent,
        (Some(429), _) => retry,
        (Some(400), Some("completion_request_error")) => retry,
        (Some(408), _) => retry,
        (Some(s), _) if s >= 500 => retry,
        (Some(s), _) if (400..500).contains(&s) => ErrorClass::Permanent,
        // A stream error event without a status: go by its code alone.
        (None, Some(c)) if PERMANENT_CODES.contains(&c) => ErrorClass::Permanent,
        // Anything else is not a refusal of our request (a 3xx, or an unknown stream error);
        // the retry schedule bounds how often it is tried.
        _ => retry,
    }
}

fn conversation_gone(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("conversation not exists")
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (a date in the past is zero).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn http(status: u16, code: &str, message: &str) -> DifyError {
        DifyError::Http {
            status,
            code: (!code.is_empty()).then(|| code.to_owned()),
            message: message.to_owned(),
            retry_after: None,
        }
    }

    fn stream(status: Option<u16>, code: &str, message: &str) -> DifyError {
        DifyError::Stream {
            status,
            code: Some(code.to_owned()),
            message: message.to_owned(),
        }
    }

    const RETRY: ErrorClass = ErrorClass::Retry { retry_after: None };
    use ErrorClass::{ConversationLost as LOST, Permanent as PERM};

    #[test]
    fn the_dify_error_table() {
        let table: Vec<(DifyError, ErrorClass)> = vec![
            (http(400, "invalid_param", "x is required"), PERM),
            (http(400, "bad_request", ""), PERM),
            (http(400, "app_unavailable", ""), PERM),
            (http(400, "not_chat_app", ""), PERM),
            (http(400, "not_workflow_app", ""), PERM),
            (http(400, "conversation_completed", ""), PERM),
            (http(400, "provider_not_initialize", ""), PERM),
            (http(400, "provider_quota_exceeded", ""), PERM),
            (http(400, "model_currently_not_support", ""), PERM),
            (http(400, "completion_request_error", "model failed"), RETRY),
            (http(401, "unauthorized", "Access token is invalid"), PERM),
            (http(403, "forbidden", ""), PERM),
            (http(404, "not_found", "Conversation Not Exists."), LOST),
            (http(404, "not_found", "conversation not exists"), LOST),
            (http(404, "not_found", "App not found"), PERM),
            (http(404, "", "Not Found"), PERM),
            (http(408, "", ""), RETRY),
            (http(429, "too_many_requests", ""), RETRY),
            (http(429, "rate_limit_error", "quota"), PERM),
            (http(429, "", ""), RETRY),
            (http(500, "internal_server_error", ""), RETRY),
            (http(502, "", "<html>bad gateway</html>"), RETRY),
            (http(503, "", ""), RETRY),
            (http(504, "", ""), RETRY),
            (stream(Some(400), "completion_request_error", "m"), RETRY),
            (stream(Some(400), "invalid_param", "m"), PERM),
            (stream(Some(500), "internal_server_error", "m"), RETRY),
            (stream(None, "provider_quota_exceeded", "m"), PERM),
            (stream(None, "something_new", "m"), RETRY),
            (stream(None, "not_found", "Conversation Not Exists."), LOST),
            (DifyError::Timeout, RETRY),
            (DifyError::Connect("refused".into()), RETRY),
            (DifyError::Protocol("stream ended early".into()), RETRY),
            (
                DifyError::WorkflowFailed {
                    status: "failed".into(),
                    error: None,
                },
                PERM,
            ),
            (DifyError::MissingOutput { name: "x".into() }, PERM),
            (DifyError::Request("bad trace id".into()), PERM),
        ];
        for (error, class) in table {
            assert_eq!(classify(&error), class, "{error}");
        }
    }

    #[test]
    fn retry_after_is_surfaced_on_429() {
        let e = DifyError::Http {
            status: 429,
            code: Some("too_many_requests".into()),
            message: String::new(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            classify(&e),
            ErrorClass::Retry {
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn retry_after_values() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        let table = [
            ("120", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Wed, 21 Oct 2015 07:28:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("soon", None),
        ];
        for (value, expected) in table {
            assert_eq!(parse_retry_after(value, now), expected, "{value}");
        }
    }
}
