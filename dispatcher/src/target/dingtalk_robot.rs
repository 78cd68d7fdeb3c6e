//! `kind = "dingtalk_robot"`: a DingTalk custom group robot (`…/robot/send?access_token=…`).
//! Keys: `url` (a secret; may embed `env:`), `secret` (`SEC…`: every send signs the URL with
//! `timestamp` and `sign`), `msgtype` (`text` | `markdown`), `title` (markdown's notification
//! title; default the answer's first line), `at_mobiles`, `at_user_ids`, `at_all`. DingTalk
//! allows 20 messages a minute per robot and mutes a robot that sends faster for 10 minutes
//! (130101): the target then waits rather than burning attempts.
use super::errcode::{Errcodes, ERRCODE_KEYS};
use super::parts::deliver_parts;
use super::{send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
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

pub const KIND: &str = "dingtalk_robot";

/// A robot that sent too fast is muted for 10 minutes.
pub const MUTED_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct DingtalkRobot {
    url: Secret,
    secret: Option<Secret>,
    msgtype: &'static str,
    title: Option<String>,
    at_mobiles: Vec<String>,
    at_user_ids: Vec<String>,
    at_all: bool,
}

/// `base64(hmac_sha256(key = secret, msg = timestamp_ms + "\n" + secret))`, before URL-encoding.
pub fn sign(timestamp_ms: i64, secret: &str) -> String {
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The robot URL with `timestamp` and `sign` appended (URL-encoded).
pub fn signed_url(url: &str, secret: &str, timestamp_ms: i64) -> Result<url::Url, url::ParseError> {
    let mut u = url::Url::parse(url)?;
    u.query_pairs_mut()
        .append_pair("timestamp", &timestamp_ms.to_string())
        .append_pair("sign", &sign(timestamp_ms, secret));
    Ok(u)
}

impl DingtalkRobot {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&[
            "url",
            "secret",
            "msgtype",
            "title",
            "at_mobiles",
            "at_user_ids",
            "at_all",
        ]);
        let url = k.secret_url("url");
        let secret = k.secret("secret");
        let msgtype = k.choice("msgtype", &["text", "markdown"]);
        let title = k.str("title");
        let at_mobiles = k.list("at_mobiles");
        let at_user_ids = k.list("at_user_ids");
        let at_all = k.bool("at_all");
        let built = url.map(|url| Self {
            url,
            secret,
            msgtype,
            title,
            at_mobiles,
            at_user_ids,
            at_all,
        });
        k.finish(built)
    }

    /// The body of one message; at-mentions go with the first part only.
    pub fn render(&self, content: &str, first: bool) -> Value {
        let mut body = match self.msgtype {
            "markdown" => json!({
                "msgtype": "markdown",
                "markdown": { "title": self.title.clone().unwrap_or_else(|| title_of(content)), "text": content },
            }),
            _ => json!({ "msgtype": "text", "text": { "content": content } }),
        };
        if first && (self.at_all || !self.at_mobiles.is_empty() || !self.at_user_ids.is_empty()) {
            body["at"] = json!({ "atMobiles": self.at_mobiles, "atUserIds": self.at_user_ids, "isAtAll": self.at_all });
        }
        body
    }

    fn url_for(&self, timestamp_ms: i64) -> Result<url::Url, url::ParseError> {
        match &self.secret {
            Some(s) => signed_url(self.url.expose(), s.expose(), timestamp_ms),
            None => url::Url::parse(self.url.expose()),
        }
    }
}

/// The first line, without markdown heading marks, shortened: what the notification shows.
fn title_of(content: &str) -> String {
    let line = content
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ', '>']))
        .find(|l| !l.trim().is_empty());
    let title: String = line.unwrap_or("Answer").chars().take(32).collect();
    title
}

