//! Replies through a Feishu or Lark app (`platform = "feishu"` / `"lark"`): a
//! `tenant_access_token` from `auth/v3/tenant_access_token/internal` with `app_id` and
//! `app_secret`, then `im/v1/messages/{message_id}/reply` with a text message, so the answer
//! sits under the question. Keys (shared with the ingress): `app_id`, `app_secret`, `api_base`
//! (default `https://open.feishu.cn`, Lark `https://open.larksuite.com`).
use super::super::errcode::Errcodes;
use super::super::parts::{deliver_parts, local_outcome};
use super::super::{send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use crate::tokens::{self, parse_token_answer, Fresh, TokenAnswer, TokenError, TokenSource};
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;
use std::time::Duration;

pub mod card;

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &["app_id", "app_secret", "api_base"];
pub const FEISHU_API_BASE: &str = "https://open.feishu.cn";
pub const LARK_API_BASE: &str = "https://open.larksuite.com";
/// A text message's content may reach 150 KB; the text is escaped twice in the body (content
/// is a JSON string holding JSON), so 30 000 escaped bytes stay well inside.
pub const LIMIT: Limit = Limit::json_bytes(30_000);

/// The app's tenant token.
#[derive(Debug)]
pub struct FeishuToken {
    platform: &'static str,
    api_base: String,
    app_id: String,
    secret: Secret,
}

const TOKEN_ANSWER: TokenAnswer = TokenAnswer {
    code: "code",
    message: "msg",
    token: "tenant_access_token",
    expires_in: "expire",
    // 10003 bad app id, 10014 bad app secret: only a config change helps.
    permanent: &[10003, 10014],
};

impl TokenSource for FeishuToken {
    fn cache_id(&self) -> Vec<String> {
        vec![self.platform.into(), self.app_id.clone()]
    }

    fn request(&self, http: &reqwest::Client) -> reqwest::RequestBuilder {
        http.post(format!(
            "{}/open-apis/auth/v3/tenant_access_token/internal",
            self.api_base
        ))
        .json(&json!({ "app_id": self.app_id, "app_secret": self.secret.expose() }))
    }

    fn parse(&self, status: u16, body: &[u8]) -> Result<Fresh, TokenError> {
        parse_token_answer(&TOKEN_ANSWER, status, body)
    }
}

#[derive(Debug)]
pub struct FeishuReply {
    token: FeishuToken,
    /// The source streams its replies into a CardKit card.
    stream: bool,
}

impl FeishuReply {
    pub fn from_source(s: &SourceConfig, lark: bool) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        let app_id = k.required_str("app_id");
        let secret = k.required_secret("app_secret");
        let api_base = k.base_url(
            "api_base",
            if lark { LARK_API_BASE } else { FEISHU_API_BASE },
        );
        let platform = if lark { "lark" } else { "feishu" };
        let built = match (app_id, secret) {
            (Some(app_id), Some(secret)) => Some(Self {
                token: FeishuToken {
                    platform,
                    api_base,
                    app_id,
                    secret,
                },
                stream: s.stream,
            }),
            _ => None,
        };
        k.finish(built)
    }

    /// The reply's URL (the message id is one path segment, escaped) and body.
    pub fn render(
        &self,
        message_id: &str,
        text: &str,
    ) -> Result<(url::Url, Value), url::ParseError> {
        let mut url = url::Url::parse(&self.token.api_base)?;
        url.path_segments_mut()
            .map_err(|_| url::ParseError::RelativeUrlWithCannotBeABaseBase)?
            .pop_if_empty()
            .extend(["open-apis", "im", "v1", "messages", message_id, "reply"]);
        let content = json!({ "text": text }).to_string();
        Ok((url, json!({ "msg_type": "text", "content": content })))
    }
}

/// Feishu's answer to an API call (`code`, with HTTP 200 or 4xx):
///
/// | code | meaning | verdict |
/// |---|---|---|
/// | 0 | sent | Delivered |
/// | 99991663, 99991668 | tenant / access token invalid | TokenInvalid (refresh, send once more) |
/// | 99991400 | API frequency limit | Wait (`x-ogw-ratelimit-reset`, else 1 s) |
/// | 230020 | message frequency limit in the chat | Wait 5 s |
/// | 230002, 230011, 230001, 230099 … | bot not in chat, message withdrawn, bad request … | Permanent |
/// | any other code with a 5xx | platform trouble | Retry |
/// | any other code | refused | Permanent |
pub const ERRCODES: Errcodes = Errcodes {
    keys: &["code"],
    only_on_200: false,
    table: &[
        ("99991663", Verdict::TokenInvalid),
        ("99991668", Verdict::TokenInvalid),
        (
            "230020",
            Verdict::Wait {
                wait: Duration::from_secs(5),
            },
        ),
    ],
};

/// The API frequency limit's code: the wait is in the answer's `x-ogw-ratelimit-reset`.
const API_RATE_LIMITED: &str = "99991400";

