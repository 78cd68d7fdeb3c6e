//! Replays asked for in the console: what a selection (letters by id, or every letter a filter
//! matches) would send where — the dry-run preview, from the index alone — and starting it:
//! the letters are read whole from the stream, planned by the dead-letter crate (skipping what
//! was replayed unless forced, refusing what does not verify unless allowed), and sent in the
//! background at the pace asked for, recorded in the chain with the signed-in user. Replaying
//! needs the replayer role; `force` and `allow_unverified` need admin.
use deadletters::audit::Selection;
use deadletters::execute::{execute, RunSpec};
use deadletters::record::{self, Letter};
use deadletters::replay::{plan, Allow};
use serde::Serialize;
use shared::config::ConsoleRole;
use shared::envelope::Stage;
use shared::units::Rate;
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ConsoleError;
use crate::index::{Query, Row};
use crate::query::Params;
use crate::state::Console;

/// A replay as asked for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub ids: Vec<Uuid>,
    /// Set when the selection is "every letter the filter matches".
    pub filter: Option<(Query, String)>,
    pub allow: Allow,
    pub rate: Option<Rate>,
}

impl Ask {
    /// Reads a replay form or JSON request's fields: `scope=filter` takes the filter.
    pub fn from_params(p: &Params) -> Result<Self, ConsoleError> {
        let by_filter = p.get("scope") == Some("filter");
        let filter = if by_filter {
            let q = p.query(chrono::Utc::now())?;
            let d = p.describe(&q);
            Some((q, d))
        } else {
            None
        };
        if !by_filter && p.ids.is_empty() {
            return Err(ConsoleError::BadRequest(
                "select dead letters to replay, or replay every letter the filter matches".into(),
            ));
        }
        let rate = match p.get("rate").filter(|r| !r.is_empty()) {
            Some(r) => Some(Rate::parse(r).map_err(ConsoleError::BadRequest)?),
            None => None,
        };
        Ok(Self {
            ids: p.ids.clone(),
            filter,
            allow: Allow {
                force: p.flag("force"),
                unverified: p.flag("allow_unverified"),
            },
            rate,
        })
    }

    /// Refuses options above the principal's role.
    pub fn check(&self, who: &Principal) -> Result<(), ConsoleError> {
        who.require(ConsoleRole::Replayer)?;
        if self.allow.force || self.allow.unverified {
            who.require(ConsoleRole::Admin)?;
        }
        Ok(())
    }
}

/// What one selected letter would become.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Sent to `queue`, for `destination` (deliver stage) or Dify (work stage).
    Send { queue: String, destination: String },
    /// Skipped: already replayed (n times).
    Skip { replays: usize },
    /// Refused: its seal does not verify.
    Refuse { why: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviewItem {
    pub letter: Row,
    #[serde(flatten)]
    pub action: Action,
}

/// The dry run.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub items: Vec<PreviewItem>,
    pub send: usize,
    pub skip: usize,
    pub refuse: usize,
    pub unknown: Vec<Uuid>,
}

/// The rows a request selects, oldest first, and the ids it named that the index lacks.
fn select(state: &Console, ask: &Ask) -> (Vec<Row>, Vec<Uuid>) {
    if let Some((q, _)) = &ask.filter {
        return (state.index.all(q), Vec::new());
    }
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    let mut unknown = Vec::new();
    for id in ask.ids.iter().filter(|i| seen.insert(**i)) {
        match state.index.get(*id) {
            Some(r) => rows.push(r),
            None => unknown.push(*id),
        }
    }
    rows.sort_by_key(|r| r.offset);
    (rows, unknown)
}

