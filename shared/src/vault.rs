//! Encryption of what Switchboard keeps in Redis that is worth stealing: platform access tokens,
//! recorded answers and the reply credentials an event arrived with. A value is sealed with
//! AES-256-GCM under `[redis] encryption_key` and stored as `enc1:<key id>:<base64url(nonce ‖
//! ciphertext ‖ tag)>`; the Redis key the value is stored under is the associated data, so a
//! value copied to another key does not open. The 256-bit AES key is derived from the configured
//! secret (SHA-256 of a fixed label and the secret), so any secret of at least 32 bytes will do,
//! and the key id (a hash of the derived key) names it without revealing it.
//!
//! Keys rotate: `previous_encryption_keys` open what older keys sealed, new values are sealed
//! with the current key. Without a key, values are stored as they are (the quick start runs;
//! `config check` warns). A value without the `enc1:` prefix is read as plain text whatever the
//! configuration, so what was stored before the upgrade stays readable and is replaced as it is
//! rewritten. A sealed value that cannot be opened (no key, an unknown key id, a changed byte)
//! is an [`OpenError`], never a panic and never the ciphertext taken for the value.
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

use crate::secret::Secret;

/// What every sealed value starts with.
pub const PREFIX: &str = "enc1:";
/// The shortest secret accepted as a key: 32 bytes.
pub const MIN_KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// One key: its id and the AES cipher.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(secret: &Secret) -> Self {
        let derived = Sha256::new()
            .chain_update(b"switchboard at-rest key v1\n")
            .chain_update(secret.expose().as_bytes())
            .finalize();
        let id = Sha256::new()
            .chain_update(b"switchboard at-rest key id v1\n")
            .chain_update(derived)
            .finalize();
        Self {
            id: hex::encode(&id[..8]),
            cipher: Aes256Gcm::new(&derived),
        }
    }
}

/// The keys a process seals and opens stored values with; without a current key it stores
/// plain text.
#[derive(Clone, Default)]
pub struct Vault {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("key_id", &self.key_id())
            .field("previous", &self.previous.len())
            .finish()
    }
}

/// Why a stored value could not be read. Never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the value is encrypted (key {key_id}) but no redis.encryption_key is configured")]
    NoKey { key_id: String },
    #[error("the value is encrypted with key {key_id}, which is neither redis.encryption_key nor in redis.previous_encryption_keys")]
    UnknownKey { key_id: String },
    #[error("the value encrypted with key {key_id} does not decrypt: it was changed, or moved from another key")]
    Corrupt { key_id: String },
    #[error("the encrypted value is malformed")]
    Malformed,
}

impl Vault {
    /// A vault sealing with `current` (plain text when `None`) and opening with it and
    /// `previous`.
    pub fn new(current: Option<&Secret>, previous: &[Secret]) -> Self {
        Self {
            current: current.map(Key::new),
            previous: previous.iter().map(Key::new).collect(),
        }
    }

    /// The id of the key new values are sealed with, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// Whether values are encrypted.
    pub fn encrypts(&self) -> bool {
        self.current.is_some()
    }

