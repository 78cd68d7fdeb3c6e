//! Helpers of the platform and target suites: send a platform's `SignedRequest` through the real
//! ingress, tamper with one byte of it, poll stand-ins until a deadline, collect dead letters as
//! they arrive, and run one more dispatcher (with its own config) beside a `TestApp`.
#![allow(dead_code)]

use crate::common::{stays, TestApp};
use ingress::platform::sender::SignedRequest;
use shared::envelope::DeadLetter;
use shared::Config;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long any outcome of these suites may take to show.
pub const T: Duration = Duration::from_secs(30);
/// How long "nothing more happens" is watched for.
pub const QUIET: Duration = Duration::from_millis(800);

/// What the ingress answered.
#[derive(Debug)]
pub struct Answered {
    pub status: u16,
    pub body: String,
}

impl Answered {
    /// The machine-readable reason of a refusal (`{"error": …}`).
    pub fn error(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    /// `(status, reason)`, for one assertion per refusal.
    pub fn refusal(&self) -> (u16, String) {
        (self.status, self.error())
    }
}

/// Sends a request as the platform built it to `/hooks/<source>` of the app's ingress.
pub async fn send(app: &TestApp, source: &str, req: &SignedRequest) -> Answered {
    send_at(app, &app.base, source, req).await
}

/// `send`, to the ingress at `base` (another process than the app's own).
pub async fn send_at(app: &TestApp, base: &str, source: &str, req: &SignedRequest) -> Answered {
    let url = format!("{base}{}", req.path_and_query(&format!("/hooks/{source}")));
    let mut builder = app
        .http
        .request(req.method.clone(), url)
        .body(req.body.clone());
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let resp = builder.send().await.expect("request to the ingress");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Answered { status, body }
}

/// Changes the ASCII letter or digit nearest the middle of `bytes` into another one (so the
/// length stays and text stays text). The middle, not the end: the last character of base64
/// may carry only padding bits, which a lenient decoder ignores.
fn flip_middle(bytes: &mut [u8]) {
    let mid = bytes.len() / 2;
    let at = (mid..bytes.len())
        .chain((0..mid).rev())
        .find(|&i| bytes[i].is_ascii_alphanumeric())
        .expect("a letter or digit");
    bytes[at] = match bytes[at] {
        b'z' => b'y',
        b'Z' => b'Y',
        b'9' => b'8',
        b => b + 1,
    };
}

/// The request with one byte of its body changed.
pub fn flip_body_byte(req: &SignedRequest) -> SignedRequest {
    let mut body = req.body.to_vec();
    flip_middle(&mut body);
    let mut out = req.clone();
    out.body = body.into();
    assert_ne!(out.body, req.body);
    out
}

/// The request with one byte of a header's value changed.
pub fn flip_header_byte(req: &SignedRequest, name: &str) -> SignedRequest {
    let mut out = req.clone();
    let (_, value) = out
        .headers
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("no header {name}"));
    let mut bytes = value.clone().into_bytes();
    flip_middle(&mut bytes);
    *value = String::from_utf8(bytes).expect("ascii");
    out
}

/// The request with a header added (builder style, for retries' extra headers).
pub fn plus_header(req: &SignedRequest, name: &str, value: &str) -> SignedRequest {
    req.clone().with_header(name, value)
}

/// Polls a synchronous condition until it holds; panics after [`T`] naming `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {T:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `cond` keeps holding for [`QUIET`].
pub async fn quiet(cond: impl FnMut() -> bool) -> bool {
    stays(QUIET, cond).await
}

/// Reads the dead letters until at least `n` are there (or [`T`] passes), then returns them.
pub async fn dead_letters_at_least(app: &TestApp, n: usize) -> Vec<DeadLetter> {
    let deadline = Instant::now() + T;
    loop {
        let letters = app.dead_letters().await;
        if letters.len() >= n || Instant::now() >= deadline {
            return letters;
        }
    }
}

/// Seconds and milliseconds since the epoch, now.
pub fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// 16 bytes that differ per call (IVs and WeCom's random prefix).
pub fn random16() -> [u8; 16] {
    *uuid::Uuid::now_v7().as_bytes()
}

/// A role started beside a `TestApp` on its services (another dispatcher process, or one with
/// a config of its own). Stop it before the app's `shutdown`.
pub struct ExtraRole {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ExtraRole {
    /// A dispatcher with `config` on `app`'s broker and Redis (same prefix, same queues).
    pub fn dispatcher(app: &TestApp, config: Config) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatcher::run(
            Arc::new(config),
            app.services.clone(),
            stop.clone(),
        ));
        Self { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("role task").expect("role result");
    }
}

/// Runs `switchboard dlq …` on the app's config, in process; (success, stdout, stderr).
pub async fn dlq(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    use clap::Parser;
    use deadletters::cli::{run_with, Console, DlqCli};
    let cli = DlqCli::try_parse_from(std::iter::once("dlq").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (mut console, captured) = Console::in_memory("", false);
    let auditors = shared::config::AuditorConfig::from(&*app.config);
    let code = run_with(cli.command, &auditors, &mut console).await;
    (
        code == std::process::ExitCode::SUCCESS,
        captured.stdout(),
        captured.stderr(),
    )
}

/// The keys of the reply credentials the ingress kept aside (`shared::reply_credentials`).
pub async fn reply_credential_keys(app: &TestApp) -> Vec<String> {
    testkit::keys(&app.services.store)
        .await
        .into_iter()
        .filter(|k| k.contains(":replycred:"))
        .collect()
}
