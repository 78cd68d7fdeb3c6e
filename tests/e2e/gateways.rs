//! What the e2e tests of the connector's protocols share (`slack_socket`, `feishu_ws`): a
//! pipeline with the connector in-process beside the platform's gateway stand-in and the API
//! stand-in that takes the replies; waiting for the connection to be up, for the replies, and
//! for the broker to be away; and two connector processes, one killed under load.
#![allow(dead_code)]

use crate::common::{wait_for, Options, TestApp};
use crate::kit::{eventually, quiet, T};
use standins::platforms::PlatformStandin;
use standins::proxy::Proxy;

/// The `[connector]` section of these tests: quick heartbeats, reconnects and refusal retries.
pub const CONNECTOR: &str = r#"
[connector]
heartbeat = "1s"
backoff_initial = "50ms"
backoff_max = "1s"
refused_retry = "1s"
open_timeout = "3s"
"#;

/// A gateway stand-in, as these tests see it.
pub trait Gateway {
    fn connections(&self) -> usize;
    /// Events pushed and not acknowledged yet.
    fn unacked(&self) -> usize;
    fn shutdown(&self);
}

impl Gateway for standins::slack_socket::SlackSocketStandin {
    fn connections(&self) -> usize {
        self.connections()
    }
    fn unacked(&self) -> usize {
        self.unacked()
    }
    fn shutdown(&self) {
        self.shutdown()
    }
}

impl Gateway for standins::feishu_ws::FeishuWsStandin {
    fn connections(&self) -> usize {
        self.connections()
    }
    fn unacked(&self) -> usize {
        self.unacked()
    }
    fn shutdown(&self) {
        self.shutdown()
    }
}

/// The pipeline, the gateway, and the API stand-in whose `api` takes the replies.
pub struct Linked<G: Gateway> {
    pub app: TestApp,
    pub gw: G,
    pub p: PlatformStandin,
    pub api: &'static str,
}

impl<G: Gateway> Linked<G> {
    /// Spawns the pipeline with the connector in-process and `extra` config (its source).
    pub async fn spawn(
        gw: G,
        p: PlatformStandin,
        api: &'static str,
        extra: String,
        broker_proxy: bool,
    ) -> Self {
        let app = TestApp::spawn(Options {
            extra,
            connector: true,
            broker_proxy,
            ..Options::default()
        })
        .await;
        Self { app, gw, p, api }
    }

    /// The pipeline without the in-process connector: the test runs connector processes
    /// ([`TestApp::spawn_child`]).
    pub async fn spawn_without_connector(
        gw: G,
        p: PlatformStandin,
        api: &'static str,
        extra: String,
    ) -> Self {
        let app = TestApp::spawn(Options {
            extra,
            ..Options::default()
        })
        .await;
        Self { app, gw, p, api }
    }

    /// Two connector processes hold the source; `push(i)` pushes event `i` (its text
    /// `load {i}`) and the first process is SIGKILLed halfway: every event is acknowledged (the
    /// killed one's unacknowledged events come again on the other connection) and answered
    /// exactly once.
    pub async fn two_connectors_one_killed_under_load(&self, n: usize, push: impl Fn(usize)) {
        let mut first = self.app.spawn_child("connector");
        let _second = self.app.spawn_child("connector");
        let gw = &self.gw;
        eventually("two connections at the gateway", || gw.connections() >= 2).await;
        for i in 0..n {
            push(i);
            if i == n / 2 {
                first.kill9().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        eventually("every event acknowledged", || gw.unacked() == 0).await;
        self.replies(n).await;
        assert!(quiet(|| self.replied() == n).await);
        let texts: Vec<String> = (0..n).map(|i| format!("load {i}")).collect();
        assert_eq!(self.texts(), echoes(&texts), "each answered exactly once");
    }

    /// A connection at the gateway, and every slot up in `/readyz`.
    pub async fn up(&self) {
        let gw = &self.gw;
        eventually("a connection at the gateway", || gw.connections() >= 1).await;
        let links = self.app.links.clone();
        eventually("the connection up in /readyz", || links.all_up()).await;
    }

    pub async fn replies(&self, n: usize) {
        let (p, api) = (&self.p, self.api);
        eventually(&format!("{n} replies"), || p.messages_to(api).len() >= n).await;
    }

    /// How many replies came.
    pub fn replied(&self) -> usize {
        self.p.messages_to(self.api).len()
    }

    /// Every reply's text, sorted.
    pub fn texts(&self) -> Vec<String> {
        let mut texts = self.p.texts(self.api);
        texts.sort();
        texts
    }

    /// Cuts the broker away (the app was spawned with `broker_proxy`) and waits until the
    /// roles notice; `restore` the proxy to bring it back.
    pub async fn broker_away(&self) -> Proxy {
        let proxy = self.app.proxy.clone().expect("spawned with broker_proxy");
        proxy.cut();
        let broker = self.app.services.broker.clone();
        wait_for("the broker connection to drop", T, || {
            let b = broker.clone();
            async move { !b.is_connected() }
        })
        .await;
        proxy
    }

    pub async fn stop(self) {
        self.app.shutdown().await;
        self.p.shutdown();
        self.gw.shutdown();
    }
}

/// The replies the Dify stand-in gives to `texts`, sorted.
pub fn echoes(texts: &[String]) -> Vec<String> {
    let mut want: Vec<String> = texts.iter().map(|t| format!("echo: {t}")).collect();
    want.sort();
    want
}
