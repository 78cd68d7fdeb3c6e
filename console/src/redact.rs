//! Credentials taken out of an original message before anyone sees it in the console: values
//! of keys that name a credential (tokens, secrets, passwords, signatures, session webhooks and
//! response URLs, which are capabilities), and credential-looking query parameters inside any
//! URL (`key=`, `token=`, `access_token=`, `sign=`, …). The message replayed is the original,
//! never this view. Pure.
use serde_json::Value;

/// What a removed value reads as.
pub const REDACTED: &str = "[redacted]";

/// Key words (lowercase, `_`/`-` removed) whose values are credentials.
const SECRET_KEYS: [&str; 16] = [
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "authorization",
    "cookie",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "sessionwebhook",
    "responseurl",
    "webhookurl",
    "encrypt",
    "sign",
];

/// Query parameters (lowercase) whose values are credentials.
const SECRET_PARAMS: [&str; 8] = [
    "key",
    "token",
    "access_token",
    "sign",
    "signature",
    "secret",
    "password",
    "sig",
];

/// The message with every credential replaced by [`REDACTED`].
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_url(s)),
        other => other.clone(),
    }
}

fn is_secret_key(k: &str) -> bool {
    let norm: String = k
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    // `dedup_key`, `event_key`: ids, not credentials.
    if norm.ends_with("dedupkey") || norm == "signname" {
        return false;
    }
    SECRET_KEYS.iter().any(|w| {
        if *w == "sign" {
            norm == "sign" || norm == "signing" || norm.ends_with("sign")
        } else {
            norm.contains(w)
        }
    })
}

/// A URL with its credential query parameters' values replaced; other text unchanged.
fn redact_url(s: &str) -> String {
    if !(s.starts_with("http://") || s.starts_with("https://")) || !s.contains('?') {
        return s.to_owned();
    }
    let Some((base, rest)) = s.split_once('?') else {
        return s.to_owned();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k.to_lowercase().as_str()) => {
                format!("{k}={REDACTED}")
            }
            _ => kv.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", parts.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_are_removed_and_the_rest_kept() {
        let cases = vec![
            (json!({"token": "verif-123"}), json!({"token": REDACTED})),
            (
                json!({"api_key": "k", "AppSecret": "s"}),
                json!({"api_key": REDACTED, "AppSecret": REDACTED}),
            ),
            (
                json!({"sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=abc"}),
                json!({"sessionWebhook": REDACTED}),
            ),
            (
                json!({"reply": {"response_url": "https://hooks.slack.com/x"}}),
                json!({"reply": {"response_url": REDACTED}}),
            ),
            (
                json!({"dedup_key": "msg-1", "text": "hello", "sign": "x"}),
                json!({"dedup_key": "msg-1", "text": "hello", "sign": REDACTED}),
            ),
            (
                json!({"url": "https://qyapi.weixin.qq.com/send?key=abc&debug=1"}),
                json!({"url": format!("https://qyapi.weixin.qq.com/send?key={REDACTED}&debug=1")}),
            ),
            (
                json!(["https://h/x?access_token=t#f", "plain ? text"]),
                json!([
                    format!("https://h/x?access_token={REDACTED}#f"),
                    "plain ? text"
                ]),
            ),
            (
                json!({"token": null, "n": 3}),
                json!({"token": null, "n": 3}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(&input), want, "{input}");
        }
    }
}
