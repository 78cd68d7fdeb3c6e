//! The replay pages: the record (the chain's state — intact, or where it breaks — and every
//! run with who, when, what and how it went), one run in full, and a replay's dry-run preview
//! with the form that starts it (pace, and the admin's force and allow-unverified). Pure.
use deadletters::audit::Run;
use deadletters::chain::{ChainReport, ChainState};
use maud::{html, Markup};

use super::time;
use crate::replay::{Action, Preview};

/// The chain's state as a box.
pub fn chain_box(r: Option<&ChainReport>) -> Markup {
    let Some(r) = r else {
        return html! { div.box id="chain" { "The chain is not checked: no [audit] key." } };
    };
    let text = deadletters::render::chain(r);
    let class = match r.state {
        ChainState::Broken { .. } => "box bad",
        ChainState::Intact => "box ok",
        ChainState::Empty => "box",
    };
    html! { div class=(class) id="chain" { pre.mono style="border:0;margin:0;padding:0" { (text) } } }
}

/// The record: the chain and the runs, newest first.
pub fn record(chain: Option<&ChainReport>, runs: &[Run]) -> Markup {
    html! {
        h1 { "Replay record" }
        (chain_box(chain))
        table id="runs" {
            thead { tr { th { "Replay" } th { "Started" } th { "By" } th { "Selection" } th { "Matched" } th { "Sent" } th { "Skipped" } th { "Failed" } th { "State" } } }
            tbody {
                @for r in runs.iter().rev() {
                    tr {
                        td.mono { a href=(format!("/replays/{}", r.replay_id)) { (r.replay_id) } }
                        td.mono { (time(r.started_at)) }
                        td { (r.actor) "@" (r.host) @if !r.trusted { " " span.badge.bad { "unverified" } } }
                        td { (r.selection.describe()) @if r.force { " (force)" } }
                        td.num { (r.matched) } td.num { (r.sent) } td.num { (r.skipped) } td.num { (r.failed) }
                        td { (r.state.as_str()) }
                    }
                }
            }
        }
    }
}

/// One run in full (`running`: this process is still sending it).
pub fn run(r: Option<&Run>, id: uuid::Uuid, running: Option<&str>) -> Markup {
    html! {
        h1 { "Replay " span.mono { (id) } }
        @if let Some(s) = running { p.box id="running" { "Running: " (s) ". This page refreshes itself." } }
        @match r {
            None => p { "Not on record yet." },
            Some(r) => {
                dl.fields.box id="run" {
                    dt { "By" } dd id="run-actor" { (r.actor) " on " (r.host) }
                    dt { "Via" } dd { (r.via.as_deref().unwrap_or("cli")) }
                    dt { "Seal" } dd { @if r.trusted { span.badge.ok { "verified" } } @else { span.badge.bad { "unverified: marks nothing as replayed" } } }
                    dt { "Started" } dd { (time(r.started_at)) }
                    dt { "Last part" } dd { (time(r.last_at)) }
                    dt { "State" } dd id="run-state" { (r.state.as_str()) }
                    dt { "Selection" } dd { (r.selection.describe()) }
                    dt { "Force" } dd { (r.force) }
                    dt { "Pace" } dd { (r.rate.as_deref().unwrap_or("as fast as the broker confirms")) }
                    dt { "Counts" } dd id="run-counts" { (r.matched) " matched, " (r.sent) " sent, " (r.skipped) " skipped, " (r.failed) " failed" }
                }
                h2 { "Sent (" (r.sent_ids.len()) ")" }
                ul.mono { @for i in &r.sent_ids { li { a href=(format!("/letters/{i}")) { (i) } } } }
                @if !r.failures.is_empty() {
                    h2 { "Failed (" (r.failures.len()) ")" }
                    table { @for f in &r.failures { tr { td.mono { (f.id) } td { (f.error) } } } }
                }
            }
        }
    }
}

/// The dry run, with the form that starts the replay.
pub fn preview(p: &Preview, hidden: &[(String, String)], csrf: &str, admin: bool) -> Markup {
    html! {
        h1 { "Replay preview (dry run)" }
        p id="preview-summary" { strong { (p.send) } " would be sent, " (p.skip) " skipped as already replayed, " (p.refuse) " refused (seal does not verify). Nothing has been sent." }
        @if !p.unknown.is_empty() { p.error { "Unknown ids: " @for u in &p.unknown { span.mono { (u) " " } } } }
        form method="post" action="/replay" {
            input type="hidden" name="csrf" value=(csrf);
            @for (k, v) in hidden { input type="hidden" name=(k) value=(v); }
            div.bar {
                label { "Pace " input type="text" name="rate" id="rate" placeholder="20/s (empty: as fast as the broker confirms)" size="36"; }
                @if admin {
                    label { input type="checkbox" name="force" id="force"; " send those already replayed (force)" }
                    label { input type="checkbox" name="allow_unverified" id="allow-unverified"; " send those whose seal does not verify" }
                }
                button.danger type="submit" id="replay" disabled[p.send == 0 && !admin] { "Replay " (p.send) " now" }
            }
        }
        table id="preview" {
            thead { tr { th { "Letter" } th { "Stage" } th { "Source" } th { "What happens" } } }
            tbody {
                @for i in &p.items {
                    tr {
                        td.mono { a href=(format!("/letters/{}", i.letter.id)) { (i.letter.id) } }
                        td { (i.letter.stage.as_str()) }
                        td { (i.letter.source) }
                        td { @match &i.action {
                            Action::Send { queue, destination } => { "sent to " span.mono { (queue) } " → " (destination) }
                            Action::Skip { replays } => { span.badge.warn { "skipped" } " already replayed " (replays) "×" }
                            Action::Refuse { why } => { span.badge.bad { "refused" } " " (why) }
                        } }
                    }
                }
            }
        }
    }
}
