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
    if let Some(k) = encrypt_key {
        settings["encrypt_key"] = json!(k);
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
    for (settings, key) in [
        (json!({}), "sources.src.verification_token"),
        (
            json!({"verification_token": "t", "encryptkey": "k"}),
            "sources.src.encryptkey",
        ),
        (
            json!({"verification_token": "t", "encrypt_key": ""}),
            "sources.src.encrypt_key",
        ),
    ] {
        let src = source("feishu", 0, settings);
        assert_eq!(
            issue_keys(&problems(Feishu::from_config(&src, false), &src)),
            [key]
        );
    }
}
