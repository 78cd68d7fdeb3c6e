//! The JSON API under `/api/`: the same operations as the pages, for scripts, signed in with an
//! API token (`Authorization: Bearer …`) or a session cookie (then every change carries the
//! session's CSRF token in `X-CSRF-Token`). The OpenAPI document at `/api/openapi.json` lists
//! every route (a test checks it against the router).
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use deadletters::chain::ChainReport;
use deadletters::record::{self, Letter};
use deadletters::report::ExportLine;
use serde::Deserialize;
use shared::config::ConsoleRole;
use std::ops::ControlFlow;
use std::sync::Arc;
use uuid::Uuid;

use crate::auth::ApiUser;
use crate::error::{ApiError, ConsoleError};
use crate::query::Params;
use crate::redact::redact;
use crate::replay::{self, Ask};
use crate::state::Console;

type Api<T> = Result<T, ApiError>;

/// The OpenAPI document, kept by hand next to the routes.
pub const OPENAPI: &str = include_str!("../assets/openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

fn params(raw: Option<String>) -> Result<Params, ConsoleError> {
    Params::parse(raw.unwrap_or_default().as_bytes())
}

pub async fn whoami(ApiUser(who): ApiUser) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "name": who.name, "role": who.role, "actor": who.actor(), "csrf": who.csrf() }),
    )
}

pub async fn letters(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
    RawQuery(raw): RawQuery,
) -> Api<Json<serde_json::Value>> {
    let p = params(raw)?;
    let q = p.query(Utc::now())?;
    let limit = p.limit.unwrap_or(st.console.page_size).clamp(1, 1000);
    let page = st.index.page(&q, p.before, limit);
    let r = st.index.replays();
    let items: Vec<serde_json::Value> = page
        .rows
        .iter()
        .map(|row| {
            let mut v = serde_json::to_value(row).unwrap_or_default();
            v["replays"] = serde_json::to_value(r.ledger.marks(row.id)).unwrap_or_default();
            v
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "items": items, "total": page.total, "next": page.next, "complete": st.index.ready() }),
    ))
}

