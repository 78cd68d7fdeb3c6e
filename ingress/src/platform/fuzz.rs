//! Seeded random tests over every platform (test-only). Three properties, many thousands of
//! cases each, reproducible from the seed printed on failure:
//! 1. garbage (random methods, queries, headers and bodies, made without the secrets) never
//!    panics and is always refused;
//! 2. a valid request with one part mutated (body bytes, the signed headers or query) never
//!    panics, and where the mutated part is authenticated it never yields an event other than
//!    the original one;
//! 3. arbitrary bodies signed with the right secret (structure-aware JSON mutations, XML, raw
//!    bytes) never panic, and every event they yield has a dedup key, a chat, a sender and a text.
//!
//! No rejection, whatever the input, ever shows a configured secret.
use super::sender::SignedRequest;
use super::{
    build, dingtalk, feishu, github, hmac, slack, telegram, wecom, HookRequest, Intake, Platform,
    Rejection,
};
use crate::platform::testkit::{at, source};
use axum::http::{HeaderName, HeaderValue, Method};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shared::signing::SigningKey;

const NOW: i64 = 1_700_000_000;
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
/// Every configured secret: none may appear in a rejection.
const SECRETS: &[&str] = &[
    "bearer-tok-123",
    "wecom-tok",
    AES_KEY,
    "ding-secret",
    "fs-token",
    "fs-enc-key",
    "slack-signing",
    "tg_secret-1",
    "gh-secret",
    "hmac-secret",
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
];

/// Whether a platform authenticates the body itself (so a changed body is a forgery).
#[derive(Clone, Copy, PartialEq)]
enum Body {
    Signed,
    Unsigned,
}

/// Signs an arbitrary body the way the platform does.
type Signer = Box<dyn Fn(&[u8], &mut StdRng) -> HookRequest>;

/// One configured platform, a signer for arbitrary bodies, and valid requests to mutate.
struct Case {
    name: &'static str,
    platform: Box<dyn Platform>,
    body: Body,
    /// Headers (and the query, as `?`) covered by the authentication.
    signed_parts: &'static [&'static str],
    sign: Signer,
    valid: Vec<HookRequest>,
}

