//! The platforms under test: each configured with known secrets, with a signer for arbitrary
//! bodies and valid requests to mutate (test-only).
use super::super::sender::SignedRequest;
use super::super::{
    build, dingtalk, discord, feishu, github, hmac, slack, telegram, wecom, HookRequest, Platform,
};
use crate::platform::testkit::{at, source};
use axum::http::Method;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shared::signing::SigningKey;

pub const NOW: i64 = 1_700_000_000;
/// The Discord application's key seed (its public key is configured, not a secret).
const DISCORD_SEED: [u8; 32] = [42; 32];
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
/// Every configured secret: none may appear in a rejection.
pub const SECRETS: &[&str] = &[
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
pub enum Body {
    Signed,
    Unsigned,
}

/// Signs an arbitrary body the way the platform does.
pub type Signer = Box<dyn Fn(&[u8], &mut StdRng) -> HookRequest>;

/// One configured platform, a signer for arbitrary bodies, and valid requests to mutate.
pub struct Case {
    pub name: &'static str,
    pub platform: Box<dyn Platform>,
    pub body: Body,
    /// Headers (and the query, as `?`) covered by the authentication.
    pub signed_parts: &'static [&'static str],
    pub sign: Signer,
    pub valid: Vec<HookRequest>,
}

fn platform(name: &str, settings: Value) -> Box<dyn Platform> {
    build(&source(name, 300, settings)).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn cases() -> Vec<Case> {
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
    let discord_key = ed25519_dalek::SigningKey::from_bytes(&DISCORD_SEED);
    let discord_cmd = discord::slash_command("i1", "app", "tok", Some("g"), "c", "u", "hi");
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
            platform: platform(
                "lark",
                json!({"verification_token": "fs-token", "allow_unsigned": true}),
            ),
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
            name: "discord",
            platform: platform(
                "discord",
                json!({"public_key": hex::encode(discord_key.verifying_key().as_bytes())}),
            ),
            body: Body::Signed,
            signed_parts: &[discord::TIMESTAMP_HEADER, discord::SIGNATURE_HEADER],
            sign: Box::new(move |b, _| {
                let key = ed25519_dalek::SigningKey::from_bytes(&DISCORD_SEED);
                let ts = NOW.to_string();
                SignedRequest::new(Method::POST, b.to_vec())
                    .with_header(discord::TIMESTAMP_HEADER, &ts)
                    .with_header(discord::SIGNATURE_HEADER, discord::signature(&key, &ts, b))
                    .to_hook_request(at(NOW))
            }),
            valid: vec![discord::request(&discord_key, NOW, &discord_cmd).to_hook_request(now)],
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
