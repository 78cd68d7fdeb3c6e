//! The HTTP side of calling Dify: builds the request for the app's kind and mode, holds one of
//! the app's concurrency permits for the whole call, bounds the whole call (request and stream)
//! by the app's timeout, reads a stream event by event as it arrives (never the whole body
//! first), reports Dify's ids as soon as they appear, and turns every failure into a
//! [`DifyError`]. It does not retry and does not decide whether to: that is `classify` and the
//! caller's retry schedule. The API key goes only into the `Authorization` header (marked
//! sensitive) and is redacted from anything Dify echoes back.
use super::assemble::{blocking_answer, Assembler};
use super::classify::{classify, parse_retry_after, ErrorClass};
use super::error::{sanitize, DifyError};
use super::sse::SseParser;
use super::{DifyCall, DifyIds};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{json, Map, Value};
use shared::config::{AppConfig, AppKind};
use shared::envelope::Answer;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc::UnboundedSender, watch, Semaphore};
use tokio::time::{timeout_at, Instant};

/// One stream event may not exceed this (a `workflow_finished` carries every output).
const MAX_EVENT_BYTES: usize = 16 << 20;
/// A blocking answer may not exceed this.
pub(crate) const MAX_BODY_BYTES: usize = 16 << 20;
/// How long a stream is read on for its end after the answer is complete.
const AFTER_ANSWER_GRACE: Duration = Duration::from_secs(1);
/// Of an error answer, only this much is read.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Calls Dify apps. Cheap to clone; one per process, shared by every consumer task.
#[derive(Clone)]
pub struct DifyClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    /// Per app id: the permits bounding calls in flight to that app from this process, and its
    /// run endpoint once parsed.
    limits: Mutex<HashMap<String, Limit>>,
}

struct Limit {
    permits: Arc<Semaphore>,
    capacity: usize,
    /// The app's run endpoint as last parsed, with the base URL and path it was parsed from:
    /// parsing it is about 7,000 instructions, 1.5 % of an event's (docs/PERFORMANCE.md).
    run: Option<(String, &'static str, reqwest::Url)>,
}

impl Limit {
    fn new(concurrency: usize) -> Self {
        let capacity = concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            run: None,
        }
    }
}

/// The state of `app` in `limits`, made on first use for an app the client was not built with.
fn limit_of<'m>(limits: &'m mut HashMap<String, Limit>, app: &AppConfig) -> &'m mut Limit {
    limits
        .entry(app.id.clone())
        .or_insert_with(|| Limit::new(app.concurrency))
}

impl fmt::Debug for DifyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apps: Vec<String> = match self.inner.limits.lock() {
            Ok(limits) => limits.keys().cloned().collect(),
            Err(_) => Vec::new(),
        };
        f.debug_struct("DifyClient").field("apps", &apps).finish()
    }
}

impl DifyClient {
    /// A client for `apps`, each limited to `app.concurrency` calls in flight at once.
    pub fn new(http: reqwest::Client, apps: &[AppConfig]) -> Self {
        let limits = apps
            .iter()
            .map(|app| (app.id.clone(), Limit::new(app.concurrency)))
            .collect();
        Self {
            inner: Arc::new(Inner {
                http,
                limits: Mutex::new(limits),
            }),
        }
    }

    /// Calls in flight to `app_id` from this process now (for metrics and tests).
    pub fn in_flight(&self, app_id: &str) -> usize {
        let limits = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .get(app_id)
            .map_or(0, |l| l.capacity - l.permits.available_permits())
    }

    fn permits_of(&self, app: &AppConfig) -> Arc<Semaphore> {
        // A poisoned lock only means another task panicked while holding it; the map is intact.
        let mut limits = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
        limit_of(&mut limits, app).permits.clone()
    }

