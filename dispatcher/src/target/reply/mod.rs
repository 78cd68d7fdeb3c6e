//! Replies into the conversation an event came from (`Destination::Reply`): one channel per
//! source with `reply = true`, built from the source's own keys (the same keys the ingress reads
//! for that platform, so unknown keys are the ingress's to refuse, not ours). Each platform
//! module renders the answer, sends it with the job's [`ReplyHandle`] (fetching the app's access
//! token through [`crate::tokens`] where the platform needs one) and classifies the answer.
//!
//! [`ReplyHandle`]: shared::envelope::ReplyHandle
use super::parts::local_outcome;
use super::{Outcome, Target, Verdict};
use shared::config::{ConfigIssue, SourceConfig};
use std::sync::Arc;

/// Builds the reply channel of a source that answers into its conversations.
pub fn build(source: &SourceConfig) -> Result<Arc<dyn Target>, Vec<ConfigIssue>> {
    Err(vec![ConfigIssue {
        key: format!("sources.{}.reply", source.id),
        problem: format!(
            "platform `{}` has no conversation to reply into",
            source.platform
        ),
    }])
}

/// The outcome for a job whose reply handle belongs to another platform than the source's.
#[allow(dead_code)]
pub(crate) fn wrong_handle(kind: &str) -> Outcome {
    local_outcome(
        Verdict::Permanent,
        format!("the job's reply handle is not a `{kind}` handle"),
    )
}
