//! Feishu and Lark event subscriptions (`platform = "feishu"` / `"lark"`: one protocol, two
//! hosts). This module owns the keys `verification_token`, `encrypt_key` and `allow_unsigned`;
//! plain and encrypted bodies (`{"encrypt":…}`: key = sha256(encrypt_key), iv = the first 16
//! bytes, AES-256-CBC, PKCS#7); the `url_verification` challenge (also when encrypted) answered
//! with `{"challenge":…}`; the verification token, in `header.token` when the body has a
//! `header` (schema 2.0, and the SDK's own challenge vector) and at the top level otherwise, and
//! nowhere else; `X-Lark-Signature` when an encrypt key is set; and text messages of both
//! schemas, whose `content` is a JSON string inside the event. Replies go through the open API
//! (the dispatcher, with `app_id`/`app_secret`/`api_base`, accepted and ignored here).
//!
//! Without an encrypt key Feishu signs nothing: only the verification token, which travels inside
//! every event, vouches for a request. Such a source must say so (`allow_unsigned = true`). With
//! a key every request must be signed, except an encrypted challenge (Feishu sends it unsigned,
//! and only the key's holder can make one, as the official SDK reasons). It must not do I/O.
//!
//! Over the long connection (`mode = "stream"`) the connector pushes each event's JSON through
//! [`Platform::pushed`], unencrypted and unsigned: the connection authenticated it, so none of
//! this module's keys is needed; the normalisation, the event and the dedup key are the HTTP
//! mode's.
use super::sender::SignedRequest;
use super::verify::{check_window_text, ct_eq, json_at, json_body, json_str, B64_LENIENT};
use super::{HookReply, HookRequest, Intake, NewEvent, Normalised, Platform, Rejection};
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shared::config::{ConfigIssue, SourceConfig, SourceMode};
use shared::envelope::{ChatType, Conversation, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;

/// The keys this module reads (the reply channel declares its own).
pub const KEYS: &[&str] = &["verification_token", "encrypt_key", "allow_unsigned"];

pub const TIMESTAMP_HEADER: &str = "x-lark-request-timestamp";
pub const NONCE_HEADER: &str = "x-lark-request-nonce";
pub const SIGNATURE_HEADER: &str = "x-lark-signature";

#[derive(Debug)]
pub struct Feishu {
    lark: bool,
    /// None only over the long connection, whose sources the ingress does not serve.
    verification_token: Option<Secret>,
    encrypt_key: Option<Secret>,
    max_skew_secs: u64,
}

impl Feishu {
    /// A `feishu` source, or a `lark` one when `lark` is set (the reply then goes to Lark's host).
    pub fn from_config(source: &SourceConfig, lark: bool) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        // A long-connection source's events come over the connection: nothing to check.
        let stream = source.mode == SourceMode::Stream;
        let verification_token = if stream {
            keys.secret("verification_token")
        } else {
            keys.required_secret("verification_token")
        };
        let encrypt_key = keys.secret("encrypt_key");
        let allow_unsigned = keys.bool("allow_unsigned");
        // A key given but unusable (empty, unresolved) is already a problem of its own.
        let key_given = encrypt_key.is_some() || keys.has_problem("encrypt_key");
        match (key_given, allow_unsigned) {
            (false, false) if !stream => keys.issue(
                "encrypt_key",
                "is required: without it Feishu signs nothing and only the verification token, \
                 carried inside every event, vouches for a request (set the app's Encrypt Key, \
                 or accept unsigned events explicitly with allow_unsigned = true)",
            ),
            (true, true) => keys.issue(
                "allow_unsigned",
                "contradicts encrypt_key: with an encrypt key every request is signed (remove it)",
            ),
            _ => {}
        }
        let value = (stream || verification_token.is_some()).then_some(Self {
            lark,
            verification_token,
            encrypt_key,
            max_skew_secs: source.max_skew_secs,
        });
        keys.finish(value)
    }
}

/// `X-Lark-Signature`: hex(sha256(timestamp + nonce + encrypt_key + body)).
pub fn signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut sha = Sha256::new();
    sha.update(timestamp.as_bytes());
    sha.update(nonce.as_bytes());
    sha.update(encrypt_key.as_bytes());
    sha.update(body);
    hex::encode(sha.finalize())
}

