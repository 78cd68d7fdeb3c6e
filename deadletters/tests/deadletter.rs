//! The dead-letter store against the real RabbitMQ, each test on its own prefix: dead letters
//! from both stages and a poison message appear with their history and stay put when read;
//! every filter selects what it says; export round-trips every field; replay republishes to
//! the stage with `replay_of` and no attempts, is on record, and is skipped the second time
//! unless forced; a replay after the receiver is fixed delivers exactly once through the real
//! dispatcher; and each failure is one line on stderr with a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration as Days, Utc};
use clap::Parser;
use deadletters::cli::{run_with, Console, DlqCli};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use shared::broker::{Broker, Publish};
use shared::envelope::{
    Answer, AnswerPayload, Attempt, ChatType, Conversation, DeadLetter, Destination, DispatchJob,
    InboundEvent, Reason, Stage, Timings,
};
use shared::topology::Topology;
use shared::{Config, Secret, Services};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{Fixture, AMQP_URL, REDIS_URL};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const URL: &str = AMQP_URL;

/// One test's broker: its prefix, config, a publishing broker and a raw connection. Dropping it
/// (also when the test fails) stops the broker client and removes the queues and keys.
struct Env {
    config: Config,
    topology: Topology,
    broker: Broker,
    conn: lapin::Connection,
    shutdown: CancellationToken,
    /// Last: removes the queues once everything above is dropped.
    _kit: Fixture,
}

/// What a `dlq` command printed and how it exited.
#[derive(Debug)]
struct Out {
    code: ExitCode,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == ExitCode::SUCCESS
    }
}

fn config(prefix: &str, url: &str, extra: &str) -> Config {
    Config::from_toml(&format!(
        r#"
        [broker]
        url = "{url}"
        prefix = "{prefix}"
        {extra}
        [redis]
        url = "{REDIS_URL}"
        prefix = "{prefix}"
        "#
    ))
    .unwrap()
}

