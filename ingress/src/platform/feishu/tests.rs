//! Tests of the `feishu` platform: official vectors where the platform publishes them, round trips
//! through its own signing helpers, and tables of good, tampered, missing, stale, malformed and
//! ignored requests.
use super::*;
use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};

const TOKEN: &str = "v-token";
const KEY: &str = "enc-key";
const NOW: i64 = 1_700_000_000;

fn platform(encrypt_key: Option<&str>, lark: bool) -> Feishu {
    let mut settings = json!({"verification_token": TOKEN});
    match encrypt_key {
        Some(k) => settings["encrypt_key"] = json!(k),
        None => settings["allow_unsigned"] = json!(true),
    }
    Feishu::from_config(
        &source(if lark { "lark" } else { "feishu" }, 300, settings),
        lark,
    )
    .unwrap()
}

#[test]
fn official_decrypt_vector() {
    let plain = decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=").unwrap();
    assert_eq!(plain, b"hello world");
    assert_eq!(
        decrypt("other key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="),
        None
    );
}

/// The official Go SDK's own challenge (`event/dispatcher/dispatcher_test.go`, encrypt key
/// `1212121212`, verification token `v`): schema 2.0 with the token in `header`, encrypted, and
/// posted unsigned as Feishu posts challenges.
#[test]
fn official_sdk_challenge_vector_has_its_token_in_the_header() {
    const SDK_ENCRYPTED: &str = "bZ3L7yh6m3Fkuffl4g+3uGjIHnhOm5fVZbKVuyT8t7tcd5ABMYm8l28/X900ZL3knZ7n+sCREu/H2WnIzft0amC7+xWqNH8o25IU63N4BnZWfHh+4hyG76QPd19vkw2bPJCx9aqxK8Nz+xqFNbk0RdgyWhmgd30jSxHtcQXAllkI7FMpGpOCteJad3bLXPDBQIV/xkCtKICCS7Z63gakpxZCLaRZ3qCXP1fapHh+LBIupxenrU6ysc7I3nHmjmKie41IiWwS5puG4zQHhVbq6KWLcgWm/3NBZOPQy53ucMu75SXA55I7jarVLZXWUcqBGrcgE3vouWbtwgZuzmoTQl0GSh5VYSVvpW992BuGxUWj0XjPYdICJm6Cr7xouNXwMcdb7N8caVdkdSZeEnswG19qSyDoQhklwzNGW0yiaayulBqJNjfge/G5V3401c2XaIuAeEIo+QQ4RSNpRGfnHkbu/j55FGQAGWjpuBNaIwZbaUoVP3NkGP+vM5rpEDe3sL2GN+Xsd+g9yBs7FqdMV8mXTGgLjCqjrPrke5/km76Q3Pe6KPs2YexMRG4MkSx3xUTzZnNn7zIzShPcjeSwBd2pxk6ht5N+fzueZdxl6Oo=";
    let sdk = Feishu::from_config(
        &source(
            "feishu",
            300,
            json!({"verification_token": "v", "encrypt_key": "1212121212"}),
        ),
        false,
    )
    .unwrap();
    let req =
        request_plain(&json!({ "encrypt": SDK_ENCRYPTED }).to_string()).to_hook_request(at(NOW));
    assert_eq!(
        sdk.receive(&req).unwrap(),
        Intake::Reply(HookReply::json(
            StatusCode::OK,
            &json!({"challenge": "1212"})
        ))
    );
}

