//! Replies through DingTalk (`platform = "dingtalk"`): POST to the message's `sessionWebhook`
//! while it is valid (no credential needed: the URL is one, so it is never logged); once it has
//! expired, the robot API with the app's access token (`oapi /gettoken` with `app_key` and
//! `app_secret`): `v1.0/robot/oToMessages/batchSend` to the sender in a one-to-one chat,
//! `v1.0/robot/groupMessages/send` to the conversation in a group. Keys (shared with the
//! ingress): `app_key`, `app_secret`, `robot_code` (default: the message's, else `app_key`),
//! `api_base` (default `https://api.dingtalk.com`), `oapi_base` (default
//! `https://oapi.dingtalk.com`), `session_webhook_origins`. Without `app_key` only the session
//! webhook is used. A Stream-mode source's `client_id`/`client_secret` (the connector's keys)
//! are its AppKey/AppSecret, so they stand for `app_key`/`app_secret` there.
//!
//! The session webhook is a URL the message's body names, and DingTalk signs no body: it is used
//! only on DingTalk's own hosts (`session_webhook_origins`, by default the origins of `oapi_base`
//! and `api_base`), never with a `user:pass@` in it. Any other is a permanent failure of that
//! job alone, decided without a request, so no receiver of an attacker's choosing ever answers
//! on behalf of the source (and its circuit breaker).
use super::super::dingtalk_robot;
use super::super::parts::{deliver_parts, local_outcome};
use super::super::{classify_http, send, Answer, Context, Outcome, Target, Verdict};
use crate::split::Limit;
use crate::tokens::{self, parse_token_answer, Fresh, TokenAnswer, TokenError, TokenSource};
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{ChatType, DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;
use std::time::Duration;

pub mod card;

/// The keys this channel reads from the source's block.
pub const KEYS: &[&str] = &[
    "app_key",
    "app_secret",
    "robot_code",
    "api_base",
    "oapi_base",
    "session_webhook_origins",
    "card_template_id",
    "card_key",
];
pub const DEFAULT_API_BASE: &str = "https://api.dingtalk.com";
pub const DEFAULT_OAPI_BASE: &str = "https://oapi.dingtalk.com";
pub const LIMIT: Limit = Limit::bytes(20_000);
/// A session webhook this close to its expiry is not used: the request could arrive after it.
pub const SESSION_MARGIN: Duration = Duration::from_secs(10);

/// The app's access token (`oapi /gettoken`).
#[derive(Debug)]
pub struct DingtalkToken {
    oapi_base: String,
    app_key: String,
    secret: Secret,
}

const TOKEN_ANSWER: TokenAnswer = TokenAnswer {
    code: "errcode",
    message: "errmsg",
    token: "access_token",
    expires_in: "expires_in",
    // 40001 bad secret, 40089 bad app key: only a config change helps.
    permanent: &[40001, 40089],
};

impl TokenSource for DingtalkToken {
    fn cache_id(&self) -> Vec<String> {
        vec!["dingtalk".into(), self.app_key.clone()]
    }

    fn request(&self, http: &reqwest::Client) -> reqwest::RequestBuilder {
        http.get(format!("{}/gettoken", self.oapi_base)).query(&[
            ("appkey", self.app_key.as_str()),
            ("appsecret", self.secret.expose()),
        ])
    }

    fn parse(&self, status: u16, body: &[u8]) -> Result<Fresh, TokenError> {
        parse_token_answer(&TOKEN_ANSWER, status, body)
    }
}

#[derive(Debug)]
pub struct DingtalkReply {
    /// The robot-API fallback, when the app's key is configured.
    app: Option<DingtalkToken>,
    robot_code: Option<String>,
    api_base: String,
    /// Where a session webhook may point.
    session_origins: Vec<url::Origin>,
    /// The AI card a streamed reply grows in (`stream = true`).
    card: Option<card::CardTemplate>,
}

/// Why a session webhook is not used.
pub const NOT_DINGTALK: &str =
    "the session webhook is not on DingTalk's hosts (session_webhook_origins); not called";

/// The origin an allowed entry stands for: an http(s) URL with nothing but a scheme, a host and
/// a port (`https://oapi.dingtalk.com`).
fn origin_entry(entry: &str) -> Result<url::Origin, &'static str> {
    let url = url::Url::parse(entry).map_err(|_| "is not a URL")?;
    let bare = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if bare {
        Ok(url.origin())
    } else {
        Err("must be a scheme, a host and an optional port, such as https://oapi.dingtalk.com")
    }
}

