//! `kind = "webhook"`: the answer payload as JSON, signed per Standard Webhooks (`webhook-id` =
//! the job id, so a receiver can dedup; `webhook-timestamp`; `webhook-signature` with one `v1,`
//! entry per secret, so secrets can rotate). Keys: `url`, `secret` or `secrets` (`whsec_…`),
//! `headers` (extra static headers).
use super::{classify_http, send, Context, Outcome, Target};
use async_trait::async_trait;
use shared::config::{ConfigIssue, TargetConfig};
use shared::envelope::DispatchJob;
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
        let mut issues = Vec::new();
        let issue = |key: &str, problem: String| ConfigIssue {
            key: format!("targets.{}.{key}", t.id),
            problem,
        };
        for k in t.settings.keys() {
            if !["url", "secret", "secrets", "headers"].contains(&k.as_str()) {
                issues.push(issue(
                    k,
                    "is not a key of kind `webhook` (known: url, secret, secrets, headers)".into(),
                ));
            }
        }
        let url = match t.settings.get("url").and_then(|v| v.as_str()) {
            Some(u) => match Secret::resolve_embedded(u) {
                Ok(s)
                    if url::Url::parse(s.expose())
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https")) =>
                {
                    Some(s)
                }
                Ok(_) => {
                    issues.push(issue("url", "must be an http:// or https:// URL".into()));
                    None
                }
                Err(e) => {
                    issues.push(issue("url", e.to_string()));
                    None
                }
            },
            None => {
                issues.push(issue("url", "is required for kind `webhook`".into()));
                None
            }
        };
        let mut refs: Vec<String> = Vec::new();
        if let Some(s) = t.settings.get("secret").and_then(|v| v.as_str()) {
            refs.push(s.to_owned());
        }
        if let Some(list) = t.settings.get("secrets").and_then(|v| v.as_array()) {
            refs.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        let mut keys = Vec::new();
        for r in &refs {
            match Secret::resolve(r)
                .map_err(|e| e.to_string())
                .and_then(|s| SigningKey::parse(s.expose()))
            {
                Ok(k) => keys.push(k),
                Err(e) => issues.push(issue("secret", e)),
            }
        }
        if refs.is_empty() {
            issues.push(issue(
                "secret",
                "is required: receivers verify our signature (`whsec_…`)".into(),
            ));
        }
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
        match url {
            Some(url) if issues.is_empty() => Ok(Self { url, keys, headers }),
            _ => Err(issues),
        }
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