/// The token is read in `header.token` when the body has a header, else at the top level, and
/// nowhere else.
#[test]
fn the_token_is_read_in_the_header_or_at_the_top_level_and_only_there() {
    let challenge = |v: Value| request_plain(&v.to_string()).to_hook_request(at(NOW));
    let base = json!({"type": "url_verification", "challenge": "c"});
    let with = |extra: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        challenge(v)
    };
    let cases = [
        ("top level", with(json!({"token": TOKEN})), "reply"),
        (
            "header",
            with(json!({"schema": "2.0", "header": {"token": TOKEN}})),
            "reply",
        ),
        (
            "header without schema",
            with(json!({"header": {"token": TOKEN}})),
            "reply",
        ),
        (
            "header wins over the top level",
            with(json!({"token": TOKEN, "header": {"token": "other"}})),
            "bad_token",
        ),
        (
            "a header without a token",
            with(json!({"token": TOKEN, "header": {"event_id": "e"}})),
            "bad_token",
        ),
        (
            "inside event",
            with(json!({"event": {"token": TOKEN}})),
            "bad_token",
        ),
        ("none", challenge(base.clone()), "bad_token"),
        ("wrong", with(json!({"token": "nope"})), "bad_token"),
    ];
    let p = platform(None, false);
    for (name, req, want) in cases {
        assert_eq!(outcome(&p.receive(&req)), want, "{name}");
    }
}

#[test]
fn encrypt_and_sign_round_trip() {
    for len in [0usize, 1, 15, 16, 17, 100] {
        let msg = "y".repeat(len);
        let sealed = encrypt(KEY, msg.as_bytes(), [9; 16]);
        assert_eq!(decrypt(KEY, &sealed).unwrap(), msg.as_bytes());
    }
    let body = b"{\"encrypt\":\"x\"}";
    let sig = signature("1", "n", KEY, body);
    assert_eq!(sig.len(), 64);
    assert_ne!(sig, signature("1", "n", KEY, b"{\"encrypt\":\"y\"}"));
}

#[test]
fn challenge_plain_and_encrypted() {
    let want = Intake::Reply(HookReply::json(
        StatusCode::OK,
        &json!({"challenge": "c-123"}),
    ));
    let plain = request_plain(&challenge_body(TOKEN, "c-123")).to_hook_request(at(NOW));
    assert_eq!(platform(None, false).receive(&plain).unwrap(), want);
    // Encrypted challenges come without signature headers.
    let sealed =
        json!({"encrypt": encrypt(KEY, challenge_body(TOKEN, "c-123").as_bytes(), [1; 16])})
            .to_string();
    let req = request_plain(&sealed).to_hook_request(at(NOW));
    assert_eq!(platform(Some(KEY), false).receive(&req).unwrap(), want);
    let wrong = request_plain(&challenge_body("nope", "c-123")).to_hook_request(at(NOW));
    assert_eq!(
        platform(None, false).receive(&wrong).unwrap_err(),
        Rejection::BadToken
    );
    assert_eq!(
        platform(None, false).receive(&req).unwrap_err(),
        Rejection::Undecryptable,
        "no key configured"
    );
}

