//! The dead-letter store as auditors see it: `switchboard dlq list | show | export | stats |
//! replay | audit`. Dead letters live in the `{prefix}.dead-letters` stream — `DeadLetter`
//! envelopes from the worker and the dispatcher, and raw messages the broker gave up on
//! (poison) — and are read from any offset or time without being consumed. Every replay
//! appends its record to the `{prefix}.replays` stream, which `dlq audit` lists and `dlq list`
//! joins. This crate never publishes dead letters (the stages do, through `shared`) and never
//! deletes any; it uses nothing of the roles, and the binary mounts its command line.
//!
//! Pure logic (reading entries, filters, replay plans, records, rendering) is kept apart from
//! the broker I/O ([`store`], [`execute`]) and the command line ([`cli`]).
#![forbid(unsafe_code)]

pub mod audit;
pub mod chain;
pub mod cli;
pub mod execute;
pub mod filter;
pub mod record;
pub mod render;
pub mod replay;
pub mod report;
pub mod store;
pub mod trail;

use std::process::ExitCode;

/// What stops a dead-letter command; each reads as one line.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot reach the broker at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("there is no `{0}` stream on the broker (run `switchboard topology`, or check [broker] prefix)")]
    NoStream(String),
    #[error("no dead letter with id {0}")]
    UnknownIds(String),
    #[error("no replay with id {0}")]
    UnknownReplay(uuid::Uuid),
    #[error("no dead letter matches {0}")]
    NothingMatched(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("broker error: {0}")]
    Broker(String),
    #[error("redis error: {0}")]
    Redis(String),
    #[error("the broker stopped sending `{0}` before its end (nothing for 30s)")]
    Stalled(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{failed} of {total} dead letters could not be replayed (see `switchboard dlq audit {replay_id}`)")]
    ReplayFailed {
        failed: u64,
        total: u64,
        replay_id: uuid::Uuid,
    },
    #[error("the replay record's chain is broken: {0}")]
    ChainBroken(String),
    #[error("replay {replay_id} interrupted after {sent} of {total} (on record; run it again to send the rest)")]
    Interrupted {
        sent: u64,
        total: u64,
        replay_id: uuid::Uuid,
    },
}

impl DlqError {
    /// The exit status: 2 usage, 3 broker, 4 not found, 5 refused, 1 the rest.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            DlqError::Usage(_) => 2,
            DlqError::Unreachable { .. }
            | DlqError::NoStream(_)
            | DlqError::Broker(_)
            | DlqError::Redis(_)
            | DlqError::Stalled(_) => 3,
            DlqError::UnknownIds(_) | DlqError::UnknownReplay(_) | DlqError::NothingMatched(_) => 4,
            DlqError::Refused(_) => 5,
            DlqError::Write { .. }
            | DlqError::ChainBroken(_)
            | DlqError::ReplayFailed { .. }
            | DlqError::Interrupted { .. } => 1,
        })
    }
}
