//! Simple senders (`platform = "bearer"`): CRMs and forms that can only add a shared token, as
//! `Authorization: Bearer <token>` (or an `X-Switchboard-Token` header). The body is the generic
//! JSON of [`super::standard::generic_event`]; the dedup key is the `Idempotency-Key` header,
//! else the body's `id`, else a hash of the body (the same body twice is the same event).
//! Keys: `token`.
use super::standard::generic_event;
use super::verify::{ct_eq, json_body, json_str};
use super::{HookReply, HookRequest, Intake, Platform, Rejection};
use axum::http::Method;
use sha2::{Digest, Sha256};
use shared::config::{ConfigIssue, SourceConfig};
use shared::keys::Keys;
use shared::Secret;

/// The keys this module reads.
pub const KEYS: &[&str] = &["token"];

#[derive(Debug)]
pub struct Bearer {
    token: Secret,
}

impl Bearer {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let value = keys.required_secret("token").map(|token| Self { token });
        keys.finish(value)
    }
}

impl Platform for Bearer {
    fn name(&self) -> &'static str {
        "bearer"
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let presented = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .or_else(|| req.header("x-switchboard-token"))
            .ok_or(Rejection::MissingSignature)?;
        if !ct_eq(presented.trim().as_bytes(), self.token.expose().as_bytes()) {
            return Err(Rejection::BadToken);
        }
        let payload = json_body(&req.body)?;
        let dedup = req
            .header("idempotency-key")
            .filter(|k| !k.trim().is_empty())
            .map(str::to_owned)
            .or_else(|| json_str(&payload, "id"))
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(&req.body))));
        let event = generic_event(&dedup, payload)?;
        Ok(Intake::Event {
            event,
            reply: HookReply::accepted(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(auth: Option<&str>, body: &str) -> HookRequest {
        let mut headers = axum::http::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert("authorization", a.parse().unwrap());
        }
        HookRequest {
            method: Method::POST,
            query: None,
            headers,
            body: Bytes::from(body.to_owned()),
            now: chrono::Utc::now(),
        }
    }

    #[test]
    fn receive_table() {
        let p = Bearer {
            token: Secret::new("s3cret"),
        };
        let body = r#"{"id":"lead-9","text":"call me"}"#;
        let Intake::Event { event, .. } = p.receive(&req(Some("Bearer s3cret"), body)).unwrap()
        else {
            panic!()
        };
        assert_eq!(event.dedup_key, "lead-9");
        assert_eq!(
            p.receive(&req(Some("Bearer s3creT"), body)).unwrap_err(),
            Rejection::BadToken
        );
        assert_eq!(
            p.receive(&req(None, body)).unwrap_err(),
            Rejection::MissingSignature
        );
        assert_eq!(
            p.receive(&req(Some("Bearer s3cret"), "{not json"))
                .unwrap_err()
                .reason(),
            "malformed"
        );
        // Without an id the same body is the same event.
        let a = p
            .receive(&req(Some("Bearer s3cret"), r#"{"text":"x"}"#))
            .unwrap();
        let b = p
            .receive(&req(Some("Bearer s3cret"), r#"{"text":"x"}"#))
            .unwrap();
        assert_eq!(a, b);
    }
}
