//! What every Switchboard role shares: the configuration and its validation, the envelopes that
//! travel between roles, the broker connection and topology, the Redis store, the retry policy,
//! the rate decision (GCRA), telemetry and shutdown. Nothing here knows about a particular
//! platform, Dify or a target kind; those live in the role crates.
#![forbid(unsafe_code)]

pub mod auditors;
pub mod batch;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod depth;
pub mod envelope;
pub mod gcra;
pub mod json;
pub mod jsonpath;
pub mod keys;
pub mod nodes;
pub mod progress;
pub mod reply_credentials;
pub mod retry;
pub mod seal;
pub mod secret;
pub mod services;
pub mod shutdown;
pub mod signing;
pub mod stage;
pub mod store;
pub mod telemetry;
pub mod timestamp;
pub mod topology;
pub mod units;
pub mod vault;

pub use config::Config;
pub use envelope::{Attempt, AttemptOutcome, DeadLetter, DispatchJob, InboundEvent};
pub use secret::Secret;
pub use services::Services;
