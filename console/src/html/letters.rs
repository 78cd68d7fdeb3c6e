//! The dead-letter pages: the filtered list (newest first, a page at a time, with checkboxes
//! for a replay selection and links to the exports) and one letter in full (its fields, its
//! seal, its replays, its attempts as a timeline and its original message, credentials
//! redacted). Pure.
use deadletters::audit::Mark;
use deadletters::record::Letter;
use maud::{html, Markup};

use super::{json_block, seal, time};
use crate::index::Page;
use crate::query::Params;

const REASONS: [&str; 5] = ["permanent", "exhausted", "poison", "expired", "invalid"];

/// What the list page shows.
pub struct ListView<'a> {
    pub params: &'a Params,
    pub page: &'a Page,
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    /// How often each row of the page was replayed.
    pub replays: Vec<usize>,
    pub ready: bool,
    pub indexed: usize,
    pub csrf: &'a str,
    pub can_replay: bool,
}

fn choice(name: &str, label: &str, current: &str, options: &[String]) -> Markup {
    html! {
        label { (label)
            select name=(name) id=(format!("f-{name}")) {
                option value="" { "any" }
                @for o in options {
                    option value=(o) selected[o == current] { (o) }
                }
            }
        }
    }
}

/// The filter form (GET), shared by the list and the stats.
pub fn filters(p: &Params, action: &str, sources: &[String], targets: &[String]) -> Markup {
    let reasons: Vec<String> = REASONS.iter().map(|s| s.to_string()).collect();
    let stages = vec!["work".to_owned(), "deliver".to_owned()];
    let seals = vec!["verified".to_owned(), "unverified".to_owned()];
    html! {
        form.filters method="get" action=(action) {
            (choice("reason", "Reason", &p.reason, &reasons))
            (choice("stage", "Stage", &p.stage, &stages))
            (choice("source", "Source", &p.source, sources))
            (choice("target", "Target", &p.target, targets))
            label { "Dead since" input type="text" name="since" value=(p.since) placeholder="24h, 2024-05-01"; }
            label { "until" input type="text" name="until" value=(p.until) placeholder="2024-05-08"; }
            label { "Text" input type="search" name="q" id="f-q" value=(p.q) placeholder="order 4242"; }
            (choice("seal", "Seal", &p.seal, &seals))
            button.primary type="submit" id="apply" { "Apply" }
            a href=(action) { "clear" }
        }
    }
}

/// The list page's body.
pub fn list(v: &ListView<'_>) -> Markup {
    let qs = v.params.to_query_string();
    html! {
        h1 { "Dead letters" }
        @if !v.ready { p.box { "Indexing the store: " (v.indexed) " letters so far; the list is complete once this note is gone." } }
        (filters(v.params, "/letters", &v.sources, &v.targets))
        div.bar {
            strong id="total" { (v.page.total) } " dead letter(s) match"
            span.muted { "showing the newest " (v.page.rows.len()) }
            a href=(format!("/export.csv?{qs}")) { "Export CSV" }
            a href=(format!("/export.jsonl?{qs}")) { "Export JSON Lines" }
            a href=(format!("/stats?{qs}")) { "Stats of these" }
        }
        form method="post" action="/replay/preview" {
            input type="hidden" name="csrf" value=(v.csrf);
            @for (k, val) in v.params.filter_fields() { input type="hidden" name=(k) value=(val); }
            table id="letters" {
                thead { tr {
                    @if v.can_replay { th { "" } }
                    th { "Dead at" } th { "Stage" } th { "Reason" } th { "Source" } th { "Target" }
                    th { "Tries" } th { "Seal" } th { "Replayed" } th { "Error" } th { "Id" }
                } }
                tbody {
                    @for (r, n) in v.page.rows.iter().zip(v.replays.iter()) {
                        tr {
                            @if v.can_replay { td { input type="checkbox" name="id" value=(r.id) aria-label="select"; } }
                            td.mono { (time(r.dead_at)) }
                            td { (r.stage.as_str()) }
                            td { (r.reason.as_str()) }
                            td { (if r.source.is_empty() { "-" } else { &r.source }) }
                            td { (r.target.as_deref().unwrap_or("-")) }
                            td.num { (r.attempts) }
                            td { (seal(r.seal.as_ref())) }
                            td { @if *n > 0 { (n) "×" } @else { "-" } }
                            td { (r.error) }
                            td.mono { a href=(format!("/letters/{}", r.id)) { (r.id) } }
                        }
                    }
                }
            }
            @if v.can_replay && !v.page.rows.is_empty() {
                div.bar {
                    button.primary type="submit" name="scope" value="selected" id="preview-selected" { "Preview replay of the selected" }
                    button.primary type="submit" name="scope" value="filter" id="preview-filter" { "Preview replay of all " (v.page.total) " matching" }
                }
            }
        }
        @if let Some(next) = v.page.next {
            p { a id="older" href=(format!("/letters?{qs}&before={next}")) { "Older →" } }
        }
    }
}

/// One letter in full.
pub fn letter(l: &Letter, marks: &[Mark], queue: &str, csrf: &str, can_replay: bool) -> Markup {
    let d = &l.letter;
    let first = d.attempts.first().map(|a| a.at);
    html! {
        h1 { "Dead letter " span.mono { (d.id) } }
        dl.fields.box {
            dt { "Stage" } dd { (d.stage.as_str()) " (replays to " span.mono { (queue) } ")" }
            dt { "Reason" } dd { (d.reason.as_str()) }
            dt { "Error" } dd { (d.error) }
            dt { "Source" } dd { (d.source) }
            dt { "Target" } dd { (d.target.as_deref().unwrap_or("-")) }
            dt { "Event" } dd.mono { @if let Some(e) = d.event_id { a href=(format!("/events?q={e}")) { (e) } } @else { "-" } }
            dt { "Dead at" } dd { (time(d.dead_at)) }
            dt { "Seal" } dd id="seal" { (seal(l.seal.as_ref())) " " span.muted { (l.seal.as_ref().map(|v| v.explain()).unwrap_or_else(|| "no [audit] key: not checked".into())) } }
            dt { "Store" } dd { "offset " (l.offset) ", " (match l.origin { deadletters::record::Origin::Envelope => "published by the stage", deadletters::record::Origin::Broker => "dead-lettered by the broker" }) }
            dt { "Replayed" } dd {
                @if marks.is_empty() { "never" }
                @for m in marks { div { (time(m.at)) " by " (m.actor) " (" a href=(format!("/replays/{}", m.replay_id)) { "replay " (m.replay_id) } ")" } }
            }
        }
        @if can_replay {
            form method="post" action="/replay/preview" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="id" value=(d.id);
                button.primary type="submit" name="scope" value="selected" id="preview-one" { "Preview a replay of this letter" }
            }
        }
        h2 { "Attempts (" (d.attempts.len()) ")" }
        ol.timeline {
            @for a in &d.attempts {
                li {
                    span.mono { (time(a.at)) }
                    @if let Some(f) = first { " " span.muted { "+" (since(a.at - f)) } }
                    " — " (a.outcome.as_str())
                    @if let Some(s) = a.status { " " (s) }
                    @if let Some(c) = &a.code { " [" (c) "]" }
                    " " span.muted { (a.duration_ms) "ms" }
                    @if let Some(e) = &a.error { div { (e) } }
                    @if let Some(x) = &a.excerpt { div.mono.muted { (x) } }
                }
            }
            li.end { span.mono { (time(d.dead_at)) } " — gave up: " (d.reason.as_str()) }
        }
        h2 { "Original message (credentials redacted)" }
        (json_block(&d.message))
    }
}

fn since(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}
