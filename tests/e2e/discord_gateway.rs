//! Issue 14's Gateway end to end: a `discord` source with `mode = "stream"` through the
//! connector role, against the Gateway stand-in (`standins::discord_gateway`) and the Discord
//! API stand-in (`GET /gateway/bot`, channel messages), with the real broker and Redis, the
//! worker, the dispatcher and the Dify stand-in. The connection identifies with the message
//! intents and heartbeats on Discord's schedule; a mention (or a DM) is answered once, as a reply
//! in its channel (`message_reference`, no mention pinged); bots (itself included) and chatter
//! that does not mention the bot are not answered; a dropped connection is resumed at the
//! resume URL and the message Discord replays is answered once; op 7 and a resumable op 9 are
//! met with a resume, a non-resumable op 9 with a fresh Identify after 1–5 s; a connection whose
//! heartbeats go unacknowledged is closed and resumed; a refused token and a disallowed intent
//! are clear errors in `/readyz`, retried slowly; messages that arrive while the broker is away
//! are held and answered once it is back; two connector processes each hold a session, and with
//! one of them SIGKILLed under load every message is still answered exactly once.
use crate::common::*;
use crate::kit::*;
use serde_json::json;
use standins::discord::{route, DiscordStandin, BOT_TOKEN};
use standins::discord_gateway::{mention, Author, GatewayStandin};
use std::time::{Duration, Instant};

/// The heartbeat interval the stand-in's Hello asks for.
const INTERVAL: Duration = Duration::from_millis(400);

struct Gw {
    app: TestApp,
    d: DiscordStandin,
    gw: GatewayStandin,
}

fn config(d: &DiscordStandin, token: &str) -> String {
    format!(
        r#"
[connector]
heartbeat = "1s"
backoff_initial = "50ms"
backoff_max = "1s"
refused_retry = "1s"
open_timeout = "3s"

[[sources]]
id = "discord-gw"
platform = "discord"
mode = "stream"
app = "support"
reply = true
bot_token = "{token}"
api_base = "{api}"
"#,
        api = d.api_base(),
    )
}

async fn start_with(token: &str, broker_proxy: bool, prepare: impl FnOnce(&GatewayStandin)) -> Gw {
    start_full(token, broker_proxy, true, prepare).await
}

/// The pipeline, with the connector in-process or not (`connector = false` for tests that run
/// it as child processes).
async fn start_full(
    token: &str,
    broker_proxy: bool,
    connector: bool,
    prepare: impl FnOnce(&GatewayStandin),
) -> Gw {
    let d = DiscordStandin::start().await.expect("discord stand-in");
    let gw = GatewayStandin::start(INTERVAL)
        .await
        .expect("gateway stand-in");
    d.set_gateway(&gw.url());
    prepare(&gw);
    let app = TestApp::spawn(Options {
        extra: config(&d, token),
        connector,
        broker_proxy,
        ..Options::default()
    })
    .await;
    Gw { app, d, gw }
}

async fn start() -> Gw {
    start_with(BOT_TOKEN, false, |_| {}).await
}

impl Gw {
    /// The session is up: READY (or RESUMED) reached, `/readyz` says so.
    async fn up(&self) {
        let (links, gw) = (self.app.links.clone(), &self.gw);
        eventually("the Gateway session up", || {
            links.all_up() && gw.connections() == 1
        })
        .await;
        assert_eq!(self.app.links.report(), "discord-gw#0 up");
    }

    async fn replies(&self, n: usize) {
        let d = self.d.clone();
        eventually(&format!("{n} replies in the channels"), move || {
            d.messages_to(route::CHANNEL).len() >= n
        })
        .await;
    }

    fn replies_now(&self) -> Vec<standins::discord::Message> {
        self.d.messages_to(route::CHANNEL)
    }

    async fn stop(self) {
        self.app.shutdown().await;
        self.d.shutdown();
        self.gw.shutdown();
    }
}

