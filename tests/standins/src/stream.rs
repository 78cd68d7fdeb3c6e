//! DingTalk's Stream-mode gateway, as the official Stream SDKs see it: `POST
//! /v1.0/gateway/connections/open` checks `clientId`/`clientSecret` (401 with DingTalk's
//! `{code, message}` otherwise) and answers `{endpoint, ticket}`; the WebSocket endpoint takes
//! each ticket once. On its connections it pushes robot messages as `CALLBACK` frames to one
//! connection picked at random, redelivers what was not acknowledged with `code` 200 (after
//! `redeliver_after`, or at once when the connection it went to is gone), sends `SYSTEM` pings
//! and checks their answers, and can send `SYSTEM` `disconnect` (closing the connection itself
//! after a grace period, as DingTalk does) or drop a connection in the middle of a frame. It
//! records what it saw for assertions.
use crate::ws;
use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub const BOT_TOPIC: &str = "/v1.0/im/bot/messages/get";

/// What the stand-in does to a connection.
#[derive(Debug)]
enum Cmd {
    Send(String),
    /// Write the head of this frame and a part of its payload, then drop the TCP connection.
    SendPartial(String),
    Close,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Cmd>,
    opened: Instant,
}

#[derive(Debug, Clone)]
struct Pending {
    data: String,
    /// The connection it went to last and when; None: due now.
    sent: Option<(u64, Instant)>,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct Seen {
    tickets: HashSet<String>,
    conns: HashMap<u64, Conn>,
    pending: HashMap<String, Pending>,
    /// messageId -> how many acks with code 200 came for it.
    acked: HashMap<String, u32>,
    /// Deliveries per messageId (first and redeliveries).
    deliveries: HashMap<String, u32>,
    /// When each message first went out, and when its first ack came.
    first_sent: HashMap<String, Instant>,
    first_ack: HashMap<String, Instant>,
    pings: HashMap<String, String>,
    pongs: usize,
    opens: usize,
    refused_opens: usize,
    refused_tickets: usize,
    /// The most connections open at once.
    max_open: usize,
    /// Connections the client closed itself (with a close frame).
    closed_by_client: usize,
    /// The next event goes out cut in the middle of its frame.
    cut_next: bool,
    /// The next ack of an event is lost on the way (so the event is redelivered).
    lose_next_ack: bool,
    open_bodies: Vec<Value>,
}

#[derive(Debug)]
struct Inner {
    client_id: String,
    client_secret: String,
    ws_addr: std::net::SocketAddr,
    redeliver_after: Duration,
    disconnect_grace: Duration,
    seen: Mutex<Seen>,
    next_conn: AtomicU64,
    next_msg: AtomicUsize,
}

/// A running DingTalk Stream gateway; stopped when dropped.
#[derive(Debug)]
pub struct DingtalkStreamStandin {
    inner: Arc<Inner>,
    http_addr: std::net::SocketAddr,
    stop: CancellationToken,
}

impl Inner {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn frame(kind: &str, topic: &str, id: &str, data: &str) -> String {
    json!({
        "specVersion": "1.0",
        "type": kind,
        "headers": {
            "appId": "standin-app",
            "connectionId": "standin-conn",
            "contentType": "application/json",
            "messageId": id,
            "time": chrono::Utc::now().timestamp_millis().to_string(),
            "topic": topic,
        },
        "data": data,
    })
    .to_string()
}

impl DingtalkStreamStandin {
    /// Starts the gateway for one app; unacknowledged events go out again after
    /// `redeliver_after`.
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        redeliver_after: Duration,
    ) -> anyhow::Result<Self> {
        let ws = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let inner = Arc::new(Inner {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            ws_addr: ws.local_addr()?,
            redeliver_after,
            disconnect_grace: Duration::from_secs(3),
            seen: Mutex::default(),
            next_conn: AtomicU64::new(1),
            next_msg: AtomicUsize::new(1),
        });
        let stop = CancellationToken::new();
        let me = Self {
            inner: inner.clone(),
            http_addr: http.local_addr()?,
            stop: stop.clone(),
        };
        let app = Router::new()
            .route("/v1.0/gateway/connections/open", post(open))
            .with_state(inner.clone());
        ws::serve((http, ws), app, inner, &stop, serve_conn, deliver_due);
        Ok(me)
    }

