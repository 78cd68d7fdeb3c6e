//! Feishu/Lark's long-connection endpoint, as the official SDKs (`oapi-sdk-go`, package `ws`)
//! see it. `POST /callback/ws/endpoint` checks `{AppID, AppSecret}` (a wrong pair: code 10014,
//! `app secret invalid`) and answers `{code: 0, data: {URL, ClientConfig}}`: a WebSocket URL
//! with `device_id`, `service_id` and a ticket that serves one connection, and the client
//! settings (`PingInterval` as started). Every other path (the open API the replies use) is
//! passed on to the `upstream` stand-in, so one `api_base` serves both. Frames are binary
//! `pbbp2.Frame`s: it answers each `ping` control frame of the right service with a `pong`
//! (carrying a new `ClientConfig` when told to), pushes events as `event` data frames (in
//! `sum` fragments when told to) to one connection picked at random, and delivers again what
//! was not acknowledged with `{"code":200}` after `redeliver_after` (or at once when its
//! connection is gone). It can close a connection (Feishu has no disconnect message), drop one
//! in the middle of a frame or lose an ack, and records what it saw.
use crate::ws;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use connector::protocol::feishu::frame::{PbFrame, METHOD_CONTROL, METHOD_DATA};
use connector::protocol::feishu::{client_config_json, ENDPOINT_PATH};
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

/// The `service_id` in every URL.
pub const SERVICE_ID: i32 = 4242;

#[derive(Debug)]
enum Cmd {
    Send(Vec<u8>),
    Cut(Vec<u8>),
    Close,
}

#[derive(Debug)]
struct Pending {
    event: Vec<u8>,
    sent: Option<(u64, Instant)>,
}

#[derive(Debug, Default)]
struct Seen {
    tickets: HashSet<String>,
    conns: HashMap<u64, mpsc::UnboundedSender<Cmd>>,
    pending: HashMap<String, Pending>,
    acked: HashMap<String, u32>,
    deliveries: HashMap<String, u32>,
    /// When each ping came, of which service, and whether its pong carried a `ClientConfig`.
    pings: Vec<(Instant, i32, bool)>,
    pong_config: Option<u64>,
    opens: usize,
    refusals: Vec<(i64, Instant)>,
    refused_tickets: usize,
    acks_biz_rt: Vec<String>,
    split_next: usize,
    cut_next: bool,
    lose_next_ack: bool,
}

#[derive(Debug)]
struct Inner {
    app_id: String,
    app_secret: String,
    ping_secs: u64,
    ws_addr: std::net::SocketAddr,
    upstream: Option<String>,
    redeliver_after: Duration,
    http: reqwest::Client,
    seen: Mutex<Seen>,
    next: AtomicU64,
}

