//! The scheduler role: events made by the clock. Each `[[schedules]]` entry is compiled once
//! (`plan`: cron in its zone, catch-up), and every process running the role looks for due ticks
//! every `scheduler.poll`; a tick becomes exactly one event whichever processes are alive,
//! because each tick is claimed in Redis before it is published (`claims`). The event goes to
//! the work queue like any other, its dedup key made from the schedule and the tick, so the
//! worker's idempotency also protects it (`event`). `cli` is `switchboard schedule list|run`.
#![forbid(unsafe_code)]

pub mod claims;
pub mod cli;
pub mod event;
pub mod plan;
pub mod run;

pub use run::{plan_all, run_now, serve};

/// Every problem in the schedules (cron, zone, built-ins), for `config check` and start-up.
pub fn validate(config: &shared::Config) -> Vec<shared::config::ConfigIssue> {
    plan_all(config).err().unwrap_or_default()
}
