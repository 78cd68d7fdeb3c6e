//! `kind = "rocketchat"`: a Rocket.Chat incoming webhook (`https://host/hooks/<id>/<token>`; the
//! URL is the credential, so it is a secret). Keys: `url`, `alias` (the name shown as sender),
//! `emoji` (the avatar, `:robot:`). Rocket.Chat refuses messages over its default
//! `Message_MaxAllowedSize` of 5 000 characters, so longer answers are split.
use super::address::TargetUrl;
use super::parts::deliver_parts;
use super::{classify_http, send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
use shared::keys::Keys;

pub const KIND: &str = "rocketchat";
pub const LIMIT: Limit = Limit::chars(5_000);

#[derive(Debug)]
pub struct RocketChat {
    url: TargetUrl,
    alias: Option<String>,
    emoji: Option<String>,
}

impl RocketChat {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&["url", "alias", "emoji"]);
        let url = TargetUrl::read(&mut k, "url");
        let alias = k.str("alias");
        let emoji = k.str("emoji");
        k.finish(url.map(|url| Self { url, alias, emoji }))
    }

    pub fn render(&self, text: &str) -> Value {
        let mut body = json!({ "text": text });
        if let Some(a) = &self.alias {
            body["alias"] = json!(a);
        }
        if let Some(e) = &self.emoji {
            body["emoji"] = json!(e);
        }
        body
    }
}

/// Rocket.Chat's answer: 2xx with `{"success": true}` delivered; `success: false` with a 2xx
/// (a script refused it) permanent; otherwise plain HTTP (400 bad request and 404 unknown
/// hook permanent, 429 and 5xx retried).
pub fn classify(answer: &Answer) -> Verdict {
    let success = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("success").and_then(Value::as_bool));
    match (classify_http(answer), success) {
        (Verdict::Delivered, Some(false)) => Verdict::Permanent,
        (v, _) => v,
    }
}

#[async_trait]
impl Target for RocketChat {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |_, part| {
            let request = ctx.http.post(self.url.get()).json(&self.render(&part));
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

    #[test]
    fn answers_are_classified() {
        let cases = [
            (200, r#"{"success":true}"#, Verdict::Delivered),
            (
                200,
                r#"{"success":false,"error":"refused by script"}"#,
                Verdict::Permanent,
            ),
            (
                400,
                r#"{"success":false,"error":"error-invalid-message"}"#,
                Verdict::Permanent,
            ),
            (
                404,
                r#"{"success":false,"error":"Invalid integration id or token provided."}"#,
                Verdict::Permanent,
            ),
            (429, "", Verdict::Retry { retry_after: None }),
            (500, "", Verdict::Retry { retry_after: None }),
        ];
        for (status, body, want) in cases {
            let a = Answer {
                status,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            };
            assert_eq!(classify(&a), want, "{status} {body}");
        }
    }

    #[test]
    fn renders_text_alias_and_emoji() {
        let t: TargetConfig = toml::from_str(
            "id = \"rc\"\nkind = \"rocketchat\"\nurl = \"https://chat.example.com/hooks/a/b\"\nalias = \"Switchboard\"\nemoji = \":robot:\"",
        )
        .unwrap();
        let r = RocketChat::from_config(&t).unwrap();
        assert_eq!(
            r.render("hi"),
            json!({"text": "hi", "alias": "Switchboard", "emoji": ":robot:"})
        );
    }
}
