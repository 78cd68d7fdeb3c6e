//! Issue 13 end to end: Slack Socket Mode through the connector role, against the Socket Mode
//! stand-in (`standins::slack_socket`), the real broker and Redis, the worker, the dispatcher
//! and the Web API stand-in that takes the replies (`chat.postMessage` with the bot token, a
//! slash command's `response_url`). Each test: a fresh URL opened with the app-level token for
//! every connection; `hello`; an envelope answered once and acknowledged with its
//! `envelope_id` only once kept; WebSocket pings answered; `disconnect` met by a new
//! connection before the old one goes, no event lost or doubled; `link_disabled` stopping the
//! connection with a clear `/readyz`; a connection dropped mid-frame; an ack lost, so the
//! envelope comes again with `retry_attempt` 1 and is answered once; a refused token reported
//! and retried slowly; the broker away, so nothing is acknowledged until it is back; and the
//! source's `rate` holding back acknowledgements as the ingress answers 429; and two connector
//! processes, one SIGKILLed under load, every envelope answered exactly once.
use crate::gateways::{echoes, Linked, CONNECTOR};
use crate::kit::*;
use ingress::platform::slack;
use standins::platforms::{api, creds, PlatformStandin};
use standins::slack_socket::SlackSocketStandin;
use std::time::Duration;

const APP_TOKEN: &str = "xapp-1-A0STANDIN-1-socketsecret";
const SOURCE: &str = "slack-socket";

type Socket = Linked<SlackSocketStandin>;

/// How a test wants its source.
struct Setup {
    token: &'static str,
    source: &'static str,
    /// Extra lines of the source's block.
    keys: &'static str,
    broker_proxy: bool,
    /// The connector runs in the test's process (otherwise the test starts connector processes).
    in_process: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            token: APP_TOKEN,
            source: SOURCE,
            keys: "",
            broker_proxy: false,
            in_process: true,
        }
    }
}

async fn start(setup: Setup) -> Socket {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let sm = SlackSocketStandin::start(APP_TOKEN, Some(p.slack_api_base()), Duration::from_secs(2))
        .await
        .expect("socket mode stand-in");
    let extra = format!(
        r#"
{CONNECTOR}
[[sources]]
id = "{source}"
platform = "slack"
mode = "stream"
app = "support"
reply = true
app_token = "{token}"
api_base = "{api}"
bot_token = "{bot}"
bot_user_id = "UBOT"
{keys}
"#,
        source = setup.source,
        token = setup.token,
        api = sm.api_base(),
        bot = creds::SLACK_BOT_TOKEN,
        keys = setup.keys,
    );
    if setup.in_process {
        Linked::spawn(sm, p, api::SLACK_API, extra, setup.broker_proxy).await
    } else {
        Linked::spawn_without_connector(sm, p, api::SLACK_API, extra).await
    }
}

/// A direct message to the bot, as the Events API sends it.
fn dm(event_id: &str, text: &str) -> String {
    slack::event_callback(
        event_id,
        slack::message_event("D0SOCK", "im", "U0USER", text, "1700000000.000100"),
    )
}

#[tokio::test]
async fn slack_socket_opens_says_hello_answers_through_the_web_api_and_answers_pings() {
    let s = start(Setup::default()).await;
    s.up().await;
    assert_eq!(s.gw.open_auth(), [format!("Bearer {APP_TOKEN}")]);
    assert_eq!(s.gw.hellos(), [1]);
    assert_eq!(s.app.links.report(), format!("{SOURCE}#0 up"));

    let key = s.gw.push_event(&dm("EvSock1", "hello socket"));
    s.replies(1).await;
    let reply = &s.p.messages_to(api::SLACK_API)[0];
    assert_eq!(
        (reply.target.as_str(), reply.text.as_str()),
        ("D0SOCK", "echo: hello socket")
    );
    let sm = &s.gw;
    eventually("the envelope acknowledged", || sm.acks(&key) == 1).await;
    assert_eq!(s.gw.deliveries(&key), [0]);

    // The bot's own echo is acknowledged and not answered.
    let echo = serde_json::json!({"type": "message", "channel": "D0SOCK", "user": "UBOT",
                                  "text": "echo: hello socket", "ts": "2.0", "bot_id": "B1"});
    let echo = s.gw.push_event(&slack::event_callback("EvSockEcho", echo));
    eventually("the echo acknowledged", || sm.acks(&echo) == 1).await;

    // A slash command is answered through its response_url.
    let response_url = s.p.slack_response_url("T0/1/sock-respond");
    let command = s.gw.push_command(serde_json::json!({
        "command": "/ask", "text": "by command", "trigger_id": "trig.sock.1",
        "user_id": "U0USER", "user_name": "ann", "channel_id": "C0SOCK",
        "channel_name": "general", "response_url": response_url,
    }));
    let p = &s.p;
    eventually("the command answered", || {
        p.texts(api::SLACK_RESPONSE_URL) == ["echo: by command"]
    })
    .await;
    assert_eq!(s.gw.acks(&command), 1);

    // Slack's pings are answered, and a quiet connection is probed by the client.
    s.gw.ping_all();
    s.gw.ping_all();
    eventually("two pongs", || sm.pongs() == 2).await;
    eventually("the client's own ping", || sm.client_pings() >= 1).await;
    assert!(quiet(|| s.replied() == 1).await);
    assert_eq!(s.app.dify.calls(), 2);
    assert_eq!(s.gw.opens(), 1, "one connection, one URL");
    s.stop().await;
}