/// One letter read whole from the stream, its original message redacted.
pub async fn whole_letter(st: &Console, id: Uuid) -> Result<Letter, ConsoleError> {
    let row = st
        .index
        .get(id)
        .ok_or_else(|| ConsoleError::NotFound(format!("no dead letter with id {id}")))?;
    let store = st.link.store().await?;
    let mut found = None;
    store
        .read_range(&st.names.stream, row.offset, row.offset, |e| {
            if e.offset == row.offset {
                found = Some(record::letter(e.offset, &e.body, &e.meta, &st.names));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .await?;
    let mut l = found.ok_or_else(|| {
        ConsoleError::NotFound(format!(
            "dead letter {id} is no longer in the store (retention)"
        ))
    })?;
    l.letter.message = redact(&l.letter.message);
    Ok(l)
}

pub async fn letter(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
    Path(id): Path<Uuid>,
) -> Api<Json<ExportLine>> {
    let l = whole_letter(&st, id).await?;
    Ok(Json(ExportLine::new(&l, &st.index.marks(id))))
}

pub async fn stats(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
    RawQuery(raw): RawQuery,
) -> Api<Json<serde_json::Value>> {
    let q = params(raw)?.query(Utc::now())?;
    let s = st.index.stats(&q);
    let days: Vec<serde_json::Value> = st
        .index
        .per_day(&q)
        .into_iter()
        .map(|(day, by)| serde_json::json!({ "day": day, "by_reason": by }))
        .collect();
    Ok(Json(serde_json::json!({ "stats": s, "per_day": days })))
}

pub async fn replays(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
) -> Json<serde_json::Value> {
    Json(serde_json::to_value(st.index.replays().ledger.runs()).unwrap_or_default())
}

pub async fn replay_run(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
    Path(id): Path<Uuid>,
) -> Api<Json<serde_json::Value>> {
    let run = st.index.replays().ledger.run(id).cloned();
    let running = st.running(id);
    match (run, running) {
        (Some(r), running) => {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["running_here"] = serde_json::json!(running.is_some());
            Ok(Json(v))
        }
        (None, Some(_)) => Ok(Json(
            serde_json::json!({ "replay_id": id, "state": "starting", "running_here": true }),
        )),
        (None, None) => Err(ConsoleError::NotFound(format!("no replay with id {id}")).into()),
    }
}

/// The chain's verification (`None` without an audit key).
pub async fn chain_report(st: &Console) -> Result<Option<ChainReport>, ConsoleError> {
    if st.link.keyring().is_none() {
        return Ok(None);
    }
    let head = st.trail.head().await?;
    let horizon = st.trail.horizon(st.config.broker.dead_letter_max_age);
    let r = st.index.replays();
    Ok(Some(deadletters::chain::verify(
        &r.links,
        head.as_ref(),
        horizon,
    )))
}

pub async fn chain(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
) -> Api<Json<serde_json::Value>> {
    Ok(Json(
        serde_json::to_value(chain_report(&st).await?).unwrap_or_default(),
    ))
}

/// A replay asked for by a script.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayBody {
    pub ids: Vec<Uuid>,
    /// Replay every letter these filters match (the list's query fields).
    pub filter: Option<std::collections::BTreeMap<String, String>>,
    pub force: bool,
    pub allow_unverified: bool,
    pub rate: Option<String>,
    pub dry_run: bool,
}

impl ReplayBody {
    fn params(&self) -> Result<Params, ConsoleError> {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for id in &self.ids {
            s.append_pair("id", &id.to_string());
        }
        if let Some(f) = &self.filter {
            s.append_pair("scope", "filter");
            for (k, v) in f {
                s.append_pair(k, v);
            }
        }
        for (k, on) in [
            ("force", self.force),
            ("allow_unverified", self.allow_unverified),
        ] {
            if on {
                s.append_pair(k, "on");
            }
        }
        if let Some(r) = &self.rate {
            s.append_pair("rate", r);
        }
        Params::parse(s.finish().as_bytes())
    }
}

pub async fn start_replay(
    State(st): State<Arc<Console>>,
    ApiUser(who): ApiUser,
    headers: HeaderMap,
    Json(body): Json<ReplayBody>,
) -> Api<Response> {
    who.check_csrf(headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))?;
    who.require(ConsoleRole::Replayer)?;
    let ask = Ask::from_params(&body.params()?)?;
    if body.dry_run {
        ask.check(&who)?;
        return Ok(Json(replay::preview(&st, &ask)).into_response());
    }
    let id = replay::start(&st, &who, ask).await?;
    let location = format!("/api/replays/{id}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(serde_json::json!({ "replay_id": id })),
    )
        .into_response())
}

pub async fn events(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
    RawQuery(raw): RawQuery,
) -> Api<Json<crate::where_is::Trace>> {
    let p = params(raw)?;
    let source = Some(p.source.as_str()).filter(|s| !s.is_empty());
    Ok(Json(crate::where_is::trace(&st, &p.q, source).await?))
}

pub async fn export_csv(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
    RawQuery(raw): RawQuery,
) -> Api<Response> {
    let q = params(raw)?.query(Utc::now())?;
    Ok(crate::export::csv(&st, &q)?)
}

pub async fn export_jsonl(
    State(st): State<Arc<Console>>,
    ApiUser(_): ApiUser,
    RawQuery(raw): RawQuery,
) -> Api<Response> {
    let q = params(raw)?.query(Utc::now())?;
    Ok(crate::export::jsonl(st.clone(), &q).await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every `.route("/api/…", get(…).post(…))` in the router, as (method, path).
    fn routes() -> Vec<(String, String)> {
        let src = include_str!("lib.rs");
        let mut out = Vec::new();
        for line in src
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(".route(\"/api/"))
        {
            let path = line.split('"').nth(1).unwrap().to_owned();
            for m in ["get", "post", "put", "delete", "patch"] {
                if line.contains(&format!("{m}(api::")) {
                    out.push((m.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_api_route_is_in_the_openapi_document_and_nothing_else() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let routes = routes();
        assert!(routes.len() >= 12, "{routes:?}");
        for (m, p) in &routes {
            assert!(
                paths.get(p).and_then(|o| o.get(m)).is_some(),
                "{m} {p} is not in openapi.json"
            );
        }
        let documented: usize = paths.values().map(|o| o.as_object().unwrap().len()).sum();
        assert_eq!(
            documented,
            routes.len(),
            "openapi.json documents a route the router lacks"
        );
    }
}