/// Encrypts as Feishu does: base64(iv | AES-256-CBC(sha256(encrypt_key), iv, PKCS#7(plaintext))).
pub fn encrypt(encrypt_key: &str, plaintext: &[u8], iv: [u8; 16]) -> String {
    let key: [u8; 32] = Sha256::digest(encrypt_key.as_bytes()).into();
    let enc = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into());
    let mut out = iv.to_vec();
    out.extend(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext));
    B64.encode(out)
}

/// Opens an `encrypt` value; `None` when it is not base64, not whole blocks or badly padded.
pub fn decrypt(encrypt_key: &str, encrypted: &str) -> Option<Vec<u8>> {
    let raw = B64_LENIENT.decode(encrypted.trim()).ok()?;
    let (iv, cipher) = raw.split_at_checked(16)?;
    if cipher.is_empty() || cipher.len() % 16 != 0 {
        return None;
    }
    let key: [u8; 32] = Sha256::digest(encrypt_key.as_bytes()).into();
    let dec = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, iv).ok()?;
    dec.decrypt_padded_vec_mut::<Pkcs7>(cipher).ok()
}

impl Platform for Feishu {
    fn name(&self) -> &'static str {
        if self.lark {
            "lark"
        } else {
            "feishu"
        }
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let signed = self.check_signature(req)?;
        let outer = json_body(&req.body)?;
        let (body, encrypted) = match outer.get("encrypt") {
            Some(Value::String(encrypted)) => {
                let key = self.encrypt_key.as_ref().ok_or(Rejection::Undecryptable)?;
                let plain = decrypt(key.expose(), encrypted).ok_or(Rejection::Undecryptable)?;
                // A wrong key passes the padding check once in 256: JSON is the real test.
                let body = serde_json::from_slice(&plain).map_err(|_| Rejection::Undecryptable)?;
                (body, true)
            }
            _ => (outer, false),
        };
        if self.encrypt_key.is_some() && !signed && !encrypted {
            // With an encrypt key every request is signed but the encrypted challenge, which
            // only the key's holder can make: an unsigned plain body is not from Feishu.
            return Err(Rejection::MissingSignature);
        }
        if json_str(&body, "type").as_deref() == Some("url_verification") {
            // Feishu sends the challenge unsigned; the token (and the key, when encrypted) vouch for it.
            self.check_token(token_of(&body))?;
            let challenge =
                json_str(&body, "challenge").ok_or_else(|| Rejection::malformed("no challenge"))?;
            return Ok(Intake::Reply(HookReply::json(
                StatusCode::OK,
                &json!({ "challenge": challenge }),
            )));
        }
        if !signed && self.encrypt_key.is_some() {
            // With an encrypt key every event is signed: an unsigned one is not from Feishu.
            return Err(Rejection::MissingSignature);
        }
        self.check_token(token_of(&body))?;
        self.normalised(body)
    }

    /// An event pushed over the long connection: its JSON, plain.
    fn pushed(&self, payload: &[u8]) -> Result<Intake, Rejection> {
        self.normalised(json_body(payload)?)
    }
}

impl Feishu {
    /// A verified event of either schema.
    fn normalised(&self, body: Value) -> Result<Intake, Rejection> {
        let v2 = json_str(&body, "schema").as_deref() == Some("2.0");
        let normalised = if v2 {
            self.normalise_v2(&body)?
        } else {
            self.normalise_v1(&body)?
        };
        Ok(Intake::answered_empty(normalised, body))
    }

    /// Verifies `X-Lark-Signature` when an encrypt key is set; `true` when the request was signed.
    fn check_signature(&self, req: &HookRequest) -> Result<bool, Rejection> {
        let Some(key) = &self.encrypt_key else {
            return Ok(false);
        };
        let (Some(ts), Some(nonce), Some(sig)) = (
            req.header(TIMESTAMP_HEADER),
            req.header(NONCE_HEADER),
            req.header(SIGNATURE_HEADER),
        ) else {
            return Ok(false);
        };
        let expected = signature(ts, nonce, key.expose(), &req.body);
        if !ct_eq(
            sig.trim().to_ascii_lowercase().as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(Rejection::BadSignature);
        }
        check_window_text(ts, req.now, self.max_skew_secs)?;
        Ok(true)
    }

    fn check_token(&self, token: Option<String>) -> Result<(), Rejection> {
        let token = token.ok_or(Rejection::BadToken)?;
        // A long-connection source has no token to check a callback with: it takes none.
        let expected = self
            .verification_token
            .as_ref()
            .ok_or(Rejection::BadToken)?;
        if ct_eq(token.as_bytes(), expected.expose().as_bytes()) {
            Ok(())
        } else {
            Err(Rejection::BadToken)
        }
    }

