//! "Where is my event": everything the pipeline still knows of one event, found by our event
//! id (or a dead letter's id) or by the platform's message id. It reads what each stage leaves
//! behind: the ingress's door records (`seen:{source}:{message id}` -> event id, and
//! `event:{event id}` -> source and message id), the worker's idempotency record
//! (`idem:{source}:{message id}`: claimed, answered), the dispatcher's delivered markers
//! (`delivered:{job id}`, one per destination: `reply` and the source's targets), the dead
//! letters in the index and their replays. Each record lives only for its TTL; what has
//! expired is said so, not guessed.
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use shared::envelope::{Destination, DispatchJob};
use uuid::Uuid;

use crate::error::ConsoleError;
use crate::index::Row;
use crate::state::Console;
use deadletters::audit::Mark;

/// What the pipeline knows of one event.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Trace {
    pub asked: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The platform's message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Kept at the door (the ingress published it and remembers it).
    pub kept: bool,
    /// The worker's record: `leased` (being answered), `done` (answered), `free`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Destinations with a delivered marker.
    pub delivered: Vec<String>,
    /// Destinations checked without a marker.
    pub not_delivered: Vec<String>,
    pub letters: Vec<Row>,
    pub replays: Vec<(Uuid, Mark)>,
    pub notes: Vec<String>,
}

#[derive(Deserialize)]
struct Origin {
    source: String,
    dedup_key: String,
}

/// Looks an event up by `asked` (an event id, a dead letter id, or a platform message id),
/// optionally within one source.
pub async fn trace(
    state: &Console,
    asked: &str,
    source: Option<&str>,
) -> Result<Trace, ConsoleError> {
    let asked = asked.trim();
    if asked.is_empty() {
        return Err(ConsoleError::BadRequest(
            "give an event id or a platform message id".into(),
        ));
    }
    let mut t = Trace {
        asked: asked.to_owned(),
        ..Trace::default()
    };
    let mut c = state.redis.conn().await.map_err(unavailable)?;
    match Uuid::parse_str(asked) {
        Ok(id) => by_id(state, &mut c, &mut t, id).await?,
        Err(_) => by_message_id(state, &mut c, &mut t, asked, source).await?,
    }
    if let (Some(src), Some(mid)) = (t.source.clone(), t.message_id.clone()) {
        answer_state(state, &mut c, &mut t, &src, &mid).await?;
    }
    if let Some(e) = t.event_id {
        deliveries(state, &mut c, &mut t, e).await?;
        if t.letters.is_empty() {
            t.letters = state.index.of_event(e);
        }
    }
    for l in &t.letters {
        for m in state.index.marks(l.id) {
            t.replays.push((l.id, m));
        }
    }
    if t.event_id.is_none() && t.letters.is_empty() {
        t.notes.push("nothing is known of it: the ingress never kept it, or its records expired (see [ingress] dedup_ttl, [worker] answer_ttl, [dispatcher] delivered_ttl)".into());
    }
    Ok(t)
}

async fn by_id(
    state: &Console,
    c: &mut shared::store::Connection,
    t: &mut Trace,
    id: Uuid,
) -> Result<(), ConsoleError> {
    // A dead letter's id leads to its event.
    let id = match state.index.get(id) {
        Some(row) => {
            t.letters.push(row.clone());
            row.event_id.unwrap_or(id)
        }
        None => id,
    };
    t.event_id = Some(id);
    let origin: Option<String> = redis::cmd("GET")
        .arg(state.redis.key(&["event", &id.to_string()]))
        .query_async(c)
        .await
        .map_err(unavailable)?;
    if let Some(o) = origin.and_then(|o| serde_json::from_str::<Origin>(&o).ok()) {
        t.kept = true;
        t.source = Some(o.source);
        t.message_id = Some(o.dedup_key);
        return Ok(());
    }
    let letters = state.index.of_event(id);
    if let Some(l) = letters.iter().find(|l| l.dedup_key.is_some()) {
        t.source = Some(l.source.clone());
        t.message_id = l.dedup_key.clone();
    } else if let Some(l) = letters.first() {
        t.source = Some(l.source.clone());
    }
    t.notes.push("the ingress's record of this event id has expired or never existed (kept for [ingress] dedup_ttl)".into());
    Ok(())
}

