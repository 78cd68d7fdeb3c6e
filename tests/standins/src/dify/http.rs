//! The stand-in's HTTP surface under `/v1`: the three run endpoints, the stop calls,
//! `GET /messages` and `GET /workflows/run/{id}`, with Dify's checks (down, key, scripted
//! failures, required fields, conversation scope) in Dify's order and Dify's error body
//! `{code, message, status}`. Runs themselves happen in `run`.
use super::run::{self, NewRun, Sink};
use super::{DifyRecord, Endpoint, InFlight, Shared};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

type Shd = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat-messages", post(chat))
        .route("/v1/completion-messages", post(completion))
        .route("/v1/workflows/run", post(workflow))
        .route("/v1/chat-messages/{task_id}/stop", post(stop))
        .route("/v1/completion-messages/{task_id}/stop", post(stop))
        .route("/v1/workflows/tasks/{task_id}/stop", post(stop))
        .route("/v1/messages", get(messages))
        .route("/v1/workflows/run/{id}", get(workflow_run))
        .fallback(|| async {
            dify_error(
                404,
                "not_found",
                "The requested URL was not found on the server.",
            )
        })
        .with_state(shared)
}

/// Dify's error answer.
fn dify_error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"code": code, "message": message, "status": status.as_u16()});
    (status, Json(body)).into_response()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The checks every request meets first: down, then the key. `Some` is the refusal.
fn refused(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    if shared.down.load(Ordering::SeqCst) {
        return Some(dify_error(
            503,
            "service_unavailable",
            "[stand-in] Dify is down",
        ));
    }
    let key = shared.api_key.as_ref()?;
    let expected = format!("Bearer {key}");
    (header_str(headers, "authorization").as_deref() != Some(expected.as_str()))
        .then(|| dify_error(401, "unauthorized", "Access token is invalid"))
}

/// Dify's message for a scripted failure's code.
fn scripted(shared: &Shared, status: u16, code: &str) -> Response {
    let message = match code {
        "not_found" => "Conversation Not Exists.",
        "too_many_requests" => "Too many requests. Please try again later.",
        "rate_limit_error" => "Rate limit exceeded, please try again later.",
        "completion_request_error" => "[stand-in] the model call failed",
        "unauthorized" => "Access token is invalid",
        "invalid_param" => "[stand-in] invalid parameter",
        _ => "[stand-in] scripted failure",
    };
    let mut response = dify_error(status, code, message);
    if status == 429 {
        if let Some(secs) = shared.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    response
}

async fn chat(State(s): Shd, headers: HeaderMap, body: Bytes) -> Response {
    start_run(s, Endpoint::Chat, headers, body).await
}

async fn completion(State(s): Shd, headers: HeaderMap, body: Bytes) -> Response {
    start_run(s, Endpoint::Completion, headers, body).await
}

async fn workflow(State(s): Shd, headers: HeaderMap, body: Bytes) -> Response {
    start_run(s, Endpoint::Workflow, headers, body).await
}

/// Counts and records the call, checks it as Dify would, and starts the run.
async fn start_run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |k: &str| parsed.get(k).and_then(Value::as_str).map(str::to_owned);
    let record = DifyRecord {
        endpoint,
        trace_id: header_str(&headers, "x-trace-id"),
        authorization: header_str(&headers, "authorization"),
        user: field("user"),
        conversation_id: field("conversation_id").filter(|c| !c.is_empty()),
        query: field("query"),
        inputs: parsed.get("inputs").cloned().unwrap_or(Value::Null),
        response_mode: field("response_mode"),
        at: Instant::now(),
    };
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let failure = {
        let mut state = shared.lock();
        if let Some(trace) = &record.trace_id {
            *state.per_trace.entry(trace.clone()).or_insert(0) += 1;
        }
        state.records.push_back(record.clone());
        while state.records.len() > shared.max_records {
            state.records.pop_front();
        }
        // A scripted failure is used only by a call that got past the key check.
        match refused(&shared, &headers) {
            Some(response) => Some(response),
            None => state
                .script
                .pop_front()
                .map(|(status, code)| scripted(&shared, status, &code)),
        }
    };
    if let Some(response) = failure {
        return response;
    }

    if !parsed.is_object() {
        return dify_error(
            400,
            "bad_request",
            "The browser (or proxy) sent a request that this server could not understand.",
        );
    }
    let Some(user) = record.user.as_deref().filter(|u| !u.is_empty()) else {
        return dify_error(400, "invalid_param", "user is required");
    };
    let Some(inputs) = parsed.get("inputs").filter(|i| i.is_object()) else {
        return dify_error(400, "invalid_param", "inputs is required");
    };
    let streaming = match record.response_mode.as_deref() {
        Some("streaming") => true,
        Some("blocking") | None => false,
        Some(_) => {
            return dify_error(
                400,
                "invalid_param",
                "response_mode must be blocking or streaming",
            )
        }
    };
    let query = match endpoint {
        Endpoint::Chat => match &record.query {
            Some(q) => q.clone(),
            None => return dify_error(400, "invalid_param", "query is required"),
        },
        Endpoint::Completion | Endpoint::Workflow => {
            match inputs.get("query").or_else(|| inputs.get("text")) {
                Some(Value::String(q)) => q.clone(),
                _ => inputs.to_string(),
            }
        }
    };
    let error_mid_stream = streaming
        && shared
            .mid_stream_errors
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let new = NewRun {
        endpoint,
        user,
        conversation_id: record.conversation_id.as_deref(),
        query: &query,
        inputs,
        answer: format!("echo: {query}"),
        error_mid_stream,
    };
    let Some(run) = run::register(&shared, new) else {
        return dify_error(404, "not_found", "Conversation Not Exists.");
    };
    let in_flight = InFlight::enter(&shared);
    if streaming {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(run::execute(shared, run, Sink::Stream(tx), in_flight));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
        });
        let mut response = Body::from_stream(stream).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        let (tx, rx) = oneshot::channel();
        // The run is its own task: a client that gives up does not cancel it.
        tokio::spawn(run::execute(shared, run, Sink::Blocking(tx), in_flight));
        match rx.await {
            Ok(body) => Json(body).into_response(),
            Err(_) => dify_error(503, "service_unavailable", "[stand-in] shutting down"),
        }
    }
}

