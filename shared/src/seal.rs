//! Seals: what makes a message or a record provably written by a Switchboard role. A seal is an
//! HMAC-SHA256 over the exact bytes of a message body, keyed with the `[audit] key` that only
//! the roles (and the auditors' tools) hold, and carried next to the body in the AMQP header
//! [`SEAL_HEADER`] as `v1:<key id>:<base64url mac>`. The body is never changed, so a sealed
//! message reads the same to everything that ignores seals, and a message the broker itself
//! dead-letters keeps its header and stays verifiable.
//!
//! A key is known by an id derived from it (so configs need not name keys); old keys listed in
//! `[audit] previous_keys` still verify but never seal, which is how a key is rotated. Pure:
//! bytes in, strings and verdicts out. What to do with a verdict is the caller's decision.
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The AMQP header a seal travels in.
pub const SEAL_HEADER: &str = "x-switchboard-seal";
/// What every sealed body is prefixed with before the MAC, so that a seal made for a message
/// can never be taken for a MAC made elsewhere with the same key.
const DOMAIN: &[u8] = b"switchboard-seal-v1\n";
/// The shortest key accepted: 32 bytes, as much as the MAC's own strength.
pub const MIN_KEY_BYTES: usize = 32;

/// One audit key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    secret: Secret,
}

impl Key {
    fn new(secret: &Secret) -> Self {
        Self {
            id: key_id(secret.expose().as_bytes()),
            secret: secret.clone(),
        }
    }

    fn mac(&self, body: &[u8]) -> Vec<u8> {
        mac(self.secret.expose().as_bytes(), &[DOMAIN, body])
    }
}

/// The keys a process seals and verifies with.
#[derive(Clone)]
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
    require: bool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("key_id", &self.current.id)
            .field("previous", &self.previous.len())
            .field("require", &self.require)
            .finish()
    }
}

/// What a seal says about a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verdict {
    /// Sealed with a key this process holds, and the body is as sealed.
    Verified { key_id: String },
    /// No seal: written before seals existed, or by something that does not hold the key.
    Unsealed,
    /// Sealed with a key this process does not know (a newer key, or a removed old one).
    UnknownKey { key_id: String },
    /// The seal does not match the body: changed after sealing, or forged.
    Forged { key_id: String },
    /// The header is not a seal this version reads.
    Malformed,
}

impl Verdict {
    pub fn is_verified(&self) -> bool {
        matches!(self, Verdict::Verified { .. })
    }

    /// One word for tables and filters.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Verified { .. } => "verified",
            Verdict::Unsealed => "unsealed",
            Verdict::UnknownKey { .. } => "unknown-key",
            Verdict::Forged { .. } => "forged",
            Verdict::Malformed => "malformed",
        }
    }

    /// Why a record that is not verified cannot be trusted, as a sentence.
    pub fn explain(&self) -> String {
        match self {
            Verdict::Verified { key_id } => format!("sealed with key {key_id} and unchanged"),
            Verdict::Unsealed => "it carries no seal: written before [audit] key was set, or not by a Switchboard role".into(),
            Verdict::UnknownKey { key_id } => format!("it is sealed with key {key_id}, which this process does not hold (list it in [audit] previous_keys)"),
            Verdict::Forged { key_id } => format!("its seal (key {key_id}) does not match its content: it was changed or forged"),
            Verdict::Malformed => "its seal header is not a seal this version reads".into(),
        }
    }
}

impl Keyring {
    /// A keyring sealing with `current`; `previous` keys only verify. `require` says whether
    /// consumers refuse messages that do not verify.
    pub fn new(current: &Secret, previous: &[Secret], require: bool) -> Self {
        Self {
            current: Key::new(current),
            previous: previous.iter().map(Key::new).collect(),
            require,
        }
    }

    /// The id of the key new seals are made with.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Whether consumers refuse what does not verify (`[audit] require_seals`).
    pub fn requires_seals(&self) -> bool {
        self.require
    }

    /// The seal of a body, for [`SEAL_HEADER`].
    pub fn seal(&self, body: &[u8]) -> String {
        format!(
            "v1:{}:{}",
            self.current.id,
            B64.encode(self.current.mac(body))
        )
    }

    /// What `header` (the message's [`SEAL_HEADER`], if any) says about `body`.
    pub fn verify(&self, body: &[u8], header: Option<&str>) -> Verdict {
        let Some(header) = header else {
            return Verdict::Unsealed;
        };
        let mut parts = header.splitn(3, ':');
        let (Some("v1"), Some(id), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Verdict::Malformed;
        };
        let Ok(given) = B64.decode(mac) else {
            return Verdict::Malformed;
        };
        let key = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == id);
        match key {
            None => Verdict::UnknownKey { key_id: id.into() },
            Some(k) if ct_eq(&k.mac(body), &given) => Verdict::Verified { key_id: id.into() },
            Some(_) => Verdict::Forged { key_id: id.into() },
        }
    }
}

/// A key's id: the first 8 bytes of an HMAC of a fixed text under the key, in hex. It names the
/// key in seals without telling anything about it.
pub fn key_id(key: &[u8]) -> String {
    hex::encode(&mac(key, &[b"switchboard key id v1"])[..8])
}

/// SHA-256 of bytes in hex: how chain records name the record before them.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const K1: &str = "k1-0123456789abcdef0123456789abcdef";
    const K2: &str = "k2-fedcba9876543210fedcba9876543210";

    fn ring(current: &str, previous: &[&str]) -> Keyring {
        let prev: Vec<Secret> = previous.iter().map(|p| Secret::new(*p)).collect();
        Keyring::new(&Secret::new(current), &prev, true)
    }

    #[test]
    fn seals_verify_and_say_why_they_do_not() {
        let old = ring(K1, &[]);
        let rotated = ring(K2, &[K1]);
        let body = br#"{"envelope":"inbound_event","v":1}"#;
        let sealed = old.seal(body);
        let id1 = key_id(K1.as_bytes());
        let id2 = key_id(K2.as_bytes());
        let newer = rotated.seal(body);
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        #[rustfmt::skip]
        let cases: Vec<(&Keyring, &[u8], Option<&str>, Verdict)> = vec![
            (&old, body, Some(&sealed), Verdict::Verified { key_id: id1.clone() }),
            // An old key still verifies after a rotation.
            (&rotated, body, Some(&sealed), Verdict::Verified { key_id: id1.clone() }),
            (&old, b"{\"changed\":1}", Some(&sealed), Verdict::Forged { key_id: id1.clone() }),
            (&old, body, Some(&tampered), Verdict::Forged { key_id: id1.clone() }),
            (&old, body, None, Verdict::Unsealed),
            (&old, body, Some(&newer), Verdict::UnknownKey { key_id: id2.clone() }),
            (&old, body, Some("v2:x:y"), Verdict::Malformed),
            (&old, body, Some("v1:x:!!"), Verdict::Malformed),
            (&old, body, Some("garbage"), Verdict::Malformed),
        ];
        for (i, (keys, body, header, want)) in cases.into_iter().enumerate() {
            assert_eq!(keys.verify(body, header), want, "case {i}");
        }
        assert!(rotated.seal(body).starts_with(&format!("v1:{id2}:")));
    }

    #[test]
    fn key_ids_are_stable_and_tell_keys_apart() {
        assert_eq!(key_id(K1.as_bytes()), key_id(K1.as_bytes()));
        assert_ne!(key_id(K1.as_bytes()), key_id(K2.as_bytes()));
        assert_eq!(key_id(K1.as_bytes()).len(), 16);
        assert!(!format!("{:?}", ring(K1, &[])).contains(K1));
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
