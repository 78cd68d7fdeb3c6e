//! Recovering a run a dead worker left behind: before considering a new call, ask Dify about the
//! run whose ids the previous claim recorded. Its answer is taken if it finished; if it may still
//! be going the event waits rather than start a second run; only a run that failed, or that
//! cannot have finished within the app's timeout, is called again (the one window of
//! docs/GUARANTEES.md where Dify is called twice). Must not publish anything.
use super::Worker;
use crate::dify::{DifyIds, RunState};
use crate::idempotency::RunIds;
use shared::config::AppConfig;
use shared::envelope::Answer;

/// What became of the previous claim's run.
pub(super) enum Resume {
    /// It finished: its answer.
    Answer(Box<Answer>),
    /// It may still be going in Dify: wait for it.
    Wait,
    /// It cannot give an answer any more: call Dify again.
    CallAgain,
}

impl Worker {
    /// Asks Dify for the run a dead worker left behind (`prev`, recorded under the claim `key`
    /// that this worker now holds with `token`).
    pub(super) async fn resume(
        &self,
        app: &AppConfig,
        key: &str,
        token: i64,
        prev: &RunIds,
    ) -> Resume {
        let user = prev.user.clone().unwrap_or_default();
        let ids = DifyIds {
            task_id: prev.task_id.clone(),
            message_id: prev.message_id.clone(),
            conversation_id: prev.conversation_id.clone(),
            workflow_run_id: prev.workflow_run_id.clone(),
        };
        let state = match self.dify.run_state(app, &user, &ids).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "could not ask Dify about the previous run");
                RunState::Unknown
            }
        };
        match state {
            RunState::Finished(answer) => {
                tracing::info!(
                    "recovered the answer of a run a previous worker started; not calling again"
                );
                metrics::counter!("switchboard_worker_events_total", "outcome" => "recovered")
                    .increment(1);
                Resume::Answer(Box::new(answer))
            }
            RunState::Running => Resume::Wait,
            RunState::Failed { status, .. } => {
                // The previous run ended without an answer: a new call is the retry it needs.
                tracing::info!(%status, "the previous run failed in Dify; calling again");
                let _ = self.idem.record_ids(key, token, &RunIds::default()).await;
                Resume::CallAgain
            }
            RunState::Unknown => {
                let age_ms = chrono::Utc::now().timestamp_millis() - prev.started_ms.unwrap_or(0);
                let budget = (app.timeout + self.idem.lease()).as_millis() as i64;
                if age_ms < budget {
                    // Dify may not list a message until it is complete: wait for it.
                    Resume::Wait
                } else {
                    // Past the app's timeout the previous run cannot finish any more: this is
                    // the one window where Dify is called a second time (docs/GUARANTEES.md).
                    let _ = self.idem.record_ids(key, token, &RunIds::default()).await;
                    tracing::warn!(
                        "previous run not found in Dify after its timeout; calling again"
                    );
                    Resume::CallAgain
                }
            }
        }
    }
}
