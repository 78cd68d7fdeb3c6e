//! The HTML side of the console: sign-in and sign-out, the list, one letter, stats, the replay
//! record, a replay's preview and start, "where is my event", the exports, the stylesheet and
//! the health checks. Each handler checks who asks (and for a change, the CSRF token and the
//! role), asks the index or the store, and renders with [`crate::html`].
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use shared::config::ConsoleRole;
use std::sync::Arc;
use uuid::Uuid;

use crate::auth::{cookie, password::random_token, PageUser};
use crate::error::{ConsoleError, PageError};
use crate::html::{self, letters::ListView, Nav};
use crate::query::Params;
use crate::replay::{self, Ask};
use crate::state::Console;
use crate::{client_addr, ClientAddr};

type Page = Result<Response, PageError>;

const LOGIN_COOKIE: &str = "sb_login";

fn params(raw: Option<String>) -> Result<Params, ConsoleError> {
    Params::parse(raw.unwrap_or_default().as_bytes())
}

fn render(title: &str, who: &crate::auth::Principal, nav: Nav, body: maud::Markup) -> Response {
    Html(html::page(title, who, nav, false, body).into_string()).into_response()
}

pub async fn login_page(State(st): State<Arc<Console>>, headers: HeaderMap) -> Page {
    if st.auth.principal(&headers).await.ok().flatten().is_some() {
        return Ok(Redirect::to("/letters").into_response());
    }
    Ok(login_form(&st, None, StatusCode::OK))
}

