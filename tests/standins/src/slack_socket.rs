//! Slack's Socket Mode, as the official SDKs (`slack_sdk.socket_mode`) see it. `POST
//! /api/apps.connections.open` checks the `Authorization: Bearer` app-level token and answers
//! HTTP 200 with `{ok: true, url}` (a WebSocket URL whose ticket serves one connection) or
//! `{ok: false, error}`: `not_authed` without a token, `not_allowed_token_type` for a bot or
//! user token, `invalid_auth` for a wrong one. Every other `/api/…` call (`chat.postMessage`)
//! is passed on to the `upstream` Web API stand-in, so one `api_base` serves both, as
//! `https://slack.com/api` does. A connection starts with `hello` (`num_connections`); events
//! go out as envelopes (`envelope_id`, `type`, `payload`, `accepts_response_payload`,
//! `retry_attempt`, `retry_reason`) to one connection picked at random; an Events API envelope
//! not acknowledged with `{"envelope_id"}` is delivered again after `redeliver_after` (or at
//! once when its connection is gone) in a new envelope with `retry_attempt` one higher and
//! `retry_reason` `timeout`; a slash command is not. It sends WebSocket pings and counts the
//! pongs, sends `disconnect` with a reason (closing the connection itself after a grace period),
//! can drop a connection in the middle of a frame or lose an ack, and records what it saw.
use crate::ws;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
enum Cmd {
    Send(Message),
    /// Write the head of this frame and half its payload, then drop the TCP connection.
    SendPartial(String),
    Close,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Cmd>,
    opened: Instant,
}

#[derive(Debug)]
struct Pending {
    kind: &'static str,
    payload: Value,
    /// The connection it went to last, when, and in which envelope; None: due now.
    sent: Option<(u64, Instant, String)>,
    attempts: u64,
}

#[derive(Debug, Default)]
struct Seen {
    tickets: HashSet<String>,
    conns: HashMap<u64, Conn>,
    /// By the event's key (what `push` returned).
    pending: HashMap<String, Pending>,
    /// envelope_id -> the event's key.
    envelopes: HashMap<String, String>,
    acked: HashMap<String, u32>,
    /// The `retry_attempt` of every delivery, by key.
    deliveries: HashMap<String, Vec<u64>>,
    pings: HashSet<Vec<u8>>,
    pongs: usize,
    client_pings: usize,
    opens: usize,
    refusals: Vec<String>,
    refused_at: Vec<Instant>,
    refused_tickets: usize,
    max_open: usize,
    closed_by_client: usize,
    hellos: Vec<u64>,
    cut_next: bool,
    lose_next_ack: bool,
    open_auth: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    app_token: String,
    ws_addr: std::net::SocketAddr,
    upstream: Option<String>,
    redeliver_after: Duration,
    disconnect_grace: Duration,
    http: reqwest::Client,
    seen: Mutex<Seen>,
    next: AtomicU64,
}

impl Inner {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// A running Socket Mode endpoint for one app; stopped when dropped.
#[derive(Debug)]
pub struct SlackSocketStandin {
    inner: Arc<Inner>,
    http_addr: std::net::SocketAddr,
    stop: CancellationToken,
}

impl SlackSocketStandin {
    /// Starts it for one app-level token; other Web API calls go to `upstream` (a base URL
    /// ending in `/api`).
    pub async fn start(
        app_token: &str,
        upstream: Option<String>,
        redeliver_after: Duration,
    ) -> anyhow::Result<Self> {
        let ws = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let inner = Arc::new(Inner {
            app_token: app_token.into(),
            ws_addr: ws.local_addr()?,
            upstream,
            redeliver_after,
            disconnect_grace: Duration::from_secs(3),
            http: reqwest::Client::new(),
            seen: Mutex::default(),
            next: AtomicU64::new(1),
        });
        let stop = CancellationToken::new();
        let me = Self {
            inner: inner.clone(),
            http_addr: http.local_addr()?,
            stop: stop.clone(),
        };
        let app = Router::new()
            .route("/api/apps.connections.open", post(open))
            .fallback(pass_on)
            .with_state(inner.clone());
        ws::serve((http, ws), app, inner, &stop, serve_conn, deliver_due);
        Ok(me)
    }

    /// The `api_base` of a source pointed at this stand-in.
    pub fn api_base(&self) -> String {
        format!("http://{}/api", self.http_addr)
    }

    /// Pushes an Events API `event_callback` (its JSON); returns the key to ask about it.
    pub fn push_event(&self, callback: &str) -> String {
        self.push(
            "events_api",
            serde_json::from_str(callback).unwrap_or(Value::Null),
        )
    }