impl Inner {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running long-connection endpoint for one app; stopped when dropped.
#[derive(Debug)]
pub struct FeishuWsStandin {
    inner: Arc<Inner>,
    http_addr: std::net::SocketAddr,
    stop: CancellationToken,
}

impl FeishuWsStandin {
    /// Starts it for one app, telling clients to ping every `ping_secs`; other paths go to
    /// `upstream` (a base URL).
    pub async fn start(
        app: (&str, &str),
        ping_secs: u64,
        upstream: Option<String>,
        redeliver_after: Duration,
    ) -> anyhow::Result<Self> {
        let ws = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let inner = Arc::new(Inner {
            app_id: app.0.into(),
            app_secret: app.1.into(),
            ping_secs,
            ws_addr: ws.local_addr()?,
            upstream,
            redeliver_after,
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
            .route(ENDPOINT_PATH, post(endpoint))
            .fallback(pass_on)
            .with_state(inner.clone());
        ws::serve((http, ws), app, inner, &stop, serve_conn, deliver_due);
        Ok(me)
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Pushes an event (its JSON, schema 2.0); returns its `message_id`.
    pub fn push(&self, event: &str) -> String {
        let id = format!(
            "standin-msg-{}",
            self.inner.next.fetch_add(1, Ordering::Relaxed)
        );
        let pending = Pending {
            event: event.as_bytes().to_vec(),
            sent: None,
        };
        self.inner.seen().pending.insert(id.clone(), pending);
        deliver_due(&self.inner);
        id
    }

    /// The next event goes out in `n` fragments.
    pub fn split_next(&self, n: usize) {
        self.inner.seen().split_next = n;
    }
    pub fn cut_next_event(&self) {
        self.inner.seen().cut_next = true;
    }
    pub fn lose_next_ack(&self) {
        self.inner.seen().lose_next_ack = true;
    }
    /// The next pongs carry a `ClientConfig` with this `PingInterval`.
    pub fn pong_ping_interval(&self, secs: u64) {
        self.inner.seen().pong_config = Some(secs);
    }
    /// Closes every connection, as the server does when it moves a client.
    pub fn close_all(&self) {
        for tx in self.inner.seen().conns.values() {
            let _ = tx.send(Cmd::Close);
        }
    }

    pub fn connections(&self) -> usize {
        self.inner.seen().conns.len()
    }
    pub fn opens(&self) -> usize {
        self.inner.seen().opens
    }
    /// The code and time of every refused endpoint request.
    pub fn refusals(&self) -> Vec<(i64, Instant)> {
        self.inner.seen().refusals.clone()
    }
    pub fn refused_tickets(&self) -> usize {
        self.inner.seen().refused_tickets
    }
    /// When each ping came, for which service, and whether its pong carried a `ClientConfig`.
    pub fn pings(&self) -> Vec<(Instant, i32, bool)> {
        self.inner.seen().pings.clone()
    }
    pub fn unacked(&self) -> usize {
        self.inner.seen().pending.len()
    }
    pub fn acks(&self, id: &str) -> u32 {
        self.inner.seen().acked.get(id).copied().unwrap_or(0)
    }
    pub fn deliveries(&self, id: &str) -> u32 {
        self.inner.seen().deliveries.get(id).copied().unwrap_or(0)
    }
    /// The `biz_rt` header of every ack.
    pub fn biz_rts(&self) -> Vec<String> {
        self.inner.seen().acks_biz_rt.clone()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for FeishuWsStandin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn endpoint(State(inner): State<Arc<Inner>>, Json(body): Json<Value>) -> Json<Value> {
    let mut seen = inner.seen();
    if body["AppID"] != inner.app_id.as_str() || body["AppSecret"] != inner.app_secret.as_str() {
        seen.refusals.push((10014, Instant::now()));
        return Json(json!({"code": 10014, "msg": "app secret invalid"}));
    }
    seen.opens += 1;
    let ticket = uuid::Uuid::now_v7().to_string();
    seen.tickets.insert(ticket.clone());
    let url = format!(
        "ws://{}/ws/v2?device_id=standin-device&service_id={SERVICE_ID}&ticket={ticket}",
        inner.ws_addr
    );
    Json(json!({"code": 0, "msg": "ok", "data": {
        "URL": url, "ClientConfig": client_config_json(inner.ping_secs)}}))
}

async fn pass_on(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let upstream = inner.upstream.as_deref();
    ws::pass_on(&inner.http, upstream, method, uri.path(), &headers, body).await
}

/// The data frames of one delivery: one, or `split` fragments of the event.
fn data_frames(id: &str, event: &[u8], split: usize) -> Vec<PbFrame> {
    let sum = split.max(1);
    let size = event.len().div_ceil(sum).max(1);
    let parts: Vec<&[u8]> = event.chunks(size).collect();
    let sum = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(seq, part)| {
            let mut pb = PbFrame {
                seq_id: 1,
                log_id: 2,
                service: SERVICE_ID,
                method: METHOD_DATA,
                payload: Some(part.to_vec()),
                ..PbFrame::default()
            };
            for (k, v) in [
                ("type", "event"),
                ("message_id", id),
                ("trace_id", "standin"),
            ] {
                pb.add_header(k, v);
            }
            pb.add_header("sum", sum.to_string());
            pb.add_header("seq", seq.to_string());
            pb
        })
        .collect()
}

fn deliver_due(inner: &Inner) {
    let mut seen = inner.seen();
    let now = Instant::now();
    let sent = seen.pending.iter().map(|(id, p)| (id.clone(), p.sent));
    let due = ws::due(sent, |c| seen.conns.contains_key(&c), inner.redeliver_after);
    for id in due {
        let Some(conn) = ws::pick(&seen.conns) else {
            if let Some(p) = seen.pending.get_mut(&id) {
                p.sent = None;
            }
            continue;
        };
        let (split, cut) = (
            std::mem::take(&mut seen.split_next),
            std::mem::take(&mut seen.cut_next),
        );
        let Some(p) = seen.pending.get_mut(&id) else {
            continue;
        };
        p.sent = Some((conn, now));
        let frames = data_frames(&id, &p.event, split);
        *seen.deliveries.entry(id).or_default() += 1;
        if let Some(tx) = seen.conns.get(&conn) {
            for pb in frames {
                let bytes = pb.to_bytes();
                let _ = tx.send(if cut {
                    Cmd::Cut(bytes)
                } else {
                    Cmd::Send(bytes)
                });
            }
        }
    }
}

/// A client's binary frame: a ping, or the answer to a data frame.
fn received(inner: &Inner, bytes: &[u8]) -> Option<Vec<u8>> {
    let pb = PbFrame::from_bytes(bytes).ok()?;
    let mut seen = inner.seen();
    if pb.method == METHOD_CONTROL && pb.header("type") == Some("ping") {
        let configured = seen.pong_config.is_some();
        seen.pings.push((Instant::now(), pb.service, configured));
        let mut pong = PbFrame::control(SERVICE_ID, "pong");
        if let Some(secs) = seen.pong_config {
            pong.payload = Some(client_config_json(secs).to_string().into_bytes());
        }
        return Some(pong.to_bytes());
    }
    let ok = serde_json::from_slice::<Value>(pb.payload.as_deref().unwrap_or_default())
        .is_ok_and(|v| v["code"] == 200);
    let id = pb.header("message_id").unwrap_or_default().to_owned();
    if pb.method != METHOD_DATA || !ok {
        return None;
    }
    if seen.pending.contains_key(&id) && std::mem::take(&mut seen.lose_next_ack) {
        return None;
    }
    if seen.pending.remove(&id).is_some() || seen.acked.contains_key(&id) {
        *seen.acked.entry(id).or_default() += 1;
        let biz_rt = pb.header("biz_rt").unwrap_or_default().to_owned();
        seen.acks_biz_rt.push(biz_rt);
    }
    None
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
    let conn_id = inner.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    inner.seen().conns.insert(conn_id, tx);
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(bytes)) => {
                    if ws.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Cut(bytes)) => {
                    ws::cut(&mut ws, &bytes, true).await;
                    break;
                }
                Some(Cmd::Close) | None => {
                    let _ = ws.close(None).await;
                    break;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(pong) = received(&inner, &b) {
                        if ws.send(Message::Binary(pong.into())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = stop.cancelled() => break,
        }
    }
    inner.seen().conns.remove(&conn_id);
    deliver_due(&inner);
}
