//! Helpers every platform's verification uses: reading secrets from a source's settings with the
//! key named on error, constant-time comparison, and the timestamp window.
use super::Rejection;
use chrono::{DateTime, Utc};
use shared::config::{ConfigIssue, SourceConfig};
use shared::Secret;

/// A required secret setting (`env:`/`file:` references resolved).
pub fn required_secret(source: &SourceConfig, key: &str) -> Result<Secret, ConfigIssue> {
    optional_secret(source, key)?.ok_or_else(|| ConfigIssue {
        key: format!("sources.{}.{key}", source.id),
        problem: format!("is required for platform `{}`", source.platform),
    })
}

/// An optional secret setting.
pub fn optional_secret(source: &SourceConfig, key: &str) -> Result<Option<Secret>, ConfigIssue> {
    let owner = format!("sources.{}", source.id);
    match shared::config::setting_str(&source.settings, &owner, key)? {
        None => Ok(None),
        Some(reference) => Secret::resolve(&reference).map(Some).map_err(|e| ConfigIssue {
            key: format!("{owner}.{key}"),
            problem: e.to_string(),
        }),
    }
}

/// An optional plain string setting.
pub fn optional_str(source: &SourceConfig, key: &str) -> Result<Option<String>, ConfigIssue> {
    shared::config::setting_str(&source.settings, &format!("sources.{}", source.id), key)
}

/// Refuses keys a platform does not know, so a typo is an error and not a silent default.
pub fn only_keys(source: &SourceConfig, known: &[&str]) -> Vec<ConfigIssue> {
    source
        .settings
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| ConfigIssue {
            key: format!("sources.{}.{k}", source.id),
            problem: format!(
                "is not a key of platform `{}` (known: {})",
                source.platform,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ),
        })
        .collect()
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Checks a signed timestamp (seconds) against the window; `max_skew_secs == 0` disables it.
pub fn check_window(ts_secs: i64, now: DateTime<Utc>, max_skew_secs: u64) -> Result<(), Rejection> {
    if max_skew_secs == 0 {
        return Ok(());
    }
    let skew = (now.timestamp() - ts_secs).unsigned_abs();
    if skew > max_skew_secs {
        Err(Rejection::StaleTimestamp)
    } else {
        Ok(())
    }
}

/// Parses a body as JSON, or says it is malformed.
pub fn json_body(body: &[u8]) -> Result<serde_json::Value, Rejection> {
    serde_json::from_slice(body).map_err(|e| Rejection::malformed(format!("body is not JSON: {e}")))
}
