//! WeCom (企业微信) application callbacks (`platform = "wecom"`). This module owns the keys
//! `token`, `encoding_aes_key`, `receive_id`; the URL verification (`GET ?echostr=`, answered
//! with the decrypted plaintext); encrypted POSTs, XML (`<xml><Encrypt>…`) or JSON
//! (`{"encrypt":…}`); the `msg_signature` check, decryption and receive-id check; and the
//! normalisation of the decrypted message (XML or JSON) into a [`NewEvent`] answered with 200 and
//! an empty body. Replies go through the active message API (the dispatcher's reply channel,
//! which declares its own keys: `corp_secret`, `agent_id`, `api_base`, …). It must not do I/O.
//! The official library checks no timestamp: the `max_skew_secs` window is our replay guard.
mod crypto;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use crypto::{signature, AesKey, DecryptError, Opened};

use super::sender::SignedRequest;
use super::verify::{ct_eq, json_at, json_str};
use super::{xml, HookReply, HookRequest, Intake, NewEvent, Normalised, Platform, Rejection};
use axum::http::{Method, StatusCode};
use serde_json::Value;
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{ChatType, Conversation, ReplyHandle};
use shared::keys::Keys;
use shared::Secret;

/// The keys this module reads (the reply channel declares its own; `receive_id` and `agent_id`
/// are both's).
pub const KEYS: &[&str] = &["token", "encoding_aes_key", "receive_id", "agent_id"];

#[derive(Debug)]
pub struct Wecom {
    token: Secret,
    key: AesKey,
    /// The CorpID (or SuiteID) messages must be sealed for; empty for AI bots.
    receive_id: String,
    /// The app's AgentID from the config, used when a message carries none.
    agent_id: Option<String>,
    max_skew_secs: u64,
}

impl Wecom {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let token = keys.required_secret("token");
        let key = keys.required_secret("encoding_aes_key").and_then(|k| {
            AesKey::parse(k.expose())
                .map_err(|problem| keys.issue("encoding_aes_key", problem))
                .ok()
        });
        // Required but may be empty: the AI-bot flavour seals messages for an empty receive id.
        let receive_id = keys.required_str_may_be_empty("receive_id");
        let agent_id = keys.id("agent_id");
        let value = match (token, key, receive_id) {
            (Some(token), Some(key), Some(receive_id)) => Some(Self {
                token,
                key,
                receive_id,
                agent_id,
                max_skew_secs: source.max_skew_secs,
            }),
            _ => None,
        };
        keys.finish(value)
    }

    /// Checks the query's signature over `encrypted` and the timestamp window.
    fn verify(&self, req: &HookRequest, encrypted: &str) -> Result<(), Rejection> {
        let sig = req
            .query_param("msg_signature")
            .ok_or(Rejection::MissingSignature)?;
        let ts = req
            .query_param("timestamp")
            .ok_or(Rejection::MissingSignature)?;
        let nonce = req
            .query_param("nonce")
            .ok_or(Rejection::MissingSignature)?;
        let expected = signature(self.token.expose(), &ts, &nonce, encrypted);
        if !ct_eq(
            sig.trim().to_ascii_lowercase().as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(Rejection::BadSignature);
        }
        super::verify::check_window_text(&ts, req.now, self.max_skew_secs)?;
        Ok(())
    }

    /// Decrypts and checks the receive id.
    fn open(&self, encrypted: &str) -> Result<Vec<u8>, Rejection> {
        let opened = self
            .key
            .decrypt(encrypted)
            .map_err(|_| Rejection::Undecryptable)?;
        if !ct_eq(&opened.receive_id, self.receive_id.as_bytes()) {
            return Err(Rejection::WrongReceiver);
        }
        Ok(opened.message)
    }

    fn url_verification(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        // Base64 has no spaces: a `+` that reached us unescaped was form-decoded to a space.
        let echostr = req
            .query_param("echostr")
            .ok_or_else(|| Rejection::malformed("no echostr in the query"))?
            .replace(' ', "+");
        self.verify(req, &echostr)?;
        let plain = self.open(&echostr)?;
        let plain = String::from_utf8(plain).map_err(|_| Rejection::Undecryptable)?;
        Ok(Intake::Reply(HookReply::text(StatusCode::OK, plain)))
    }

    fn message(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.query.is_none() {
            return Err(Rejection::MissingSignature);
        }
        let encrypted = outer_encrypt(&req.body)?;
        self.verify(req, &encrypted)?;
        let plain = self.open(&encrypted)?;
        let plain = std::str::from_utf8(&plain).map_err(|_| Rejection::Undecryptable)?;
        let payload = parse_inner(plain)?;
        Ok(Intake::answered_empty(
            normalise(&payload, self.agent_id.as_deref())?,
            payload,
        ))
    }
}