impl Env {
    async fn new(broker_extra: &str) -> Self {
        let kit = Fixture::new("sbt-dlq");
        let config = config(kit.prefix(), URL, broker_extra);
        let topology = Topology::from_config(&config);
        kit.own_topology(&topology);
        let shutdown = CancellationToken::new();
        let broker = Broker::start(
            Secret::new(URL),
            "dlq-test",
            2,
            Duration::from_secs(5),
            topology.clone(),
            shutdown.clone(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !broker.is_connected() {
            assert!(Instant::now() < deadline, "broker never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        Self {
            config,
            topology,
            broker,
            conn,
            shutdown,
            _kit: kit,
        }
    }

    async fn dead(&self, dl: &DeadLetter) {
        self.broker
            .publish(
                &self.topology.dead_letters(),
                &shared::envelope::encode(dl),
                Publish {
                    message_id: Some(dl.id.to_string()),
                    ..Publish::default()
                },
            )
            .await
            .unwrap();
    }

    async fn dlq(&self, args: &[&str]) -> Out {
        dlq(&self.config, args, "", false).await
    }

    /// Takes the messages in a stage queue off it: waits for the `want` expected, then takes
    /// whatever else is there. A replay returns only once the broker confirmed every publish,
    /// so an empty get after that is the end, with no quiet period to wait out.
    async fn drain(&self, stage: Stage, want: usize) -> Vec<Vec<u8>> {
        let ch = self.conn.create_channel().await.unwrap();
        let queue = self.topology.stage_queue(stage);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        loop {
            let next = ch
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap();
            match next {
                Some(m) => {
                    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
                    got.push(m.delivery.data);
                }
                None if got.len() >= want => break,
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "only {} of {want} in {queue}",
                        got.len()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let _ = ch.close(200, "drained".into()).await;
        got
    }

    async fn depth(&self, stage: Stage) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                self.topology.stage_queue(stage).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "counted".into()).await;
        q.message_count()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn dlq(config: &Config, args: &[&str], input: &str, tty: bool) -> Out {
    let cli = DlqCli::try_parse_from(std::iter::once("dlq").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (mut console, captured) = Console::in_memory(input, tty);
    let auditors = shared::config::AuditorConfig::from(config);
    let code = run_with(cli.command, &auditors, &mut console).await;
    Out {
        code,
        stdout: captured.stdout(),
        stderr: captured.stderr(),
    }
}

fn json(out: &Out) -> serde_json::Value {
    assert!(out.ok(), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn attempt(ago_secs: i64, outcome: &str, status: Option<u16>, error: &str) -> Attempt {
    Attempt {
        at: Utc::now() - Days::seconds(ago_secs),
        outcome: outcome.into(),
        status,
        code: Some("E42".into()),
        error: Some(error.into()),
        excerpt: Some("{\"message\":\"nope\"}".into()),
        duration_ms: 120,
    }
}

fn conversation() -> Conversation {
    Conversation {
        chat_id: "chat-1".into(),
        chat_type: ChatType::Group,
        sender_id: "user-1".into(),
        sender_name: Some("Ann".into()),
        thread_id: None,
    }
}

fn event(source: &str, text: &str) -> InboundEvent {
    InboundEvent {
        id: Uuid::now_v7(),
        source: source.into(),
        platform: "bearer".into(),
        dedup_key: Uuid::now_v7().to_string(),
        kind: "message".into(),
        received_at: Utc::now(),
        conversation: conversation(),
        text: text.into(),
        reply: None,
        payload: serde_json::json!({"text": text, "n": [1, 2.5, null, true]}),
        attempts: vec![
            attempt(30, "retry", Some(503), "Dify busy"),
            attempt(20, "retry", Some(503), "Dify busy"),
            attempt(10, "retry", Some(504), "Dify timed out"),
        ],
        replay_of: None,
    }
}

fn job(source: &str, target: &str) -> DispatchJob {
    let ev = event(source, "hello");
    let destination = Destination::Target { id: target.into() };
    DispatchJob {
        id: DispatchJob::job_id_of_event(ev.id, &destination),
        destination,
        payload: AnswerPayload {
            event: None,
            event_id: ev.id,
            source: source.into(),
            platform: "bearer".into(),
            conversation: conversation(),
            query: "hello".into(),
            answer: Answer {
                text: "hi there".into(),
                conversation_id: Some("conv-1".into()),
                ..Answer::default()
            },
            timings: Timings::default(),
        },
        attempts: vec![attempt(5, "permanent", Some(410), "receiver gone")],
        replay_of: None,
        parts_left: None,
    }
}

fn work_letter(source: &str, reason: Reason, text: &str) -> DeadLetter {
    DeadLetter::from_event(
        &event(source, text),
        reason,
        "Dify answered 503 three times",
    )
}

fn deliver_letter(source: &str, target: &str, reason: Reason) -> DeadLetter {
    DeadLetter::from_job(&job(source, target), reason, "410 Gone")
}

/// Publishes an unreadable message to the work queue and keeps rejecting it (as a crashing
/// consumer would) until the broker gives up on it; returns how often it came.
async fn make_poison(env: &Env) -> usize {
    env.broker
        .publish(
            &env.topology.stage_queue(Stage::Work),
            b"\x00 not an envelope",
            Publish::default(),
        )
        .await
        .unwrap();
    let ch = env.conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            env.topology.stage_queue(Stage::Work).as_str().into(),
            "crasher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Reject every delivery until the broker has given up on the message: it is done when the
    // poison is in the store, not when deliveries pause for a while.
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_millis(100), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                deliveries += 1;
                d.reject(BasicRejectOptions { requeue: true })
                    .await
                    .unwrap();
                continue;
            }
            Ok(_) => panic!("the broker closed the consumer after {deliveries} deliveries"),
            Err(_) => {}
        }
        if deliveries > 0
            && env
                .dlq(&["list", "--json", "--reason", "poison"])
                .await
                .ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never gave up on the poison ({deliveries} deliveries)"
        );
    }
    let _ = ch.close(200, "crashed enough".into()).await;
    deliveries
}

#[tokio::test]
async fn dead_letters_from_both_stages_and_poison_appear_with_their_history_and_stay() {
    let env = Env::new("delivery_limit = 2").await;
    let work = work_letter("crm", Reason::Exhausted, "please call me");
    let deliver = deliver_letter("crm", "ops-robot", Reason::Permanent);
    env.dead(&work).await;
    env.dead(&deliver).await;
    let deliveries = make_poison(&env).await;
    assert_eq!(deliveries, 3, "a delivery limit of 2 gives up on the third");

    // The broker dead-letters at least once: poll until the poison shows.
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let out = env.dlq(&["list", "--json"]).await;
        let v = json(&out);
        if v.as_array().unwrap().len() == 3 {
            break v;
        }
        assert!(Instant::now() < deadline, "poison never appeared: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows = listed.as_array().unwrap();
    let by_id = |id: Uuid| {
        rows.iter()
            .find(|r| r["id"] == id.to_string())
            .unwrap_or_else(|| panic!("{id} not listed"))
    };
    let w = by_id(work.id);
    assert_eq!(
        (
            w["stage"].as_str(),
            w["reason"].as_str(),
            w["attempts"].as_u64()
        ),
        (Some("work"), Some("exhausted"), Some(3))
    );
    assert_eq!(w["replayed"], false);
    let d = by_id(deliver.id);
    assert_eq!(
        (
            d["stage"].as_str(),
            d["reason"].as_str(),
            d["target"].as_str()
        ),
        (Some("deliver"), Some("permanent"), Some("ops-robot"))
    );
    let poison = rows.iter().find(|r| r["reason"] == "poison").unwrap();
    assert_eq!(poison["stage"], "work");
    assert_eq!(poison["origin"], "broker");
    assert!(
        poison["error"].as_str().unwrap().contains("delivery_limit"),
        "{poison}"
    );
    let poison_id = poison["id"].as_str().unwrap().to_owned();

    // Nothing was consumed: a second read shows the very same records, ids included.
    assert_eq!(json(&env.dlq(&["list", "--json"]).await), listed);

    // The table says the same.
    let table = env.dlq(&["list"]).await;
    assert!(table.ok(), "{table:?}");
    for want in [
        &work.id.to_string(),
        &deliver.id.to_string(),
        "ops-robot",
        "poison",
    ] {
        assert!(
            table.stdout.contains(want),
            "{want} not in\n{}",
            table.stdout
        );
    }

    // `show` gives the history: every attempt as a timeline, and the original message.
    let shown = env.dlq(&["show", &work.id.to_string()]).await;
    assert!(shown.ok(), "{shown:?}");
    for want in [
        "reason         exhausted",
        "Attempts (3)",
        "retry 503 [E42]",
        "retry 504 [E42]",
        "Dify timed out",
        "gave up: exhausted",
        "please call me",
    ] {
        assert!(
            shown.stdout.contains(want),
            "{want:?} not in\n{}",
            shown.stdout
        );
    }
    let shown = env.dlq(&["show", &poison_id]).await;
    assert!(shown.ok(), "{shown:?}");
    assert!(
        shown.stdout.contains("dead-lettered by the broker"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("not an envelope"), "{}", shown.stdout);
    let shown = env.dlq(&["show", &deliver.id.to_string(), "--json"]).await;
    let v = json(&shown);
    assert_eq!(
        shared::envelope::decode::<DeadLetter>(shown.stdout.as_bytes()).unwrap(),
        deliver
    );
    assert_eq!(v["store"]["origin"], "envelope");

    // Stats count by each dimension.
    let stats = json(&env.dlq(&["stats", "--json"]).await);
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["by_reason"]["poison"], 1);
    assert_eq!(stats["by_stage"]["work"], 2);
    assert_eq!(stats["by_target"]["ops-robot"], 1);
    assert_eq!(stats["by_source"]["crm"], 2);
    let text = env.dlq(&["stats"]).await;
    assert!(
        text.stdout.starts_with("3 dead letter(s)"),
        "{}",
        text.stdout
    );
}

#[tokio::test]
async fn each_filter_selects_what_it_names() {
    let env = Env::new("").await;
    let mut old = work_letter("crm", Reason::Exhausted, "an old one");
    old.dead_at = Utc::now() - Days::days(3);
    let crm_ops = deliver_letter("crm", "ops-robot", Reason::Exhausted);
    let web_crm = deliver_letter("web", "crm-hook", Reason::Permanent);
    let mut expired = deliver_letter("web", "reply", Reason::Expired);
    expired.error = "DingTalk session webhook EXPIRED at 10:00".into();
    let web_work = work_letter("web", Reason::Permanent, "refund order 4711");
    for dl in [&old, &crm_ops, &web_crm, &expired, &web_work] {
        env.dead(dl).await;
    }
    let s = |d: &DeadLetter| d.id.to_string();
    let mut cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (
            vec![],
            vec![s(&old), s(&crm_ops), s(&web_crm), s(&expired), s(&web_work)],
        ),
        (vec!["--source", "crm"], vec![s(&old), s(&crm_ops)]),
        (
            vec!["--source", "web,crm"],
            vec![s(&old), s(&crm_ops), s(&web_crm), s(&expired), s(&web_work)],
        ),
        (vec!["--target", "ops-robot"], vec![s(&crm_ops)]),
        (
            vec!["--target", "reply", "--target", "crm-hook"],
            vec![s(&web_crm), s(&expired)],
        ),
        (vec!["--stage", "work"], vec![s(&old), s(&web_work)]),
        (
            vec!["--stage", "deliver", "--source", "web"],
            vec![s(&web_crm), s(&expired)],
        ),
        (vec!["--reason", "exhausted"], vec![s(&old), s(&crm_ops)]),
        (
            vec!["--reason", "expired,permanent"],
            vec![s(&web_crm), s(&expired), s(&web_work)],
        ),
        (
            vec!["--since", "1d"],
            vec![s(&crm_ops), s(&web_crm), s(&expired), s(&web_work)],
        ),
        (vec!["--until", "1d"], vec![s(&old)]),
        (vec!["--grep", "expired AT"], vec![s(&expired)]),
        (vec!["--grep", "4711"], vec![s(&web_work)]),
    ];
    for (args, want) in cases.iter_mut() {
        let mut full = vec!["list", "--json"];
        full.extend(args.iter());
        want.sort();
        let got = ids(&json(&env.dlq(&full).await));
        assert_eq!(&got, want, "dlq {}", full.join(" "));
    }
    // Export and stats take the same filters.
    let out = env.dlq(&["export", "--reason", "exhausted"]).await;
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    let stats = json(&env.dlq(&["stats", "--json", "--source", "web"]).await);
    assert_eq!(stats["total"], 3);
    // --limit keeps the newest.
    let limited = json(&env.dlq(&["list", "--json", "--limit", "1"]).await);
    assert_eq!(ids(&limited), vec![s(&web_work)]);
}

#[tokio::test]
async fn export_round_trips_every_field() {
    let env = Env::new("").await;
    let mut work = work_letter(
        "crm",
        Reason::Exhausted,
        "ünïcode ✓ and \"quotes\"\nnew line",
    );
    work.first_attempt_at = Some(Utc::now() - Days::seconds(60));
    let deliver = deliver_letter("crm", "ops-robot", Reason::Permanent);
    env.dead(&work).await;
    env.dead(&deliver).await;

    let dir = std::env::temp_dir().join(format!("dlq-export-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out.jsonl");
    let out = env.dlq(&["export", "--out", file.to_str().unwrap()]).await;
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        format!("exported 2 dead letter(s) to {}", file.display())
    );
    // Readable by its owner only, from its creation; an existing file is not overwritten.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let again = env.dlq(&["export", "--out", file.to_str().unwrap()]).await;
    assert!(!again.ok(), "{again:?}");
    assert!(again.stderr.contains("exists"), "{again:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let back: Vec<DeadLetter> = text
        .lines()
        .map(|l| shared::envelope::decode::<DeadLetter>(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(back, vec![work.clone(), deliver.clone()]);
    // Stdout gives the same lines.
    let stdout = env.dlq(&["export"]).await;
    assert_eq!(stdout.stdout, text);
    // An export that matches nothing leaves no file behind.
    let none = dir.join("none.jsonl");
    let out = env
        .dlq(&[
            "export",
            "--source",
            "nobody",
            "--out",
            none.to_str().unwrap(),
        ])
        .await;
    assert!(!out.ok());
    assert!(!none.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn replay_goes_back_to_the_stage_once_on_record_and_again_only_when_forced() {
    let env = Env::new("").await;
    let work = work_letter("crm", Reason::Exhausted, "replay me");
    let deliver = deliver_letter("crm", "ops-robot", Reason::Exhausted);
    let other = deliver_letter("web", "crm-hook", Reason::Permanent);
    for dl in [&work, &deliver, &other] {
        env.dead(dl).await;
    }

    // A dry run shows what would go and sends nothing, records nothing.
    let dry = env
        .dlq(&["replay", "--reason", "exhausted", "--dry-run"])
        .await;
    assert!(dry.ok(), "{dry:?}");
    assert!(
        dry.stdout.contains("would replay 2 dead letter(s)"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains(&work.id.to_string()));
    // Without a terminal and without --yes: refused, one line, nothing sent.
    let refused = env.dlq(&["replay", "--reason", "exhausted"]).await;
    assert_eq!(refused.code, ExitCode::from(5), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "{refused:?}");
    assert!(refused.stderr.contains("--yes"));
    // A person who says no sends nothing either.
    let declined = dlq(
        &env.config,
        &["replay", "--reason", "exhausted"],
        "n\n",
        true,
    )
    .await;
    assert_eq!(declined.code, ExitCode::from(5), "{declined:?}");
    assert!(declined.stderr.contains("[y/N]"));
    assert_eq!(
        (
            env.depth(Stage::Work).await,
            env.depth(Stage::Deliver).await
        ),
        (0, 0)
    );
    let audit = json(&env.dlq(&["audit", "--json"]).await);
    assert_eq!(
        audit.as_array().unwrap().len(),
        0,
        "dry runs and refusals are not replays"
    );

    // The replay, confirmed by a person at a terminal.
    let out = dlq(
        &env.config,
        &["replay", "--reason", "exhausted", "--actor", "alice"],
        "y\n",
        true,
    )
    .await;
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("2 sent in "), "{}", out.stdout);
    assert!(out.stdout.contains("0 skipped"), "{}", out.stdout);
    let got = env.drain(Stage::Work, 1).await;
    assert_eq!(got.len(), 1);
    let ev: InboundEvent = shared::envelope::decode(&got[0]).unwrap();
    assert_eq!((ev.replay_of, ev.attempts.len()), (Some(work.id), 0));
    assert_eq!(ev.text, "replay me");
    let got = env.drain(Stage::Deliver, 1).await;
    assert_eq!(got.len(), 1);
    let j: DispatchJob = shared::envelope::decode(&got[0]).unwrap();
    assert_eq!((j.replay_of, j.attempts.len()), (Some(deliver.id), 0));
    assert_eq!(j.id, job_id_of(&deliver));

    // On record: who, what, how many; and `list` joins it.
    let audit = json(&env.dlq(&["audit", "--json"]).await);
    let runs = audit.as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["actor"], "alice");
    assert_eq!(run["state"], "done");
    assert_eq!(
        (run["matched"].as_u64(), run["sent"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(run["selection"]["description"], "--reason exhausted");
    let replay_id = run["replay_id"].as_str().unwrap().to_owned();
    let detail = env.dlq(&["audit", &replay_id]).await;
    assert!(detail.stdout.contains(&work.id.to_string()), "{detail:?}");
    let table = env.dlq(&["audit"]).await;
    assert!(table.stdout.contains("alice"), "{table:?}");
    let listed = json(&env.dlq(&["list", "--json"]).await);
    for row in listed.as_array().unwrap() {
        let replayed = row["id"] == work.id.to_string() || row["id"] == deliver.id.to_string();
        assert_eq!(row["replayed"], replayed, "{row}");
        if replayed {
            assert_eq!(row["replays"][0]["actor"], "alice");
            assert_eq!(row["replays"][0]["replay_id"], replay_id.as_str());
        }
    }

    // The same letters again: skipped, nothing sent, and that attempt is on record too.
    let again = env.dlq(&["replay", "--reason", "exhausted", "--yes"]).await;
    assert!(again.ok(), "{again:?}");
    assert!(
        again.stdout.contains("0 sent, 2 skipped"),
        "{}",
        again.stdout
    );
    assert_eq!(
        (
            env.depth(Stage::Work).await,
            env.depth(Stage::Deliver).await
        ),
        (0, 0)
    );
    // By id, too.
    let again = env.dlq(&["replay", &work.id.to_string(), "--yes"]).await;
    assert!(again.stdout.contains("0 sent, 1 skipped"), "{again:?}");

    // Forced, at a pace: they go again.
    let started = Instant::now();
    let forced = env
        .dlq(&[
            "replay",
            "--reason",
            "exhausted",
            "--force",
            "--yes",
            "--rate",
            "4/s",
        ])
        .await;
    assert!(forced.ok(), "{forced:?}");
    assert!(
        forced.stdout.contains("2 sent in ") && forced.stdout.contains(", 0 skipped"),
        "{}",
        forced.stdout
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "--rate 4/s spaces two by 250ms"
    );
    assert_eq!(env.drain(Stage::Work, 1).await.len(), 1);
    assert_eq!(env.drain(Stage::Deliver, 1).await.len(), 1);
    let audit = json(&env.dlq(&["audit", "--json"]).await);
    let runs = audit.as_array().unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[3]["force"], true);
    assert_eq!(runs[3]["rate"], "4/1s");
    let row = json(&env.dlq(&["list", "--json", "--stage", "work"]).await);
    assert_eq!(row[0]["replays"].as_array().unwrap().len(), 2);
}

fn job_id_of(dl: &DeadLetter) -> Uuid {
    serde_json::from_value::<DispatchJob>(dl.message.clone())
        .unwrap()
        .id
}

#[tokio::test]
async fn failures_are_one_line_and_a_non_zero_exit() {
    let env = Env::new("").await;
    env.dead(&work_letter("crm", Reason::Exhausted, "x")).await;
    let unknown = Uuid::now_v7().to_string();
    let cases: Vec<(Vec<&str>, u8, &str)> = vec![
        (vec!["show", &unknown], 4, "no dead letter with id"),
        (
            vec!["replay", &unknown, "--yes"],
            4,
            "no dead letter with id",
        ),
        (
            vec!["list", "--source", "nobody"],
            4,
            "no dead letter matches --source nobody",
        ),
        (
            vec!["stats", "--reason", "poison"],
            4,
            "no dead letter matches --reason poison",
        ),
        (
            vec!["replay", "--target", "nobody", "--yes"],
            4,
            "no dead letter matches",
        ),
        (vec!["replay", "--yes"], 2, "say which dead letters"),
        (vec!["list", "--since", "yesterday"], 2, "--since"),
        (vec!["audit", &unknown], 4, "no replay with id"),
        // A read that starts past the stream's end still ends (at its marker).
        (
            vec!["list", "--since", "2099-01-01"],
            4,
            "no dead letter matches --since 2099",
        ),
    ];
    for (args, code, want) in cases {
        let out = env.dlq(&args).await;
        assert_eq!(out.code, ExitCode::from(code), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(want), "{args:?}: {out:?}");
    }

    // A broker that is not there: one line naming where, never the password.
    let closed = config("sbt-dlq-none", "amqp://guest:hunter2@127.0.0.1:1/%2f", "");
    for args in [
        vec!["list"],
        vec!["audit"],
        vec!["replay", "--all", "--yes"],
    ] {
        let out = dlq(&closed, &args, "", false).await;
        assert_eq!(out.code, ExitCode::from(3), "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            out.stderr
                .contains("cannot reach the broker at 127.0.0.1:1"),
            "{out:?}"
        );
        assert!(!out.stderr.contains("hunter2"));
    }
    // A prefix with no store.
    let absent = config(
        &format!("sbt-dlq-absent-{}", Uuid::now_v7().simple()),
        URL,
        "",
    );
    let out = dlq(&absent, &["list"], "", false).await;
    assert_eq!(out.code, ExitCode::from(3), "{out:?}");
    assert!(out.stderr.contains("dead-letters` stream"), "{out:?}");
}

/// Whether a Redis key exists (false while Redis cannot be reached).
async fn exists(services: &Services, key: &str) -> bool {
    let Ok(mut c) = services.store.conn().await else {
        return false;
    };
    deadpool_redis::redis::cmd("EXISTS")
        .arg(key)
        .query_async::<bool>(&mut c)
        .await
        .unwrap_or(false)
}

/// Messages waiting anywhere in the deliver stage: its queue and its delay queues.
async fn waiting_to_deliver(ch: &lapin::Channel, topology: &Topology) -> u32 {
    let deliver = topology.stage_queue(Stage::Deliver);
    let mut waiting = 0;
    for queue in topology.all_queues() {
        if !queue.starts_with(&deliver) {
            continue;
        }
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{queue}: {e}"));
        waiting += q.message_count();
    }
    waiting
}

const OUT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[tokio::test]
async fn a_replay_after_the_receiver_is_fixed_delivers_exactly_once() {
    let receiver = standins::receiver::Receiver::start(Some(OUT_SECRET))
        .await
        .unwrap();
    receiver.set_down(true);
    let kit = Fixture::new("sbt-dlq");
    let prefix = kit.prefix();
    let config = Arc::new(
        Config::from_toml(&format!(
            r#"
            [broker]
            url = "{URL}"
            prefix = "{prefix}"
            [redis]
            url = "{REDIS_URL}"
            prefix = "{prefix}"
            [dispatcher]
            retry_schedule = ["0s", "100ms", "200ms"]
            allow_private = ["127.0.0.0/8"]
            request_timeout = "5s"
            shutdown_grace = "5s"
            [[targets]]
            id = "crm"
            kind = "webhook"
            url = "{}"
            secret = "{OUT_SECRET}"
            "#,
            receiver.url("/answers")
        ))
        .unwrap(),
    );
    let close = CancellationToken::new();
    let stop = CancellationToken::new();
    let services = Services::start(&config, prefix, close.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !services.broker.is_connected() {
        assert!(Instant::now() < deadline, "broker never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = tokio::spawn(dispatcher::run(
        config.clone(),
        services.clone(),
        stop.clone(),
    ));
    let topology = services.broker.topology().clone();
    kit.own_topology(&topology);
    let mut j = job("crm-in", "crm");
    j.attempts.clear();
    services
        .broker
        .publish(
            &topology.stage_queue(Stage::Deliver),
            &shared::envelope::encode(&j),
            Publish::default(),
        )
        .await
        .unwrap();

    // The receiver is down: the job exhausts its schedule and becomes a dead letter.
    let deadline = Instant::now() + Duration::from_secs(20);
    let letter = loop {
        let out = dlq(&config, &["list", "--json", "--target", "crm"], "", false).await;
        if out.ok() {
            break json(&out)[0].clone();
        }
        assert!(Instant::now() < deadline, "no dead letter: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter["reason"], "exhausted", "{letter}");
    assert_eq!(receiver.accepted(), 0);

    // Fixed; replayed: delivered once.
    receiver.set_down(false);
    let out = dlq(&config, &["replay", "--target", "crm", "--yes"], "", false).await;
    assert!(out.ok(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while receiver.accepted() < 1 {
        assert!(Instant::now() < deadline, "the replay was never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled, not just posted: the dispatcher marks a job delivered before it acks it, and
    // posts no copy of it after that.
    let delivered = services.store.key(&["delivered", &j.id.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !exists(&services, &delivered).await {
        assert!(Instant::now() < deadline, "the delivery was never marked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.accepted(), 1);
    let got = &receiver.received()[0];
    assert!(got.signature_ok);
    assert_eq!(got.body["event_id"], j.payload.event_id.to_string());
    // Still one dead letter (the replay did not fail again), now marked replayed.
    let listed = json(&dlq(&config, &["list", "--json"], "", false).await);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["replayed"], true);

    // Again without --force: skipped. With --force: sent, but the dispatcher knows the job
    // was delivered and does not post it twice.
    let again = dlq(&config, &["replay", "--target", "crm", "--yes"], "", false).await;
    assert!(again.stdout.contains("0 sent, 1 skipped"), "{again:?}");
    let forced = dlq(
        &config,
        &["replay", "--target", "crm", "--yes", "--force"],
        "",
        false,
    )
    .await;
    assert!(forced.stdout.contains("1 sent"), "{forced:?}");
    // Processed, not just sent: once nothing waits at the deliver stage the dispatcher holds
    // the copy, and stopping it lets what it holds finish. A copy it posted would be at the
    // receiver by then; one it parked or left unacked would be waiting again.
    let ch = services.broker.consumer_channel(&close).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while waiting_to_deliver(&ch, &topology).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the forced replay was never taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = running.await;
    assert_eq!(
        waiting_to_deliver(&ch, &topology).await,
        0,
        "the forced replay was acked"
    );
    assert_eq!(receiver.accepted(), 1, "delivered exactly once");
    let runs = json(&dlq(&config, &["audit", "--json"], "", false).await);
    assert_eq!(runs.as_array().unwrap().len(), 3);

    close.cancel();
    receiver.shutdown();
}
