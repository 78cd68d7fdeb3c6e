//! One dead letter as the console's index keeps it: the fields the list, the filters, the stats
//! and "where is my event" need, and a short lowercase text that the text filter searches (the
//! ids, the error, the user's text, the answer, the attempts' errors — not the whole record, so
//! that 100 000 letters fit in well under 100 MiB). Pure: built from a stream entry.
use chrono::{DateTime, Utc};
use deadletters::record::{self, Names, Origin};
use deadletters::store::StreamEntry;
use serde::Serialize;
use shared::envelope::{DeadLetter, Reason, Stage};
use shared::seal::Verdict;
use uuid::Uuid;

/// How much of a letter the text filter sees, in bytes.
pub const SEARCH_BYTES: usize = 768;

/// One dead letter in the index.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub offset: u64,
    pub id: Uuid,
    pub origin: Origin,
    pub stage: Stage,
    pub reason: Reason,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub dead_at: DateTime<Utc>,
    pub attempts: usize,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// The platform's id for the event (work-stage letters carry it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal: Option<Verdict>,
    #[serde(skip)]
    pub search: Box<str>,
}

impl Row {
    /// Whether its seal is checked and verifies (or seals are not checked at all).
    pub fn trusted(&self) -> bool {
        self.seal.as_ref().is_none_or(Verdict::is_verified)
    }
}

/// The row of a stream entry (not a marker).
pub fn row_of(e: &StreamEntry, names: &Names) -> Row {
    let l = record::letter(e.offset, &e.body, &e.meta, names);
    from_letter(l.offset, l.origin, &l.letter, l.seal)
}

fn from_letter(offset: u64, origin: Origin, d: &DeadLetter, seal: Option<Verdict>) -> Row {
    let m = &d.message;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let dedup_key = m.get("dedup_key").and_then(text);
    let mut search = Search::default();
    search.add(&d.id.to_string());
    if let Some(e) = d.event_id {
        search.add(&e.to_string());
    }
    search.add(&d.source);
    search.add(d.target.as_deref().unwrap_or(""));
    search.add(&d.error);
    search.add(dedup_key.as_deref().unwrap_or(""));
    for v in [
        m.get("text"),
        m.pointer("/payload/query"),
        m.pointer("/payload/answer/text"),
    ]
    .into_iter()
    .flatten()
    {
        search.add(v.as_str().unwrap_or(""));
    }
    // A job continued between the parts of a split answer carries them instead of the answer.
    let parts_left = m.pointer("/parts_left/parts").and_then(|v| v.as_array());
    for part in parts_left.into_iter().flatten() {
        search.add(part.as_str().unwrap_or(""));
    }
    for a in &d.attempts {
        search.add(a.error.as_deref().unwrap_or(""));
        search.add(a.code.as_deref().unwrap_or(""));
    }
    Row {
        offset,
        id: d.id,
        origin,
        stage: d.stage,
        reason: d.reason,
        source: d.source.clone(),
        target: d.target.clone(),
        dead_at: d.dead_at,
        attempts: d.attempts.len(),
        error: d.error.clone(),
        event_id: d.event_id,
        dedup_key,
        seal,
        search: search.0.into_boxed_str(),
    }
}

/// Lowercase text, one field a line, cut at [`SEARCH_BYTES`].
#[derive(Default)]
struct Search(String);

impl Search {
    fn add(&mut self, s: &str) {
        if s.is_empty() || self.0.len() >= SEARCH_BYTES {
            return;
        }
        for ch in s.chars().flat_map(char::to_lowercase) {
            if self.0.len() + ch.len_utf8() > SEARCH_BYTES {
                return;
            }
            self.0.push(ch);
        }
        self.0.push('\n');
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_lowercase_and_bounded() {
        let mut s = Search::default();
        s.add("Order 4242: TIMEOUT");
        s.add("");
        s.add("Ärger");
        assert_eq!(s.0, "order 4242: timeout\närger\n");
        let mut long = Search::default();
        long.add(&"x".repeat(SEARCH_BYTES * 2));
        long.add("more");
        assert_eq!(long.0.len(), SEARCH_BYTES);
    }

    #[test]
    fn the_parts_a_continued_job_carries_are_searched_like_its_answer() {
        let message = serde_json::json!({
            "payload": {"query": "Where is my parcel?", "answer": {"text": ""}},
            "parts_left": {"sent": 1, "parts": ["(2/3) Tracking NUMBER 77", "(3/3) bye"]},
        });
        let letter = DeadLetter {
            id: Uuid::now_v7(),
            stage: Stage::Deliver,
            reason: Reason::Permanent,
            error: "part 2/3: chat not found".into(),
            source: "crm".into(),
            target: Some("tg".into()),
            event_id: None,
            message,
            attempts: vec![],
            first_attempt_at: None,
            last_attempt_at: None,
            dead_at: Utc::now(),
        };
        let row = from_letter(0, Origin::Envelope, &letter, None);
        assert!(row.search.contains("tracking number 77"), "{}", row.search);
        assert!(row.search.contains("(3/3) bye"), "{}", row.search);
    }
}
