//! Tests of the `wecom` platform: official vectors where the platform publishes them, round trips
//! through its own signing helpers, and tables of good, tampered, missing, stale, malformed and
//! ignored requests.
use super::*;
use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;

const TOKEN: &str = "QDG6eK";
const CORP_ID: &str = "wx5823bf96d3bd56c7";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

const ECHO_SIG: &str = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
const ECHO_TS: &str = "1409659589";
const ECHO_NONCE: &str = "263014780";
const ECHOSTR: &str =
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";

const MSG_SIG: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
const MSG_TS: &str = "1409659813";
const MSG_NONCE: &str = "1372623149";
const MSG_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";
const MSG_PLAIN: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n<FromUserName><![CDATA[mycreate]]></FromUserName>\n<CreateTime>1409659813</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[hello]]></Content>\n<MsgId>4561255354251345929</MsgId>\n<AgentID>218</AgentID>\n</xml>";

fn platform(max_skew_secs: u64) -> Wecom {
    let src = source(
        "wecom",
        max_skew_secs,
        json!({"token": TOKEN, "encoding_aes_key": AES_KEY, "receive_id": CORP_ID}),
    );
    Wecom::from_config(&src).unwrap()
}

fn get(query: &[(&str, &str)]) -> HookRequest {
    SignedRequest::new(Method::GET, Vec::new())
        .with_query(query)
        .to_hook_request(at(1_409_659_589))
}

fn post(query: &[(&str, &str)], body: &str) -> HookRequest {
    SignedRequest::new(Method::POST, body.to_owned())
        .with_query(query)
        .to_hook_request(at(1_409_659_813))
}

#[test]
fn official_url_verification_vector() {
    assert_eq!(signature(TOKEN, ECHO_TS, ECHO_NONCE, ECHOSTR), ECHO_SIG);
    let opened = AesKey::parse(AES_KEY).unwrap().decrypt(ECHOSTR).unwrap();
    assert_eq!(opened.message, b"1616140317555161061");
    assert_eq!(opened.receive_id, CORP_ID.as_bytes());
    let q = [
        ("msg_signature", ECHO_SIG),
        ("timestamp", ECHO_TS),
        ("nonce", ECHO_NONCE),
        ("echostr", ECHOSTR),
    ];
    let reply = platform(0).receive(&get(&q)).unwrap();
    assert_eq!(
        reply,
        Intake::Reply(HookReply::text(StatusCode::OK, "1616140317555161061"))
    );
    // WeCom may leave `+` unescaped in the query; form decoding turns it into a space.
    let raw = format!(
        "msg_signature={ECHO_SIG}&timestamp={ECHO_TS}&nonce={ECHO_NONCE}&echostr={ECHOSTR}"
    );
    let mut req = get(&[]);
    req.query = Some(raw);
    assert_eq!(outcome(&platform(0).receive(&req)), "reply");
}

#[test]
fn official_xml_message_vector_with_30_pad_bytes() {
    assert_eq!(signature(TOKEN, MSG_TS, MSG_NONCE, MSG_ENCRYPT), MSG_SIG);
    let opened = AesKey::parse(AES_KEY)
        .unwrap()
        .decrypt(MSG_ENCRYPT)
        .unwrap();
    assert_eq!(std::str::from_utf8(&opened.message).unwrap(), MSG_PLAIN);
    // 16 random + 4 length + message + corp id, then 30 bytes of padding: a 16-byte block would be wrong.
    assert_eq!((16 + 4 + MSG_PLAIN.len() + CORP_ID.len() + 30) % 32, 0);
    let body = xml_body(CORP_ID, MSG_ENCRYPT, "218");
    let q = [
        ("msg_signature", MSG_SIG),
        ("timestamp", MSG_TS),
        ("nonce", MSG_NONCE),
    ];
    let result = platform(0).receive(&post(&q, &body));
    let Ok(Intake::Event { event, reply }) = result else {
        panic!("{result:?}")
    };
    assert_eq!(reply, HookReply::ok_empty());
    assert_eq!(event.dedup_key, "4561255354251345929");
    assert_eq!(event.text, "hello");
    assert_eq!(event.conversation.sender_id, "mycreate");
    assert_eq!(event.conversation.chat_type, ChatType::Single);
    assert_eq!(
        event.reply,
        Some(ReplyHandle::Wecom {
            to_user: "mycreate".into(),
            agent_id: Some("218".into())
        })
    );
    assert_eq!(event.payload["MsgType"], "text");
    // The same ciphertext in the JSON envelope reads the same.
    let json_event =
        crate::platform::testkit::event(platform(0).receive(&post(&q, &json_body(MSG_ENCRYPT))));
    assert_eq!(json_event, event);
}