    /// The `api_base` of a stream source pointed at this stand-in.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Pushes a robot message (its JSON, as in HTTP mode); returns its `messageId`.
    pub fn push(&self, message: &str) -> String {
        let id = format!(
            "standin-msg-{}",
            self.inner.next_msg.fetch_add(1, Ordering::Relaxed)
        );
        self.inner.seen().pending.insert(
            id.clone(),
            Pending {
                data: message.to_owned(),
                sent: None,
                deliveries: 0,
            },
        );
        deliver_due(&self.inner);
        id
    }

    /// The next event is cut in the middle of its frame and its connection dropped.
    pub fn cut_next_event(&self) {
        self.inner.seen().cut_next = true;
    }

    /// The next ack of an event is lost on its way: the event stays unacknowledged and is
    /// redelivered.
    pub fn lose_next_ack(&self) {
        self.inner.seen().lose_next_ack = true;
    }

    /// Sends a `SYSTEM` ping to every connection.
    pub fn ping_all(&self) {
        let mut seen = self.inner.seen();
        let ids: Vec<u64> = seen.conns.keys().copied().collect();
        for conn in ids {
            let id = format!("ping-{}", uuid::Uuid::now_v7());
            let data = json!({"opaque": id}).to_string();
            seen.pings.insert(id.clone(), data.clone());
            if let Some(c) = seen.conns.get(&conn) {
                let _ = c.tx.send(Cmd::Send(frame("SYSTEM", "ping", &id, &data)));
            }
        }
    }

    /// Sends `SYSTEM` `disconnect` to the oldest connection, and closes it after the grace
    /// period unless the client did first.
    pub fn disconnect_oldest(&self) {
        let seen = self.inner.seen();
        let Some((_, conn)) = seen.conns.iter().min_by_key(|(_, c)| c.opened) else {
            return;
        };
        let id = format!("disconnect-{}", uuid::Uuid::now_v7());
        let _ = conn
            .tx
            .send(Cmd::Send(frame("SYSTEM", "disconnect", &id, "{}")));
        let tx = conn.tx.clone();
        let grace = self.inner.disconnect_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Cmd::Close);
        });
    }

    /// Drops every connection at once, without a close frame.
    pub fn drop_all(&self) {
        for c in self.inner.seen().conns.values() {
            let _ = c.tx.send(Cmd::SendPartial(String::new()));
        }
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
    pub fn refused_opens(&self) -> usize {
        self.inner.seen().refused_opens
    }
    pub fn refused_tickets(&self) -> usize {
        self.inner.seen().refused_tickets
    }
    pub fn closed_by_client(&self) -> usize {
        self.inner.seen().closed_by_client
    }
    pub fn pongs(&self) -> usize {
        self.inner.seen().pongs
    }
    /// Events not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.inner.seen().pending.len()
    }
    /// How many acks with code 200 came for this message.
    pub fn acks(&self, id: &str) -> u32 {
        self.inner.seen().acked.get(id).copied().unwrap_or(0)
    }
    /// How many times this message went out.
    pub fn deliveries(&self, id: &str) -> u32 {
        self.inner.seen().deliveries.get(id).copied().unwrap_or(0)
    }
    /// When this message first went out on a connection, and when its first ack came back.
    pub fn ack_timing(&self, id: &str) -> (Option<Instant>, Option<Instant>) {
        let seen = self.inner.seen();
        (
            seen.first_sent.get(id).copied(),
            seen.first_ack.get(id).copied(),
        )
    }

    /// The bodies of every open request, as received.
    pub fn open_bodies(&self) -> Vec<Value> {
        self.inner.seen().open_bodies.clone()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for DingtalkStreamStandin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn open(State(inner): State<Arc<Inner>>, Json(body): Json<Value>) -> Response {
    let mut seen = inner.seen();
    seen.open_bodies.push(body.clone());
    let id = body.get("clientId").and_then(Value::as_str);
    let secret = body.get("clientSecret").and_then(Value::as_str);
    if id != Some(inner.client_id.as_str()) || secret != Some(inner.client_secret.as_str()) {
        seen.refused_opens += 1;
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": "InvalidAuthentication", "message": "clientId or clientSecret is invalid"})),
        )
            .into_response();
    }
    let subscribed = body
        .get("subscriptions")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|s| s["type"] == "CALLBACK" && s["topic"] == BOT_TOPIC)
        });
    if !subscribed {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "InvalidParameter", "message": "subscriptions"})),
        )
            .into_response();
    }
    seen.opens += 1;
    let ticket = uuid::Uuid::now_v7().to_string();
    seen.tickets.insert(ticket.clone());
    Json(json!({"endpoint": format!("ws://{}/connect", inner.ws_addr), "ticket": ticket}))
        .into_response()
}

