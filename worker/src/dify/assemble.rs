//! Turns what Dify sends into an [`Answer`]: the events of a stream, one at a time
//! ([`Assembler`]), or a blocking JSON answer ([`blocking_answer`]). It tracks the ids Dify reveals
//! (task, message, conversation, workflow run) so they can be recorded before the answer is
//! complete, appends `message`/`agent_message` chunks, honours `message_replace`, takes usage
//! from `message_end` and outputs from `workflow_finished`, and turns an `error` event into
//! [`DifyError::Stream`]. Each event is read as only the fields it needs (`stream_event`); the
//! rare ones whose nested content is kept are read whole. Pure: the client feeds it parsed
//! events and asks for the result.
use super::error::DifyError;
use super::stream_event::StreamEvent;
use super::DifyIds;
use serde_json::{Map, Value};
use shared::config::AppKind;
use shared::envelope::Answer;

/// The state of one streamed answer.
#[derive(Debug)]
pub(crate) struct Assembler {
    kind: AppKind,
    text: String,
    /// Workflow `text_chunk`s: the answer when the outputs hold no text.
    streamed: String,
    ids: DifyIds,
    usage: Option<Value>,
    /// `workflow_finished`'s `data`.
    workflow: Option<Value>,
    message_ended: bool,
}

impl Assembler {
    pub(crate) fn new(kind: AppKind) -> Self {
        Self {
            kind,
            text: String::new(),
            streamed: String::new(),
            ids: DifyIds::default(),
            usage: None,
            workflow: None,
            message_ended: false,
        }
    }

    pub(crate) fn ids(&self) -> &DifyIds {
        &self.ids
    }

    /// The answer's text as written so far: the message text (a workflow's `text_chunk`s).
    pub(crate) fn text_so_far(&self) -> &str {
        match self.kind {
            AppKind::Workflow => &self.streamed,
            AppKind::Chat | AppKind::Completion => &self.text,
        }
    }

    /// The answer has arrived: `message_end` for chat and completion apps (a chatflow may still
    /// send `workflow_finished` after it), `workflow_finished` for workflows.
    pub(crate) fn is_complete(&self) -> bool {
        match self.kind {
            AppKind::Chat | AppKind::Completion => self.message_ended,
            AppKind::Workflow => self.workflow.is_some(),
        }
    }

    /// Takes one event's data. Returns whether it revealed a new id.
    pub(crate) fn on_event(&mut self, data: &str) -> Result<bool, DifyError> {
        let v: StreamEvent<'_> = serde_json::from_str(data)
            .map_err(|e| DifyError::Protocol(format!("a stream event is not JSON: {e}")))?;
        let event = v.event.as_str().unwrap_or_default();
        let revealed = self.take_ids(event, &v);
        match event {
            "message" | "agent_message" => {
                push_bounded(&mut self.text, v.answer.as_str().unwrap_or_default());
            }
            "message_replace" => {
                self.text = v.answer.as_str().unwrap_or_default().to_owned();
            }
            "message_end" => {
                self.message_ended = true;
                self.usage = whole(data).pointer("/metadata/usage").cloned();
            }
            "text_chunk" => {
                push_bounded(&mut self.streamed, v.data.text.as_str().unwrap_or_default());
            }
            "workflow_finished" => {
                self.workflow = Some(whole(data).get("data").cloned().unwrap_or(Value::Null));
            }
            // After the answer is complete Dify has recorded it; a late error must not make us
            // call again.
            "error" if self.is_complete() => {
                tracing::warn!(error = %data_excerpt(data), "Dify sent an error after the answer; keeping the answer");
            }
            "error" => return Err(stream_error(&whole(data))),
            // ping, workflow_started, node_*, agent_thought, message_file, tts_*: nothing to keep.
            _ => {}
        }
        Ok(revealed)
    }

    /// Takes the ids `v` reveals; says whether one was new.
    fn take_ids(&mut self, event: &str, v: &StreamEvent<'_>) -> bool {
        let ids = &mut self.ids;
        let mut revealed = set_id(&mut ids.task_id, v.task_id.as_str());
        revealed |= set_id(&mut ids.workflow_run_id, v.workflow_run_id.as_str());
        revealed |= set_id(&mut ids.conversation_id, v.conversation_id.as_str());
        // A top-level `id` is the message's only in message events (elsewhere it may be a
        // thought's or a file's).
        let message_id = v.message_id.as_str().or(match event {
            "message" | "agent_message" | "message_end" | "message_replace" => v.id.as_str(),
            _ => None,
        });
        revealed |= set_id(&mut ids.message_id, message_id);
        if event == "workflow_started" {
            revealed |= set_id(&mut ids.workflow_run_id, v.data.id.as_str());
        }
        revealed
    }

