//! The WebSocket plumbing the gateway stand-ins share (DingTalk's Stream gateway, Slack's
//! Socket Mode): serving the HTTP API that hands out connection URLs, accepting WebSocket
//! connections and running a delivery tick, all until stopped; the handshake that takes a
//! URL's single-use `ticket` once; which events are due for (re)delivery and to which
//! connection; a frame cut in the middle, as a dropped connection leaves
//! it; and the rest of a platform's API passed on to the stand-in that serves it.
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use rand::seq::IteratorRandom;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `http`, hands every WebSocket connection accepted on `ws` to `conn`, and
/// runs `tick` every 20 ms, until `stop`; both get the stand-in's state.
pub fn serve<I, F>(
    (http, ws): (TcpListener, TcpListener),
    app: Router,
    inner: Arc<I>,
    stop: &CancellationToken,
    conn: fn(Arc<I>, TcpStream, CancellationToken) -> F,
    tick: fn(&I),
) where
    I: Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(http, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
    });
    let (i, s) = (inner.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = ws.accept() => {
                    if let Ok((tcp, _)) = accepted {
                        tokio::spawn(conn(i.clone(), tcp, s.clone()));
                    }
                }
                _ = s.cancelled() => return,
            }
        }
    });
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => tick(&inner),
                _ = s.cancelled() => return,
            }
        }
    });
}

/// The WebSocket handshake of a URL carrying `?ticket=`: `take` says whether the ticket is
/// good, and uses it up; a bad or used one is refused with 401.
pub async fn accept_ticketed(
    tcp: TcpStream,
    take: impl FnOnce(&str) -> bool + Unpin,
) -> Option<WebSocketStream<TcpStream>> {
    // The handshake callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let ticket = req
            .uri()
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "ticket")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        if take(&ticket) {
            Ok(resp)
        } else {
            let mut refused = ErrorResponse::new(Some("ticket invalid or used".into()));
            *refused.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refused)
        }
    };
    tokio_tungstenite::accept_hdr_async(tcp, check).await.ok()
}

/// Which of `sent` are due for delivery now: never sent (`None`), sent to a connection that is
/// gone, or sent `redeliver_after` ago and still not acknowledged.
pub fn due<K>(
    sent: impl IntoIterator<Item = (K, Option<(u64, Instant)>)>,
    live: impl Fn(u64) -> bool,
    redeliver_after: Duration,
) -> Vec<K> {
    let now = Instant::now();
    sent.into_iter()
        .filter(|(_, sent)| match sent {
            None => true,
            Some((conn, at)) => !live(*conn) || now.duration_since(*at) >= redeliver_after,
        })
        .map(|(key, _)| key)
        .collect()
}

/// A live connection picked at random, as the platforms spread events among an app's.
pub fn pick<T>(conns: &HashMap<u64, T>) -> Option<u64> {
    conns.keys().copied().choose(&mut rand::thread_rng())
}

/// Writes the head of a text (or binary) frame announcing all of `payload`, then only half of
/// it; the caller drops the connection after.
pub async fn cut(ws: &mut WebSocketStream<TcpStream>, payload: &[u8], binary: bool) {
    use futures_util::SinkExt;
    let _ = ws.flush().await;
    let tcp = ws.get_mut();
    let _ = tcp.write_all(&partial_frame(payload, binary)).await;
    let _ = tcp.flush().await;
}

/// The head of an unmasked frame announcing all of `payload`, then only half of it.
fn partial_frame(payload: &[u8], binary: bool) -> Vec<u8> {
    let mut out = vec![if binary { 0x82u8 } else { 0x81 }];
    let len = payload.len().max(2);
    if len < 126 {
        out.push(u8::try_from(len).unwrap_or(125));
    } else if let Ok(l) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&payload[..payload.len() / 2]);
    out
}

/// Passes a request for `path` on to `upstream` (a base URL), with its credentials and content
/// type, and answers what upstream answered; 404 without one.
pub async fn pass_on(
    http: &reqwest::Client,
    upstream: Option<&str>,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let Some(upstream) = upstream else {
        return (StatusCode::NOT_FOUND, "no upstream").into_response();
    };
    let mut req = http.request(method, format!("{upstream}{path}"));
    for name in ["authorization", "content-type"] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.clone());
        }
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status();
            let ct = resp.headers().get("content-type").cloned();
            let body = resp.bytes().await.unwrap_or_default();
            let mut out = (status, body).into_response();
            if let Some(ct) = ct {
                out.headers_mut().insert("content-type", ct);
            }
            out
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
