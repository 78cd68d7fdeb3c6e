//! `kind = "webhook"`: the answer payload as JSON, signed per Standard Webhooks (`webhook-id` =
//! the job id, so a receiver can dedup; `webhook-timestamp`; `webhook-signature` with one `v1,`
//! entry per secret, so secrets can rotate). Keys: `url`, `secret` or `secrets` (`whsec_…`),
//! `headers` (extra static headers), `template` (a body template instead of the answer payload,
//! see [`super::template`]; still signed) and `content_type` (of a templated body, default
//! `application/json`).
use super::address::TargetUrl;
use super::template::BodyTemplate;
use super::{classify_http, send, Context, Outcome, Target, Verdict};
use async_trait::async_trait;
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
use shared::envelope::{Attempt, AttemptOutcome};
use shared::keys::Keys;
use shared::signing::SigningKey;
use shared::Secret;

/// A delivery's body and headers.
pub type Rendered = (Vec<u8>, Vec<(String, String)>);

#[derive(Debug)]
pub struct Webhook {
    url: TargetUrl,
    keys: Vec<SigningKey>,
    headers: Vec<(String, String)>,
    template: Option<BodyTemplate>,
    content_type: String,
}

impl Webhook {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&[
            "url",
            "secret",
            "secrets",
            "headers",
            "template",
            "content_type",
        ]);
        let template = k.str("template").and_then(|src| {
            BodyTemplate::compile(&src)
                .map_err(|problem| k.issue("template", problem))
                .ok()
        });
        let content_type = k
            .str("content_type")
            .unwrap_or_else(|| "application/json".to_owned());
        let url = TargetUrl::read(&mut k, "url");
        let mut refs: Vec<String> = k.str("secret").into_iter().collect();
        refs.extend(k.list("secrets"));
        let mut keys = Vec::new();
        for r in &refs {
            match Secret::resolve(r)
                .map_err(|e| e.to_string())
                .and_then(|s| SigningKey::parse(s.expose()))
            {
                Ok(key) => keys.push(key),
                Err(e) => k.issue("secret", e),
            }
        }
        if refs.is_empty() {
            k.issue(
                "secret",
                "is required: receivers verify our signature (`whsec_…`)",
            );
        }
        // Extra static headers: string values only.
        let headers = t
            .settings
            .get("headers")
            .and_then(|v| v.as_table())
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        k.finish(url.map(|url| Self {
            url,
            keys,
            headers,
            template,
            content_type,
        }))
    }

    /// The body and headers of one delivery (pure, for tests); a template that fails to render
    /// says why.
    pub fn render(&self, job: &DispatchJob, timestamp: i64) -> Result<Rendered, String> {
        let (body, content_type) = match &self.template {
            None => (
                serde_json::to_vec(&job.payload).unwrap_or_default(),
                "application/json",
            ),
            Some(t) => (t.render(job)?.into_bytes(), self.content_type.as_str()),
        };
        let id = job.id.to_string();
        let signature = self
            .keys
            .iter()
            .map(|k| k.sign(&id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let mut headers = vec![
            ("content-type".to_owned(), content_type.to_owned()),
            ("webhook-id".to_owned(), id),
            ("webhook-timestamp".to_owned(), timestamp.to_string()),
            ("webhook-signature".to_owned(), signature),
        ];
        headers.extend(self.headers.iter().cloned());
        Ok((body, headers))
    }
}

#[async_trait]
impl Target for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let (body, headers) = match self.render(job, chrono::Utc::now().timestamp()) {
            Ok(rendered) => rendered,
            // The same job renders the same way next time: a dead letter, with the reason.
            Err(error) => {
                return Outcome {
                    verdict: Verdict::Permanent,
                    attempt: Attempt {
                        at: chrono::Utc::now(),
                        outcome: AttemptOutcome::Permanent,
                        status: None,
                        code: None,
                        error: Some(error),
                        excerpt: None,
                        duration_ms: 0,
                    },
                    sent: false,
                }
            }
        };
        let mut req = ctx.http.post(self.url.get()).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        send(ctx, req, classify_http).await.0
    }
}
