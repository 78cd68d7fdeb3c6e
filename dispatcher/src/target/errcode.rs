//! The one classifier of platform errcodes: WeCom, DingTalk and Feishu answer with a code in the
//! body (`errcode`, `code`), `0` when the message went out. A kind that speaks such an API gives
//! its [`Errcodes`] table — where the code is, which statuses carry one, and the codes that do
//! not mean "refused for good" — and [`Errcodes::classify`] reads every answer the same way:
//!
//! | answer | verdict |
//! |---|---|
//! | a status that carries no code (`only_on_200`: anything but 200) | as plain HTTP |
//! | code `0` with a 2xx | Delivered |
//! | a code in the table | the table's verdict |
//! | any other code with a 5xx | Retry (the platform is in trouble) |
//! | any other code | Permanent |
//! | no code with a 2xx | Retry (not the platform's answer: a captive portal, a wrong host) |
//! | no code otherwise | as plain HTTP |
//!
//! Pure: no I/O, no clock.
use super::{classify_http, Answer, Verdict};
use serde_json::Value;

/// A platform's errcodes and where its answers carry them.
#[derive(Debug, Clone, Copy)]
pub struct Errcodes {
    /// The body's keys that may hold the code; the first that holds a number or a string wins.
    pub keys: &'static [&'static str],
    /// Only an HTTP 200 carries a code (WeCom, DingTalk: any other status is a proxy's answer);
    /// otherwise any status may (Feishu answers 4xx with a code).
    pub only_on_200: bool,
    /// The codes that are not plain refusals, with their verdicts.
    pub table: &'static [(&'static str, Verdict)],
}

/// The keys WeCom and DingTalk put their code under.
pub const ERRCODE_KEYS: &[&str] = &["errcode", "code", "error_code"];

impl Errcodes {
    /// The answer's code, as text.
    pub fn code(&self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        self.keys.iter().find_map(|key| match v.get(key)? {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// What the answer means for the job (see the module notes).
    pub fn classify(&self, answer: &Answer) -> Verdict {
        if self.only_on_200 && answer.status != 200 {
            return classify_http(answer);
        }
        let success = (200..300).contains(&answer.status);
        let Some(code) = self.code(&answer.body) else {
            return if success {
                Verdict::Retry { retry_after: None }
            } else {
                classify_http(answer)
            };
        };
        let listed = self
            .table
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, verdict)| verdict.clone());
        match listed {
            _ if code == "0" && success => Verdict::Delivered,
            Some(verdict) => verdict,
            None if answer.status >= 500 => Verdict::Retry { retry_after: None },
            None => Verdict::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;
    use std::time::Duration;

    const SLOW: Verdict = Verdict::Wait {
        wait: Duration::from_secs(60),
    };
    const RETRY: Verdict = Verdict::Retry { retry_after: None };

    const ON_200: Errcodes = Errcodes {
        keys: ERRCODE_KEYS,
        only_on_200: true,
        table: &[
            ("45009", SLOW),
            ("-1", RETRY),
            ("42001", Verdict::TokenInvalid),
        ],
    };
    const ANY_STATUS: Errcodes = Errcodes {
        keys: &["code", "StatusCode"],
        only_on_200: false,
        table: &[("11232", SLOW)],
    };

    #[test]
    fn every_answer_is_read_the_same_way() {
        let cases = [
            (
                ON_200,
                200,
                r#"{"errcode":0,"errmsg":"ok"}"#,
                Verdict::Delivered,
            ),
            (ON_200, 200, r#"{"errcode":45009}"#, SLOW),
            (ON_200, 200, r#"{"errcode":-1}"#, RETRY),
            (ON_200, 200, r#"{"errcode":42001}"#, Verdict::TokenInvalid),
            (ON_200, 200, r#"{"errcode":93000}"#, Verdict::Permanent),
            (ON_200, 200, r#"{"errcode":"93000"}"#, Verdict::Permanent),
            (ON_200, 200, "<html>portal</html>", RETRY),
            (ON_200, 502, r#"{"errcode":0}"#, RETRY),
            (ON_200, 404, r#"{"errcode":-1}"#, Verdict::Permanent),
            (
                ANY_STATUS,
                200,
                r#"{"code":0,"msg":"success"}"#,
                Verdict::Delivered,
            ),
            (ANY_STATUS, 200, r#"{"StatusCode":0}"#, Verdict::Delivered),
            (ANY_STATUS, 400, r#"{"code":0}"#, Verdict::Permanent),
            (ANY_STATUS, 429, r#"{"code":11232}"#, SLOW),
            (ANY_STATUS, 400, r#"{"code":19021}"#, Verdict::Permanent),
            (ANY_STATUS, 500, r#"{"code":1500}"#, RETRY),
            (ANY_STATUS, 200, "{}", RETRY),
            (ANY_STATUS, 502, "bad gateway", RETRY),
            (ANY_STATUS, 403, "forbidden", Verdict::Permanent),
        ];
        for (table, status, body, want) in cases {
            let answer = Answer {
                status,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            };
            assert_eq!(table.classify(&answer), want, "{status} {body}");
        }
    }
}
