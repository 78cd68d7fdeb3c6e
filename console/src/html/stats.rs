//! The stats page: counts by reason, stage, source, target and day for the filter, and a chart
//! of dead letters per day stacked by reason, drawn as inline SVG on the server (no script,
//! no external file). Pure.
use deadletters::report::Stats;
use maud::{html, Markup};
use std::collections::{BTreeMap, HashMap};

use super::letters::filters;
use super::raw;
use crate::query::Params;

const REASON_COLOURS: [(&str, &str); 5] = [
    ("permanent", "#b3261e"),
    ("exhausted", "#d9822b"),
    ("poison", "#7b3fa0"),
    ("expired", "#2f7fbf"),
    ("invalid", "#6b7590"),
];

/// The stats page's body.
pub fn stats(
    p: &Params,
    s: &Stats,
    days: &[(String, HashMap<&'static str, u64>)],
    sources: &[String],
    targets: &[String],
) -> Markup {
    html! {
        h1 { "Stats" }
        (filters(p, "/stats", sources, targets))
        p { strong id="stats-total" { (s.total) } " dead letter(s), " (s.replayed) " replayed. "
            a href=(format!("/letters?{}", p.to_query_string())) { "List them" } }
        h2 { "Per day and reason" }
        div.box {
            (raw(chart(days)))
            div.legend { @for (r, c) in REASON_COLOURS { span { i style=(format!("background:{c}")) {} (r) } } }
        }
        div style="display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:1rem" {
            (counts("By reason", &s.by_reason))
            (counts("By stage", &s.by_stage))
            (counts("By source", &s.by_source))
            (counts("By target", &s.by_target))
            (counts("By day (UTC)", &s.by_day))
        }
    }
}

fn counts(title: &str, m: &BTreeMap<String, u64>) -> Markup {
    html! {
        div {
            h2 { (title) }
            table { @for (k, n) in m { tr { td { (k) } td.num { (n) } } } }
        }
    }
}

/// A stacked bar chart of letters per day by reason, as SVG markup. The only text in it is
/// day labels and numbers (escaped), so it is safe to embed.
pub fn chart(days: &[(String, HashMap<&'static str, u64>)]) -> String {
    let (w, h, pad) = (900.0_f64, 220.0_f64, 28.0_f64);
    let max = days
        .iter()
        .map(|(_, m)| m.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = days.len().max(1) as f64;
    let bar = ((w - pad) / n).min(48.0);
    let mut svg = format!(
        r#"<svg class="chart" id="chart" role="img" aria-label="dead letters per day and reason" viewBox="0 0 {w} {}" width="100%" height="{}">"#,
        h + 30.0,
        h + 30.0
    );
    svg.push_str(&format!(
        r##"<text x="0" y="10">{max}</text><line x1="{pad}" y1="{h}" x2="{w}" y2="{h}" stroke="#d9dde5"/>"##
    ));
    for (i, (day, by)) in days.iter().enumerate() {
        let x = pad + i as f64 * bar;
        let mut y = h;
        for (reason, colour) in REASON_COLOURS {
            let count = by.get(reason).copied().unwrap_or(0);
            if count == 0 {
                continue;
            }
            let bh = (count as f64 / max) * (h - 14.0);
            y -= bh;
            svg.push_str(&format!(
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{colour}"><title>{} {reason}: {count}</title></rect>"#,
                (bar - 2.0).max(1.0),
                escape(day)
            ));
        }
        if days.len() <= 31 || i % (days.len() / 15).max(1) == 0 {
            svg.push_str(&format!(
                r#"<text x="{x:.1}" y="{}">{}</text>"#,
                h + 14.0,
                escape(day.get(5..).unwrap_or(day))
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_stacks_each_reason_and_escapes_labels() {
        let days = vec![
            (
                "2026-01-01".to_owned(),
                HashMap::from([("exhausted", 3), ("poison", 1)]),
            ),
            ("<b>".to_owned(), HashMap::from([("permanent", 2)])),
        ];
        let svg = chart(&days);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("2026-01-01 exhausted: 3"));
        assert!(!svg.contains("<b>") && svg.contains("&lt;b&gt;"));
    }
}
