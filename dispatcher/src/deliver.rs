//! Delivering one `DispatchJob`: skip it if it was delivered before (a broker redelivery), find
//! its target, respect the target's circuit breaker and rate limit (waiting in a delay queue
//! without counting an attempt), deliver it once through the target's kind, and act on the
//! verdict: mark it delivered, schedule a retry with jitter, or dead-letter it with its whole
//! history. The job is acked only after that outcome is durable.
use crate::breaker::{Breaker, Gate};
use crate::ratelimit::{Admission, RateLimiter};
use crate::target::{self, Context, Target, Verdict};
use deadpool_redis::redis::AsyncCommands;
use lapin::message::Delivery;
use lapin::options::BasicRejectOptions;
use shared::config::Config;
use shared::envelope::{decode, AttemptOutcome, DeadLetter, Destination, DispatchJob, Reason};
use shared::retry::{RetryDecision, RetryPolicy};
use shared::stage::{self, Settle};
use shared::topology::Stage;
use shared::units::Rate;
use shared::Services;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// A target with the policies the loop applies to it.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Arc<dyn Target>,
    pub rates: Vec<Rate>,
    pub policy: RetryPolicy,
}

/// The dispatcher of one process.
pub struct Dispatcher {
    services: Services,
    ctx: Context,
    targets: HashMap<String, Route>,
    /// Reply channels by source id.
    replies: HashMap<String, Route>,
    limiter: RateLimiter,
    breaker: Breaker,
    delivered_ttl: Duration,
    lock_ttl: Duration,
}

/// Every target by id, and every source's reply channel by source id.
#[derive(Debug, Default)]
pub struct Routes {
    pub targets: HashMap<String, Route>,
    pub replies: HashMap<String, Route>,
}

