//! An HTTP tap in front of the Dify stand-in. The stand-in counts every run POST, including the
//! ones it refuses while it is down; "Dify is called once per event" is about runs Dify actually
//! started, so the tap records each run call with its answer status (2xx: a run started) and
//! the query it carried (the suite's event ids are the query texts), and when the first stream
//! event carrying Dify's ids went back to the worker: a worker killed before that moment is in
//! the documented window 2 of docs/GUARANTEES.md. Everything else (resume reads, stop calls) is
//! forwarded unrecorded. Bodies are streamed both ways, and a run outlives a caller that went
//! away, as it does in Dify.
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// One run call as it passed the tap.
#[derive(Debug, Clone)]
pub struct TapCall {
    pub query: Option<String>,
    pub trace_id: Option<String>,
    pub at: Instant,
    /// 0 until Dify answered (or when it could not be reached).
    pub status: u16,
    /// When the first stream chunk carrying Dify's ids was passed on to the caller.
    pub ids_at: Option<Instant>,
}

impl TapCall {
    /// Dify started a run for this call.
    pub fn ran(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone)]
pub struct Tap {
    upstream: String,
    client: reqwest::Client,
    calls: Arc<Mutex<Vec<TapCall>>>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Tap {
    /// Forwards `127.0.0.1:<new port>` to `upstream` (`http://host:port`, no path).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tap = Self {
            upstream: format!("http://{upstream}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(256)
                .build()?,
            calls: Arc::default(),
            addr: listener.local_addr()?,
            stop: CancellationToken::new(),
        };
        let app = Router::new().fallback(forward).with_state(tap.clone());
        let stop = tap.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(tap)
    }

    /// The app's `base_url` through the tap.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn calls(&self) -> Vec<TapCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut TapCall)) {
        if let Some(c) = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)
        {
            f(c);
        }
    }
}

fn is_run(method: &Method, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    method == Method::POST
        && (path.ends_with("/chat-messages")
            || path.ends_with("/completion-messages")
            || path.ends_with("/workflows/run"))
}

async fn forward(State(tap): State<Tap>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 8 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let index = is_run(&parts.method, &path).then(|| {
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let call = TapCall {
            query: json["query"].as_str().map(str::to_owned),
            trace_id: parts
                .headers
                .get("x-trace-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            at: Instant::now(),
            status: 0,
            ids_at: None,
        };
        let mut calls = tap.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.push(call);
        calls.len() - 1
    });
    let mut upstream = tap
        .client
        .request(parts.method.clone(), format!("{}{path}", tap.upstream));
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.body(bytes).send().await {
        Ok(a) => a,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = answer.status();
    if let Some(i) = index {
        tap.update(i, |c| c.status = status.as_u16());
    }
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        if name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
            && name != header::CONNECTION
        {
            response = response.header(name, value);
        }
    }
    let mut seen_ids = false;
    let stream = answer.bytes_stream().map(move |chunk| {
        if let (Some(i), Ok(bytes), false) = (index, &chunk, seen_ids) {
            // The stand-in's first chunk is a ping; the ids come with the first real event.
            if bytes.windows(10).any(|w| w == b"message_id")
                || bytes.windows(7).any(|w| w == b"task_id")
            {
                seen_ids = true;
                let now = Instant::now();
                tap.update(i, |c| c.ids_at = Some(now));
            }
        }
        chunk.map_err(std::io::Error::other)
    });
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
