//! One console per test against the real RabbitMQ and Redis: its own prefix, an audit key,
//! three users and three API tokens (one per role), a sealing broker to bury letters with, the
//! console on an OS-chosen port, and cleanup of every queue and key afterwards.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use shared::config::AuditorConfig;
use shared::envelope::{ChatType, Conversation, DeadLetter, InboundEvent, Reason};
use shared::{Config, Services};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use switchboard_console::auth::password::{hash_password, new_token};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const KEY: &str = "console-test-key-0123456789abcdef01234567";
pub const PASSWORD: &str = "correct horse battery";

/// (user, role) of the configured logins; each has [`PASSWORD`].
pub const USERS: [(&str, &str); 3] = [("vera", "viewer"), ("rita", "replayer"), ("adam", "admin")];

/// One argon2 hash for every test (hashing is slow on purpose).
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(PASSWORD).unwrap())
}

pub struct TestConsole {
    pub prefix: String,
    pub config: Config,
    pub services: Services,
    pub addr: SocketAddr,
    /// API token per role name.
    pub tokens: Vec<(String, String)>,
    close: CancellationToken,
    stop: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestConsole {
    /// Starts a console; `extra` is appended to the config (targets, dispatcher settings).
    pub async fn start(extra: &str) -> Self {
        let prefix = format!("sbt-console-{}", Uuid::now_v7().simple());
        let mut tokens = Vec::new();
        let mut text = format!(
            "[broker]\nurl = \"{URL}\"\nprefix = \"{prefix}\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"{prefix}\"\n[audit]\nkey = \"{KEY}\"\n[console]\nlisten = \"127.0.0.1:0\"\nsecure_cookies = false\nlogin_attempts = 3\n"
        );
        for (user, role) in USERS {
            text.push_str(&format!(
                "[[console.users]]\nname = \"{user}\"\nrole = \"{role}\"\npassword_hash = \"{}\"\n",
                password_hash()
            ));
            let (token, sha) = new_token();
            text.push_str(&format!("[[console.tokens]]\nname = \"{role}-script\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n"));
            tokens.push((role.to_owned(), token));
        }
        text.push_str(extra);
        let config = Config::from_toml(&text).unwrap();
        let close = CancellationToken::new();
        let services = Services::start(&config, &prefix, close.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !services.broker.is_connected() {
            assert!(Instant::now() < deadline, "broker never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let auditors = Arc::new(AuditorConfig::from(&config));
        let running = tokio::spawn(switchboard_console::run(auditors, listener, stop.clone()));
        let c = Self {
            prefix,
            config,
            services,
            addr,
            tokens,
            close,
            stop,
            running,
        };
        c.wait_ready().await;
        c
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token(&self, role: &str) -> &str {
        &self.tokens.iter().find(|(r, _)| r == role).unwrap().1
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(self.url("/readyz")).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the console never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Buries a letter through the sealing broker, as a stage would.
    pub async fn bury(&self, dl: &DeadLetter) {
        shared::stage::bury(&self.services.broker, dl)
            .await
            .unwrap();
    }

    /// Waits until the console's index has `n` letters.
    pub async fn wait_indexed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            let v: serde_json::Value = client
                .get(self.url("/api/letters?limit=1"))
                .bearer_auth(self.token("viewer"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["total"].as_u64().unwrap_or(0) as usize >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the index never reached {n} letters: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the console's record shows a run with this id in `state`.
    pub async fn wait_run(&self, id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            let r = client
                .get(self.url(&format!("/api/replays/{id}")))
                .bearer_auth(self.token("viewer"))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                let v: serde_json::Value = r.json().await.unwrap();
                if v["state"] == state && v["running_here"] == false {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replay {id} never reached {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.running.await;
        let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        self.services.broker.topology().delete(&ch).await.unwrap();
        let _ = conn.close(200, "done".into()).await;
        if let Ok(mut c) = self.services.store.conn().await {
            let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = deadpool_redis::redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut c)
                    .await;
            }
        }
        self.close.cancel();
    }
}

pub fn event(source: &str, text: &str) -> InboundEvent {
    InboundEvent {
        id: Uuid::now_v7(),
        source: source.into(),
        platform: "slack".into(),
        dedup_key: format!("msg-{}", Uuid::now_v7().simple()),
        kind: "message".into(),
        received_at: Utc::now(),
        conversation: Conversation {
            chat_id: "C1".into(),
            chat_type: ChatType::Group,
            sender_id: "U1".into(),
            sender_name: None,
            thread_id: None,
        },
        text: text.into(),
        reply: None,
        payload: serde_json::json!({"token": "slack-verification-token", "event": {"text": text}}),
        attempts: vec![],
        replay_of: None,
    }
}

pub fn work_letter(source: &str, text: &str, reason: Reason) -> DeadLetter {
    DeadLetter::from_event(
        &event(source, text),
        reason,
        "Dify answered 503 three times",
    )
}
