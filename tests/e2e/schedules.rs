//! Schedules: three scheduler processes (children of the built binary) on a one-second
//! schedule fire every tick exactly once, also while one of them is SIGKILLed; the briefing:
//! a tick runs a workflow app (blocking) with the schedule's inputs, and its output reaches a
//! Rocket.Chat incoming webhook; `schedule run` and `schedule list` as an operator uses them.
use crate::common::{wait_for, Options, TestApp};
use chrono::{DateTime, Utc};
use lapin::options::BasicGetOptions;
use shared::envelope::{decode, InboundEvent};
use shared::topology::Stage;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Takes every event waiting on the work queue (nothing consumes it in these tests).
async fn take_events(app: &TestApp) -> Vec<InboundEvent> {
    let ch = app
        .services
        .broker
        .consumer_channel(&CancellationToken::new())
        .await
        .expect("channel");
    let queue = app.services.broker.topology().stage_queue(Stage::Work);
    let mut events = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic_get")
    {
        events.push(decode::<InboundEvent>(&m.delivery.data).expect("an event"));
    }
    let _ = ch.close(200, "ok".into()).await;
    events
}

fn tick_of(e: &InboundEvent) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(e.payload["tick"].as_str().expect("tick"))
        .expect("rfc3339")
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_schedulers_fire_each_tick_once_even_when_one_is_killed() {
    let app = TestApp::spawn(Options {
        worker: false,
        dispatcher: false,
        extra: r#"
[scheduler]
poll = "100ms"
claim_lease = "2s"
grace = "30s"

[[schedules]]
id = "every-second"
cron = "* * * * * *"
timezone = "Europe/Berlin"
app = "support"
"#
        .into(),
        ..Default::default()
    })
    .await;
    let mut children: Vec<_> = (0..3).map(|_| app.spawn_child("scheduler")).collect();
    let queue = app.services.broker.topology().stage_queue(Stage::Work);
    wait_for("the first tick", Duration::from_secs(30), || {
        let (app, q) = (&app, queue.clone());
        async move { app.queue_len(&q).await > 0 }
    })
    .await;
    // The measured window: 20 whole seconds from the next second but one.
    let now = Utc::now();
    let start = DateTime::from_timestamp(now.timestamp() + 2, 0).expect("time");
    let end = start + chrono::Duration::seconds(20);
    let at = |t: DateTime<Utc>| {
        tokio::time::Instant::now() + (t - Utc::now()).to_std().unwrap_or_default()
    };
    // Mid-way, one of the three dies on the spot.
    tokio::time::sleep_until(at(start + chrono::Duration::milliseconds(10_300))).await;
    children[0].kill9().await;
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        events.extend(take_events(&app).await);
        let in_window = events
            .iter()
            .filter(|e| (start..end).contains(&tick_of(e)))
            .count();
        if in_window >= 20 && Utc::now() > end {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {in_window} of the window's 20 ticks fired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in &children[1..] {
        child.terminate();
    }
    for child in &mut children[1..] {
        assert!(child.wait(Duration::from_secs(20)).await.success());
    }
    events.extend(take_events(&app).await);
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *per_key.entry(e.dedup_key.as_str()).or_default() += 1;
        assert_eq!(
            (e.platform.as_str(), e.source.as_str()),
            ("schedule", "every-second")
        );
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "ticks published more than once: {twice:?}"
    );
    let mut ticks: Vec<_> = events.iter().map(tick_of).collect();
    ticks.sort();
    let in_window = ticks.iter().filter(|t| (start..end).contains(*t)).count();
    assert_eq!(
        in_window, 20,
        "one event per second of the window: {ticks:?}"
    );
    // And no tick missing anywhere between the first and the last.
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::seconds(1), "{ticks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_morning_briefing_runs_a_workflow_and_posts_its_output_to_rocketchat() {
    let chat = standins::platforms::PlatformStandin::start()
        .await
        .expect("rocket.chat stand-in");
    let app = TestApp::spawn(Options {
        extra: format!(
            r#"
[[apps]]
id = "briefing"
base_url = "{{dify}}"
api_key = "app-test"
kind = "workflow"
response_mode = "blocking"

[[targets]]
id = "family-rocketchat"
kind = "rocketchat"
url = "{rocket}"

[scheduler]
poll = "100ms"

[[schedules]]
id = "morning-briefing"
cron = "*/2 * * * * *"
timezone = "Asia/Shanghai"
app = "briefing"
inputs = {{ city = "Shanghai", day = "{{{{ date }}}} ({{{{ weekday }}}})" }}
user = "family"
targets = ["family-rocketchat"]
"#,
            rocket = chat.rocketchat_url()
        ),
        ..Default::default()
    })
    .await;
    let scheduler = app.spawn_child("scheduler");
    wait_for(
        "the briefing in Rocket.Chat",
        Duration::from_secs(30),
        || {
            let chat = &chat;
            async move { !chat.messages_to("rocketchat").is_empty() }
        },
    )
    .await;
    scheduler.terminate();
    let records = app.dify.records();
    let run = records.first().expect("a Dify call");
    assert_eq!(run.endpoint, standins::dify::Endpoint::Workflow);
    assert_eq!(run.response_mode.as_deref(), Some("blocking"));
    // Dify users are per source, as for every source: `<schedule>:<user>`.
    assert_eq!(run.user.as_deref(), Some("morning-briefing:family"));
    let today = Utc::now()
        .with_timezone(&chrono_tz_shanghai())
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(run.inputs["city"], "Shanghai");
    assert!(
        run.inputs["day"].as_str().expect("day").starts_with(&today),
        "{:?}",
        run.inputs
    );
    let posted = &chat.messages_to("rocketchat")[0];
    assert!(
        posted.text.starts_with("echo: ") && posted.text.contains("Shanghai"),
        "the workflow's output: {posted:?}"
    );

    // An operator's manual run, then the list with its outcome.
    let cli = |args: &[&str]| {
        let path = std::env::temp_dir().join(format!("{}-cli.toml", app.prefix));
        std::fs::write(&path, &app.config_text).expect("config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .expect("run switchboard");
        let _ = std::fs::remove_file(&path);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = app.dify.calls();
    let ran = cli(&["schedule", "run", "morning-briefing"]);
    assert!(ran.contains("manual"), "{ran}");
    wait_for("the manual run's call", Duration::from_secs(20), || {
        let dify = &app.dify;
        async move { dify.calls() > before }
    })
    .await;
    wait_for(
        "the manual run answered",
        Duration::from_secs(20),
        || async {
            let listed = cli(&["schedule", "list"]);
            listed.contains("(manual,") && listed.contains(": answered")
        },
    )
    .await;
    let listed = cli(&["schedule", "list"]);
    assert!(
        listed.contains("morning-briefing: \"*/2 * * * * *\" in Asia/Shanghai")
            && listed.contains("next: "),
        "{listed}"
    );
    app.shutdown().await;
}

fn chrono_tz_shanghai() -> chrono::FixedOffset {
    // Shanghai keeps +08:00 all year.
    chrono::FixedOffset::east_opt(8 * 3600).expect("offset")
}
