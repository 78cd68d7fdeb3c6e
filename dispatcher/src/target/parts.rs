//! Delivering an answer that was split into several messages: parts go out in order, and the
//! number of parts already accepted is kept in Redis (`parts:<job id>`) so that a retry after
//! part 2 failed starts at part 2 and never posts part 1 again. The job is delivered once every
//! part is. A one-part answer touches no Redis. This module sends nothing itself: the kind passes
//! the sending of one part in.
use super::{Context, Outcome, Verdict};
use deadpool_redis::redis;
use futures_util::future::BoxFuture;
use shared::envelope::{Attempt, AttemptOutcome, DispatchJob};
use std::time::Duration;

/// How long progress is remembered: longer than any retry schedule runs.
pub const PROGRESS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Redis key holding how many parts of `job` were accepted.
pub fn progress_key(ctx: &Context, job: &DispatchJob) -> String {
    ctx.store.key(&["parts", &job.id.to_string()])
}

/// Sends `parts` in order from the first one not yet accepted; `send` delivers one part
/// (`index`, `part`). Returns the first outcome that is not `Delivered`, or the last one.
pub async fn deliver_parts<'a>(
    job: &DispatchJob,
    ctx: &Context,
    parts: &[String],
    mut send: impl FnMut(usize, String) -> BoxFuture<'a, Outcome>,
) -> Outcome {
    match parts {
        [] => return send(0, String::new()).await,
        [only] => return send(0, only.clone()).await,
        _ => {}
    }
    let key = progress_key(ctx, job);
    let done = match read_progress(ctx, &key).await {
        Ok(d) => d,
        // Without progress we could post a part twice: try again later instead.
        Err(e) => {
            return local_outcome(
                Verdict::Retry { retry_after: None },
                format!("part progress unavailable: {e}"),
            )
        }
    };
    let n = parts.len();
    if done >= n {
        return local_outcome(
            Verdict::Delivered,
            format!("all {n} parts were already delivered"),
        );
    }
    let budget = ctx.part_budget.unwrap_or(usize::MAX).max(1);
    let mut last = None;
    for (i, part) in parts.iter().enumerate().skip(done) {
        if i - done >= budget {
            // The rest waits for its own admission from the rate limiter: back to the queue
            // at once, without counting a failed attempt.
            let mut outcome = local_outcome(
                Verdict::Wait {
                    wait: Duration::ZERO,
                },
                format!("part {i}/{n} delivered; the rest waits its turn"),
            );
            outcome.attempt.outcome = AttemptOutcome::Partial;
            // Parts went out in this delivery: the receiver answered.
            outcome.sent = true;
            return outcome;
        }
        let mut outcome = send(i, part.clone()).await;
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