/// Classifies an API answer with [`ERRCODES`], and [`API_RATE_LIMITED`] by its header.
pub fn classify(answer: &Answer) -> Verdict {
    if ERRCODES.code(&answer.body).as_deref() != Some(API_RATE_LIMITED) {
        return ERRCODES.classify(answer);
    }
    let reset = answer
        .headers
        .get("x-ogw-ratelimit-reset")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Verdict::Wait {
        wait: Duration::from_secs(reset.max(1)),
    }
}

#[async_trait]
impl Target for FeishuReply {
    fn kind(&self) -> &'static str {
        if self.token.platform == "lark" {
            "lark_reply"
        } else {
            "feishu_reply"
        }
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let Some(ReplyHandle::Feishu { message_id, .. }) = super::handle(job) else {
            return super::wrong_handle("feishu");
        };
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |_, part| {
            Box::pin(async move { self.send_text(ctx, message_id, &part).await })
        })
        .await
    }

    fn grow(&self) -> Option<&dyn crate::stream::Grow> {
        self.stream.then_some(self as &dyn crate::stream::Grow)
    }
}

impl FeishuReply {
    /// Replies to `message_id` with one text message.
    async fn send_text(&self, ctx: &Context, message_id: &str, text: &str) -> Outcome {
        let Ok((url, body)) = self.render(message_id, text) else {
            return local_outcome(Verdict::Permanent, "api_base is not a base URL");
        };
        tokens::send_with_token(ctx, &self.token, |token| {
            let request = ctx
                .http
                .post(url.clone())
                .bearer_auth(token.expose())
                .json(&body);
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
    fn codes_are_classified() {
        let s = Duration::from_secs;
        let mut limited = HeaderMap::new();
        limited.insert("x-ogw-ratelimit-reset", "3".parse().unwrap());
        let cases = [
            (
                200,
                HeaderMap::new(),
                r#"{"code":0,"msg":"success","data":{}}"#,
                Verdict::Delivered,
            ),
            (
                400,
                HeaderMap::new(),
                r#"{"code":99991663,"msg":"Invalid access token for authorization."}"#,
                Verdict::TokenInvalid,
            ),
            (
                401,
                HeaderMap::new(),
                r#"{"code":99991668,"msg":"Invalid access token"}"#,
                Verdict::TokenInvalid,
            ),
            (
                429,
                limited,
                r#"{"code":99991400,"msg":"request trigger frequency limit"}"#,
                Verdict::Wait { wait: s(3) },
            ),
            (
                400,
                HeaderMap::new(),
                r#"{"code":230020,"msg":"frequency limit"}"#,
                Verdict::Wait { wait: s(5) },
            ),
            (
                400,
                HeaderMap::new(),
                r#"{"code":230002,"msg":"Bot/User can NOT be out of the chat."}"#,
                Verdict::Permanent,
            ),
            (
                500,
                HeaderMap::new(),
                r#"{"code":1500,"msg":"internal error"}"#,
                Verdict::Retry { retry_after: None },
            ),
            (
                502,
                HeaderMap::new(),
                "",
                Verdict::Retry { retry_after: None },
            ),
        ];
        for (status, headers, body, want) in cases {
            let a = Answer {
                status,
                headers,
                body: Bytes::from(body),
            };
            assert_eq!(classify(&a), want, "{body}");
        }
    }

    #[test]
    fn renders_a_text_reply_under_the_message() {
        let s: SourceConfig = toml::from_str(
            "id = \"fs\"\nplatform = \"lark\"\napp = \"a\"\nreply = true\napp_id = \"cli_1\"\napp_secret = \"s\"",
        )
        .unwrap();
        let r = FeishuReply::from_source(&s, true).unwrap();
        let (url, body) = r.render("om_1/x", "say \"hi\"").unwrap();
        assert_eq!(
            url.as_str(),
            "https://open.larksuite.com/open-apis/im/v1/messages/om_1%2Fx/reply"
        );
        assert_eq!(
            body,
            json!({"msg_type": "text", "content": "{\"text\":\"say \\\"hi\\\"\"}"})
        );
        assert_eq!(r.token.cache_id(), ["lark", "cli_1"]);
        assert_eq!(r.kind(), "lark_reply");
    }

    #[test]
    fn token_answers_are_read() {
        let t = FeishuToken {
            platform: "feishu",
            api_base: String::new(),
            app_id: "a".into(),
            secret: Secret::new("s"),
        };
        let ok = t
            .parse(
                200,
                br#"{"code":0,"msg":"ok","tenant_access_token":"t-1","expire":7140}"#,
            )
            .unwrap();
        assert_eq!(
            (ok.token.expose(), ok.expires_in),
            ("t-1", Duration::from_secs(7140))
        );
        assert!(matches!(
            t.parse(200, br#"{"code":10014,"msg":"app secret invalid"}"#),
            Err(TokenError::Refused {
                permanent: true,
                ..
            })
        ));
    }
}
