//! `kind = "feishu_bot"` and `kind = "lark_bot"`: a Feishu / Lark custom group bot
//! (`…/open-apis/bot/v2/hook/<id>`). Keys: `url` (a secret; may embed `env:`), `secret` (the
//! body then carries `timestamp` and `sign`), `msg_type` (`text` | `post` | `interactive`) and
//! `title` (post and card title). Limits: 5 messages a second and 100 a minute per bot; a body
//! of at most 20 KB, so long answers are split until every rendered body fits.
use super::address::TargetUrl;
use super::errcode::Errcodes;
use super::parts::deliver_parts;
use super::{send, Answer, Context, Outcome, Target, Verdict};
use crate::split::{split, Limit};
use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
use shared::keys::Keys;
use shared::units::Rate;
use shared::Secret;
use std::time::Duration;

/// The largest body Feishu takes (20 KB, counted conservatively).
pub const MAX_BODY: usize = 20_000;
/// After 11232 (too fast) wait for the per-second window and part of the per-minute one.
pub const RATE_LIMITED_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct FeishuBot {
    kind: &'static str,
    url: TargetUrl,
    secret: Option<Secret>,
    msg_type: &'static str,
    title: Option<String>,
}

/// `base64(hmac_sha256(key = timestamp + "\n" + secret, msg = ""))`: the key is the string.
pub fn sign(timestamp: i64, secret: &str) -> String {
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mac) = Hmac::<Sha256>::new_from_slice(format!("{timestamp}\n{secret}").as_bytes())
    else {
        return String::new();
    };
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl FeishuBot {
    /// `kind` is `feishu_bot` or `lark_bot`; they differ only in the host the URL names.
    pub fn from_config(t: &TargetConfig, kind: &'static str) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&["url", "secret", "msg_type", "title"]);
        let url = TargetUrl::read(&mut k, "url");
        let secret = k.secret("secret");
        let msg_type = k.choice("msg_type", &["text", "post", "interactive"]);
        let title = k.str("title");
        let built = url.map(|url| Self {
            kind,
            url,
            secret,
            msg_type,
            title,
        });
        k.finish(built)
    }

    /// The body of one message, signed with `timestamp` (seconds) when a secret is set.
    pub fn render(&self, content: &str, timestamp: i64) -> Value {
        let title = self.title.clone().unwrap_or_default();
        let mut body = match self.msg_type {
            "post" => {
                let lines: Vec<Value> = content
                    .split('\n')
                    .map(|l| json!([{ "tag": "text", "text": l }]))
                    .collect();
                let locale = if self.kind == "lark_bot" {
                    "en_us"
                } else {
                    "zh_cn"
                };
                json!({ "msg_type": "post", "content": { "post": { locale: { "title": title, "content": lines } } } })
            }
            "interactive" => {
                let mut card = json!({
                    "config": { "wide_screen_mode": true },
                    "elements": [{ "tag": "markdown", "content": content }],
                });
                if !title.is_empty() {
                    card["header"] = json!({ "title": { "tag": "plain_text", "content": title } });
                }
                json!({ "msg_type": "interactive", "card": card })
            }
            _ => json!({ "msg_type": "text", "content": { "text": content } }),
        };
        if let Some(secret) = &self.secret {
            body["timestamp"] = json!(timestamp.to_string());
            body["sign"] = json!(sign(timestamp, secret.expose()));
        }
        body
    }
}

/// Feishu's answer (`code`, or `StatusCode` in the bot's older answers):
///
/// | code | meaning | verdict |
/// |---|---|---|
/// | 0 | sent | Delivered |
/// | 11232 | too fast (5/s, 100/min) | Wait 10 s (not a failed attempt) |
/// | 19021 | signature or timestamp refused | Permanent |
/// | 19001, 19024, 9499 … | bad hook, keyword/IP refused, bad request | Permanent |
/// | any other code | refused | Permanent |
///
/// Any other code with a 5xx is retried; without a code the HTTP status decides.
pub const ERRCODES: Errcodes = Errcodes {
    keys: &["code", "StatusCode"],
    only_on_200: false,
    table: &[(
        "11232",
        Verdict::Wait {
            wait: RATE_LIMITED_WAIT,
        },
    )],
};

/// Classifies Feishu's answer with [`ERRCODES`].
pub fn classify(answer: &Answer) -> Verdict {
    ERRCODES.classify(answer)
}

#[async_trait]
impl Target for FeishuBot {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn default_rates(&self) -> Vec<Rate> {
        vec![
            Rate {
                count: 5,
                per: Duration::from_secs(1),
            },
            Rate {
                count: 100,
                per: Duration::from_secs(60),
            },
        ]
    }

