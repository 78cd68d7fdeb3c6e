//! Replies through a WeCom app (`platform = "wecom"`): `gettoken` with the corp id
//! (`receive_id`) and the app's `corp_secret`, then `message/send` of a text message to the user
//! who wrote, through `agent_id` (the message's own `AgentID` when it carried one). Keys
//! (shared with the ingress): `receive_id`, `corp_secret`, `agent_id`, `api_base` (default
//! `https://qyapi.weixin.qq.com`). Text is limited to 2 048 bytes.
use super::super::errcode::{Errcodes, ERRCODE_KEYS};
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

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &["receive_id", "corp_secret", "agent_id", "api_base"];
pub const DEFAULT_API_BASE: &str = "https://qyapi.weixin.qq.com";
pub const LIMIT: Limit = Limit::bytes(2_048);
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(60);

/// The app's `gettoken`.
#[derive(Debug)]
pub struct WecomToken {
    api_base: String,
    corp_id: String,
    secret: Secret,
    agent_id: String,
}

const TOKEN_ANSWER: TokenAnswer = TokenAnswer {
    code: "errcode",
    message: "errmsg",
    token: "access_token",
    expires_in: "expires_in",
    // 40001 bad secret, 40013 bad corp id, 40091 secret invalid: only a config change helps.
    permanent: &[40001, 40013, 40091],
};

impl TokenSource for WecomToken {
    fn cache_id(&self) -> Vec<String> {
        vec!["wecom".into(), self.corp_id.clone(), self.agent_id.clone()]
    }

    fn request(&self, http: &reqwest::Client) -> reqwest::RequestBuilder {
        http.get(format!("{}/cgi-bin/gettoken", self.api_base))
            .query(&[
                ("corpid", self.corp_id.as_str()),
                ("corpsecret", self.secret.expose()),
            ])
    }

    fn parse(&self, status: u16, body: &[u8]) -> Result<Fresh, TokenError> {
        parse_token_answer(&TOKEN_ANSWER, status, body)
    }
}

#[derive(Debug)]
pub struct WecomReply {
    token: WecomToken,
}

impl WecomReply {
    pub fn from_source(s: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        let corp_id = k.str("receive_id");
        if corp_id.is_none() && !k.has_problem("receive_id") {
            k.issue(
                "receive_id",
                "replies need the corp id (an AI-bot source cannot reply here)",
            );
        }
        let secret = k.required_secret("corp_secret");
        let agent_id = k.required_id("agent_id");
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        let built = match (corp_id, secret, agent_id) {
            (Some(corp_id), Some(secret), Some(agent_id)) => Some(Self {
                token: WecomToken {
                    api_base,
                    corp_id,
                    secret,
                    agent_id,
                },
            }),
            _ => None,
        };
        k.finish(built)
    }

    /// `message/send`'s body for one part.
    pub fn render(&self, to_user: &str, agent_id: Option<&str>, content: &str) -> Value {
        let agent = agent_id.unwrap_or(&self.token.agent_id);
        // WeCom's agentid is a number; keep a non-numeric one as given rather than drop it.
        let agentid = agent
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(agent));
        json!({ "touser": to_user, "msgtype": "text", "agentid": agentid, "text": { "content": content } })
    }
}

/// `message/send`'s answer (HTTP 200 whatever happened):
///
/// | errcode | meaning | verdict |
/// |---|---|---|
/// | 0 | sent | Delivered |
/// | 40014, 42001 | access token invalid / expired | TokenInvalid (refresh, send once more) |
/// | 45009 | API frequency limit | Wait 60 s |
/// | -1 | system busy | Retry |
/// | 81013, 60020, 301002 … | user not in the app's scope, IP not allowed … | Permanent |
pub const ERRCODES: Errcodes = Errcodes {
    keys: ERRCODE_KEYS,
    only_on_200: true,
    table: &[
        ("40014", Verdict::TokenInvalid),
        ("42001", Verdict::TokenInvalid),
        (
            "45009",
            Verdict::Wait {
                wait: RATE_LIMITED_WAIT,
            },
        ),
        ("-1", Verdict::Retry { retry_after: None }),
    ],
};

