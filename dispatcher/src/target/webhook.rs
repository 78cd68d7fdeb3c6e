//! `kind = "webhook"`: the answer payload as JSON, signed per Standard Webhooks (`webhook-id` =
//! the job id, so a receiver can dedup; `webhook-timestamp`; `webhook-signature` with one `v1,`
//! entry per secret, so secrets can rotate). Keys: `url`, `secret` or `secrets` (`whsec_…`),
//! `headers` (extra static headers).
use super::{classify_http, send, Context, Outcome, Target};
use async_trait::async_trait;
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
use shared::keys::Keys;
use shared::signing::SigningKey;
use shared::Secret;

#[derive(Debug)]
pub struct Webhook {
    url: Secret,
    keys: Vec<SigningKey>,
    headers: Vec<(String, String)>,
}

impl Webhook {
    pub fn from_config(t: &TargetConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut k = Keys::target(t);
        k.only(&["url", "secret", "secrets", "headers"]);
        let url = k.secret_url("url");
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
        k.finish(url.map(|url| Self { url, keys, headers }))
    }

    /// The body and headers of one delivery (pure, for tests).
    pub fn render(&self, job: &DispatchJob, timestamp: i64) -> (Vec<u8>, Vec<(String, String)>) {
        let body = serde_json::to_vec(&job.payload).unwrap_or_default();
        let id = job.id.to_string();
        let signature = self
            .keys
            .iter()
            .map(|k| k.sign(&id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("webhook-id".to_owned(), id),
            ("webhook-timestamp".to_owned(), timestamp.to_string()),
            ("webhook-signature".to_owned(), signature),
        ];
        headers.extend(self.headers.iter().cloned());
        (body, headers)
    }
}

#[async_trait]
impl Target for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, job: &DispatchJob, ctx: &Context) -> Outcome {
        let (body, headers) = self.render(job, chrono::Utc::now().timestamp());
        let mut req = ctx.http.post(self.url.expose()).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        send(ctx, req, classify_http).await.0
    }
}
