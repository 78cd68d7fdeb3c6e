//! Standard Webhooks signing (https://www.standardwebhooks.com): the scheme our generic
//! sources verify and our outbound `webhook` targets sign with. Pure: keys, bytes, strings.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A Standard Webhooks signing secret, decoded and keyed into HMAC-SHA256 once: every signature
/// starts from a copy of that state instead of hashing the key's two padded blocks again.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// Decodes `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    pub fn parse(secret: &str) -> Result<Self, String> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let bytes = B64
            .decode(b64)
            .map_err(|_| "must be `whsec_` followed by base64".to_string())?;
        if bytes.is_empty() {
            return Err("decodes to no bytes".into());
        }
        // HMAC accepts keys of any length; this cannot fail.
        let keyed = Hmac::<Sha256>::new_from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(Self(keyed))
    }

    /// `v1,<base64 hmac>` over `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", B64.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether any `v1,` entry of a `webhook-signature` header matches.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected = self.mac(id, timestamp, body);
        header.split(' ').any(|entry| {
            entry
                .strip_prefix("v1,")
                .and_then(|b64| B64.decode(b64).ok())
                .is_some_and(|sig| ct_eq(&sig, &expected))
        })
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn official_vector_signs_and_verifies() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, TS, BODY.as_bytes()), SIG);
        assert!(key.verify(ID, TS, BODY.as_bytes(), SIG));
        assert!(
            key.verify(ID, TS, BODY.as_bytes(), &format!("v1,bm9wZQ== {SIG}")),
            "any entry may match"
        );
        let mut tampered = BODY.as_bytes().to_vec();
        tampered[3] ^= 1;
        assert!(!key.verify(ID, TS, &tampered, SIG));
        assert!(!key.verify(ID, TS + 1, BODY.as_bytes(), SIG));
    }
}
