//! The chat platforms' outbound APIs on one local server, behaving as the real ones do: WeCom
//! (group robot; app `gettoken` + `message/send`), DingTalk (custom robot with signed URLs;
//! session webhooks; `gettoken` + robot API; the AI card API, in `crate::dingtalk_card`),
//! Feishu / Lark (custom bot with signed bodies; `tenant_access_token` + message reply;
//! CardKit, in `crate::feishu_card`), Slack (incoming webhook, `chat.postMessage`,
//! `response_url`, `chat.update`: see [`slack`]), Rocket.Chat (incoming webhook) and Telegram (`sendMessage`,
//! `editMessageText`: each chat keeps its messages by id with their current text). It checks
//! credentials and signatures, enforces each platform's documented rate limit with the
//! platform's own errcode, counts token fetches, expires tokens on demand, can be told to answer
//! the next requests with a given status and body, and records every accepted message for
//! assertions. The credentials it accepts are in [`creds`].
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod slack;

/// The credentials the stand-in accepts.
pub mod creds {
    pub const WECOM_ROBOT_KEY: &str = "wecom-robot-key";
    pub const WECOM_CORP_ID: &str = "ww-standin-corp";
    pub const WECOM_CORP_SECRET: &str = "wecom-corp-secret";
    pub const DINGTALK_ROBOT_TOKEN: &str = "dingtalk-robot-token";
    pub const DINGTALK_ROBOT_SECRET: &str = "SECdingtalk-robot-secret";
    pub const DINGTALK_APP_KEY: &str = "ding-app-key";
    pub const DINGTALK_APP_SECRET: &str = "ding-app-secret";
    /// A Feishu bot with signature verification on (every body must be signed).
    pub const FEISHU_HOOK: &str = "feishu-signed-hook";
    pub const FEISHU_SECRET: &str = "feishu-bot-secret";
    /// A Feishu bot without signature verification.
    pub const FEISHU_HOOK_UNSIGNED: &str = "feishu-plain-hook";
    pub const FEISHU_APP_ID: &str = "cli_standin";
    pub const FEISHU_APP_SECRET: &str = "feishu-app-secret";
    pub const SLACK_HOOK_PATH: &str = "T0001/B0001/standinhook";
    pub const SLACK_BOT_TOKEN: &str = "xoxb-standin";
    pub const ROCKETCHAT_HOOK: &str = "hookid/hooktoken";
    pub const TELEGRAM_BOT_TOKEN: &str = "123456:standin-token";
}

/// The APIs, as named in records, scripts, limits and counters.
pub mod api {
    pub const WECOM_ROBOT: &str = "wecom_robot";
    pub const WECOM_APP: &str = "wecom_app";
    pub const DINGTALK_ROBOT: &str = "dingtalk_robot";
    pub const DINGTALK_SESSION: &str = "dingtalk_session";
    pub const DINGTALK_API: &str = "dingtalk_api";
    /// DingTalk's card API: `createAndDeliver` (and, for limits, every write to a card).
    pub const DINGTALK_CARD: &str = "dingtalk_card";
    /// DingTalk's `card/streaming` (its limits are the conversation's, under [`DINGTALK_CARD`]).
    pub const DINGTALK_CARD_STREAMING: &str = "dingtalk_card_streaming";
    pub const FEISHU_BOT: &str = "feishu_bot";
    pub const FEISHU_REPLY: &str = "feishu_reply";
    /// A reply that sends a CardKit card by id (`msg_type: interactive`).
    pub const FEISHU_CARD_REPLY: &str = "feishu_card_reply";
    /// CardKit: creating a card entity.
    pub const FEISHU_CARD_CREATE: &str = "feishu_card_create";
    /// CardKit: an element's text (the card's limits are under [`FEISHU_CARD`]).
    pub const FEISHU_CARD_CONTENT: &str = "feishu_card_content";
    /// CardKit: the whole card replaced (the final answer, streaming mode off).
    pub const FEISHU_CARD_UPDATE: &str = "feishu_card_update";
    /// CardKit's writes to one card, for limits.
    pub const FEISHU_CARD: &str = "feishu_card";
    pub const SLACK_WEBHOOK: &str = "slack_webhook";
    pub const SLACK_API: &str = "slack_api";
    pub const SLACK_RESPONSE_URL: &str = "slack_response_url";
    /// Slack's `chat.update` (a Tier 3 method: its limit is the workspace's, by bot token).
    pub const SLACK_UPDATE: &str = "slack_update";
    pub const ROCKETCHAT: &str = "rocketchat";
    pub const TELEGRAM: &str = "telegram";
    /// Telegram's `editMessageText` (its limits are the chat's, under [`TELEGRAM`]).
    pub const TELEGRAM_EDIT: &str = "telegram_edit";
}