/// Classifies `message/send`'s answer with [`ERRCODES`].
pub fn classify(answer: &Answer) -> Verdict {
    ERRCODES.classify(answer)
}

#[async_trait]
impl Target for WecomReply {
    fn kind(&self) -> &'static str {
        "wecom_reply"
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let Some(ReplyHandle::Wecom { to_user, agent_id }) = super::handle(job) else {
            return super::wrong_handle("wecom");
        };
        if to_user.is_empty() {
            return local_outcome(Verdict::Permanent, "the reply handle names no user");
        }
        let parts = self.parts_of(job);
        let url = format!("{}/cgi-bin/message/send", self.token.api_base);
        deliver_parts(job, ctx, parts, |_, part| {
            let body = self.render(to_user, agent_id.as_deref(), &part);
            let url = &url;
            Box::pin(async move {
                tokens::send_with_token(ctx, &self.token, |token| {
                    let request = ctx
                        .http
                        .post(url)
                        .query(&[("access_token", token.expose())])
                        .json(&body);
                    Box::pin(async move { send(ctx, request, classify).await.0 })
                })
                .await
            })
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
    fn errcodes_are_classified() {
        let cases = [
            (r#"{"errcode":0,"errmsg":"ok"}"#, Verdict::Delivered),
            (
                r#"{"errcode":40014,"errmsg":"invalid access_token"}"#,
                Verdict::TokenInvalid,
            ),
            (
                r#"{"errcode":42001,"errmsg":"access_token expired"}"#,
                Verdict::TokenInvalid,
            ),
            (
                r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
                Verdict::Wait {
                    wait: RATE_LIMITED_WAIT,
                },
            ),
            (
                r#"{"errcode":-1,"errmsg":"system busy"}"#,
                Verdict::Retry { retry_after: None },
            ),
            (
                r#"{"errcode":81013,"errmsg":"user & party & tag all invalid"}"#,
                Verdict::Permanent,
            ),
        ];
        for (body, want) in cases {
            let a = Answer {
                status: 200,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            };
            assert_eq!(classify(&a), want, "{body}");
        }
    }

    #[test]
    fn renders_a_text_message_through_the_agent() {
        let s: SourceConfig = toml::from_str(
            "id = \"wc\"\nplatform = \"wecom\"\napp = \"a\"\nreply = true\nreceive_id = \"ww1\"\ncorp_secret = \"s\"\nagent_id = 1000002",
        )
        .unwrap();
        let r = WecomReply::from_source(&s).unwrap();
        assert_eq!(
            r.render("zhang", None, "hi"),
            json!({"touser": "zhang", "msgtype": "text", "agentid": 1000002, "text": {"content": "hi"}})
        );
        assert_eq!(r.render("zhang", Some("1000005"), "hi")["agentid"], 1000005);
        assert_eq!(r.token.cache_id(), ["wecom", "ww1", "1000002"]);
        assert!(!format!("{r:?}").contains("\"s\""));
    }

    #[test]
    fn token_answers_are_read() {
        let t = WecomToken {
            api_base: String::new(),
            corp_id: "c".into(),
            secret: Secret::new("s"),
            agent_id: "1".into(),
        };
        let ok = t
            .parse(
                200,
                br#"{"errcode":0,"errmsg":"ok","access_token":"AT","expires_in":7200}"#,
            )
            .unwrap();
        assert_eq!(ok.token.expose(), "AT");
        assert!(matches!(
            t.parse(200, br#"{"errcode":40001,"errmsg":"invalid credential"}"#),
            Err(TokenError::Refused {
                permanent: true,
                ..
            })
        ));
    }
}
