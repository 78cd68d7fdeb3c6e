//! `dlq replay`: dead letters chosen by id, by filter or `--all` go back to their stage with a
//! fresh attempt count. The steps: check what was asked, select the letters, plan (skip those
//! already replayed unless `--force`), show a dry run or ask a person (unless `--yes`), send
//! with a progress bar and Ctrl-C stopping it cleanly, and report how it went. Planning and
//! sending are [`crate::replay`]'s and [`crate::execute`]'s; this module is the conversation.
//! With an audit key, letters whose seal does not verify are refused (`--allow-unverified`
//! sends them, on record) and the run's record parts go into the chain.
use shared::config::AuditorConfig;
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use tokio_util::sync::CancellationToken;

use super::read::{by_ids, open, select};
use super::{Console, ReplayArgs};
use crate::audit::{Ledger, RunState, Selection};
use crate::execute::{execute, Outcome, RunSpec};
use crate::filter::Filter;
use crate::record::{self, Letter, Names};
use crate::render;
use crate::replay::{plan, Allow, Plan};
use crate::report::ListItem;
use crate::store::Store;
use crate::trail::Appender;
use crate::DlqError;

pub(super) async fn replay(
    a: &ReplayArgs,
    filter: Filter,
    config: &AuditorConfig,
    c: &mut Console,
) -> Result<(), DlqError> {
    let selection = selection(a, &filter)?;
    let (store, names, ledger) = open(config).await?;
    let trail = appender(config, &store)?;
    let ctx = Ctx {
        store: &store,
        trail: trail.as_ref(),
        names: &names,
        ledger: &ledger,
    };
    let result = replay_on(a, &filter, selection, &ctx, c).await;
    store.close().await;
    result
}

/// What a replay runs against.
struct Ctx<'a> {
    store: &'a Store,
    trail: Option<&'a Appender>,
    names: &'a Names,
    ledger: &'a Ledger,
}

/// The chain's appender, when there is an audit key.
pub(super) fn appender(
    config: &AuditorConfig,
    store: &Store,
) -> Result<Option<Appender>, DlqError> {
    if store.keyring().is_none() {
        return Ok(None);
    }
    let redis =
        shared::store::Store::new(&config.redis).map_err(|e| DlqError::Redis(e.to_string()))?;
    Ok(Some(Appender::new(
        redis,
        config.audit.checkpoint_every,
        host(),
    )))
}

/// What the command line asked to replay: ids, or a filter (`--all` is the empty one).
fn selection(a: &ReplayArgs, filter: &Filter) -> Result<Selection, DlqError> {
    let by_filter = a.all || !filter.is_empty();
    if a.ids.is_empty() && !by_filter {
        return Err(DlqError::Usage(
            "say which dead letters to replay: ids, filters (such as --reason exhausted) or --all"
                .into(),
        ));
    }
    if !a.ids.is_empty() && by_filter {
        return Err(DlqError::Usage(
            "give either ids or filters (--all), not both".into(),
        ));
    }
    Ok(if a.ids.is_empty() {
        Selection::Filter {
            description: if filter.is_empty() {
                "--all".into()
            } else {
                filter.describe()
            },
            filter: filter.clone(),
        }
    } else {
        Selection::Ids { ids: a.ids.clone() }
    })
}

async fn replay_on(
    a: &ReplayArgs,
    filter: &Filter,
    selection: Selection,
    x: &Ctx<'_>,
    c: &mut Console,
) -> Result<(), DlqError> {
    let letters = if a.ids.is_empty() {
        by_filter(x.store, x.names, filter).await?
    } else {
        by_ids(x.store, x.names, &a.ids.iter().copied().collect()).await?
    };
    let allow = Allow {
        force: a.force,
        unverified: a.allow_unverified,
    };
    let p = plan(letters, x.ledger, allow);
    if a.dry_run {
        return dry_run(&p, x.names, x.ledger, c);
    }
    let actor = actor(&a.actor);
    if !p.send.is_empty() && !a.yes {
        confirm(&p, x.names, &actor, c)?;
    }
    let os_user = actor_of_os();
    let spec = RunSpec {
        replay_id: uuid::Uuid::now_v7(),
        via: if os_user == actor {
            "cli".into()
        } else {
            format!("cli (os user {os_user})")
        },
        actor,
        host: host(),
        selection,
        force: a.force,
        rate: a.rate,
        rate_text: a
            .rate
            .map(|r| format!("{}/{}", r.count, humantime::format_duration(r.per))),
    };
    let outcome = send(x, &p, &spec, c).await?;
    let actor = match x.trail {
        Some(_) => spec.actor.clone(),
        // Said on the summary line (stdout), so a failure stays one line on stderr.
        None => format!("{}; no [audit] key: not sealed, not chained", spec.actor),
    };
    report(&outcome, &p, &actor, c)
}

