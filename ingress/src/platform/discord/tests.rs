use super::*;
use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};

/// RFC 8032's first Ed25519 test key (secret and public).
const RFC_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const NOW: i64 = 1_700_000_000;

fn signing_key() -> SigningKey {
    let secret: [u8; 32] = hex::decode(RFC_SECRET).unwrap().try_into().unwrap();
    SigningKey::from_bytes(&secret)
}

fn discord(settings: Value) -> Discord {
    Discord::from_config(&source("discord", 300, settings)).unwrap()
}

fn platform() -> Discord {
    discord(json!({"public_key": RFC_PUBLIC, "application_id": "app1"}))
}

fn signed(body: &str, ts: i64) -> HookRequest {
    request(&signing_key(), ts, body).to_hook_request(at(NOW))
}

#[test]
fn vectors_from_an_independent_signer() {
    let key = parse_public_key(RFC_PUBLIC).unwrap();
    // RFC 8032 test 1: the empty message.
    let rfc = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
    assert!(verify(&key, "", b"", rfc));
    // The same key signing `1700000000{"type":1}`, computed by OpenSSL (Python `cryptography`).
    let ping = "1695961a47c91a1ec033b819b7e87e3dbc583dd0cee6d1fd0216f58ac87b6228ae531ddbf91fb7bc28d7edf7f08604da16f54624f38a6bc0614e4dc13cd47f0f";
    assert!(verify(&key, "1700000000", br#"{"type":1}"#, ping));
    assert_eq!(
        signature(&signing_key(), "1700000000", br#"{"type":1}"#),
        ping
    );
    assert!(!verify(&key, "1700000001", br#"{"type":1}"#, ping));
    assert!(!verify(&key, "1700000000", br#"{"type":2}"#, ping));
    assert!(!verify(&key, "1700000000", br#"{"type":1}"#, &ping[..126]));
    assert!(!verify(&key, "1700000000", br#"{"type":1}"#, "zz"));
}

#[test]
fn ping_is_answered_with_pong() {
    let got = platform().receive(&signed(r#"{"type":1,"application_id":"app1"}"#, NOW));
    match got {
        Ok(Intake::Reply(r)) => {
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.content_type, "application/json");
            assert_eq!(&r.body[..], br#"{"type":1}"#);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_command_is_an_event_answered_deferred() {
    let body = slash_command(
        "int-1",
        "app1",
        "tok-SECRET",
        Some("g1"),
        "c1",
        "u1",
        "what is up?",
    );
    let got = platform().receive(&signed(&body, NOW)).unwrap();
    let Intake::Event { event, reply } = got else {
        panic!("{got:?}")
    };
    assert_eq!(&reply.body[..], br#"{"type":5}"#);
    assert_eq!(event.dedup_key, "int-1");
    assert_eq!(event.kind, "command");
    assert_eq!(event.text, "what is up?");
    assert_eq!(event.conversation.chat_type, ChatType::Group);
    assert_eq!(event.conversation.chat_id, "c1");
    assert_eq!(event.conversation.sender_id, "u1");
    assert_eq!(event.conversation.sender_name.as_deref(), Some("Ada"));
    assert_eq!(
        event.reply,
        Some(ReplyHandle::Discord {
            application_id: "app1".into(),
            channel_id: "c1".into(),
            interaction_token: Some("tok-SECRET".into()),
            token_expires_at: Some(NOW * 1000 + 15 * 60 * 1000),
            message_id: None,
        })
    );
    assert!(
        !event.payload.to_string().contains("tok-SECRET"),
        "the token is kept out of the payload"
    );
    assert_eq!(event.payload["data"]["name"], "ask");

    let dm = slash_command("int-2", "app1", "t", None, "d1", "u2", "hi");
    let e = event_of(&dm);
    assert_eq!(e.conversation.chat_type, ChatType::Single);
    assert_eq!(e.conversation.sender_id, "u2");
}

fn event_of(body: &str) -> NewEvent {
    event(platform().receive(&signed(body, NOW)))
}

#[test]
fn command_text_table() {
    let cases = [
        (json!({"name": "help", "type": 1}), "/help"),
        (
            json!({"name": "ask", "type": 1, "options": [{"name": "q", "type": 3, "value": "why"}, {"name": "n", "type": 4, "value": 3}]}),
            "why 3",
        ),
        (
            json!({"name": "kb", "type": 1, "options": [{"name": "search", "type": 1, "options": [{"name": "q", "type": 3, "value": "vpn"}]}]}),
            "vpn",
        ),
        (
            json!({"name": "Ask about this", "type": 3, "target_id": "m1",
                   "resolved": {"messages": {"m1": {"id": "m1", "content": " the printer is on fire "}}}}),
            "the printer is on fire",
        ),
    ];
    for (data, want) in cases {
        let name = data["name"].as_str().unwrap().to_owned();
        assert_eq!(command_text(&data, &name), want, "{data}");
    }
}

#[test]
fn refusals_and_other_interactions_table() {
    let p = platform();
    let command = slash_command("int-1", "app1", "t", Some("g"), "c", "u", "q");
    let mut tampered = signed(&command, NOW);
    // One byte of the body changed after signing.
    let mut bytes = tampered.body.to_vec();
    bytes[10] ^= 1;
    tampered.body = bytes.into();
    let mut bad_sig = signed(&command, NOW);
    let sig = bad_sig.header(SIGNATURE_HEADER).unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    bad_sig
        .headers
        .insert(SIGNATURE_HEADER, flipped.parse().unwrap());
    let other_key = SigningKey::from_bytes(&[7; 32]);
    let cases = [
        (
            "component",
            signed(r#"{"type":3,"id":"x"}"#, NOW),
            "ignore:interaction",
        ),
        (
            "modal",
            signed(r#"{"type":5,"id":"x"}"#, NOW),
            "ignore:interaction",
        ),
        (
            "autocomplete",
            signed(r#"{"type":4,"id":"x"}"#, NOW),
            "ignore:autocomplete",
        ),
        ("tampered body", tampered, "bad_signature"),
        ("tampered signature", bad_sig, "bad_signature"),
        (
            "another key",
            request(&other_key, NOW, &command).to_hook_request(at(NOW)),
            "bad_signature",
        ),
        ("old", signed(&command, NOW - 301), "stale_timestamp"),
        ("future", signed(&command, NOW + 301), "stale_timestamp"),
        (
            "another application",
            signed(&slash_command("i", "app2", "t", None, "c", "u", "q"), NOW),
            "wrong_receiver",
        ),
        ("no type", signed(r#"{"id":"x"}"#, NOW), "malformed"),
        ("unknown type", signed(r#"{"type":99}"#, NOW), "malformed"),
        ("not json", signed("]", NOW), "malformed"),
        (
            "no token",
            signed(&command.replace(r#""token":"t","#, ""), NOW),
            "malformed",
        ),
        (
            "unsigned",
            SignedRequest::new(Method::POST, command.clone()).to_hook_request(at(NOW)),
            "missing_signature",
        ),
        (
            "GET",
            SignedRequest::new(Method::GET, Vec::new()).to_hook_request(at(NOW)),
            "method_not_allowed",
        ),
    ];
    for (name, r, want) in cases {
        assert_eq!(outcome(&p.receive(&r)), want, "{name}");
    }
    // Rejections are 401, as Discord's probe of the URL expects.
    assert_eq!(Rejection::BadSignature.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        Rejection::MissingSignature.status(),
        StatusCode::UNAUTHORIZED
    );
    // Acknowledgements Discord accepts for what is not a question.
    match p.receive(&signed(r#"{"type":3}"#, NOW)) {
        Ok(Intake::Ignore { reply, .. }) => assert_eq!(&reply.body[..], br#"{"type":6}"#),
        other => panic!("{other:?}"),
    }
    // Without application_id configured, any application's interaction is taken.
    let open = discord(json!({"public_key": RFC_PUBLIC}));
    let any = slash_command("i", "app2", "t", None, "c", "u", "q");
    assert_eq!(outcome(&open.receive(&signed(&any, NOW))), "event");
}

#[test]
fn config_table() {
    for (settings, key) in [
        (json!({}), "sources.src.public_key"),
        (json!({"public_key": "abc"}), "sources.src.public_key"),
        (
            json!({"public_key": "zz".repeat(32)}),
            "sources.src.public_key",
        ),
        (
            json!({"public_key": RFC_PUBLIC, "signing_secret": "x"}),
            "sources.src.signing_secret",
        ),
    ] {
        let src = source("discord", 300, settings);
        let issues = problems(Discord::from_config(&src), &src);
        assert_eq!(issue_keys(&issues), [key]);
    }
    assert!(Discord::from_config(&source(
        "discord",
        300,
        json!({"public_key": RFC_PUBLIC.to_uppercase(), "application_id": 123})
    ))
    .is_ok());
}

#[test]
fn stream_mode_needs_no_public_key_and_reads_gateway_messages() {
    let mut stream = source("discord", 300, json!({}));
    stream.mode = shared::config::SourceMode::Stream;
    let gw = Discord::from_config(&stream).unwrap();
    // It takes no interactions: nothing to verify them with.
    let command = slash_command("i1", "app1", "tok", Some("g"), "c", "u", "q");
    assert_eq!(
        gw.receive(&signed(&command, NOW)),
        Err(Rejection::BadSignature)
    );
    let bot = "900000000000000042";
    let m = gateway::message("m1", None, "dm", "u1", false, "hello", &[]);
    let e = event(gw.pushed(&gateway::pushed_payload(bot, "app1", &m)));
    assert_eq!((e.dedup_key.as_str(), e.text.as_str()), ("m1", "hello"));
    // A bad key is still reported; an HTTP source still needs one.
    let mut bad = source("discord", 300, json!({"public_key": "abc"}));
    bad.mode = shared::config::SourceMode::Stream;
    assert_eq!(
        issue_keys(&Discord::from_config(&bad).unwrap_err()),
        ["sources.src.public_key"]
    );
    assert_eq!(
        issue_keys(&Discord::from_config(&source("discord", 300, json!({}))).unwrap_err()),
        ["sources.src.public_key"]
    );
}
