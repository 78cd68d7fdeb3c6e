//! What can go wrong calling Dify, as data: the HTTP status and Dify's `{code, message}` when it
//! answered, or which part of the exchange failed when it did not. Messages are Dify's own or
//! ours; none holds the app's API key (the client redacts it from anything Dify echoes) and none
//! is longer than [`MAX_MESSAGE`]. Whether to retry is decided apart, in `classify`.
use std::time::Duration;

/// Error messages taken from answers are cut to this many characters.
pub const MAX_MESSAGE: usize = 300;

/// One failed Dify call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DifyError {
    /// Dify (or a proxy before it) answered with a non-2xx status.
    #[error("Dify answered {status}{}: {message}", code_suffix(.code))]
    Http {
        status: u16,
        code: Option<String>,
        message: String,
        /// The `Retry-After` of a 429 or 503, when one was sent.
        retry_after: Option<Duration>,
    },
    /// An `error` event inside a stream that began with HTTP 200.
    #[error("Dify reported an error mid-stream{}{}: {message}", status_suffix(.status), code_suffix(.code))]
    Stream {
        /// The HTTP-like status the event carries, when it has one.
        status: Option<u16>,
        code: Option<String>,
        message: String,
    },
    /// The whole call (request and stream) took longer than the app's `timeout`.
    #[error("Dify did not finish within the app's timeout")]
    Timeout,
    /// Dify could not be reached, or the connection broke before an answer began.
    #[error("cannot reach Dify: {0}")]
    Connect(String),
    /// An answer that is not what Dify sends: a broken or truncated stream, unreadable JSON.
    #[error("unexpected answer from Dify: {0}")]
    Protocol(String),
    /// A workflow run that ended `failed` or `stopped`.
    #[error("the workflow run ended {status}: {}", .error.as_deref().unwrap_or("no error given"))]
    WorkflowFailed {
        status: String,
        error: Option<String>,
    },
    /// The workflow succeeded but lacks the output configured as `answer_output`.
    #[error("the workflow has no output named {name:?} (apps.answer_output)")]
    MissingOutput { name: String },
    /// A request we refuse to send (an invalid trace id, an unusable base URL).
    #[error("invalid Dify request: {0}")]
    Request(String),
}

impl From<super::sse::SseError> for DifyError {
    fn from(e: super::sse::SseError) -> Self {
        DifyError::Protocol(e.to_string())
    }
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn status_suffix(status: &Option<u16>) -> String {
    status.map(|s| format!(" {s}")).unwrap_or_default()
}

impl DifyError {
    /// The HTTP status for attempt records: the answer's, or a stream error event's.
    pub fn status(&self) -> Option<u16> {
        match self {
            DifyError::Http { status, .. } => Some(*status),
            DifyError::Stream { status, .. } => *status,
            _ => None,
        }
    }

    /// Dify's error code, for attempt records and dead letters.
    pub fn code(&self) -> Option<&str> {
        match self {
            DifyError::Http { code, .. } | DifyError::Stream { code, .. } => code.as_deref(),
            DifyError::Timeout => Some("timeout"),
            DifyError::Connect(_) => Some("connect"),
            DifyError::Protocol(_) => Some("protocol"),
            DifyError::WorkflowFailed { .. } => Some("workflow_failed"),
            DifyError::MissingOutput { .. } => Some("missing_output"),
            DifyError::Request(_) => Some("invalid_request"),
        }
    }
}

/// Cuts a message to [`MAX_MESSAGE`] characters and removes `secret` from it.
pub(crate) fn sanitize(message: &str, secret: &str) -> String {
    let cleaned = if secret.is_empty() {
        message.to_owned()
    } else {
        message.replace(secret, "[redacted]")
    };
    let mut out: String = cleaned.chars().take(MAX_MESSAGE).collect();
    if cleaned.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn display_names_status_code_and_message() {
        let e = DifyError::Http {
            status: 429,
            code: Some("too_many_requests".into()),
            message: "slow down".into(),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "Dify answered 429 too_many_requests: slow down"
        );
        let e = DifyError::Stream {
            status: Some(400),
            code: Some("completion_request_error".into()),
            message: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "Dify reported an error mid-stream 400 completion_request_error: boom"
        );
        assert_eq!(e.status(), Some(400));
        assert_eq!(e.code(), Some("completion_request_error"));
    }

    #[test]
    fn sanitize_redacts_the_key_and_cuts_long_messages() {
        assert_eq!(
            sanitize("bad key app-123 given", "app-123"),
            "bad key [redacted] given"
        );
        let long = "x".repeat(MAX_MESSAGE + 10);
        assert_eq!(sanitize(&long, "").chars().count(), MAX_MESSAGE + 1);
    }
}