    /// Pushes a slash command (its fields as a JSON object).
    pub fn push_command(&self, fields: Value) -> String {
        self.push("slash_commands", fields)
    }

    fn push(&self, kind: &'static str, payload: Value) -> String {
        let key = format!("standin-event-{}", self.inner.next());
        self.inner.seen().pending.insert(
            key.clone(),
            Pending {
                kind,
                payload,
                sent: None,
                attempts: 0,
            },
        );
        deliver_due(&self.inner);
        key
    }

    /// The next envelope is cut in the middle of its frame and its connection dropped.
    pub fn cut_next_event(&self) {
        self.inner.seen().cut_next = true;
    }

    /// The next ack is lost on its way: the envelope is delivered again.
    pub fn lose_next_ack(&self) {
        self.inner.seen().lose_next_ack = true;
    }

    /// A WebSocket ping to every connection.
    pub fn ping_all(&self) {
        let mut seen = self.inner.seen();
        let payloads: Vec<(Vec<u8>, mpsc::UnboundedSender<Cmd>)> = seen
            .conns
            .values()
            .map(|c| (uuid::Uuid::now_v7().as_bytes().to_vec(), c.tx.clone()))
            .collect();
        for (payload, tx) in payloads {
            seen.pings.insert(payload.clone());
            let _ = tx.send(Cmd::Send(Message::Ping(payload.into())));
        }
    }

