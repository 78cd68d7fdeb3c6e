//! Discord's Gateway, as its documentation describes it, for one bot (`discord::BOT_TOKEN`,
//! user `BOT_USER_ID`). A connection (`?v=10&encoding=json`) gets **op 10 Hello** with the
//! heartbeat interval; **op 2 Identify** with the right token starts a session (a wrong token is
//! closed with 4004, the Message Content intent when it is not allowed with 4014, a second
//! Identify with 4005) and gets **READY** (`s` = 1) with the session id and a
//! `resume_gateway_url` on the same server (path `/resume`); **op 1** heartbeats are answered
//! **op 11** (unless told to stop, for the connections open at the time); **op 6 Resume** with a
//! live session's id replays the session's dispatches after the given `seq`, in order, then
//! **RESUMED** (an unknown or invalidated session gets op 9 `false`). Every message posted goes
//! to every live session as **MESSAGE_CREATE** with the session's next `s`; a session without a
//! connection keeps it for its resume, as Discord does for a while. A client's close with 1000
//! or 1001 ends its session; any other close, or a dropped connection, keeps it resumable. On
//! demand it sends op 7 Reconnect, op 9 Invalid Session (`false` also ends the sessions), an op
//! 1 heartbeat request, or drops every connection without a close frame. It records what it saw
//! for assertions.
use crate::discord::{APPLICATION_ID, BOT_TOKEN};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The bot's own user id (READY's `user.id`): a mention of the bot is `<@BOT_USER_ID>`.
pub const BOT_USER_ID: &str = "900000000000000042";
/// `GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT`.
pub const MESSAGE_CONTENT: u64 = 1 << 15;

/// Who writes a posted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// A person.
    User,
    /// Another bot.
    Bot,
    /// The bot itself (its own answers come back over the Gateway too).
    Me,
}

/// The content of a message that mentions the bot.
pub fn mention(text: &str) -> String {
    format!("<@{BOT_USER_ID}> {text}")
}

#[derive(Debug)]
enum Cmd {
    Send(String),
    Close(u16, &'static str),
    /// Drop the TCP connection without a close frame.
    Drop,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Cmd>,
    session: Option<String>,
    /// No heartbeat acks on this connection.
    deaf: bool,
}

#[derive(Debug)]
struct Session {
    seq: u64,
    /// Every dispatch of the session, by `s`.
    log: Vec<(u64, String)>,
    conn: Option<u64>,
}

/// What a test can read back.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// The connection (in order of opening, from 1).
    pub conn: u64,
    pub what: Value,
}

#[derive(Debug, Default)]
struct State {
    conns: HashMap<u64, Conn>,
    sessions: HashMap<String, Session>,
    refuse_message_content: bool,
    /// Path and query of every connection, in order.
    connects: Vec<(String, String)>,
    hellos: Vec<Seen>,
    identifies: Vec<Seen>,
    resumes: Vec<Seen>,
    heartbeats: Vec<Seen>,
    /// Ops the stand-in sent on demand (7, 9, 1), when.
    sent_ops: Vec<Seen>,
    /// Close codes the client closed with (None: no close frame).
    client_closes: Vec<Option<u16>>,
    /// Close codes the stand-in closed with.
    server_closes: Vec<u16>,
    /// How many times each message went out (first sending and replays).
    deliveries: HashMap<String, u32>,
    max_open: usize,
}