/// The whole letters a filter selects; none is an error (there is nothing to replay).
async fn by_filter(store: &Store, names: &Names, filter: &Filter) -> Result<Vec<Letter>, DlqError> {
    let mut keep = Vec::new();
    select(store, names, filter, |e, _| {
        keep.push(record::letter(e.offset, &e.body, &e.meta, names));
        ControlFlow::Continue(())
    })
    .await?;
    if keep.is_empty() {
        return match filter.is_empty() {
            true => Err(DlqError::NothingMatched(
                "--all (the store is empty)".into(),
            )),
            false => Err(DlqError::NothingMatched(filter.describe())),
        };
    }
    Ok(keep)
}

/// Sends the plan with a progress bar; Ctrl-C stops it cleanly (what is in flight settles and
/// the run is recorded as interrupted).
async fn send(x: &Ctx<'_>, p: &Plan, spec: &RunSpec, c: &mut Console) -> Result<Outcome, DlqError> {
    let progress = c.progress(p.send.len() as u64);
    let stop = CancellationToken::new();
    let on_ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        })
    };
    let outcome = execute(x.store, x.trail, p, spec, &progress, &stop).await;
    on_ctrl_c.abort();
    progress.finish_and_clear();
    outcome
}

/// One line on how the replay went; an interrupted run or any failure is an error exit.
fn report(o: &Outcome, p: &Plan, actor: &str, c: &mut Console) -> Result<(), DlqError> {
    let secs = o.sending.as_secs_f64();
    let pace = if o.sent > 0 && secs > 0.0 {
        format!(" in {secs:.1}s ({:.0}/s)", o.sent as f64 / secs)
    } else {
        String::new()
    };
    c.print(&format!(
        "replay {}: {} sent{pace}, {} skipped as already replayed, {} failed (by {actor}; `switchboard dlq audit {}` shows the record)",
        o.replay_id, o.sent, o.skipped, o.failed, o.replay_id
    ))?;
    for (l, why) in &p.refused {
        c.note(&format!("refused {}: {why}", l.letter.id));
    }
    if o.state == RunState::Interrupted {
        return Err(DlqError::Interrupted {
            sent: o.sent,
            total: p.send.len() as u64,
            replay_id: o.replay_id,
        });
    }
    if o.failed > 0 {
        return Err(DlqError::ReplayFailed {
            failed: o.failed,
            total: (p.send.len() + p.refused.len()) as u64,
            replay_id: o.replay_id,
        });
    }
    if o.sent == 0 && o.skipped > 0 {
        c.note(
            "nothing sent: every selected dead letter was already replayed (--force sends them again)",
        );
    }
    Ok(())
}

fn actor(given: &Option<String>) -> String {
    given
        .clone()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(actor_of_os)
}

fn actor_of_os() -> String {
    whoami::username()
        .ok()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

pub(super) fn host() -> String {
    whoami::hostname().unwrap_or_else(|_| "unknown".into())
}

fn plan_summary(p: &Plan, names: &Names) -> String {
    let (work, deliver) = p.per_stage();
    let mut s = format!("{} dead letter(s)", p.send.len());
    let mut to = Vec::new();
    if work > 0 {
        to.push(format!("{work} to `{}`", names.work));
    }
    if deliver > 0 {
        to.push(format!("{deliver} to `{}`", names.deliver));
    }
    if !to.is_empty() {
        s.push_str(&format!(" ({})", to.join(", ")));
    }
    if !p.skipped.is_empty() {
        s.push_str(&format!(
            "; {} skipped as already replayed (--force sends them again)",
            p.skipped.len()
        ));
    }
    if !p.refused.is_empty() {
        s.push_str(&format!(
            "; {} refused: their seal does not verify (--allow-unverified sends them)",
            p.refused.len()
        ));
    }
    s
}

fn dry_run(p: &Plan, names: &Names, ledger: &Ledger, c: &mut Console) -> Result<(), DlqError> {
    let items: Vec<ListItem> = p
        .send
        .iter()
        .chain(p.skipped.iter())
        .chain(p.refused.iter().map(|(l, _)| l))
        .map(|l| ListItem::new(record::Summary::of(l), ledger.marks(l.letter.id)))
        .collect();
    c.print(&render::list_table(&items, c.width))?;
    for (l, why) in &p.refused {
        c.note(&format!("refused {}: {why}", l.letter.id));
    }
    c.print(&format!(
        "dry run: would replay {}; nothing sent, nothing recorded",
        plan_summary(p, names)
    ))
}

fn confirm(p: &Plan, names: &Names, actor: &str, c: &mut Console) -> Result<(), DlqError> {
    if !c.stdin_tty {
        return Err(DlqError::Refused(format!(
            "refusing to replay {} dead letter(s) without confirmation: no terminal to ask on (pass --yes)",
            p.send.len()
        )));
    }
    let _ = write!(
        c.err,
        "Replay {} as {actor}? [y/N] ",
        plan_summary(p, names)
    );
    let _ = c.err.flush();
    let mut answer = String::new();
    let _ = c.input.read_line(&mut answer);
    match answer.trim().to_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(DlqError::Refused(
            "replay cancelled: nothing was sent".into(),
        )),
    }
}
