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
//! No rejection, whatever the input, ever shows a configured secret. Every event the third
//! property yields also goes through what the ingress does next with it (its reply credentials
//! taken out, at any clock), and all of it runs with overflow checks on, so forged numbers
//! (`sessionWebhookExpiredTime` near `i64::MIN`) that would overflow panic here.
mod cases;
mod gen;

use super::{feishu, HookRequest, Intake, Rejection};
use axum::http::HeaderValue;
use cases::{cases, text, Body, NOW, SECRETS};
use gen::{garbage, mutate_json, random_bytes, random_json, random_string};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

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

/// Issue 11 item 13: the fuzz is only worth its name for arithmetic if an overflow panics, as
/// it does in `cargo test`'s profile (`overflow-checks`, pinned in the workspace's Cargo.toml).
/// Fails if a profile change turns them off.
#[test]
fn the_fuzz_runs_with_overflow_checks_on() {
    let at = std::hint::black_box(i64::MIN);
    let overflowed = std::panic::catch_unwind(|| std::hint::black_box(at) - 1).is_err();
    assert!(
        overflowed,
        "overflow checks are off: `at - margin` would wrap silently"
    );
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
                // What the ingress does next: the reply credentials leave the event, whatever
                // expiry the body claims and at any clock (without overflow: see below).
                for now_ms in [NOW * 1000, i64::MIN, i64::MAX] {
                    let (mut reply, mut payload) = (event.reply.clone(), event.payload.clone());
                    let _ = shared::reply_credentials::take(
                        case.name,
                        &mut reply,
                        &mut payload,
                        now_ms,
                    );
                }
                let c = &event.conversation;
                assert!(
                    !event.dedup_key.is_empty()
                        && !c.chat_id.is_empty()
                        && !c.sender_id.is_empty()
                        // Generic JSON bodies may have no text (the source decides).
                        && (!event.text.is_empty()
                            || crate::platform::fields::GENERIC.contains(&case.name)),
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
