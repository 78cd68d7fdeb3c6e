//! The Gateway's decisions, one table or story each: what every op and close code leads to,
//! the heartbeat's timing, what a connection leaves for the next one.
use super::*;

const TOKEN: &str = "Bot-token-zzsecretzz";
const BOT: &str = "900000000000000042";
const MS: fn(u64) -> Duration = Duration::from_millis;

fn source(extra: &str) -> SourceConfig {
    toml::from_str(&format!(
        "id = \"gw\"\napp = \"a\"\nplatform = \"discord\"\nmode = \"stream\"\n{extra}"
    ))
    .unwrap()
}

fn gateway() -> DiscordGateway {
    DiscordGateway::from_config(&source(&format!("bot_token = \"{TOKEN}\""))).unwrap()
}

fn session(memory: &Arc<Mutex<Memory>>) -> GatewaySession {
    GatewaySession::new(
        Secret::new(TOKEN),
        intents::GUILD_MESSAGES | intents::DIRECT_MESSAGES | intents::MESSAGE_CONTENT,
        memory.clone(),
        0.25,
        MS(3000),
    )
}

fn frame(v: Value) -> Frame {
    Frame::Text(v.to_string())
}

fn sent(read: &Read) -> Vec<Value> {
    read.steps
        .iter()
        .filter_map(|s| match s {
            Step::Send(Frame::Text(t)) => Some(serde_json::from_str(t).unwrap()),
            _ => None,
        })
        .collect()
}

fn hello(ms: u64) -> Frame {
    frame(json!({ "op": 10, "d": { "heartbeat_interval": ms }, "s": null, "t": null }))
}

fn ready(session_id: &str, s: u64) -> Frame {
    frame(json!({ "op": 0, "s": s, "t": "READY", "d": {
        "v": 10, "session_id": session_id, "resume_gateway_url": "wss://resume.example",
        "user": { "id": BOT, "username": "bot", "bot": true },
        "application": { "id": "app1", "flags": 0 }, "guilds": [],
    }}))
}