#[derive(Debug)]
struct Inner {
    addr: std::net::SocketAddr,
    heartbeat_interval: Duration,
    state: Mutex<State>,
    next_conn: AtomicU64,
    next_message: AtomicU64,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running Gateway on 127.0.0.1; stopped when dropped.
#[derive(Debug)]
pub struct GatewayStandin {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

fn dispatch(t: &str, s: u64, d: Value) -> String {
    json!({ "op": 0, "t": t, "s": s, "d": d }).to_string()
}

impl GatewayStandin {
    /// Starts a Gateway whose Hello asks for a heartbeat every `heartbeat_interval`.
    pub async fn start(heartbeat_interval: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let inner = Arc::new(Inner {
            addr: listener.local_addr()?,
            heartbeat_interval,
            state: Mutex::default(),
            next_conn: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
        });
        let stop = CancellationToken::new();
        let (i, s) = (inner.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((tcp, _)) = accepted {
                            tokio::spawn(serve_conn(i.clone(), tcp, s.clone()));
                        }
                    }
                    _ = s.cancelled() => return,
                }
            }
        });
        Ok(Self { inner, stop })
    }

    /// The Gateway URL `GET /gateway/bot` answers (as Discord's, without a path).
    pub fn url(&self) -> String {
        format!("ws://{}", self.inner.addr)
    }

    /// The `resume_gateway_url` READY gives.
    pub fn resume_url(&self) -> String {
        format!("ws://{}/resume", self.inner.addr)
    }

    /// Posts a message in `channel` (of `guild`; none: a DM) by `author`; it mentions the bot
    /// when `mentions_bot` (write the mention in the content with [`mention`]). Returns its id.
    pub fn post(
        &self,
        guild: Option<&str>,
        channel: &str,
        author: Author,
        content: &str,
        mentions_bot: bool,
    ) -> String {
        let id = format!(
            "{}",
            1_200_000_000_000_000_000u64 + self.inner.next_message.fetch_add(1, Ordering::Relaxed)
        );
        let (author_id, bot) = match author {
            Author::User => ("700000000000000042", false),
            Author::Bot => ("700000000000000099", true),
            Author::Me => (BOT_USER_ID, true),
        };
        let me = json!({ "id": BOT_USER_ID, "username": "switchboard", "bot": true });
        let mut m = json!({
            "id": id, "channel_id": channel, "content": content, "type": 0,
            "author": { "id": author_id, "username": "ada", "global_name": "Ada", "bot": bot },
            "timestamp": chrono::Utc::now().to_rfc3339(), "edited_timestamp": null, "tts": false,
            "mention_everyone": false, "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": false, "mentions": if mentions_bot { json!([me]) } else { json!([]) },
        });
        if let Some(g) = guild {
            m["guild_id"] = json!(g);
            m["member"] = json!({ "roles": [], "nick": null });
        }
        let mut st = self.inner.state();
        let State {
            sessions,
            conns,
            deliveries,
            ..
        } = &mut *st;
        for session in sessions.values_mut() {
            session.seq += 1;
            let text = dispatch("MESSAGE_CREATE", session.seq, m.clone());
            session.log.push((session.seq, text.clone()));
            if let Some(conn) = session.conn.and_then(|c| conns.get(&c)) {
                let _ = conn.tx.send(Cmd::Send(text));
                *deliveries.entry(id.clone()).or_default() += 1;
            }
        }
        id
    }

    fn to_all(&self, op: u64, d: Value) {
        let mut st = self.inner.state();
        let text = json!({ "op": op, "d": d }).to_string();
        let ids: Vec<u64> = st.conns.keys().copied().collect();
        for conn in ids {
            if let Some(c) = st.conns.get(&conn) {
                let _ = c.tx.send(Cmd::Send(text.clone()));
            }
            st.sent_ops.push(Seen {
                at: Instant::now(),
                conn,
                what: json!({ "op": op, "d": d }),
            });
        }
    }

    /// Sends op 7 Reconnect on every connection.
    pub fn reconnect(&self) {
        self.to_all(7, Value::Null);
    }

    /// Sends op 9 Invalid Session on every connection; not `resumable`, it also ends their
    /// sessions.
    pub fn invalid_session(&self, resumable: bool) {
        if !resumable {
            let mut st = self.inner.state();
            let ended: Vec<String> = st
                .conns
                .values()
                .filter_map(|c| c.session.clone())
                .collect();
            for id in ended {
                st.sessions.remove(&id);
            }
        }
        self.to_all(9, json!(resumable));
    }

    /// Sends op 1, asking for a heartbeat at once, on every connection.
    pub fn request_heartbeat(&self) {
        self.to_all(1, Value::Null);
    }

    /// The connections open now stop getting heartbeat acks (new ones get them).
    pub fn stop_acking(&self) {
        for c in self.inner.state().conns.values_mut() {
            c.deaf = true;
        }
    }

    /// Drops every connection without a close frame; their sessions stay resumable, and what is
    /// posted meanwhile waits for the resume.
    pub fn drop_all(&self) {
        let mut st = self.inner.state();
        for s in st.sessions.values_mut() {
            s.conn = None;
        }
        for c in st.conns.values() {
            let _ = c.tx.send(Cmd::Drop);
        }
    }

    /// Identify with the Message Content intent is closed with 4014 (the intent is not enabled
    /// in the Developer Portal).
    pub fn refuse_message_content(&self) {
        self.inner.state().refuse_message_content = true;
    }

    pub fn connections(&self) -> usize {
        self.inner.state().conns.len()
    }
    pub fn max_open(&self) -> usize {
        self.inner.state().max_open
    }
    /// Path and query of every connection, in order.
    pub fn connects(&self) -> Vec<(String, String)> {
        self.inner.state().connects.clone()
    }
    pub fn hellos(&self) -> Vec<Seen> {
        self.inner.state().hellos.clone()
    }
    pub fn identifies(&self) -> Vec<Seen> {
        self.inner.state().identifies.clone()
    }
    pub fn resumes(&self) -> Vec<Seen> {
        self.inner.state().resumes.clone()
    }
    pub fn heartbeats(&self) -> Vec<Seen> {
        self.inner.state().heartbeats.clone()
    }
    pub fn sent_ops(&self) -> Vec<Seen> {
        self.inner.state().sent_ops.clone()
    }
    pub fn client_closes(&self) -> Vec<Option<u16>> {
        self.inner.state().client_closes.clone()
    }
    pub fn server_closes(&self) -> Vec<u16> {
        self.inner.state().server_closes.clone()
    }
    /// How many times a message went out on a connection (its first sending and replays).
    pub fn deliveries(&self, id: &str) -> u32 {
        self.inner.state().deliveries.get(id).copied().unwrap_or(0)
    }
    /// The session ids that are live (resumable).
    pub fn sessions(&self) -> Vec<String> {
        self.inner.state().sessions.keys().cloned().collect()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for GatewayStandin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One client frame, on connection `conn`.
fn handle(inner: &Inner, conn: u64, text: &str) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return close(inner, conn, 4002, "Error while decoding payload.");
    };
    let mut st = inner.state();
    let seen = |what: &Value| Seen {
        at: Instant::now(),
        conn,
        what: what.clone(),
    };
    let Some((tx, deaf, identified)) = st
        .conns
        .get(&conn)
        .map(|c| (c.tx.clone(), c.deaf, c.session.is_some()))
    else {
        return;
    };
    let send = |text: String| {
        let _ = tx.send(Cmd::Send(text));
    };
    match v["op"].as_u64() {
        Some(1) => {
            st.heartbeats.push(seen(&v["d"]));
            if !deaf {
                send(json!({ "op": 11 }).to_string());
            }
        }
        Some(2) => {
            st.identifies.push(seen(&v["d"]));
            if identified {
                drop(st);
                return close(inner, conn, 4005, "Already authenticated.");
            }
            if v["d"]["token"] != BOT_TOKEN {
                drop(st);
                return close(inner, conn, 4004, "Authentication failed.");
            }
            let intents = v["d"]["intents"].as_u64().unwrap_or(0);
            if st.refuse_message_content && intents & MESSAGE_CONTENT != 0 {
                drop(st);
                return close(inner, conn, 4014, "Disallowed intent(s).");
            }
            let session_id = uuid::Uuid::now_v7().simple().to_string();
            let ready = dispatch(
                "READY",
                1,
                json!({
                    "v": 10, "session_id": session_id, "session_type": "normal",
                    "resume_gateway_url": format!("ws://{}/resume", inner.addr),
                    "user": { "id": BOT_USER_ID, "username": "switchboard", "bot": true },
                    "application": { "id": APPLICATION_ID, "flags": 0 },
                    "guilds": [],
                }),
            );
            st.sessions.insert(
                session_id.clone(),
                Session {
                    seq: 1,
                    log: vec![(1, ready.clone())],
                    conn: Some(conn),
                },
            );
            if let Some(c) = st.conns.get_mut(&conn) {
                c.session = Some(session_id);
            }
            send(ready);
        }
        Some(6) => {
            st.resumes.push(seen(&v["d"]));
            if v["d"]["token"] != BOT_TOKEN {
                drop(st);
                return close(inner, conn, 4004, "Authentication failed.");
            }
            let id = v["d"]["session_id"].as_str().unwrap_or_default().to_owned();
            let after = v["d"]["seq"].as_u64().unwrap_or(0);
            let State {
                sessions,
                conns,
                deliveries,
                ..
            } = &mut *st;
            let Some(session) = sessions.get_mut(&id) else {
                return send(json!({ "op": 9, "d": false }).to_string());
            };
            session.conn = Some(conn);
            for (s, text) in &session.log {
                if *s > after {
                    if let Some(msg) = serde_json::from_str::<Value>(text)
                        .ok()
                        .filter(|d| d["t"] == "MESSAGE_CREATE")
                        .and_then(|d| d["d"]["id"].as_str().map(str::to_owned))
                    {
                        *deliveries.entry(msg).or_default() += 1;
                    }
                    send(text.clone());
                }
            }
            session.seq += 1;
            let resumed = dispatch("RESUMED", session.seq, json!({}));
            session.log.push((session.seq, resumed.clone()));
            send(resumed);
            if let Some(c) = conns.get_mut(&conn) {
                c.session = Some(id);
            }
        }
        _ => {}
    }
}

