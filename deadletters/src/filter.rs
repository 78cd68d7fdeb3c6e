//! Which dead letters a command is about: the `--source --target --stage --reason --since
//! --until --grep` filters, how their words and times are read, and where in the stream a read
//! may start. Pure: the caller supplies "now", and nothing here touches the broker.
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shared::envelope::{Reason, Stage};

use super::record::Summary;

/// Streams index time by chunk, and a record's `dead_at` is stamped a moment before it is
/// appended (on another host's clock): a `--since` read starts this much earlier.
pub const SINCE_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// The filters of one command; every field given must match (values within a field: any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive text searched in the whole record, original message included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
}

/// Where a read of the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    First,
    /// Seconds since the epoch (AMQP timestamps are in seconds).
    Timestamp(u64),
    /// This offset in the stream (or the first retained one after it).
    Offset(u64),
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether the record's raw bytes contain the `--grep` text (case-insensitive); checked
    /// before decoding anything, so a grep over a large store stays cheap.
    pub fn matches_body(&self, body: &[u8]) -> bool {
        let Some(needle) = self.grep.as_deref() else {
            return true;
        };
        if needle.is_empty() {
            return true;
        }
        if needle.is_ascii() {
            let needle = needle.as_bytes();
            return body
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle));
        }
        String::from_utf8_lossy(body)
            .to_lowercase()
            .contains(&needle.to_lowercase())
    }

    /// Whether a summary passes every field filter (the grep is checked on the body).
    pub fn matches(&self, s: &Summary) -> bool {
        (self.sources.is_empty() || self.sources.contains(&s.source))
            && (self.targets.is_empty()
                || s.target
                    .as_ref()
                    .is_some_and(|t| self.targets.iter().any(|x| x == t)))
            && (self.stages.is_empty() || self.stages.contains(&s.stage))
            && (self.reasons.is_empty() || self.reasons.contains(&s.reason))
            && self.since.is_none_or(|t| s.dead_at >= t)
            && self.until.is_none_or(|t| s.dead_at < t)
    }

    /// Where to start reading: the first entry, or a little before `--since`.
    pub fn start(&self) -> Start {
        match self.since {
            None => Start::First,
            Some(t) => Start::Timestamp((t - SINCE_MARGIN).timestamp().max(0) as u64),
        }
    }

    /// The filter as the command line that would give it, for messages and the replay record.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |flag: &str, values: Vec<String>| {
            if !values.is_empty() {
                parts.push(format!("--{flag} {}", values.join(",")));
            }
        };
        list("source", self.sources.clone());
        list("target", self.targets.clone());
        list(
            "stage",
            self.stages.iter().map(|s| s.as_str().to_owned()).collect(),
        );
        list(
            "reason",
            self.reasons.iter().map(|r| r.as_str().to_owned()).collect(),
        );
        if let Some(t) = self.since {
            parts.push(format!(
                "--since {}",
                t.to_rfc3339_opts(SecondsFormat::Secs, true)
            ));
        }
        if let Some(t) = self.until {
            parts.push(format!(
                "--until {}",
                t.to_rfc3339_opts(SecondsFormat::Secs, true)
            ));
        }
        if let Some(g) = &self.grep {
            parts.push(format!("--grep {g:?}"));
        }
        if parts.is_empty() {
            "no filter".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Reads `work` or `deliver`.
pub fn parse_stage(s: &str) -> Result<Stage, String> {
    match s.trim() {
        "work" => Ok(Stage::Work),
        "deliver" => Ok(Stage::Deliver),
        other => Err(format!("unknown stage `{other}` (work, deliver)")),
    }
}

const REASONS: [Reason; 5] = [
    Reason::Permanent,
    Reason::Exhausted,
    Reason::Poison,
    Reason::Expired,
    Reason::Invalid,
];

/// Reads a reason word (`permanent`, `exhausted`, `poison`, `expired`, `invalid`).
pub fn parse_reason(s: &str) -> Result<Reason, String> {
    let s = s.trim();
    REASONS
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| {
            let known: Vec<&str> = REASONS.iter().map(|r| r.as_str()).collect();
            format!("unknown reason `{s}` ({})", known.join(", "))
        })
}