/// One message a platform accepted.
#[derive(Debug, Clone)]
pub struct Message {
    /// Which API took it (see [`api`]).
    pub api: &'static str,
    /// Where it went: robot key, user, chat, channel or message replied to.
    pub target: String,
    pub text: String,
    /// Thread or topic (Slack `thread_ts`, Telegram `message_thread_id`).
    pub thread: Option<String>,
    /// The message replied to (Feishu `message_id`, Telegram `reply_to_message_id`).
    pub reply_to: Option<String>,
    pub body: Value,
    pub at: Instant,
}

/// An answer to give instead of the normal one.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

impl Scripted {
    /// HTTP 200 with `{"errcode": code}` (WeCom, DingTalk).
    pub fn errcode(code: i64) -> Self {
        Self {
            status: 200,
            body: json!({ "errcode": code, "errmsg": "scripted" }),
            retry_after: None,
        }
    }

    /// HTTP 200 with `{"code": code}` (Feishu).
    pub fn code(code: i64) -> Self {
        Self {
            status: 200,
            body: json!({ "code": code, "msg": "scripted" }),
            retry_after: None,
        }
    }

    /// A Bot API refusal: `{"ok": false, "error_code": status, "description": …}`.
    pub fn telegram(status: u16, description: &str) -> Self {
        Self {
            status,
            body: json!({ "ok": false, "error_code": status, "description": description }),
            retry_after: None,
        }
    }

    /// A bare status, with `Retry-After` when given.
    pub fn status(status: u16, retry_after: Option<u64>) -> Self {
        Self {
            status,
            body: json!({ "ok": false, "error": "scripted" }),
            retry_after,
        }
    }
}

#[derive(Debug)]
struct Token {
    kind: &'static str,
    expired: bool,
}

struct Inner {
    messages: Vec<Message>,
    requests: HashMap<&'static str, usize>,
    scripts: HashMap<&'static str, VecDeque<Scripted>>,
    /// Limits per API: (count, per) windows, all enforced.
    limits: HashMap<&'static str, Vec<(u32, Duration)>>,
    /// Request times per (API, target), for the limits.
    windows: HashMap<(&'static str, String), VecDeque<Instant>>,
    muted_until: HashMap<String, Instant>,
    mute_for: Duration,
    tokens: HashMap<String, Token>,
    fetches: HashMap<&'static str, usize>,
    sessions: HashMap<String, i64>,
    /// Requests refused for a rate limit, per API.
    limited: HashMap<&'static str, usize>,
    /// How long requests to an API are held before they are handled.
    holds: HashMap<&'static str, Duration>,
    /// Telegram messages by (chat, message id): their current text.
    telegram: HashMap<(String, i64), String>,
    /// Slack messages by (channel, ts): their current text.
    slack: slack::Messages,
    serial: u64,
}

impl Default for Inner {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Self {
            messages: Vec::new(),
            requests: HashMap::new(),
            scripts: HashMap::new(),
            limits: HashMap::from([
                (api::WECOM_ROBOT, vec![(20, minute)]),
                (api::DINGTALK_ROBOT, vec![(20, minute)]),
                (
                    api::FEISHU_BOT,
                    vec![(5, Duration::from_secs(1)), (100, minute)],
                ),
            ]),
            windows: HashMap::new(),
            muted_until: HashMap::new(),
            mute_for: Duration::from_secs(600),
            tokens: HashMap::new(),
            fetches: HashMap::new(),
            sessions: HashMap::new(),
            telegram: HashMap::new(),
            slack: HashMap::new(),
            limited: HashMap::new(),
            holds: HashMap::new(),
            serial: 0,
        }
    }
}

