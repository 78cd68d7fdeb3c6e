//! The worker's Dify client: one call to a Dify app (chat, workflow or completion; blocking or
//! streaming) per [`DifyClient::call`], with per-app concurrency caps, a whole-call timeout and
//! Dify's ids reported as soon as they are known; [`classify`] to decide what a failure means;
//! [`build_inputs`] to map an event onto the app's inputs; and [`DifyClient::recover`] to take
//! the answer of a run a dead worker started instead of running it again. It never retries by
//! itself and never touches Redis or the broker: idempotency and retries belong to the caller.
mod assemble;
mod classify;
mod client;
mod error;
mod inputs;
mod recover;
pub mod sse;
mod stream_event;

pub use classify::{classify, parse_retry_after, ErrorClass};
pub use client::{validate_trace_id, DifyClient};
pub use error::{DifyError, MAX_MESSAGE};
pub use inputs::{build_inputs, validate_inputs, InputField};
pub use recover::RunState;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shared::config::AppConfig;
use shared::envelope::Answer;

/// What one call sends.
#[derive(Debug, Clone)]
pub struct DifyCall<'a> {
    pub app: &'a AppConfig,
    /// The user's text (`query` for chat apps; `inputs.query` for completion and workflow apps
    /// unless the inputs already hold one).
    pub query: &'a str,
    pub inputs: Map<String, Value>,
    /// Dify's `user`: conversations are scoped to it.
    pub user: &'a str,
    /// The conversation to continue; `None` (or empty) starts a new one. Chat apps only.
    pub conversation_id: Option<&'a str>,
    /// Sent as `X-Trace-Id`: the event id, so a run in Dify's logs can be tied to its event.
    pub trace_id: &'a str,
}

/// The ids Dify gives a run, recorded so that a run can be found again after a worker dies.
#[derive(Default, Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DifyIds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run_id: Option<String>,
}

impl DifyIds {
    /// No id is known yet: nothing could be recovered.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl From<&Answer> for DifyIds {
    fn from(answer: &Answer) -> Self {
        Self {
            task_id: answer.task_id.clone(),
            message_id: answer.message_id.clone(),
            conversation_id: answer.conversation_id.clone(),
            workflow_run_id: answer.workflow_run_id.clone(),
        }
    }
}