/// Picks a live connection at random for every event that is due.
fn deliver_due(inner: &Inner) {
    let mut seen = inner.seen();
    let now = Instant::now();
    let sent = seen.pending.iter().map(|(id, p)| (id.clone(), p.sent));
    let due = ws::due(sent, |c| seen.conns.contains_key(&c), inner.redeliver_after);
    for id in due {
        let Some(conn) = ws::pick(&seen.conns) else {
            // No connection: the event waits for one.
            if let Some(p) = seen.pending.get_mut(&id) {
                p.sent = None;
            }
            continue;
        };
        let cut = std::mem::take(&mut seen.cut_next);
        let Some(p) = seen.pending.get_mut(&id) else {
            continue;
        };
        p.sent = Some((conn, now));
        p.deliveries += 1;
        let text = frame("CALLBACK", BOT_TOPIC, &id, &p.data);
        seen.first_sent.entry(id.clone()).or_insert(now);
        *seen.deliveries.entry(id).or_default() += 1;
        if let Some(c) = seen.conns.get(&conn) {
            let _ = c.tx.send(if cut {
                Cmd::SendPartial(text)
            } else {
                Cmd::Send(text)
            });
        }
    }
}

/// One client's answer frame.
fn answered(inner: &Inner, text: &str) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let id = v["headers"]["messageId"].as_str().unwrap_or("").to_owned();
    let mut seen = inner.seen();
    if let Some(data) = seen.pings.remove(&id) {
        if v["code"] == 200 && v["data"].as_str() == Some(data.as_str()) {
            seen.pongs += 1;
        }
        return;
    }
    if v["code"] == 200 && v["headers"]["contentType"] == "application/json" {
        if seen.pending.contains_key(&id) && std::mem::take(&mut seen.lose_next_ack) {
            return;
        }
        if seen.pending.remove(&id).is_some() || seen.acked.contains_key(&id) {
            seen.first_ack
                .entry(id.clone())
                .or_insert_with(Instant::now);
            *seen.acked.entry(id).or_default() += 1;
        }
    }
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
    let conn_id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut seen = inner.seen();
        seen.conns.insert(
            conn_id,
            Conn {
                tx,
                opened: Instant::now(),
            },
        );
        seen.max_open = seen.max_open.max(seen.conns.len());
    }
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(text)) => {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::SendPartial(text)) => {
                    ws::cut(&mut ws, text.as_bytes(), false).await;
                    break;
                }
                Some(Cmd::Close) | None => {
                    let _ = ws.close(None).await;
                    break;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => answered(&inner, &t),
                Some(Ok(Message::Close(_))) => {
                    inner.seen().closed_by_client += 1;
                    let _ = ws.close(None).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = stop.cancelled() => break,
        }
    }
    inner.seen().conns.remove(&conn_id);
    deliver_due(&inner);
}

/// Starts the stand-in; for the binary (`standins dingtalk-stream`).
pub async fn serve_forever(client_id: &str, client_secret: &str) -> anyhow::Result<()> {
    let s = DingtalkStreamStandin::start(client_id, client_secret, Duration::from_secs(10))
        .await
        .context("starting the DingTalk stream stand-in")?;
    println!("{}", s.api_base());
    std::future::pending::<()>().await;
    Ok(())
}
