//! The dispatcher role: consumes `DispatchJob`s, renders each for its target's kind, delivers it
//! at the pace the target allows, retries on a schedule with jitter and dead-letters what is
//! refused for good or exhausted. A job already delivered is never posted again. It also owns
//! the dead-letter store that auditors read, export and replay (`deadletter`).
#![forbid(unsafe_code)]

pub mod breaker;
pub mod deadletter;
pub mod ratelimit;
pub mod split;
pub mod ssrf;
pub mod target;
pub mod tokens;