#[test]
fn receive_table() {
    let text = text_event_v2(
        "ev-1",
        TOKEN,
        "oc_1",
        true,
        "ou_1",
        "om_1",
        "@_user_1 what is the price?",
    );
    let enc =
        |body: &str| request_encrypted(KEY, NOW, "nonce", body, [5; 16]).to_hook_request(at(NOW));
    let plain = |body: &str| request_plain(body).to_hook_request(at(NOW));
    let good = enc(&text);
    let with = |f: &dyn Fn(&mut HookRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let base: Value = serde_json::from_str(&text).unwrap();
    let variant = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v.to_string()
    };
    let image = variant(&|v| v["event"]["message"]["message_type"] = json!("image"));
    let from_app = variant(&|v| v["event"]["sender"]["sender_type"] = json!("app"));
    let read = variant(&|v| v["header"]["event_type"] = json!("im.message.message_read_v1"));
    let reaction =
        variant(&|v| v["header"]["event_type"] = json!("im.message.reaction.created_v1"));
    let joined = variant(&|v| v["header"]["event_type"] = json!("im.chat.member.user.added_v1"));
    let bad_token = variant(&|v| v["header"]["token"] = json!("other"));
    let bad_content = variant(&|v| v["event"]["message"]["content"] = json!("{not json"));
    let only_mention =
        variant(&|v| v["event"]["message"]["content"] = json!("{\"text\":\"@_user_1\"}"));
    let v1 = json!({"uuid": "u-1", "token": TOKEN, "ts": "1.0", "type": "event_callback", "event": {
        "type": "message", "msg_type": "text", "text": "<at open_id=\"ou_bot\">@bot</at> hi", "open_chat_id": "oc_9",
        "open_id": "ou_9", "open_message_id": "om_9", "chat_type": "private"}})
    .to_string();
    let v1_read = json!({"uuid": "u-2", "token": TOKEN, "type": "event_callback", "event": {"type": "message_read"}}).to_string();
    let (unkeyed, keyed, other_keyed) = (
        platform(None, false),
        platform(Some(KEY), false),
        platform(Some("other"), false),
    );
    let cases: Vec<(&str, &Feishu, HookRequest, &str)> = vec![
        ("encrypted, signed", &keyed, good.clone(), "event"),
        ("plain, no key", &unkeyed, plain(&text), "event"),
        (
            "plain, key set, unsigned",
            &keyed,
            plain(&text),
            "missing_signature",
        ),
        (
            "plain challenge, key set, unsigned",
            &keyed,
            plain(&challenge_body(TOKEN, "c-1")),
            "missing_signature",
        ),
        ("schema 1.0", &unkeyed, plain(&v1), "event"),
        (
            "schema 1.0 read",
            &unkeyed,
            plain(&v1_read),
            "ignore:read_receipt",
        ),
        (
            "tampered body",
            &keyed,
            with(&|r| {
                r.body = r.body.iter().rev().copied().collect::<Vec<u8>>().into();
            }),
            "bad_signature",
        ),
        (
            "stale",
            &keyed,
            with(&|r| r.now = at(NOW + 301)),
            "stale_timestamp",
        ),
        (
            "no signature header",
            &keyed,
            with(&|r| {
                r.headers.remove(SIGNATURE_HEADER);
            }),
            "missing_signature",
        ),
        (
            "its own key",
            &other_keyed,
            request_encrypted("other", NOW, "n", &text, [5; 16])
                .to_hook_request(at(NOW))
                .clone(),
            "event",
        ),
        (
            "sealed with another key",
            &keyed,
            {
                let mut r =
                    request_encrypted("other", NOW, "n", &text, [5; 16]).to_hook_request(at(NOW));
                let sig = signature(&NOW.to_string(), "n", KEY, &r.body);
                r.headers.insert(SIGNATURE_HEADER, sig.parse().unwrap());
                r
            },
            "undecryptable",
        ),
        ("bad token", &unkeyed, plain(&bad_token), "bad_token"),
        ("not json", &unkeyed, plain("{"), "malformed"),
        (
            "no schema, no uuid",
            &unkeyed,
            plain(&json!({"token": TOKEN}).to_string()),
            "malformed",
        ),
        (
            "content not json",
            &unkeyed,
            plain(&bad_content),
            "malformed",
        ),
        ("image", &unkeyed, plain(&image), "ignore:not_text"),
        ("from an app", &unkeyed, plain(&from_app), "ignore:bot_echo"),
        (
            "read receipt",
            &unkeyed,
            plain(&read),
            "ignore:read_receipt",
        ),
        ("reaction", &unkeyed, plain(&reaction), "ignore:reaction"),
        ("join", &unkeyed, plain(&joined), "ignore:join"),
        (
            "only a mention",
            &unkeyed,
            plain(&only_mention),
            "ignore:empty",
        ),
        (
            "GET",
            &unkeyed,
            with(&|r| r.method = Method::GET),
            "method_not_allowed",
        ),
    ];
    for (name, p, req, want) in cases {
        assert_eq!(outcome(&p.receive(&req)), want, "{name}");
    }
    let e = event(platform(Some(KEY), false).receive(&good));
    assert_eq!(
        (e.dedup_key.as_str(), e.text.as_str()),
        ("ev-1", "what is the price?")
    );
    assert_eq!(
        (e.conversation.chat_id.as_str(), e.conversation.chat_type),
        ("oc_1", ChatType::Group)
    );
    assert_eq!(e.conversation.sender_id, "ou_1");
    assert_eq!(
        e.reply,
        Some(ReplyHandle::Feishu {
            message_id: "om_1".into(),
            chat_id: "oc_1".into(),
            lark: false
        })
    );
    assert_eq!(e.payload, base, "the payload is the decrypted body");
    let e = event(platform(None, true).receive(&plain(&v1)));
    assert_eq!(
        (
            e.dedup_key.as_str(),
            e.text.as_str(),
            e.conversation.chat_type
        ),
        ("u-1", "hi", ChatType::Single)
    );
    assert_eq!(
        e.reply,
        Some(ReplyHandle::Feishu {
            message_id: "om_9".into(),
            chat_id: "oc_9".into(),
            lark: true
        })
    );
    assert_eq!(platform(None, true).name(), "lark");
}