impl Platform for Wecom {
    fn name(&self) -> &'static str {
        "wecom"
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        match req.method {
            Method::GET => self.url_verification(req),
            Method::POST => self.message(req),
            _ => Err(Rejection::MethodNotAllowed),
        }
    }
}

/// The `Encrypt` value of an XML body or the `encrypt` value of a JSON body.
fn outer_encrypt(body: &[u8]) -> Result<String, Rejection> {
    let text = std::str::from_utf8(body).map_err(|_| Rejection::malformed("body is not UTF-8"))?;
    let outer = if super::verify::looks_like_json(body) {
        super::verify::json_body(body)?
    } else {
        xml::to_json(text).map_err(Rejection::malformed)?
    };
    json_str(&outer, "Encrypt")
        .or_else(|| json_str(&outer, "encrypt"))
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Rejection::malformed("no Encrypt field in the body"))
}

/// The decrypted message as JSON: XML converted, or JSON as is.
fn parse_inner(plain: &str) -> Result<Value, Rejection> {
    let value = if super::verify::looks_like_json(plain.as_bytes()) {
        super::verify::json_body(plain.as_bytes())?
    } else {
        xml::to_json(plain).map_err(Rejection::malformed)?
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(Rejection::malformed(
            "the decrypted message is not an object",
        ))
    }
}

/// Reads an app message (`MsgType`, `Content`, …) or an AI-bot message (`msgtype`, `text.content`, …).
fn normalise(msg: &Value, agent_id: Option<&str>) -> Result<Normalised, Rejection> {
    if msg.get("MsgType").is_none() && msg.get("msgtype").is_some() {
        return normalise_ai_bot(msg);
    }
    let msg_type = json_str(msg, "MsgType").ok_or_else(|| Rejection::malformed("no MsgType"))?;
    let from =
        json_str(msg, "FromUserName").ok_or_else(|| Rejection::malformed("no FromUserName"))?;
    if msg_type == "event" {
        return Ok(Err(event_reason(json_str(msg, "Event").as_deref())));
    }
    if msg_type != "text" {
        return Ok(Err("not_text"));
    }
    let text = json_str(msg, "Content").unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(Err("empty"));
    }
    // Events carry no MsgId; the sender and the second they were made identify them.
    let dedup_key = match json_str(msg, "MsgId") {
        Some(id) => id,
        None => format!("{from}:{}", json_str(msg, "CreateTime").unwrap_or_default()),
    };
    let agent_id = json_str(msg, "AgentID").or_else(|| agent_id.map(str::to_owned));
    Ok(Ok(NewEvent {
        dedup_key,
        kind: "message".into(),
        // An app conversation is one user talking to the app.
        conversation: Conversation {
            chat_id: from.clone(),
            chat_type: ChatType::Single,
            sender_id: from.clone(),
            sender_name: None,
            thread_id: None,
        },
        text,
        reply: Some(ReplyHandle::Wecom {
            to_user: from,
            agent_id,
        }),
        payload: Value::Null,
    }))
}