/// The running stand-in on 127.0.0.1.
#[derive(Clone)]
pub struct PlatformStandin {
    inner: Arc<Mutex<Inner>>,
    dingtalk_cards: Arc<Mutex<crate::dingtalk_card::DingtalkCards>>,
    feishu_cards: Arc<Mutex<crate::feishu_card::FeishuCards>>,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
}

impl std::fmt::Debug for PlatformStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformStandin")
            .field("addr", &self.addr)
            .finish()
    }
}

impl PlatformStandin {
    /// Starts the stand-in on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let s = Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            dingtalk_cards: Arc::default(),
            feishu_cards: Arc::default(),
            addr: listener.local_addr()?,
            stop: CancellationToken::new(),
        };
        let app = Router::new()
            .route("/cgi-bin/webhook/send", post(wecom_robot))
            .route("/cgi-bin/gettoken", get(wecom_gettoken))
            .route("/cgi-bin/message/send", post(wecom_message_send))
            .route("/robot/send", post(dingtalk_robot))
            .route("/robot/sendBySession", post(dingtalk_session))
            .route("/gettoken", get(dingtalk_gettoken))
            .route("/v1.0/robot/oToMessages/batchSend", post(dingtalk_api))
            .route("/v1.0/robot/groupMessages/send", post(dingtalk_api))
            .route("/open-apis/bot/v2/hook/{hook}", post(feishu_bot))
            .route(
                "/open-apis/auth/v3/tenant_access_token/internal",
                post(feishu_token),
            )
            .route(
                "/open-apis/im/v1/messages/{message_id}/reply",
                post(feishu_reply),
            )
            .route("/services/{*path}", post(slack_webhook))
            .route("/commands/{*path}", post(slack_response_url))
            .route("/api/chat.postMessage", post(slack::post_message))
            .route("/api/chat.update", post(slack::update))
            .route("/hooks/{id}/{token}", post(rocketchat))
            .route("/{bot}/sendMessage", post(telegram))
            .route("/{bot}/editMessageText", post(telegram_edit));
        let app = crate::dingtalk_card::routes(app);
        let app = crate::feishu_card::routes(app).with_state(s.clone());
        let stop = s.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(s)
    }

    /// `http://127.0.0.1:<port>`: every platform's base URL (`api_base`, `oapi_base`, hosts).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn wecom_robot_url(&self) -> String {
        format!(
            "{}/cgi-bin/webhook/send?key={}",
            self.base_url(),
            creds::WECOM_ROBOT_KEY
        )
    }

    pub fn dingtalk_robot_url(&self) -> String {
        format!(
            "{}/robot/send?access_token={}",
            self.base_url(),
            creds::DINGTALK_ROBOT_TOKEN
        )
    }

    pub fn feishu_hook_url(&self, signed: bool) -> String {
        let hook = if signed {
            creds::FEISHU_HOOK
        } else {
            creds::FEISHU_HOOK_UNSIGNED
        };
        format!("{}/open-apis/bot/v2/hook/{hook}", self.base_url())
    }

    pub fn slack_webhook_url(&self) -> String {
        format!("{}/services/{}", self.base_url(), creds::SLACK_HOOK_PATH)
    }

    /// Slack's API base (`…/api`).
    pub fn slack_api_base(&self) -> String {
        format!("{}/api", self.base_url())
    }

    /// A slash command's `response_url`.
    pub fn slack_response_url(&self, id: &str) -> String {
        format!("{}/commands/{id}", self.base_url())
    }

    pub fn rocketchat_url(&self) -> String {
        format!("{}/hooks/{}", self.base_url(), creds::ROCKETCHAT_HOOK)
    }

    /// A DingTalk session webhook valid for `valid_for` (negative: already expired), with its
    /// expiry in milliseconds since the epoch as the callback carries it.
    pub fn dingtalk_session(&self, valid_for: chrono::Duration) -> (String, i64) {
        let expires_at = (chrono::Utc::now() + valid_for).timestamp_millis();
        let mut g = self.lock();
        g.serial += 1;
        let id = format!("session-{}", g.serial);
        g.sessions.insert(id.clone(), expires_at);
        (
            format!("{}/robot/sendBySession?session={id}", self.base_url()),
            expires_at,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub(crate) fn feishu_cards_state(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::feishu_card::FeishuCards> {
        match self.feishu_cards.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub(crate) fn dingtalk_cards_state(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::dingtalk_card::DingtalkCards> {
        match self.dingtalk_cards.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Answers the next `n` requests to `api` with `answer` instead of handling them.
    pub fn fail_next(&self, api: &'static str, n: usize, answer: Scripted) {
        let mut g = self.lock();
        let q = g.scripts.entry(api).or_default();
        for _ in 0..n {
            q.push_back(answer.clone());
        }
    }

    /// Replaces an API's rate limits (`(count, per)` windows; empty: none).
    pub fn set_limits(&self, api: &'static str, limits: Vec<(u32, Duration)>) {
        self.lock().limits.insert(api, limits);
    }

    /// How long a DingTalk robot that sent too fast stays muted (10 minutes by default).
    pub fn set_mute(&self, mute_for: Duration) {
        self.lock().mute_for = mute_for;
    }

    /// Marks every token issued so far as expired (the platforms answer 42001 / 99991663 / 401).
    pub fn expire_tokens(&self) {
        for t in self.lock().tokens.values_mut() {
            t.expired = true;
        }
    }

    /// Tokens issued by `platform` (`wecom`, `dingtalk`, `feishu`).
    pub fn token_fetches(&self, platform: &str) -> usize {
        self.lock()
            .fetches
            .iter()
            .filter(|(k, _)| **k == platform)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Every accepted message, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// Accepted messages of one API, in arrival order.
    pub fn messages_to(&self, api: &str) -> Vec<Message> {
        self.lock()
            .messages
            .iter()
            .filter(|m| m.api == api)
            .cloned()
            .collect()
    }

    /// Texts accepted by one API, in arrival order.
    pub fn texts(&self, api: &str) -> Vec<String> {
        self.messages_to(api).into_iter().map(|m| m.text).collect()
    }

    /// A Telegram chat as its members see it: every message the bot sent there, by id, with
    /// its current text.
    pub fn telegram_chat(&self, chat: &str) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = self
            .lock()
            .telegram
            .iter()
            .filter(|((c, _), _)| c == chat)
            .map(|((_, id), text)| (*id, text.clone()))
            .collect();
        out.sort();
        out
    }

    /// Requests that reached an API (accepted, refused or scripted).
    pub fn requests(&self, api: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|(k, _)| **k == api)
            .map(|(_, n)| *n)
            .sum()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Counts the request; a scripted answer, if one is queued.
    pub(crate) fn arrive(&self, api: &'static str) -> Option<Response> {
        let mut g = self.lock();
        *g.requests.entry(api).or_insert(0) += 1;
        let s = g.scripts.get_mut(api)?.pop_front()?;
        let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(s.body)).into_response();
        if let Some(ra) = s.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, ra.into());
        }
        Some(resp)
    }

    /// Whether a send to `target` over `api` exceeds a limit (every send counts, as on WeCom).
    pub(crate) fn over_limit(&self, api: &'static str, target: &str) -> bool {
        let mut g = self.lock();
        let limits = g.limits.get(api).cloned().unwrap_or_default();
        let longest = limits.iter().map(|(_, per)| *per).max().unwrap_or_default();
        let now = Instant::now();
        let window = g.windows.entry((api, target.to_owned())).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) > longest)
        {
            window.pop_front();
        }
        let over = limits.iter().any(|(count, per)| {
            window
                .iter()
                .filter(|t| now.duration_since(**t) < *per)
                .count()
                >= *count as usize
        });
        window.push_back(now);
        if over {
            *g.limited.entry(api).or_insert(0) += 1;
        }
        over
    }

    /// Requests to `api` refused for a rate limit so far.
    pub fn limited(&self, api: &str) -> usize {
        self.lock()
            .limited
            .iter()
            .filter(|(k, _)| **k == api)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Holds every request to `api` for `hold` before handling it (a slow platform), so a test
    /// can act while a request is in flight.
    pub fn hold(&self, api: &'static str, hold: Duration) {
        self.lock().holds.insert(api, hold);
    }

    pub(crate) async fn held(&self, api: &'static str) {
        let hold = self.lock().holds.get(api).copied();
        if let Some(d) = hold {
            tokio::time::sleep(d).await;
        }
    }

    pub(crate) fn record(
        &self,
        api: &'static str,
        target: &str,
        text: &str,
        thread: Option<String>,
        reply_to: Option<String>,
        body: Value,
    ) {
        self.lock().messages.push(Message {
            api,
            target: target.to_owned(),
            text: text.to_owned(),
            thread,
            reply_to,
            body,
            at: Instant::now(),
        });
    }

    fn issue_token(&self, platform: &'static str) -> String {
        let mut g = self.lock();
        g.serial += 1;
        let token = format!("{platform}-token-{}", g.serial);
        g.tokens.insert(
            token.clone(),
            Token {
                kind: platform,
                expired: false,
            },
        );
        *g.fetches.entry(platform).or_insert(0) += 1;
        token
    }

    /// `Some(true)` valid, `Some(false)` expired, `None` unknown.
    pub(crate) fn token_state(&self, platform: &str, token: &str) -> Option<bool> {
        self.lock()
            .tokens
            .get(token)
            .filter(|t| t.kind == platform)
            .map(|t| !t.expired)
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

fn errcode(code: i64, msg: &str) -> Response {
    ok(json!({ "errcode": code, "errmsg": msg }))
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(msg);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

async fn wecom_robot(
    State(p): State<PlatformStandin>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::WECOM_ROBOT) {
        return r;
    }
    let key = q.get("key").map(String::as_str).unwrap_or_default();
    if key != creds::WECOM_ROBOT_KEY {
        return errcode(93000, "invalid webhook url");
    }
    if p.over_limit(api::WECOM_ROBOT, key) {
        return errcode(45009, "api freq out of limit");
    }
    let v = parse(&body);
    let msgtype = s(&v, "/msgtype");
    let (content, max) = match msgtype {
        "text" => (s(&v, "/text/content"), 2048),
        "markdown" => (s(&v, "/markdown/content"), 4096),
        "markdown_v2" => (s(&v, "/markdown_v2/content"), 4096),
        _ => return errcode(40008, "invalid message type"),
    };
    if content.is_empty() {
        return errcode(44004, "empty content");
    }
    if content.len() > max {
        return errcode(40058, "content exceed max length");
    }
    let content = content.to_owned();
    p.record(api::WECOM_ROBOT, key, &content, None, None, v);
    errcode(0, "ok")
}

async fn wecom_gettoken(
    State(p): State<PlatformStandin>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = p.arrive("wecom_gettoken") {
        return r;
    }
    if q.get("corpid").map(String::as_str) != Some(creds::WECOM_CORP_ID) {
        return errcode(40013, "invalid corpid");
    }
    if q.get("corpsecret").map(String::as_str) != Some(creds::WECOM_CORP_SECRET) {
        return errcode(40001, "invalid credential");
    }
    let token = p.issue_token("wecom");
    ok(json!({ "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200 }))
}

async fn wecom_message_send(
    State(p): State<PlatformStandin>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::WECOM_APP) {
        return r;
    }
    match p.token_state(
        "wecom",
        q.get("access_token")
            .map(String::as_str)
            .unwrap_or_default(),
    ) {
        None => return errcode(40014, "invalid access_token"),
        Some(false) => return errcode(42001, "access_token expired"),
        Some(true) => {}
    }
    let v = parse(&body);
    let content = s(&v, "/text/content").to_owned();
    let to = s(&v, "/touser").to_owned();
    if s(&v, "/msgtype") != "text" || to.is_empty() || v.get("agentid").is_none() {
        return errcode(40008, "invalid message");
    }
    if content.len() > 2048 {
        return errcode(40058, "content exceed max length");
    }
    p.record(api::WECOM_APP, &to, &content, None, None, v);
    ok(json!({ "errcode": 0, "errmsg": "ok", "invaliduser": "" }))
}

async fn dingtalk_robot(
    State(p): State<PlatformStandin>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::DINGTALK_ROBOT) {
        return r;
    }
    let token = q
        .get("access_token")
        .map(String::as_str)
        .unwrap_or_default();
    if token != creds::DINGTALK_ROBOT_TOKEN {
        return errcode(300001, "token is not exist");
    }
    let ts = q
        .get("timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or_default();
    let want = hmac_b64(
        creds::DINGTALK_ROBOT_SECRET.as_bytes(),
        format!("{ts}\n{}", creds::DINGTALK_ROBOT_SECRET).as_bytes(),
    );
    if q.get("sign").map(String::as_str) != Some(want.as_str()) {
        return errcode(310000, "sign not match");
    }
    if (chrono::Utc::now().timestamp_millis() - ts).abs() > 3_600_000 {
        return errcode(310000, "invalid timestamp");
    }
    {
        let g = p.lock();
        if g.muted_until
            .get(token)
            .is_some_and(|u| *u > Instant::now())
        {
            return errcode(130101, "send too fast, exceed 20 times per minute");
        }
    }
    if p.over_limit(api::DINGTALK_ROBOT, token) {
        let mut g = p.lock();
        let until = Instant::now() + g.mute_for;
        g.muted_until.insert(token.to_owned(), until);
        return errcode(130101, "send too fast, exceed 20 times per minute");
    }
    let v = parse(&body);
    let text = match s(&v, "/msgtype") {
        "text" => s(&v, "/text/content"),
        "markdown" => s(&v, "/markdown/text"),
        _ => return errcode(40035, "invalid msgtype"),
    }
    .to_owned();
    if text.is_empty() {
        return errcode(40035, "empty content");
    }
    p.record(api::DINGTALK_ROBOT, token, &text, None, None, v);
    errcode(0, "ok")
}

async fn dingtalk_session(
    State(p): State<PlatformStandin>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::DINGTALK_SESSION) {
        return r;
    }
    let id = q.get("session").cloned().unwrap_or_default();
    let expires_at = p.lock().sessions.get(&id).copied();
    match expires_at {
        Some(at) if at > chrono::Utc::now().timestamp_millis() => {}
        _ => return errcode(300001, "session is not exist or expired"),
    }
    let v = parse(&body);
    let text = s(&v, "/text/content").to_owned();
    if text.is_empty() {
        return errcode(40035, "empty content");
    }
    p.record(api::DINGTALK_SESSION, &id, &text, None, None, v);
    errcode(0, "ok")
}

async fn dingtalk_gettoken(
    State(p): State<PlatformStandin>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = p.arrive("dingtalk_gettoken") {
        return r;
    }
    if q.get("appkey").map(String::as_str) != Some(creds::DINGTALK_APP_KEY) {
        return errcode(40089, "invalid appkey");
    }
    if q.get("appsecret").map(String::as_str) != Some(creds::DINGTALK_APP_SECRET) {
        return errcode(40001, "invalid appsecret");
    }
    let token = p.issue_token("dingtalk");
    ok(json!({ "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200 }))
}

async fn dingtalk_api(
    State(p): State<PlatformStandin>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::DINGTALK_API) {
        return r;
    }
    let token = headers
        .get("x-acs-dingtalk-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if p.token_state("dingtalk", token) != Some(true) {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({ "code": "InvalidAuthentication", "message": "不合法的access_token", "requestid": "standin" }),
        );
    }
    let v = parse(&body);
    let param: Value = serde_json::from_str(s(&v, "/msgParam")).unwrap_or(Value::Null);
    let text = s(&param, "/content").to_owned();
    let target = v
        .pointer("/userIds/0")
        .or_else(|| v.get("openConversationId"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if s(&v, "/robotCode").is_empty()
        || target.is_empty()
        || s(&v, "/msgKey") != "sampleText"
        || text.is_empty()
    {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "code": "invalidParameter", "message": "bad request" }),
        );
    }
    p.record(api::DINGTALK_API, &target, &text, None, None, v);
    ok(
        json!({ "processQueryKey": "standin-query-key", "invalidStaffIdList": [], "flowControlledStaffIdList": [] }),
    )
}

async fn feishu_bot(
    State(p): State<PlatformStandin>,
    Path(hook): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::FEISHU_BOT) {
        return r;
    }
    let code = |code: i64, msg: &str| ok(json!({ "code": code, "msg": msg, "data": {} }));
    if hook != creds::FEISHU_HOOK && hook != creds::FEISHU_HOOK_UNSIGNED {
        return code(
            19001,
            "param invalid: incoming webhook access token invalid",
        );
    }
    if body.len() > 20 * 1024 {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "code": 9499, "msg": "Bad Request" }),
        );
    }
    let v = parse(&body);
    if hook == creds::FEISHU_HOOK {
        let ts = s(&v, "/timestamp");
        let want = hmac_b64(format!("{ts}\n{}", creds::FEISHU_SECRET).as_bytes(), b"");
        let fresh = ts
            .parse::<i64>()
            .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= 3600);
        if s(&v, "/sign") != want || !fresh {
            return code(
                19021,
                "sign match fail or timestamp is not within one hour from current time",
            );
        }
    }
    if p.over_limit(api::FEISHU_BOT, &hook) {
        return code(11232, "frequency limited psm");
    }
    let text = match s(&v, "/msg_type") {
        "text" => s(&v, "/content/text").to_owned(),
        "post" => v
            .pointer("/content/post")
            .and_then(Value::as_object)
            .and_then(|locales| locales.values().next())
            .and_then(|l| l.get("content"))
            .and_then(Value::as_array)
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| s(l, "/0/text"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
        "interactive" => s(&v, "/card/elements/0/content").to_owned(),
        _ => return code(19002, "params error, msg_type need"),
    };
    p.record(api::FEISHU_BOT, &hook, &text, None, None, v);
    code(0, "success")
}

