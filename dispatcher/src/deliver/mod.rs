//! Delivering one `DispatchJob`, in named steps: **enter** (already delivered? — a broker
//! redelivery is acked without posting; else the per-job lock, one dispatcher at a time per job,
//! and the target's circuit-breaker state, all in one round trip) → **admit** (the breaker's
//! gate on that state, then the rate limit; a job not admitted waits in a delay queue without
//! counting an attempt, its lock released) → **attempt** (one delivery through the target's
//! kind) → **settle** (mark it delivered, schedule a retry with jitter, or dead-letter it with
//! its whole history). The job is acked only after that outcome is durable.
//!
//! When Redis fails, each step decides once what that means:
//!
//! | step | on a Redis error | why |
//! |---|---|---|
//! | enter (delivered? + lock + breaker read) | the job waits 5 s, its lock released if the script took it | a copy arriving after its delivery is common (every redelivery after a crash): posting it unchecked would repeat the delivery; releasing the lock (only if it holds this attempt's token) keeps a reply lost after the script ran from locking the job out for `lock_ttl` by its own lock |
//! | admit: breaker (a half-open circuit's probe) | the job goes on | the breaker protects the receiver; it promises nothing |
//! | admit: rate limit | the job waits 5 s | the platform's limit is a promise: a robot that sends too fast is muted |
//! | settle: breaker record | nothing | advice; a clean breaker is not written on success at all (`admit::breaker_news`) |
//! | settle: mark delivered | the job is acked | it was delivered; a redelivered copy would be posted again (the window in docs/GUARANTEES.md) |
//! | settle: unlock | nothing | the lock lapses after `lock_ttl` |
//!
//! The steps live in `admit`, `marks` (the delivered mark and the lock) and `settle`; the
//! routes a dispatcher knows in `routes`. A streamed reply's progress updates travel on the
//! same queue and are applied (or dropped) by `progress`; its final answer is the reply job,
//! which ends the streamed message (`crate::stream::finish`).
mod admit;
mod marks;
mod progress;
mod routes;
mod settle;

pub use routes::{build_routes, Route, Routes};

use crate::breaker::Breaker;
use crate::ratelimit::RateLimiter;
use crate::target::parts::Pace;
use crate::target::{Context, Outcome, Verdict};
use crate::STORE_WAIT;
use lapin::message::Delivery;
use lapin::options::BasicRejectOptions;
use marks::{Entry, MarkRounds, Marks};
use shared::config::Config;
use shared::envelope::{decode, DeadLetter, Destination, DispatchJob, Reason};
use shared::progress::ReplyProgress;
use shared::stage::{self, Settle};
use shared::topology::Stage;
use shared::Services;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The dispatcher of one process.
pub struct Dispatcher {
    services: Services,
    ctx: Context,
    targets: HashMap<String, Route>,
    /// Reply channels by source id.
    replies: HashMap<String, Route>,
    limiter: RateLimiter,
    breaker: Breaker,
    /// The jobs' marks, entered and set in round trips shared by concurrent jobs.
    marks: MarkRounds,
    delivered_ttl: Duration,
    lock_ttl: Duration,
    wait_budget: Duration,
}

impl Dispatcher {
    pub fn new(config: &Config, services: Services) -> anyhow::Result<Self> {
        let Routes { targets, replies } =
            build_routes(config).map_err(shared::config::ConfigError)?;
        let d = &config.dispatcher;
        Ok(Self {
            ctx: Context {
                http: crate::ssrf::client(d)?,
                store: services.store.clone(),
                allow_private: d.allow_private.clone(),
                pace: None,
            },
            limiter: RateLimiter::new(services.store.clone()),
            breaker: Breaker::new(services.store.clone(), Default::default()),
            marks: MarkRounds::new(services.store.clone()),
            delivered_ttl: d.delivered_ttl,
            wait_budget: d.wait_budget,
            // Longer than any one delivery can take, so two dispatchers never post the same
            // job at once, and short enough that a crashed holder does not stall the job.
            lock_ttl: d.request_timeout * 3,
            services,
            targets,
            replies,
        })
    }