/// The body with its middle byte changed (inside the ciphertext for both envelopes).
fn flip_middle(body: &[u8]) -> bytes::Bytes {
    let mut b = body.to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    b.into()
}

#[test]
fn encrypt_round_trips_and_pads_to_32() {
    let key = AesKey::parse(AES_KEY).unwrap();
    for len in [0usize, 1, 11, 12, 13, 43, 44, 45, 100, 1000] {
        let msg = "x".repeat(len);
        let sealed = key.encrypt(CORP_ID, msg.as_bytes(), [7; 16]);
        let raw = B64.decode(&sealed).unwrap();
        assert_eq!(raw.len() % 32, 0, "len {len}");
        let opened = key.decrypt(&sealed).unwrap();
        assert_eq!(
            (opened.message, opened.receive_id),
            (msg.into_bytes(), CORP_ID.as_bytes().to_vec())
        );
    }
    // The official ciphertext is reproduced from its plaintext and its random bytes.
    let opened_raw = {
        use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit};
        // The official key has non-zero trailing bits: strict base64 refuses it.
        let k = crate::platform::verify::B64_LENIENT
            .decode(format!("{AES_KEY}="))
            .unwrap();
        let ct = B64.decode(MSG_ENCRYPT).unwrap();
        cbc::Decryptor::<aes::Aes256>::new_from_slices(&k, &k[..16])
            .unwrap()
            .decrypt_padded_vec_mut::<NoPadding>(&ct)
            .unwrap()
    };
    let random: [u8; 16] = opened_raw[..16].try_into().unwrap();
    assert_eq!(
        encrypt(AES_KEY, CORP_ID, MSG_PLAIN.as_bytes(), random).unwrap(),
        MSG_ENCRYPT
    );
}