fn platform(name: &str, settings: Value) -> Box<dyn Platform> {
    build(&source(name, 300, settings)).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cases() -> Vec<Case> {
    let now = at(NOW);
    let key = SigningKey::parse(WHSEC).unwrap();
    let std_sign = move |body: &[u8], rng: &mut StdRng| {
        let id = format!("msg_{}", rng.gen::<u32>());
        SignedRequest::new(Method::POST, body.to_vec())
            .with_header("webhook-id", &id)
            .with_header("webhook-timestamp", NOW.to_string())
            .with_header("webhook-signature", key.sign(&id, NOW, body))
            .to_hook_request(at(NOW))
    };
    let wecom_sign = |json: bool| {
        move |body: &[u8], rng: &mut StdRng| {
            let sealed = wecom::AesKey::parse(AES_KEY)
                .unwrap()
                .encrypt("corp", body, rng.gen());
            let sig = wecom::signature("wecom-tok", &NOW.to_string(), "n", &sealed);
            let outer = if json {
                wecom::json_body(&sealed)
            } else {
                wecom::xml_body("corp", &sealed, "1")
            };
            SignedRequest::new(Method::POST, outer)
                .with_query(&[
                    ("msg_signature", &sig),
                    ("timestamp", &NOW.to_string()),
                    ("nonce", "n"),
                ])
                .to_hook_request(at(NOW))
        }
    };
    let hmac_scheme = hmac::Scheme {
        header: "x-sig".into(),
        algorithm: hmac::Algorithm::Sha512,
        encoding: hmac::Encoding::Base64,
        prefix: "v1=".into(),
        timestamp_header: Some("x-ts".into()),
        id_header: Some("x-id".into()),
    };
    let hs = hmac_scheme.clone();
    let wecom_text = wecom::text_message_xml("corp", "u1", NOW, "hello", "9", "1");
    let fs_text = feishu::text_event_v2("ev", "fs-token", "oc", true, "ou", "om", "@_user_1 hi");
    let slack_msg = slack::event_callback(
        "Ev",
        slack::message_event("C1", "channel", "U1", "hi", "1.1"),
    );
    let tg_text = telegram::text_update(5, -9, "group", 3, "hi");
    let ding_text = dingtalk::text_message("m", "c", true, "s", "hi", "https://x", NOW * 1000);
    let gh_body = json!({"action": "opened", "issue": {"number": 1, "title": "t", "body": "b"}, "repository": {"full_name": "a/b"}, "sender": {"login": "o", "type": "User"}}).to_string();
    let generic = r#"{"id":"e1","text":"hello","sender_id":"u"}"#;
    let events = [
        "issues",
        "issue_comment",
        "pull_request",
        "push",
        "ping",
        "release",
        "star",
    ];
    vec![
        Case {
            name: "standard",
            platform: platform("standard", json!({"secret": WHSEC})),
            body: Body::Signed,
            signed_parts: &["webhook-id", "webhook-timestamp", "webhook-signature"],
            valid: vec![std_sign(generic.as_bytes(), &mut StdRng::seed_from_u64(0))],
            sign: Box::new(std_sign),
        },
        Case {
            name: "bearer",
            platform: platform("bearer", json!({"token": "bearer-tok-123"})),
            body: Body::Unsigned,
            signed_parts: &["authorization"],
            sign: Box::new(move |b, _| {
                SignedRequest::new(Method::POST, b.to_vec())
                    .with_header("authorization", "Bearer bearer-tok-123")
                    .to_hook_request(at(NOW))
            }),
            valid: vec![SignedRequest::new(Method::POST, generic)
                .with_header("authorization", "Bearer bearer-tok-123")
                .to_hook_request(now)],
        },
        Case {
            name: "wecom-xml",
            platform: platform(
                "wecom",
                json!({"token": "wecom-tok", "encoding_aes_key": AES_KEY, "receive_id": "corp"}),
            ),
            body: Body::Signed,
            signed_parts: &["?"],
            sign: Box::new(wecom_sign(false)),
            valid: vec![
                wecom::request_message(
                    "wecom-tok",
                    AES_KEY,
                    "corp",
                    &wecom_text,
                    NOW,
                    "n",
                    [1; 16],
                    false,
                )
                .unwrap()
                .to_hook_request(now),
                wecom::request_url_verification(
                    "wecom-tok",
                    AES_KEY,
                    "corp",
                    "echo-123",
                    NOW,
                    "n",
                    [2; 16],
                )
                .unwrap()
                .to_hook_request(now),
            ],
        },
        Case {
            name: "wecom-json",
            platform: platform(
                "wecom",
                json!({"token": "wecom-tok", "encoding_aes_key": AES_KEY, "receive_id": "corp"}),
            ),
            body: Body::Signed,
            signed_parts: &["?"],
            sign: Box::new(wecom_sign(true)),
            valid: vec![wecom::request_message(
                "wecom-tok",
                AES_KEY,
                "corp",
                &wecom_text,
                NOW,
                "n",
                [1; 16],
                true,
            )
            .unwrap()
            .to_hook_request(now)],
        },
        Case {
            name: "dingtalk",
            platform: platform("dingtalk", json!({"app_secret": "ding-secret"})),
            body: Body::Unsigned,
            signed_parts: &["timestamp", "sign"],
            sign: Box::new(|b, _| {
                dingtalk::request("ding-secret", NOW * 1000, &text(b)).to_hook_request(at(NOW))
            }),
            valid: vec![
                dingtalk::request("ding-secret", NOW * 1000, &ding_text).to_hook_request(now)
            ],
        },
        Case {
            name: "feishu-encrypted",
            platform: platform(
                "feishu",
                json!({"verification_token": "fs-token", "encrypt_key": "fs-enc-key"}),
            ),
            body: Body::Signed,
            signed_parts: &[
                feishu::TIMESTAMP_HEADER,
                feishu::NONCE_HEADER,
                feishu::SIGNATURE_HEADER,
            ],
            sign: Box::new(|b, rng| {
                feishu::request_encrypted("fs-enc-key", NOW, "n", &text(b), rng.gen())
                    .to_hook_request(at(NOW))
            }),
            valid: vec![
                feishu::request_encrypted("fs-enc-key", NOW, "n", &fs_text, [3; 16])
                    .to_hook_request(now),
            ],
        },
        Case {
            name: "lark-plain",
            platform: platform("lark", json!({"verification_token": "fs-token"})),
            body: Body::Unsigned,
            signed_parts: &[],
            sign: Box::new(|b, _| feishu::request_plain(&text(b)).to_hook_request(at(NOW))),
            valid: vec![feishu::request_plain(&fs_text).to_hook_request(now)],
        },
        Case {
            name: "slack",
            platform: platform(
                "slack",
                json!({"signing_secret": "slack-signing", "bot_user_id": "UBOT"}),
            ),
            body: Body::Signed,
            signed_parts: &[slack::TIMESTAMP_HEADER, slack::SIGNATURE_HEADER],
            sign: Box::new(|b, rng| {
                let ct = if rng.gen_bool(0.5) {
                    "application/json"
                } else {
                    "application/x-www-form-urlencoded"
                };
                SignedRequest::new(Method::POST, b.to_vec())
                    .with_header("content-type", ct)
                    .with_header(slack::TIMESTAMP_HEADER, NOW.to_string())
                    .with_header(
                        slack::SIGNATURE_HEADER,
                        slack::signature("slack-signing", &NOW.to_string(), b),
                    )
                    .to_hook_request(at(NOW))
            }),
            valid: vec![
                slack::request("slack-signing", NOW, &slack_msg, "application/json")
                    .to_hook_request(now),
            ],
        },
        Case {
            name: "telegram",
            platform: platform("telegram", json!({"secret_token": "tg_secret-1"})),
            body: Body::Unsigned,
            signed_parts: &[telegram::SECRET_HEADER],
            sign: Box::new(|b, _| {
                SignedRequest::new(Method::POST, b.to_vec())
                    .with_header(telegram::SECRET_HEADER, "tg_secret-1")
                    .to_hook_request(at(NOW))
            }),
            valid: vec![telegram::request("tg_secret-1", &tg_text).to_hook_request(now)],
        },
        Case {
            name: "github",
            platform: platform("github", json!({"secret": "gh-secret"})),
            body: Body::Signed,
            signed_parts: &[github::SIGNATURE_HEADER],
            sign: Box::new(move |b, rng| {
                SignedRequest::new(Method::POST, b.to_vec())
                    .with_header(
                        github::EVENT_HEADER,
                        *events.choose(rng).unwrap_or(&"issues"),
                    )
                    .with_header(github::DELIVERY_HEADER, format!("d-{}", rng.gen::<u16>()))
                    .with_header(github::SIGNATURE_HEADER, github::signature("gh-secret", b))
                    .to_hook_request(at(NOW))
            }),
            valid: vec![
                github::request("gh-secret", "issues", "d-1", &gh_body).to_hook_request(now)
            ],
        },
        Case {
            name: "hmac",
            platform: platform(
                "hmac",
                json!({"secret": "hmac-secret", "header": "X-Sig", "algorithm": "sha512", "encoding": "base64", "prefix": "v1=", "timestamp_header": "X-Ts", "id_header": "X-Id"}),
            ),
            body: Body::Signed,
            signed_parts: &["x-sig", "x-ts"],
            sign: Box::new(move |b, _| {
                hs.request("hmac-secret", NOW, Some("i"), &text(b))
                    .to_hook_request(at(NOW))
            }),
            valid: vec![hmac_scheme
                .request("hmac-secret", NOW, Some("i-1"), generic)
                .to_hook_request(now)],
        },
    ]
}

/// Every header any platform reads, so that garbage hits the real code paths.
const HEADER_NAMES: &[&str] = &[
    "authorization",
    "x-switchboard-token",
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "timestamp",
    "sign",
    "x-lark-request-timestamp",
    "x-lark-request-nonce",
    "x-lark-signature",
    "x-slack-request-timestamp",
    "x-slack-signature",
    "x-slack-retry-num",
    "x-telegram-bot-api-secret-token",
    "x-hub-signature-256",
    "x-github-event",
    "x-github-delivery",
    "content-type",
    "x-sig",
    "x-ts",
    "x-id",
];
const QUERY_NAMES: &[&str] = &["msg_signature", "timestamp", "nonce", "echostr"];
const WORDS: &[&str] = &[
    "text",
    "message",
    "event_callback",
    "url_verification",
    "challenge",
    "token",
    "2.0",
    "im.message.receive_v1",
    "p2p",
    "group",
    "private",
    "supergroup",
    "1",
    "2",
    "@_user_1",
    "<@UBOT>",
    "sha256=",
    "v0=",
    "v1=",
    "Bearer ",
    "application/json",
    "application/x-www-form-urlencoded",
    "encrypt",
    "<xml>",
    "]]>",
    "%",
    "+",
    "\u{0}",
    "é",
    "🙂",
];

fn random_string(rng: &mut StdRng) -> String {
    match rng.gen_range(0..6) {
        0 => WORDS.choose(rng).map(|w| w.to_string()).unwrap_or_default(),
        1 => (NOW + rng.gen_range(-1000..1000)).to_string(),
        2 => hex::encode(
            (0..rng.gen_range(0..40))
                .map(|_| rng.gen::<u8>())
                .collect::<Vec<u8>>(),
        ),
        3 => (0..rng.gen_range(0..30))
            .map(|_| rng.gen_range(b' '..=b'~') as char)
            .collect(),
        4 => format!(
            "{}{}",
            WORDS.choose(rng).copied().unwrap_or(""),
            rng.gen::<u64>()
        ),
        _ => String::new(),
    }
}

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.gen_bool(0.5)),
        2 => json!(rng.gen::<i64>() >> rng.gen_range(0..64)),
        3 => json!(rng.gen::<f64>() * 1e20),
        4 => json!(random_string(rng)),
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "type",
                "text",
                "event",
                "message",
                "token",
                "schema",
                "header",
                "chat",
                "id",
                "from",
                "content",
                "msgId",
                "update_id",
                "encrypt",
                "challenge",
                "event_id",
                "user",
                "channel",
                "subtype",
                "bot_id",
            ];
            Value::Object(
                (0..rng.gen_range(0..6))
                    .map(|_| {
                        (
                            keys.choose(rng).unwrap_or(&"k").to_string(),
                            random_json(rng, depth - 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// Replaces a random node of `v` (or removes a key), one to three times.
fn mutate_json(v: &mut Value, rng: &mut StdRng) {
    for _ in 0..rng.gen_range(1..4) {
        mutate_node(v, rng);
    }
}

fn mutate_node(node: &mut Value, rng: &mut StdRng) {
    if rng.gen_bool(0.7) {
        match node {
            Value::Object(map) if !map.is_empty() => {
                let k = map
                    .keys()
                    .nth(rng.gen_range(0..map.len()))
                    .cloned()
                    .unwrap_or_default();
                if rng.gen_bool(0.15) {
                    map.remove(&k);
                    return;
                }
                if let Some(child) = map.get_mut(&k) {
                    return mutate_node(child, rng);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                let i = rng.gen_range(0..items.len());
                return mutate_node(&mut items[i], rng);
            }
            _ => {}
        }
    }
    *node = random_json(rng, 2);
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect()
}

fn garbage(rng: &mut StdRng) -> HookRequest {
    let methods = [
        Method::GET,
        Method::POST,
        Method::POST,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
    ];
    let mut headers = axum::http::HeaderMap::new();
    for _ in 0..rng.gen_range(0..8) {
        let name = HEADER_NAMES.choose(rng).copied().unwrap_or("x");
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&random_string(rng)),
        ) {
            headers.insert(n, v);
        }
    }
    let query = match rng.gen_range(0..3) {
        0 => None,
        1 => Some(text(&random_bytes(rng))),
        _ => {
            let pairs: Vec<(String, String)> = (0..rng.gen_range(0..5))
                .map(|_| {
                    (
                        QUERY_NAMES.choose(rng).unwrap_or(&"x").to_string(),
                        random_string(rng),
                    )
                })
                .collect();
            Some(
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish(),
            )
        }
    };
    let body: Vec<u8> = match rng.gen_range(0..4) {
        0 => random_bytes(rng),
        1 => random_json(rng, 3).to_string().into_bytes(),
        2 => format!("<xml><Encrypt>{}</Encrypt></xml>", random_string(rng)).into_bytes(),
        _ => json!({"encrypt": random_string(rng), "type": "url_verification", "token": random_string(rng), "challenge": "c"}).to_string().into_bytes(),
    };
    HookRequest {
        method: methods.choose(rng).cloned().unwrap_or(Method::POST),
        query,
        headers,
        body: Bytes::from(body),
        now: at(NOW + rng.gen_range(-400..400)),
    }
}

fn assert_no_secret(case: &str, result: &Result<Intake, Rejection>) {
    if let Err(r) = result {
        let shown = format!("{r:?} {r}");
        for s in SECRETS {
            assert!(
                !shown.contains(s),
                "{case}: a rejection shows a secret: {shown}"
            );
        }
    }
}

#[test]
fn garbage_is_always_refused() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for case in cases() {
        for i in 0..3_000 {
            let req = garbage(&mut rng);
            let result = case.platform.receive(&req);
            assert_no_secret(case.name, &result);
            assert!(
                result.is_err(),
                "{} case {i}: garbage was let in: {result:?}\n{req:?}",
                case.name
            );
        }
    }
}

#[test]
fn mutated_requests_are_refused_or_unchanged() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    for case in cases() {
        for valid in &case.valid {
            let original = case.platform.receive(valid);
            assert!(
                matches!(original, Ok(Intake::Event { .. }) | Ok(Intake::Reply(_))),
                "{}: {original:?}",
                case.name
            );
            for i in 0..1_500 {
                let mut req = valid.clone();
                let what = rng.gen_range(0..4);
                let authenticated = match what {
                    0 | 1 => {
                        let mut body = req.body.to_vec();
                        if body.is_empty() || what == 1 {
                            body.truncate(rng.gen_range(0..=body.len()));
                            body.push(rng.gen());
                        } else {
                            let at = rng.gen_range(0..body.len());
                            body[at] ^= rng.gen_range(1..=255u8);
                        }
                        req.body = body.into();
                        case.body == Body::Signed
                    }
                    2 => {
                        let Some(part) = case.signed_parts.choose(&mut rng) else {
                            continue;
                        };
                        if *part == "?" {
                            let mut q = req.query.clone().unwrap_or_default().into_bytes();
                            if !q.is_empty() {
                                let at = rng.gen_range(0..q.len());
                                q[at] = rng.gen_range(b'!'..=b'~');
                            }
                            req.query = Some(text(&q));
                        } else if let Some(v) = req
                            .headers
                            .get(*part)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                        {
                            let mut v = v.into_bytes();
                            let at = rng.gen_range(0..v.len().max(1));
                            if at < v.len() {
                                v[at] = rng.gen_range(b'!'..=b'~');
                            }
                            if let Ok(v) = HeaderValue::from_bytes(&v) {
                                req.headers.insert(*part, v);
                            }
                        }
                        true
                    }
                    _ => {
                        if let Some(part) = case.signed_parts.iter().find(|p| **p != "?") {
                            req.headers.remove(*part);
                        } else {
                            req.query = None;
                        }
                        !case.signed_parts.is_empty()
                    }
                };
                let result = case.platform.receive(&req);
                assert_no_secret(case.name, &result);
                if authenticated {
                    if let Ok(intake @ (Intake::Event { .. } | Intake::Reply(_))) = &result {
                        assert_eq!(
                            Ok(intake),
                            original.as_ref(),
                            "{} mutation {i} changed what was let in: {req:?}",
                            case.name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn signed_arbitrary_bodies_never_panic_and_events_are_complete() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    for case in cases() {
        let seeds: Vec<Value> = case
            .valid
            .iter()
            .filter_map(|r| decrypted_body(case.name, r))
            .collect();
        let mut events = 0;
        for _ in 0..2_000 {
            let body: Vec<u8> = match rng.gen_range(0..5) {
                0 => random_bytes(&mut rng),
                1 => random_json(&mut rng, 3).to_string().into_bytes(),
                2 => format!("<xml><MsgType>{}</MsgType><Content>{}</Content><FromUserName>{}</FromUserName></xml>", random_string(&mut rng), random_string(&mut rng), random_string(&mut rng)).into_bytes(),
                _ => match seeds.choose(&mut rng) {
                    Some(seed) => {
                        let mut v = seed.clone();
                        mutate_json(&mut v, &mut rng);
                        v.to_string().into_bytes()
                    }
                    None => random_bytes(&mut rng),
                },
            };
            let req = (case.sign)(&body, &mut rng);
            let result = case.platform.receive(&req);
            assert_no_secret(case.name, &result);
            if let Ok(Intake::Event { event, .. }) = &result {
                events += 1;
                let c = &event.conversation;
                assert!(
                    !event.dedup_key.is_empty()
                        && !c.chat_id.is_empty()
                        && !c.sender_id.is_empty()
                        && !event.text.is_empty(),
                    "{}: incomplete event {event:?}",
                    case.name
                );
            }
        }
        assert!(
            events > 0 || seeds.is_empty(),
            "{}: structure-aware mutations never reached an event",
            case.name
        );
    }
}

/// The JSON a valid request carries once decrypted, to mutate structurally.
fn decrypted_body(name: &str, req: &HookRequest) -> Option<Value> {
    match name {
        // WeCom's signer seals any bytes as the inner message: seed both inner layouts.
        "wecom-json" => serde_json::from_str(r#"{"ToUserName":"corp","FromUserName":"u1","CreateTime":1,"MsgType":"text","Content":"hi","MsgId":9,"AgentID":1}"#).ok(),
        "wecom-xml" => serde_json::from_str(r#"{"msgid":"m","chattype":"group","chatid":"g","from":{"userid":"u"},"msgtype":"text","text":{"content":"hi"}}"#).ok(),
        "feishu-encrypted" => {
            let outer: Value = serde_json::from_slice(&req.body).ok()?;
            let plain = feishu::decrypt("fs-enc-key", outer.get("encrypt")?.as_str()?)?;
            serde_json::from_slice(&plain).ok()
        }
        _ => serde_json::from_slice(&req.body).ok(),
    }
}