    /// The answer, once the stream has ended.
    pub(crate) fn finish(self, answer_output: Option<&str>) -> Result<Answer, DifyError> {
        let ids = self.ids;
        match self.kind {
            AppKind::Workflow => {
                let data = self.workflow.ok_or_else(|| {
                    DifyError::Protocol("the stream ended before workflow_finished".into())
                })?;
                let run = workflow_result(&data, answer_output, &self.streamed)?;
                Ok(answer_with(ids, run.text, run.usage, Some(run.outputs)))
            }
            AppKind::Chat | AppKind::Completion if self.message_ended => {
                Ok(answer_with(ids, self.text, self.usage, None))
            }
            AppKind::Chat | AppKind::Completion => match &self.workflow {
                // A chatflow whose workflow failed may end without `message_end`.
                Some(data) => Err(workflow_result(data, None, "")
                    .err()
                    .unwrap_or_else(|| ended_early("message_end"))),
                None => Err(ended_early("message_end")),
            },
        }
    }
}

fn ended_early(what: &str) -> DifyError {
    DifyError::Protocol(format!("the stream ended before {what}"))
}

fn data_excerpt(data: &str) -> String {
    data.chars().take(200).collect()
}

fn str_of<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// Keeps a non-empty id; says whether it was new.
fn set_id(slot: &mut Option<String>, value: Option<&str>) -> bool {
    match value.filter(|s| !s.is_empty()) {
        Some(id) if slot.as_deref() != Some(id) => {
            *slot = Some(id.to_owned());
            true
        }
        _ => false,
    }
}

/// An event read whole, for the rare ones whose nested content is kept. `data` has been read
/// as JSON already, so this cannot fail; an impossible failure reads as `null`.
fn whole(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_default()
}

fn stream_error(v: &Value) -> DifyError {
    DifyError::Stream {
        status: v
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok()),
        code: str_of(v, "code").map(str::to_owned),
        message: str_of(v, "message").unwrap_or_default().to_owned(),
    }
}

/// A streamed text stops growing past this (Dify's whole answer, 16 MiB, and a byte): the
/// worker's `max_answer_bytes` cuts it with its marker later; memory is bounded meanwhile.
pub(crate) const MAX_STREAMED_TEXT: usize = (16 << 20) + 1;

fn push_bounded(text: &mut String, more: &str) {
    let mut room = MAX_STREAMED_TEXT.saturating_sub(text.len()).min(more.len());
    while !more.is_char_boundary(room) {
        room -= 1;
    }
    text.push_str(&more[..room]);
}

fn answer_with(ids: DifyIds, text: String, usage: Option<Value>, outputs: Option<Value>) -> Answer {
    Answer {
        text,
        conversation_id: ids.conversation_id,
        message_id: ids.message_id,
        task_id: ids.task_id,
        workflow_run_id: ids.workflow_run_id,
        usage,
        outputs,
    }
}

/// A workflow run that succeeded, reduced to what an answer keeps.
#[derive(Debug, PartialEq)]
pub(crate) struct WorkflowResult {
    pub text: String,
    pub outputs: Value,
    pub usage: Option<Value>,
}