    /// Schema 2.0: `header.event_type`, `im.message.receive_v1` carries the message.
    fn normalise_v2(&self, body: &Value) -> Result<Normalised, Rejection> {
        let event_id = json_at(body, "/header/event_id")
            .ok_or_else(|| Rejection::malformed("no header.event_id"))?;
        let event_type = json_at(body, "/header/event_type").unwrap_or_default();
        if event_type != "im.message.receive_v1" {
            return Ok(Err(v2_reason(&event_type)));
        }
        if json_at(body, "/event/sender/sender_type").as_deref() != Some("user") {
            return Ok(Err("bot_echo"));
        }
        let msg = body
            .pointer("/event/message")
            .ok_or_else(|| Rejection::malformed("no event.message"))?;
        if json_str(msg, "message_type").as_deref() != Some("text") {
            return Ok(Err("not_text"));
        }
        let content =
            json_str(msg, "content").ok_or_else(|| Rejection::malformed("no message.content"))?;
        let content: Value = serde_json::from_str(&content)
            .map_err(|_| Rejection::malformed("message.content is not JSON"))?;
        let mention_keys: Vec<String> = msg
            .get("mentions")
            .and_then(Value::as_array)
            .map(|ms| ms.iter().filter_map(|m| json_str(m, "key")).collect())
            .unwrap_or_default();
        let text = strip_mentions(
            &json_str(&content, "text").unwrap_or_default(),
            &mention_keys,
        );
        if text.is_empty() {
            return Ok(Err("empty"));
        }
        let message_id =
            json_str(msg, "message_id").ok_or_else(|| Rejection::malformed("no message_id"))?;
        let chat_id = json_str(msg, "chat_id").ok_or_else(|| Rejection::malformed("no chat_id"))?;
        let sender_id = ["open_id", "user_id", "union_id"]
            .iter()
            .find_map(|k| json_at(body, &format!("/event/sender/sender_id/{k}")))
            .ok_or_else(|| Rejection::malformed("no sender id"))?;
        let chat_type = if json_str(msg, "chat_type").as_deref() == Some("p2p") {
            ChatType::Single
        } else {
            ChatType::Group
        };
        Ok(Ok(self.event(
            event_id,
            chat_id,
            chat_type,
            sender_id,
            json_str(msg, "thread_id"),
            text,
            message_id,
        )))
    }

    /// Schema 1.0: top-level `uuid`, `event.type == "message"`.
    fn normalise_v1(&self, body: &Value) -> Result<Normalised, Rejection> {
        let uuid = json_str(body, "uuid")
            .ok_or_else(|| Rejection::malformed("no uuid (schema 1.0) or schema 2.0"))?;
        let event = body
            .get("event")
            .ok_or_else(|| Rejection::malformed("no event"))?;
        match json_str(event, "type").as_deref() {
            Some("message") => {}
            Some("message_read") => return Ok(Err("read_receipt")),
            Some("add_bot")
            | Some("remove_bot")
            | Some("p2p_chat_create")
            | Some("add_user_to_chat")
            | Some("remove_user_from_chat") => return Ok(Err("join")),
            _ => return Ok(Err("event")),
        }
        if json_str(event, "msg_type").as_deref() != Some("text") {
            return Ok(Err("not_text"));
        }
        let text = json_str(event, "text_without_at_bot")
            .or_else(|| json_str(event, "text"))
            .map(|t| strip_at_tags(&t))
            .unwrap_or_default();
        if text.is_empty() {
            return Ok(Err("empty"));
        }
        let chat_id = json_str(event, "open_chat_id")
            .ok_or_else(|| Rejection::malformed("no open_chat_id"))?;
        let sender_id =
            json_str(event, "open_id").ok_or_else(|| Rejection::malformed("no open_id"))?;
        let message_id = json_str(event, "open_message_id").unwrap_or_default();
        let chat_type = if json_str(event, "chat_type").as_deref() == Some("private") {
            ChatType::Single
        } else {
            ChatType::Group
        };
        Ok(Ok(self.event(
            uuid, chat_id, chat_type, sender_id, None, text, message_id,
        )))
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        dedup_key: String,
        chat_id: String,
        chat_type: ChatType,
        sender_id: String,
        thread_id: Option<String>,
        text: String,
        message_id: String,
    ) -> NewEvent {
        NewEvent {
            dedup_key,
            kind: "message".into(),
            conversation: Conversation {
                chat_id: chat_id.clone(),
                chat_type,
                sender_id,
                sender_name: None,
                thread_id,
            },
            text,
            reply: Some(ReplyHandle::Feishu {
                message_id,
                chat_id,
                lark: self.lark,
            }),
            payload: Value::Null,
        }
    }
}