#[test]
fn mentions_table() {
    let keys = vec!["@_user_1".to_string(), "@_user_10".to_string()];
    for (text, want) in [
        ("@_user_1 hello", "hello"),
        ("hello @_user_10", "hello"),
        ("@_all ping @_user_3", "ping"),
        ("mail me at a@_b.c", "mail me at a@_b.c"),
        ("@_user_", "@_user_"),
        ("", ""),
    ] {
        assert_eq!(strip_mentions(text, &keys), want, "{text}");
    }
}

#[test]
fn config_table() {
    let ok = json!({"verification_token": "t", "encrypt_key": "k", "app_id": "cli", "app_secret": "s", "api_base": "https://open.larksuite.com"});
    assert!(Feishu::from_config(&source("lark", 0, ok), true).is_ok());
    let unsigned = json!({"verification_token": "t", "allow_unsigned": true});
    assert!(Feishu::from_config(&source("feishu", 0, unsigned), false).is_ok());
    for (settings, key) in [
        (
            json!({"allow_unsigned": true}),
            "sources.src.verification_token",
        ),
        (
            json!({"verification_token": "t", "allow_unsigned": true, "encryptkey": "k"}),
            "sources.src.encryptkey",
        ),
        (
            json!({"verification_token": "t", "encrypt_key": ""}),
            "sources.src.encrypt_key",
        ),
        // Unsigned only when the config says so, in a key that says it.
        (
            json!({"verification_token": "t"}),
            "sources.src.encrypt_key",
        ),
        (
            json!({"verification_token": "t", "allow_unsigned": false}),
            "sources.src.encrypt_key",
        ),
        (
            json!({"verification_token": "t", "encrypt_key": "k", "allow_unsigned": true}),
            "sources.src.allow_unsigned",
        ),
    ] {
        let src = source("feishu", 0, settings);
        assert_eq!(
            issue_keys(&problems(Feishu::from_config(&src, false), &src)),
            [key]
        );
    }
}

#[test]
fn a_long_connection_needs_no_token_nor_key_and_normalises_an_event_as_the_callback() {
    let mut stream = source("feishu", 300, json!({}));
    stream.mode = shared::config::SourceMode::Stream;
    let pushed = Feishu::from_config(&stream, false).unwrap();
    let body = text_event_v2("ev-ws-1", TOKEN, "oc_1", false, "ou_1", "om_1", "over ws");
    let via_ws = event(pushed.pushed(body.as_bytes()));
    let via_http =
        event(platform(None, false).receive(&request_plain(&body).to_hook_request(at(NOW))));
    assert_eq!(via_ws, via_http, "same event, same dedup key");
    assert_eq!(via_ws.dedup_key, "ev-ws-1");
    // Pushed events carry no token worth checking (the connection vouches for them).
    let other = text_event_v2("ev-ws-2", "", "oc_1", false, "ou_1", "om_2", "no token");
    assert_eq!(outcome(&pushed.pushed(other.as_bytes())), "event");
    assert!(matches!(pushed.pushed(b"{"), Err(Rejection::Malformed(_))));
    // No token: it takes no callback.
    assert_eq!(
        pushed.receive(&request_plain(&body).to_hook_request(at(NOW))),
        Err(Rejection::BadToken)
    );
    let mut unsigned = source("feishu", 300, json!({"allow_unsigned": true}));
    unsigned.mode = shared::config::SourceMode::Stream;
    assert!(Feishu::from_config(&unsigned, false).is_ok());
}
