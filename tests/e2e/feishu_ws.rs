//! Issue 13 end to end: Feishu's long connection through the connector role, against the
//! endpoint stand-in (`standins::feishu_ws`), the real broker and Redis, the worker, the
//! dispatcher and the open API stand-in that takes the replies. Each test: a fresh URL from
//! `/callback/ws/endpoint` for every connection; ping frames for the URL's service at the
//! server's interval, changed by a pong's `ClientConfig`; an event (whole or in fragments)
//! answered once through the reply API and acknowledged with its own frame, `biz_rt` and
//! `{"code":200}` only once kept; the server closing the connection; a connection dropped
//! mid-frame; an ack lost, so the event comes again and is answered once; refused app
//! credentials reported and retried slowly; and the broker away, so nothing is acknowledged
//! until it is back; and two connector processes, one SIGKILLed under load, every event
//! answered exactly once.
use crate::gateways::{echoes, Linked, CONNECTOR};
use crate::kit::*;
use ingress::platform::feishu;
use standins::feishu_ws::{FeishuWsStandin, SERVICE_ID};
use standins::platforms::{api, creds, PlatformStandin};
use std::time::Duration;

const SOURCE: &str = "feishu-ws";

type Ws = Linked<FeishuWsStandin>;

async fn start(secret: &str, broker_proxy: bool) -> Ws {
    start_with(secret, broker_proxy, true).await
}

/// As [`start`]; without `in_process`, the test starts connector processes itself.
async fn start_with(secret: &str, broker_proxy: bool, in_process: bool) -> Ws {
    let p = PlatformStandin::start().await.expect("platform stand-in");
    let fw = FeishuWsStandin::start(
        (creds::FEISHU_APP_ID, creds::FEISHU_APP_SECRET),
        1,
        Some(p.base_url()),
        Duration::from_secs(2),
    )
    .await
    .expect("long-connection stand-in");
    let extra = format!(
        r#"
{CONNECTOR}
[[sources]]
id = "{SOURCE}"
platform = "feishu"
mode = "stream"
app = "support"
reply = true
app_id = "{id}"
app_secret = "{secret}"
api_base = "{api}"
"#,
        id = creds::FEISHU_APP_ID,
        api = fw.api_base(),
    );
    if in_process {
        Linked::spawn(fw, p, api::FEISHU_REPLY, extra, broker_proxy).await
    } else {
        Linked::spawn_without_connector(fw, p, api::FEISHU_REPLY, extra).await
    }
}

/// A p2p text message, as Feishu pushes it.
fn message(n: &str, text: &str) -> String {
    feishu::text_event_v2(
        &format!("ev-ws-{n}"),
        "",
        "oc_ws",
        false,
        "ou_ws",
        &format!("om_ws_{n}"),
        text,
    )
}

#[tokio::test]
async fn feishu_ws_pings_at_the_servers_interval_and_answers_through_the_reply_api() {
    let s = start(creds::FEISHU_APP_SECRET, false).await;
    s.up().await;
    assert_eq!(s.app.links.report(), format!("{SOURCE}#0 up"));
    let id = s.gw.push(&message("1", "hello ws"));
    s.replies(1).await;
    let reply = &s.p.messages_to(api::FEISHU_REPLY)[0];
    assert_eq!(
        (reply.text.as_str(), reply.target.as_str()),
        ("echo: hello ws", "om_ws_1")
    );
    let fw = &s.gw;
    eventually("the event acknowledged", || fw.acks(&id) == 1).await;
    assert!(s.gw.biz_rts()[0].parse::<u64>().is_ok());

    // A ping at once, then every PingInterval (1 s), until a pong says 2 s.
    s.gw.pong_ping_interval(2);
    eventually("a ping after a pong that said 2 s", || {
        let pings = fw.pings();
        pings
            .iter()
            .position(|(_, _, configured)| *configured)
            .is_some_and(|i| i + 1 < pings.len())
    })
    .await;
    let pings = s.gw.pings();
    assert!(pings.iter().all(|(_, service, _)| *service == SERVICE_ID));
    for pair in pings.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        let least = if pair[0].2 { 1900 } else { 900 };
        assert!(
            gap >= Duration::from_millis(least),
            "{gap:?} after {pair:?}"
        );
    }
    assert!(quiet(|| s.replied() == 1).await);
    assert_eq!(s.gw.opens(), 1, "one connection, one URL");
    s.stop().await;
}

