//! Reading JSON that arrives as bytes (a queue's message, a request's body): the bytes are
//! checked as UTF-8 once, as a whole, and then read as text. `serde_json::from_slice` reads the
//! same bytes with the same parser but checks every string it meets on its own, a call per key
//! and per value: a dispatch job has about 40, and those checks were a fifth of what decoding
//! it cost (docs/PERFORMANCE.md, "Issue 18, tenth round"). Bytes that are not UTF-8 are read as
//! bytes, so the error is `serde_json`'s own, with its line and column, as before. Pure.
use serde::de::DeserializeOwned;

/// `T` from JSON bytes: what `serde_json::from_slice` returns, the same values and the same
/// errors.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn reads_what_from_slice_reads() {
        let inputs: [&[u8]; 4] = [
            br#"{"a": "plain", "b": ["\u00e9", "\ud83d\ude42"], "c": 1.5e3, "d": null}"#,
            "{\"名前\": \"张三 🙂\", \"n\": -0}".as_bytes(),
            b"[]",
            b"  \"text\"  ",
        ];
        for input in inputs {
            let ours: Value = from_bytes(input).unwrap();
            let theirs: Value = serde_json::from_slice(input).unwrap();
            assert_eq!(ours, theirs);
        }
        let v: Value = from_bytes(br#"{"a": "\u00e9"}"#).unwrap();
        assert_eq!(v, json!({"a": "é"}));
    }

    #[test]
    fn refuses_what_from_slice_refuses_with_the_same_words() {
        let inputs: [&[u8]; 5] = [
            b"{\"a\": \"\xff\"}",
            b"\xfe{}",
            b"{\"a\": 1,}",
            b"",
            b"{\"a\": \"unterminated",
        ];
        for input in inputs {
            let ours = from_bytes::<Value>(input).unwrap_err();
            let theirs = serde_json::from_slice::<Value>(input).unwrap_err();
            assert_eq!(ours.to_string(), theirs.to_string());
            assert_eq!(ours.classify(), theirs.classify());
        }
    }
}