    /// The answer split so that every rendered body fits [`MAX_BODY`] (pure).
    fn parts(&self, text: &str) -> Vec<String> {
        // Start from the text's own budget; shrink while markup (post lines) overflows a body.
        // A real timestamp is longer than the 0 measured here: keep room for it.
        let mut budget = MAX_BODY - 1_000;
        loop {
            let parts = split(text, Limit::json_bytes(budget));
            let fits = parts
                .iter()
                .all(|p| self.render(p, 0).to_string().len() + 16 <= MAX_BODY);
            if fits || budget < 2_000 {
                return parts;
            }
            budget = budget * 3 / 4;
        }
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |_, part| {
            // Each part is signed at its own send time: Feishu refuses stale timestamps.
            let body = self.render(&part, chrono::Utc::now().timestamp());
            let request = ctx.http.post(self.url.get()).json(&body);
            Box::pin(async move { send(ctx, request, classify).await.0 })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;

    fn bot(kind: &'static str, extra: &str) -> FeishuBot {
        let t: TargetConfig = toml::from_str(&format!(
            "id = \"ops\"\nkind = \"{kind}\"\nurl = \"https://open.feishu.cn/open-apis/bot/v2/hook/abc\"\n{extra}"
        ))
        .unwrap();
        FeishuBot::from_config(&t, kind).unwrap()
    }

    #[test]
    fn signature_matches_the_reference_vector() {
        assert_eq!(
            sign(1_599_360_473, "demo"),
            "l1N0gAcBjdwBvGm1xMjOF0XSyaLRpR7tuO5dHfhAYc8="
        );
    }

    #[test]
    fn codes_are_classified() {
        let cases = [
            (
                200,
                r#"{"code":0,"data":{},"msg":"success"}"#,
                Verdict::Delivered,
            ),
            (
                200,
                r#"{"Extra":null,"StatusCode":0,"StatusMessage":"success"}"#,
                Verdict::Delivered,
            ),
            (
                200,
                r#"{"code":11232,"msg":"frequency limited"}"#,
                Verdict::Wait {
                    wait: RATE_LIMITED_WAIT,
                },
            ),
            (
                200,
                r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#,
                Verdict::Permanent,
            ),
            (
                400,
                r#"{"code":9499,"msg":"Bad Request"}"#,
                Verdict::Permanent,
            ),
            (
                500,
                r#"{"code":1500,"msg":"internal error"}"#,
                Verdict::Retry { retry_after: None },
            ),
            (502, "bad gateway", Verdict::Retry { retry_after: None }),
        ];
        for (status, body, want) in cases {
            let a = Answer {
                status,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            };
            assert_eq!(classify(&a), want, "{body}");
        }
    }

    #[test]
    fn renders_each_msg_type_signed() {
        let b = bot("feishu_bot", "secret = \"demo\"");
        assert_eq!(
            b.render("hi", 1_599_360_473),
            json!({"msg_type": "text", "content": {"text": "hi"}, "timestamp": "1599360473", "sign": "l1N0gAcBjdwBvGm1xMjOF0XSyaLRpR7tuO5dHfhAYc8="})
        );
        let b = bot("feishu_bot", "msg_type = \"post\"\ntitle = \"Answer\"");
        assert_eq!(
            b.render("a\nb", 0),
            json!({"msg_type": "post", "content": {"post": {"zh_cn": {"title": "Answer", "content": [[{"tag": "text", "text": "a"}], [{"tag": "text", "text": "b"}]]}}}})
        );
        let b = bot("lark_bot", "msg_type = \"interactive\"");
        assert_eq!(
            b.render("**hi**", 0),
            json!({"msg_type": "interactive", "card": {"config": {"wide_screen_mode": true}, "elements": [{"tag": "markdown", "content": "**hi**"}]}})
        );
    }

    #[test]
    fn every_body_fits_twenty_kilobytes() {
        // Many short lines: each costs far more as a post element than as text.
        let text = "ab\n".repeat(20_000);
        for msg_type in ["text", "post", "interactive"] {
            let b = bot(
                "feishu_bot",
                &format!("msg_type = \"{msg_type}\"\nsecret = \"s\""),
            );
            let parts = b.parts(&text);
            assert!(parts.len() > 1);
            for part in &parts {
                let body = b.render(part, 1_599_360_473).to_string();
                assert!(body.len() <= MAX_BODY, "{msg_type}: {}", body.len());
            }
        }
    }
}
