//! Discord, both ways, on one local server behaving as Discord does. **Inbound**: it holds an
//! application's Ed25519 key pair and sends interactions to a hook URL signed as Discord signs
//! them (`X-Signature-Ed25519` over `X-Signature-Timestamp` + body), remembering how and how fast
//! each was answered (Discord gives up on an interaction not answered within 3 s). **Outbound**
//! (`/api/v10`): editing an interaction's original response and its follow-ups (only with a
//! token it issued, only for an interaction that was answered in time, only for 15 minutes),
//! executing a webhook, channel messages with the bot token, and `GET /gateway/bot` (with the bot
//! token: the URL of a Gateway stand-in, [`DiscordStandin::set_gateway`]). Every answer carries Discord's
//! rate-limit headers (`X-RateLimit-Limit/Remaining/Reset-After/Bucket`); beyond a bucket, or
//! when told to, it answers 429 with `retry_after` (and `X-RateLimit-Global` when global), and it
//! notes every request that came before a `retry_after` it gave had elapsed. Messages get ids, are
//! refused over 2 000 characters, and record whether they would have pinged @everyone.
// Refusals are the HTTP responses themselves, made at most once per request: boxing them buys
// nothing here.
#![allow(clippy::result_large_err)]
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The application and credentials the stand-in knows.
pub const APPLICATION_ID: &str = "900000000000000001";
pub const BOT_TOKEN: &str = "standin-discord-bot-token";
pub const WEBHOOK_ID: &str = "900000000000000777";
pub const WEBHOOK_TOKEN: &str = "standin-webhook-token";
/// How long an interaction token works.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long Discord waits for an interaction's first answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// The routes, as named in records, scripts and limits.
pub mod route {
    /// `PATCH /webhooks/{application_id}/{token}/messages/@original`
    pub const EDIT_ORIGINAL: &str = "edit_original";
    /// `POST /webhooks/{application_id}/{token}` with an interaction token
    pub const FOLLOWUP: &str = "followup";
    /// `POST /webhooks/{webhook_id}/{webhook_token}`
    pub const WEBHOOK: &str = "webhook";
    /// `POST /channels/{channel_id}/messages`
    pub const CHANNEL: &str = "channel";
}

/// A message Discord accepted.
#[derive(Debug, Clone)]
pub struct Message {
    pub route: &'static str,
    /// Discord's id for it.
    pub id: String,
    /// The channel it is in.
    pub channel_id: String,
    /// The interaction it answers (edits and follow-ups).
    pub interaction_id: Option<String>,
    pub content: String,
    /// The message it replies to (`message_reference.message_id`).
    pub reply_to: Option<String>,
    /// Whether it would have pinged @everyone / @here (the text says so and `allowed_mentions`
    /// did not forbid it).
    pub pinged_everyone: bool,
    pub body: Value,
    pub at: Instant,
}

/// An interaction the stand-in sent.
#[derive(Debug, Clone)]
pub struct Interaction {
    pub id: String,
    pub token: String,
    pub channel_id: String,
    pub sent_at: Instant,
    /// The hook's status and body, and how long it took.
    pub answer: Option<(u16, Value, Duration)>,
}

