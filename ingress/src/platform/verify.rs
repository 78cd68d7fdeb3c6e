//! Helpers every platform's verification uses: constant-time comparison, the timestamp window,
//! HMAC, lenient base64 and reading fields of a JSON body. (A source's keys are read with
//! `shared::keys::Keys`.)
use super::Rejection;
use chrono::{DateTime, Utc};

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
    // In i128: a forged timestamp near i64::MIN must not overflow the subtraction.
    let skew = (i128::from(now.timestamp()) - i128::from(ts_secs)).unsigned_abs();
    if skew > u128::from(max_skew_secs) {
        Err(Rejection::StaleTimestamp)
    } else {
        Ok(())
    }
}

/// [`check_window`] for a timestamp as sent (seconds, as text). With the window disabled the text
/// is not read at all; otherwise text that is not an integer is refused as stale.
pub fn check_window_text(
    ts: &str,
    now: DateTime<Utc>,
    max_skew_secs: u64,
) -> Result<(), Rejection> {
    if max_skew_secs == 0 {
        return Ok(());
    }
    let ts: i64 = ts.trim().parse().map_err(|_| Rejection::StaleTimestamp)?;
    check_window(ts, now, max_skew_secs)
}

/// Parses a body as JSON, or says it is malformed.
pub fn json_body(body: &[u8]) -> Result<serde_json::Value, Rejection> {
    shared::json::from_bytes(body)
        .map_err(|e| Rejection::malformed(format!("body is not JSON: {e}")))
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    // HMAC takes keys of any length, so `new_from_slice` cannot fail; the fallback is unreachable.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Standard base64 that also takes non-zero trailing bits, as the platforms' own SDKs (Python,
/// PHP, Java) do when they decode keys and ciphertexts.
pub const B64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Checks a signed timestamp in milliseconds against a window in seconds (0 disables).
pub fn check_window_ms(
    ts_ms: i64,
    now: DateTime<Utc>,
    max_skew_secs: u64,
) -> Result<(), Rejection> {
    if max_skew_secs == 0 {
        return Ok(());
    }
    let skew_ms = (i128::from(now.timestamp_millis()) - i128::from(ts_ms)).unsigned_abs();
    if skew_ms > u128::from(max_skew_secs) * 1000 {
        Err(Rejection::StaleTimestamp)
    } else {
        Ok(())
    }
}

/// Whether a body looks like a JSON object (first non-blank byte is `{`).
pub fn looks_like_json(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// A JSON field as text: strings as they are, numbers written out; anything else, and the
/// empty string, is absent (an empty id is no id).
pub fn json_str(value: &serde_json::Value, key: &str) -> Option<String> {
    scalar_text(value.get(key)?)
}

fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A field at a `/`-separated JSON pointer, as text (see [`json_str`]).
pub fn json_at(value: &serde_json::Value, pointer: &str) -> Option<String> {
    scalar_text(value.pointer(pointer)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows_table() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let secs = [
            (1_700_000_000, 300, true),
            (1_699_999_700, 300, true),
            (1_699_999_699, 300, false),
            (1_700_000_301, 300, false),
            (i64::MIN, 300, false),
            (i64::MAX, 300, false),
            (i64::MIN, 0, true),
        ];
        for (ts, skew, ok) in secs {
            assert_eq!(check_window(ts, now, skew).is_ok(), ok, "{ts} {skew}");
            assert_eq!(
                check_window_ms(ts, now, skew).is_ok(),
                ok && skew == 0,
                "{ts} ms"
            );
            assert_eq!(
                check_window_text(&ts.to_string(), now, skew).is_ok(),
                ok,
                "{ts} text"
            );
        }
        assert!(
            check_window_text("soon", now, 0).is_ok(),
            "no window: the text is not read"
        );
        assert_eq!(
            check_window_text("soon", now, 300),
            Err(Rejection::StaleTimestamp)
        );
        assert!(check_window_ms(1_700_000_000_000 + 300_000, now, 300).is_ok());
        assert!(check_window_ms(1_700_000_000_000 + 300_001, now, 300).is_err());
    }
}
