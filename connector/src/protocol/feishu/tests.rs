//! Tests of the Feishu/Lark long connection: the frame codec against bytes written out by hand
//! from the SDK's field numbers, the endpoint answer, pings at the server's interval, fragments
//! put back together and the acknowledgement frame.
use super::frame::Header;
use super::*;

fn data_frame(id: &str, kind: &str, sum: usize, seq: usize, payload: &[u8]) -> PbFrame {
    let mut pb = PbFrame {
        seq_id: 7,
        log_id: 9,
        service: 33,
        method: METHOD_DATA,
        payload: Some(payload.to_vec()),
        ..PbFrame::default()
    };
    for (k, v) in [
        ("type", kind.to_owned()),
        ("message_id", id.to_owned()),
        ("sum", sum.to_string()),
        ("seq", seq.to_string()),
        ("trace_id", "tr-1".to_owned()),
    ] {
        pb.add_header(k, v);
    }
    pb
}

fn read(session: &mut WsSession, pb: &PbFrame) -> Read {
    session.read(Frame::Binary(pb.to_bytes()), tokio::time::Instant::now())
}

#[test]
fn the_frame_codec_matches_the_sdks_field_numbers() {
    // SeqID 1, LogID 2, service 3, method 1, headers [type=event], payload "{}".
    let wire = [
        0x08, 1, 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 13, 0x0a, 4, b't', b'y', b'p', b'e', 0x12, 5,
        b'e', b'v', b'e', b'n', b't', 0x42, 2, b'{', b'}',
    ];
    let pb = PbFrame::from_bytes(&wire).unwrap();
    let want = PbFrame {
        seq_id: 1,
        log_id: 2,
        service: 3,
        method: 1,
        headers: vec![Header {
            key: "type".into(),
            value: "event".into(),
        }],
        payload: Some(b"{}".to_vec()),
        ..PbFrame::default()
    };
    assert_eq!(pb, want);
    assert_eq!(want.to_bytes(), wire);
}

#[test]
fn the_endpoint_answer_gives_the_url_and_settings_or_says_why_not() {
    let ok: EndpointAnswer = serde_json::from_value(json!({"code": 0, "msg": "ok", "data": {
        "URL": "wss://msg-frontier.feishu.cn/ws/v2?device_id=d1&service_id=33",
        "ClientConfig": client_config_json(90)}}))
    .unwrap();
    let (url, config) = endpoint(ok).unwrap();
    assert_eq!(url.host_str(), Some("msg-frontier.feishu.cn"));
    assert_eq!(config.ping_interval, 90);
    assert_eq!(config.reconnect_count, -1);
    let answer = |code: i64| -> EndpointAnswer {
        serde_json::from_value(json!({"code": code, "msg": "nope"})).unwrap()
    };
    assert!(matches!(endpoint(answer(1)), Err(OpenError::Failed(_))));
    assert!(matches!(
        endpoint(answer(1_000_040_343)),
        Err(OpenError::Failed(_))
    ));
    let Err(OpenError::Refused(why)) = endpoint(answer(10014)) else {
        panic!("a refusal")
    };
    assert!(why.contains("code 10014 nope"), "{why}");
    let no_url: EndpointAnswer = serde_json::from_value(json!({"code": 0, "data": {}})).unwrap();
    assert!(matches!(endpoint(no_url), Err(OpenError::Failed(_))));
}

#[test]
fn pings_go_for_the_urls_service_at_the_servers_interval_which_a_pong_may_change() {
    let source: SourceConfig = serde_json::from_value(json!({"id": "fs", "platform": "feishu",
        "mode": "stream", "app": "support", "app_id": "cli_1", "app_secret": "s"}))
    .unwrap();
    let ws = FeishuWs::from_config(&source, false).unwrap();
    let url = url::Url::parse("wss://h/ws?device_id=d&service_id=4242").unwrap();
    *ws.opened.lock().unwrap() = Some((
        url.to_string(),
        serde_json::from_value(client_config_json(3)).unwrap(),
    ));
    let mut session = ws.session_for(&url);
    // The first ping is due at once, then every interval the server said (3 s).
    let due = session.deadline().expect("pings on the session's clock");
    assert!(due <= tokio::time::Instant::now());
    let ping = session.timer(due);
    assert_eq!(ping.kind, "ping");
    let [Step::Send(Frame::Binary(ping))] = ping.steps.as_slice() else {
        panic!("one ping frame")
    };
    let ping = PbFrame::from_bytes(ping).unwrap();
    assert_eq!(
        (ping.method, ping.service, ping.header("type")),
        (METHOD_CONTROL, 4242, Some("ping"))
    );
    assert_eq!(session.deadline(), Some(due + Duration::from_secs(3)));
    // A pong with another interval: it counts from then.
    let mut pong = PbFrame::control(4242, "pong");
    pong.payload = Some(client_config_json(7).to_string().into_bytes());
    let heard = due + Duration::from_secs(1);
    assert_eq!(
        session.read(Frame::Binary(pong.to_bytes()), heard).kind,
        "pong"
    );
    assert_eq!(session.deadline(), Some(heard + Duration::from_secs(7)));
    // The same interval again changes nothing.
    let again = heard + Duration::from_secs(2);
    session.read(Frame::Binary(pong.to_bytes()), again);
    assert_eq!(session.deadline(), Some(heard + Duration::from_secs(7)));
    // Another URL than the one opened: the SDK's defaults.
    let mut other = ws.session_for(&url::Url::parse("wss://h/ws?service_id=1").unwrap());
    let due = other.deadline().unwrap();
    other.timer(due);
    assert_eq!(other.deadline(), Some(due + DEFAULT_PING));
}

