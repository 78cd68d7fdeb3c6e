//! A configurable generic HMAC scheme (`platform = "hmac"`), so that any CRM, form tool or
//! in-house system that signs its webhooks can be a source. This module owns the keys `secret`,
//! `header` (where the signature is), `algorithm` (`sha1`, `sha256`, `sha512`), `encoding` (`hex`,
//! `base64`), `prefix` (optional, such as `sha256=`), `timestamp_header` (optional: when set, the
//! signed content is `timestamp + "." + body` and the `max_skew_secs` window applies to it, in
//! unix seconds or milliseconds) and `id_header` (optional dedup key; else the body's `id`, else a
//! sha256 of the body, as for bearer sources). The body is the generic JSON of
//! [`super::standard::generic_event`]. It must not do I/O.
use super::sender::SignedRequest;
use super::standard::generic_event;
use super::verify::{check_window, check_window_ms, ct_eq, json_body, json_str, B64_LENIENT};
use super::{HookReply, HookRequest, Intake, Platform, Rejection};
use axum::http::{HeaderName, Method};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use shared::config::{ConfigIssue, SourceConfig};
use shared::keys::Keys;
use shared::Secret;

/// The keys this module reads.
pub const KEYS: &[&str] = &[
    "secret",
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "timestamp_header",
    "id_header",
];

/// Timestamps above this are taken as milliseconds (it is the year 5138 in seconds).
const MS_THRESHOLD: i64 = 100_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The HMAC of the concatenated `parts`.
    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Sha1 => mac::<Hmac<sha1::Sha1>>(key, parts),
            Self::Sha256 => mac::<Hmac<Sha256>>(key, parts),
            Self::Sha512 => mac::<Hmac<sha2::Sha512>>(key, parts),
        }
    }
}

fn mac<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail, and an empty MAC never verifies.
    let Ok(mut m) = <M as Mac>::new_from_slice(key) else {
        return Vec::new();
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "hex" => Some(Self::Hex),
            "base64" => Some(Self::Base64),
            _ => None,
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::Hex => hex::encode(bytes),
            Self::Base64 => B64.encode(bytes),
        }
    }

    /// Reads a presented signature: hex in either case; base64 standard or URL-safe.
    fn decode(self, s: &str) -> Option<Vec<u8>> {
        match self {
            Self::Hex => hex::decode(s).ok(),
            Self::Base64 => B64_LENIENT
                .decode(s)
                .ok()
                .or_else(|| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()),
        }
    }
}

/// How a sender signs: everything but the secret's storage. Used by the source and by tests and
/// load generators to sign requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub prefix: String,
    pub timestamp_header: Option<String>,
    pub id_header: Option<String>,
}

impl Scheme {
    /// The signature header's value for `body` (and `timestamp`, when the scheme signs one).
    pub fn sign(&self, secret: &str, timestamp: Option<&str>, body: &[u8]) -> String {
        let mac = match (&self.timestamp_header, timestamp) {
            (Some(_), Some(ts)) => self
                .algorithm
                .mac(secret.as_bytes(), &[ts.as_bytes(), b".", body]),
            _ => self.algorithm.mac(secret.as_bytes(), &[body]),
        };
        format!("{}{}", self.prefix, self.encoding.encode(&mac))
    }

    /// A signed request, with the timestamp and id headers when the scheme has them.
    pub fn request(
        &self,
        secret: &str,
        timestamp: i64,
        id: Option<&str>,
        body: &str,
    ) -> SignedRequest {
        let ts = timestamp.to_string();
        let mut req = SignedRequest::new(Method::POST, body.to_owned())
            .with_header("content-type", "application/json")
            .with_header(&self.header, self.sign(secret, Some(&ts), body.as_bytes()));
        if let Some(h) = &self.timestamp_header {
            req = req.with_header(h, ts);
        }
        if let (Some(h), Some(id)) = (&self.id_header, id) {
            req = req.with_header(h, id);
        }
        req
    }
}

