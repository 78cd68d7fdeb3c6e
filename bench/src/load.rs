//! The load generator: HTTP/1.1 keep-alive connections (one hyper connection per simulated
//! sender, no pool in between) posting webhooks signed per Standard Webhooks, each with its own
//! `webhook-id` so that no request is a platform retry. Two paces: closed loop (each connection
//! sends its next request when the previous is answered: a fixed concurrency) and fixed rate
//! (request `k` is due at `k / rate`; a free connection takes the next due request, and its
//! latency counts from when it was due, so a slow server cannot hide its queue). It measures;
//! it does not judge.
use super::stats::{self, Summary};
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use shared::signing::SigningKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where requests go and how they are signed.
#[derive(Debug, Clone)]
pub struct LoadTarget {
    pub addr: SocketAddr,
    /// `/hooks/<source>`.
    pub path: String,
    pub key: SigningKey,
    /// Prefix of every `webhook-id` of this run (ids are `<tag>-<n>`), unique per run.
    pub tag: String,
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each connection sends again as soon as it is answered.
    Closed,
    /// Requests per second, spread over the connections.
    Rate(f64),
}

/// One phase of load.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub connections: usize,
    pub pace: Pace,
    /// Sent but not measured (connections open, caches warm).
    pub warmup: Duration,
    /// Measured.
    pub duration: Duration,
    /// A bound on requests whatever the duration says.
    pub max_requests: u64,
    /// Keep an [`Ack`] of every accepted request, warm-up included.
    pub keep_acks: bool,
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Accepted (2xx) requests due or started in the measured window.
    pub accepted: usize,
    pub accepted_per_sec: f64,
    /// Ack latency of the accepted requests of the measured window.
    pub latency: Summary,
    /// The same samples, in microseconds, sorted (to pool several runs).
    pub latencies_us: Vec<i64>,
    /// Non-2xx answers by status, whole phase.
    pub refused: BTreeMap<u16, usize>,
    /// Requests that got no answer (connection or protocol errors), whole phase.
    pub errors: usize,
    pub first_error: Option<String>,
    /// Every accepted request of the phase (when asked for).
    pub acks: Vec<Ack>,
    /// Requests sent in the whole phase.
    pub sent: u64,
    /// When the phase started.
    pub started: Instant,
}

struct Shared {
    target: LoadTarget,
    plan: LoadPlan,
    t0: Instant,
    measure_from: Instant,
    end: Instant,
    next: AtomicU64,
}

#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<i64>,
    accepted: usize,
    refused: BTreeMap<u16, usize>,
    errors: usize,
    first_error: Option<String>,
    acks: Vec<Ack>,
}

/// One accepted request.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Its `webhook-id`.
    pub id: String,
    /// When it was due (fixed rate) or sent (closed loop).
    pub due: Instant,
    /// When its 2xx answer was read.
    pub acked: Instant,
}

/// Runs one phase and returns when every connection has finished its last request.
pub async fn run(target: LoadTarget, plan: LoadPlan) -> LoadResult {
    let t0 = Instant::now();
    let shared = Arc::new(Shared {
        measure_from: t0 + plan.warmup,
        end: t0 + plan.warmup + plan.duration,
        target,
        plan,
        t0,
        next: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..shared.plan.connections.max(1) {
        tasks.spawn(connection(shared.clone()));
    }
    let mut all = ConnStats::default();
    while let Some(joined) = tasks.join_next().await {
        let Ok(c) = joined else {
            all.errors += 1;
            continue;
        };
        all.latencies_us.extend(c.latencies_us);
        all.accepted += c.accepted;
        for (status, n) in c.refused {
            *all.refused.entry(status).or_insert(0) += n;
        }
        all.errors += c.errors;
        if all.first_error.is_none() {
            all.first_error = c.first_error;
        }
        all.acks.extend(c.acks);
    }
    let latency = stats::summarize(&mut all.latencies_us);
    LoadResult {
        accepted: all.accepted,
        accepted_per_sec: stats::per_second(all.accepted, shared.plan.duration),
        latency,
        latencies_us: all.latencies_us,
        refused: all.refused,
        errors: all.errors,
        first_error: all.first_error,
        acks: all.acks,
        sent: shared
            .next
            .load(Ordering::Relaxed)
            .min(shared.plan.max_requests),
        started: t0,
    }
}

/// The `n`th request of a run: due when, and with which id.
fn claim(shared: &Shared) -> Option<(u64, Instant)> {
    match shared.plan.pace {
        Pace::Closed => {
            if Instant::now() >= shared.end {
                return None;
            }
            let n = shared.next.fetch_add(1, Ordering::Relaxed);
            (n < shared.plan.max_requests).then(|| (n, Instant::now()))
        }
        Pace::Rate(rate) => {
            let n = shared.next.fetch_add(1, Ordering::Relaxed);
            let due = shared.t0 + Duration::from_secs_f64(n as f64 / rate.max(0.001));
            (n < shared.plan.max_requests && due < shared.end).then_some((n, due))
        }
    }
}

async fn connection(shared: Arc<Shared>) -> ConnStats {
    let mut stats = ConnStats::default();
    let mut failures_in_a_row = 0u32;
    'connect: while failures_in_a_row < 20 && Instant::now() < shared.end {
        let mut sender = match open(shared.target.addr).await {
            Ok(s) => s,
            Err(e) => {
                note_error(&mut stats, format!("connect: {e:#}"));
                failures_in_a_row += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while let Some((n, due)) = claim(&shared) {
            tokio::time::sleep_until(due.into()).await;
            let id = format!("{}-{n}", shared.target.tag);
            let started = Instant::now();
            let outcome = send(&mut sender, &shared.target, &id).await;
            let answered = Instant::now();
            match outcome {
                Ok(status) if (200..300).contains(&status) => {
                    failures_in_a_row = 0;
                    let from = if shared.plan.pace == Pace::Closed {
                        started
                    } else {
                        due
                    };
                    if from >= shared.measure_from && from < shared.end {
                        stats.accepted += 1;
                        stats
                            .latencies_us
                            .push(answered.saturating_duration_since(from).as_micros() as i64);
                    }
                    if shared.plan.keep_acks {
                        stats.acks.push(Ack {
                            id,
                            due: from,
                            acked: answered,
                        });
                    }
                }
                Ok(status) => {
                    *stats.refused.entry(status).or_insert(0) += 1;
                }
                Err(e) => {
                    note_error(&mut stats, format!("{e:#}"));
                    failures_in_a_row += 1;
                    continue 'connect;
                }
            }
        }
        break;
    }
    stats
}

fn note_error(stats: &mut ConnStats, e: String) {
    stats.errors += 1;
    stats.first_error.get_or_insert(e);
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn open(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    // Requests are small single writes; don't let Nagle hold them back.
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The body of request `id`: its own conversation, so no two requests wait for each other
/// in the worker (a conversation's messages are answered in order).
pub fn body_for(id: &str) -> String {
    serde_json::json!({"text": format!("bench {id}"), "sender_id": id, "chat_id": id}).to_string()
}

/// Posts one signed webhook; the answer's status once its body is read (keep-alive).
async fn send(sender: &mut Sender, target: &LoadTarget, id: &str) -> anyhow::Result<u16> {
    let body = body_for(id);
    let ts = chrono::Utc::now().timestamp();
    let signature = target.key.sign(id, ts, body.as_bytes());
    let request = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, target.addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(body)))?;
    sender.ready().await.context("connection closed")?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}
