//! The progress of a streamed reply ([`ReplyProgress`], worker -> dispatcher, on the deliver
//! queue beside the jobs): the text so far of one reply job, ordered by `(epoch, seq)`. The
//! epoch is the worker's claim token on the event (it grows with every takeover), so the updates
//! of a worker that took over a dead one's event order after the dead one's, and a stale update
//! can be recognised and dropped whichever process sees it. Progress is best-effort: the final
//! answer still travels as the ordinary `DispatchJob` with the same job id, and it is what every
//! guarantee is about. Also: whether a message on the deliver queue is a progress update
//! ([`is_progress`]), so the dispatcher can tell the two apart before decoding.
use crate::envelope::{AnswerPayload, Destination, Envelope};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One progress update of a streamed reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplyProgress {
    /// The reply job this is the progress of; its final answer comes as that job.
    pub job_id: Uuid,
    pub destination: Destination,
    /// The event and the answer so far (`answer.text`: the text Dify has written until now).
    pub payload: AnswerPayload,
    /// The worker's claim token on the event: a later claim (a takeover) has a larger one.
    pub epoch: i64,
    /// 1, 2, … within the epoch.
    pub seq: u64,
}

impl Envelope for ReplyProgress {
    const KIND: &'static str = "reply_progress";
    const VERSION: u16 = 1;
}

impl ReplyProgress {
    /// The update's place in its reply's order (pure): later epochs first by epoch, then seq.
    pub fn order(&self) -> (i64, u64) {
        (self.epoch, self.seq)
    }
}

/// Whether `bytes` are a [`ReplyProgress`] envelope (only its name is read: at the start of a
/// message as `encode` wrote it, else by parsing the message's head).
pub fn is_progress(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Head {
        envelope: String,
    }
    if let Some((kind, _)) = crate::envelope::written_head(bytes) {
        return kind == ReplyProgress::KIND;
    }
    serde_json::from_slice::<Head>(bytes).is_ok_and(|h| h.envelope == ReplyProgress::KIND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode, encode, DispatchJob};

    #[test]
    fn progress_is_told_apart_from_jobs_and_round_trips() {
        let payload: AnswerPayload = serde_json::from_value(serde_json::json!({
            "event_id": Uuid::nil(), "source": "s", "platform": "telegram",
            "conversation": {"chat_id": "1", "chat_type": "single", "sender_id": "u"},
            "query": "q", "answer": {"text": "so far"}, "timings": {}
        }))
        .unwrap();
        let destination = Destination::Target { id: "t".into() };
        let p = ReplyProgress {
            job_id: DispatchJob::job_id_of_event(Uuid::nil(), &destination),
            destination: destination.clone(),
            payload: payload.clone(),
            epoch: 3,
            seq: 7,
        };
        let bytes = encode(&p);
        assert!(is_progress(&bytes));
        assert_eq!(decode::<ReplyProgress>(&bytes).unwrap(), p);
        let job = DispatchJob {
            id: p.job_id,
            destination,
            payload,
            attempts: vec![],
            replay_of: None,
            parts_left: None,
        };
        assert!(!is_progress(&encode(&job)));
        assert!(!is_progress(b"not json"));
        // Another writer's field order is told apart by parsing the head.
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).unwrap();
        let kind = v.remove("envelope").unwrap();
        v.insert("envelope".into(), kind);
        let reordered = serde_json::to_vec(&v).unwrap();
        assert!(crate::envelope::written_head(&reordered).is_none());
        assert!(is_progress(&reordered));
        let later = ReplyProgress {
            epoch: 4,
            seq: 1,
            ..p.clone()
        };
        assert!(
            later.order() > p.order(),
            "a takeover's first update beats the last of the dead"
        );
    }
}
