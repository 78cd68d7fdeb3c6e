//! Streamed replies (`stream = true` on a source): the reply grows in the chat while Dify
//! writes it. The worker sends the text so far as `ReplyProgress` updates; the first one the
//! dispatcher applies becomes the message (or card), every later one an edit of it, and the
//! final answer — the ordinary reply job — ends the message with exactly the answer's text.
//!
//! What keeps that true with many dispatchers, crashes and redeliveries lives here:
//! - [`record`]: one Redis hash per reply job (`stream:<job id>`) holding the message's id on
//!   the platform, the order `(epoch, seq)` of the last update applied, whether the final
//!   answer is in and whether the reply fell back to a single message; and a short lock
//!   (`streaming:<job id>`) so that one request at a time touches the message.
//! - [`decide`]: what an update does given the record (pure): create, edit, or drop — an
//!   update older than the last applied, or arriving after the final answer, is dropped.
//! - [`finish`]: the final answer through the streamed message: its first part edits the
//!   message, later parts go as new messages; no message (streaming never got through) or a
//!   fallback sends it as today.
//!
//! A platform that can grow a message implements [`Grow`]; its reply channel hands it out
//! through `Target::grow`. The delivery loop (`crate::deliver::progress`) applies updates
//! within the target's rate limits. Nothing here retries an update: progress is best-effort,
//! the final answer carries every guarantee.
mod decide;
mod finish;
mod record;

pub use decide::{decide, Skip, Step};
pub(crate) use finish::fall_back;
pub use finish::finish;
pub use record::{Record, StreamState};

use crate::target::{Context, Outcome};
use async_trait::async_trait;
use shared::envelope::{AnswerPayload, Destination};
use shared::units::Rate;

/// The reply a streamed message belongs to: where it goes and the event it answers.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub destination: &'a Destination,
    pub payload: &'a AnswerPayload,
}

/// A reply channel that can grow one message.
#[async_trait]
pub trait Grow: Send + Sync {
    /// Creates the message showing `text`; `Ok`: the platform's id for it (to edit it by).
    async fn create(&self, reply: Reply<'_>, ctx: &Context, text: &str) -> Result<String, Outcome>;
    /// Replaces the text of `message` with `text`. The platform's "nothing changed" answer is
    /// `Delivered`: the message shows the text.
    async fn edit(&self, reply: Reply<'_>, ctx: &Context, message: &str, text: &str) -> Outcome;
    /// Ends `message` with the final answer's `text`. By default an edit; a card that must be
    /// closed once the answer is in (DingTalk's `isFinalize`, Feishu's streaming mode) says so
    /// here. Repeated after a crash it must leave the same message.
    async fn end(&self, reply: Reply<'_>, ctx: &Context, message: &str, text: &str) -> Outcome {
        self.edit(reply, ctx, message, text).await
    }
    /// Part `index` (1, 2, …) of a final answer too long for one message, as a new message.
    async fn send_part(&self, reply: Reply<'_>, ctx: &Context, index: usize, part: &str)
        -> Outcome;
    /// The platform's own limit on messages and edits in the reply's chat, and the chat's
    /// name for the limiter (none: the channel's own limits only).
    fn chat_rate(&self, reply: Reply<'_>) -> Option<(String, Vec<Rate>)>;
    /// Whether this reply can grow at all (default: yes). One that cannot (a Slack slash
    /// command's answer, which goes whole through its `response_url`) drops its updates
    /// quietly and its final answer goes as today.
    fn grows(&self, _reply: Reply<'_>) -> bool {
        true
    }
    /// The platform's own limit on edits alone, beyond the chat's, and the limiter's name for
    /// it (default: none). Slack's `chat.update` is a Tier 3 method, limited per workspace.
    fn edit_rate(&self, _reply: Reply<'_>) -> Option<(String, Vec<Rate>)> {
        None
    }
}
