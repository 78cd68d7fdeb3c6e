//! One run of the stand-in: registers it (message or workflow run, stop flag), produces its
//! events over the run's latency, and records its end. The run is a task of its own that writes
//! to the client through a channel and ignores a client that has gone — so, as in Dify, an
//! abandoned run still finishes and can be read back. The run is recorded before its final
//! event is sent, so a client that has seen `message_end` can always find it.
use super::{Conversation, Endpoint, InFlight, Message, Shared, WorkflowRun};
use axum::body::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use uuid::Uuid;

/// What a run answers and the ids it was given.
pub(super) struct Run {
    pub endpoint: Endpoint,
    pub task_id: String,
    /// Chat and completion runs.
    pub message_id: Option<String>,
    /// Chat runs.
    pub conversation_id: Option<String>,
    /// Index of the message in its conversation (chat runs).
    pub message_index: usize,
    /// Workflow runs.
    pub workflow_run_id: Option<String>,
    pub query: String,
    pub answer: String,
    pub error_mid_stream: bool,
    pub stop: Arc<AtomicBool>,
    pub created_at: i64,
}

/// Where a run's output goes.
pub(super) enum Sink {
    Stream(mpsc::UnboundedSender<Bytes>),
    Blocking(oneshot::Sender<Value>),
}

impl Sink {
    fn event(&self, event: &Value) {
        if let Sink::Stream(tx) = self {
            // The client may have gone; the run goes on regardless.
            let _ = tx.send(Bytes::from(format!("data: {event}\n\n")));
        }
    }

    /// One `message` event of a streamed chat or completion run, written straight from the
    /// run's fields: the same JSON as [`message_event`], without a JSON tree per chunk (the
    /// benchmarks stream 20 chunks an answer, thousands of answers a second, on the same two
    /// cores as what they measure).
    fn message_chunk(&self, run: &Run, piece: &str) {
        if let Sink::Stream(tx) = self {
            let chunk = MessageEvent::of(run, "message", piece);
            let mut line = Vec::with_capacity(200 + piece.len());
            line.extend_from_slice(b"data: ");
            // Strings and numbers only: nothing here can fail to serialize.
            let _ = serde_json::to_writer(&mut line, &chunk);
            line.extend_from_slice(b"\n\n");
            let _ = tx.send(Bytes::from(line));
        }
    }
}

/// A chat or completion run's message event (`message`, `message_end`, the blocking answer): its
/// fields, in Dify's order.
#[derive(serde::Serialize)]
struct MessageEvent<'a> {
    event: &'a str,
    task_id: &'a str,
    id: Option<&'a str>,
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<&'a str>,
    answer: &'a str,
    created_at: i64,
}

impl<'a> MessageEvent<'a> {
    fn of(run: &'a Run, event: &'a str, answer: &'a str) -> Self {
        Self {
            event,
            task_id: &run.task_id,
            id: run.message_id.as_deref(),
            message_id: run.message_id.as_deref(),
            conversation_id: run.conversation_id.as_deref(),
            answer,
            created_at: run.created_at,
        }
    }
}

/// What a call asks for, checked.
pub(super) struct NewRun<'a> {
    pub endpoint: Endpoint,
    pub user: &'a str,
    pub conversation_id: Option<&'a str>,
    pub query: &'a str,
    pub inputs: &'a Value,
    pub answer: String,
    pub error_mid_stream: bool,
}

/// Registers a new run; `None` when a chat run names a conversation this user does not have.
pub(super) fn register(shared: &Shared, new: NewRun<'_>) -> Option<Run> {
    let NewRun {
        endpoint,
        user,
        conversation_id,
        query,
        inputs,
        answer,
        error_mid_stream,
    } = new;
    let id = || Uuid::now_v7().to_string();
    let created_at = chrono::Utc::now().timestamp();
    let task_id = id();
    let stop = Arc::new(AtomicBool::new(false));
    let mut run = Run {
        endpoint,
        task_id: task_id.clone(),
        message_id: None,
        conversation_id: None,
        message_index: 0,
        workflow_run_id: None,
        query: query.to_owned(),
        answer,
        error_mid_stream,
        stop: stop.clone(),
        created_at,
    };
    let mut state = shared.lock();
    match endpoint {
        Endpoint::Chat => {
            let conversation_id = match conversation_id {
                Some(c) => {
                    // Conversations are scoped to their user: another user's id is unknown.
                    match state.conversations.get(c) {
                        Some(conv) if conv.user == user => c.to_owned(),
                        _ => return None,
                    }
                }
                None => {
                    let c = id();
                    state.conversations.insert(
                        c.clone(),
                        Conversation {
                            user: user.to_owned(),
                            messages: Vec::new(),
                        },
                    );
                    c
                }
            };
            let message_id = id();
            if let Some(conv) = state.conversations.get_mut(&conversation_id) {
                run.message_index = conv.messages.len();
                // Dify writes the message when the run starts and its answer when it ends.
                conv.messages.push(Message {
                    id: message_id.clone(),
                    query: query.to_owned(),
                    inputs: inputs.clone(),
                    answer: String::new(),
                    error: None,
                    done: false,
                    created_at,
                });
            }
            run.message_id = Some(message_id);
            run.conversation_id = Some(conversation_id);
        }
        Endpoint::Completion => run.message_id = Some(id()),
        Endpoint::Workflow => {
            let run_id = id();
            state.workflow_runs.insert(
                run_id.clone(),
                WorkflowRun {
                    inputs: inputs.clone(),
                    status: "running".into(),
                    outputs: json!({}),
                    error: None,
                    created_at,
                    finished_at: None,
                    elapsed: 0.0,
                },
            );
            run.workflow_run_id = Some(run_id);
        }
    }
    state.tasks.insert(task_id, stop);
    Some(run)
}