    pub async fn handle(self: Arc<Self>, delivery: Delivery) {
        if shared::progress::is_progress(&delivery.data) {
            return self.handle_progress(delivery).await;
        }
        let job = match decode::<DispatchJob>(&delivery.data) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "unreadable message on the deliver queue; dead-lettering it");
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                return;
            }
        };
        let span = tracing::info_span!("job", job_id = %job.id, event_id = %job.payload.event_id, target = %job.destination.name());
        self.process(job)
            .instrument(span)
            .await
            .apply(&delivery.acker)
            .await;
    }

    /// A streamed reply's progress update, beside the jobs on the deliver queue.
    async fn handle_progress(&self, delivery: Delivery) {
        let update = match decode::<ReplyProgress>(&delivery.data) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "unreadable progress update; dead-lettering it");
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                return;
            }
        };
        let span = tracing::info_span!("progress", job_id = %update.job_id, event_id = %update.payload.event_id);
        self.progress(update)
            .instrument(span)
            .await
            .apply(&delivery.acker)
            .await;
    }

    fn route(&self, job: &DispatchJob) -> Option<&Route> {
        match &job.destination {
            Destination::Target { id } => self.targets.get(id),
            Destination::Reply { .. } => self.replies.get(&job.payload.source),
        }
    }

    /// One job, step by step; a step that does not let the job through settles it.
    async fn process(&self, job: DispatchJob) -> Settle {
        let marks = Marks::of(&self.marks, &job);
        let target = admit::target_name(&job);
        // This attempt's own: a lock that failed to answer is released only if it is ours.
        let token = format!("{:016x}", rand::random::<u64>());
        let breaker = self.breaker.state_key(&target);
        let reading = match marks.enter(&breaker, &token, self.lock_ttl).await {
            Ok(Entry::Held(reading)) => reading,
            Ok(Entry::Delivered) => {
                tracing::info!("already delivered; not posting again");
                metrics::counter!("switchboard_dispatch_total", "outcome" => "duplicate_suppressed").increment(1);
                return Settle::Ack;
            }
            // One dispatcher at a time per job: a redelivery while the first is still posting waits.
            Ok(Entry::Busy) => return self.defer(&job, STORE_WAIT).await,
            Err(e) => {
                tracing::warn!(error = %e, "Redis unavailable; job waits");
                marks.release(&token).await;
                return self.defer(&job, STORE_WAIT).await;
            }
        };
        let Some(route) = self.route(&job) else {
            let settle = self
                .dead_letter(&job, Reason::Permanent, "the target is not configured")
                .await;
            marks.unlock().await;
            return settle;
        };
        let admitted = match self.admit(&job, route, target, reading).await {
            Ok(admitted) => admitted,
            Err(wait) => {
                let settle = self.defer(&job, wait).await;
                marks.unlock().await;
                return settle;
            }
        };
        let outcome = self.attempt(&job, route).await;
        self.settle(job, route, admitted, outcome, &marks).await
    }

    /// Delivers the job once through its target's kind. A rate-limited target sends one message
    /// per admission, so a split answer spends one admission per part and no window exceeds
    /// the limit (the job's own admission covers its first part; the pace, each further one).
    async fn attempt(&self, job: &DispatchJob, route: &Route) -> Outcome {
        let ctx = if route.rates.is_empty() {
            self.ctx.clone()
        } else {
            Context {
                pace: Some(Pace::new(
                    self.limiter.clone(),
                    admit::target_name(job),
                    route.rates.clone(),
                )),
                ..self.ctx.clone()
            }
        };
        let outcome = match (route.target.grow(), &job.destination) {
            // A streamed reply ends the message its updates grew.
            (Some(grow), Destination::Reply { .. }) => {
                crate::stream::finish(route.target.as_ref(), grow, job, &ctx, self.lock_ttl).await
            }
            _ => route.target.deliver(job, &ctx).await,
        };
        metrics::histogram!("switchboard_delivery_seconds", "kind" => route.target.kind())
            .record(outcome.attempt.duration_ms as f64 / 1000.0);
        // A delivery is counted in the metrics; one line per delivery at `info` cost about 5 %
        // of the dispatcher's CPU (PERFORMANCE.md). Anything else stays visible at `info`.
        if outcome.verdict == Verdict::Delivered {
            tracing::debug!(status = ?outcome.attempt.status, "delivered");
        } else {
            tracing::info!(verdict = %outcome.attempt.outcome, status = ?outcome.attempt.status, code = ?outcome.attempt.code, "attempt");
        }
        outcome
    }

    async fn defer(&self, job: &DispatchJob, wait: Duration) -> Settle {
        let parked = stage::park(
            &self.services.broker,
            Stage::Deliver,
            job,
            job.id.to_string(),
            wait,
        )
        .await;
        Settle::after(parked, "park the job")
    }

    async fn dead_letter(&self, job: &DispatchJob, reason: Reason, error: &str) -> Settle {
        let dl = DeadLetter::from_job(job, reason, error);
        tracing::error!(reason = reason.as_str(), error, dead_letter_id = %dl.id, "job dead-lettered");
        Settle::after(
            stage::bury(&self.services.broker, &dl).await,
            "dead-letter the job",
        )
    }
}