/// Reads a point in time: RFC 3339 (`2024-05-01T10:00:00Z`), a day (`2024-05-01`, midnight
/// UTC), or a duration ago (`90m`, `24h`, `7d`).
pub fn parse_when(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(midnight) = day.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc());
        }
    }
    if let Ok(ago) = humantime::parse_duration(t) {
        if let Ok(ago) = chrono::Duration::from_std(ago) {
            if let Some(when) = now.checked_sub_signed(ago) {
                return Ok(when);
            }
        }
    }
    Err(format!(
        "`{t}` is not a time like 2024-05-01, 2024-05-01T10:00:00Z or 24h (ago)"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use uuid::Uuid;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn summary() -> Summary {
        Summary {
            id: Uuid::nil(),
            offset: 0,
            origin: super::super::record::Origin::Envelope,
            stage: Stage::Deliver,
            reason: Reason::Exhausted,
            source: "crm".into(),
            target: Some("ops".into()),
            dead_at: at(100),
            attempts: 3,
            error: "503".into(),
            seal: None,
        }
    }

    #[test]
    fn each_filter_selects_by_its_field() {
        let f = |f: Filter| f.matches(&summary());
        let cases: Vec<(&str, Filter, bool)> = vec![
            ("none", Filter::default(), true),
            (
                "source",
                Filter {
                    sources: vec!["crm".into()],
                    ..Filter::default()
                },
                true,
            ),
            (
                "other source",
                Filter {
                    sources: vec!["web".into()],
                    ..Filter::default()
                },
                false,
            ),
            (
                "any of sources",
                Filter {
                    sources: vec!["web".into(), "crm".into()],
                    ..Filter::default()
                },
                true,
            ),
            (
                "target",
                Filter {
                    targets: vec!["ops".into()],
                    ..Filter::default()
                },
                true,
            ),
            (
                "other target",
                Filter {
                    targets: vec!["crm".into()],
                    ..Filter::default()
                },
                false,
            ),
            (
                "stage",
                Filter {
                    stages: vec![Stage::Deliver],
                    ..Filter::default()
                },
                true,
            ),
            (
                "other stage",
                Filter {
                    stages: vec![Stage::Work],
                    ..Filter::default()
                },
                false,
            ),
            (
                "reason",
                Filter {
                    reasons: vec![Reason::Exhausted],
                    ..Filter::default()
                },
                true,
            ),
            (
                "other reason",
                Filter {
                    reasons: vec![Reason::Poison],
                    ..Filter::default()
                },
                false,
            ),
            (
                "since before",
                Filter {
                    since: Some(at(100)),
                    ..Filter::default()
                },
                true,
            ),
            (
                "since after",
                Filter {
                    since: Some(at(101)),
                    ..Filter::default()
                },
                false,
            ),
            (
                "until after",
                Filter {
                    until: Some(at(101)),
                    ..Filter::default()
                },
                true,
            ),
            (
                "until at (exclusive)",
                Filter {
                    until: Some(at(100)),
                    ..Filter::default()
                },
                false,
            ),
            (
                "all together",
                Filter {
                    sources: vec!["crm".into()],
                    stages: vec![Stage::Deliver],
                    since: Some(at(0)),
                    until: Some(at(200)),
                    ..Filter::default()
                },
                true,
            ),
        ];
        for (name, filter, want) in cases {
            assert_eq!(f(filter), want, "{name}");
        }
        // A work-stage letter has no target: a target filter never takes it.
        let mut work = summary();
        work.target = None;
        assert!(!Filter {
            targets: vec!["ops".into()],
            ..Filter::default()
        }
        .matches(&work));
    }

    #[test]
    fn grep_is_case_insensitive_over_the_whole_body() {
        let cases: Vec<(Option<&str>, &[u8], bool)> = vec![
            (None, b"anything", true),
            (Some("timeout"), b"{\"error\":\"Upstream TIMEOUT\"}", true),
            (Some("Ärger"), "{\"text\":\"viel ärger\"}".as_bytes(), true),
            (Some("missing"), b"{\"error\":\"x\"}", false),
        ];
        for (grep, body, want) in cases {
            let f = Filter {
                grep: grep.map(str::to_owned),
                ..Filter::default()
            };
            assert_eq!(f.matches_body(body), want, "{grep:?}");
        }
    }

    #[test]
    fn times_read_as_dates_instants_or_durations_ago() {
        let now = at(86_400 * 10);
        let cases: Vec<(&str, Option<DateTime<Utc>>)> = vec![
            ("2023-11-14T22:13:20Z", Some(at(0))),
            ("2023-11-14T23:13:20+01:00", Some(at(0))),
            (
                "2023-11-15",
                Some(
                    Utc.with_ymd_and_hms(2023, 11, 15, 0, 0, 0)
                        .single()
                        .unwrap_or_default(),
                ),
            ),
            ("24h", Some(at(86_400 * 9))),
            ("7d", Some(at(86_400 * 3))),
            ("yesterday", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_when(s, now).ok(), want, "{s}");
        }
    }

    #[test]
    fn words_read_or_say_what_they_expected() {
        assert_eq!(parse_stage("work"), Ok(Stage::Work));
        assert!(parse_stage("dify").unwrap_err().contains("work, deliver"));
        assert_eq!(parse_reason("poison"), Ok(Reason::Poison));
        assert!(parse_reason("lost").unwrap_err().contains("exhausted"));
    }

    #[test]
    fn since_starts_the_read_a_margin_earlier_and_describes_itself() {
        let f = Filter {
            since: Some(at(1000)),
            reasons: vec![Reason::Exhausted],
            ..Filter::default()
        };
        assert_eq!(f.start(), Start::Timestamp(1_700_000_000 + 1000 - 300));
        assert_eq!(Filter::default().start(), Start::First);
        assert_eq!(
            f.describe(),
            "--reason exhausted --since 2023-11-14T22:30:00Z"
        );
        assert_eq!(Filter::default().describe(), "no filter");
    }
}