#[derive(Debug)]
pub struct HmacSource {
    secret: Secret,
    scheme: Scheme,
    max_skew_secs: u64,
}

impl HmacSource {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let secret = keys.required_secret("secret");
        let header_key = |keys: &mut Keys, key: &str, required: bool| {
            let value = if required {
                keys.required_str(key)
            } else {
                keys.str(key)
            }?;
            match HeaderName::from_bytes(value.trim().as_bytes()) {
                Ok(name) => Some(name.as_str().to_owned()),
                Err(_) => {
                    keys.issue(key, format!("`{value}` is not an HTTP header name"));
                    None
                }
            }
        };
        let header = header_key(&mut keys, "header", true);
        let timestamp_header = header_key(&mut keys, "timestamp_header", false);
        let id_header = header_key(&mut keys, "id_header", false);
        let algorithm = keys.required_str("algorithm").and_then(|a| {
            Algorithm::parse(&a).or_else(|| {
                keys.issue(
                    "algorithm",
                    format!("`{a}` is not one of sha1, sha256, sha512"),
                );
                None
            })
        });
        let encoding = keys.required_str("encoding").and_then(|e| {
            Encoding::parse(&e).or_else(|| {
                keys.issue("encoding", format!("`{e}` is not one of hex, base64"));
                None
            })
        });
        let prefix = keys.str("prefix").unwrap_or_default();
        let value = match (secret, header, algorithm, encoding) {
            (Some(secret), Some(header), Some(algorithm), Some(encoding)) => Some(Self {
                secret,
                scheme: Scheme {
                    header,
                    algorithm,
                    encoding,
                    prefix,
                    timestamp_header,
                    id_header,
                },
                max_skew_secs: source.max_skew_secs,
            }),
            _ => None,
        };
        keys.finish(value)
    }
}

impl Platform for HmacSource {
    fn name(&self) -> &'static str {
        "hmac"
    }

    /// Without a signed timestamp checked against a window, a captured request stays valid, and
    /// `id_header` is not signed.
    fn replayable_forever(&self) -> bool {
        self.scheme.timestamp_header.is_none() || self.max_skew_secs == 0
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let scheme = &self.scheme;
        let presented = req
            .header(&scheme.header)
            .ok_or(Rejection::MissingSignature)?
            .trim();
        let timestamp = match &scheme.timestamp_header {
            Some(h) => Some(req.header(h).ok_or(Rejection::MissingSignature)?.trim()),
            None => None,
        };
        let encoded =
            strip_prefix_ignore_case(presented, &scheme.prefix).ok_or(Rejection::BadSignature)?;
        let sig = scheme
            .encoding
            .decode(encoded)
            .ok_or(Rejection::BadSignature)?;
        let expected = match timestamp {
            Some(ts) => scheme.algorithm.mac(
                self.secret.expose().as_bytes(),
                &[ts.as_bytes(), b".", &req.body],
            ),
            None => scheme
                .algorithm
                .mac(self.secret.expose().as_bytes(), &[&req.body]),
        };
        if expected.is_empty() || !ct_eq(&sig, &expected) {
            return Err(Rejection::BadSignature);
        }
        if let Some(ts) = timestamp {
            if self.max_skew_secs != 0 {
                let ts: i64 = ts.parse().map_err(|_| Rejection::StaleTimestamp)?;
                if ts > MS_THRESHOLD {
                    check_window_ms(ts, req.now, self.max_skew_secs)?;
                } else {
                    check_window(ts, req.now, self.max_skew_secs)?;
                }
            }
        }
        let payload = json_body(&req.body)?;
        let dedup = scheme
            .id_header
            .as_deref()
            .and_then(|h| req.header(h))
            .filter(|id| !id.trim().is_empty())
            .map(str::to_owned)
            .or_else(|| json_str(&payload, "id"))
            // Without an id the same body is the same event, as for bearer sources.
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(&req.body))));
        let event = generic_event(&dedup, payload)?;
        Ok(Intake::Event {
            event,
            reply: HookReply::accepted(),
        })
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