    /// `disconnect` with `reason` to the oldest connection, closed after the grace period
    /// unless the client closes it first.
    pub fn disconnect_oldest(&self, reason: &str) {
        let seen = self.inner.seen();
        let Some((_, conn)) = seen.conns.iter().min_by_key(|(_, c)| c.opened) else {
            return;
        };
        let frame = json!({"type": "disconnect", "reason": reason,
                           "debug_info": {"host": "applink-standin"}});
        let _ = conn
            .tx
            .send(Cmd::Send(Message::Text(frame.to_string().into())));
        let tx = conn.tx.clone();
        let grace = self.inner.disconnect_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Cmd::Close);
        });
    }

    pub fn connections(&self) -> usize {
        self.inner.seen().conns.len()
    }
    pub fn max_open(&self) -> usize {
        self.inner.seen().max_open
    }
    pub fn opens(&self) -> usize {
        self.inner.seen().opens
    }
    /// The `error` of every refused open.
    pub fn refusals(&self) -> Vec<String> {
        self.inner.seen().refusals.clone()
    }
    /// When each open was refused.
    pub fn refused_at(&self) -> Vec<Instant> {
        self.inner.seen().refused_at.clone()
    }
    pub fn refused_tickets(&self) -> usize {
        self.inner.seen().refused_tickets
    }
    pub fn closed_by_client(&self) -> usize {
        self.inner.seen().closed_by_client
    }
    /// The `num_connections` of every `hello` sent.
    pub fn hellos(&self) -> Vec<u64> {
        self.inner.seen().hellos.clone()
    }
    pub fn pongs(&self) -> usize {
        self.inner.seen().pongs
    }
    pub fn client_pings(&self) -> usize {
        self.inner.seen().client_pings
    }
    /// Envelopes delivered and not yet acknowledged (slash commands go once).
    pub fn unacked(&self) -> usize {
        self.inner.seen().pending.len()
    }
    pub fn acks(&self, key: &str) -> u32 {
        self.inner.seen().acked.get(key).copied().unwrap_or(0)
    }
    /// The `retry_attempt` of each delivery of this event.
    pub fn deliveries(&self, key: &str) -> Vec<u64> {
        self.inner
            .seen()
            .deliveries
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
    /// The `Authorization` header of every open request.
    pub fn open_auth(&self) -> Vec<String> {
        self.inner.seen().open_auth.clone()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for SlackSocketStandin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn open(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Json<Value> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut seen = inner.seen();
    seen.open_auth.push(auth.clone());
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    let error = if token.is_empty() {
        Some("not_authed")
    } else if token.starts_with("xoxb-") || token.starts_with("xoxp-") {
        Some("not_allowed_token_type")
    } else if token != inner.app_token {
        Some("invalid_auth")
    } else {
        None
    };
    if let Some(error) = error {
        seen.refusals.push(error.into());
        seen.refused_at.push(Instant::now());
        return Json(json!({"ok": false, "error": error}));
    }
    seen.opens += 1;
    let ticket = uuid::Uuid::now_v7().to_string();
    seen.tickets.insert(ticket.clone());
    Json(json!({
        "ok": true,
        "url": format!("ws://{}/link/?ticket={ticket}&app_id=A_STANDIN", inner.ws_addr),
    }))
}

/// The rest of the Web API: the upstream stand-in's.
async fn pass_on(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().strip_prefix("/api").unwrap_or(uri.path());
    ws::pass_on(
        &inner.http,
        inner.upstream.as_deref(),
        method,
        path,
        &headers,
        body,
    )
    .await
}

/// Sends every due envelope to a live connection picked at random.
fn deliver_due(inner: &Inner) {
    let mut seen = inner.seen();
    let now = Instant::now();
    // A slash command goes once: Slack does not retry it.
    let sent = seen
        .pending
        .iter()
        .filter(|(_, p)| p.kind != "slash_commands" || p.sent.is_none())
        .map(|(key, p)| (key.clone(), p.sent.as_ref().map(|(c, at, _)| (*c, *at))));
    let due = ws::due(sent, |c| seen.conns.contains_key(&c), inner.redeliver_after);
    for key in due {
        let Some(conn) = ws::pick(&seen.conns) else {
            if let Some(p) = seen.pending.get_mut(&key) {
                p.sent = None;
            }
            continue;
        };
        let cut = std::mem::take(&mut seen.cut_next);
        let envelope_id = uuid::Uuid::now_v7().to_string();
        let Some(p) = seen.pending.get_mut(&key) else {
            continue;
        };
        let attempt = p.attempts;
        p.attempts += 1;
        p.sent = Some((conn, now, envelope_id.clone()));
        let mut frame = json!({
            "envelope_id": envelope_id,
            "payload": p.payload,
            "type": p.kind,
            "accepts_response_payload": p.kind == "slash_commands",
        });
        if p.kind == "events_api" {
            frame["retry_attempt"] = attempt.into();
            frame["retry_reason"] = if attempt == 0 { "" } else { "timeout" }.into();
        }
        seen.envelopes.insert(envelope_id, key.clone());
        seen.deliveries.entry(key).or_default().push(attempt);
        let text = frame.to_string();
        if let Some(c) = seen.conns.get(&conn) {
            let _ = c.tx.send(if cut {
                Cmd::SendPartial(text)
            } else {
                Cmd::Send(Message::Text(text.into()))
            });
        }
    }
}

/// A client's text frame: an envelope's acknowledgement.
fn acknowledged(inner: &Inner, text: &str) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let Some(envelope_id) = v["envelope_id"].as_str() else {
        return;
    };
    let mut seen = inner.seen();
    let Some(key) = seen.envelopes.get(envelope_id).cloned() else {
        return;
    };
    let current = seen
        .pending
        .get(&key)
        .is_some_and(|p| matches!(&p.sent, Some((_, _, e)) if e == envelope_id));
    if current && std::mem::take(&mut seen.lose_next_ack) {
        return;
    }
    if current {
        seen.pending.remove(&key);
    }
    *seen.acked.entry(key).or_default() += 1;
}

async fn serve_conn(inner: Arc<Inner>, tcp: TcpStream, stop: CancellationToken) {
    let take = |ticket: &str| {
        let mut seen = inner.seen();
        let good = seen.tickets.remove(ticket);
        seen.refused_tickets += usize::from(!good);
        good
    };
    let Some(mut ws) = ws::accept_ticketed(tcp, take).await else {
        return;
    };
    let conn_id = inner.next();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hello = {
        let mut seen = inner.seen();
        let opened = Instant::now();
        seen.conns.insert(conn_id, Conn { tx, opened });
        seen.max_open = seen.max_open.max(seen.conns.len());
        let n = seen.conns.len() as u64;
        seen.hellos.push(n);
        json!({"type": "hello", "num_connections": n,
               "debug_info": {"host": "applink-standin", "build_number": 1, "approximate_connection_time": 18060},
               "connection_info": {"app_id": "A_STANDIN"}})
    };
    if ws
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_ok()
    {
        converse(&inner, &mut ws, &mut rx, &stop).await;
    }
    inner.seen().conns.remove(&conn_id);
    deliver_due(&inner);
}

async fn converse(
    inner: &Inner,
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    stop: &CancellationToken,
) {
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(m)) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Cmd::SendPartial(text)) => {
                    ws::cut(ws, text.as_bytes(), false).await;
                    return;
                }
                Some(Cmd::Close) | None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => acknowledged(inner, &t),
                Some(Ok(Message::Pong(p))) => {
                    let mut seen = inner.seen();
                    if seen.pings.remove(&p[..]) {
                        seen.pongs += 1;
                    }
                }
                Some(Ok(Message::Ping(_))) => inner.seen().client_pings += 1,
                Some(Ok(Message::Close(_))) => {
                    inner.seen().closed_by_client += 1;
                    let _ = ws.close(None).await;
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            _ = stop.cancelled() => return,
        }
    }
}
