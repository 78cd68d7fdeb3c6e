//! WeCom's message crypto, both directions: the `msg_signature` (sha1 over the four sorted
//! strings), and AES-256-CBC with `iv = key[..16]` and PKCS#7 padding to a **32-byte** block over
//! `random(16) | msg_len (u32 BE) | msg | receive_id`. Pure functions; the key is redacted in
//! `Debug`. Decryption errors say nothing about the key or the plaintext.
use crate::platform::verify::B64_LENIENT;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha1::{Digest, Sha1};

/// WeCom pads to 32 bytes, not to the AES block of 16: pad values run 1..=32.
const PAD_BLOCK: usize = 32;

/// A decoded EncodingAESKey (32 bytes).
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey([redacted])")
    }
}

/// Why a ciphertext could not be opened. Carries no secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecryptError {
    /// Not base64, not whole blocks, bad padding or a layout that does not add up.
    Undecryptable,
}

/// A decrypted message and the receive id it was sealed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub message: Vec<u8>,
    pub receive_id: Vec<u8>,
}

impl AesKey {
    /// Decodes an EncodingAESKey: exactly 43 base64 characters, `=` appended, 32 bytes.
    pub fn parse(encoding_aes_key: &str) -> Result<Self, String> {
        let len = encoding_aes_key.chars().count();
        if len != 43 {
            return Err(format!(
                "must be 43 characters (the EncodingAESKey), got {len}"
            ));
        }
        let bytes = B64_LENIENT
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| {
                "is not base64 (the EncodingAESKey from the callback settings)".to_string()
            })?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "does not decode to 32 bytes".to_string())?;
        Ok(Self(key))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// Seals `message` for `receive_id` as WeCom does, with the given 16 random bytes.
    pub fn encrypt(&self, receive_id: &str, message: &[u8], random: [u8; 16]) -> String {
        let msg_len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        let mut plain = Vec::with_capacity(20 + message.len() + receive_id.len() + PAD_BLOCK);
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&msg_len.to_be_bytes());
        plain.extend_from_slice(message);
        plain.extend_from_slice(receive_id.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.resize(plain.len() + pad, pad as u8);
        let enc = cbc::Encryptor::<aes::Aes256>::new(&self.0.into(), &self.iv().into());
        B64.encode(enc.encrypt_padded_vec_mut::<NoPadding>(&plain))
    }

    /// Opens a base64 ciphertext.
    pub fn decrypt(&self, encrypted: &str) -> Result<Opened, DecryptError> {
        let cipher = B64_LENIENT
            .decode(encrypted.trim())
            .map_err(|_| DecryptError::Undecryptable)?;
        if cipher.is_empty() || cipher.len() % 16 != 0 {
            return Err(DecryptError::Undecryptable);
        }
        let dec = cbc::Decryptor::<aes::Aes256>::new(&self.0.into(), &self.iv().into());
        let plain = dec
            .decrypt_padded_vec_mut::<NoPadding>(&cipher)
            .map_err(|_| DecryptError::Undecryptable)?;
        let unpadded = unpad(&plain)?;
        // random(16) | msg_len(4) | msg | receive_id
        let (len_bytes, rest) = unpadded
            .get(16..)
            .and_then(|r| r.split_at_checked(4))
            .ok_or(DecryptError::Undecryptable)?;
        let msg_len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let (message, receive_id) = rest
            .split_at_checked(msg_len)
            .ok_or(DecryptError::Undecryptable)?;
        Ok(Opened {
            message: message.to_vec(),
            receive_id: receive_id.to_vec(),
        })
    }
}

/// Strict PKCS#7 with a 32-byte block: the last byte says how many bytes, all equal to it.
fn unpad(plain: &[u8]) -> Result<&[u8], DecryptError> {
    let pad = *plain.last().ok_or(DecryptError::Undecryptable)? as usize;
    if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
        return Err(DecryptError::Undecryptable);
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| b as usize != pad) {
        return Err(DecryptError::Undecryptable);
    }
    Ok(body)
}

/// `msg_signature`: hex(sha1) of the four strings sorted and concatenated.
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypted: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypted];
    // Byte-wise lexicographic order, as the official libraries sort.
    parts.sort_unstable();
    let mut sha = Sha1::new();
    for p in parts {
        sha.update(p.as_bytes());
    }
    hex::encode(sha.finalize())
}
