//! "Where is my event": the search form and what the pipeline knows of the event, stage by
//! stage. Pure.
use maud::{html, Markup};

use super::{seal, time};
use crate::where_is::Trace;

pub fn events(asked: &str, source: &str, sources: &[String], t: Option<&Trace>) -> Markup {
    html! {
        h1 { "Where is my event" }
        form.filters method="get" action="/events" {
            label { "Event id, dead letter id or the platform's message id"
                input type="search" name="q" id="event-q" value=(asked) size="48" required; }
            label { "Source (for a message id)"
                select name="source" { option value="" { "any" } @for s in sources { option value=(s) selected[s == source] { (s) } } } }
            button.primary type="submit" id="find" { "Find" }
        }
        @if let Some(t) = t { (trace(t)) }
    }
}

fn trace(t: &Trace) -> Markup {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    html! {
        dl.fields.box id="trace" {
            dt { "Event id" } dd.mono { (t.event_id.map(|e| e.to_string()).unwrap_or_else(|| "-".into())) }
            dt { "Source" } dd { (t.source.as_deref().unwrap_or("-")) }
            dt { "Platform's id" } dd.mono { (t.message_id.as_deref().unwrap_or("-")) }
            dt { "Kept at the door" } dd id="trace-kept" { (yes_no(t.kept)) }
            dt { "Answered (worker)" } dd id="trace-answer" { (t.answer.as_deref().unwrap_or("no record")) }
            dt { "Delivered to" } dd id="trace-delivered" { @if t.delivered.is_empty() { "-" } @else { (t.delivered.join(", ")) } }
            dt { "Not delivered to" } dd { @if t.not_delivered.is_empty() { "-" } @else { (t.not_delivered.join(", ")) } }
            dt { "Dead letters" } dd id="trace-letters" { (t.letters.len()) }
            dt { "Replays" } dd { (t.replays.len()) }
        }
        @for n in &t.notes { p.muted { (n) } }
        @if !t.letters.is_empty() {
            h2 { "Dead letters" }
            table {
                @for l in &t.letters {
                    tr { td.mono { a href=(format!("/letters/{}", l.id)) { (l.id) } } td { (time(l.dead_at)) } td { (l.stage.as_str()) } td { (l.reason.as_str()) } td { (l.target.as_deref().unwrap_or("-")) } td { (seal(l.seal.as_ref())) } td { (l.error) } }
                }
            }
        }
        @if !t.replays.is_empty() {
            h2 { "Replays" }
            table {
                @for (letter, m) in &t.replays {
                    tr { td.mono { (letter) } td { (time(m.at)) } td { (m.actor) } td.mono { a href=(format!("/replays/{}", m.replay_id)) { (m.replay_id) } } }
                }
            }
        }
    }
}
