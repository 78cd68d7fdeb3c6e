//! Progress updates of a streamed reply (`stream = true` on the source): while the worker reads
//! Dify's stream, the text so far goes to the dispatcher as [`ReplyProgress`] messages on the
//! deliver queue, each confirmed by the broker, throttled by the source's `stream_interval`
//! and `stream_min_chars` (the first text goes at once: it is what the user waits for). The
//! updates carry the claim's token as their epoch, so a worker that takes over a dead one's
//! event continues the same message and its updates order after the dead one's. Progress is
//! best-effort: a failed publish is logged and the next update carries the text; the final
//! answer still goes out as the reply job (`fan_out`). The throttle's decision is pure
//! ([`Throttle::decide`]); this module never calls Dify.
use super::Worker;
use crate::hold::Held;
use shared::broker::{Broker, Publish};
use shared::config::SourceConfig;
use shared::envelope::{encode, Answer, AnswerPayload, Destination, DispatchJob, InboundEvent};
use shared::progress::ReplyProgress;
use shared::topology::Stage;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A progress update carries at most this many characters: more than any platform's message
/// or card shows (the final answer, split where it must be, carries the rest).
pub const PREVIEW_CHARS: usize = 8_192;

/// When progress updates go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// At most one update per this long.
    pub interval: Duration,
    /// And only with at least this many new characters (or a text Dify replaced).
    pub min_chars: usize,
}

/// What the throttle says about the text now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Publish it now.
    Now,
    /// Enough is new, but not before this instant.
    At(Instant),
    /// Not enough is new: wait for more text.
    More,
}

/// The last update that went out.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Instant,
    pub text: String,
}

impl Throttle {
    pub fn of(source: &SourceConfig) -> Self {
        Self {
            interval: source.stream_interval,
            min_chars: source.stream_min_chars,
        }
    }

    /// Whether `text` should go out at `now`, after `last` (pure). The first non-empty text goes
    /// at once; a text that no longer starts with the last one (Dify's `message_replace`)
    /// counts as new whatever its length.
    pub fn decide(&self, last: Option<&Sent>, text: &str, now: Instant) -> Due {
        let Some(last) = last else {
            return if text.is_empty() { Due::More } else { Due::Now };
        };
        let new = if text.starts_with(last.text.as_str()) {
            text[last.text.len()..].chars().count()
        } else if text.is_empty() {
            0
        } else {
            usize::MAX
        };
        if new == 0 || new < self.min_chars.max(1) {
            return Due::More;
        }
        let next = last.at + self.interval;
        if now >= next {
            Due::Now
        } else {
            Due::At(next)
        }
    }
}

/// The first [`PREVIEW_CHARS`] characters of `text`.
pub fn preview(text: &str) -> &str {
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// A running publisher of one reply's progress; [`Progress::finish`] stops it.
pub(super) struct Progress {
    pub(super) text: watch::Sender<String>,
    task: JoinHandle<u64>,
}

impl Progress {
    /// Stops publishing (what is not out yet is the final answer's to carry) and waits for the
    /// update in flight, so that no update is published after the final answer's job.
    pub(super) async fn finish(self) {
        drop(self.text);
        match self.task.await {
            Ok(n) => tracing::debug!(updates = n, "progress updates published"),
            Err(e) => tracing::warn!(error = %e, "the progress publisher failed"),
        }
    }
}

impl Worker {
    /// Starts publishing progress for the event's reply, if its source streams and the event
    /// has a conversation to reply into.
    pub(super) fn progress_for(&self, event: &InboundEvent, claimed: &Held) -> Option<Progress> {
        let source = self.config.source(&event.source)?;
        if !(source.stream && source.reply) {
            return None;
        }
        let destination = Destination::Reply {
            handle: event.reply.clone()?,
        };
        let payload = AnswerPayload {
            event_id: event.id,
            source: event.source.clone(),
            platform: event.platform.clone(),
            conversation: event.conversation.clone(),
            query: event.text.clone(),
            answer: Answer::default(),
            timings: Default::default(),
            event: None,
        };
        let update = ReplyProgress {
            job_id: DispatchJob::job_id(event, &destination),
            destination,
            payload,
            epoch: claimed.token,
            seq: 0,
        };
        let (text, rx) = watch::channel(String::new());
        let task = tokio::spawn(publish_progress(
            self.services.broker.clone(),
            Throttle::of(source),
            update,
            rx,
        ));
        Some(Progress { text, task })
    }
}

/// Publishes `update` with the text so far whenever the throttle says so, until the sender is
/// dropped. Returns how many updates went out.
async fn publish_progress(
    broker: Broker,
    throttle: Throttle,
    mut update: ReplyProgress,
    mut rx: watch::Receiver<String>,
) -> u64 {
    let queue = broker.topology().stage_queue(Stage::Deliver);
    let mut last: Option<Sent> = None;
    loop {
        let text = preview(&rx.borrow_and_update()).to_owned();
        match throttle.decide(last.as_ref(), &text, Instant::now()) {
            Due::Now => {
                update.seq += 1;
                update.payload.answer.text = text.clone();
                let opts = Publish {
                    message_id: Some(format!("{}:{}:{}", update.job_id, update.epoch, update.seq)),
                    ..Default::default()
                };
                match broker.publish(&queue, &encode(&update), opts).await {
                    Ok(()) => {
                        metrics::counter!("switchboard_stream_updates_total", "stage" => "published").increment(1);
                    }
                    // The next update (or the final answer) carries the text.
                    Err(e) => tracing::warn!(error = %e, "could not publish a progress update"),
                }
                last = Some(Sent {
                    at: Instant::now(),
                    text,
                });
            }
            Due::At(when) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(when) => {}
                    changed = rx.changed() => if changed.is_err() { break },
                }
            }
            Due::More => {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
    }
    update.seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_sends_the_first_text_at_once_then_at_most_one_per_interval_with_enough_new() {
        let t = Throttle {
            interval: Duration::from_secs(1),
            min_chars: 5,
        };
        let t0 = Instant::now();
        assert_eq!(t.decide(None, "", t0), Due::More);
        assert_eq!(t.decide(None, "H", t0), Due::Now);
        let last = Sent {
            at: t0,
            text: "Hello".into(),
        };
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(t.decide(Some(&last), "Hello wo", ms(2_000)), Due::More);
        assert_eq!(
            t.decide(Some(&last), "Hello world", ms(300)),
            Due::At(ms(1_000))
        );
        assert_eq!(t.decide(Some(&last), "Hello world", ms(1_000)), Due::Now);
        // Dify replaced the text: it is new whatever its length.
        assert_eq!(t.decide(Some(&last), "Bye", ms(1_500)), Due::Now);
        assert_eq!(t.decide(Some(&last), "", ms(1_500)), Due::More);
        // Characters, not bytes.
        assert_eq!(t.decide(Some(&last), "Helloéééé", ms(1_500)), Due::More);
        assert_eq!(t.decide(Some(&last), "Helloééééé", ms(1_500)), Due::Now);
    }

    #[test]
    fn previews_are_cut_on_characters() {
        let long = "é".repeat(PREVIEW_CHARS + 3);
        assert_eq!(preview(&long).chars().count(), PREVIEW_CHARS);
        assert_eq!(preview("short"), "short");
    }
}