/// Where the verification token sits: `header.token` when the body has a `header` (schema 2.0,
/// also in challenges), else the top-level `token` (schema 1.0 and the plain challenge). Only
/// there: the official SDK reads the same two places, the header's winning.
fn token_of(body: &Value) -> Option<String> {
    match body.get("header") {
        Some(header) => json_str(header, "token"),
        None => json_str(body, "token"),
    }
}

/// The metric label of a schema 2.0 event that is not a message.
fn v2_reason(event_type: &str) -> &'static str {
    match event_type {
        "im.message.message_read_v1" => "read_receipt",
        "im.message.reaction.created_v1" | "im.message.reaction.deleted_v1" => "reaction",
        "im.message.recalled_v1" => "deleted",
        t if t.starts_with("im.chat.member.") || t == "p2p_chat_create" => "join",
        _ => "event",
    }
}

/// Removes the `@_user_N` / `@_all` placeholders Feishu puts where people were mentioned.
pub fn strip_mentions(text: &str, keys: &[String]) -> String {
    let mut out = text.to_owned();
    let mut keys: Vec<&String> = keys.iter().filter(|k| !k.is_empty()).collect();
    // Longest first, so that `@_user_1` does not eat the start of `@_user_10`.
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        out = out.replace(key.as_str(), "");
    }
    let mut cleaned = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("@_") {
        cleaned.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("@_user_") {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                rest = &after[digits..];
                continue;
            }
        }
        if let Some(after) = tail.strip_prefix("@_all") {
            rest = after;
            continue;
        }
        cleaned.push_str("@_");
        rest = &tail[2..];
    }
    cleaned.push_str(rest);
    cleaned.trim().to_owned()
}

/// Removes schema 1.0 `<at open_id="…">@name</at>` tags.
fn strip_at_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<at") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</at>") {
            Some(end) => rest = &rest[start + end + "</at>".len()..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_owned()
}

/// A plain (unencrypted) event request.
pub fn request_plain(body: &str) -> SignedRequest {
    SignedRequest::new(Method::POST, body.to_owned())
        .with_header("content-type", "application/json")
}

/// An encrypted event request, signed as Feishu signs it when an encrypt key is set.
pub fn request_encrypted(
    encrypt_key: &str,
    timestamp: i64,
    nonce: &str,
    plaintext: &str,
    iv: [u8; 16],
) -> SignedRequest {
    let body = json!({ "encrypt": encrypt(encrypt_key, plaintext.as_bytes(), iv) }).to_string();
    let ts = timestamp.to_string();
    let sig = signature(&ts, nonce, encrypt_key, body.as_bytes());
    SignedRequest::new(Method::POST, body)
        .with_header("content-type", "application/json")
        .with_header(TIMESTAMP_HEADER, ts)
        .with_header(NONCE_HEADER, nonce)
        .with_header(SIGNATURE_HEADER, sig)
}

/// The challenge Feishu posts when the request URL is saved.
pub fn challenge_body(verification_token: &str, challenge: &str) -> String {
    json!({ "challenge": challenge, "token": verification_token, "type": "url_verification" })
        .to_string()
}

/// A schema 2.0 `im.message.receive_v1` text message. `group` picks `chat_type` group over p2p.
pub fn text_event_v2(
    event_id: &str,
    verification_token: &str,
    chat_id: &str,
    group: bool,
    open_id: &str,
    message_id: &str,
    text: &str,
) -> String {
    json!({
        "schema": "2.0",
        "header": {
            "event_id": event_id, "event_type": "im.message.receive_v1", "create_time": "1700000000000",
            "token": verification_token, "app_id": "cli_test", "tenant_key": "tenant",
        },
        "event": {
            "sender": { "sender_id": { "open_id": open_id, "user_id": "u", "union_id": "on" }, "sender_type": "user", "tenant_key": "tenant" },
            "message": {
                "message_id": message_id, "chat_id": chat_id, "chat_type": if group { "group" } else { "p2p" },
                "message_type": "text", "content": json!({ "text": text }).to_string(), "create_time": "1700000000000",
            },
        },
    })
    .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