async fn feishu_token(State(p): State<PlatformStandin>, body: Bytes) -> Response {
    if let Some(r) = p.arrive("feishu_token") {
        return r;
    }
    let v = parse(&body);
    if s(&v, "/app_id") != creds::FEISHU_APP_ID {
        return ok(json!({ "code": 10003, "msg": "invalid param" }));
    }
    if s(&v, "/app_secret") != creds::FEISHU_APP_SECRET {
        return ok(json!({ "code": 10014, "msg": "app secret invalid" }));
    }
    let token = p.issue_token("feishu");
    ok(json!({ "code": 0, "msg": "ok", "tenant_access_token": token, "expire": 7200 }))
}

async fn feishu_reply(
    State(p): State<PlatformStandin>,
    Path(message_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::FEISHU_REPLY) {
        return r;
    }
    if p.token_state("feishu", bearer(&headers)) != Some(true) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "code": 99991663, "msg": "Invalid access token for authorization. Please make a request with token attached." }),
        );
    }
    let v = parse(&body);
    if s(&v, "/msg_type") == "interactive" {
        return crate::feishu_card::reply_with_card(&p, &message_id, v);
    }
    let content: Value = serde_json::from_str(s(&v, "/content")).unwrap_or(Value::Null);
    let text = s(&content, "/text").to_owned();
    if s(&v, "/msg_type") != "text" || text.is_empty() {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "code": 230001, "msg": "invalid message content" }),
        );
    }
    p.record(
        api::FEISHU_REPLY,
        &message_id,
        &text,
        None,
        Some(message_id.clone()),
        v,
    );
    ok(
        json!({ "code": 0, "msg": "success", "data": { "message_id": format!("om_reply_{message_id}") } }),
    )
}

