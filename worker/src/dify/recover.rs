//! Resume instead of re-run: given the ids a worker recorded before it died, ask Dify whether
//! that run finished and, if so, take its answer — so the event is answered without running the
//! model again. Workflow runs are read with `GET /workflows/run/{id}`; chat answers are found in
//! the conversation's `GET /messages` by their message id (chatflows without a recorded message
//! id fall back to their workflow run). Completion apps reveal no conversation, so their runs
//! cannot be found. These are light reads: they take no concurrency permit.
use super::assemble::workflow_result;
use super::client::{
    chain, endpoint, error_answer, is_safe_id, read_capped, transport_error, DifyClient,
};
use super::error::DifyError;
use super::DifyIds;
use serde_json::Value;
use shared::config::{AppConfig, AppKind};
use shared::envelope::Answer;
use tokio::time::{timeout_at, Instant};

/// The most of a recovery answer (`GET /messages`, `/workflows/run/{id}`) that is read: a run's
/// record holds one answer and its outputs, well within Dify's own 16 MiB answer cap.
pub(crate) const MAX_RECOVERY_BYTES: usize = super::client::MAX_BODY_BYTES;

/// How many of a conversation's latest messages are searched for the lost one (Dify's maximum).
const MESSAGES_PAGE: &str = "100";

/// What Dify knows about a run a worker started.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// It finished; this is its answer.
    Finished(Answer),
    /// It is still running: wait and ask again rather than start another.
    Running,
    /// It ended without an answer (failed, stopped, or an error message).
    Failed {
        status: String,
        error: Option<String>,
    },
    /// Dify does not know it, or the ids are not enough to find it.
    Unknown,
}

impl DifyClient {
    /// `Ok(Some(answer))` when the run behind `ids` finished; `Ok(None)` when it is unknown,
    /// unfinished or failed. See [`DifyClient::run_state`] to tell those apart.
    pub async fn recover(
        &self,
        app: &AppConfig,
        user: &str,
        ids: &DifyIds,
    ) -> Result<Option<Answer>, DifyError> {
        Ok(match self.run_state(app, user, ids).await? {
            RunState::Finished(answer) => Some(answer),
            RunState::Running | RunState::Failed { .. } | RunState::Unknown => None,
        })
    }

    /// What Dify knows about the run behind `ids`.
    pub async fn run_state(
        &self,
        app: &AppConfig,
        user: &str,
        ids: &DifyIds,
    ) -> Result<RunState, DifyError> {
        let by_message = match (app.kind, &ids.conversation_id, &ids.message_id) {
            (AppKind::Chat | AppKind::Completion, Some(c), Some(m)) => Some((c, m)),
            _ => None,
        };
        if let Some((conversation_id, message_id)) = by_message {
            return self
                .message_state(app, user, conversation_id, message_id, ids)
                .await;
        }
        match (app.kind, &ids.workflow_run_id) {
            (AppKind::Workflow | AppKind::Chat, Some(run_id)) => {
                self.workflow_state(app, run_id, ids).await
            }
            _ => Ok(RunState::Unknown),
        }
    }

    async fn workflow_state(
        &self,
        app: &AppConfig,
        run_id: &str,
        ids: &DifyIds,
    ) -> Result<RunState, DifyError> {
        if !is_safe_id(run_id) {
            return Ok(RunState::Unknown);
        }
        let Some(run) = self
            .get_json(app, &format!("workflows/run/{run_id}"), &[])
            .await?
        else {
            return Ok(RunState::Unknown);
        };
        Ok(workflow_run_state(
            &run,
            app.kind,
            app.answer_output.as_deref(),
            ids,
        ))
    }

    async fn message_state(
        &self,
        app: &AppConfig,
        user: &str,
        conversation_id: &str,
        message_id: &str,
        ids: &DifyIds,
    ) -> Result<RunState, DifyError> {
        let query = [
            ("conversation_id", conversation_id),
            ("user", user),
            ("limit", MESSAGES_PAGE),
        ];
        let Some(page) = self.get_json(app, "messages", &query).await? else {
            return Ok(RunState::Unknown);
        };
        Ok(message_run_state(&page, message_id, ids))
    }

    /// GETs a JSON answer; `None` when Dify says 404 (the run or conversation is unknown).
    async fn get_json(
        &self,
        app: &AppConfig,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<Value>, DifyError> {
        let key = app.api_key.expose();
        let deadline = Instant::now() + app.timeout;
        let request = self
            .inner
            .http
            .get(endpoint(app, path)?)
            .query(query)
            .bearer_auth(key);
        let response = timeout_at(deadline, request.send())
            .await
            .map_err(|_| DifyError::Timeout)?
            .map_err(|e| transport_error(&e, key))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(error_answer(response, deadline, key).await);
        }
        let (bytes, truncated) = timeout_at(deadline, read_capped(response, MAX_RECOVERY_BYTES))
            .await
            .map_err(|_| DifyError::Timeout)?
            .map_err(|e| DifyError::Protocol(format!("reading the answer: {}", chain(&e, key))))?;
        if truncated {
            return Err(DifyError::Protocol(format!(
                "the answer is larger than {MAX_RECOVERY_BYTES} bytes"
            )));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DifyError::Protocol(format!("the answer is not JSON: {e}")))
    }
}