fn close(inner: &Inner, conn: u64, code: u16, reason: &'static str) {
    let mut st = inner.state();
    st.server_closes.push(code);
    if let Some(c) = st.conns.get(&conn) {
        let _ = c.tx.send(Cmd::Close(code, reason));
    }
}

// The handshake callback's signature is tungstenite's.
#[allow(clippy::result_large_err)]
async fn serve_conn(inner: Arc<Inner>, tcp: TcpStream, stop: CancellationToken) {
    let target = Arc::new(Mutex::new((String::new(), String::new())));
    let record = {
        let target = target.clone();
        move |req: &Request, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
            if let Ok(mut t) = target.lock() {
                *t = (
                    req.uri().path().to_owned(),
                    req.uri().query().unwrap_or_default().to_owned(),
                );
            }
            Ok(resp)
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, record).await else {
        return;
    };
    let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut st = inner.state();
        let connected = target.lock().map(|t| t.clone()).unwrap_or_default();
        st.connects.push(connected);
        st.conns.insert(
            conn,
            Conn {
                tx,
                session: None,
                deaf: false,
            },
        );
        st.max_open = st.max_open.max(st.conns.len());
        st.hellos.push(Seen {
            at: Instant::now(),
            conn,
            what: Value::Null,
        });
    }
    let hello = json!({
        "op": 10, "s": null, "t": null,
        "d": { "heartbeat_interval": inner.heartbeat_interval.as_millis() as u64 },
    });
    if ws
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        inner.state().conns.remove(&conn);
        return;
    }
    let mut client_close = None;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(text)) => {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Close(code, reason)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = ws.close(Some(frame)).await;
                    break;
                }
                Some(Cmd::Drop) | None => break,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => handle(&inner, conn, &t),
                Some(Ok(Message::Close(frame))) => {
                    client_close = Some(frame.map(|f| u16::from(f.code)));
                    let _ = ws.close(None).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = stop.cancelled() => break,
        }
    }
    let mut st = inner.state();
    if let Some(code) = client_close {
        st.client_closes.push(code);
    }
    if let Some(c) = st.conns.remove(&conn) {
        if let Some(id) = c.session {
            // Closing with 1000 or 1001 ends the session; anything else keeps it resumable.
            if matches!(client_close, Some(Some(1000 | 1001))) {
                st.sessions.remove(&id);
            } else if let Some(s) = st.sessions.get_mut(&id) {
                if s.conn == Some(conn) {
                    s.conn = None;
                }
            }
        }
    }
}