/// The AI-bot (智能机器人) JSON layout: `msgid`, `chatid`, `chattype`, `from.userid`, `text.content`.
fn normalise_ai_bot(msg: &Value) -> Result<Normalised, Rejection> {
    let msg_type = json_str(msg, "msgtype").unwrap_or_default();
    if msg_type == "event" {
        return Ok(Err("event"));
    }
    if msg_type != "text" {
        return Ok(Err("not_text"));
    }
    let from =
        json_at(msg, "/from/userid").ok_or_else(|| Rejection::malformed("no from.userid"))?;
    let text = json_at(msg, "/text/content").unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(Err("empty"));
    }
    let dedup_key = json_str(msg, "msgid").ok_or_else(|| Rejection::malformed("no msgid"))?;
    let group = json_str(msg, "chattype").as_deref() == Some("group");
    Ok(Ok(NewEvent {
        dedup_key,
        kind: "message".into(),
        conversation: Conversation {
            chat_id: json_str(msg, "chatid").unwrap_or_else(|| from.clone()),
            chat_type: if group {
                ChatType::Group
            } else {
                ChatType::Single
            },
            sender_id: from.clone(),
            sender_name: None,
            thread_id: None,
        },
        text,
        reply: Some(ReplyHandle::Wecom {
            to_user: from,
            agent_id: None,
        }),
        payload: Value::Null,
    }))
}

/// The metric label of an event that is not a user message.
fn event_reason(event: Option<&str>) -> &'static str {
    match event.map(str::to_ascii_lowercase).as_deref() {
        Some("enter_agent") => "enter_agent",
        Some("subscribe") | Some("unsubscribe") => "subscription",
        Some("change_contact") => "contact_change",
        Some("click") | Some("view") => "menu",
        _ => "event",
    }
}

/// Seals a message for the callback, as WeCom does: base64 of the AES-256-CBC ciphertext.
pub fn encrypt(
    encoding_aes_key: &str,
    receive_id: &str,
    plaintext: &[u8],
    random: [u8; 16],
) -> Result<String, String> {
    Ok(AesKey::parse(encoding_aes_key)?.encrypt(receive_id, plaintext, random))
}

/// The XML envelope of a sealed message (older apps).
pub fn xml_body(to_user: &str, encrypted: &str, agent_id: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[{agent_id}]]></AgentID></xml>"
    )
}

/// The JSON envelope of a sealed message (newer apps and AI bots).
pub fn json_body(encrypted: &str) -> String {
    serde_json::json!({ "encrypt": encrypted }).to_string()
}

/// A decrypted text message as an app receives it.
pub fn text_message_xml(
    to_user: &str,
    from_user: &str,
    create_time: i64,
    content: &str,
    msg_id: &str,
    agent_id: &str,
) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><FromUserName><![CDATA[{from_user}]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>{agent_id}</AgentID></xml>"
    )
}

/// The URL-verification GET WeCom sends when the callback URL is saved.
pub fn request_url_verification(
    token: &str,
    encoding_aes_key: &str,
    receive_id: &str,
    echo: &str,
    timestamp: i64,
    nonce: &str,
    random: [u8; 16],
) -> Result<SignedRequest, String> {
    let echostr = encrypt(encoding_aes_key, receive_id, echo.as_bytes(), random)?;
    let ts = timestamp.to_string();
    let sig = signature(token, &ts, nonce, &echostr);
    Ok(SignedRequest::new(Method::GET, Vec::new()).with_query(&[
        ("msg_signature", &sig),
        ("timestamp", &ts),
        ("nonce", nonce),
        ("echostr", &echostr),
    ]))
}

/// A message callback POST: `message` (XML or JSON, decrypted form) sealed, signed, wrapped in
/// the XML envelope (`json = false`) or the JSON one.
#[allow(clippy::too_many_arguments)]
pub fn request_message(
    token: &str,
    encoding_aes_key: &str,
    receive_id: &str,
    message: &str,
    timestamp: i64,
    nonce: &str,
    random: [u8; 16],
    json: bool,
) -> Result<SignedRequest, String> {
    let encrypted = encrypt(encoding_aes_key, receive_id, message.as_bytes(), random)?;
    let ts = timestamp.to_string();
    let sig = signature(token, &ts, nonce, &encrypted);
    let body = if json {
        json_body(&encrypted)
    } else {
        xml_body(receive_id, &encrypted, "")
    };
    let content_type = if json { "application/json" } else { "text/xml" };
    Ok(SignedRequest::new(Method::POST, body)
        .with_header("content-type", content_type)
        .with_query(&[
            ("msg_signature", &sig),
            ("timestamp", &ts),
            ("nonce", nonce),
        ]))
}