#[tokio::test]
async fn an_event_in_fragments_is_put_back_together_and_answered_once() {
    let s = start(creds::FEISHU_APP_SECRET, false).await;
    s.up().await;
    s.gw.split_next(3);
    let id = s.gw.push(&message("frag", "in three pieces"));
    s.replies(1).await;
    assert_eq!(s.texts(), ["echo: in three pieces"]);
    let fw = &s.gw;
    eventually("acknowledged", || fw.acks(&id) == 1).await;
    assert_eq!(s.gw.deliveries(&id), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_connection_the_server_closes_is_replaced_with_a_fresh_url() {
    let s = start(creds::FEISHU_APP_SECRET, false).await;
    s.up().await;
    s.gw.close_all();
    let fw = &s.gw;
    eventually("a new connection", || {
        fw.opens() == 2 && fw.connections() == 1
    })
    .await;
    assert_eq!(s.gw.refused_tickets(), 0);
    let id = s.gw.push(&message("after", "after the close"));
    s.replies(1).await;
    eventually("acknowledged", || fw.acks(&id) == 1).await;
    s.stop().await;
}

#[tokio::test]
async fn a_feishu_connection_dropped_mid_frame_is_replaced_and_its_event_answered_once() {
    let s = start(creds::FEISHU_APP_SECRET, false).await;
    s.up().await;
    s.gw.cut_next_event();
    let id = s.gw.push(&message("cut", "cut in half"));
    s.replies(1).await;
    let fw = &s.gw;
    eventually("acknowledged", || fw.acks(&id) == 1).await;
    assert_eq!(s.gw.deliveries(&id), 2, "cut once, then delivered whole");
    assert_eq!(s.gw.opens(), 2);
    assert!(quiet(|| s.replied() == 1).await);
    assert_eq!(s.app.dify.calls(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_feishu_event_whose_ack_was_lost_is_redelivered_and_answered_once() {
    let s = start(creds::FEISHU_APP_SECRET, false).await;
    s.up().await;
    s.gw.lose_next_ack();
    let id = s.gw.push(&message("lost", "ack lost"));
    let fw = &s.gw;
    eventually("the redelivery acknowledged", || fw.acks(&id) == 1).await;
    assert_eq!(s.gw.deliveries(&id), 2);
    s.replies(1).await;
    assert!(quiet(|| s.replied() == 1).await);
    assert_eq!(s.app.dify.calls(), 1, "the door knew the redelivery");
    s.stop().await;
}

#[tokio::test]
async fn refused_app_credentials_are_reported_in_readyz_and_retried_slowly() {
    let s = start("not-the-app-secret", false).await;
    let links = s.app.links.clone();
    eventually("the refusal in /readyz", || {
        links.report().contains("refused")
    })
    .await;
    let report = s.app.links.report();
    assert!(report.contains("code 10014"), "{report}");
    assert!(!report.contains("not-the-app-secret"), "{report}");
    let fw = &s.gw;
    eventually("the second try", || fw.refusals().len() >= 2).await;
    let tries = s.gw.refusals();
    let gap = tries[1].1.duration_since(tries[0].1);
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    assert_eq!(s.gw.opens(), 0);
    s.stop().await;
}

#[tokio::test]
async fn with_the_broker_away_no_feishu_event_is_acknowledged_and_each_is_answered_once_after() {
    let s = start(creds::FEISHU_APP_SECRET, true).await;
    s.up().await;
    let proxy = s.broker_away().await;
    let texts: Vec<String> = (0..3).map(|i| format!("while away {i}")).collect();
    let ids: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| s.gw.push(&message(&format!("away{i}"), t)))
        .collect();
    let fw = &s.gw;
    eventually("each event delivered again", || {
        ids.iter().all(|id| fw.deliveries(id) >= 2)
    })
    .await;
    assert!(
        ids.iter().all(|id| s.gw.acks(id) == 0),
        "nothing acknowledged"
    );
    proxy.restore();
    eventually("every event acknowledged", || fw.unacked() == 0).await;
    s.replies(texts.len()).await;
    assert!(quiet(|| s.replied() == texts.len()).await);
    assert_eq!(s.texts(), echoes(&texts), "each answered exactly once");
    s.stop().await;
}

#[tokio::test]
async fn two_feishu_connectors_one_killed_under_load_every_event_answered_exactly_once() {
    let s = start_with(creds::FEISHU_APP_SECRET, false, false).await;
    s.two_connectors_one_killed_under_load(40, |i| {
        s.gw.push(&message(&format!("load{i}"), &format!("load {i}")));
    })
    .await;
    s.stop().await;
}