struct Inner {
    interactions: Vec<Interaction>,
    messages: Vec<Message>,
    /// Every request per route, with its time.
    requests: Vec<(&'static str, Instant)>,
    /// Requests that arrived before a `retry_after` given on their route had elapsed.
    early: Vec<(&'static str, Duration)>,
    /// When each route may be used again after a 429.
    blocked_until: HashMap<&'static str, Instant>,
    /// Buckets per (route, major parameter): requests in the current window, and its start.
    buckets: HashMap<(&'static str, String), (u32, Instant)>,
    limit: (u32, Duration),
    scripted: HashMap<&'static str, VecDeque<(Duration, bool)>>,
    serial: u64,
    /// What `GET /gateway/bot` answers as `url`.
    gateway_url: Option<String>,
    /// `GET /gateway/bot` requests answered, and refused for a wrong token.
    gateway_bot: (u32, u32),
}

/// The running stand-in on 127.0.0.1.
#[derive(Clone)]
pub struct DiscordStandin {
    inner: Arc<Mutex<Inner>>,
    key: Arc<SigningKey>,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl std::fmt::Debug for DiscordStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordStandin")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DiscordStandin {
    /// Starts the stand-in on a free port of 127.0.0.1 with a fresh application key pair.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let s = Self {
            inner: Arc::new(Mutex::new(Inner {
                interactions: Vec::new(),
                messages: Vec::new(),
                requests: Vec::new(),
                early: Vec::new(),
                blocked_until: HashMap::new(),
                buckets: HashMap::new(),
                limit: (5, Duration::from_secs(2)),
                scripted: HashMap::new(),
                serial: 0,
                gateway_url: None,
                gateway_bot: (0, 0),
            })),
            key: Arc::new(SigningKey::from_bytes(&rand::random::<[u8; 32]>())),
            addr: listener.local_addr()?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
            stop: CancellationToken::new(),
        };
        let app = Router::new()
            .route(
                "/api/v10/webhooks/{id}/{token}/messages/@original",
                patch(edit_original),
            )
            .route("/api/v10/webhooks/{id}/{token}", post(execute))
            .route(
                "/api/v10/channels/{channel}/messages",
                post(channel_message),
            )
            .route("/api/v10/gateway/bot", get(gateway_bot))
            .with_state(s.clone());
        let stop = s.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(s)
    }

    /// The API base (`…/api/v10`), the `api_base` of a source or target.
    pub fn api_base(&self) -> String {
        format!("http://{}/api/v10", self.addr)
    }

    /// The webhook URL a `discord_webhook` target is given.
    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}", self.api_base())
    }

    /// The application's public key, as the Developer Portal shows it.
    pub fn public_key_hex(&self) -> String {
        hex_encode(self.key.verifying_key().as_bytes())
    }

    /// A slash command `/ask question:<question>` in `channel` (of a server when `guild` is
    /// given, else a DM), with a fresh interaction id and token.
    pub fn slash_command(&self, guild: Option<&str>, channel: &str, question: &str) -> Value {
        let n = self.next_serial();
        let user = json!({ "id": "700000000000000042", "username": "ada", "global_name": "Ada" });
        let mut body = json!({
            "id": format!("{}", 800_000_000_000_000_000u64 + n),
            "application_id": APPLICATION_ID,
            "type": 2,
            "token": format!("aW50ZXJhY3Rpb246{n:08}{}", hex_encode(&rand::random::<[u8; 16]>())),
            "version": 1,
            "channel_id": channel,
            "channel": { "id": channel, "type": if guild.is_some() { 0 } else { 1 } },
            "locale": "en-GB",
            "data": { "id": "910000000000000001", "name": "ask", "type": 1,
                      "options": [{ "name": "question", "type": 3, "value": question }] },
        });
        match guild {
            Some(g) => {
                body["guild_id"] = json!(g);
                body["member"] = json!({ "user": user, "roles": [], "permissions": "0" });
            }
            None => body["user"] = user,
        }
        body
    }

    /// Signs `body` at the current time as Discord does: the headers to send with it.
    pub fn sign(&self, body: &[u8]) -> (String, String) {
        let ts = chrono::Utc::now().timestamp().to_string();
        let mut signed = ts.as_bytes().to_vec();
        signed.extend_from_slice(body);
        (ts, hex_encode(&self.key.sign(&signed).to_bytes()))
    }

    /// Sends an interaction to `hook_url`, signed; returns the status and body of the answer.
    /// With `tamper`, one byte of the body is changed after signing (as a forger would).
    pub async fn interact(
        &self,
        hook_url: &str,
        body: &Value,
        tamper: bool,
    ) -> anyhow::Result<(u16, Value)> {
        let raw = body.to_string().into_bytes();
        let (ts, sig) = self.sign(&raw);
        let mut sent = raw.clone();
        if tamper {
            let i = sent.len() / 2;
            sent[i] ^= 0x01;
        }
        if body["type"] == 2 {
            let interaction = Interaction {
                id: body["id"].as_str().unwrap_or_default().to_owned(),
                token: body["token"].as_str().unwrap_or_default().to_owned(),
                channel_id: body["channel_id"].as_str().unwrap_or_default().to_owned(),
                sent_at: Instant::now(),
                answer: None,
            };
            self.lock().interactions.push(interaction);
        }
        let started = Instant::now();
        let resp = self
            .http
            .post(hook_url)
            .header("content-type", "application/json")
            .header("x-signature-ed25519", sig)
            .header("x-signature-timestamp", ts)
            .body(sent)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let answer: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        let took = started.elapsed();
        if let Some(i) = self
            .lock()
            .interactions
            .iter_mut()
            .rev()
            .find(|i| Some(i.id.as_str()) == body["id"].as_str())
        {
            i.answer.get_or_insert((status, answer.clone(), took));
        }
        Ok((status, answer))
    }

    /// The Gateway `GET /gateway/bot` names (a `discord_gateway::GatewayStandin`'s URL).
    pub fn set_gateway(&self, url: &str) {
        self.lock().gateway_url = Some(url.to_owned());
    }

    /// `GET /gateway/bot` requests: answered, and refused for a wrong token.
    pub fn gateway_bot_requests(&self) -> (u32, u32) {
        self.lock().gateway_bot
    }

    /// Answers the next `n` requests on `route` with 429 and `retry_after`.
    pub fn rate_limit_next(
        &self,
        route: &'static str,
        n: usize,
        retry_after: Duration,
        global: bool,
    ) {
        let mut g = self.lock();
        let q = g.scripted.entry(route).or_default();
        for _ in 0..n {
            q.push_back((retry_after, global));
        }
    }

    /// Replaces the bucket size (requests per window, per route and major parameter).
    pub fn set_limit(&self, count: u32, per: Duration) {
        self.lock().limit = (count, per);
    }

    pub fn interactions(&self) -> Vec<Interaction> {
        self.lock().interactions.clone()
    }

    /// Accepted messages, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// Accepted messages of one route.
    pub fn messages_to(&self, route: &str) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|m| m.route == route)
            .collect()
    }

    /// When requests reached a route (accepted or not), in order.
    pub fn request_times(&self, route: &str) -> Vec<Instant> {
        self.lock()
            .requests
            .iter()
            .filter(|(r, _)| *r == route)
            .map(|(_, t)| *t)
            .collect()
    }

    /// Requests that came before a `retry_after` the stand-in gave had elapsed, and how early.
    pub fn early_requests(&self) -> Vec<(&'static str, Duration)> {
        self.lock().early.clone()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn next_serial(&self) -> u64 {
        let mut g = self.lock();
        g.serial += 1;
        g.serial
    }

    /// Counts a request on `route` for `major` and applies the limits: `Err` is the 429, `Ok`
    /// the rate-limit headers of the answer to come.
    fn arrive(&self, route: &'static str, major: &str) -> Result<HeaderMap, Response> {
        let now = Instant::now();
        let mut g = self.lock();
        g.requests.push((route, now));
        if let Some(until) = g.blocked_until.get(route).copied() {
            if until > now {
                g.early.push((route, until - now));
            }
        }
        let (count, per) = g.limit;
        let bucket_id = format!("standin-{route}");
        if let Some((wait, global)) = g.scripted.get_mut(route).and_then(VecDeque::pop_front) {
            g.blocked_until.insert(route, now + wait);
            return Err(too_many(wait, global, &bucket_id, count));
        }
        let window = g
            .buckets
            .entry((route, major.to_owned()))
            .or_insert((0, now));
        if now.duration_since(window.1) >= per {
            *window = (0, now);
        }
        let reset_after = per.saturating_sub(now.duration_since(window.1));
        if window.0 >= count {
            g.blocked_until.insert(route, now + reset_after);
            return Err(too_many(reset_after, false, &bucket_id, count));
        }
        window.0 += 1;
        let remaining = count - window.0;
        let mut headers = HeaderMap::new();
        let mut put = |k: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(k, v);
            }
        };
        put("x-ratelimit-limit", count.to_string());
        put("x-ratelimit-remaining", remaining.to_string());
        put(
            "x-ratelimit-reset-after",
            format!("{:.3}", reset_after.as_secs_f64()),
        );
        put("x-ratelimit-bucket", bucket_id);
        Ok(headers)
    }

    /// Checks and records a message; the message object Discord answers with.
    fn accept(
        &self,
        route: &'static str,
        channel_id: &str,
        interaction_id: Option<String>,
        body: &Value,
    ) -> Result<Value, Response> {
        let content = body["content"].as_str().unwrap_or_default().to_owned();
        if content.is_empty() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                50006,
                "Cannot send an empty message",
            ));
        }
        if content.chars().count() > 2000 {
            return Err(error(
                StatusCode::BAD_REQUEST,
                50035,
                "Invalid Form Body: content: Must be 2000 or fewer in length.",
            ));
        }
        let everyone_allowed = match body.pointer("/allowed_mentions/parse") {
            // Without allowed_mentions, Discord parses every mention in the text.
            None => body.get("allowed_mentions").is_none(),
            Some(parse) => parse
                .as_array()
                .is_some_and(|p| p.iter().any(|k| k == "everyone")),
        };
        let pinged_everyone =
            everyone_allowed && (content.contains("@everyone") || content.contains("@here"));
        let id = format!("{}", 1_100_000_000_000_000_000u64 + self.next_serial());
        let reply_to = body
            .pointer("/message_reference/message_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.lock().messages.push(Message {
            route,
            id: id.clone(),
            channel_id: channel_id.to_owned(),
            interaction_id,
            content: content.clone(),
            reply_to,
            pinged_everyone,
            body: body.clone(),
            at: Instant::now(),
        });
        Ok(json!({
            "id": id, "type": 0, "channel_id": channel_id, "content": content,
            "mention_everyone": pinged_everyone, "timestamp": chrono::Utc::now().to_rfc3339(),
        }))
    }

    /// The interaction a token belongs to, if it is one the stand-in issued, was answered in
    /// time with a response that can be edited or followed, and has not expired.
    fn interaction(&self, application_id: &str, token: &str) -> Result<Interaction, Response> {
        let found = self
            .lock()
            .interactions
            .iter()
            .find(|i| i.token == token)
            .cloned();
        let unknown = || error(StatusCode::NOT_FOUND, 10015, "Unknown Webhook");
        let Some(i) = found.filter(|_| application_id == APPLICATION_ID) else {
            return Err(unknown());
        };
        if i.sent_at.elapsed() > TOKEN_LIFETIME {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                50027,
                "Invalid Webhook Token",
            ));
        }
        match &i.answer {
            Some((200, answer, took)) if *took <= ANSWER_WITHIN && answer["type"] == 5 => Ok(i),
            _ => Err(error(StatusCode::NOT_FOUND, 10062, "Unknown interaction")),
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

fn too_many(wait: Duration, global: bool, bucket: &str, limit: u32) -> Response {
    let secs = wait.as_secs_f64();
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({
            "message": "You are being rate limited.", "retry_after": secs, "global": global,
        })),
    )
        .into_response();
    let h = resp.headers_mut();
    let mut put = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put("retry-after", (secs.ceil() as u64).to_string());
    put(
        "x-ratelimit-scope",
        if global { "global" } else { "user" }.to_owned(),
    );
    if global {
        put("x-ratelimit-global", "true".to_owned());
    } else {
        put("x-ratelimit-limit", limit.to_string());
        put("x-ratelimit-remaining", "0".to_owned());
        put("x-ratelimit-reset-after", format!("{secs:.3}"));
        put("x-ratelimit-bucket", bucket.to_owned());
    }
    resp
}

