//! A local stand-in for the Dify service API, for the tests, the quick start and the load
//! benchmark. It serves the three run endpoints (chat, workflow, completion) in blocking and
//! streaming mode with a deterministic answer (`"echo: <query>"`) spread over a configurable
//! latency in `chunks` server-sent events, keeps conversations scoped to their `user`, answers
//! Dify's error shapes, and serves the reads a resuming worker uses (`GET /messages`,
//! `GET /workflows/run/{id}`) and the stop calls. Like Dify, a run continues and is recorded
//! even when its client goes away. Failures are injected on demand (scripted statuses, an error
//! mid-stream, down). It counts calls per `X-Trace-Id`, calls in flight and the peak, keeps
//! a bounded record of what each call sent, and notes when each query's first answer chunk went
//! out (Dify's first token, for the streaming benchmark). Each run is one task and one channel, so thousands
//! can stream at once.
mod http;
mod run;

use rand::Rng;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a run takes from request to its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    Fixed(Duration),
    /// Drawn uniformly from `min..=max` for each run.
    Uniform(Duration, Duration),
}

impl Latency {
    fn sample(self) -> Duration {
        match self {
            Latency::Fixed(d) => d,
            Latency::Uniform(min, max) if max > min => {
                let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::thread_rng().gen_range(nanos(min)..=nanos(max)))
            }
            Latency::Uniform(min, _) => min,
        }
    }
}

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct DifyOptions {
    /// When set, every request must carry `Authorization: Bearer <api_key>` (else 401).
    pub api_key: Option<String>,
    pub latency: Latency,
    /// Answer chunks per streamed run (`message` or `text_chunk` events), spread over the latency.
    pub chunks: usize,
    /// `Retry-After` seconds sent with scripted 429 answers.
    pub retry_after: Option<u64>,
    /// Call records kept for [`DifyStandin::records`]; older ones are dropped (counters are not).
    pub max_records: usize,
}

impl Default for DifyOptions {
    fn default() -> Self {
        Self {
            api_key: None,
            latency: Latency::Fixed(Duration::ZERO),
            chunks: 20,
            retry_after: Some(1),
            max_records: 100_000,
        }
    }
}

/// The run endpoint a call used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Chat,
    Workflow,
    Completion,
}

/// What one run call sent, as received (before any check).
#[derive(Debug, Clone)]
pub struct DifyRecord {
    pub endpoint: Endpoint,
    pub trace_id: Option<String>,
    pub authorization: Option<String>,
    pub user: Option<String>,
    /// The conversation the call asked to continue.
    pub conversation_id: Option<String>,
    pub query: Option<String>,
    pub inputs: Value,
    pub response_mode: Option<String>,
    pub at: Instant,
}

/// One message of a conversation as the stand-in keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub query: String,
    /// Empty until the run finishes.
    pub answer: String,
    /// `normal` or `error`.
    pub status: String,
    pub done: bool,
}

/// A running stand-in on 127.0.0.1.
#[derive(Clone)]
pub struct DifyStandin {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for DifyStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DifyStandin")
            .field("addr", &self.addr)
            .finish()
    }
}

pub(crate) struct Shared {
    api_key: Option<String>,
    chunks: usize,
    retry_after: Option<u64>,
    max_records: usize,
    latency: Mutex<Latency>,
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    completed: AtomicU64,
    down: AtomicBool,
    mid_stream_errors: AtomicUsize,
    state: Mutex<State>,
    stop: CancellationToken,
}

#[derive(Default)]
pub(crate) struct State {
    script: VecDeque<(u16, String)>,
    per_trace: HashMap<String, u64>,
    records: VecDeque<DifyRecord>,
    conversations: HashMap<String, Conversation>,
    workflow_runs: HashMap<String, WorkflowRun>,
    /// Running tasks' stop flags, by task id.
    tasks: HashMap<String, Arc<AtomicBool>>,
    /// When the first answer chunk of a streamed run of each query was sent (the earliest).
    first_tokens: HashMap<String, Instant>,
}