/// How a run ended.
enum End {
    Succeeded,
    Stopped,
    Failed(String),
}

/// Produces the run's events over its latency and records its end.
pub(super) async fn execute(shared: Arc<Shared>, run: Run, sink: Sink, in_flight: InFlight) {
    let latency = shared.latency().sample();
    let started = Instant::now();
    let pieces = split(&run.answer, shared.chunks);
    if matches!(sink, Sink::Stream(_)) {
        if let Sink::Stream(tx) = &sink {
            let _ = tx.send(Bytes::from_static(b"event: ping\n\n"));
        }
        if run.endpoint == Endpoint::Workflow {
            sink.event(&workflow_event(&run, "workflow_started", json!({"id": run.workflow_run_id, "workflow_id": "wf-standin", "sequence_number": 1, "created_at": run.created_at})));
            sink.event(&workflow_event(&run, "node_started", json!({"id": "node-exec-1", "node_id": "llm", "node_type": "llm", "title": "LLM", "index": 1, "created_at": run.created_at})));
        }
    }
    let error_at = run.error_mid_stream.then_some(pieces.len() / 2);
    let mut text = String::new();
    let mut end = End::Succeeded;
    let n = pieces.len();
    for (i, piece) in pieces.iter().enumerate() {
        let at = started + latency.mul_f64((i + 1) as f64 / n as f64);
        tokio::select! {
            _ = sleep_until(at) => {}
            // A stand-in being shut down drops its runs unrecorded.
            _ = shared.stop.cancelled() => return,
        }
        if run.stop.load(Ordering::SeqCst) {
            end = End::Stopped;
            break;
        }
        if error_at == Some(i) {
            end = End::Failed("[stand-in] the model call failed mid-stream".into());
            break;
        }
        text.push_str(piece);
        if i == 0 && matches!(sink, Sink::Stream(_)) {
            let now = std::time::Instant::now();
            let mut state = shared.lock();
            state.first_tokens.entry(run.query.clone()).or_insert(now);
        }
        match run.endpoint {
            Endpoint::Workflow => sink.event(&workflow_event(
                &run,
                "text_chunk",
                json!({"text": piece, "from_variable_selector": ["llm", "text"]}),
            )),
            _ => sink.message_chunk(&run, piece),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let usage = usage(&run, &text, elapsed);
    record_end(&shared, &run, &end, &text, elapsed);
    // The run is over before its client can know it: a client that then starts the next call
    // never sees both counted in flight.
    drop(in_flight);
    shared.completed.fetch_add(1, Ordering::SeqCst);
    match (&end, sink) {
        (End::Failed(message), sink) => {
            sink.event(
                &json!({"event": "error", "task_id": run.task_id, "message_id": run.message_id,
                "status": 400, "code": "completion_request_error", "message": message}),
            );
        }
        (_, sink) if run.endpoint == Endpoint::Workflow => {
            let data = workflow_data(&run, &end, &text, elapsed);
            match sink {
                Sink::Stream(_) => {
                    sink.event(&workflow_event(&run, "node_finished", json!({"id": "node-exec-1", "node_id": "llm", "status": "succeeded", "outputs": {"text": text}})));
                    sink.event(&workflow_event(&run, "workflow_finished", data));
                }
                Sink::Blocking(tx) => {
                    let _ = tx.send(json!({"task_id": run.task_id, "workflow_run_id": run.workflow_run_id, "data": data}));
                }
            }
        }
        (_, Sink::Stream(tx)) => {
            let mut end = message_event(&run, "message_end", "");
            if let Some(map) = end.as_object_mut() {
                map.remove("answer");
                map.insert(
                    "metadata".into(),
                    json!({"usage": usage, "retriever_resources": []}),
                );
            }
            let _ = tx.send(Bytes::from(format!("data: {end}\n\n")));
        }
        (_, Sink::Blocking(tx)) => {
            let mut body = message_event(&run, "message", &text);
            if let Some(map) = body.as_object_mut() {
                let mode = if run.endpoint == Endpoint::Chat {
                    "chat"
                } else {
                    "completion"
                };
                map.insert("mode".into(), json!(mode));
                map.insert(
                    "metadata".into(),
                    json!({"usage": usage, "retriever_resources": []}),
                );
            }
            let _ = tx.send(body);
        }
    }
}

/// Writes the run's outcome where `GET /messages` and `GET /workflows/run/{id}` read it.
fn record_end(shared: &Shared, run: &Run, end: &End, text: &str, elapsed: f64) {
    let mut state = shared.lock();
    state.tasks.remove(&run.task_id);
    let now = chrono::Utc::now().timestamp();
    if let Some(conv) = run
        .conversation_id
        .as_ref()
        .and_then(|c| state.conversations.get_mut(c))
    {
        if let Some(message) = conv.messages.get_mut(run.message_index) {
            message.done = true;
            match end {
                End::Failed(e) => message.error = Some(e.clone()),
                End::Succeeded | End::Stopped => message.answer = text.to_owned(),
            }
        }
    }
    if let Some(wf) = run
        .workflow_run_id
        .as_ref()
        .and_then(|id| state.workflow_runs.get_mut(id))
    {
        let (status, error) = match end {
            End::Succeeded => ("succeeded", None),
            End::Stopped => ("stopped", None),
            End::Failed(e) => ("failed", Some(e.clone())),
        };
        wf.status = status.into();
        wf.error = error;
        if matches!(end, End::Succeeded) {
            wf.outputs = json!({"answer": text});
        }
        wf.finished_at = Some(now);
        wf.elapsed = elapsed;
    }
}

/// A message event as a JSON tree, for the events that add to it or take from it.
fn message_event(run: &Run, event: &str, answer: &str) -> Value {
    // Strings and numbers only: nothing here can fail to serialize.
    serde_json::to_value(MessageEvent::of(run, event, answer)).unwrap_or_default()
}

fn workflow_event(run: &Run, event: &str, data: Value) -> Value {
    json!({"event": event, "task_id": run.task_id, "workflow_run_id": run.workflow_run_id, "data": data})
}

fn workflow_data(run: &Run, end: &End, text: &str, elapsed: f64) -> Value {
    let status = match end {
        End::Succeeded => "succeeded",
        End::Stopped => "stopped",
        End::Failed(_) => "failed",
    };
    let outputs = if matches!(end, End::Succeeded) {
        json!({"answer": text})
    } else {
        json!({})
    };
    json!({"id": run.workflow_run_id, "workflow_id": "wf-standin", "status": status, "outputs": outputs,
        "error": null, "elapsed_time": elapsed, "total_tokens": tokens(&run.query) + tokens(text),
        "total_steps": 2, "created_at": run.created_at, "finished_at": chrono::Utc::now().timestamp()})
}

fn usage(run: &Run, text: &str, elapsed: f64) -> Value {
    let (prompt, completion) = (tokens(&run.query), tokens(text));
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "total_price": "0", "currency": "USD", "latency": elapsed})
}