/// A reconnect's close code, label and wait.
type Asked = Option<(u16, &'static str, Duration)>;

fn reconnect_of(read: &Read) -> Asked {
    read.steps.iter().find_map(|s| match s {
        Step::Reconnect {
            code, label, after, ..
        } => Some((*code, *label, *after)),
        _ => None,
    })
}

#[test]
fn hello_identifies_and_the_first_beat_waits_interval_times_jitter() {
    let memory = Arc::default();
    let mut s = session(&memory);
    let t0 = Instant::now();
    assert_eq!(s.deadline(), None, "no beat before Hello");
    let read = s.read(hello(40_000), t0);
    assert_eq!(read.kind, "hello");
    let [identify] = &sent(&read)[..] else {
        panic!("{read:?}")
    };
    assert_eq!(identify["op"], 2);
    assert_eq!(identify["d"]["token"], TOKEN);
    assert_eq!(identify["d"]["intents"], 512 + 4096 + 32768);
    assert_eq!(identify["d"]["properties"]["browser"], "switchboard");
    assert_eq!(identify["d"]["properties"]["os"], std::env::consts::OS);
    assert_eq!(s.deadline(), Some(t0 + MS(10_000)), "40 s × jitter 0.25");
    // Nothing before the deadline; the beat carries the last sequence (none yet: null).
    assert!(s.timer(t0 + MS(9_999)).steps.is_empty());
    let beat = s.timer(t0 + MS(10_000));
    assert_eq!(
        (beat.kind, sent(&beat)),
        ("heartbeat", vec![json!({"op": 1, "d": null})])
    );
    assert_eq!(s.deadline(), Some(t0 + MS(50_000)), "then every interval");
    // A Hello without an interval is not obeyed.
    let mut other = session(&Arc::default());
    assert_eq!(
        other.read(frame(json!({"op": 10, "d": {}})), t0).kind,
        "malformed"
    );
}

#[test]
fn heartbeats_carry_the_last_sequence_and_a_missing_ack_is_a_zombie() {
    let memory = Arc::default();
    let mut s = session(&memory);
    let t0 = Instant::now();
    s.read(hello(1000), t0);
    let r = s.read(ready("sess-1", 1), t0);
    assert_eq!((r.kind, matches!(r.steps[..], [Step::Up])), ("ready", true));
    for (seq, kind) in [(5, "dispatch"), (3, "dispatch")] {
        let d = frame(json!({"op": 0, "s": seq, "t": "TYPING_START", "d": {}}));
        assert_eq!(s.read(d, t0).kind, kind);
    }
    assert_eq!(
        lock(&memory).seq,
        Some(5),
        "the highest s, not the last to arrive"
    );
    let beat = s.timer(t0 + MS(250));
    assert_eq!(sent(&beat), [json!({"op": 1, "d": 5})]);
    assert_eq!(s.read(frame(json!({"op": 11})), t0).kind, "heartbeat_ack");
    assert_eq!(sent(&s.timer(t0 + MS(1250))), [json!({"op": 1, "d": 5})]);
    // No ack for that one before the next is due: close to resume, at once.
    let zombie = s.timer(t0 + MS(2250));
    assert_eq!(zombie.kind, "zombie");
    assert_eq!(
        reconnect_of(&zombie),
        Some((RESUMABLE_CLOSE, "zombie", Duration::ZERO))
    );
    assert!(sent(&zombie).is_empty(), "no beat on a dead connection");
    assert_eq!(s.deadline(), None);
    assert_eq!(
        lock(&memory).session_id.as_deref(),
        Some("sess-1"),
        "kept to resume"
    );
}

#[test]
fn a_heartbeat_asked_by_the_server_goes_at_once() {
    let memory = Arc::default();
    let mut s = session(&memory);
    let t0 = Instant::now();
    s.read(hello(40_000), t0);
    s.read(ready("sess-1", 1), t0);
    let asked = s.read(frame(json!({"op": 1, "d": null})), t0 + MS(5));
    assert_eq!(
        (asked.kind, sent(&asked)),
        ("heartbeat_request", vec![json!({"op": 1, "d": 1})])
    );
    assert_eq!(
        s.deadline(),
        Some(t0 + MS(10_000)),
        "the schedule is unchanged"
    );
    // Unanswered, it makes the next scheduled beat a zombie.
    assert_eq!(s.timer(t0 + MS(10_000)).kind, "zombie");
}

#[test]
fn every_op_and_what_it_asks() {
    let t0 = Instant::now();
    let cases: Vec<(Value, &str, Asked)> = vec![
        (json!({"op": 11}), "heartbeat_ack", None),
        (
            json!({"op": 7, "d": null}),
            "reconnect",
            Some((4000, "reconnect", Duration::ZERO)),
        ),
        (
            json!({"op": 9, "d": true}),
            "invalid_session",
            Some((4000, "invalid_session", MS(3000))),
        ),
        (
            json!({"op": 9, "d": false}),
            "invalid_session",
            Some((4000, "invalid_session", MS(3000))),
        ),
        (
            json!({"op": 0, "s": 2, "t": "RESUMED", "d": {}}),
            "resumed",
            None,
        ),
        (
            json!({"op": 0, "s": 2, "t": "GUILD_CREATE", "d": {}}),
            "dispatch",
            None,
        ),
        (json!({"op": 42}), "unknown", None),
        (json!({"no": "op"}), "malformed", None),
    ];
    for (payload, kind, reconnect) in cases {
        let memory = Arc::default();
        let mut s = session(&memory);
        s.read(hello(1000), t0);
        s.read(ready("sess-1", 1), t0);
        let read = s.read(frame(payload.clone()), t0);
        assert_eq!(read.kind, kind, "{payload}");
        assert_eq!(reconnect_of(&read), reconnect, "{payload}");
        // Only op 9 with d = false forgets the session.
        let forgotten = payload == json!({"op": 9, "d": false});
        assert_eq!(lock(&memory).session_id.is_none(), forgotten, "{payload}");
    }
    let mut s = session(&Arc::default());
    assert_eq!(s.read(Frame::Binary(vec![1, 2]), t0).kind, "binary");
    assert_eq!(s.read(Frame::Text("{".into()), t0).kind, "malformed");
}

#[test]
fn a_message_is_an_event_without_an_ack_read_by_the_ingress_module() {
    let memory = Arc::default();
    let mut s = session(&memory);
    let t0 = Instant::now();
    s.read(hello(1000), t0);
    s.read(ready("sess-1", 1), t0);
    let m = ingress::platform::discord::gateway::message(
        "m1",
        Some("g1"),
        "c1",
        "u1",
        false,
        &format!("<@{BOT}> hi"),
        &[BOT],
    );
    let read = s.read(
        frame(json!({"op": 0, "s": 2, "t": "MESSAGE_CREATE", "d": m})),
        t0,
    );
    assert_eq!(read.kind, "message_create");
    let [Step::Event {
        delivery,
        payload,
        ack: None,
    }] = &read.steps[..]
    else {
        panic!("{read:?}")
    };
    assert_eq!(delivery, "m1");
    assert_eq!(payload, &pushed_payload(BOT, "app1", &m));
    let platform = ingress::platform::build(&source("")).unwrap();
    match platform.pushed(payload).unwrap() {
        ingress::platform::Intake::Event { event, .. } => {
            assert_eq!(
                (event.dedup_key.as_str(), event.text.as_str()),
                ("m1", "hi")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lock(&memory).seq, Some(2));
}

#[test]
fn the_next_connection_resumes_what_the_last_one_left() {
    let memory = Arc::default();
    let t0 = Instant::now();
    let mut first = session(&memory);
    first.read(hello(1000), t0);
    first.read(ready("sess-1", 1), t0);
    first.read(
        frame(json!({"op": 0, "s": 7, "t": "MESSAGE_CREATE", "d": {"id": "m"}})),
        t0,
    );
    drop(first);
    let mut second = session(&memory);
    let read = second.read(hello(1000), t0);
    assert_eq!(
        sent(&read),
        [json!({"op": 6, "d": {"token": TOKEN, "session_id": "sess-1", "seq": 7}})]
    );
    assert_eq!(
        second
            .read(frame(json!({"op": 0, "s": 8, "t": "RESUMED", "d": {}})), t0)
            .kind,
        "resumed"
    );
    // Not resumable any more: the one after identifies.
    second.read(frame(json!({"op": 9, "d": false})), t0);
    let mut third = session(&memory);
    assert_eq!(sent(&third.read(hello(1000), t0))[0]["op"], 2);
}

#[test]
fn close_codes_table() {
    for code in [4004, 4010, 4011, 4012, 4013, 4014] {
        assert!(matches!(on_close(code), OnClose::Fatal(_)), "{code}");
    }
    for code in [4007, 4009] {
        assert_eq!(on_close(code), OnClose::Identify, "{code}");
    }
    for code in [1000, 1001, 1006, 1011, 4000, 4001, 4002, 4003, 4005, 4008] {
        assert_eq!(on_close(code), OnClose::Resume, "{code}");
    }
    let OnClose::Fatal(hint) = on_close(4014) else {
        unreachable!()
    };
    assert!(hint.contains("Message Content Intent"), "{hint}");
}

#[test]
fn what_the_slot_does_after_each_end() {
    let g = gateway();
    let remember = |g: &DiscordGateway| {
        let mut m = g.memory();
        m.session_id = Some("sess-1".into());
        m.resume_url = Some("wss://resume.example".into());
        m.seq = Some(4);
    };
    let closed = |code: u16, reason: &str| Ended {
        close: Some((code, reason.into())),
        asked: None,
    };
    remember(&g);
    // Dropped, or closed with a code that allows resuming: the backoff, then resume.
    assert_eq!(g.ended(&Ended::default()), Next::Backoff);
    assert_eq!(g.ended(&closed(4000, "Unknown error")), Next::Backoff);
    assert!(g.remembered().session_id.is_some());
    // Asked by the session: when it said.
    let asked = Ended {
        close: None,
        asked: Some(("reconnect", Duration::ZERO)),
    };
    assert_eq!(g.ended(&asked), Next::After("reconnect", Duration::ZERO));
    // A session Discord ended: identify afresh.
    assert_eq!(g.ended(&closed(4009, "Session timed out.")), Next::Backoff);
    assert_eq!(g.remembered().session_id, None);
    // A refused token: the slow retry, saying what to do.
    remember(&g);
    let Next::Refused(why) = g.ended(&closed(4004, "Authentication failed.")) else {
        panic!("not refused")
    };
    assert_eq!(
        why,
        "Discord closed the Gateway with 4004 (Authentication failed.): authentication failed: the bot_token is wrong or was reset (Developer Portal → your application → Bot → Reset Token)"
    );
    assert_eq!(g.remembered().session_id, None);
    assert!(!why.contains(TOKEN));
}

#[test]
fn gateway_bot_answers_table() {
    let ok = gateway_bot_answer(
        200,
        r#"{"url": "wss://gateway.discord.gg", "shards": 1, "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}}"#,
    )
    .unwrap();
    assert_eq!(ok.as_str(), "wss://gateway.discord.gg/?v=10&encoding=json");
    assert_eq!(
        gateway_bot_answer(401, r#"{"message": "401: Unauthorized", "code": 0}"#),
        Err(OpenError::Refused(
            "HTTP 401 Unauthorized 401: Unauthorized".into()
        ))
    );
    assert!(matches!(
        gateway_bot_answer(200, r#"{"url": "wss://g", "session_start_limit": {"total": 1000, "remaining": 0, "reset_after": 60000, "max_concurrency": 1}}"#),
        Err(OpenError::Later(_, wait)) if wait == Duration::from_secs(60)
    ));
    assert!(matches!(
        gateway_bot_answer(429, r#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}"#),
        Err(OpenError::Later(_, wait)) if wait == MS(1500)
    ));
    for (status, body) in [
        (502, ""),
        (200, "{}"),
        (200, r#"{"url": "https://not-a-websocket"}"#),
        (200, r#"{"url": "::"}"#),
    ] {
        assert!(
            matches!(gateway_bot_answer(status, body), Err(OpenError::Failed(_))),
            "{status} {body}"
        );
    }
    assert_eq!(
        connection_url("ws://127.0.0.1:9/resume?old=1")
            .unwrap()
            .as_str(),
        "ws://127.0.0.1:9/resume?v=10&encoding=json"
    );
}

#[tokio::test]
async fn a_session_is_resumed_at_its_url_a_few_times_then_given_up() {
    // Nothing listens on port 1: asking /gateway/bot fails, resuming asks nothing.
    let g = DiscordGateway::from_config(&source(&format!(
        "bot_token = \"{TOKEN}\"\napi_base = \"http://127.0.0.1:1/api/v10\""
    )))
    .unwrap();
    let http = reqwest::Client::new();
    assert!(matches!(g.open(&http).await, Err(OpenError::Failed(_))));
    {
        let mut m = g.memory();
        m.session_id = Some("sess-1".into());
        m.resume_url = Some("wss://resume.example".into());
        m.seq = Some(4);
    }
    for _ in 0..RESUME_TRIES {
        let url = g.open(&http).await.unwrap();
        assert_eq!(url.as_str(), "wss://resume.example/?v=10&encoding=json");
    }
    assert!(matches!(g.open(&http).await, Err(OpenError::Failed(_))));
    assert_eq!(g.remembered().session_id, None, "given up: identify afresh");
}

#[test]
fn config_needs_the_token_may_drop_the_privileged_intent_and_hides_the_token() {
    let issues = DiscordGateway::from_config(&source("")).unwrap_err();
    assert_eq!(issues[0].key, "sources.gw.bot_token");
    let without = DiscordGateway::from_config(&source(&format!(
        "bot_token = \"{TOKEN}\"\nmessage_content = false"
    )))
    .unwrap();
    assert_eq!(without.intents, 512 + 4096);
    assert_eq!(gateway().intents, 512 + 4096 + 32768);
    assert!(!format!("{:?}", gateway()).contains(TOKEN));
    assert!(!format!("{:?}", gateway().session()).contains(TOKEN));
    let g = gateway();
    assert!(!g.acks() && !g.pings() && !g.up_at_handshake());
}