/// Builds every target and reply channel, collecting every problem.
pub fn build_routes(config: &Config) -> Result<Routes, Vec<shared::config::ConfigIssue>> {
    let mut issues = Vec::new();
    let mut targets = HashMap::new();
    let mut replies = HashMap::new();
    let d = &config.dispatcher;
    for t in &config.targets {
        match target::build(t) {
            Ok(target) => {
                let rates = match t.rate {
                    Some(r) => vec![r],
                    None => target.default_rates(),
                };
                let schedule = t
                    .retry_schedule
                    .clone()
                    .unwrap_or_else(|| d.retry_schedule.clone());
                targets.insert(
                    t.id.clone(),
                    Route {
                        target,
                        rates,
                        policy: RetryPolicy::new(schedule, d.jitter),
                    },
                );
            }
            Err(mut e) => issues.append(&mut e),
        }
    }
    for s in config.sources.iter().filter(|s| s.reply) {
        match target::build_reply(s) {
            Ok(Some(target)) => {
                let rates = target.default_rates();
                replies.insert(
                    s.id.clone(),
                    Route {
                        target,
                        rates,
                        policy: RetryPolicy::new(d.retry_schedule.clone(), d.jitter),
                    },
                );
            }
            Ok(None) => {}
            Err(mut e) => issues.append(&mut e),
        }
    }
    if issues.is_empty() {
        Ok(Routes { targets, replies })
    } else {
        Err(issues)
    }
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
                part_budget: None,
            },
            limiter: RateLimiter::new(services.store.clone()),
            breaker: Breaker::new(services.store.clone(), Default::default()),
            delivered_ttl: d.delivered_ttl,
            // Longer than any one delivery can take, so two dispatchers never post the same
            // job at once, and short enough that a crashed holder does not stall the job.
            lock_ttl: d.request_timeout * 3,
            services,
            targets,
            replies,
        })
    }

    pub async fn handle(self: Arc<Self>, delivery: Delivery) {
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

    fn route(&self, job: &DispatchJob) -> Option<&Route> {
        match &job.destination {
            Destination::Target { id } => self.targets.get(id),
            Destination::Reply { .. } => self.replies.get(&job.payload.source),
        }
    }

    async fn process(&self, mut job: DispatchJob) -> Settle {
        let store = &self.services.store;
        let delivered_key = store.key(&["delivered", &job.id.to_string()]);
        let lock_key = store.key(&["delivering", &job.id.to_string()]);
        let mut conn = match store.conn().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Redis unavailable; job waits");
                return self.defer(&job, Duration::from_secs(5)).await;
            }
        };
        match conn.exists::<_, bool>(&delivered_key).await {
            Ok(true) => {
                tracing::info!("already delivered; not posting again");
                metrics::counter!("switchboard_dispatch_total", "outcome" => "duplicate_suppressed").increment(1);
                return Settle::Ack;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Redis unavailable; job waits");
                return self.defer(&job, Duration::from_secs(5)).await;
            }
        }
        let Some(route) = self.route(&job).cloned() else {
            return self
                .dead_letter(&job, Reason::Permanent, "the target is not configured")
                .await;
        };
        let name = job.destination.name();
        let breaker_key = match &job.destination {
            Destination::Target { id } => id.clone(),
            Destination::Reply { .. } => format!("reply:{}", job.payload.source),
        };
        let probe = match self.breaker.gate(&breaker_key).await {
            Ok(Gate::Open { wait }) => {
                tracing::info!(?wait, "target paused by its circuit breaker");
                return self.defer(&job, wait).await;
            }
            Ok(gate) => gate == Gate::Probe,
            Err(e) => {
                tracing::warn!(error = %e, "breaker state unavailable; delivering anyway");
                false
            }
        };
        if !route.rates.is_empty() {
            match self.limiter.acquire(&breaker_key, &route.rates).await {
                Ok(Admission::Go) => {}
                Ok(Admission::Wait(wait)) => {
                    metrics::counter!("switchboard_dispatch_total", "outcome" => "rate_limited")
                        .increment(1);
                    self.give_back_probe(probe, &breaker_key).await;
                    return self.defer(&job, wait).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rate limiter unavailable; job waits");
                    self.give_back_probe(probe, &breaker_key).await;
                    return self.defer(&job, Duration::from_secs(5)).await;
                }
            }
        }
        // One dispatcher at a time per job: a redelivery while the first is still posting waits.
        let locked: Option<String> = deadpool_redis::redis::cmd("SET")
            .arg(&lock_key)
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .unwrap_or(Some("OK".into()));
        if locked.is_none() {
            self.give_back_probe(probe, &breaker_key).await;
            return self.defer(&job, Duration::from_secs(5)).await;
        }
        drop(conn);
        let outcome = if route.rates.is_empty() {
            route.target.deliver(&job, &self.ctx).await
        } else {
            // One admission, one message: a split answer sends one part per admission.
            let ctx = Context {
                part_budget: Some(1),
                ..self.ctx.clone()
            };
            route.target.deliver(&job, &ctx).await
        };
        metrics::histogram!("switchboard_delivery_seconds", "kind" => route.target.kind())
            .record(outcome.attempt.duration_ms as f64 / 1000.0);
        tracing::info!(verdict = %outcome.attempt.outcome, status = ?outcome.attempt.status, code = ?outcome.attempt.code, "attempt");
        let verdict = outcome.verdict.clone();
        job.attempts.push(outcome.attempt);
        // The breaker watches whether the receiver is reachable and working: a refusal or a
        // "slow down" is an answer (alive), a retryable failure is not; a refused token says
        // nothing about the receiver.
        match &verdict {
            Verdict::Delivered | Verdict::Wait { .. } | Verdict::Permanent => {
                let _ = self.breaker.record(&breaker_key, true).await;
            }
            Verdict::Retry { .. } => {
                let _ = self.breaker.record(&breaker_key, false).await;
            }
            Verdict::TokenInvalid => self.give_back_probe(probe, &breaker_key).await,
        }
        let settle = match verdict {
            Verdict::Delivered => {
                // Marked delivered and unlocked in one round trip.
                let marked = match store.conn().await {
                    Ok(mut c) => deadpool_redis::redis::pipe()
                        .cmd("SET")
                        .arg(&delivered_key)
                        .arg("1")
                        .arg("EX")
                        .arg(self.delivered_ttl.as_secs().max(1))
                        .ignore()
                        .cmd("DEL")
                        .arg(&lock_key)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                        .map_err(shared::store::StoreError::from),
                    Err(e) => Err(e),
                };
                if let Err(e) = marked {
                    tracing::warn!(error = %e, "could not mark the job delivered");
                }
                metrics::counter!("switchboard_dispatch_total", "outcome" => "delivered", "target" => name).increment(1);
                Settle::Ack
            }
            Verdict::Wait { wait } => {
                metrics::counter!("switchboard_dispatch_total", "outcome" => "platform_wait")
                    .increment(1);
                self.defer(&job, wait).await
            }
            Verdict::Retry { .. } | Verdict::TokenInvalid => {
                let retry_after = match verdict {
                    Verdict::Retry { retry_after } => retry_after,
                    _ => None,
                };
                let failed = failed_attempts(&job);
                match route
                    .policy
                    .after_failure(failed, retry_after, rand::random::<f64>())
                {
                    RetryDecision::RetryIn(wait) => {
                        metrics::counter!("switchboard_dispatch_total", "outcome" => "retry")
                            .increment(1);
                        tracing::info!(attempt = failed, ?wait, "retrying later");
                        self.defer(&job, wait).await
                    }
                    RetryDecision::GiveUp => {
                        let error = last_error(&job);
                        self.dead_letter(&job, Reason::Exhausted, &error).await
                    }
                }
            }
            _ => {
                let error = last_error(&job);
                self.dead_letter(&job, Reason::Permanent, &error).await
            }
        };
        if verdict != Verdict::Delivered {
            if let Ok(mut c) = store.conn().await {
                let _: Result<(), _> = c.del(&lock_key).await;
            }
        }
        settle
    }

    /// A job that was let through as the breaker's probe but is parked instead of sent gives
    /// the probe back, so another process may probe at once.
    async fn give_back_probe(&self, probe: bool, breaker_key: &str) {
        if probe {
            let _ = self.breaker.release_probe(breaker_key).await;
        }
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

/// Attempts that count against the schedule: failures, not waits the platform asked for.
fn failed_attempts(job: &DispatchJob) -> usize {
    job.attempts
        .iter()
        .filter(|a| {
            matches!(
                a.outcome,
                AttemptOutcome::Retry | AttemptOutcome::TokenInvalid | AttemptOutcome::Permanent
            )
        })
        .count()
}

fn last_error(job: &DispatchJob) -> String {
    job.attempts
        .last()
        .map(|a| match (&a.status, &a.code, &a.error) {
            (_, _, Some(e)) => e.clone(),
            (Some(s), Some(c), None) => format!("HTTP {s}, code {c}"),
            (Some(s), None, None) => format!("HTTP {s}"),
            _ => a.outcome.to_string(),
        })
        .unwrap_or_else(|| "no attempt".into())
}