/// A rough token count: one per four characters, at least one.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// Splits `text` into exactly `n` pieces of near-equal length (some empty if it is short).
pub(super) fn split(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1);
    (0..n)
        .map(|i| {
            chars[i * chars.len() / n..(i + 1) * chars.len() / n]
                .iter()
                .collect()
        })
        .collect()
}

/// The JSON `GET /messages` shows for one message.
pub(super) fn message_json(conversation_id: &str, m: &Message) -> Value {
    json!({"id": m.id, "conversation_id": conversation_id, "parent_message_id": null,
        "inputs": m.inputs, "query": m.query, "answer": if m.done { m.answer.as_str() } else { "" },
        "message_files": [], "feedback": null, "retriever_resources": [], "agent_thoughts": [],
        "created_at": m.created_at, "status": if m.error.is_some() { "error" } else { "normal" },
        "error": m.error})
}

/// The JSON `GET /workflows/run/{id}` shows.
pub(super) fn workflow_run_json(id: &str, wf: &WorkflowRun) -> Value {
    json!({"id": id, "workflow_id": "wf-standin", "status": wf.status, "inputs": wf.inputs,
        "outputs": wf.outputs, "error": wf.error, "total_steps": 2, "total_tokens": 0,
        "created_at": wf.created_at, "finished_at": wf.finished_at, "elapsed_time": wf.elapsed})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(conversation_id: Option<&str>) -> Run {
        Run {
            endpoint: Endpoint::Chat,
            task_id: "task-1".into(),
            message_id: Some("msg-1".into()),
            conversation_id: conversation_id.map(str::to_owned),
            message_index: 0,
            workflow_run_id: None,
            query: "q".into(),
            answer: "a".into(),
            error_mid_stream: false,
            stop: Arc::default(),
            created_at: 1_700_000_000,
        }
    }

    #[test]
    fn a_streamed_chunk_is_the_message_event_written_directly() {
        for conversation in [Some("conv-1"), None] {
            let run = run(conversation);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let piece = "é \"quoted\"\n";
            Sink::Stream(tx).message_chunk(&run, piece);
            let line = rx.try_recv().expect("one chunk");
            let text = std::str::from_utf8(&line).expect("utf-8");
            let json = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .expect("one server-sent event");
            let written: Value = serde_json::from_str(json).expect("JSON");
            assert_eq!(written, message_event(&run, "message", piece));
        }
    }

    #[test]
    fn split_gives_n_pieces_that_join_to_the_text() {
        for (text, n) in [("echo: hello", 20), ("échø", 3), ("", 4), ("abc", 1)] {
            let pieces = split(text, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), text);
        }
    }
}