    /// `endpoint(app, path)` for the run endpoints, parsed once per app (again only if the app's
    /// base URL is not the one it was parsed from).
    fn run_endpoint(&self, app: &AppConfig, path: &'static str) -> Result<reqwest::Url, DifyError> {
        let mut limits = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
        let limit = limit_of(&mut limits, app);
        match &limit.run {
            Some((base, p, url)) if *base == app.base_url && *p == path => Ok(url.clone()),
            _ => {
                let url = endpoint(app, path)?;
                limit.run = Some((app.base_url.clone(), path, url.clone()));
                Ok(url)
            }
        }
    }

    /// One call. `ids` receives Dify's ids (cumulatively, each time one more is known) as soon as
    /// the stream reveals them, so the caller can record them before the answer is complete.
    /// Waiting for a permit does not count against the app's timeout; everything after does.
    pub async fn call(
        &self,
        call: &DifyCall<'_>,
        ids: Option<&UnboundedSender<DifyIds>>,
    ) -> Result<Answer, DifyError> {
        self.call_watching(call, ids, None).await
    }

    /// As [`DifyClient::call`]; `text` also follows the answer's text as the stream writes it
    /// (the whole text so far, each time it changes), for a reply that grows in the chat.
    pub async fn call_watching(
        &self,
        call: &DifyCall<'_>,
        ids: Option<&UnboundedSender<DifyIds>>,
        text: Option<&watch::Sender<String>>,
    ) -> Result<Answer, DifyError> {
        validate_trace_id(call.trace_id)?;
        let permits = self.permits_of(call.app);
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| DifyError::Request("the app's permits are closed".into()))?;
        let app_id = call.app.id.clone();
        let gauge = InFlightGauge::enter(&app_id);
        let started = Instant::now();
        let result = self.run(call, ids, text).await;
        drop(gauge);
        let outcome = match result.as_ref().map_err(classify) {
            Ok(_) => "ok",
            Err(ErrorClass::Retry { .. }) => "retry",
            Err(ErrorClass::Permanent) => "permanent",
            Err(ErrorClass::ConversationLost) => "conversation_lost",
        };
        metrics::histogram!("switchboard_dify_call_seconds", "app" => app_id, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::debug!(app = %call.app.id, trace_id = call.trace_id, error = %e, "Dify call failed");
        }
        result
    }

    async fn run(
        &self,
        call: &DifyCall<'_>,
        ids: Option<&UnboundedSender<DifyIds>>,
        text: Option<&watch::Sender<String>>,
    ) -> Result<Answer, DifyError> {
        let app = call.app;
        let deadline = Instant::now() + app.timeout;
        let key = app.api_key.expose();
        let (path, body) = run_request(call);
        let accept = match app.response_mode {
            shared::config::ResponseMode::Streaming => "text/event-stream",
            shared::config::ResponseMode::Blocking => "application/json",
        };
        let request = self
            .inner
            .http
            .post(self.run_endpoint(app, path)?)
            .bearer_auth(key)
            .header("X-Trace-Id", call.trace_id)
            .header(ACCEPT, accept)
            .json(&body);
        let response = timeout_at(deadline, request.send())
            .await
            .map_err(|_| DifyError::Timeout)?
            .map_err(|e| transport_error(&e, key))?;
        if !response.status().is_success() {
            return Err(error_answer(response, deadline, key).await);
        }
        let is_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_stream {
            return read_stream(response, app, deadline, ids, text).await;
        }
        // A blocking answer, or a JSON answer to a streaming request: read it whole (capped).
        let (bytes, truncated) = timeout_at(deadline, read_capped(response, MAX_BODY_BYTES))
            .await
            .map_err(|_| DifyError::Timeout)?
            .map_err(|e| DifyError::Protocol(format!("reading the answer: {}", chain(&e, key))))?;
        if truncated {
            return Err(DifyError::Protocol(format!(
                "the answer is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        let value: Value = shared::json::from_bytes(&bytes)
            .map_err(|e| DifyError::Protocol(format!("the answer is not JSON: {e}")))?;
        let answer = blocking_answer(app.kind, &value, app.answer_output.as_deref())?;
        if let Some(tx) = ids {
            let _ = tx.send(DifyIds::from(&answer));
        }
        Ok(answer)
    }

    /// Asks Dify to stop a running task (`POST …/{task_id}/stop`). Stopping ends the billing of
    /// a run nobody waits for; it also means `recover` will not find a finished answer.
    pub async fn stop(&self, app: &AppConfig, user: &str, task_id: &str) -> Result<(), DifyError> {
        if !is_safe_id(task_id) {
            return Err(DifyError::Request("the task id is not a Dify id".into()));
        }
        let path = match app.kind {
            AppKind::Chat => format!("chat-messages/{task_id}/stop"),
            AppKind::Completion => format!("completion-messages/{task_id}/stop"),
            AppKind::Workflow => format!("workflows/tasks/{task_id}/stop"),
        };
        let key = app.api_key.expose();
        let deadline = Instant::now() + app.timeout;
        let request = self
            .inner
            .http
            .post(endpoint(app, &path)?)
            .bearer_auth(key)
            .json(&json!({ "user": user }));
        let response = timeout_at(deadline, request.send())
            .await
            .map_err(|_| DifyError::Timeout)?
            .map_err(|e| transport_error(&e, key))?;
        if !response.status().is_success() {
            return Err(error_answer(response, deadline, key).await);
        }
        Ok(())
    }
}

/// Counts a call in `switchboard_dify_in_flight` until dropped, even if the call is cancelled.
struct InFlightGauge(metrics::Gauge);

impl InFlightGauge {
    fn enter(app_id: &str) -> Self {
        let gauge = metrics::gauge!("switchboard_dify_in_flight", "app" => app_id.to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Reads a stream until it ends, feeding events to the assembler as they complete.
async fn read_stream(
    response: reqwest::Response,
    app: &AppConfig,
    deadline: Instant,
    ids: Option<&UnboundedSender<DifyIds>>,
    text: Option<&watch::Sender<String>>,
) -> Result<Answer, DifyError> {
    let key = app.api_key.expose();
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut assembler = Assembler::new(app.kind);
    let mut body = response.bytes_stream();
    // One timer for the whole stream, moved only when the answer completes: a timer per chunk
    // would be set and cancelled twenty times in a usual answer.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut complete = false;
    loop {
        if !complete && assembler.is_complete() {
            complete = true;
            // Read on briefly after the answer (a chatflow sends `workflow_finished` after
            // `message_end`; reading to the end lets the connection be reused), but never
            // hold a finished answer for long.
            let grace = Instant::now() + AFTER_ANSWER_GRACE;
            if grace < timer.deadline() {
                timer.as_mut().reset(grace);
            }
        }
        // Once the answer is complete, a timeout or a broken connection no longer matters.
        let next = tokio::select! {
            // What has arrived is read before the timer is looked at, as `timeout_at` does.
            biased;
            next = body.next() => next,
            () = &mut timer => {
                if assembler.is_complete() {
                    break;
                }
                return Err(DifyError::Timeout);
            }
        };
        let chunk = match next {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) if assembler.is_complete() => break,
            Some(Err(e)) => {
                return Err(DifyError::Protocol(format!(
                    "the stream broke: {}",
                    chain(&e, key)
                )))
            }
        };
        parser.feed(&chunk, |event| {
            let revealed = assembler.on_event(event.data).map_err(|e| redact(e, key))?;
            if let (true, Some(tx)) = (revealed, ids) {
                // The receiver may be gone (the caller stopped listening); the call goes on.
                let _ = tx.send(assembler.ids().clone());
            }
            Ok::<_, DifyError>(())
        })?;
        if let Some(tx) = text {
            // Once per chunk, not per event: the watcher only ever wants the latest text.
            tx.send_if_modified(|seen| {
                let now = assembler.text_so_far();
                if seen.as_str() == now {
                    return false;
                }
                now.clone_into(seen);
                true
            });
        }
    }
    assembler.finish(app.answer_output.as_deref())
}

/// The path and JSON body of a run call for the app's kind.
pub(crate) fn run_request(call: &DifyCall<'_>) -> (&'static str, Value) {
    let app = call.app;
    let mode = app.response_mode.as_str();
    let with_query = || {
        // Completion apps take the query as an input; workflows ignore inputs they do not
        // declare, so giving them `query` too lets a workflow use the text without a mapping.
        // An event without text (a schedule, a JSON webhook) gives none.
        let mut inputs: Map<String, Value> = call.inputs.clone();
        if !call.query.is_empty() {
            inputs
                .entry("query")
                .or_insert_with(|| Value::String(call.query.to_owned()));
        }
        Value::Object(inputs)
    };
    match app.kind {
        AppKind::Chat => {
            let mut body = json!({
                "query": call.query,
                "inputs": call.inputs,
                "user": call.user,
                "response_mode": mode,
            });
            if let Some(id) = call.conversation_id.filter(|id| !id.is_empty()) {
                body["conversation_id"] = Value::String(id.to_owned());
            }
            ("chat-messages", body)
        }
        AppKind::Workflow => (
            "workflows/run",
            json!({"inputs": with_query(), "user": call.user, "response_mode": mode}),
        ),
        AppKind::Completion => (
            "completion-messages",
            json!({"inputs": with_query(), "user": call.user, "response_mode": mode}),
        ),
    }
}

/// `X-Trace-Id` must be 1–128 characters of `[A-Za-z0-9-_]` (an event's UUID is).
pub fn validate_trace_id(trace_id: &str) -> Result<(), DifyError> {
    if is_safe_id(trace_id) {
        Ok(())
    } else {
        Err(DifyError::Request(
            "the trace id must be 1-128 characters of A-Z a-z 0-9 - _".into(),
        ))
    }
}

/// Dify's ids and trace ids: safe to put in a path or a header as they are.
pub(crate) fn is_safe_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn endpoint(app: &AppConfig, path: &str) -> Result<reqwest::Url, DifyError> {
    let url = format!("{}/{path}", app.base_url.trim_end_matches('/'));
    reqwest::Url::parse(&url)
        .map_err(|e| DifyError::Request(format!("apps.{}.base_url is not a URL: {e}", app.id)))
}

/// A failure before any answer: no connection, a reset, or a client-side timeout.
pub(crate) fn transport_error(e: &reqwest::Error, key: &str) -> DifyError {
    if e.is_timeout() {
        DifyError::Timeout
    } else {
        DifyError::Connect(chain(e, key))
    }
}

/// An error with its causes, which say what actually failed (reqwest's own text does not).
pub(crate) fn chain(e: &dyn std::error::Error, key: &str) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    sanitize(&text, key)
}

fn redact(e: DifyError, key: &str) -> DifyError {
    match e {
        DifyError::Stream {
            status,
            code,
            message,
        } => DifyError::Stream {
            status,
            code,
            message: sanitize(&message, key),
        },
        other => other,
    }
}

/// Reads a non-2xx answer into [`DifyError::Http`]: Dify's `{code, message}`, or the start of
/// whatever a proxy sent, and the `Retry-After`.
pub(crate) async fn error_answer(
    response: reqwest::Response,
    deadline: Instant,
    key: &str,
) -> DifyError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    let body = match timeout_at(deadline, read_capped(response, MAX_ERROR_BODY_BYTES)).await {
        Ok(Ok((bytes, _))) => bytes,
        _ => Vec::new(),
    };
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message")
        .or_else(|| {
            let text = String::from_utf8_lossy(&body).trim().to_owned();
            (!text.is_empty()).then_some(text)
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    DifyError::Http {
        status: status.as_u16(),
        code: field("code").filter(|c| !c.is_empty()),
        message: sanitize(&message, key),
        retry_after,
    }
}

/// Reads at most `cap` bytes of a body; the flag says whether there was more.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if out.len() + chunk.len() > cap {
            out.extend_from_slice(&chunk[..cap - out.len()]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use shared::config::ResponseMode;
    use shared::Secret;

    fn app(kind: AppKind) -> AppConfig {
        AppConfig {
            id: "a".into(),
            base_url: "http://dify.test/v1/".into(),
            api_key: Secret::new("app-secret"),
            kind,
            response_mode: ResponseMode::Streaming,
            timeout: std::time::Duration::from_secs(1),
            concurrency: 2,
            inputs: Default::default(),
            answer_output: None,
        }
    }

    #[test]
    fn request_body_per_kind() {
        let inputs: Map<String, Value> = json!({"lang": "en"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let table = [
            (
                AppKind::Chat,
                Some("c1"),
                "chat-messages",
                json!({"query": "q", "inputs": {"lang": "en"}, "user": "u", "response_mode": "streaming", "conversation_id": "c1"}),
            ),
            (
                AppKind::Chat,
                Some(""),
                "chat-messages",
                json!({"query": "q", "inputs": {"lang": "en"}, "user": "u", "response_mode": "streaming"}),
            ),
            (
                AppKind::Workflow,
                None,
                "workflows/run",
                json!({"inputs": {"lang": "en", "query": "q"}, "user": "u", "response_mode": "streaming"}),
            ),
            (
                AppKind::Completion,
                None,
                "completion-messages",
                json!({"inputs": {"lang": "en", "query": "q"}, "user": "u", "response_mode": "streaming"}),
            ),
        ];
        for (kind, conversation_id, path, body) in table {
            let app = app(kind);
            let call = DifyCall {
                app: &app,
                query: "q",
                inputs: inputs.clone(),
                user: "u",
                conversation_id,
                trace_id: "t",
            };
            assert_eq!(run_request(&call), (path, body), "{kind:?}");
        }
    }

    #[test]
    fn trace_ids_and_endpoints() {
        let table = [
            ("0190a6c2-7d1e-7c3a-9a4b-2f1e0d9c8b7a", true),
            ("a_b-C9", true),
            ("", false),
            ("has space", false),
            ("semi;colon", false),
            (&"x".repeat(129), false),
        ];
        for (id, ok) in table {
            assert_eq!(validate_trace_id(id).is_ok(), ok, "{id}");
        }
        assert_eq!(
            endpoint(&app(AppKind::Chat), "chat-messages").map(|u| u.to_string()),
            Ok("http://dify.test/v1/chat-messages".to_owned())
        );
    }

    #[test]
    fn a_run_endpoint_is_parsed_once_and_again_when_its_base_url_changes() {
        let mut chat = app(AppKind::Chat);
        let client = DifyClient::new(reqwest::Client::new(), &[chat.clone()]);
        let first = client.run_endpoint(&chat, "chat-messages");
        assert_eq!(first, endpoint(&chat, "chat-messages"));
        // Kept with what it was parsed from, and handed out from there.
        let kept = |client: &DifyClient| {
            let limits = client
                .inner
                .limits
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            limits.get("a").and_then(|l| l.run.clone())
        };
        let url = first.clone().ok();
        assert_eq!(
            kept(&client),
            url.clone()
                .map(|u| ("http://dify.test/v1/".to_owned(), "chat-messages", u))
        );
        assert_eq!(client.run_endpoint(&chat, "chat-messages"), first);
        // Another path or another base URL under the same app id is parsed anew.
        assert_eq!(
            client.run_endpoint(&chat, "workflows/run"),
            endpoint(&chat, "workflows/run")
        );
        chat.base_url = "http://elsewhere.test/v1".into();
        assert_eq!(
            client
                .run_endpoint(&chat, "chat-messages")
                .map(|u| u.to_string()),
            Ok("http://elsewhere.test/v1/chat-messages".to_owned())
        );
        // An app the client was not built with gets its state on first use, as its permits do.
        let mut other = app(AppKind::Chat);
        other.id = "b".into();
        other.base_url = "not a url".into();
        assert!(client.run_endpoint(&other, "chat-messages").is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let client = DifyClient::new(reqwest::Client::new(), &[app(AppKind::Chat)]);
        let text = format!("{client:?}");
        assert!(
            text.contains("\"a\"") && !text.contains("app-secret"),
            "{text}"
        );
    }
}
