//! Seals and the chained replay record against the real RabbitMQ and Redis, each test on its
//! own prefix: letters sealed by a role replay while forged and unsealed ones are refused with
//! the reason (and sent only when allowed); replays running at once link into one chain that
//! `dlq audit --verify` finds intact; a forged record is rejected and marks nothing replayed; a
//! record appended off the chain shows where the chain breaks; a crash between the steps of an
//! append does not fork it; and consumers refuse a message whose seal does not verify, which
//! the queue dead-letters as poison.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use clap::Parser;
use deadletters::audit::{ReplayRecord, RunState, Selection};
use deadletters::cli::{run_with, Console, DlqCli};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use shared::config::AuditorConfig;
use shared::envelope::{ChatType, Conversation, DeadLetter, InboundEvent, Reason, Stage};
use shared::seal::{Keyring, SEAL_HEADER};
use shared::{Config, Services};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const KEY: &str = "trail-test-key-0123456789abcdef0123456789";

struct Env {
    prefix: String,
    config: Config,
    auditors: AuditorConfig,
    services: Services,
    conn: lapin::Connection,
    close: CancellationToken,
}

impl Env {
    async fn new() -> Self {
        let prefix = format!("sbt-trail-{}", Uuid::now_v7().simple());
        let text = format!(
            "[broker]\nurl = \"{URL}\"\nprefix = \"{prefix}\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"{prefix}\"\n[audit]\nkey = \"{KEY}\"\n"
        );
        let config = Config::from_toml(&text).unwrap();
        let close = CancellationToken::new();
        let services = Services::start(&config, &prefix, close.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !services.broker.is_connected() {
            assert!(Instant::now() < deadline, "broker never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        Self {
            auditors: AuditorConfig::from(&config),
            prefix,
            config,
            services,
            conn,
            close,
        }
    }

    fn keyring(&self) -> Keyring {
        self.config.audit.keyring().unwrap()
    }

    async fn dlq(&self, args: &[&str]) -> (ExitCode, String, String) {
        let cli = DlqCli::try_parse_from(std::iter::once("dlq").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let (mut console, captured) = Console::in_memory("", false);
        let code = run_with(cli.command, &self.auditors, &mut console).await;
        (code, captured.stdout(), captured.stderr())
    }

    async fn json(&self, args: &[&str]) -> serde_json::Value {
        let (code, out, err) = self.dlq(args).await;
        assert_eq!(code, ExitCode::SUCCESS, "{args:?}: {out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Appends raw bytes to a stream with this seal header (none: unsealed).
    async fn raw(&self, queue: &str, body: &[u8], seal: Option<&str>) {
        let ch = self.conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let mut headers = FieldTable::default();
        if let Some(s) = seal {
            headers.insert(
                SEAL_HEADER.into(),
                AMQPValue::LongString(s.as_bytes().to_vec().into()),
            );
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let _ = ch.close(200, "done".into()).await;
    }

    async fn cleanup(self) {
        let ch = self.conn.create_channel().await.unwrap();
        self.services.broker.topology().delete(&ch).await.unwrap();
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
        let _ = self.conn.close(200, "done".into()).await;
    }
}

fn event(text: &str) -> InboundEvent {
    InboundEvent {
        id: Uuid::now_v7(),
        source: "crm".into(),
        platform: "bearer".into(),
        dedup_key: Uuid::now_v7().to_string(),
        kind: "message".into(),
        received_at: Utc::now(),
        conversation: Conversation {
            chat_id: "c".into(),
            chat_type: ChatType::Single,
            sender_id: "u".into(),
            sender_name: None,
            thread_id: None,
        },
        text: text.into(),
        reply: None,
        payload: serde_json::json!({}),
        attempts: vec![],
        replay_of: None,
    }
}

fn letter(text: &str) -> DeadLetter {
    DeadLetter::from_event(&event(text), Reason::Exhausted, "Dify answered 503")
}

fn seal_word(list: &serde_json::Value, id: Uuid) -> String {
    let item = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.to_string())
        .unwrap_or_else(|| panic!("{id} not listed: {list}"));
    item["seal"]["state"].as_str().unwrap_or("none").to_owned()
}

#[tokio::test]
async fn forged_and_unsealed_letters_are_refused_with_the_reason_and_sealed_ones_replay() {
    let env = Env::new().await;
    let stream = env.services.broker.topology().dead_letters();
    let sealed = letter("sealed by the worker");
    shared::stage::bury(&env.services.broker, &sealed)
        .await
        .unwrap();
    // Someone with broker access: a letter with a made-up seal, and one with none.
    let mut forged = letter("forged");
    forged.message["text"] = "send me to Dify".into();
    let bytes = shared::envelope::encode(&forged);
    env.raw(
        &stream,
        &bytes,
        Some(&format!("v1:{}:AAAA", env.keyring().key_id())),
    )
    .await;
    let unsealed = letter("from before the key");
    env.raw(&stream, &shared::envelope::encode(&unsealed), None)
        .await;

    let list = env.json(&["list", "--json"]).await;
    assert_eq!(seal_word(&list, sealed.id), "verified");
    assert_eq!(seal_word(&list, forged.id), "forged");
    assert_eq!(seal_word(&list, unsealed.id), "unsealed");

    let (code, out, err) = env.dlq(&["replay", "--all", "--yes"]).await;
    assert_ne!(code, ExitCode::SUCCESS, "refusals are failures: {out}{err}");
    assert!(out.contains("1 sent"), "{out}");
    assert!(
        err.contains(&format!("refused {}", forged.id)) && err.contains("forged"),
        "{err}"
    );
    assert!(
        err.contains(&format!("refused {}", unsealed.id)) && err.contains("no seal"),
        "{err}"
    );
    // What was sent carries a seal that verifies.
    let ch = env.conn.create_channel().await.unwrap();
    let queue = env.services.broker.topology().stage_queue(Stage::Work);
    let got = ch
        .basic_get(queue.as_str().into(), Default::default())
        .await
        .unwrap()
        .expect("the sealed letter was replayed");
    let seal = shared::consumer::seal_of(&got.delivery.properties);
    assert!(env
        .keyring()
        .verify(&got.delivery.data, seal.as_deref())
        .is_verified());
    let back: InboundEvent = shared::envelope::decode(&got.delivery.data).unwrap();
    assert_eq!(back.replay_of, Some(sealed.id));

    // An admin may send a letter from before the key, on record.
    let id = unsealed.id.to_string();
    let (code, out, err) = env
        .dlq(&["replay", &id, "--allow-unverified", "--yes"])
        .await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}{err}");
    assert!(out.contains("1 sent"), "{out}");
    env.cleanup().await;
}

/// A replay record as a forger would write it, claiming `ids` were replayed.
fn forged_record(ids: Vec<Uuid>, seq: u64, prev: &str) -> Vec<u8> {
    shared::envelope::encode(&ReplayRecord {
        replay_id: Uuid::now_v7(),
        part: 0,
        state: RunState::Done,
        actor: "mallory".into(),
        host: "h".into(),
        started_at: Utc::now(),
        at: Utc::now(),
        selection: Selection::Ids { ids: ids.clone() },
        force: false,
        rate: None,
        matched: ids.len() as u64,
        sent: ids.len() as u64,
        skipped: 0,
        failed: 0,
        sent_ids: ids,
        failures: vec![],
        via: None,
        seq: Some(seq),
        prev: Some(prev.into()),
    })
}

#[tokio::test]
async fn concurrent_replays_link_into_one_chain_and_forgeries_show() {
    let env = Env::new().await;
    let letters: Vec<DeadLetter> = (0..4).map(|i| letter(&format!("letter {i}"))).collect();
    for l in &letters {
        shared::stage::bury(&env.services.broker, l).await.unwrap();
    }
    let ids: Vec<String> = letters.iter().map(|l| l.id.to_string()).collect();
    // Two replays at once, from two connections, as two processes would.
    let (one, two) = (["replay", &ids[0], "--yes"], ["replay", &ids[1], "--yes"]);
    let (a, b) = tokio::join!(env.dlq(&one), env.dlq(&two));
    assert_eq!(
        (a.0, b.0),
        (ExitCode::SUCCESS, ExitCode::SUCCESS),
        "{a:?} {b:?}"
    );
    let report = env.json(&["audit", "--verify", "--json"]).await;
    assert_eq!(report["state"], "intact", "{report}");
    assert_eq!(report["start"]["at"], "genesis", "{report}");
    assert!(report["records"].as_u64().unwrap() >= 4, "{report}");
    let tip = report["tip"][0].as_u64().unwrap();
    let tip_digest = report["tip"][1].as_str().unwrap().to_owned();

    // A forger claims letter 2 was replayed: rejected, and letter 2 is not skipped.
    let replays = env.services.broker.topology().replays();
    let forged = forged_record(vec![letters[2].id], tip + 1, &tip_digest);
    env.raw(
        &replays,
        &forged,
        Some(&format!("v1:{}:AAAA", env.keyring().key_id())),
    )
    .await;
    let report = env.json(&["audit", "--verify", "--json"]).await;
    assert_eq!(report["state"], "intact", "{report}");
    assert_eq!(report["rejected"].as_array().unwrap().len(), 1, "{report}");
    let list = env.json(&["list", "--json"]).await;
    let replayed = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id && i["replayed"] == true)
    };
    assert!(replayed(&ids[0]) && !replayed(&ids[2]), "{list}");
    let (code, out, _) = env.dlq(&["replay", &ids[2], "--yes"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(
        out.contains("1 sent"),
        "the forged record made it skip: {out}"
    );

    // A record sealed with the key but not linked to the head breaks the chain there.
    let report = env.json(&["audit", "--verify", "--json"]).await;
    let tip = report["tip"][0].as_u64().unwrap();
    let off_chain = forged_record(vec![], tip + 1, &"ab".repeat(32));
    env.raw(&replays, &off_chain, Some(&env.keyring().seal(&off_chain)))
        .await;
    let (code, out, err) = env.dlq(&["audit", "--verify"]).await;
    assert_ne!(code, ExitCode::SUCCESS);
    assert!(out.contains("BROKEN at record"), "{out}");
    assert!(err.contains("chain is broken"), "{err}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_crash_between_the_steps_of_an_append_does_not_fork_the_chain() {
    let env = Env::new().await;
    let letters: Vec<DeadLetter> = (0..2).map(|i| letter(&format!("crash {i}"))).collect();
    for l in &letters {
        shared::stage::bury(&env.services.broker, l).await.unwrap();
    }
    let first = letters[0].id.to_string();
    assert_eq!(
        env.dlq(&["replay", &first, "--yes"]).await.0,
        ExitCode::SUCCESS
    );
    let report = env.json(&["audit", "--verify", "--json"]).await;
    let (tip, digest) = (
        report["tip"][0].as_u64().unwrap(),
        report["tip"][1].as_str().unwrap().to_owned(),
    );
    // An appender died after putting its record aside and appending it, before making it the
    // head: the record is in the stream and still pending in Redis.
    let record = forged_record(vec![], tip + 1, &digest);
    env.raw(
        &env.services.broker.topology().replays(),
        &record,
        Some(&env.keyring().seal(&record)),
    )
    .await;
    let head = env.services.store.key(&["audit", "trail"]);
    let mut c = env.services.store.conn().await.unwrap();
    let _: () = deadpool_redis::redis::cmd("HSET")
        .arg(&head)
        .arg("pending")
        .arg(&record)
        .query_async(&mut c)
        .await
        .unwrap();
    // The next replay finishes it (a copy, counted once) and links after it.
    let second = letters[1].id.to_string();
    assert_eq!(
        env.dlq(&["replay", &second, "--yes"]).await.0,
        ExitCode::SUCCESS
    );
    let report = env.json(&["audit", "--verify", "--json"]).await;
    assert_eq!(report["state"], "intact", "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    assert!(report["tip"][0].as_u64().unwrap() >= tip + 3, "{report}");
    env.cleanup().await;
}

#[tokio::test]
async fn consumers_refuse_a_message_whose_seal_does_not_verify() {
    let env = Env::new().await;
    let topology = env.services.broker.topology().clone();
    let queue = topology.stage_queue(Stage::Work);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let stop = CancellationToken::new();
    let spec = shared::consumer::ConsumerSpec {
        queue: queue.clone(),
        prefetch: 10,
        grace: Duration::from_secs(1),
        role: "worker",
    };
    let consuming = tokio::spawn(shared::consumer::consume(
        env.services.broker.clone(),
        spec,
        stop.clone(),
        move |d| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(d.data.clone());
                let _ = d.acker.ack(Default::default()).await;
            }
        },
    ));
    let forged = shared::envelope::encode(&event("published straight to the work queue"));
    env.raw(&queue, &forged, None).await;
    let genuine = shared::envelope::encode(&event("from the ingress"));
    env.services
        .broker
        .publish(&queue, &genuine, Default::default())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, genuine);
    // The forged one went to the dead-letter stream, as poison that does not verify.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let (code, out, _) = env.dlq(&["list", "--json", "--reason", "poison"]).await;
        if code == ExitCode::SUCCESS {
            break serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the refused message never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list[0]["seal"]["state"], "unsealed", "{list}");
    assert!(
        rx.try_recv().is_err(),
        "the forged message reached the handler"
    );
    stop.cancel();
    let _ = consuming.await;
    env.cleanup().await;
}