/// Whether a session webhook may be called (pure): an http(s) URL on one of `origins`, without
/// a user or password (reqwest would turn them into an Authorization header).
pub fn session_webhook_allowed(url: &str, origins: &[url::Origin]) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.username().is_empty() && u.password().is_none() && origins.contains(&u.origin())
    })
}

/// How one part goes out.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// The session webhook (its URL, a credential) with this body.
    Session(Secret, Value),
    /// The robot API: path under `api_base` and body.
    Robot(&'static str, Value),
    /// Neither is possible: why.
    None(&'static str),
}

impl DingtalkReply {
    pub fn from_source(s: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::reply(s);
        // In Stream mode the app's AppKey/AppSecret are the connection's client_id/client_secret.
        let stream = s.mode == shared::config::SourceMode::Stream;
        let app_key = k
            .str("app_key")
            .or_else(|| stream.then(|| k.str("client_id")).flatten());
        let secret = k
            .secret("app_secret")
            .or_else(|| stream.then(|| k.secret("client_secret")).flatten());
        let robot_code = k.str("robot_code");
        let api_base = k.base_url("api_base", DEFAULT_API_BASE);
        let oapi_base = k.base_url("oapi_base", DEFAULT_OAPI_BASE);
        let session_origins = session_origins(&mut k, &[&oapi_base, &api_base]);
        let app = match (app_key, secret) {
            (Some(app_key), Some(secret)) => Some(DingtalkToken {
                oapi_base,
                app_key,
                secret,
            }),
            (Some(_), None) => {
                k.issue(
                    "app_secret",
                    "is required with app_key (the robot API after a session webhook expires)",
                );
                None
            }
            _ => None,
        };
        let card = if s.stream {
            card::from_keys(&mut k, app.is_some())
        } else {
            None
        };
        k.finish(Some(Self {
            app,
            robot_code,
            api_base,
            session_origins,
            card,
        }))
    }

    /// How a part goes out at `now_ms` (pure): the session webhook while it is valid, else the
    /// robot API to the sender (one-to-one) or the conversation (group).
    pub fn route(
        &self,
        handle: &ReplyHandle,
        chat_type: ChatType,
        text: &str,
        now_ms: i64,
    ) -> Route {
        let ReplyHandle::Dingtalk {
            session_webhook,
            session_webhook_expires_at,
            conversation_id,
            sender_staff_id,
            ..
        } = handle
        else {
            return Route::None("the job's reply handle is not a `dingtalk` handle");
        };
        let margin = SESSION_MARGIN.as_millis() as i64;
        if let Some(url) = session_webhook {
            if !session_webhook_allowed(url, &self.session_origins) {
                return Route::None(NOT_DINGTALK);
            }
            // An unknown expiry is taken as valid: DingTalk will say if it is not. The expiry
            // is the body's number: checked arithmetic (an `at` near `i64::MIN` is expired, not
            // an overflow panic).
            if session_webhook_expires_at
                .is_none_or(|at| at.checked_sub(margin).is_some_and(|until| until > now_ms))
            {
                return Route::Session(
                    Secret::new(url.clone()),
                    json!({ "msgtype": "text", "text": { "content": text } }),
                );
            }
        }
        if self.app.is_none() {
            return Route::None("the session webhook has expired and no app_key/app_secret is configured for the robot API");
        }
        let robot_code = self.robot_code_for(handle);
        let msg_param = json!({ "content": text }).to_string();
        match chat_type {
            ChatType::Group => Route::Robot(
                "/v1.0/robot/groupMessages/send",
                json!({ "robotCode": robot_code, "openConversationId": conversation_id, "msgKey": "sampleText", "msgParam": msg_param }),
            ),
            ChatType::Single => match sender_staff_id {
                Some(staff) => Route::Robot(
                    "/v1.0/robot/oToMessages/batchSend",
                    json!({ "robotCode": robot_code, "userIds": [staff], "msgKey": "sampleText", "msgParam": msg_param }),
                ),
                None => Route::None(
                    "the session webhook has expired and the sender's staff id is unknown",
                ),
            },
        }
    }
}

impl DingtalkReply {
    /// The robot that speaks (pure): the message's, else `robot_code`, else the app's key.
    fn robot_code_for(&self, handle: &ReplyHandle) -> String {
        let from_message = match handle {
            ReplyHandle::Dingtalk { robot_code, .. } => robot_code.clone(),
            _ => None,
        };
        from_message
            .or_else(|| self.robot_code.clone())
            .or_else(|| self.app.as_ref().map(|a| a.app_key.clone()))
            .unwrap_or_default()
    }

    /// Sends one message (a part of the answer) the way `route` decides, at the time of sending.
    async fn send_one(
        &self,
        ctx: &Context,
        handle: &ReplyHandle,
        chat_type: ChatType,
        part: &str,
    ) -> Outcome {
        // Decided per part: the session webhook may expire between two parts.
        let route = self.route(
            handle,
            chat_type,
            part,
            chrono::Utc::now().timestamp_millis(),
        );
        match route {
            Route::Session(url, body) => {
                send(
                    ctx,
                    ctx.http.post(url.expose()).json(&body),
                    dingtalk_robot::classify,
                )
                .await
                .0
            }
            Route::Robot(path, body) => {
                let Some(app) = &self.app else {
                    return local_outcome(Verdict::Permanent, "no app_key for the robot API");
                };
                let url = format!("{}{path}", self.api_base);
                tokens::send_with_token(ctx, app, |token| {
                    let request = ctx
                        .http
                        .post(&url)
                        .header("x-acs-dingtalk-access-token", token.expose())
                        .json(&body);
                    Box::pin(async move { send(ctx, request, classify_robot_api).await.0 })
                })
                .await
            }
            Route::None(why) => local_outcome(Verdict::Permanent, why),
        }
    }
}

/// `session_webhook_origins`, or by default the origins of the API bases (DingTalk's own hosts,
/// or the stand-in or on-premises server the bases point to).
fn session_origins(k: &mut Keys, bases: &[&str]) -> Vec<url::Origin> {
    let key = "session_webhook_origins";
    if !k.has(key) {
        return bases
            .iter()
            .filter_map(|b| url::Url::parse(b).ok())
            .map(|u| u.origin())
            .collect();
    }
    let mut origins = Vec::new();
    for entry in k.list(key) {
        match origin_entry(&entry) {
            Ok(origin) => origins.push(origin),
            Err(problem) => k.issue(key, format!("`{entry}` {problem}")),
        }
    }
    if origins.is_empty() && !k.has_problem(key) {
        k.issue(
            key,
            "lists no origin (leave it out for DingTalk's own hosts)",
        );
    }
    origins
}

/// The robot API's answer:
///
/// | answer | verdict |
/// |---|---|
/// | 200 with `processQueryKey` | Delivered |
/// | 200 with the user in `flowControlledStaffIdList` | Wait 60 s (per-user flow control) |
/// | 200 with the user in `invalidStaffIdList` | Permanent |
/// | 401, or code `InvalidAuthentication` | TokenInvalid (refresh, send once more) |
/// | 429, or a `Throttling…` / `…QpsLimit…` code | Retry |
/// | other 4xx (`Forbidden.AccessDenied…`, `invalidParameter…`) | Permanent |
/// | 5xx | Retry |
pub fn classify_robot_api(answer: &Answer) -> Verdict {
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let code = v.get("code").and_then(Value::as_str).unwrap_or_default();
    let nonempty = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if code == "InvalidAuthentication" || answer.status == 401 {
        return Verdict::TokenInvalid;
    }
    if code.starts_with("Throttling") || code.contains("QpsLimit") || answer.status == 429 {
        return Verdict::Retry {
            retry_after: super::super::retry_after(&answer.headers),
        };
    }
    match answer.status {
        200..=299 if nonempty("invalidStaffIdList") => Verdict::Permanent,
        200..=299 if nonempty("flowControlledStaffIdList") => Verdict::Wait {
            wait: Duration::from_secs(60),
        },
        _ => classify_http(answer),
    }
}

#[async_trait]
impl Target for DingtalkReply {
    fn kind(&self) -> &'static str {
        "dingtalk_reply"
    }

    fn message_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    fn grow(&self) -> Option<&dyn crate::stream::Grow> {
        self.card.as_ref().map(|_| self as &dyn crate::stream::Grow)
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let handle = match super::restored(job, ctx).await {
            Ok(Some(handle @ ReplyHandle::Dingtalk { .. })) => handle,
            Ok(_) => return super::wrong_handle("dingtalk"),
            Err(outcome) => return outcome,
        };
        let handle = &handle;
        let chat_type = job.payload.conversation.chat_type;
        let parts = self.parts_of(job);
        deliver_parts(job, ctx, parts, |_, part| {
            Box::pin(async move { self.send_one(ctx, handle, chat_type, &part).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap;

    fn reply(extra: &str) -> DingtalkReply {
        let s: SourceConfig =
            toml::from_str(&format!("id = \"dt\"\nplatform = \"dingtalk\"\napp = \"a\"\nreply = true\napp_secret = \"s\"\n{extra}"))
                .unwrap();
        DingtalkReply::from_source(&s).unwrap()
    }

    fn handle(expires_at: Option<i64>, staff: Option<&str>) -> ReplyHandle {
        ReplyHandle::Dingtalk {
            session_webhook: Some("https://oapi.dingtalk.com/robot/sendBySession?session=S".into()),
            session_webhook_expires_at: expires_at,
            conversation_id: "cid1".into(),
            robot_code: None,
            sender_staff_id: staff.map(str::to_owned),
        }
    }

    #[test]
    fn the_session_webhook_is_used_until_it_expires_then_the_robot_api() {
        let with_app = reply("app_key = \"ding1\"");
        let now = 1_700_000_000_000;
        let session = Route::Session(
            Secret::new("https://oapi.dingtalk.com/robot/sendBySession?session=S"),
            json!({"msgtype": "text", "text": {"content": "hi"}}),
        );
        let one_to_one = Route::Robot(
            "/v1.0/robot/oToMessages/batchSend",
            json!({"robotCode": "ding1", "userIds": ["staff1"], "msgKey": "sampleText", "msgParam": "{\"content\":\"hi\"}"}),
        );
        let group = Route::Robot(
            "/v1.0/robot/groupMessages/send",
            json!({"robotCode": "ding1", "openConversationId": "cid1", "msgKey": "sampleText", "msgParam": "{\"content\":\"hi\"}"}),
        );
        let cases = [
            (
                &with_app,
                handle(Some(now + 60_000), Some("staff1")),
                ChatType::Single,
                session.clone(),
            ),
            (
                &with_app,
                handle(None, Some("staff1")),
                ChatType::Single,
                session,
            ),
            (
                &with_app,
                handle(Some(now + 5_000), Some("staff1")),
                ChatType::Single,
                one_to_one.clone(),
            ),
            (
                &with_app,
                handle(Some(now - 1), Some("staff1")),
                ChatType::Single,
                one_to_one,
            ),
            (
                &with_app,
                handle(Some(now - 1), None),
                ChatType::Group,
                group,
            ),
            (
                &with_app,
                handle(Some(now - 1), None),
                ChatType::Single,
                Route::None("the session webhook has expired and the sender's staff id is unknown"),
            ),
        ];
        for (r, h, chat, want) in cases {
            assert_eq!(r.route(&h, chat, "hi", now), want, "{h:?} {chat:?}");
        }
        let without_app = reply("");
        assert!(matches!(
            without_app.route(
                &handle(Some(now - 1), Some("s")),
                ChatType::Single,
                "hi",
                now
            ),
            Route::None(_)
        ));
    }

    /// The session webhook is the body's word, and DingTalk signs no body: only DingTalk's own
    /// hosts are called, whatever the expiry says.
    /// Issue 11 item 13: a forged `sessionWebhookExpiredTime` at either end of `i64` once
    /// overflowed `at - margin` (a panic with overflow checks, as in these debug-built tests).
    #[test]
    fn a_forged_expiry_at_the_ends_of_i64_routes_without_overflow() {
        let now = 1_700_000_000_000;
        let r = reply("app_key = \"ding1\"");
        let route = |at: i64| {
            let h = ReplyHandle::Dingtalk {
                session_webhook: Some(
                    "https://oapi.dingtalk.com/robot/sendBySession?session=S".into(),
                ),
                session_webhook_expires_at: Some(at),
                conversation_id: "cid1".into(),
                robot_code: None,
                sender_staff_id: Some("staff1".into()),
            };
            match r.route(&h, ChatType::Single, "hi", now) {
                Route::Session(..) => "session",
                Route::Robot(..) => "robot",
                Route::None(_) => "none",
            }
        };
        assert_eq!(route(i64::MIN), "robot", "long expired");
        assert_eq!(route(i64::MIN + 1), "robot");
        assert_eq!(route(i64::MAX), "session");
        assert_eq!(route(0), "robot");
    }

    #[test]
    fn a_session_webhook_off_dingtalks_hosts_is_never_called() {
        let now = 1_700_000_000_000;
        let with_app = reply("app_key = \"ding1\"");
        let route = |r: &DingtalkReply, url: &str| {
            let h = ReplyHandle::Dingtalk {
                session_webhook: Some(url.into()),
                session_webhook_expires_at: Some(now + 60_000),
                conversation_id: "cid1".into(),
                robot_code: None,
                sender_staff_id: Some("staff1".into()),
            };
            match r.route(&h, ChatType::Single, "hi", now) {
                Route::Session(..) => "session",
                Route::Robot(..) => "robot",
                Route::None(why) if why == NOT_DINGTALK => "refused",
                Route::None(_) => "none",
            }
        };
        let cases = [
            (
                "https://oapi.dingtalk.com/robot/sendBySession?session=S",
                "session",
            ),
            ("https://api.dingtalk.com/v1.0/robot/x", "session"),
            ("https://OAPI.dingtalk.com/robot/sendBySession", "session"),
            (
                "https://oapi.dingtalk.com:443/robot/sendBySession",
                "session",
            ),
            (
                "https://evil.example/robot/sendBySession?session=S",
                "refused",
            ),
            ("https://oapi.dingtalk.com.evil.example/robot", "refused"),
            (
                "https://user:pass@oapi.dingtalk.com/robot/sendBySession",
                "refused",
            ),
            (
                "https://user@oapi.dingtalk.com/robot/sendBySession",
                "refused",
            ),
            ("http://oapi.dingtalk.com/robot/sendBySession", "refused"),
            (
                "https://oapi.dingtalk.com:8443/robot/sendBySession",
                "refused",
            ),
            ("http://127.0.0.1:9/robot", "refused"),
            ("not a url", "refused"),
        ];
        for (url, want) in cases {
            assert_eq!(route(&with_app, url), want, "{url}");
        }
        // Bases pointed elsewhere (a stand-in, on-premises) bring their origins along...
        let local = reply("oapi_base = \"http://127.0.0.1:7001\"");
        assert_eq!(
            route(&local, "http://127.0.0.1:7001/robot?session=S"),
            "session"
        );
        assert_eq!(route(&local, "https://oapi.dingtalk.com/robot"), "refused");
        // ... and an explicit list replaces the defaults.
        let listed = reply("session_webhook_origins = [\"https://ding.example.com:8443\"]");
        assert_eq!(
            route(&listed, "https://ding.example.com:8443/s?x=1"),
            "session"
        );
        assert_eq!(route(&listed, "https://oapi.dingtalk.com/robot"), "refused");
    }

    #[test]
    fn session_webhook_origins_must_be_bare_origins() {
        for (entries, ok) in [
            (
                "[\"https://oapi.dingtalk.com\", \"http://10.0.0.5:8080/\"]",
                true,
            ),
            ("[\"https://oapi.dingtalk.com/robot\"]", false),
            ("[\"https://u:p@oapi.dingtalk.com\"]", false),
            ("[\"ftp://oapi.dingtalk.com\"]", false),
            ("[\"oapi.dingtalk.com\"]", false),
            ("[\"https://oapi.dingtalk.com?x=1\"]", false),
            ("[]", false),
        ] {
            let s: SourceConfig = toml::from_str(&format!(
                "id = \"dt\"\nplatform = \"dingtalk\"\napp = \"a\"\nreply = true\napp_secret = \"s\"\nsession_webhook_origins = {entries}"
            ))
            .unwrap();
            match DingtalkReply::from_source(&s) {
                Ok(_) => assert!(ok, "{entries} accepted"),
                Err(e) => {
                    assert!(!ok, "{entries}: {e:?}");
                    assert_eq!(e[0].key, "sources.dt.session_webhook_origins");
                }
            }
        }
    }

    #[test]
    fn robot_api_answers_are_classified() {
        let cases = [
            (
                200,
                r#"{"processQueryKey":"k","invalidStaffIdList":[],"flowControlledStaffIdList":[]}"#,
                Verdict::Delivered,
            ),
            (
                200,
                r#"{"processQueryKey":"k","invalidStaffIdList":["u"]}"#,
                Verdict::Permanent,
            ),
            (
                200,
                r#"{"processQueryKey":"k","flowControlledStaffIdList":["u"]}"#,
                Verdict::Wait {
                    wait: Duration::from_secs(60),
                },
            ),
            (
                401,
                r#"{"code":"InvalidAuthentication","message":"不合法的access_token"}"#,
                Verdict::TokenInvalid,
            ),
            (
                400,
                r#"{"code":"InvalidAuthentication","message":"不合法的access_token"}"#,
                Verdict::TokenInvalid,
            ),
            (
                403,
                r#"{"code":"Forbidden.AccessDenied.AccessTokenPermissionDenied","message":"no permission"}"#,
                Verdict::Permanent,
            ),
            (
                429,
                r#"{"code":"Throttling.Api","message":"too fast"}"#,
                Verdict::Retry { retry_after: None },
            ),
            (
                500,
                r#"{"code":"ServiceUnavailable"}"#,
                Verdict::Retry { retry_after: None },
            ),
        ];
        for (status, body, want) in cases {
            let a = Answer {
                status,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            };
            assert_eq!(classify_robot_api(&a), want, "{status} {body}");
        }
    }

    #[test]
    fn app_key_without_secret_is_refused() {
        let s: SourceConfig = toml::from_str(
            "id = \"dt\"\nplatform = \"dingtalk\"\napp = \"a\"\nreply = true\napp_key = \"k\"",
        )
        .unwrap();
        assert_eq!(
            DingtalkReply::from_source(&s).unwrap_err()[0].key,
            "sources.dt.app_secret"
        );
    }
}
