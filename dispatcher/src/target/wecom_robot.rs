//! `kind = "wecom_robot"`: a WeCom group robot (`…/cgi-bin/webhook/send?key=…`; the key is the
//! only credential, so the URL is a secret and may embed `env:`). Keys: `url`, `msgtype`
//! (`text` | `markdown` | `markdown_v2`, default `text`), `mentioned_list` and
//! `mentioned_mobile_list` (text only: the platform ignores them elsewhere). WeCom answers
//! HTTP 200 whatever happened; the outcome is the body's `errcode` (see [`classify`]). Limits:
//! 20 messages a minute per robot, failed sends included; text 2048 bytes, markdown 4096 bytes.
use super::address::TargetUrl;
use super::errcode::{Errcodes, ERRCODE_KEYS};
use super::parts::deliver_parts;
use super::{send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
use shared::keys::Keys;
use shared::units::Rate;
use std::time::Duration;

pub const KIND: &str = "wecom_robot";

/// After a 45009 the robot's one-minute window must pass.
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct WecomRobot {
    url: TargetUrl,
    msgtype: &'static str,
    mentioned: Vec<String>,
    mentioned_mobiles: Vec<String>,
}

impl WecomRobot {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&["url", "msgtype", "mentioned_list", "mentioned_mobile_list"]);
        let url = TargetUrl::read(&mut k, "url");
        let msgtype = k.choice("msgtype", &["text", "markdown", "markdown_v2"]);
        let mentioned = k.list("mentioned_list");
        let mentioned_mobiles = k.list("mentioned_mobile_list");
        if msgtype != "text" && !(mentioned.is_empty() && mentioned_mobiles.is_empty()) {
            k.issue(
                "msgtype",
                format!("`{msgtype}` messages cannot mention anyone; mentions need `text`"),
            );
        }
        let built = url.map(|url| Self {
            url,
            msgtype,
            mentioned,
            mentioned_mobiles,
        });
        k.finish(built)
    }

    /// The body of one message; mentions go with the first part only.
    pub fn render(&self, content: &str, first: bool) -> Value {
        match self.msgtype {
            "text" => {
                let mut text = json!({ "content": content });
                if first && !self.mentioned.is_empty() {
                    text["mentioned_list"] = json!(self.mentioned);
                }
                if first && !self.mentioned_mobiles.is_empty() {
                    text["mentioned_mobile_list"] = json!(self.mentioned_mobiles);
                }
                json!({ "msgtype": "text", "text": text })
            }
            other => json!({ "msgtype": other, other: { "content": content } }),
        }
    }
}

/// WeCom's answer (always HTTP 200; anything else is a proxy's, judged as plain HTTP):
///
/// | errcode | meaning | verdict |
/// |---|---|---|
/// | 0 | sent | Delivered |
/// | 45009 | over 20/min | Wait 60 s (not a failed attempt) |
/// | -1 | system busy | Retry |
/// | 93000 | invalid webhook URL (key) | Permanent |
/// | 93004 | robot removed from the group | Permanent |
/// | 40058, 44004, 40008 … | content too long / empty / bad type | Permanent |
/// | any other | refused | Permanent |
pub const ERRCODES: Errcodes = Errcodes {
    keys: ERRCODE_KEYS,
    only_on_200: true,
    table: &[
        (
            "45009",
            Verdict::Wait {
                wait: RATE_LIMITED_WAIT,
            },
        ),
        ("-1", Verdict::Retry { retry_after: None }),
    ],
};

/// Classifies WeCom's answer with [`ERRCODES`].
pub fn classify(answer: &Answer) -> Verdict {
    ERRCODES.classify(answer)
}

#[async_trait]
impl Target for WecomRobot {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_rate(&self) -> Option<Rate> {
        Some(Rate {
            count: 20,
            per: Duration::from_secs(60),
        })
    }

    /// WeCom counts UTF-8 bytes of the content.
    fn message_limit(&self) -> Option<Limit> {
        Some(match self.msgtype {
            "text" => Limit::bytes(2048),
            _ => Limit::bytes(4096),
        })
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |i, part| {
            let body = self.render(&part, i == 0);
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

    fn robot(extra: &str) -> Result<WecomRobot, Vec<ConfigIssue>> {
        let t: TargetConfig = toml::from_str(&format!(
            "id = \"ops\"\nkind = \"wecom_robot\"\nurl = \"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k\"\n{extra}"
        ))
        .unwrap();
        WecomRobot::from_config(&t)
    }

    #[test]
    fn errcodes_are_classified() {
        let cases = [
            (200, r#"{"errcode":0,"errmsg":"ok"}"#, Verdict::Delivered),
            (
                200,
                r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
                Verdict::Wait {
                    wait: RATE_LIMITED_WAIT,
                },
            ),
            (
                200,
                r#"{"errcode":-1,"errmsg":"system busy"}"#,
                Verdict::Retry { retry_after: None },
            ),
            (
                200,
                r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"errcode":40058,"errmsg":"content exceed max length"}"#,
                Verdict::Permanent,
            ),
            (
                200,
                "<html>portal</html>",
                Verdict::Retry { retry_after: None },
            ),
            (502, "", Verdict::Retry { retry_after: None }),
            (404, "", Verdict::Permanent),
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
    fn renders_each_msgtype_with_mentions_on_the_first_part() {
        let r = robot(
            "mentioned_list = [\"zhang\", \"@all\"]\nmentioned_mobile_list = [\"13800001111\"]",
        )
        .unwrap();
        assert_eq!(
            r.render("hi", true),
            json!({"msgtype": "text", "text": {"content": "hi", "mentioned_list": ["zhang", "@all"], "mentioned_mobile_list": ["13800001111"]}})
        );
        assert_eq!(
            r.render("more", false),
            json!({"msgtype": "text", "text": {"content": "more"}})
        );
        assert_eq!(r.message_limit(), Some(Limit::bytes(2048)));
        for msgtype in ["markdown", "markdown_v2"] {
            let r = robot(&format!("msgtype = \"{msgtype}\"")).unwrap();
            assert_eq!(
                r.render("**hi**", true),
                json!({"msgtype": msgtype, msgtype: {"content": "**hi**"}})
            );
            assert_eq!(r.message_limit(), Some(Limit::bytes(4096)));
        }
    }

    #[test]
    fn config_problems_are_named() {
        let e =
            robot("msgtype = \"markdown_v2\"\nmentioned_list = [\"a\"]\ncolour = 1").unwrap_err();
        let keys: Vec<&str> = e.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["targets.ops.colour", "targets.ops.msgtype"]);
    }
}