/// DingTalk's answer (HTTP 200; anything else is judged as plain HTTP):
///
/// | errcode | meaning | verdict |
/// |---|---|---|
/// | 0 | sent | Delivered |
/// | 130101 | sent too fast: the robot is muted | Wait 10 min (not a failed attempt) |
/// | -1 | system busy | Retry |
/// | 310000 | keyword, IP, timestamp or signature refused | Permanent |
/// | 300001 | no such robot token | Permanent |
/// | any other | refused | Permanent |
pub const ERRCODES: Errcodes = Errcodes {
    keys: ERRCODE_KEYS,
    only_on_200: true,
    table: &[
        ("130101", Verdict::Wait { wait: MUTED_WAIT }),
        ("-1", Verdict::Retry { retry_after: None }),
    ],
};

/// Classifies DingTalk's answer with [`ERRCODES`].
pub fn classify(answer: &Answer) -> Verdict {
    ERRCODES.classify(answer)
}

#[async_trait]
impl Target for DingtalkRobot {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_rate(&self) -> Option<Rate> {
        Some(Rate {
            count: 20,
            per: Duration::from_secs(60),
        })
    }

    /// DingTalk refuses messages over 20 000 bytes.
    fn message_limit(&self) -> Option<Limit> {
        Some(Limit::bytes(20_000))
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |i, part| {
            let body = self.render(&part, i == 0);
            // Each part is signed at its own send time: DingTalk refuses stale timestamps.
            let url = self.url_for(chrono::Utc::now().timestamp_millis());
            Box::pin(async move {
                match url {
                    Ok(url) => send(ctx, ctx.http.post(url).json(&body), classify).await.0,
                    Err(_) => super::parts::local_outcome(
                        Verdict::Permanent,
                        "the robot URL is not a valid URL",
                    ),
                }
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

    fn robot(extra: &str) -> DingtalkRobot {
        let t: TargetConfig = toml::from_str(&format!(
            "id = \"ops\"\nkind = \"dingtalk_robot\"\nurl = \"https://oapi.dingtalk.com/robot/send?access_token=T\"\n{extra}"
        ))
        .unwrap();
        DingtalkRobot::from_config(&t).unwrap()
    }

    #[test]
    fn signature_matches_the_reference_vector() {
        assert_eq!(
            sign(1_700_000_000_000, "secret"),
            "OuzzJR5+xZ4/EYwqtNt6sMYZQMTa/HEGvc9miJe7XzY="
        );
        let u = signed_url(
            "https://oapi.dingtalk.com/robot/send?access_token=T",
            "secret",
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=T&timestamp=1700000000000&sign=OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"
        );
    }

    #[test]
    fn errcodes_are_classified() {
        let cases = [
            (200, r#"{"errcode":0,"errmsg":"ok"}"#, Verdict::Delivered),
            (
                200,
                r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#,
                Verdict::Wait { wait: MUTED_WAIT },
            ),
            (
                200,
                r#"{"errcode":310000,"errmsg":"sign not match"}"#,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"errcode":300001,"errmsg":"token is not exist"}"#,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"errcode":-1,"errmsg":"busy"}"#,
                Verdict::Retry { retry_after: None },
            ),
            (503, "", Verdict::Retry { retry_after: None }),
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
    fn renders_text_and_markdown_with_mentions_first() {
        let r = robot("at_mobiles = [\"138\"]\nat_user_ids = [\"u1\"]");
        assert_eq!(
            r.render("hi", true),
            json!({"msgtype": "text", "text": {"content": "hi"}, "at": {"atMobiles": ["138"], "atUserIds": ["u1"], "isAtAll": false}})
        );
        assert_eq!(
            r.render("hi", false),
            json!({"msgtype": "text", "text": {"content": "hi"}})
        );
        let r = robot("msgtype = \"markdown\"\nat_all = true");
        assert_eq!(
            r.render("## Weather\nsunny", true),
            json!({"msgtype": "markdown", "markdown": {"title": "Weather", "text": "## Weather\nsunny"}, "at": {"atMobiles": [], "atUserIds": [], "isAtAll": true}})
        );
        let r = robot("msgtype = \"markdown\"\ntitle = \"Bot\"");
        assert_eq!(r.render("x", false)["markdown"]["title"], "Bot");
    }
}
