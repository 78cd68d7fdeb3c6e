//! Steady load: correctly signed Standard Webhooks at a fixed rate, each with its own id, text
//! and sender (so no event waits for another's conversation turn), sent the way a platform
//! sends them — an event the ingress did not acknowledge (non-2xx, or no answer) is retried with
//! the same id until it is acknowledged or the platform gives up. Only acknowledged events are
//! promises the pipeline must keep; the rest are reported as refused.
//!
//! The ingress asks for `Retry-After: 5`; the suite waits at most 1 s between tries so that a
//! fault's window stays short, which only makes retries more likely to race a recovery.
use shared::signing::SigningKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a platform keeps retrying one event.
const GIVE_UP_AFTER: Duration = Duration::from_secs(40);

/// What happened to one event at the door.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The webhook id, also the event's text and sender: `<fault>-<n>`.
    pub id: String,
    pub first_at: Instant,
    /// Every answer's status, in order (0: no answer).
    pub statuses: Vec<u16>,
    pub acked_at: Option<Instant>,
}

impl Sent {
    pub fn acked(&self) -> bool {
        self.acked_at.is_some()
    }
}

/// A running load generator.
pub struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sent>>,
}

impl Load {
    /// Sends `rate` events per second to `{base}/hooks/hooks` until [`Load::finish`].
    pub fn start(base: String, secret: &str, prefix: &'static str, rate: u32) -> Self {
        let key = Arc::new(SigningKey::parse(secret).expect("signing key"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let stop = CancellationToken::new();
        let halt = stop.clone();
        let task = tokio::spawn(async move {
            let mut sends = JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = halt.cancelled() => break,
                    _ = tick.tick() => {
                        n += 1;
                        let id = format!("{prefix}-{n:04}");
                        sends.spawn(send(http.clone(), base.clone(), key.clone(), id));
                    }
                }
            }
            let mut all = Vec::new();
            while let Some(r) = sends.join_next().await {
                all.extend(r.ok());
            }
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        });
        Self { stop, task }
    }

    /// Stops sending new events, waits for the retries in progress, returns every event.
    pub async fn finish(self) -> Vec<Sent> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn send(http: reqwest::Client, base: String, key: Arc<SigningKey>, id: String) -> Sent {
    let body = serde_json::json!({"text": id, "sender_id": id}).to_string();
    let mut sent = Sent {
        id: id.clone(),
        first_at: Instant::now(),
        statuses: Vec::new(),
        acked_at: None,
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let ts = chrono::Utc::now().timestamp();
        let answer = http
            .post(format!("{base}/hooks/hooks"))
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", key.sign(&id, ts, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let status = answer.as_ref().map(|a| a.status().as_u16()).unwrap_or(0);
        sent.statuses.push(status);
        if (200..300).contains(&status) {
            sent.acked_at = Some(Instant::now());
            return sent;
        }
        if sent.first_at.elapsed() > GIVE_UP_AFTER {
            return sent;
        }
        let asked = answer
            .ok()
            .and_then(|a| a.headers().get("retry-after")?.to_str().ok()?.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(backoff);
        tokio::time::sleep(asked.min(Duration::from_secs(1))).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