#[test]
fn an_event_is_acked_with_its_own_frame_biz_rt_and_code_200() {
    let mut session = WsSession::new(33, ClientConfig::default());
    let r = read(
        &mut session,
        &data_frame("m-1", "event", 1, 0, b"{\"a\":1}"),
    );
    assert_eq!(r.kind, "event");
    let mut steps = r.steps;
    let Some(Step::Event {
        delivery,
        payload,
        ack,
    }) = steps.pop()
    else {
        panic!("not an event")
    };
    assert_eq!(
        (delivery.as_str(), &payload[..]),
        ("m-1", &b"{\"a\":1}"[..])
    );
    let Frame::Binary(bytes) = ack.expect("Feishu acks events")(Duration::from_millis(12)) else {
        panic!("binary")
    };
    let answer = PbFrame::from_bytes(&bytes).unwrap();
    assert_eq!((answer.seq_id, answer.log_id, answer.service), (7, 9, 33));
    assert_eq!(answer.header("message_id"), Some("m-1"));
    assert_eq!(answer.header("biz_rt"), Some("12"));
    let body: Value = serde_json::from_slice(answer.payload.as_deref().unwrap()).unwrap();
    assert_eq!(body, json!({"code": 200}));
}

#[test]
fn fragments_are_put_back_together_in_seq_order() {
    let mut session = WsSession::new(33, ClientConfig::default());
    assert_eq!(
        read(&mut session, &data_frame("m-2", "event", 3, 2, b"!}")).kind,
        "fragment"
    );
    assert_eq!(
        read(&mut session, &data_frame("m-2", "event", 3, 0, b"{\"t\":")).kind,
        "fragment"
    );
    // Another message's fragment does not mix in.
    assert_eq!(
        read(&mut session, &data_frame("m-3", "event", 2, 0, b"x")).kind,
        "fragment"
    );
    let r = read(&mut session, &data_frame("m-2", "event", 3, 1, b"\"hi")).steps;
    let [Step::Event { payload, .. }] = &r[..] else {
        panic!("{r:?}")
    };
    assert_eq!(payload, b"{\"t\":\"hi!}");
    // A seq beyond sum is not a fragment of anything.
    assert!(read(&mut session, &data_frame("m-4", "event", 2, 5, b"x"))
        .steps
        .is_empty());
}

#[test]
fn cards_controls_and_strangers_are_not_kept() {
    let mut session = WsSession::new(33, ClientConfig::default());
    assert!(read(&mut session, &data_frame("c", "card", 1, 0, b"{}"))
        .steps
        .is_empty());
    assert!(read(&mut session, &PbFrame::control(33, "ping"))
        .steps
        .is_empty());
    assert!(session
        .read(Frame::Binary(vec![0xff, 0xff]), tokio::time::Instant::now())
        .steps
        .is_empty());
    assert!(session
        .read(Frame::Text("{}".into()), tokio::time::Instant::now())
        .steps
        .is_empty());
}

#[test]
fn keys_are_required_lark_has_its_host_and_no_secret_shows() {
    let source = |settings: Value| -> SourceConfig {
        let mut v = json!({"id": "fs", "platform": "lark", "mode": "stream", "app": "support"});
        v.as_object_mut()
            .unwrap()
            .extend(settings.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    };
    let lark = FeishuWs::from_config(
        &source(json!({"app_id": "cli", "app_secret": "zzsecretzz"})),
        true,
    )
    .unwrap();
    assert_eq!((lark.name(), lark.api_base.as_str()), ("lark", LARK_BASE));
    assert!(!format!("{lark:?}").contains("zzsecretzz"));
    let keys: Vec<String> = FeishuWs::from_config(&source(json!({})), true)
        .unwrap_err()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys, ["sources.fs.app_id", "sources.fs.app_secret"]);
}
