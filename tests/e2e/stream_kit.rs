//! What the streamed-reply tests of every platform share: a pipeline whose Dify writes slowly,
//! the texts a message or card showed in order, and the updates and final job of one reply
//! published straight to the deliver queue (as a worker would).
use crate::common::*;
use crate::kit::eventually;
use shared::envelope::{encode, AnswerPayload, Destination, DispatchJob};
use shared::progress::ReplyProgress;
use standins::dify::Latency;
use standins::platforms::PlatformStandin;
use std::time::Duration;

/// A pipeline with `extra` config whose Dify writes each answer over `ms` in 40 chunks, with the
/// roles asked for in process.
pub(crate) async fn spawn_slow_dify(
    extra: String,
    ms: u64,
    worker: bool,
    dispatcher: bool,
) -> TestApp {
    let mut opts = Options {
        extra,
        worker,
        dispatcher,
        ..Default::default()
    };
    opts.dify.latency = Latency::Fixed(Duration::from_millis(ms));
    opts.dify.chunks = 40;
    TestApp::spawn(opts).await
}

/// Every text the stand-in took on `apis`, in the order it took them.
pub(crate) fn shown(p: &PlatformStandin, apis: &[&str]) -> Vec<String> {
    let mut all: Vec<_> = apis.iter().flat_map(|api| p.messages_to(api)).collect();
    all.sort_by_key(|m| m.at);
    all.into_iter().map(|m| m.text).collect()
}

/// The updates and the final job of one reply to `destination`, made by hand.
pub(crate) struct Direct {
    pub job_id: uuid::Uuid,
    destination: Destination,
    base: AnswerPayload,
}

impl Direct {
    pub fn new(destination: Destination, base: AnswerPayload) -> Self {
        let job_id = DispatchJob::job_id_of_event(base.event_id, &destination);
        Self {
            job_id,
            destination,
            base,
        }
    }

    fn with(&self, text: &str) -> AnswerPayload {
        let mut payload = self.base.clone();
        payload.answer.text = text.into();
        payload
    }

    /// Update `(epoch, seq)` showing `text`.
    pub fn update(&self, epoch: i64, seq: u64, text: &str) -> Vec<u8> {
        encode(&ReplyProgress {
            job_id: self.job_id,
            destination: self.destination.clone(),
            payload: self.with(text),
            epoch,
            seq,
        })
    }

    /// The final answer `text`.
    pub fn answer(&self, text: &str) -> Vec<u8> {
        encode(&DispatchJob {
            id: self.job_id,
            destination: self.destination.clone(),
            payload: self.with(text),
            attempts: vec![],
            replay_of: None,
            parts_left: None,
        })
    }

    /// Forgets the reply's stream record, as if the dispatcher that made the message had died
    /// before recording it.
    pub async fn forget_record(&self, app: &TestApp) {
        let record = app
            .services
            .store
            .key(&["stream", &self.job_id.to_string()]);
        let mut conn = app.services.store.conn().await.unwrap();
        let _: i64 = deadpool_redis::redis::cmd("DEL")
            .arg(&record)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Once `grew` holds (the message is growing), kills `worker`, a child process (-9), and lets
/// an in-process worker take the event over.
pub(crate) async fn kill_worker_mid_stream(
    app: &mut TestApp,
    mut worker: ChildRole,
    grew: impl FnMut() -> bool,
) {
    eventually("the message to grow", grew).await;
    worker.kill9().await;
    app.add_worker();
}

/// A dispatcher as a child process, with requests to `api` hanging at the stand-in long enough
/// to kill it in the middle of one.
pub(crate) fn dispatcher_with_slow_writes(
    app: &TestApp,
    p: &PlatformStandin,
    api: &'static str,
) -> ChildRole {
    p.hold(api, Duration::from_secs(2));
    app.spawn_child("dispatcher")
}

/// Once a request to `api` is in flight, kills `dispatcher` (-9), stops holding the requests
/// and lets an in-process dispatcher carry on.
pub(crate) async fn kill_dispatcher_mid_write(
    app: &mut TestApp,
    p: &PlatformStandin,
    api: &'static str,
    mut dispatcher: ChildRole,
) {
    let p2 = p.clone();
    eventually("a write in flight", || p2.requests(api) >= 1).await;
    dispatcher.kill9().await;
    p.hold(api, Duration::ZERO);
    app.add_dispatcher();
}

/// A dispatcher as a child process logging warnings to a file of its own, and the file.
pub(crate) fn dispatcher_logging(app: &TestApp) -> (ChildRole, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("{}-dispatcher.log", app.prefix));
    (app.spawn_child_with("dispatcher", "warn", Some(&log)), log)
}

/// Asserts the dispatcher's log said the reply fell back exactly once; removes the log and
/// gives what it said.
pub(crate) fn fell_back_once(log: &std::path::Path) -> String {
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(
        logged.matches("falls back to a single message").count(),
        1,
        "{logged}"
    );
    let _ = std::fs::remove_file(log);
    logged
}
