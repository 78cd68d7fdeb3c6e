//! Test helpers shared by the platform modules' unit tests: sources from JSON settings, fixed
//! clocks, and assertions on intakes. Test-only.
use super::{Intake, NewEvent, Rejection};
use chrono::{DateTime, TimeZone, Utc};
use shared::config::{ConfigIssue, SourceConfig};

/// A source of `platform` with `settings` (a JSON object of its keys) and a window.
pub fn source(platform: &str, max_skew_secs: u64, settings: serde_json::Value) -> SourceConfig {
    let mut v = serde_json::json!({"id": "src", "platform": platform, "app": "support", "max_skew_secs": max_skew_secs});
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), settings.as_object()) {
        obj.extend(extra.clone());
    }
    serde_json::from_value(v).expect("test source")
}

/// The instant `secs` after the epoch.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .expect("valid test time")
}

/// The event of an intake, or a panic saying what it was instead.
pub fn event(result: Result<Intake, Rejection>) -> NewEvent {
    match result {
        Ok(Intake::Event { event, .. }) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// What an intake came to, as one comparable word: `event`, `reply`, `ignore:<reason>` or the
/// rejection's reason.
pub fn outcome(result: &Result<Intake, Rejection>) -> String {
    match result {
        Ok(Intake::Event { .. }) => "event".into(),
        Ok(Intake::Reply(_)) => "reply".into(),
        Ok(Intake::Ignore { reason, .. }) => format!("ignore:{reason}"),
        Err(r) => r.reason().into(),
    }
}

/// Every problem a config check finds in a source of one platform: what building it reported
/// and the keys the platform does not read.
pub fn problems<T>(built: Result<T, Vec<ConfigIssue>>, source: &SourceConfig) -> Vec<ConfigIssue> {
    let mut issues = built.err().unwrap_or_default();
    issues.extend(super::unknown_keys(source, &[]));
    issues
}

/// The keys config issues are about.
pub fn issue_keys(issues: &[ConfigIssue]) -> Vec<String> {
    issues.iter().map(|i| i.key.clone()).collect()
}
