//! Tests of the `hmac` platform: official vectors where the platform publishes them, round trips
//! through its own signing helpers, and tables of good, tampered, missing, stale, malformed and
//! ignored requests.
use super::*;
use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};
use serde_json::json;

const NOW: i64 = 1_700_000_000;

fn scheme(algorithm: Algorithm, encoding: Encoding, prefix: &str, ts: bool) -> Scheme {
    Scheme {
        header: "x-signature".into(),
        algorithm,
        encoding,
        prefix: prefix.into(),
        timestamp_header: ts.then(|| "x-timestamp".into()),
        id_header: Some("x-delivery".into()),
    }
}

fn platform(s: &Scheme) -> HmacSource {
    let mut settings = json!({
        "secret": "crm-secret", "header": "X-Signature",
        "algorithm": format!("{:?}", s.algorithm).to_lowercase(),
        "encoding": format!("{:?}", s.encoding).to_lowercase(),
        "prefix": s.prefix, "id_header": "X-Delivery",
    });
    if s.timestamp_header.is_some() {
        settings["timestamp_header"] = json!("X-Timestamp");
    }
    HmacSource::from_config(&source("hmac", 300, settings)).unwrap()
}

#[test]
fn known_answers() {
    // The GitHub vector is HMAC-SHA256 hex with a `sha256=` prefix: the generic scheme reproduces it.
    let gh = Scheme {
        header: "x-hub-signature-256".into(),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: "sha256=".into(),
        timestamp_header: None,
        id_header: None,
    };
    assert_eq!(
        gh.sign("It's a Secret to Everybody", None, b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
    // RFC 2202 / RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
    let msg: &[u8] = b"what do ya want for nothing?";
    assert_eq!(
        hex::encode(Algorithm::Sha1.mac(b"Jefe", &[msg])),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    assert_eq!(
        hex::encode(Algorithm::Sha256.mac(b"Jefe", &[msg])),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex::encode(Algorithm::Sha512.mac(b"Jefe", &[msg])),
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    );
}

#[test]
fn every_algorithm_and_encoding_round_trips() {
    let body = r#"{"id":"lead-1","text":"call me back"}"#;
    for algorithm in [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
        for encoding in [Encoding::Hex, Encoding::Base64] {
            for (prefix, ts) in [("", false), ("sha256=", false), ("v1=", true)] {
                let s = scheme(algorithm, encoding, prefix, ts);
                let p = platform(&s);
                let req = s
                    .request("crm-secret", NOW, Some("dlv-1"), body)
                    .to_hook_request(at(NOW));
                let e = event(p.receive(&req));
                assert_eq!(
                    (e.dedup_key.as_str(), e.text.as_str()),
                    ("dlv-1", "call me back"),
                    "{s:?}"
                );
                let wrong = s.request("other", NOW, None, body).to_hook_request(at(NOW));
                assert_eq!(outcome(&p.receive(&wrong)), "bad_signature", "{s:?}");
            }
        }
    }
}

#[test]
fn receive_table() {
    let s = scheme(Algorithm::Sha256, Encoding::Base64, "sha256=", true);
    let p = platform(&s);
    let body = r#"{"text":"hello","sender_id":"c-9"}"#;
    let good = s
        .request("crm-secret", NOW, None, body)
        .to_hook_request(at(NOW));
    let with = |f: &dyn Fn(&mut HookRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, HookRequest, &str)> = vec![
        ("good", good.clone(), "event"),
        (
            "milliseconds",
            s.request("crm-secret", NOW * 1000, None, body)
                .to_hook_request(at(NOW)),
            "event",
        ),
        (
            "tampered body",
            with(&|r| r.body = body.replace("hello", "hellp").into()),
            "bad_signature",
        ),
        (
            "other timestamp",
            with(&|r| {
                r.headers
                    .insert("x-timestamp", (NOW + 1).to_string().parse().unwrap());
            }),
            "bad_signature",
        ),
        (
            "no prefix",
            with(&|r| {
                let v = r.header("x-signature").unwrap().replace("sha256=", "");
                r.headers.insert("x-signature", v.parse().unwrap());
            }),
            "bad_signature",
        ),
        (
            "not base64",
            with(&|r| {
                r.headers
                    .insert("x-signature", "sha256=***".parse().unwrap());
            }),
            "bad_signature",
        ),
        (
            "no signature",
            with(&|r| {
                r.headers.remove("x-signature");
            }),
            "missing_signature",
        ),
        (
            "no timestamp",
            with(&|r| {
                r.headers.remove("x-timestamp");
            }),
            "missing_signature",
        ),
        ("stale", with(&|r| r.now = at(NOW + 301)), "stale_timestamp"),
        (
            "not json",
            s.request("crm-secret", NOW, None, "text")
                .to_hook_request(at(NOW)),
            "malformed",
        ),
        (
            // Any object is an event; whether it needs text is the source's (`fields`).
            "no text",
            s.request("crm-secret", NOW, None, "{}")
                .to_hook_request(at(NOW)),
            "event",
        ),
        (
            "not an object",
            s.request("crm-secret", NOW, None, "[1]")
                .to_hook_request(at(NOW)),
            "malformed",
        ),
        (
            "GET",
            with(&|r| r.method = Method::GET),
            "method_not_allowed",
        ),
    ];
    for (name, req, want) in cases {
        assert_eq!(outcome(&p.receive(&req)), want, "{name}");
    }
    // Without an id header or body id, the same body is the same event, whatever its timestamp.
    let a = event(p.receive(&good));
    let b = event(
        p.receive(
            &s.request("crm-secret", NOW + 5, None, body)
                .to_hook_request(at(NOW)),
        ),
    );
    assert_eq!(a.dedup_key, b.dedup_key);
    assert!(a.dedup_key.starts_with("sha256:"));
    let with_id = event(
        p.receive(
            &s.request("crm-secret", NOW, None, r#"{"id":42,"text":"x"}"#)
                .to_hook_request(at(NOW)),
        ),
    );
    assert_eq!(with_id.dedup_key, "42");
}

#[test]
fn config_table() {
    let ok = json!({"secret": "s", "header": "X-Sig", "algorithm": "sha512", "encoding": "hex"});
    assert!(HmacSource::from_config(&source("hmac", 0, ok.clone())).is_ok());
    let with = |k: &str, v: serde_json::Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    for (settings, key) in [
        (without("secret"), "sources.src.secret"),
        (without("header"), "sources.src.header"),
        (without("algorithm"), "sources.src.algorithm"),
        (without("encoding"), "sources.src.encoding"),
        (with("algorithm", json!("md5")), "sources.src.algorithm"),
        (with("encoding", json!("base32")), "sources.src.encoding"),
        (with("header", json!("bad header")), "sources.src.header"),
        (
            with("timestamp_header", json!("a:b")),
            "sources.src.timestamp_header",
        ),
        (with("hedaer", json!("x")), "sources.src.hedaer"),
    ] {
        let src = source("hmac", 0, settings);
        assert_eq!(
            issue_keys(&problems(HmacSource::from_config(&src), &src)),
            [key]
        );
    }
}
