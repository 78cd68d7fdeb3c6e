//! What one progress update does, given the reply's stream record (pure).
use super::StreamState;

/// The step an update takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No message yet: create it.
    Create,
    /// Edit the message with this id.
    Edit(String),
    /// Send nothing.
    Drop(Skip),
}

/// Why an update is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// An update as new or newer was applied already.
    Stale,
    /// The final answer is in: the message must keep it.
    Finished,
    /// Streaming failed for this reply; the final answer goes as a single message.
    FellBack,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Stale => "stale",
            Skip::Finished => "finished",
            Skip::FellBack => "fell_back",
        }
    }
}

/// The step of the update ordered `order` (`(epoch, seq)`) against `state`.
pub fn decide(state: &StreamState, order: (i64, u64)) -> Step {
    if state.finished {
        return Step::Drop(Skip::Finished);
    }
    if state.fell_back {
        return Step::Drop(Skip::FellBack);
    }
    if state.applied.is_some_and(|applied| order <= applied) {
        return Step::Drop(Skip::Stale);
    }
    match &state.message {
        Some(id) => Step::Edit(id.clone()),
        None => Step::Create,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_create_then_edit_and_older_or_late_ones_are_dropped() {
        let fresh = StreamState::default();
        assert_eq!(decide(&fresh, (1, 1)), Step::Create);
        let growing = StreamState {
            message: Some("42".into()),
            applied: Some((1, 3)),
            ..Default::default()
        };
        assert_eq!(decide(&growing, (1, 4)), Step::Edit("42".into()));
        assert_eq!(decide(&growing, (1, 3)), Step::Drop(Skip::Stale));
        assert_eq!(decide(&growing, (1, 2)), Step::Drop(Skip::Stale));
        // A worker that took over (a larger claim token) continues the same message.
        assert_eq!(decide(&growing, (2, 1)), Step::Edit("42".into()));
        // The dead worker's late update after the takeover's: dropped.
        let taken_over = StreamState {
            applied: Some((2, 1)),
            ..growing.clone()
        };
        assert_eq!(decide(&taken_over, (1, 9)), Step::Drop(Skip::Stale));
        let finished = StreamState {
            finished: true,
            ..growing.clone()
        };
        assert_eq!(decide(&finished, (9, 9)), Step::Drop(Skip::Finished));
        // The final answer went out before any message existed: no message now either.
        let finished_alone = StreamState {
            finished: true,
            ..Default::default()
        };
        assert_eq!(decide(&finished_alone, (1, 1)), Step::Drop(Skip::Finished));
        let fell_back = StreamState {
            fell_back: true,
            ..Default::default()
        };
        assert_eq!(decide(&fell_back, (1, 1)), Step::Drop(Skip::FellBack));
    }
}
