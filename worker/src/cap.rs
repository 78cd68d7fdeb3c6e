//! The cap on what an answer may hold (`worker.max_answer_bytes`): Dify decides how much it
//! writes, and every byte of it travels to the broker, Redis, each target and the dead letters.
//! A longer text is cut at a character boundary and ends with [`CUT_MARKER`] so the reader sees
//! it was cut; workflow outputs larger than the cap are dropped. Pure; the caller logs and
//! counts.
use shared::envelope::Answer;

/// What ends a text that was cut.
pub const CUT_MARKER: &str = "\n\n[… the answer was too long and was cut here]";

/// What was cut from an answer, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cut {
    /// The text's length before it was cut (bytes), when it was.
    pub text_bytes: Option<usize>,
    /// The workflow outputs' length (bytes of JSON), when they were dropped.
    pub outputs_bytes: Option<usize>,
}

impl Cut {
    pub fn is_empty(&self) -> bool {
        self.text_bytes.is_none() && self.outputs_bytes.is_none()
    }
}

/// Cuts `answer` down to `max` bytes of text (marker included) and drops outputs over `max`.
pub fn cap(answer: &mut Answer, max: usize) -> Cut {
    let mut cut = Cut::default();
    if answer.text.len() > max {
        cut.text_bytes = Some(answer.text.len());
        let mut end = max.saturating_sub(CUT_MARKER.len());
        while !answer.text.is_char_boundary(end) {
            end -= 1;
        }
        answer.text.truncate(end);
        answer.text.push_str(CUT_MARKER);
    }
    if let Some(outputs) = &answer.outputs {
        let len = outputs.to_string().len();
        if len > max {
            cut.outputs_bytes = Some(len);
            answer.outputs = None;
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_over_the_cap_are_cut_at_a_character_with_a_marker() {
        let mut small = Answer {
            text: "short".into(),
            ..Default::default()
        };
        assert!(cap(&mut small, 1024).is_empty());
        assert_eq!(small.text, "short");

        let long = "é".repeat(2000); // 4000 bytes
        let mut a = Answer {
            text: long.clone(),
            outputs: Some(serde_json::json!({ "answer": long })),
            ..Default::default()
        };
        let cut = cap(&mut a, 1025);
        assert_eq!(cut.text_bytes, Some(4000));
        assert!(cut.outputs_bytes.is_some());
        assert!(a.text.len() <= 1025, "{}", a.text.len());
        assert!(a.text.ends_with(CUT_MARKER));
        assert!(long.starts_with(a.text.trim_end_matches(CUT_MARKER)));
        assert_eq!(a.outputs, None);
        // Exactly at the cap: kept whole.
        let mut exact = Answer {
            text: "x".repeat(1024),
            ..Default::default()
        };
        assert!(cap(&mut exact, 1024).is_empty());
    }
}