/// Reads a workflow run (`workflow_finished`'s `data`, a blocking answer's `data`, or
/// `GET /workflows/run/{id}`): failed and stopped runs are errors; otherwise the answer text.
pub(crate) fn workflow_result(
    data: &Value,
    answer_output: Option<&str>,
    streamed: &str,
) -> Result<WorkflowResult, DifyError> {
    let status = str_of(data, "status").unwrap_or_default();
    if matches!(status, "failed" | "stopped") {
        return Err(DifyError::WorkflowFailed {
            status: status.to_owned(),
            error: str_of(data, "error").map(str::to_owned),
        });
    }
    let outputs = match data.get("outputs") {
        // Older Dify versions send the outputs as a JSON string.
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
        Some(v) => v.clone(),
        None => Value::Null,
    };
    let text = workflow_text(&outputs, answer_output, streamed)?;
    let usage: Map<String, Value> = ["total_tokens", "total_steps", "elapsed_time"]
        .iter()
        .filter_map(|k| data.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    Ok(WorkflowResult {
        text,
        outputs,
        usage: (!usage.is_empty()).then_some(Value::Object(usage)),
    })
}

/// The answer text of a workflow: the configured output, else `answer`, else `text`, else the
/// only string output, else the streamed text chunks, else the outputs as JSON.
pub(crate) fn workflow_text(
    outputs: &Value,
    answer_output: Option<&str>,
    streamed: &str,
) -> Result<String, DifyError> {
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let get = |name: &str| outputs.get(name).filter(|v| !v.is_null());
    if let Some(name) = answer_output {
        return get(name)
            .map(as_text)
            .ok_or_else(|| DifyError::MissingOutput {
                name: name.to_owned(),
            });
    }
    if let Some(v) = get("answer").or_else(|| get("text")) {
        return Ok(as_text(v));
    }
    let strings: Vec<&str> = outputs
        .as_object()
        .map(|m| m.values().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let [only] = strings.as_slice() {
        return Ok((*only).to_owned());
    }
    if !streamed.is_empty() {
        return Ok(streamed.to_owned());
    }
    Ok(match outputs {
        Value::Null => String::new(),
        Value::Object(m) if m.is_empty() => String::new(),
        other => other.to_string(),
    })
}

/// Reads a blocking answer.
pub(crate) fn blocking_answer(
    kind: AppKind,
    body: &Value,
    answer_output: Option<&str>,
) -> Result<Answer, DifyError> {
    let mut ids = DifyIds::default();
    set_id(&mut ids.task_id, str_of(body, "task_id"));
    match kind {
        AppKind::Workflow => {
            set_id(&mut ids.workflow_run_id, str_of(body, "workflow_run_id"));
            let data = body
                .get("data")
                .ok_or_else(|| DifyError::Protocol("a workflow answer without data".into()))?;
            set_id(&mut ids.workflow_run_id, str_of(data, "id"));
            let run = workflow_result(data, answer_output, "")?;
            Ok(answer_with(ids, run.text, run.usage, Some(run.outputs)))
        }
        AppKind::Chat | AppKind::Completion => {
            let text = str_of(body, "answer")
                .ok_or_else(|| DifyError::Protocol("an answer without `answer`".into()))?;
            set_id(
                &mut ids.message_id,
                str_of(body, "message_id").or_else(|| str_of(body, "id")),
            );
            set_id(&mut ids.conversation_id, str_of(body, "conversation_id"));
            let usage = body.pointer("/metadata/usage").cloned();
            Ok(answer_with(ids, text.to_owned(), usage, None))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_text_stops_growing_at_the_bound() {
        let mut t = "x".repeat(MAX_STREAMED_TEXT - 1);
        push_bounded(&mut t, "é more");
        assert_eq!(t.len(), MAX_STREAMED_TEXT - 1, "é does not fit whole");
        let mut t = String::new();
        push_bounded(&mut t, "abc");
        assert_eq!(t, "abc");
    }
    use serde_json::json;

    fn usage(tokens: u64) -> Value {
        json!({"total_tokens": tokens})
    }

    fn feed(kind: AppKind, events: &[Value]) -> (Assembler, Vec<DifyIds>, Option<DifyError>) {
        let mut a = Assembler::new(kind);
        let mut seen = Vec::new();
        for e in events {
            match a.on_event(&e.to_string()) {
                Ok(true) => seen.push(a.ids().clone()),
                Ok(false) => {}
                Err(err) => return (a, seen, Some(err)),
            }
        }
        (a, seen, None)
    }

    #[test]
    fn chat_stream_appends_replaces_and_ends_with_usage_and_ids() {
        let events = [
            json!({"event": "message", "task_id": "t1", "id": "m1", "message_id": "m1", "conversation_id": "c1", "answer": "Hel"}),
            json!({"event": "agent_thought", "id": "th1", "message_id": "m1", "thought": "x"}),
            json!({"event": "message", "task_id": "t1", "message_id": "m1", "conversation_id": "c1", "answer": "lo"}),
            json!({"event": "message_replace", "task_id": "t1", "answer": "Hi"}),
            json!({"event": "agent_message", "task_id": "t1", "answer": "!"}),
            json!({"event": "tts_message", "audio": "..."}),
            json!({"event": "message_end", "task_id": "t1", "id": "m1", "conversation_id": "c1", "metadata": {"usage": usage(9)}}),
            json!({"event": "error", "status": 500, "code": "late", "message": "ignored"}),
        ];
        let (a, seen, err) = feed(AppKind::Chat, &events);
        assert!(err.is_none());
        assert_eq!(seen.len(), 1, "all ids came with the first event: {seen:?}");
        assert_eq!(seen[0].message_id.as_deref(), Some("m1"));
        let answer = a.finish(None).unwrap();
        assert_eq!(answer.text, "Hi!");
        assert_eq!(answer.conversation_id.as_deref(), Some("c1"));
        assert_eq!(answer.task_id.as_deref(), Some("t1"));
        assert_eq!(answer.usage, Some(usage(9)));
    }

    #[test]
    fn workflow_stream_takes_outputs_and_run_id() {
        let events = [
            json!({"event": "workflow_started", "task_id": "t", "workflow_run_id": "r", "data": {"id": "r"}}),
            json!({"event": "node_started", "task_id": "t", "workflow_run_id": "r", "data": {"id": "n"}}),
            json!({"event": "text_chunk", "task_id": "t", "workflow_run_id": "r", "data": {"text": "ab"}}),
            json!({"event": "workflow_finished", "task_id": "t", "workflow_run_id": "r", "data": {"id": "r", "status": "succeeded", "outputs": {"answer": "ab", "n": 1}, "total_tokens": 3}}),
        ];
        let (a, _, err) = feed(AppKind::Workflow, &events);
        assert!(err.is_none() && a.is_complete());
        let answer = a.finish(None).unwrap();
        assert_eq!(answer.text, "ab");
        assert_eq!(answer.workflow_run_id.as_deref(), Some("r"));
        assert_eq!(answer.outputs, Some(json!({"answer": "ab", "n": 1})));
        assert_eq!(answer.usage, Some(usage(3)));
    }

    #[test]
    fn an_error_event_before_the_end_is_a_stream_error() {
        let events = [
            json!({"event": "message", "message_id": "m", "answer": "a"}),
            json!({"event": "error", "message_id": "m", "status": 400, "code": "completion_request_error", "message": "model failed"}),
        ];
        let (_, seen, err) = feed(AppKind::Chat, &events);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            err,
            Some(DifyError::Stream {
                status: Some(400),
                code: Some("completion_request_error".into()),
                message: "model failed".into()
            })
        );
    }

    #[test]
    fn streams_that_end_early_or_fail_are_errors() {
        let (a, _, _) = feed(AppKind::Chat, &[json!({"event": "message", "answer": "a"})]);
        assert!(matches!(a.finish(None), Err(DifyError::Protocol(_))));
        let (a, _, _) = feed(AppKind::Workflow, &[json!({"event": "workflow_started"})]);
        assert!(matches!(a.finish(None), Err(DifyError::Protocol(_))));
        let failed =
            json!({"event": "workflow_finished", "data": {"status": "failed", "error": "node x"}});
        for kind in [AppKind::Workflow, AppKind::Chat] {
            let (a, _, _) = feed(kind, std::slice::from_ref(&failed));
            assert_eq!(
                a.finish(None),
                Err(DifyError::WorkflowFailed {
                    status: "failed".into(),
                    error: Some("node x".into())
                })
            );
        }
    }

    #[test]
    fn workflow_answer_text_choice() {
        type Row<'a> = (Value, Option<&'a str>, &'a str, Result<&'a str, ()>);
        let table: &[Row] = &[
            (
                json!({"reply": "r", "answer": "a"}),
                Some("reply"),
                "",
                Ok("r"),
            ),
            (json!({"reply": 5}), Some("reply"), "", Ok("5")),
            (json!({"answer": "a"}), Some("reply"), "", Err(())),
            (json!({"answer": "a", "text": "t"}), None, "", Ok("a")),
            (json!({"text": "t", "x": "y"}), None, "", Ok("t")),
            (json!({"only": "o", "n": 1}), None, "", Ok("o")),
            (
                json!({"a": "1", "b": "2"}),
                None,
                "streamed",
                Ok("streamed"),
            ),
            (json!({"n": 1}), None, "", Ok("{\"n\":1}")),
            (json!({}), None, "", Ok("")),
            (Value::Null, None, "", Ok("")),
        ];
        for (outputs, configured, streamed, expected) in table {
            let got = workflow_text(outputs, *configured, streamed).map_err(|_| ());
            assert_eq!(
                got.as_deref(),
                expected.as_deref(),
                "{outputs} {configured:?}"
            );
        }
    }

    #[test]
    fn blocking_answers_of_each_kind() {
        let chat = json!({"event": "message", "task_id": "t", "id": "m", "message_id": "m", "conversation_id": "c", "mode": "chat", "answer": "hi", "metadata": {"usage": usage(2)}});
        let a = blocking_answer(AppKind::Chat, &chat, None).unwrap();
        assert_eq!(
            (
                a.text.as_str(),
                a.message_id.as_deref(),
                a.conversation_id.as_deref()
            ),
            ("hi", Some("m"), Some("c"))
        );
        let completion = json!({"event": "message", "task_id": "t", "id": "m", "answer": "done"});
        let a = blocking_answer(AppKind::Completion, &completion, None).unwrap();
        assert_eq!((a.text.as_str(), a.conversation_id), ("done", None));
        let workflow = json!({"task_id": "t", "workflow_run_id": "r", "data": {"id": "r", "status": "succeeded", "outputs": "{\"text\": \"w\"}"}});
        let a = blocking_answer(AppKind::Workflow, &workflow, None).unwrap();
        assert_eq!(
            (a.text.as_str(), a.workflow_run_id.as_deref()),
            ("w", Some("r"))
        );
        let stopped = json!({"task_id": "t", "data": {"status": "stopped"}});
        assert!(matches!(
            blocking_answer(AppKind::Workflow, &stopped, None),
            Err(DifyError::WorkflowFailed { .. })
        ));
        assert!(matches!(
            blocking_answer(AppKind::Chat, &json!({}), None),
            Err(DifyError::Protocol(_))
        ));
    }
}