async fn slack_webhook(
    State(p): State<PlatformStandin>,
    Path(path): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::SLACK_WEBHOOK) {
        return r;
    }
    if path != creds::SLACK_HOOK_PATH {
        return (StatusCode::NOT_FOUND, "no_service").into_response();
    }
    if p.over_limit(api::SLACK_WEBHOOK, &path) {
        let mut r = (StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response();
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, 1.into());
        return r;
    }
    let v = parse(&body);
    let text = s(&v, "/text").to_owned();
    if text.is_empty() {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    }
    p.record(api::SLACK_WEBHOOK, &path, &text, None, None, v);
    (StatusCode::OK, "ok").into_response()
}

async fn slack_response_url(
    State(p): State<PlatformStandin>,
    Path(path): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::SLACK_RESPONSE_URL) {
        return r;
    }
    let v = parse(&body);
    let text = s(&v, "/text").to_owned();
    if text.is_empty() {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    }
    p.record(api::SLACK_RESPONSE_URL, &path, &text, None, None, v);
    (StatusCode::OK, "ok").into_response()
}

async fn rocketchat(
    State(p): State<PlatformStandin>,
    Path((id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::ROCKETCHAT) {
        return r;
    }
    if format!("{id}/{token}") != creds::ROCKETCHAT_HOOK {
        return reply(
            StatusCode::NOT_FOUND,
            json!({ "success": false, "error": "Invalid integration id or token provided." }),
        );
    }
    let v = parse(&body);
    let text = s(&v, "/text").to_owned();
    if text.chars().count() > 5000 {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "success": false, "error": "error-message-size-exceeded" }),
        );
    }
    p.record(api::ROCKETCHAT, &id, &text, None, None, v);
    ok(json!({ "success": true }))
}