    /// The value to store under `redis_key`: sealed with the current key, or `plain` as it is
    /// when there is none.
    pub fn seal(&self, redis_key: &str, plain: &str) -> String {
        let Some(key) = &self.current else {
            return plain.to_owned();
        };
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        #[allow(clippy::expect_used)] // AES-GCM refuses only messages beyond 64 GiB.
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: plain.as_bytes(),
                    aad: redis_key.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any value Redis can hold");
        let mut blob = Vec::with_capacity(NONCE_BYTES + sealed.len());
        blob.extend_from_slice(&nonce_bytes);
        blob.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, B64.encode(blob))
    }

    /// The plain text of a value read from `redis_key`: opened with the key its id names, or
    /// the value itself when it was stored unencrypted (before a key was set).
    pub fn open<'a>(&self, redis_key: &str, stored: &'a str) -> Result<Cow<'a, str>, OpenError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(Cow::Borrowed(stored));
        };
        let (key_id, data) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| match self.current {
                None if self.previous.is_empty() => OpenError::NoKey {
                    key_id: key_id.to_owned(),
                },
                _ => OpenError::UnknownKey {
                    key_id: key_id.to_owned(),
                },
            })?;
        let blob = B64.decode(data).map_err(|_| OpenError::Malformed)?;
        if blob.len() < NONCE_BYTES + 16 {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(NONCE_BYTES);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: redis_key.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Corrupt {
                key_id: key_id.to_owned(),
            })?;
        String::from_utf8(plain)
            .map(Cow::Owned)
            .map_err(|_| OpenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0123456789abcdef0123456789abcdef";
    const K2: &str = "fedcba9876543210fedcba9876543210";

    fn vault(current: Option<&str>, previous: &[&str]) -> Vault {
        let prev: Vec<Secret> = previous.iter().map(|p| Secret::new(*p)).collect();
        Vault::new(current.map(Secret::new).as_ref(), &prev)
    }

    #[test]
    fn a_sealed_value_holds_no_plaintext_and_opens_under_its_own_key_only() {
        let v = vault(Some(K1), &[]);
        let sealed = v.seal("p:token:wecom:a", "tok-SECRET-123");
        assert!(sealed.starts_with(PREFIX), "{sealed}");
        assert!(!sealed.contains("SECRET"));
        assert_ne!(
            sealed,
            v.seal("p:token:wecom:a", "tok-SECRET-123"),
            "fresh nonce"
        );
        assert_eq!(
            v.open("p:token:wecom:a", &sealed).unwrap(),
            "tok-SECRET-123"
        );
        // Moved to another Redis key: refused.
        assert!(matches!(
            v.open("p:token:wecom:b", &sealed),
            Err(OpenError::Corrupt { .. })
        ));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_with_the_new_key() {
        let old = vault(Some(K1), &[]);
        let sealed_old = old.seal("k", "answer");
        let rotated = vault(Some(K2), &[K1]);
        assert_eq!(rotated.open("k", &sealed_old).unwrap(), "answer");
        let sealed_new = rotated.seal("k", "answer");
        assert!(sealed_new.contains(rotated.key_id().unwrap()));
        assert_ne!(rotated.key_id(), old.key_id());
        // The old key alone cannot read the new value: a clear error.
        assert_eq!(
            old.open("k", &sealed_new),
            Err(OpenError::UnknownKey {
                key_id: rotated.key_id().unwrap().into()
            })
        );
    }

    #[test]
    fn wrong_keys_changed_bytes_and_missing_keys_are_errors_not_panics() {
        let v = vault(Some(K1), &[]);
        let sealed = v.seal("k", "answer");
        let none = vault(None, &[]);
        assert!(matches!(
            none.open("k", &sealed),
            Err(OpenError::NoKey { .. })
        ));
        let other = vault(Some(K2), &[]);
        assert!(matches!(
            other.open("k", &sealed),
            Err(OpenError::UnknownKey { .. })
        ));
        // A key with the right id but other bytes cannot happen; a flipped byte can.
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            v.open("k", &flipped),
            Err(OpenError::Corrupt { .. })
        ));
        for bad in ["enc1:", "enc1:abc", "enc1:abc:!!!", "enc1:x:AAAA"] {
            assert!(v.open("k", bad).is_err(), "{bad}");
        }
        let id = v.key_id().unwrap();
        assert_eq!(
            v.open("k", &format!("enc1:{id}:AAAA")),
            Err(OpenError::Malformed)
        );
    }

    #[test]
    fn without_a_key_values_are_stored_plain_and_old_plain_values_are_read_with_one() {
        let none = vault(None, &[]);
        assert_eq!(none.seal("k", "{\"answer\":1}"), "{\"answer\":1}");
        let v = vault(Some(K1), &[]);
        assert_eq!(v.open("k", "{\"answer\":1}").unwrap(), "{\"answer\":1}");
        assert!(!format!("{v:?}").contains(K1));
    }
}
