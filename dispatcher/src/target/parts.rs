//! Delivering an answer that was split into several messages: parts go out in order, and the
//! number of parts already accepted is kept in Redis (`parts:<job id>`) so that a retry after
//! part 2 failed starts at part 2 and never posts part 1 again. A rate-limited target admits
//! each part on its own ([`Pace`]): as many go in one delivery as its limit lets through now,
//! and when the limit says wait, the job continues later carrying only the parts left
//! ([`Verdict::Continue`], `DispatchJob::continued`), never the whole answer again. The job is
//! delivered once every part is. A one-part answer touches no Redis. This module sends nothing
//! itself: the kind passes the sending of one part in.
use super::{Context, Outcome, Verdict};
use crate::ratelimit::{Admission, RateLimiter};
use deadpool_redis::redis;
use futures_util::future::BoxFuture;
use shared::envelope::{Attempt, DispatchJob, PartsLeft};
use shared::units::Rate;
use std::time::Duration;

/// How long progress is remembered: longer than any retry schedule runs.
pub const PROGRESS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The parts one delivery sends, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The number (from 0) of the first of `list` in the whole answer: 0, or the parts a
    /// continued job had sent before.
    pub first: usize,
    pub list: Vec<String>,
}

/// A rate-limited target's admission of each part after a delivery's first (which the job's
/// own admission covered): one slot of the target's limits per part.
#[derive(Debug, Clone)]
pub struct Pace {
    limiter: RateLimiter,
    /// The target's name in the limiter (`crate::deliver`'s `target_name`).
    target: String,
    rates: Vec<Rate>,
}

impl Pace {
    pub fn new(limiter: RateLimiter, target: String, rates: Vec<Rate>) -> Self {
        Self {
            limiter,
            target,
            rates,
        }
    }

    /// `Err(wait)`: the next part must wait this long (it took nothing from the limit).
    async fn next(&self) -> Result<(), Duration> {
        match self.limiter.acquire(&self.target, &self.rates).await {
            Ok(Admission::Go) => Ok(()),
            Ok(Admission::Wait(wait)) => Err(wait),
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; the answer's other parts wait");
                Err(crate::STORE_WAIT)
            }
        }
    }
}

/// The Redis key holding how many parts of `job` were accepted.
pub fn progress_key(ctx: &Context, job: &DispatchJob) -> String {
    ctx.store.key(&["parts", &job.id.to_string()])
}

/// Sends `parts` in order from the first one not yet accepted; `send` delivers one part
/// (its number in the whole answer, from 0, and its text). Returns the first outcome that is
/// not `Delivered` (a [`Verdict::Continue`] when the pace stops the rest), or the last one.
pub async fn deliver_parts<'a>(
    job: &DispatchJob,
    ctx: &Context,
    parts: Parts,
    mut send: impl FnMut(usize, String) -> BoxFuture<'a, Outcome>,
) -> Outcome {
    let Parts { first, mut list } = parts;
    if first == 0 && list.len() <= 1 {
        return send(0, list.pop().unwrap_or_default()).await;
    }
    let key = progress_key(ctx, job);
    let done = match read_progress(ctx, &key).await {
        Ok(d) => d.max(first),
        // Without progress we could post a part twice: try again later instead.
        Err(e) => {
            return local_outcome(
                Verdict::Retry { retry_after: None },
                format!("part progress unavailable: {e}"),
            )
        }
    };
    let n = first + list.len();
    if done >= n {
        return local_outcome(
            Verdict::Delivered,
            format!("all {n} parts were already delivered"),
        );
    }
    let mut last = None;
    for i in done..n {
        if let (true, Some(pace)) = (i > done, &ctx.pace) {
            if let Err(wait) = pace.next().await {
                return continue_later(i, n, list.split_off(i - first), wait);
            }
        }
        let part = std::mem::take(&mut list[i - first]);
        let mut outcome = send(i, part).await;
        if outcome.verdict != Verdict::Delivered {
            let what = format!("part {}/{n}", i + 1);
            outcome.attempt.error = Some(match outcome.attempt.error.take() {
                Some(e) => format!("{what}: {e}"),
                None => what,
            });
            return outcome;
        }
        if let Err(e) = write_progress(ctx, &key, i + 1).await {
            // The part is out; if a later part fails this one may be posted again on retry.
            tracing::warn!(job = %job.id, part = i + 1, error = %e, "could not record part progress");
        }
        last = Some(outcome);
    }
    last.unwrap_or_else(|| local_outcome(Verdict::Delivered, "no part to send"))
}

/// The outcome of a delivery the pace stopped after `sent` of `n` parts: the job goes on after
/// `wait` with the parts `left`. Parts went out, so the receiver answered.
fn continue_later(sent: usize, n: usize, left: Vec<String>, wait: Duration) -> Outcome {
    let mut outcome = local_outcome(
        Verdict::Continue {
            wait,
            left: PartsLeft { sent, parts: left },
        },
        format!("part {sent}/{n} delivered; the rest waits its turn"),
    );
    outcome.sent = true;
    outcome
}

async fn read_progress(ctx: &Context, key: &str) -> Result<usize, shared::store::StoreError> {
    let mut conn = ctx.store.conn().await?;
    let v: Option<usize> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
    Ok(v.unwrap_or(0))
}

async fn write_progress(
    ctx: &Context,
    key: &str,
    done: usize,
) -> Result<(), shared::store::StoreError> {
    let mut conn = ctx.store.conn().await?;
    redis::cmd("SET")
        .arg(key)
        .arg(done)
        .arg("EX")
        .arg(PROGRESS_TTL.as_secs())
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// An outcome decided without a request (a refused job, a store failure): the attempt says why.
pub fn local_outcome(verdict: Verdict, error: impl Into<String>) -> Outcome {
    Outcome {
        sent: false,
        attempt: Attempt {
            at: chrono::Utc::now(),
            outcome: verdict.outcome(),
            status: None,
            code: None,
            error: Some(error.into()),
            excerpt: None,
            duration_ms: 0,
        },
        verdict,
    }
}