async fn telegram(
    State(p): State<PlatformStandin>,
    Path(bot): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::TELEGRAM) {
        return r;
    }
    if bot.strip_prefix("bot") != Some(creds::TELEGRAM_BOT_TOKEN) {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({ "ok": false, "error_code": 401, "description": "Unauthorized" }),
        );
    }
    let bad = |d: &str| {
        reply(
            StatusCode::BAD_REQUEST,
            json!({ "ok": false, "error_code": 400, "description": d }),
        )
    };
    let v = parse(&body);
    let text = s(&v, "/text").to_owned();
    if text.is_empty() {
        return bad("Bad Request: message text is empty");
    }
    // Telegram counts UTF-16 code units.
    if text.encode_utf16().count() > 4096 {
        return bad("Bad Request: message is too long");
    }
    let chat = match v.get("chat_id") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(c)) => c.clone(),
        _ => return bad("Bad Request: chat not found"),
    };
    if let Some(r) = telegram_limited(&p, &chat) {
        return r;
    }
    let num = |k: &str| v.get(k).and_then(Value::as_i64).map(|n| n.to_string());
    let (thread, reply_to) = (num("message_thread_id"), num("reply_to_message_id"));
    let id = {
        let mut g = p.lock();
        g.serial += 1;
        let id = g.serial as i64;
        g.telegram.insert((chat.clone(), id), text.clone());
        id
    };
    p.record(api::TELEGRAM, &chat, &text, thread, reply_to, v);
    ok(json!({ "ok": true, "result": { "message_id": id, "chat": { "id": chat }, "text": text } }))
}