async fn stop(
    State(shared): Shd,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = refused(&shared, &headers) {
        return response;
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if parsed
        .get("user")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return dify_error(400, "invalid_param", "user is required");
    }
    if let Some(flag) = shared.lock().tasks.get(&task_id) {
        flag.store(true, Ordering::SeqCst);
    }
    Json(json!({"result": "success"})).into_response()
}

async fn messages(
    State(shared): Shd,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(response) = refused(&shared, &headers) {
        return response;
    }
    let (Some(conversation_id), Some(user)) = (q.get("conversation_id"), q.get("user")) else {
        return dify_error(
            400,
            "invalid_param",
            "conversation_id and user are required",
        );
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let state = shared.lock();
    let Some(conv) = state
        .conversations
        .get(conversation_id)
        .filter(|c| &c.user == user)
    else {
        return dify_error(404, "not_found", "Conversation Not Exists.");
    };
    // Newest first; `first_id` pages to messages older than it.
    let end = match q.get("first_id").filter(|f| !f.is_empty()) {
        Some(first) => match conv.messages.iter().position(|m| &m.id == first) {
            Some(i) => i,
            None => return dify_error(404, "not_found", "First Message Not Exists."),
        },
        None => conv.messages.len(),
    };
    let older = &conv.messages[..end];
    let data: Vec<Value> = older
        .iter()
        .rev()
        .take(limit)
        .map(|m| run::message_json(conversation_id, m))
        .collect();
    Json(json!({"limit": limit, "has_more": older.len() > limit, "data": data})).into_response()
}

async fn workflow_run(State(shared): Shd, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(response) = refused(&shared, &headers) {
        return response;
    }
    match shared.lock().workflow_runs.get(&id) {
        Some(wf) => Json(run::workflow_run_json(&id, wf)).into_response(),
        None => dify_error(404, "not_found", "Workflow run not found."),
    }
}