pub(crate) struct Conversation {
    user: String,
    /// Oldest first; messages are only appended, so an index stays valid.
    messages: Vec<Message>,
}

pub(crate) struct Message {
    id: String,
    query: String,
    inputs: Value,
    answer: String,
    error: Option<String>,
    done: bool,
    created_at: i64,
}

pub(crate) struct WorkflowRun {
    inputs: Value,
    /// `running`, `succeeded`, `failed` or `stopped`.
    status: String,
    outputs: Value,
    error: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
    elapsed: f64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn latency(&self) -> Latency {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps the in-flight count while a run lives (its task may end any way, even cancelled).
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DifyStandin {
    /// Starts on 127.0.0.1 with an ephemeral port and a deep accept queue (load tests open
    /// a thousand connections at once).
    pub async fn start(opts: DifyOptions) -> anyhow::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Self::start_on(socket.listen(4096)?, opts).await
    }

    pub async fn start_on(
        listener: tokio::net::TcpListener,
        opts: DifyOptions,
    ) -> anyhow::Result<Self> {
        use axum::serve::ListenerExt;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            api_key: opts.api_key,
            chunks: opts.chunks.max(1),
            retry_after: opts.retry_after,
            max_records: opts.max_records,
            latency: Mutex::new(opts.latency),
            calls: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            down: AtomicBool::new(false),
            mid_stream_errors: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            stop: CancellationToken::new(),
        });
        let router = http::router(shared.clone());
        // Streamed chunks are small writes; without NODELAY they would wait for ACKs.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Self { shared, addr })
    }

    /// `http://127.0.0.1:PORT/v1`, an app's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// POSTs received by the three run endpoints, whatever they were answered.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Run POSTs that carried `X-Trace-Id: trace_id`.
    pub fn calls_for(&self, trace_id: &str) -> u64 {
        self.shared
            .lock()
            .per_trace
            .get(trace_id)
            .copied()
            .unwrap_or(0)
    }

    /// Run calls per trace id (the benchmark's "calls per unique event").
    pub fn calls_per_trace(&self) -> HashMap<String, u64> {
        self.shared.lock().per_trace.clone()
    }

    /// Runs started and not yet finished (a run outlives a client that went away).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Runs that finished (succeeded, stopped or failed mid-stream) and were recorded.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// The next `n` run calls are answered `status` with Dify's body for `code` (FIFO).
    pub fn fail_next(&self, n: usize, status: u16, code: &str) {
        let mut state = self.shared.lock();
        state
            .script
            .extend(std::iter::repeat_n((status, code.to_owned()), n));
    }

    /// The next `n` streaming runs answer 200, send half their chunks, then an `error` event
    /// (400 `completion_request_error`); the run is recorded as failed.
    pub fn error_mid_stream_next(&self, n: usize) {
        self.shared.mid_stream_errors.fetch_add(n, Ordering::SeqCst);
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    pub fn set_latency(&self, latency: Latency) {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// When the first answer chunk of a streamed run was sent, by the run's query.
    pub fn first_tokens(&self) -> HashMap<String, Instant> {
        self.shared.lock().first_tokens.clone()
    }

    /// What the kept run calls sent, oldest first.
    pub fn records(&self) -> Vec<DifyRecord> {
        self.shared.lock().records.iter().cloned().collect()
    }

    pub fn records_for(&self, trace_id: &str) -> Vec<DifyRecord> {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|r| r.trace_id.as_deref() == Some(trace_id))
            .cloned()
            .collect()
    }

    /// Conversations created so far.
    pub fn conversations(&self) -> usize {
        self.shared.lock().conversations.len()
    }

    /// A conversation's messages, oldest first (empty when it does not exist).
    pub fn messages_in(&self, conversation_id: &str) -> Vec<StoredMessage> {
        let state = self.shared.lock();
        let Some(conversation) = state.conversations.get(conversation_id) else {
            return Vec::new();
        };
        conversation
            .messages
            .iter()
            .map(|m| StoredMessage {
                id: m.id.clone(),
                query: m.query.clone(),
                answer: m.answer.clone(),
                status: if m.error.is_some() { "error" } else { "normal" }.into(),
                done: m.done,
            })
            .collect()
    }

    /// Forgets a conversation, as when it is deleted in Dify: using it again is 404.
    pub fn delete_conversation(&self, conversation_id: &str) -> bool {
        self.shared
            .lock()
            .conversations
            .remove(conversation_id)
            .is_some()
    }

    /// Stops serving: no new connections; running runs end without being recorded.
    pub fn shutdown(&self) {
        self.shared.stop.cancel();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn latency_samples_stay_in_range() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(20));
        for _ in 0..100 {
            let d = Latency::Uniform(min, max).sample();
            assert!(d >= min && d <= max, "{d:?}");
        }
        assert_eq!(Latency::Uniform(max, min).sample(), max);
        assert_eq!(Latency::Fixed(min).sample(), min);
    }

    async fn post(dify: &DifyStandin, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/{path}", dify.base_url()))
            .bearer_auth("k")
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn get(dify: &DifyStandin, path: &str, key: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}/{path}", dify.base_url()))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    #[tokio::test]
    async fn messages_are_listed_newest_first_in_pages() {
        let dify = DifyStandin::start(DifyOptions {
            api_key: Some("k".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let ask = |q: &str, c: Option<&str>| json!({"query": q, "inputs": {}, "user": "u", "response_mode": "blocking", "conversation_id": c});
        let (status, first) = post(&dify, "chat-messages", ask("q0", None)).await;
        assert_eq!(status, 200, "{first}");
        let c = first["conversation_id"].as_str().unwrap().to_owned();
        for q in ["q1", "q2"] {
            assert_eq!(post(&dify, "chat-messages", ask(q, Some(&c))).await.0, 200);
        }
        let (_, page) = get(
            &dify,
            &format!("messages?conversation_id={c}&user=u&limit=2"),
            "k",
        )
        .await;
        let queries: Vec<&str> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["query"].as_str().unwrap())
            .collect();
        assert_eq!(
            (queries, page["has_more"].as_bool()),
            (vec!["q2", "q1"], Some(true))
        );
        assert_eq!(page["data"][0]["answer"], "echo: q2");
        let oldest = page["data"][1]["id"].as_str().unwrap();
        let (_, older) = get(
            &dify,
            &format!("messages?conversation_id={c}&user=u&first_id={oldest}"),
            "k",
        )
        .await;
        assert_eq!(older["data"][0]["query"], "q0");
        assert_eq!(older["has_more"], false);
        let (status, body) = get(
            &dify,
            &format!("messages?conversation_id={c}&user=other"),
            "k",
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        let (status, body) = get(
            &dify,
            &format!("messages?conversation_id={c}&user=u"),
            "bad",
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
        dify.set_down(true);
        assert_eq!(get(&dify, "workflows/run/x", "k").await.0, 503);
    }

    #[tokio::test]
    async fn a_blocking_run_whose_client_gives_up_is_still_recorded() {
        let dify = DifyStandin::start(DifyOptions {
            latency: Latency::Fixed(Duration::from_millis(300)),
            ..Default::default()
        })
        .await
        .unwrap();
        let request = reqwest::Client::new()
            .post(format!("{}/workflows/run", dify.base_url()))
            .header("X-Trace-Id", "t-1")
            .json(&json!({"inputs": {"query": "x"}, "user": "u", "response_mode": "blocking"}))
            .timeout(Duration::from_millis(50))
            .send()
            .await;
        assert!(request.is_err());
        assert_eq!((dify.calls_for("t-1"), dify.in_flight()), (1, 1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while dify.completed() == 0 {
            assert!(Instant::now() < deadline, "the run never completed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(dify.in_flight(), 0);
        let records = dify.records_for("t-1");
        assert_eq!(records[0].inputs, json!({"query": "x"}));
    }
}
