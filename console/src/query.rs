//! The filters of the list, the stats, the exports and a replay selection as they travel in a
//! URL query or a form: `reason`, `stage`, `source`, `target` (each comma-separated: any of
//! them), `since`, `until` (a date, an instant or a duration ago, as the CLI reads them), `q`
//! (text), `seal` (`verified` or `unverified`), and the page cursor `before`. Selections add
//! repeated `id` fields. Pure: pairs in, a [`Query`] out, and back to a query string for links.
use chrono::{DateTime, Utc};
use deadletters::filter::{parse_reason, parse_stage, parse_when, Filter};
use uuid::Uuid;

use crate::error::ConsoleError;
use crate::index::Query;

/// The fields as given (kept as text, so pages show what was typed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub reason: String,
    pub stage: String,
    pub source: String,
    pub target: String,
    pub since: String,
    pub until: String,
    pub q: String,
    pub seal: String,
    pub before: Option<u64>,
    pub limit: Option<usize>,
    /// Selected letters (replay forms).
    pub ids: Vec<Uuid>,
    /// Any other field (replay options, the CSRF token), last value wins.
    pub other: Vec<(String, String)>,
}

const FILTER_KEYS: [&str; 8] = [
    "reason", "stage", "source", "target", "since", "until", "q", "seal",
];

impl Params {
    /// Reads a URL query or a form body.
    pub fn parse(raw: &[u8]) -> Result<Self, ConsoleError> {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(raw) {
            let v = v.trim().to_owned();
            match k.as_ref() {
                "reason" => p.reason = v,
                "stage" => p.stage = v,
                "source" => p.source = v,
                "target" => p.target = v,
                "since" => p.since = v,
                "until" => p.until = v,
                "q" => p.q = v,
                "seal" => p.seal = v,
                "before" if !v.is_empty() => p.before = Some(number(&k, &v)?),
                "limit" if !v.is_empty() => p.limit = Some(number(&k, &v)?),
                "id" if !v.is_empty() => p.ids.push(Uuid::parse_str(&v).map_err(|_| {
                    ConsoleError::BadRequest(format!("`{v}` is not a dead letter id"))
                })?),
                _ => p.other.push((k.into_owned(), v)),
            }
        }
        Ok(p)
    }

    /// Another field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.other
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A checkbox: present and not `false`/`off`/`0`.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| !matches!(v, "" | "false" | "off" | "0"))
    }

    /// The query these fields ask for.
    pub fn query(&self, now: DateTime<Utc>) -> Result<Query, ConsoleError> {
        let bad = |k: &str, e: String| ConsoleError::BadRequest(format!("{k}: {e}"));
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let when = |k: &str, s: &str| -> Result<Option<DateTime<Utc>>, ConsoleError> {
            if s.is_empty() {
                return Ok(None);
            }
            parse_when(s, now).map(Some).map_err(|e| bad(k, e))
        };
        let filter = Filter {
            sources: list(&self.source),
            targets: list(&self.target),
            stages: list(&self.stage)
                .iter()
                .map(|s| parse_stage(s).map_err(|e| bad("stage", e)))
                .collect::<Result<_, _>>()?,
            reasons: list(&self.reason)
                .iter()
                .map(|s| parse_reason(s).map_err(|e| bad("reason", e)))
                .collect::<Result<_, _>>()?,
            since: when("since", &self.since)?,
            until: when("until", &self.until)?,
            grep: None,
        };
        let verified = match self.seal.as_str() {
            "" => None,
            "verified" => Some(true),
            "unverified" => Some(false),
            other => {
                return Err(bad(
                    "seal",
                    format!("`{other}` is not verified or unverified"),
                ))
            }
        };
        let text = Some(self.q.to_lowercase()).filter(|t| !t.is_empty());
        Ok(Query {
            filter: Filter {
                grep: text.clone(),
                ..filter
            },
            text,
            verified,
        })
    }

    /// The filter fields as a query string (links keep the filter; `before` is not kept).
    pub fn to_query_string(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in FILTER_KEYS.iter().zip(self.filter_values()) {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }

    /// The filter fields, in [`FILTER_KEYS`] order (forms keep them as hidden fields).
    pub fn filter_fields(&self) -> Vec<(&'static str, &str)> {
        FILTER_KEYS
            .iter()
            .copied()
            .zip(self.filter_values())
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    fn filter_values(&self) -> [&str; 8] {
        [
            &self.reason,
            &self.stage,
            &self.source,
            &self.target,
            &self.since,
            &self.until,
            &self.q,
            &self.seal,
        ]
    }

    /// The filter as the CLI would write it, for the replay record.
    pub fn describe(&self, q: &Query) -> String {
        let mut d = q.filter.describe();
        if let Some(v) = q.verified {
            d.push_str(if v {
                " (seal verified)"
            } else {
                " (seal unverified)"
            });
        }
        d
    }
}

fn number<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, ConsoleError> {
    v.parse()
        .map_err(|_| ConsoleError::BadRequest(format!("{k}: `{v}` is not a number")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use shared::envelope::{Reason, Stage};

    #[test]
    fn fields_read_into_a_query_and_back() {
        let now = Utc::now();
        let p = Params::parse(
            b"reason=exhausted%2Cpoison&stage=deliver&source=crm&q=Order+42&seal=verified&before=17&id=0190f3a2-7c1e-7b3a-9d41-2f6e8c0a1b2c&csrf=x&force=on",
        )
        .unwrap();
        let q = p.query(now).unwrap();
        assert_eq!(q.filter.reasons, vec![Reason::Exhausted, Reason::Poison]);
        assert_eq!(q.filter.stages, vec![Stage::Deliver]);
        assert_eq!(q.filter.sources, vec!["crm"]);
        assert_eq!(q.text.as_deref(), Some("order 42"));
        assert_eq!(q.verified, Some(true));
        assert_eq!((p.before, p.ids.len()), (Some(17), 1));
        assert_eq!(
            (p.get("csrf"), p.flag("force"), p.flag("dry")),
            (Some("x"), true, false)
        );
        let again = Params::parse(p.to_query_string().as_bytes()).unwrap();
        assert_eq!(again.query(now).unwrap(), q);
        assert_eq!(again.before, None);
    }

    #[test]
    fn bad_fields_name_themselves() {
        let now = Utc::now();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"reason=lost", "reason"),
            (b"stage=dify", "stage"),
            (b"since=yesterday", "since"),
            (b"seal=maybe", "seal"),
        ];
        for (raw, key) in cases {
            let e = Params::parse(raw).unwrap().query(now).unwrap_err();
            assert!(e.to_string().starts_with(key), "{e}");
        }
        assert!(Params::parse(b"before=x").is_err());
        assert!(Params::parse(b"id=nope").is_err());
    }
}
