//! A webhook receiver that behaves like a customer's endpoint: it verifies our Standard Webhooks
//! signature, answers 2xx (or whatever it is told to answer next), can be taken down and brought
//! back, and records every delivery so tests can count deliveries per job and read what arrived.
//! `GET /received` lists the accepted deliveries as JSON (`[{"webhook_id", "body"}]`), so a
//! check outside the process (`./dev clone-check`) can see a signed answer arrive.
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use shared::signing::SigningKey;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One request the receiver accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub body: serde_json::Value,
    pub signature_ok: bool,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Every request, accepted or not, by webhook-id.
    requests: HashMap<String, u32>,
    script: VecDeque<(u16, Option<String>)>,
    down: bool,
    latency: Duration,
}

/// A running receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    key: Option<SigningKey>,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts a receiver that verifies signatures with `secret` (`whsec_…`), if given.
    pub async fn start(secret: Option<&str>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, secret).await
    }

    pub async fn start_on(
        listener: tokio::net::TcpListener,
        secret: Option<&str>,
    ) -> anyhow::Result<Self> {
        let key = secret
            .map(SigningKey::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let r = Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            key,
            addr: listener.local_addr()?,
            stop: CancellationToken::new(),
        };
        let app = Router::new()
            .route("/received", get(list))
            .fallback(post(receive))
            .with_state(r.clone());
        let stop = r.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(r)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Answers the next `n` requests with `status` (and `Retry-After`, if given).
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<&str>) {
        let mut g = self.lock();
        for _ in 0..n {
            g.script.push_back((status, retry_after.map(str::to_owned)));
        }
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Deliveries accepted (2xx), in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    pub fn accepted(&self) -> usize {
        self.lock().received.len()
    }

    /// Requests (accepted or not) carrying this webhook-id.
    pub fn requests_for(&self, webhook_id: &str) -> u32 {
        self.lock().requests.get(webhook_id).copied().unwrap_or(0)
    }

    /// Accepted deliveries per webhook-id: a job delivered twice shows 2.
    pub fn accepted_per_id(&self) -> HashMap<String, u32> {
        let mut m = HashMap::new();
        for r in &self.lock().received {
            *m.entry(r.webhook_id.clone()).or_insert(0) += 1;
        }
        m
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

/// Every accepted delivery so far (each one's signature was verified if the receiver has a secret).
async fn list(State(r): State<Receiver>) -> axum::Json<serde_json::Value> {
    let all: Vec<serde_json::Value> = r
        .lock()
        .received
        .iter()
        .map(|d| serde_json::json!({"webhook_id": d.webhook_id, "body": d.body}))
        .collect();
    axum::Json(serde_json::Value::Array(all))
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = h("webhook-id");
    let latency = r.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (down, scripted) = {
        let mut g = r.lock();
        *g.requests.entry(id.clone()).or_insert(0) += 1;
        (g.down, if g.down { None } else { g.script.pop_front() })
    };
    if down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if let Some((status, retry_after)) = scripted {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, "scripted failure").into_response();
        if let Some(ra) = retry_after.and_then(|v| v.parse().ok()) {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, ra);
        }
        return resp;
    }
    let signature_ok = match &r.key {
        Some(key) => h("webhook-timestamp")
            .parse::<i64>()
            .is_ok_and(|ts| key.verify(&id, ts, &body, &h("webhook-signature"))),
        None => true,
    };
    if !signature_ok {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    r.lock().received.push(Received {
        webhook_id: id,
        body: json,
        signature_ok,
        at: Instant::now(),
    });
    StatusCode::NO_CONTENT.into_response()
}
