//! Tests of the `slack` platform: official vectors where the platform publishes them, round trips
//! through its own signing helpers, and tables of good, tampered, missing, stale, malformed and
//! ignored requests.
use super::*;
use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const VECTOR_TS: &str = "1531420618";
const VECTOR_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const VECTOR_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
const NOW: i64 = 1_700_000_000;
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

fn platform(max_skew_secs: u64, bot_user_id: Option<&str>) -> Slack {
    let mut settings = json!({"signing_secret": SECRET});
    if let Some(b) = bot_user_id {
        settings["bot_user_id"] = json!(b);
    }
    Slack::from_config(&source("slack", max_skew_secs, settings)).unwrap()
}

#[test]
fn official_vector() {
    assert_eq!(
        signature(SECRET, VECTOR_TS, VECTOR_BODY.as_bytes()),
        VECTOR_SIG
    );
    let req = SignedRequest::new(Method::POST, VECTOR_BODY)
        .with_header("content-type", FORM)
        .with_header(TIMESTAMP_HEADER, VECTOR_TS)
        .with_header(SIGNATURE_HEADER, VECTOR_SIG)
        .to_hook_request(at(NOW));
    let e = event(platform(0, None).receive(&req));
    assert_eq!(
        e.dedup_key,
        "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    );
    assert_eq!(
        (e.kind.as_str(), e.text.as_str()),
        ("command", "/webhook-collect")
    );
    assert_eq!(
        e.reply,
        Some(ReplyHandle::Slack {
            channel: "G8PSS9T3V".into(),
            thread_ts: None,
            response_url: Some(
                "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN"
                    .into()
            ),
        })
    );
    assert_eq!(e.conversation.sender_name.as_deref(), Some("roadrunner"));
    assert_eq!(
        outcome(&platform(300, None).receive(&req)),
        "stale_timestamp",
        "the vector is old"
    );
}

#[test]
fn receive_table() {
    let dm = event_callback(
        "Ev1",
        message_event("D1", "im", "U9", "hello bot", "1700000000.000100"),
    );
    let good = request(SECRET, NOW, &dm, JSON).to_hook_request(at(NOW));
    let with = |f: &dyn Fn(&mut HookRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let signed = |body: String| request(SECRET, NOW, &body, JSON).to_hook_request(at(NOW));
    let msg = |f: &dyn Fn(&mut Value)| {
        let mut e = message_event("C1", "channel", "U9", "hi", "1700000000.000200");
        f(&mut e);
        signed(event_callback("Ev2", e))
    };
    let challenge =
        signed(json!({"token": "t", "challenge": "ch-1", "type": "url_verification"}).to_string());
    let mention = signed(event_callback(
        "Ev3",
        json!({"type": "app_mention", "channel": "C1", "user": "U9", "text": "<@UBOT> what's up?", "ts": "1.2", "thread_ts": "1.0"}),
    ));
    let cases: Vec<(&str, HookRequest, &str)> = vec![
        ("dm", good.clone(), "event"),
        (
            "retry keeps working",
            with(&|r| {
                r.headers.insert("x-slack-retry-num", "1".parse().unwrap());
            }),
            "event",
        ),
        ("challenge", challenge, "reply"),
        ("app mention", mention, "event"),
        ("channel message", msg(&|_| {}), "event"),
        (
            "channel message mentioning the bot",
            msg(&|e| e["text"] = json!("<@UBOT> hi")),
            "ignore:mention_duplicate",
        ),
        (
            "from a bot",
            msg(&|e| e["bot_id"] = json!("B1")),
            "ignore:bot_echo",
        ),
        (
            "from the bot user",
            msg(&|e| e["user"] = json!("UBOT")),
            "ignore:bot_echo",
        ),
        (
            "bot_message",
            msg(&|e| e["subtype"] = json!("bot_message")),
            "ignore:bot_echo",
        ),
        (
            "edited",
            msg(&|e| e["subtype"] = json!("message_changed")),
            "ignore:edited",
        ),
        (
            "deleted",
            msg(&|e| e["subtype"] = json!("message_deleted")),
            "ignore:deleted",
        ),
        (
            "join",
            msg(&|e| e["subtype"] = json!("channel_join")),
            "ignore:join",
        ),
        ("empty", msg(&|e| e["text"] = json!("  ")), "ignore:empty"),
        (
            "reaction",
            signed(event_callback(
                "Ev4",
                json!({"type": "reaction_added", "user": "U9"}),
            )),
            "ignore:reaction",
        ),
        (
            "interaction",
            request(SECRET, NOW, "payload=%7B%7D", FORM).to_hook_request(at(NOW)),
            "ignore:interaction",
        ),
        (
            "tampered body",
            with(&|r| r.body = dm.replace("hello", "hellp").into()),
            "bad_signature",
        ),
        (
            "tampered signature",
            with(&|r| {
                r.headers
                    .insert(SIGNATURE_HEADER, VECTOR_SIG.parse().unwrap());
            }),
            "bad_signature",
        ),
        (
            "no signature",
            with(&|r| {
                r.headers.remove(SIGNATURE_HEADER);
            }),
            "missing_signature",
        ),
        (
            "no timestamp",
            with(&|r| {
                r.headers.remove(TIMESTAMP_HEADER);
            }),
            "missing_signature",
        ),
        ("stale", with(&|r| r.now = at(NOW + 301)), "stale_timestamp"),
        (
            "future",
            with(&|r| r.now = at(NOW - 301)),
            "stale_timestamp",
        ),
        ("not json", signed("{oops".into()), "malformed"),
        ("no type", signed("{}".into()), "malformed"),
        (
            "form without command",
            request(SECRET, NOW, "a=b", FORM).to_hook_request(at(NOW)),
            "malformed",
        ),
        (
            "GET",
            with(&|r| r.method = Method::GET),
            "method_not_allowed",
        ),
    ];
    let p = platform(300, Some("UBOT"));
    for (name, req, want) in cases {
        assert_eq!(outcome(&p.receive(&req)), want, "{name}");
    }
    let e = event(p.receive(&good));
    assert_eq!(
        (
            e.dedup_key.as_str(),
            e.text.as_str(),
            e.conversation.chat_type
        ),
        ("Ev1", "hello bot", ChatType::Single)
    );
    assert_eq!(
        e.reply,
        Some(ReplyHandle::Slack {
            channel: "D1".into(),
            thread_ts: Some("1700000000.000100".into()),
            response_url: None
        })
    );
    let retry = with(&|r| {
        r.headers.insert("x-slack-retry-num", "2".parse().unwrap());
    });
    assert_eq!(
        event(p.receive(&retry)).dedup_key,
        e.dedup_key,
        "a retry has the same dedup key"
    );
    let e = event(p.receive(&signed(event_callback(
        "Ev3",
        json!({"type": "app_mention", "channel": "C1", "user": "U9", "text": "<@UBOT> what's up?", "ts": "1.2", "thread_ts": "1.0"}),
    ))));
    assert_eq!(
        (e.text.as_str(), e.conversation.chat_type),
        ("what's up?", ChatType::Group)
    );
    assert_eq!(
        e.reply,
        Some(ReplyHandle::Slack {
            channel: "C1".into(),
            thread_ts: Some("1.0".into()),
            response_url: None
        })
    );
    // Without bot_user_id an app mention still loses its leading mention.
    let e = event(platform(300, None).receive(&signed(event_callback(
        "Ev5",
        json!({"type": "app_mention", "channel": "C1", "user": "U9", "text": "<@UOTHER> hey", "ts": "1.3"}),
    ))));
    assert_eq!(e.text, "hey");
}

#[test]
fn config_table() {
    assert!(Slack::from_config(&source(
        "slack",
        300,
        json!({"signing_secret": "s", "bot_user_id": "U1", "bot_token": "xoxb", "api_base": "x"})
    ))
    .is_ok());
    for (settings, key) in [
        (json!({}), "sources.src.signing_secret"),
        (
            json!({"signing_secret": "s", "bot_id": "B"}),
            "sources.src.bot_id",
        ),
    ] {
        let src = source("slack", 300, settings);
        assert_eq!(issue_keys(&problems(Slack::from_config(&src), &src)), [key]);
    }
}

#[test]
fn socket_mode_needs_no_signing_secret_and_normalises_a_payload_as_the_callback() {
    let mut stream = source("slack", 300, json!({"bot_user_id": "UBOT"}));
    stream.mode = shared::config::SourceMode::Stream;
    let pushed = Slack::from_config(&stream).unwrap();
    let http = platform(300, Some("UBOT"));
    // An Events API envelope's payload is the callback's own JSON.
    let body = event_callback(
        "EvSock1",
        message_event("D1", "im", "U7", "hello <@UBOT>", "1.5"),
    );
    let via_socket = event(pushed.pushed(body.as_bytes()));
    let via_http = event(http.receive(&request(SECRET, NOW, &body, JSON).to_hook_request(at(NOW))));
    assert_eq!(via_socket, via_http, "same event, same dedup key");
    assert_eq!(via_socket.dedup_key, "EvSock1");
    // A slash command's payload is its form fields as a JSON object.
    let form = "command=%2Fask&text=what+now&trigger_id=trig.9&user_id=U7&user_name=ann&channel_id=C4&channel_name=general&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1%2F2%2Fx";
    let fields: serde_json::Map<String, Value> = url::form_urlencoded::parse(form.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let command = event(pushed.pushed(Value::Object(fields).to_string().as_bytes()));
    let via_form = event(http.receive(&request(SECRET, NOW, form, FORM).to_hook_request(at(NOW))));
    assert_eq!(command, via_form);
    assert_eq!(
        (command.kind.as_str(), command.dedup_key.as_str()),
        ("command", "trig.9")
    );
    // What is dropped over HTTP is dropped the same way over the socket.
    let echo = event_callback(
        "EvSock2",
        json!({"type": "message", "channel": "C1", "user": "U7", "text": "x", "ts": "1", "bot_id": "B1"}),
    );
    assert_eq!(outcome(&pushed.pushed(echo.as_bytes())), "ignore:bot_echo");
    assert!(matches!(pushed.pushed(b"[]"), Err(Rejection::Malformed(_))));
    // No secret: it takes no callback.
    assert_eq!(
        pushed.receive(&request(SECRET, NOW, &body, JSON).to_hook_request(at(NOW))),
        Err(Rejection::BadSignature)
    );
}
