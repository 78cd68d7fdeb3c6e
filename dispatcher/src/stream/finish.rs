//! The final answer of a streamed reply: under the reply's lock, its first part ends the
//! message the updates grew (`Grow::end`, unless an earlier try did), and any further parts of
//! a long answer go as new messages, with the part progress of `target::parts` so none goes twice.
//! Without a message (no update got through), or after a fallback, it is delivered as today,
//! as a single message. Either way the record is marked finished once the answer is in the
//! message, so that an update arriving late cannot overwrite it. An edit the platform refuses
//! for good (the message was deleted, the card API refused) falls back to a single message and
//! says so once in the log.
use super::{Grow, Record, Reply};
use crate::target::parts::{deliver_parts, local_outcome};
use crate::target::{Context, Outcome, Target, Verdict};
// When Redis cannot say whether a message exists it waits (sending blind could leave a second
// message).
use crate::STORE_WAIT;
use shared::envelope::{AttemptOutcome, DispatchJob};
use std::time::Duration;

/// How long the final answer waits when an update holds the reply's lock (one request).
const BUSY_WAIT: Duration = Duration::from_millis(200);

/// Delivers the final answer of a streamed reply job; `lock_ttl` bounds how long a crashed
/// holder keeps the reply's lock.
pub async fn finish(
    target: &dyn Target,
    grow: &dyn Grow,
    job: &DispatchJob,
    ctx: &Context,
    lock_ttl: Duration,
) -> Outcome {
    let record = Record::of(&ctx.store, job.id);
    match record.lock(lock_ttl).await {
        Ok(true) => {}
        Ok(false) => {
            return local_outcome(
                Verdict::Wait { wait: BUSY_WAIT },
                "a progress update of this reply is being applied",
            )
        }
        Err(e) => {
            return local_outcome(
                Verdict::Wait { wait: STORE_WAIT },
                format!("the stream record is unavailable: {e}"),
            )
        }
    }
    let outcome = finish_locked(target, grow, job, ctx, &record).await;
    record.unlock().await;
    outcome
}

async fn finish_locked(
    target: &dyn Target,
    grow: &dyn Grow,
    job: &DispatchJob,
    ctx: &Context,
    record: &Record<'_>,
) -> Outcome {
    let state = match record.read().await {
        Ok(s) => s,
        Err(e) => {
            return local_outcome(
                Verdict::Wait { wait: STORE_WAIT },
                format!("the stream record is unavailable: {e}"),
            )
        }
    };
    let reply = Reply {
        destination: &job.destination,
        payload: &job.payload,
    };
    let message = match (state.message, state.fell_back) {
        (Some(m), false) => m,
        _ => return single(target, job, ctx, record).await,
    };
    let parts = target.parts_of(job);
    // A continued job's parts all come after the message (part 0), which is then finished.
    if !state.finished && parts.first == 0 {
        let first = parts.list.first().map(String::as_str).unwrap_or_default();
        let edited = grow.end(reply, ctx, &message, first).await;
        match edited.verdict {
            Verdict::Delivered => {}
            Verdict::Permanent => {
                fall_back(record, &edited).await;
                return single(target, job, ctx, record).await;
            }
            _ => return edited,
        }
        if let Err(e) = record.finished().await {
            tracing::warn!(error = %e, "could not mark the streamed reply finished");
        }
        if parts.list.len() <= 1 {
            return edited;
        }
    }
    // A long answer: the rest as new messages (part 0 is the message, done above or before).
    let done = local_outcome(Verdict::Delivered, "the first part is the streamed message");
    deliver_parts(job, ctx, parts, |i, part| {
        let done = done.clone();
        Box::pin(async move {
            if i == 0 {
                done
            } else {
                grow.send_part(reply, ctx, i, &part).await
            }
        })
    })
    .await
}

/// The answer as today, as a single message (split where it must be); the record is marked
/// finished once it is in, so no late update creates a message after it.
async fn single(
    target: &dyn Target,
    job: &DispatchJob,
    ctx: &Context,
    record: &Record<'_>,
) -> Outcome {
    let outcome = target.deliver(job, ctx).await;
    let in_chat =
        outcome.verdict == Verdict::Delivered || outcome.attempt.outcome == AttemptOutcome::Partial;
    if in_chat {
        if let Err(e) = record.finished().await {
            tracing::warn!(error = %e, "could not mark the streamed reply finished");
        }
    }
    outcome
}

/// Marks the reply fallen back and says so the first time.
pub(crate) async fn fall_back(record: &Record<'_>, why: &Outcome) {
    match record.fell_back().await {
        Ok(true) => {
            metrics::counter!("switchboard_stream_fallbacks_total").increment(1);
            tracing::warn!(
                status = ?why.attempt.status,
                code = ?why.attempt.code,
                error = ?why.attempt.error,
                "streaming this reply failed; it falls back to a single message"
            );
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not record the stream's fallback"),
    }
}