#[test]
fn receive_table() {
    let now = 1_700_000_000;
    let p = platform(300);
    let text = text_message_xml(
        CORP_ID,
        "zhangsan",
        now,
        "where is my order?",
        "1001",
        "1000002",
    );
    let sealed = |msg: &str, rid: &str, json: bool| {
        request_message(TOKEN, AES_KEY, rid, msg, now, "nonce1", [3; 16], json)
            .unwrap()
            .to_hook_request(at(now))
    };
    let good = sealed(&text, CORP_ID, false);
    let with = |f: &dyn Fn(&mut HookRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let event_xml = "<xml><ToUserName>c</ToUserName><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>enter_agent</Event><AgentID>1</AgentID></xml>";
    let image = text.replace("<MsgType><![CDATA[text]]>", "<MsgType><![CDATA[image]]>");
    let no_msg_id = text.replace("<MsgId>1001</MsgId>", "");
    let json_msg = json!({"ToUserName": CORP_ID, "FromUserName": "lisi", "CreateTime": now, "MsgType": "text", "Content": "hi", "MsgId": 77, "AgentID": 5}).to_string();
    let ai_bot = json!({"msgid": "m-1", "aibotid": "b", "chatid": "g-1", "chattype": "group", "from": {"userid": "wang"}, "msgtype": "text", "text": {"content": "@bot hi"}}).to_string();
    let cases: Vec<(&str, HookRequest, &str)> = vec![
        ("good xml", good.clone(), "event"),
        ("good json envelope", sealed(&text, CORP_ID, true), "event"),
        (
            "json inner message",
            sealed(&json_msg, CORP_ID, true),
            "event",
        ),
        ("ai bot message", sealed(&ai_bot, CORP_ID, true), "event"),
        (
            "event",
            sealed(event_xml, CORP_ID, false),
            "ignore:enter_agent",
        ),
        ("image", sealed(&image, CORP_ID, false), "ignore:not_text"),
        ("no msg id", sealed(&no_msg_id, CORP_ID, false), "event"),
        (
            "wrong receive id",
            sealed(&text, "wx-other", false),
            "wrong_receiver",
        ),
        (
            "tampered ciphertext",
            with(&|r| r.body = flip_middle(&r.body)),
            "bad_signature",
        ),
        (
            "tampered signature",
            with(&|r| {
                r.query = r
                    .query
                    .as_ref()
                    .map(|q| q.replacen("msg_signature=", "msg_signature=0", 1))
            }),
            "bad_signature",
        ),
        ("no query", with(&|r| r.query = None), "missing_signature"),
        (
            "no nonce",
            with(&|r| r.query = r.query.as_ref().map(|q| q.replace("nonce=", "n="))),
            "missing_signature",
        ),
        ("stale", with(&|r| r.now = at(now + 301)), "stale_timestamp"),
        (
            "future",
            with(&|r| r.now = at(now - 301)),
            "stale_timestamp",
        ),
        (
            "malformed body",
            with(&|r| r.body = "<xml><Encrypt>".into()),
            "malformed",
        ),
        (
            "no encrypt",
            with(&|r| r.body = "<xml><A>1</A></xml>".into()),
            "malformed",
        ),
        (
            "wrong method",
            with(&|r| r.method = Method::PUT),
            "method_not_allowed",
        ),
    ];
    for (name, req, want) in cases {
        assert_eq!(outcome(&p.receive(&req)), want, "{name}");
    }
    let e = event(p.receive(&sealed(&no_msg_id, CORP_ID, false)));
    assert_eq!(e.dedup_key, format!("zhangsan:{now}"));
    let e = event(p.receive(&sealed(&json_msg, CORP_ID, true)));
    assert_eq!(
        (
            e.dedup_key.as_str(),
            e.text.as_str(),
            e.conversation.sender_id.as_str()
        ),
        ("77", "hi", "lisi")
    );
    let e = event(p.receive(&sealed(&ai_bot, CORP_ID, true)));
    assert_eq!(
        (e.conversation.chat_id.as_str(), e.conversation.chat_type),
        ("g-1", ChatType::Group)
    );
}

#[test]
fn a_wrong_key_or_bad_padding_is_undecryptable() {
    let other = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
    let sealed = other.encrypt(CORP_ID, b"<xml/>", [1; 16]);
    let sig = signature(TOKEN, "1", "n", &sealed);
    let req = post(
        &[("msg_signature", &sig), ("timestamp", "1"), ("nonce", "n")],
        &json_body(&sealed),
    );
    assert_eq!(
        platform(0).receive(&req).unwrap_err(),
        Rejection::Undecryptable
    );
    for garbage in ["", "!!!", "AAAA", "AAAAAAAAAAAAAAAAAAAAAA=="] {
        assert!(
            AesKey::parse(AES_KEY).unwrap().decrypt(garbage).is_err(),
            "{garbage}"
        );
    }
}

#[test]
fn config_table() {
    let base = json!({"token": TOKEN, "encoding_aes_key": AES_KEY, "receive_id": CORP_ID, "agent_id": 1000002});
    assert!(Wecom::from_config(&source("wecom", 0, base.clone())).is_ok());
    // The reply channel's keys in the same block are not this module's business.
    let mut with_reply = base.clone();
    with_reply["corp_secret"] = json!("s");
    with_reply["api_base"] = json!("http://x");
    assert!(Wecom::from_config(&source("wecom", 0, with_reply)).is_ok());
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (
            with("encoding_aes_key", json!("tooshort")),
            "sources.src.encoding_aes_key",
        ),
        (
            with("encoding_aes_key", json!(format!("{AES_KEY}x"))),
            "sources.src.encoding_aes_key",
        ),
        (
            with(
                "encoding_aes_key",
                json!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
            ),
            "sources.src.encoding_aes_key",
        ),
        (with("tokn", json!("x")), "sources.src.tokn"),
        (without("token"), "sources.src.token"),
        (without("receive_id"), "sources.src.receive_id"),
        (without("encoding_aes_key"), "sources.src.encoding_aes_key"),
        (with("agent_id", json!(true)), "sources.src.agent_id"),
    ];
    for (settings, key) in cases {
        let src = source("wecom", 0, settings);
        assert_eq!(issue_keys(&problems(Wecom::from_config(&src), &src)), [key]);
    }
    // The AI-bot flavour seals for an empty receive id.
    assert!(Wecom::from_config(&source("wecom", 0, with("receive_id", json!("")))).is_ok());
    let issues = Wecom::from_config(&source(
        "wecom",
        0,
        with("encoding_aes_key", json!("secret-ish-value")),
    ))
    .unwrap_err();
    assert!(!format!("{issues:?}").contains("secret-ish-value"));
}
