//! How dead letters, stats and replay records read on a terminal: the list table, one letter
//! with its attempts as a timeline, stats, the audit table and one replay run in full. Pure:
//! every function returns text; the caller writes it. The data behind them, and the JSON of
//! `list --json` and `export`, are [`crate::report`]'s.
use chrono::{DateTime, Utc};
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use shared::envelope::DeadLetter;
use std::collections::BTreeMap;

use super::audit::{Mark, Run};
use super::record::{Letter, Origin};
use super::report::{or_dash, ListItem, Stats};

mod chain;
pub use chain::chain;

/// Times in tables: UTC to the second; the epoch means "unknown".
pub fn time(t: DateTime<Utc>) -> String {
    if t == DateTime::<Utc>::UNIX_EPOCH {
        "unknown".to_owned()
    } else {
        t.format("%Y-%m-%d %H:%M:%SZ").to_string()
    }
}

fn table(width: Option<u16>) -> Table {
    let mut t = Table::new();
    // Plain columns, like kubectl: easy to read, grep and cut.
    t.load_preset(presets::NOTHING);
    match width {
        Some(w) => {
            t.set_width(w)
                .set_content_arrangement(ContentArrangement::Dynamic);
        }
        None => {
            t.force_no_tty()
                .set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    t
}

/// The table as text, without the padding comfy-table leaves at the end of each line.
fn finish(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn short(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        let mut cut: String = one.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

fn replayed_cell(marks: &[Mark]) -> String {
    match marks.last() {
        None => "-".to_owned(),
        Some(m) if marks.len() == 1 => format!("{} by {}", time(m.at), m.actor),
        Some(m) => format!("{} by {} ({}×)", time(m.at), m.actor, marks.len()),
    }
}

/// The `dlq list` table.
pub fn list_table(items: &[ListItem], width: Option<u16>) -> String {
    let mut t = table(width);
    t.set_header(vec![
        "ID", "DEAD AT", "STAGE", "REASON", "SOURCE", "TARGET", "TRIES", "REPLAYED", "ERROR",
    ]);
    for i in items {
        let s = &i.summary;
        t.add_row(vec![
            Cell::new(s.id),
            Cell::new(time(s.dead_at)),
            Cell::new(s.stage.as_str()),
            Cell::new(s.reason.as_str()),
            Cell::new(or_dash(&s.source)),
            Cell::new(s.target.as_deref().unwrap_or("-")),
            Cell::new(s.attempts).set_alignment(CellAlignment::Right),
            Cell::new(replayed_cell(&i.replays)),
            Cell::new(short(&s.error, 80)),
        ]);
    }
    finish(&t)
}

/// `+850ms`, `+5s`, `+5m 2s`, `+2h 3m`: the time since the first attempt, to a useful grain.
fn since(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        return format!("+{ms}ms");
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("+{s}s"),
        (0, _) => format!("+{m}m {s}s"),
        _ => format!("+{h}h {m}m"),
    }
}

/// `dlq show`: the record, its replays, the attempts as a timeline and the original message.
pub fn show(l: &Letter, marks: &[Mark], stage_queue: &str) -> String {
    let mut body = fields(l, marks, stage_queue);
    body.push_str(&timeline(&l.letter));
    body.push_str(&original(&l.letter));
    body
}

/// The record's fields, one a line, then the replays it had.
fn fields(l: &Letter, marks: &[Mark], stage_queue: &str) -> String {
    let d = &l.letter;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<14} {v}\n"));
    let origin = match l.origin {
        Origin::Envelope => "published by the stage",
        Origin::Broker => "dead-lettered by the broker",
    };
    let mut head = format!("Dead letter {}\n", d.id);
    head.push_str(&format!(
        "  {:<14} {} ({origin})\n",
        "store offset", l.offset
    ));
    line(
        "stage",
        format!("{} (replays to `{stage_queue}`)", d.stage.as_str()),
    );
    line("reason", d.reason.as_str().to_owned());
    line("error", or_dash(&d.error).to_owned());
    line("source", or_dash(&d.source).to_owned());
    line("target", d.target.clone().unwrap_or_else(|| "-".into()));
    line(
        "event",
        d.event_id
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    line(
        "first attempt",
        d.first_attempt_at.map(time).unwrap_or_else(|| "-".into()),
    );
    line(
        "last attempt",
        d.last_attempt_at.map(time).unwrap_or_else(|| "-".into()),
    );
    line("dead at", time(d.dead_at));
    if let Some(v) = &l.seal {
        line("seal", format!("{}: {}", v.word(), v.explain()));
    }
    line(
        "replayed",
        if marks.is_empty() {
            "never".to_owned()
        } else {
            format!("{} time(s)", marks.len())
        },
    );
    let mut body = head + &out;
    for m in marks {
        body.push_str(&format!(
            "    {}  by {}  (replay {})\n",
            time(m.at),
            m.actor,
            m.replay_id
        ));
    }
    body
}

/// The attempts as a timeline, each with its distance from the first, then where it gave up.
fn timeline(d: &DeadLetter) -> String {
    let mut body = format!("\nAttempts ({})\n", d.attempts.len());
    if d.attempts.is_empty() {
        body.push_str("  none recorded\n");
    }
    let first = d.attempts.first().map(|a| a.at);
    for (n, a) in d.attempts.iter().enumerate() {
        let offset = first.map(|f| since(a.at - f)).unwrap_or_default();
        let mut what = a.outcome.to_string();
        if let Some(s) = a.status {
            what.push_str(&format!(" {s}"));
        }
        if let Some(c) = &a.code {
            what.push_str(&format!(" [{c}]"));
        }
        body.push_str(&format!(
            "  {:>3}. {}  {:<10} {:<22} {:>6}ms",
            n + 1,
            time(a.at),
            offset,
            what,
            a.duration_ms
        ));
        if let Some(e) = &a.error {
            body.push_str(&format!("  {}", short(e, 120)));
        }
        body.push('\n');
        if let Some(x) = &a.excerpt {
            body.push_str(&format!("       answer: {}\n", short(x, 160)));
        }
    }
    body.push_str(&format!(
        "  {:>3}  {}  gave up: {}\n",
        "→",
        time(d.dead_at),
        d.reason.as_str()
    ));
    body
}

/// The original message, as pretty JSON.
fn original(d: &DeadLetter) -> String {
    let mut body = "\nOriginal message\n".to_owned();
    let pretty = serde_json::to_string_pretty(&d.message).unwrap_or_default();
    for l in pretty.lines() {
        body.push_str("  ");
        body.push_str(l);
        body.push('\n');
    }
    body
}

/// `dlq stats` as text: a total, then one small table per dimension (largest first; days in
/// order).
pub fn stats(s: &Stats, width: Option<u16>) -> String {
    let mut out = format!(
        "{} dead letter(s), {} replayed at least once\n",
        s.total, s.replayed
    );
    let sections: [(&str, &BTreeMap<String, u64>, bool); 5] = [
        ("REASON", &s.by_reason, true),
        ("STAGE", &s.by_stage, true),
        ("SOURCE", &s.by_source, true),
        ("TARGET", &s.by_target, true),
        ("DAY (UTC)", &s.by_day, false),
    ];
    for (name, counts, by_count) in sections {
        let mut rows: Vec<(&String, &u64)> = counts.iter().collect();
        if by_count {
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        }
        let mut t = table(width);
        t.set_header(vec![name, "COUNT"]);
        for (k, v) in rows {
            t.add_row(vec![
                Cell::new(k),
                Cell::new(v).set_alignment(CellAlignment::Right),
            ]);
        }
        out.push('\n');
        out.push_str(&finish(&t));
        out.push('\n');
    }
    out
}

/// The `dlq audit` table.
pub fn audit_table(runs: &[Run], width: Option<u16>) -> String {
    let mut t = table(width);
    t.set_header(vec![
        "REPLAY",
        "STARTED",
        "BY",
        "SELECTION",
        "MATCHED",
        "SENT",
        "SKIPPED",
        "FAILED",
        "STATE",
    ]);
    for r in runs {
        let mut selection = r.selection.describe();
        if r.force {
            selection.push_str(" --force");
        }
        let by = format!("{}@{}", r.actor, r.host);
        t.add_row(vec![
            Cell::new(r.replay_id),
            Cell::new(time(r.started_at)),
            Cell::new(if r.trusted {
                by
            } else {
                format!("{by} (UNVERIFIED)")
            }),
            Cell::new(short(&selection, 60)),
            Cell::new(r.matched).set_alignment(CellAlignment::Right),
            Cell::new(r.sent).set_alignment(CellAlignment::Right),
            Cell::new(r.skipped).set_alignment(CellAlignment::Right),
            Cell::new(r.failed).set_alignment(CellAlignment::Right),
            Cell::new(r.state.as_str()),
        ]);
    }
    finish(&t)
}

/// `dlq audit ID`: one run in full, with the dead letters it sent and those that failed.
pub fn run_detail(r: &Run) -> String {
    let mut out = format!("Replay {}\n", r.replay_id);
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<10} {v}\n"));
    line("by", format!("{} on {}", r.actor, r.host));
    if let Some(via) = &r.via {
        line("via", via.clone());
    }
    if !r.trusted {
        line(
            "seal",
            "UNVERIFIED: a part of this record does not verify; it marks nothing as replayed"
                .into(),
        );
    }
    line("started", time(r.started_at));
    line("last seen", time(r.last_at));
    line("state", r.state.as_str().to_owned());
    line("selection", r.selection.describe());
    line("force", r.force.to_string());
    line(
        "rate",
        r.rate.clone().unwrap_or_else(|| "broker's pace".into()),
    );
    line(
        "counts",
        format!(
            "{} matched, {} sent, {} skipped, {} failed",
            r.matched, r.sent, r.skipped, r.failed
        ),
    );
    out.push_str(&format!("\nSent ({})\n", r.sent_ids.len()));
    for id in &r.sent_ids {
        out.push_str(&format!("  {id}\n"));
    }
    if !r.failures.is_empty() {
        out.push_str(&format!("\nFailed ({})\n", r.failures.len()));
        for f in &r.failures {
            out.push_str(&format!("  {}  {}\n", f.id, short(&f.error, 120)));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::record::Summary;
    use chrono::TimeZone;
    use shared::envelope::{Attempt, Reason, Stage};
    use uuid::Uuid;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().unwrap()
    }

    fn letter() -> Letter {
        let attempt = |s: i64, outcome: &str, status: Option<u16>| Attempt {
            at: at(s),
            outcome: outcome.into(),
            status,
            code: None,
            error: Some("upstream said no".into()),
            excerpt: None,
            duration_ms: 40,
        };
        Letter {
            offset: 12,
            origin: Origin::Envelope,
            letter: DeadLetter {
                id: Uuid::from_u128(1),
                stage: Stage::Deliver,
                reason: Reason::Exhausted,
                error: "503 after 3 tries".into(),
                source: "crm".into(),
                target: Some("ops".into()),
                event_id: Some(Uuid::from_u128(2)),
                message: serde_json::json!({"id": "j"}),
                attempts: vec![
                    attempt(0, "retry", Some(503)),
                    attempt(5, "retry", Some(503)),
                    attempt(305, "retry", Some(503)),
                ],
                first_attempt_at: Some(at(0)),
                last_attempt_at: Some(at(305)),
                dead_at: at(306),
            },
            seal: None,
        }
    }

    #[test]
    fn the_timeline_shows_each_attempt_and_its_distance_from_the_first() {
        let text = show(&letter(), &[], "p.deliver");
        for want in [
            "Dead letter 00000000-0000-0000-0000-000000000001",
            "exhausted",
            "replays to `p.deliver`",
            "2023-11-14 22:13:20Z  +0ms",
            "+5s",
            "+5m 5s",
            "retry 503",
            "gave up: exhausted",
            "\"id\": \"j\"",
            "never",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn distances_read_at_a_useful_grain() {
        let cases = [
            (850, "+850ms"),
            (5_000, "+5s"),
            (305_000, "+5m 5s"),
            (7_380_000, "+2h 3m"),
        ];
        for (ms, want) in cases {
            assert_eq!(since(chrono::Duration::milliseconds(ms)), want);
        }
    }

    #[test]
    fn stats_read_as_a_total_and_a_table_per_dimension() {
        let mut s = Stats::default();
        let a = Summary::of(&letter());
        let mut b = a.clone();
        b.reason = Reason::Poison;
        b.target = None;
        b.source = String::new();
        b.dead_at = DateTime::<Utc>::UNIX_EPOCH;
        s.add(&a, true);
        s.add(&a, false);
        s.add(&b, false);
        let text = stats(&s, None);
        assert!(text.starts_with("3 dead letter(s), 1 replayed"), "{text}");
        // Largest first within a dimension; days in order, the unknown one last.
        let reasons = text.find("exhausted").unwrap();
        assert!(reasons < text.find("poison").unwrap(), "{text}");
        assert!(text.find("2023-11-14").unwrap() < text.find("unknown").unwrap());
    }

    #[test]
    fn list_rows_show_replays() {
        let s = Summary::of(&letter());
        let marks = vec![
            Mark {
                replay_id: Uuid::from_u128(9),
                at: at(400),
                actor: "alice".into(),
            },
            Mark {
                replay_id: Uuid::from_u128(10),
                at: at(500),
                actor: "bob".into(),
            },
        ];
        let text = list_table(
            &[ListItem {
                summary: s,
                replayed: true,
                replays: marks,
            }],
            None,
        );
        assert!(text.contains("2023-11-14 22:21:40Z by bob (2×)"), "{text}");
        assert!(text.contains("503 after 3 tries"));
    }
}