async fn by_message_id(
    state: &Console,
    c: &mut shared::store::Connection,
    t: &mut Trace,
    message_id: &str,
    source: Option<&str>,
) -> Result<(), ConsoleError> {
    t.message_id = Some(message_id.to_owned());
    t.letters = state.index.of_dedup(message_id);
    let sources: Vec<String> = match source {
        Some(s) => vec![s.to_owned()],
        None => state.config.sources.iter().map(|s| s.id.clone()).collect(),
    };
    for s in sources {
        let seen: Option<String> = redis::cmd("GET")
            .arg(state.redis.key(&["seen", &s, message_id]))
            .query_async(c)
            .await
            .map_err(unavailable)?;
        if let Some(e) = seen.and_then(|e| Uuid::parse_str(&e).ok()) {
            t.kept = true;
            t.event_id = Some(e);
            t.source = Some(s);
            return Ok(());
        }
    }
    if let Some(l) = t.letters.first() {
        t.event_id = l.event_id;
        t.source = Some(l.source.clone());
    }
    t.notes.push("no source's door record holds this message id (expired after [ingress] dedup_ttl, or never received)".into());
    Ok(())
}

async fn answer_state(
    state: &Console,
    c: &mut shared::store::Connection,
    t: &mut Trace,
    source: &str,
    message_id: &str,
) -> Result<(), ConsoleError> {
    let (st, answered): (Option<String>, bool) = redis::pipe()
        .hget(state.redis.key(&["idem", source, message_id]), "state")
        .hexists(state.redis.key(&["idem", source, message_id]), "answer")
        .query_async(c)
        .await
        .map_err(unavailable)?;
    t.answer = st.map(|s| {
        if answered {
            "done (answer recorded)".into()
        } else {
            s
        }
    });
    if t.answer.is_none() {
        t.notes
            .push("no worker record: not yet taken, or it expired ([worker] answer_ttl)".into());
    }
    Ok(())
}

async fn deliveries(
    state: &Console,
    c: &mut shared::store::Connection,
    t: &mut Trace,
    event: Uuid,
) -> Result<(), ConsoleError> {
    let names = state
        .config
        .destinations_of(t.source.as_deref().unwrap_or(""));
    let mut pipe = redis::pipe();
    for n in &names {
        // A job id depends only on the destination's name (`reply` or the target id), not on
        // a reply's handle, so a target named like it gives the same id. It comes from the
        // platform's identity of the event (source, message id); a job of an earlier version,
        // a replay or an event without a message id has its id from the event id instead.
        let destination = Destination::Target { id: n.clone() };
        let legacy = DispatchJob::job_id_of_event(event, &destination);
        let by_identity = match (t.source.as_deref(), t.message_id.as_deref()) {
            (Some(s), Some(m)) if !m.is_empty() => {
                DispatchJob::job_id_of_platform_event(s, m, &destination)
            }
            _ => legacy,
        };
        pipe.exists(vec![
            state.redis.key(&["delivered", &by_identity.to_string()]),
            state.redis.key(&["delivered", &legacy.to_string()]),
        ]);
    }
    let found: Vec<u32> = pipe.query_async(c).await.map_err(unavailable)?;
    for (n, f) in names.into_iter().zip(found) {
        if f > 0 {
            t.delivered.push(n);
        } else {
            t.not_delivered.push(n);
        }
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> ConsoleError {
    tracing::error!(error = %e, "Redis unavailable for an event lookup");
    ConsoleError::Unavailable("Redis is unavailable".into())
}
