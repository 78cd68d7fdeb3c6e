//! Random requests, strings and JSON for the fuzz tests, and a structure-aware JSON mutator
//! (test-only).
use super::super::HookRequest;
use super::cases::{text, NOW};
use crate::platform::testkit::at;
use axum::http::{HeaderName, HeaderValue, Method};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

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

pub fn random_string(rng: &mut StdRng) -> String {
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

pub fn random_json(rng: &mut StdRng, depth: u32) -> Value {
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
pub fn mutate_json(v: &mut Value, rng: &mut StdRng) {
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

pub fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect()
}

pub fn garbage(rng: &mut StdRng) -> HookRequest {
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