#[tokio::test]
async fn a_refresh_requested_disconnect_opens_the_new_connection_first_and_loses_nothing() {
    let s = start(Setup::default()).await;
    s.up().await;
    let texts: Vec<String> = (0..12).map(|i| format!("refresh {i}")).collect();
    let mut keys = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        keys.push(s.gw.push_event(&dm(&format!("EvRefresh{i}"), t)));
        if i == 5 {
            s.gw.disconnect_oldest("refresh_requested");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let sm = &s.gw;
    eventually("the old connection closed by the client", || {
        sm.closed_by_client() == 1
    })
    .await;
    assert_eq!(s.gw.max_open(), 2, "both were open at once");
    assert_eq!(s.gw.opens(), 2, "a fresh URL for the new connection");
    assert_eq!(s.gw.refused_tickets(), 0);
    assert_eq!(s.gw.hellos(), [1, 2]);
    eventually("every envelope acknowledged", || sm.unacked() == 0).await;
    s.replies(texts.len()).await;
    assert!(quiet(|| s.replied() == texts.len()).await);
    assert_eq!(s.texts(), echoes(&texts), "each answered exactly once");
    for k in &keys {
        assert_eq!(s.gw.acks(k), 1, "{k}");
    }
    s.stop().await;
}

#[tokio::test]
async fn link_disabled_stops_the_connection_says_so_in_readyz_and_retries_slowly() {
    let s = start(Setup::default()).await;
    s.up().await;
    s.gw.disconnect_oldest("link_disabled");
    let links = s.app.links.clone();
    eventually("link_disabled in /readyz", || {
        links.report().contains("link_disabled")
    })
    .await;
    assert!(
        s.app.links.report().contains("refused"),
        "{}",
        s.app.links.report()
    );
    let sm = &s.gw;
    eventually("the connection let go by the client", || {
        sm.closed_by_client() == 1
    })
    .await;
    assert!(
        quiet(|| s.gw.opens() == 1).await,
        "no new connection at once"
    );
    // After refused_retry it tries again (Socket Mode back on here).
    eventually("a new connection", || sm.opens() == 2).await;
    eventually("up again", || links.all_up()).await;
    s.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_mid_frame_is_replaced_and_its_envelope_answered_once() {
    let s = start(Setup::default()).await;
    s.up().await;
    s.gw.cut_next_event();
    let key = s.gw.push_event(&dm("EvSockCut", "cut in half"));
    s.replies(1).await;
    let sm = &s.gw;
    eventually("acknowledged", || sm.acks(&key) == 1).await;
    assert_eq!(
        s.gw.deliveries(&key),
        [0, 1],
        "cut once, then delivered whole"
    );
    assert_eq!(s.gw.opens(), 2, "reconnected with a fresh URL");
    assert!(quiet(|| s.replied() == 1).await);
    assert_eq!(s.app.dify.calls(), 1);
    s.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_envelope_comes_again_with_retry_attempt_1_and_is_answered_once() {
    let s = start(Setup::default()).await;
    s.up().await;
    s.gw.lose_next_ack();
    let key = s.gw.push_event(&dm("EvSockLost", "ack lost"));
    let sm = &s.gw;
    eventually("the retry acknowledged", || sm.acks(&key) == 1).await;
    assert_eq!(s.gw.deliveries(&key), [0, 1]);
    s.replies(1).await;
    assert!(quiet(|| s.replied() == 1).await);
    assert_eq!(s.app.dify.calls(), 1, "the door knew the retry");
    s.stop().await;
}

#[tokio::test]
async fn a_refused_app_token_is_reported_in_readyz_and_retried_slowly() {
    let s = start(Setup {
        token: "xapp-1-A0STANDIN-1-not-the-token",
        ..Setup::default()
    })
    .await;
    let sm = &s.gw;
    let links = s.app.links.clone();
    eventually("the refusal in /readyz", || {
        links.report().contains("refused")
    })
    .await;
    let report = s.app.links.report();
    assert!(report.contains("invalid_auth"), "{report}");
    assert!(!report.contains("not-the-token"), "{report}");
    eventually("the second try", || sm.refusals().len() >= 2).await;
    // refused_retry is 1 s here: never a tight loop.
    let at = s.gw.refused_at();
    let gap = at[1].duration_since(at[0]);
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    assert_eq!(s.gw.refusals()[..2], ["invalid_auth", "invalid_auth"]);
    assert_eq!(s.gw.opens(), 0);
    s.stop().await;
}

#[tokio::test]
async fn with_the_broker_away_nothing_is_acknowledged_and_everything_is_answered_once_after() {
    let s = start(Setup {
        broker_proxy: true,
        ..Setup::default()
    })
    .await;
    s.up().await;
    let proxy = s.broker_away().await;
    let texts: Vec<String> = (0..3).map(|i| format!("while away {i}")).collect();
    let keys: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| s.gw.push_event(&dm(&format!("EvAway{i}"), t)))
        .collect();
    let sm = &s.gw;
    eventually("each envelope delivered again", || {
        keys.iter().all(|k| sm.deliveries(k).len() >= 2)
    })
    .await;
    assert!(
        keys.iter().all(|k| s.gw.acks(k) == 0),
        "nothing acknowledged"
    );
    proxy.restore();
    eventually("every envelope acknowledged", || sm.unacked() == 0).await;
    s.replies(texts.len()).await;
    assert!(quiet(|| s.replied() == texts.len()).await);
    assert_eq!(s.texts(), echoes(&texts), "each answered exactly once");
    // Keeps of two deliveries of one event may both finish once the broker is back: each
    // acknowledges its own envelope, and the worker answers the event once.
    assert!(keys.iter().all(|k| s.gw.acks(k) >= 1));
    s.stop().await;
}

/// The source's `rate` holds at the connector as at the ingress: what is over it is not
/// acknowledged (Slack delivers it again later) and is counted.
#[tokio::test]
async fn events_over_the_sources_rate_are_not_acknowledged_until_the_rate_allows() {
    let source = "slack-socket-rated";
    let s = start(Setup {
        source,
        keys: r#"rate = "2/3s""#,
        ..Setup::default()
    })
    .await;
    s.up().await;
    let texts: Vec<String> = (0..4).map(|i| format!("rated {i}")).collect();
    let keys: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| s.gw.push_event(&dm(&format!("EvRated{i}"), t)))
        .collect();
    let sm = &s.gw;
    eventually("every envelope acknowledged in the end", || {
        sm.unacked() == 0
    })
    .await;
    let redelivered = keys
        .iter()
        .filter(|k| s.gw.deliveries(k).len() >= 2)
        .count();
    assert!(redelivered >= 2, "two over the burst of 2 came again");
    s.replies(texts.len()).await;
    assert!(quiet(|| s.replied() == texts.len()).await);
    assert_eq!(s.texts(), echoes(&texts), "each answered exactly once");
    let metrics = shared::telemetry::metrics().render();
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchboard_connector_rate_limited_total")
                && l.contains(&format!("source=\"{source}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(counted >= 2.0, "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn two_slack_connectors_one_killed_under_load_every_envelope_answered_exactly_once() {
    let s = start(Setup {
        in_process: false,
        ..Setup::default()
    })
    .await;
    s.two_connectors_one_killed_under_load(40, |i| {
        s.gw.push_event(&dm(&format!("EvLoad{i}"), &format!("load {i}")));
    })
    .await;
    s.stop().await;
}