/// Reads `GET /workflows/run/{id}`.
pub(crate) fn workflow_run_state(
    run: &Value,
    kind: AppKind,
    answer_output: Option<&str>,
    ids: &DifyIds,
) -> RunState {
    let status = run
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if matches!(status, "running" | "") {
        return RunState::Running;
    }
    match workflow_result(run, answer_output, "") {
        Ok(result) => RunState::Finished(Answer {
            text: result.text,
            conversation_id: ids.conversation_id.clone(),
            message_id: ids.message_id.clone(),
            task_id: ids.task_id.clone(),
            workflow_run_id: run
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| ids.workflow_run_id.clone()),
            usage: result.usage,
            // A chatflow's answer is its message; outputs belong to workflow apps.
            outputs: (kind == AppKind::Workflow).then_some(result.outputs),
        }),
        Err(DifyError::WorkflowFailed { status, error }) => RunState::Failed { status, error },
        // The run finished but its outputs lack the configured answer: nothing to resume.
        Err(e) => RunState::Failed {
            status: status.to_owned(),
            error: Some(e.to_string()),
        },
    }
}

/// Finds `message_id` in a `GET /messages` page (in whatever order Dify lists it).
pub(crate) fn message_run_state(page: &Value, message_id: &str, ids: &DifyIds) -> RunState {
    let found = page
        .get("data")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .find(|m| m.get("id").and_then(Value::as_str) == Some(message_id))
        });
    let Some(message) = found else {
        return RunState::Unknown;
    };
    let str_of = |k: &str| message.get(k).and_then(Value::as_str);
    if str_of("status") == Some("error") {
        return RunState::Failed {
            status: "error".into(),
            error: str_of("error").map(str::to_owned),
        };
    }
    // Dify writes the message when the run starts and its answer when it ends.
    match str_of("answer").filter(|a| !a.is_empty()) {
        None => RunState::Running,
        Some(answer) => RunState::Finished(Answer {
            text: answer.to_owned(),
            conversation_id: str_of("conversation_id")
                .map(str::to_owned)
                .or_else(|| ids.conversation_id.clone()),
            message_id: Some(message_id.to_owned()),
            task_id: ids.task_id.clone(),
            workflow_run_id: ids.workflow_run_id.clone(),
            usage: None,
            outputs: None,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids() -> DifyIds {
        DifyIds {
            task_id: Some("t".into()),
            message_id: Some("m2".into()),
            conversation_id: Some("c".into()),
            workflow_run_id: None,
        }
    }

    #[test]
    fn messages_page_states() {
        let page = |m2: Value| {
            json!({"limit": 100, "has_more": false, "data": [
            {"id": "m1", "conversation_id": "c", "answer": "old"}, m2]})
        };
        let table = [
            (
                page(json!({"id": "m2", "conversation_id": "c", "answer": "new"})),
                "finished",
            ),
            (
                page(json!({"id": "m2", "conversation_id": "c", "answer": ""})),
                "running",
            ),
            (
                page(json!({"id": "m2", "status": "error", "error": "x", "answer": ""})),
                "failed",
            ),
            (page(json!({"id": "m3", "answer": "other"})), "unknown"),
            (json!({"data": null}), "unknown"),
        ];
        for (page, expected) in table {
            let state = message_run_state(&page, "m2", &ids());
            let name = match &state {
                RunState::Finished(a) => {
                    assert_eq!(a.text, "new");
                    assert_eq!(a.task_id.as_deref(), Some("t"));
                    "finished"
                }
                RunState::Running => "running",
                RunState::Failed { .. } => "failed",
                RunState::Unknown => "unknown",
            };
            assert_eq!(name, expected, "{page}");
        }
    }

    #[test]
    fn workflow_run_states() {
        let run = |status: &str| json!({"id": "r", "status": status, "outputs": {"answer": "a"}, "error": null});
        let ids = DifyIds::default();
        assert_eq!(
            workflow_run_state(&run("running"), AppKind::Workflow, None, &ids),
            RunState::Running
        );
        match workflow_run_state(&run("succeeded"), AppKind::Workflow, None, &ids) {
            RunState::Finished(a) => {
                assert_eq!(
                    (a.text.as_str(), a.workflow_run_id.as_deref()),
                    ("a", Some("r"))
                );
                assert_eq!(a.outputs, Some(json!({"answer": "a"})));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            workflow_run_state(&run("stopped"), AppKind::Workflow, None, &ids),
            RunState::Failed { .. }
        ));
        assert!(matches!(
            workflow_run_state(&run("succeeded"), AppKind::Workflow, Some("nope"), &ids),
            RunState::Failed { .. }
        ));
    }
}