fn with_headers(mut resp: Response, headers: HeaderMap) -> Response {
    resp.headers_mut().extend(headers);
    resp
}

fn parse(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            50109,
            "The request body contains invalid JSON.",
        )
    })
}

async fn edit_original(
    State(d): State<DiscordStandin>,
    Path((application_id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let headers = match d.arrive(route::EDIT_ORIGINAL, &token) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let result = d
        .interaction(&application_id, &token)
        .and_then(|i| Ok((i, parse(&body)?)))
        .and_then(|(i, v)| d.accept(route::EDIT_ORIGINAL, &i.channel_id, Some(i.id), &v));
    match result {
        Ok(message) => with_headers(axum::Json(message).into_response(), headers),
        Err(r) => r,
    }
}

async fn execute(
    State(d): State<DiscordStandin>,
    Path((id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let is_webhook = id == WEBHOOK_ID;
    let route = if is_webhook {
        route::WEBHOOK
    } else {
        route::FOLLOWUP
    };
    let headers = match d.arrive(route, &token) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let v = match parse(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let result = if is_webhook {
        if token != WEBHOOK_TOKEN {
            return error(StatusCode::UNAUTHORIZED, 50027, "Invalid Webhook Token");
        }
        d.accept(route, "webhook-channel", None, &v)
    } else {
        d.interaction(&id, &token)
            .and_then(|i| d.accept(route, &i.channel_id, Some(i.id), &v))
    };
    match result {
        Ok(message) => with_headers(axum::Json(message).into_response(), headers),
        Err(r) => r,
    }
}

async fn channel_message(
    State(d): State<DiscordStandin>,
    Path(channel): Path<String>,
    headers_in: HeaderMap,
    body: Bytes,
) -> Response {
    let headers = match d.arrive(route::CHANNEL, &channel) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let auth = headers_in
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bot {BOT_TOKEN}") {
        return error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized");
    }
    match parse(&body).and_then(|v| d.accept(route::CHANNEL, &channel, None, &v)) {
        Ok(message) => with_headers(axum::Json(message).into_response(), headers),
        Err(r) => r,
    }
}

async fn gateway_bot(State(d): State<DiscordStandin>, headers_in: HeaderMap) -> Response {
    let auth = headers_in
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut g = d.lock();
    if auth != format!("Bot {BOT_TOKEN}") {
        g.gateway_bot.1 += 1;
        return error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized");
    }
    g.gateway_bot.0 += 1;
    let Some(url) = g.gateway_url.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            0,
            "no Gateway stand-in attached",
        );
    };
    axum::Json(json!({
        "url": url, "shards": 1,
        "session_start_limit": { "total": 1000, "remaining": 1000 - g.gateway_bot.0.min(1000),
                                 "reset_after": 14_400_000, "max_concurrency": 1 },
    }))
    .into_response()
}
