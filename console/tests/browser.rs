//! The console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
//! driven through WebDriver signs in, filters the list, opens a letter, previews a replay and
//! replays it; the replay arrives exactly once at a receiver stand-in, through the real
//! dispatcher. Each page is kept as a screenshot in `target/console-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{work_letter, TestConsole, PASSWORD};
use fantoccini::{Client, ClientBuilder, Locator};
use shared::envelope::{Answer, AnswerPayload, Destination, DispatchJob, Reason, Stage, Timings};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const OUT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver; .ci/run installs them)");
    let profile = std::env::temp_dir().join(format!(
        "sb-console-chromium-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let d = Driver {
        child,
        port,
        profile,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = format!("http://127.0.0.1:{port}/status");
    while !reqwest::get(&status)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "chromedriver never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d
}

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1400,1000",
            format!("--user-data-dir={}", d.profile.display()),
        ]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a Chromium session")
}

async fn shot(b: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.png")),
        b.screenshot().await.unwrap(),
    )
    .unwrap();
}

/// Waits until the page's source contains `text` (pages refresh themselves while running).
async fn wait_text(b: &Client, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if b.source().await.unwrap().contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "the page never showed {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn job(target: &str) -> DispatchJob {
    let ev = common::event("crm", "where is order 4242?");
    let destination = Destination::Target { id: target.into() };
    DispatchJob {
        id: DispatchJob::job_id_of_event(ev.id, &destination),
        destination,
        payload: AnswerPayload {
            event: None,
            event_id: ev.id,
            source: "crm".into(),
            platform: "bearer".into(),
            conversation: ev.conversation,
            query: ev.text,
            answer: Answer {
                text: "it ships tomorrow".into(),
                ..Answer::default()
            },
            timings: Timings::default(),
        },
        attempts: vec![],
        replay_of: None,
        parts_left: None,
    }
}

#[tokio::test]
async fn an_auditor_signs_in_filters_previews_and_replays_in_a_browser() {
    let receiver = standins::receiver::Receiver::start(Some(OUT_SECRET))
        .await
        .unwrap();
    receiver.set_down(true);
    let c = TestConsole::start(&format!(
        "[dispatcher]\nretry_schedule = [\"0s\", \"100ms\"]\nallow_private = [\"127.0.0.0/8\"]\nrequest_timeout = \"5s\"\nshutdown_grace = \"5s\"\n[[targets]]\nid = \"crm-hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{OUT_SECRET}\"\n",
        receiver.url("/answers")
    ))
    .await;
    let stop = CancellationToken::new();
    let dispatching = tokio::spawn(dispatcher::run(
        Arc::new(c.config.clone()),
        c.services.clone(),
        stop.clone(),
    ));
    // Other letters to filter out, and one job the down receiver makes a dead letter.
    for i in 0..3 {
        c.bury(&work_letter(
            "github",
            &format!("push {i}"),
            Reason::Permanent,
        ))
        .await;
    }
    let j = job("crm-hook");
    let queue = c.services.broker.topology().stage_queue(Stage::Deliver);
    c.services
        .broker
        .publish(&queue, &shared::envelope::encode(&j), Default::default())
        .await
        .unwrap();
    c.wait_indexed(4).await;

    let d = driver().await;
    let b = browser(&d).await;
    b.goto(&c.url("/login")).await.unwrap();
    shot(&b, "01-sign-in").await;
    b.find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys("rita")
        .await
        .unwrap();
    b.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    b.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait().for_element(Locator::Id("letters")).await.unwrap();
    shot(&b, "02-dead-letters").await;

    b.find(Locator::Id("f-target"))
        .await
        .unwrap()
        .select_by_value("crm-hook")
        .await
        .unwrap();
    b.find(Locator::Id("apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "target=crm-hook").await;
    assert_eq!(
        b.find(Locator::Id("total"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "1"
    );
    shot(&b, "03-filtered").await;

    let link = format!("/letters/{}", "");
    let row = b
        .find(Locator::Css(&format!("#letters a[href^='{link}']")))
        .await
        .unwrap();
    row.click().await.unwrap();
    b.wait()
        .for_element(Locator::Id("preview-one"))
        .await
        .unwrap();
    assert!(b
        .find(Locator::Id("seal"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains("verified"));
    shot(&b, "04-letter").await;

    b.find(Locator::Id("preview-one"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait().for_element(Locator::Id("preview")).await.unwrap();
    let summary = b
        .find(Locator::Id("preview-summary"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(summary.starts_with("1 would be sent"), "{summary}");
    assert!(b.source().await.unwrap().contains("crm-hook"));
    shot(&b, "05-preview").await;
    assert_eq!(receiver.accepted(), 0, "a preview sends nothing");

    receiver.set_down(false);
    b.find(Locator::Id("rate"))
        .await
        .unwrap()
        .send_keys("10/s")
        .await
        .unwrap();
    b.find(Locator::Id("replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "id=\"run-state\">done").await;
    assert!(b
        .find(Locator::Id("run-actor"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .starts_with("rita"));
    shot(&b, "06-replay").await;

    // Delivered once, and marked delivered (so no copy follows).
    let deadline = Instant::now() + Duration::from_secs(15);
    let delivered = c.services.store.key(&["delivered", &j.id.to_string()]);
    loop {
        let mut conn = c.services.store.conn().await.unwrap();
        let marked: bool = deadpool_redis::redis::cmd("EXISTS")
            .arg(&delivered)
            .query_async(&mut conn)
            .await
            .unwrap();
        if marked && receiver.accepted() >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the replay never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.accepted(), 1);
    assert_eq!(
        receiver.received()[0].body["event_id"],
        j.payload.event_id.to_string()
    );

    b.goto(&c.url("/replays")).await.unwrap();
    wait_text(&b, "Replay record chain: intact").await;
    shot(&b, "07-replay-record").await;
    b.goto(&c.url("/stats")).await.unwrap();
    b.wait().for_element(Locator::Id("chart")).await.unwrap();
    shot(&b, "08-stats").await;
    b.goto(&c.url(&format!("/events?q={}", j.payload.event_id)))
        .await
        .unwrap();
    b.wait().for_element(Locator::Id("trace")).await.unwrap();
    wait_text(&b, "crm-hook").await;
    shot(&b, "09-where-is-my-event").await;

    b.close().await.unwrap();
    drop(d);
    stop.cancel();
    let _ = dispatching.await;
    assert_eq!(receiver.accepted(), 1, "delivered exactly once");
    receiver.shutdown();
    c.stop().await;
}