#[tokio::test]
async fn discord_gateway_identifies_heartbeats_and_answers_a_mention_with_a_reply() {
    let g = start().await;
    g.up().await;
    // `GET /gateway/bot` once, then the Gateway it named, with v=10 and JSON.
    assert_eq!(g.d.gateway_bot_requests(), (1, 0));
    assert_eq!(
        g.gw.connects(),
        [("/".to_owned(), "v=10&encoding=json".to_owned())]
    );
    let identify = &g.gw.identifies()[0].what;
    assert_eq!(identify["token"], BOT_TOKEN);
    assert_eq!(
        identify["intents"],
        (1 << 9) | (1 << 12) | (1 << 15),
        "GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT"
    );
    assert_eq!(identify["properties"]["browser"], "switchboard");
    assert!(identify["properties"]["os"].is_string());

    // Heartbeats: the first within one interval of Hello (× jitter), then one per interval,
    // each carrying the last sequence number (READY's 1).
    let gw = &g.gw;
    eventually("three heartbeats", || gw.heartbeats().len() >= 3).await;
    let hello = g.gw.hellos()[0].at;
    let beats = g.gw.heartbeats();
    let first = beats[0].at.duration_since(hello);
    assert!(
        first <= INTERVAL + Duration::from_millis(300),
        "first beat {first:?} after Hello"
    );
    for pair in beats.windows(2).take(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= INTERVAL - Duration::from_millis(150)
                && gap <= INTERVAL + Duration::from_millis(400),
            "beats {gap:?} apart"
        );
    }
    assert!(beats.iter().all(|b| b.what == json!(1)), "{beats:?}");
    // Asked for a heartbeat (op 1), the connector beats at once.
    let asked = Instant::now();
    g.gw.request_heartbeat();
    eventually("the asked heartbeat", || {
        gw.heartbeats().iter().any(|b| b.at >= asked)
    })
    .await;
    let answered = g.gw.heartbeats().iter().find(|b| b.at >= asked).unwrap().at;
    assert!(
        answered.duration_since(asked) < Duration::from_millis(200),
        "{:?}",
        answered.duration_since(asked)
    );

    // A mention in a server: answered as a reply in its channel, pinging nobody.
    let m = g.gw.post(
        Some("g1"),
        "c1",
        Author::User,
        &mention("hello gateway"),
        true,
    );
    g.replies(1).await;
    let reply = &g.replies_now()[0];
    assert_eq!(
        (reply.channel_id.as_str(), reply.content.as_str()),
        ("c1", "echo: hello gateway")
    );
    assert_eq!(reply.reply_to.as_deref(), Some(m.as_str()));
    assert_eq!(reply.body["allowed_mentions"], json!({ "parse": [] }));
    // Any message in a DM.
    let dm =
        g.gw.post(None, "dm1", Author::User, "hello from a DM", false);
    g.replies(2).await;
    let reply = &g.replies_now()[1];
    assert_eq!(
        (reply.channel_id.as_str(), reply.content.as_str()),
        ("dm1", "echo: hello from a DM")
    );
    assert_eq!(reply.reply_to.as_deref(), Some(dm.as_str()));
    let d = g.d.clone();
    assert!(quiet(move || d.messages_to(route::CHANNEL).len() == 2).await);
    assert_eq!(g.app.dify.calls(), 2);
    assert_eq!(g.gw.connects().len(), 1, "one connection throughout");
    assert!(g.gw.resumes().is_empty());
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_ignores_bots_itself_and_chatter_and_splits_a_long_answer() {
    let g = start().await;
    g.up().await;
    g.gw.post(
        Some("g1"),
        "c1",
        Author::Bot,
        &mention("a question from another bot"),
        true,
    );
    g.gw.post(None, "dm1", Author::Me, "the bot's own answer", false);
    g.gw.post(Some("g1"), "c1", Author::User, "just chatting", false);
    // A long question mentioning @everyone: the answer is two messages, the first replying to
    // it, neither pinging anybody.
    let words: Vec<String> = (0..600).map(|i| format!("w{i:04}")).collect();
    let question = format!("@everyone {}", words.join(" "));
    let long =
        g.gw.post(Some("g1"), "c2", Author::User, &mention(&question), true);
    g.replies(2).await;
    let got = g.replies_now();
    assert_eq!(got.len(), 2);
    let mut seen = Vec::new();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.channel_id, "c2");
        assert!(m.content.chars().count() <= 2000);
        assert!(m.content.starts_with(&format!("({}/2) ", i + 1)));
        assert_eq!(m.body["allowed_mentions"], json!({ "parse": [] }));
        assert!(!m.pinged_everyone);
        seen.extend(m.content.split_whitespace().skip(1).map(str::to_owned));
    }
    assert_eq!(got[0].reply_to.as_deref(), Some(long.as_str()));
    assert_eq!(got[1].reply_to, None, "only the first part is the reply");
    let want: Vec<String> = format!("echo: {question}")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(seen, want, "every word once, in order");
    let d = g.d.clone();
    assert!(quiet(move || d.messages_to(route::CHANNEL).len() == 2).await);
    assert_eq!(
        g.app.dify.calls(),
        1,
        "only the question to the bot went to Dify"
    );
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_a_dropped_connection_is_resumed_and_the_missed_message_answered_once() {
    let g = start().await;
    g.up().await;
    let before =
        g.gw.post(None, "dm1", Author::User, "before the drop", false);
    g.replies(1).await;
    let session = g.gw.sessions();
    assert_eq!(session.len(), 1);

    g.gw.drop_all();
    // Posted while the connection is gone: Discord keeps it for the session's resume.
    let missed = g.gw.post(None, "dm1", Author::User, "while away", false);
    let gw = &g.gw;
    eventually("the resume", || gw.resumes().len() == 1).await;
    let resume = &g.gw.resumes()[0].what;
    assert_eq!(resume["token"], BOT_TOKEN);
    assert_eq!(resume["session_id"], session[0]);
    assert_eq!(
        resume["seq"], 2,
        "READY was 1, the message before the drop 2"
    );
    let connects = g.gw.connects();
    assert_eq!(connects.len(), 2);
    assert_eq!(
        connects[1],
        ("/resume".to_owned(), "v=10&encoding=json".to_owned())
    );
    assert_eq!(g.gw.identifies().len(), 1, "resumed, not identified again");
    assert_eq!(
        g.d.gateway_bot_requests().0,
        1,
        "the resume URL needs no /gateway/bot"
    );

    g.replies(2).await;
    let reply = &g.replies_now()[1];
    assert_eq!(reply.content, "echo: while away");
    assert_eq!(reply.reply_to.as_deref(), Some(missed.as_str()));
    assert_eq!(
        g.gw.deliveries(missed.as_str()),
        1,
        "replayed by the resume"
    );
    assert_eq!(g.gw.deliveries(before.as_str()), 1, "not replayed");
    let d = g.d.clone();
    assert!(quiet(move || d.messages_to(route::CHANNEL).len() == 2).await);
    assert_eq!(g.app.dify.calls(), 2);
    g.up().await;
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_op_7_and_a_resumable_op_9_are_met_with_a_resume() {
    let g = start().await;
    g.up().await;
    g.gw.reconnect();
    let gw = &g.gw;
    eventually("the resume after op 7", || gw.resumes().len() == 1).await;
    assert_eq!(
        g.gw.client_closes(),
        [Some(4000)],
        "closed with a code that keeps the session (not 1000)"
    );
    assert_eq!(
        g.gw.max_open(),
        1,
        "no overlap: one session, one connection"
    );
    assert_eq!(g.gw.identifies().len(), 1);
    g.up().await;
    g.gw.post(None, "dm1", Author::User, "after op 7", false);
    g.replies(1).await;

    let sent = Instant::now();
    g.gw.invalid_session(true);
    eventually("the resume after op 9 true", || gw.resumes().len() == 2).await;
    let waited = g.gw.resumes()[1].at.duration_since(sent);
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(5500),
        "resumed {waited:?} after op 9"
    );
    assert_eq!(g.gw.identifies().len(), 1);
    g.up().await;
    g.gw.post(None, "dm1", Author::User, "after op 9", false);
    g.replies(2).await;
    assert_eq!(g.replies_now()[1].content, "echo: after op 9");
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_op_9_not_resumable_identifies_afresh_after_1_to_5_seconds() {
    let g = start().await;
    g.up().await;
    let sent = Instant::now();
    g.gw.invalid_session(false);
    let gw = &g.gw;
    eventually("a fresh Identify", || gw.identifies().len() == 2).await;
    let waited = g.gw.identifies()[1].at.duration_since(sent);
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(5500),
        "identified {waited:?} after op 9"
    );
    assert!(g.gw.resumes().is_empty(), "the session is gone: no resume");
    assert_eq!(g.d.gateway_bot_requests().0, 2, "a fresh Gateway URL");
    assert_eq!(g.gw.connects()[1].0, "/");
    g.up().await;
    let m =
        g.gw.post(Some("g1"), "c1", Author::User, &mention("after op 9"), true);
    g.replies(1).await;
    assert_eq!(g.replies_now()[0].reply_to.as_deref(), Some(m.as_str()));
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_a_zombie_connection_is_closed_and_resumed() {
    let g = start().await;
    g.up().await;
    let stopped = Instant::now();
    g.gw.stop_acking();
    let gw = &g.gw;
    eventually("the zombie replaced and resumed", || {
        gw.resumes().len() == 1
    })
    .await;
    assert_eq!(g.gw.client_closes(), [Some(4000)]);
    // Noticed at the first beat after an unacknowledged one: within two intervals.
    let took = g.gw.resumes()[0].at.duration_since(stopped);
    assert!(
        took <= INTERVAL * 2 + Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(g.gw.identifies().len(), 1);
    g.up().await;
    g.gw.post(None, "dm1", Author::User, "after the zombie", false);
    g.replies(1).await;
    assert_eq!(g.replies_now()[0].content, "echo: after the zombie");
    g.stop().await;
}

/// `/readyz` of the connector as its admin listener serves it: status and body.
async fn readyz(g: &Gw) -> (u16, String) {
    let readiness = connector::ConnectorReadiness {
        broker: g.app.services.broker.clone(),
        status: g.app.links.clone(),
    };
    let router = shared::telemetry::admin_router(readiness);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let resp = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn discord_gateway_a_refused_token_is_a_clear_error_in_readyz_retried_slowly() {
    let g = start_with("not-the-bot-token", false, |_| {}).await;
    let links = g.app.links.clone();
    eventually("the refusal in /readyz", || {
        links.report().contains("refused")
    })
    .await;
    let (status, body) = readyz(&g).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("discord-gw#0 refused: HTTP 401 Unauthorized 401: Unauthorized"),
        "{body}"
    );
    assert!(!body.contains("not-the-bot-token"), "{body}");
    // Retried after refused_retry (1 s here), never in a tight loop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tries = g.d.gateway_bot_requests().1;
    assert!((2..=4).contains(&tries), "{tries} tries in 2.5 s");
    assert!(
        g.gw.connects().is_empty(),
        "no Gateway connection without a token"
    );
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_a_disallowed_intent_is_a_clear_error_in_readyz_retried_slowly() {
    let g = start_with(BOT_TOKEN, false, GatewayStandin::refuse_message_content).await;
    let links = g.app.links.clone();
    eventually("the refusal in /readyz", || {
        links.report().contains("refused")
    })
    .await;
    let (status, body) = readyz(&g).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("discord-gw#0 refused: Discord closed the Gateway with 4014 (Disallowed intent(s).): disallowed intent: enable Message Content Intent"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tries = g.gw.identifies().len();
    assert!((2..=4).contains(&tries), "{tries} identifies in 2.5 s");
    assert!(g.gw.server_closes().iter().all(|c| *c == 4014));
    assert!(g.app.links.report().contains("4014"), "it stays refused");
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_messages_arriving_while_the_broker_is_away_are_held_and_answered_once() {
    let g = start_with(BOT_TOKEN, true, |_| {}).await;
    g.up().await;
    let proxy = g.app.proxy.clone().unwrap();
    proxy.cut();
    let broker = g.app.services.broker.clone();
    wait_for("the broker connection to drop", T, || {
        let b = broker.clone();
        async move { !b.is_connected() }
    })
    .await;
    let ids: Vec<String> = (0..3)
        .map(|i| {
            g.gw.post(
                Some("g1"),
                "c1",
                Author::User,
                &mention(&format!("held {i}")),
                true,
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(g.replies_now().is_empty(), "nothing could be kept yet");
    proxy.restore();
    g.replies(3).await;
    let d = g.d.clone();
    assert!(quiet(move || d.messages_to(route::CHANNEL).len() == 3).await);
    let mut texts: Vec<String> = g.replies_now().into_iter().map(|m| m.content).collect();
    texts.sort();
    assert_eq!(texts, ["echo: held 0", "echo: held 1", "echo: held 2"]);
    let mut replied: Vec<String> = g
        .replies_now()
        .into_iter()
        .filter_map(|m| m.reply_to)
        .collect();
    replied.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(replied, want, "each a reply to its own message");
    assert!(
        ids.iter().all(|id| g.gw.deliveries(id) == 1),
        "Discord sent each once"
    );
    g.stop().await;
}

#[tokio::test]
async fn discord_gateway_two_connectors_one_killed_under_load_every_message_answered_once() {
    let g = start_full(BOT_TOKEN, false, false, |_| {}).await;
    let mut first = g.app.spawn_child("connector");
    let _second = g.app.spawn_child("connector");
    let gw = &g.gw;
    eventually("two sessions", || {
        gw.sessions().len() == 2 && gw.connections() == 2
    })
    .await;
    let n = 40;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(g.gw.post(
            None,
            &format!("dm{}", i % 4),
            Author::User,
            &format!("load {i}"),
            false,
        ));
        if i == n / 2 {
            first.kill9().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g.replies(n).await;
    let d = g.d.clone();
    assert!(quiet(move || d.messages_to(route::CHANNEL).len() == n).await);
    let mut texts: Vec<String> = g.replies_now().into_iter().map(|m| m.content).collect();
    texts.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("echo: load {i}")).collect();
    want.sort();
    assert_eq!(texts, want, "each message answered exactly once");
    // Every message went to both sessions while both were up.
    assert!(ids[..n / 2].iter().all(|id| g.gw.deliveries(id) == 2));
    g.stop().await;
}