/// What the request would send where, from the index and the ledger alone.
pub fn preview(state: &Console, ask: &Ask) -> Preview {
    let (rows, unknown) = select(state, ask);
    let replays = state.index.replays();
    let mut p = Preview {
        items: Vec::with_capacity(rows.len()),
        send: 0,
        skip: 0,
        refuse: 0,
        unknown,
    };
    for r in rows {
        let marks = replays.ledger.marks(r.id).len();
        let action = match &r.seal {
            Some(v) if !v.is_verified() && !ask.allow.unverified => {
                Action::Refuse { why: v.explain() }
            }
            _ if marks > 0 && !ask.allow.force => Action::Skip { replays: marks },
            _ => Action::Send {
                queue: state.names.queue(r.stage).to_owned(),
                destination: match r.stage {
                    Stage::Work => "Dify (the source's app), then its targets".into(),
                    Stage::Deliver => r.target.clone().unwrap_or_else(|| "-".into()),
                },
            },
        };
        match action {
            Action::Send { .. } => p.send += 1,
            Action::Skip { .. } => p.skip += 1,
            Action::Refuse { .. } => p.refuse += 1,
        }
        p.items.push(PreviewItem { letter: r, action });
    }
    p
}

/// Starts the replay in the background; returns its id (its record appears as it goes).
pub async fn start(state: &Arc<Console>, who: &Principal, ask: Ask) -> Result<Uuid, ConsoleError> {
    ask.check(who)?;
    let (rows, unknown) = select(state, &ask);
    if let Some(id) = unknown.first() {
        return Err(ConsoleError::NotFound(format!(
            "no dead letter with id {id}"
        )));
    }
    if rows.is_empty() {
        return Err(ConsoleError::NotFound(
            "no dead letter matches the selection".into(),
        ));
    }
    let store = state.link.store().await?;
    let letters = whole_letters(state, &store, &rows).await?;
    let ledger = state.index.replays().ledger.clone();
    let planned = plan(letters, &ledger, ask.allow);
    let spec = RunSpec {
        replay_id: Uuid::now_v7(),
        actor: who.actor(),
        via: who.via(),
        host: whoami::hostname().unwrap_or_else(|_| "unknown".into()),
        selection: match &ask.filter {
            Some((q, description)) => Selection::Filter {
                filter: q.filter.clone(),
                description: description.clone(),
            },
            None => Selection::Ids {
                ids: ask.ids.clone(),
            },
        },
        force: ask.allow.force,
        rate: ask.rate,
        rate_text: ask
            .rate
            .map(|r| format!("{}/{}", r.count, humantime::format_duration(r.per))),
    };
    let id = spec.replay_id;
    state.set_running(
        id,
        Some(format!("sending {} dead letter(s)", planned.send.len())),
    );
    let st = state.clone();
    state.tasks.spawn(async move {
        let progress = indicatif::ProgressBar::hidden();
        let r = execute(&store, Some(&st.trail), &planned, &spec, &progress, &st.stop).await;
        match r {
            Ok(o) => tracing::info!(replay_id = %id, sent = o.sent, failed = o.failed, skipped = o.skipped, actor = %spec.actor, "console replay finished"),
            Err(e) => tracing::error!(replay_id = %id, error = %e, "console replay failed"),
        }
        st.set_running(id, None);
    });
    Ok(id)
}

/// The whole letters of these rows, read from the stream between their offsets.
pub async fn whole_letters(
    state: &Console,
    store: &deadletters::store::Store,
    rows: &[Row],
) -> Result<Vec<Letter>, ConsoleError> {
    let (Some(first), Some(last)) = (
        rows.iter().map(|r| r.offset).min(),
        rows.iter().map(|r| r.offset).max(),
    ) else {
        return Ok(Vec::new());
    };
    let wanted: HashSet<u64> = rows.iter().map(|r| r.offset).collect();
    let mut out = Vec::with_capacity(rows.len());
    store
        .read_range(&state.names.stream, first, last, |e| {
            if wanted.contains(&e.offset) {
                out.push(record::letter(e.offset, &e.body, &e.meta, &state.names));
            }
            ControlFlow::Continue(())
        })
        .await?;
    Ok(out)
}