/// Telegram's answer beyond a chat's limit: 429 with `parameters.retry_after`.
fn telegram_limited(p: &PlatformStandin, chat: &str) -> Option<Response> {
    if !p.over_limit(api::TELEGRAM, chat) {
        return None;
    }
    Some(reply(
        StatusCode::TOO_MANY_REQUESTS,
        json!({ "ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": { "retry_after": 1 } }),
    ))
}

/// `editMessageText` as the Bot API answers it: the message must exist in the chat, the text
/// must change ("message is not modified" otherwise), edits count against the chat's limit.
async fn telegram_edit(
    State(p): State<PlatformStandin>,
    Path(bot): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::TELEGRAM_EDIT) {
        return r;
    }
    p.held(api::TELEGRAM_EDIT).await;
    if bot.strip_prefix("bot") != Some(creds::TELEGRAM_BOT_TOKEN) {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({ "ok": false, "error_code": 401, "description": "Unauthorized" }),
        );
    }
    let bad = |d: &str| {
        reply(
            StatusCode::BAD_REQUEST,
            json!({ "ok": false, "error_code": 400, "description": d }),
        )
    };
    let v = parse(&body);
    let text = s(&v, "/text").to_owned();
    if text.is_empty() {
        return bad("Bad Request: message text is empty");
    }
    if text.encode_utf16().count() > 4096 {
        return bad("Bad Request: MESSAGE_TOO_LONG");
    }
    let chat = match v.get("chat_id") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(c)) => c.clone(),
        _ => return bad("Bad Request: chat not found"),
    };
    let Some(id) = v.get("message_id").and_then(Value::as_i64) else {
        return bad("Bad Request: message identifier is not specified");
    };
    let current = p.lock().telegram.get(&(chat.clone(), id)).cloned();
    match current {
        None => return bad("Bad Request: message to edit not found"),
        Some(c) if c == text => {
            return bad("Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message")
        }
        Some(_) => {}
    }
    if let Some(r) = telegram_limited(&p, &chat) {
        return r;
    }
    p.lock().telegram.insert((chat.clone(), id), text.clone());
    p.record(
        api::TELEGRAM_EDIT,
        &chat,
        &text,
        None,
        Some(id.to_string()),
        v,
    );
    ok(json!({ "ok": true, "result": { "message_id": id, "chat": { "id": chat }, "text": text } }))
}