/// The sign-in form with a fresh double-submit token (a cookie and a field that must match).
fn login_form(st: &Console, error: Option<&str>, status: StatusCode) -> Response {
    let token = random_token();
    let secure = if st.console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let set = format!(
        "{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    );
    (
        status,
        [(header::SET_COOKIE, set)],
        Html(html::login(error, &token).into_string()),
    )
        .into_response()
}

pub async fn login(
    State(st): State<Arc<Console>>,
    addr: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    let p = Params::parse(&body)?;
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let given = p.get("login_csrf").unwrap_or("");
    if expected.is_empty() || !crate::auth::password::same(&expected, given) {
        return Ok(login_form(
            &st,
            Some("The sign-in form expired; try again."),
            StatusCode::FORBIDDEN,
        ));
    }
    let user = p.get("user").unwrap_or("");
    match st
        .auth
        .sign_in(user, p.get("password").unwrap_or(""), client_addr(&addr))
        .await
    {
        Ok((sid, _)) => {
            tracing::info!(user, "console sign-in");
            let set = st.auth.cookie(&sid, st.auth.sessions.ttl().as_secs());
            Ok(([(header::SET_COOKIE, set)], Redirect::to("/letters")).into_response())
        }
        Err(e @ ConsoleError::TooMany(_)) => {
            tracing::warn!(user, "console sign-in refused: too many failures");
            let mut r = login_form(&st, Some(&e.to_string()), StatusCode::TOO_MANY_REQUESTS);
            if let ConsoleError::TooMany(d) = e {
                if let Ok(v) = d.as_secs().max(1).to_string().parse() {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            Ok(r)
        }
        Err(ConsoleError::Forbidden(m)) => {
            tracing::warn!(user, "console sign-in failed");
            Ok(login_form(&st, Some(&m), StatusCode::UNAUTHORIZED))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn logout(State(st): State<Arc<Console>>, PageUser(who): PageUser, body: Bytes) -> Page {
    let p = Params::parse(&body)?;
    who.check_csrf(p.get("csrf"))?;
    if let Some(sid) = &who.sid {
        st.auth.sessions.end(sid).await?;
    }
    let clear = st.auth.cookie("", 0);
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}

pub async fn letters(
    State(st): State<Arc<Console>>,
    PageUser(who): PageUser,
    RawQuery(raw): RawQuery,
) -> Page {
    let p = params(raw)?;
    let q = p.query(Utc::now())?;
    let limit = p.limit.unwrap_or(st.console.page_size).clamp(1, 1000);
    let page = st.index.page(&q, p.before, limit);
    let replays = {
        let r = st.index.replays();
        page.rows
            .iter()
            .map(|row| r.ledger.marks(row.id).len())
            .collect()
    };
    let (sources, targets) = choices(&st);
    let view = ListView {
        params: &p,
        page: &page,
        sources,
        targets,
        replays,
        ready: st.index.ready(),
        indexed: st.index.len(),
        csrf: who.csrf(),
        can_replay: who.role >= ConsoleRole::Replayer,
    };
    Ok(render(
        "Dead letters",
        &who,
        Nav::Letters,
        html::letters::list(&view),
    ))
}

/// The sources and targets to filter by: the config's and those seen in the store.
fn choices(st: &Console) -> (Vec<String>, Vec<String>) {
    let (mut sources, mut targets) = st.index.names();
    sources.extend(st.config.sources.iter().map(|s| s.id.clone()));
    targets.extend(st.config.targets.iter().map(|t| t.id.clone()));
    targets.push("reply".into());
    for v in [&mut sources, &mut targets] {
        v.sort();
        v.dedup();
    }
    (sources, targets)
}

pub async fn letter(
    State(st): State<Arc<Console>>,
    PageUser(who): PageUser,
    Path(id): Path<Uuid>,
) -> Page {
    let l = crate::api::whole_letter(&st, id).await?;
    let marks = st.index.marks(id);
    let queue = st.names.queue(l.letter.stage).to_owned();
    let body = html::letters::letter(
        &l,
        &marks,
        &queue,
        who.csrf(),
        who.role >= ConsoleRole::Replayer,
    );
    Ok(render(
        &format!("Dead letter {id}"),
        &who,
        Nav::Letters,
        body,
    ))
}

pub async fn stats(
    State(st): State<Arc<Console>>,
    PageUser(who): PageUser,
    RawQuery(raw): RawQuery,
) -> Page {
    let p = params(raw)?;
    let q = p.query(Utc::now())?;
    let s = st.index.stats(&q);
    let days = st.index.per_day(&q);
    let (sources, targets) = choices(&st);
    Ok(render(
        "Stats",
        &who,
        Nav::Stats,
        html::stats::stats(&p, &s, &days, &sources, &targets),
    ))
}

pub async fn replays(State(st): State<Arc<Console>>, PageUser(who): PageUser) -> Page {
    let chain = crate::api::chain_report(&st).await?;
    let runs = st.index.replays().ledger.runs().to_vec();
    Ok(render(
        "Replay record",
        &who,
        Nav::Replays,
        html::replays::record(chain.as_ref(), &runs),
    ))
}

pub async fn replay_run(
    State(st): State<Arc<Console>>,
    PageUser(who): PageUser,
    Path(id): Path<Uuid>,
) -> Page {
    let run = st.index.replays().ledger.run(id).cloned();
    let running = st.running(id);
    let unfinished = run
        .as_ref()
        .is_none_or(|r| r.state == deadletters::audit::RunState::Running);
    let body = html::replays::run(run.as_ref(), id, running.as_deref());
    let refresh = running.is_some() || (run.is_none() && unfinished);
    Ok(
        Html(html::page(&format!("Replay {id}"), &who, Nav::Replays, refresh, body).into_string())
            .into_response(),
    )
}

pub async fn preview(State(st): State<Arc<Console>>, PageUser(who): PageUser, body: Bytes) -> Page {
    let p = Params::parse(&body)?;
    who.check_csrf(p.get("csrf"))?;
    who.require(ConsoleRole::Replayer)?;
    let ask = Ask::from_params(&p)?;
    let preview = replay::preview(&st, &ask);
    let mut hidden: Vec<(String, String)> = p
        .filter_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    hidden.extend(p.ids.iter().map(|i| ("id".to_owned(), i.to_string())));
    hidden.push((
        "scope".into(),
        p.get("scope").unwrap_or("selected").to_owned(),
    ));
    let body = html::replays::preview(
        &preview,
        &hidden,
        who.csrf(),
        who.role >= ConsoleRole::Admin,
    );
    Ok(render("Replay preview", &who, Nav::Letters, body))
}

pub async fn start_replay(
    State(st): State<Arc<Console>>,
    PageUser(who): PageUser,
    body: Bytes,
) -> Page {
    let p = Params::parse(&body)?;
    who.check_csrf(p.get("csrf"))?;
    let ask = Ask::from_params(&p)?;
    let id = replay::start(&st, &who, ask).await?;
    Ok(Redirect::to(&format!("/replays/{id}")).into_response())
}

pub async fn events(
    State(st): State<Arc<Console>>,
    PageUser(who): PageUser,
    RawQuery(raw): RawQuery,
) -> Page {
    let p = params(raw)?;
    let source = p.source.clone();
    let (sources, _) = choices(&st);
    let trace = match p.q.trim() {
        "" => None,
        q => Some(
            crate::where_is::trace(&st, q, Some(source.as_str()).filter(|s| !s.is_empty())).await?,
        ),
    };
    let body = html::events::events(&p.q, &source, &sources, trace.as_ref());
    Ok(render("Where is my event", &who, Nav::Events, body))
}

pub async fn export_csv(
    State(st): State<Arc<Console>>,
    PageUser(_): PageUser,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = params(raw)?.query(Utc::now())?;
    Ok(crate::export::csv(&st, &q)?)
}

pub async fn export_jsonl(
    State(st): State<Arc<Console>>,
    PageUser(_): PageUser,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = params(raw)?.query(Utc::now())?;
    Ok(crate::export::jsonl(st.clone(), &q).await?)
}

pub async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        html::CSS,
    )
}

pub async fn readyz(State(st): State<Arc<Console>>) -> impl IntoResponse {
    if st.index.ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "indexing the dead-letter store",
        )
    }
}
