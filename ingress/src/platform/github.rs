//! GitHub webhooks (`platform = "github"`). This module owns the key `secret`; the
//! `X-Hub-Signature-256` check (`sha256=` + hex(hmac_sha256(secret, raw body))); the event name
//! from `X-GitHub-Event` (the event's `kind`) and the dedup key from `X-GitHub-Delivery`; JSON and
//! form-encoded (`payload=`) bodies. `ping` is acknowledged and dropped; events sent by bots are
//! dropped (`bot_echo`) so that an answer posted back by a GitHub App cannot loop. The text is a
//! short summary (issue or pull request title and body, comment body, pushed commits); the
//! payload is kept whole for workflows. GitHub has no reply handle: answers go to targets. It
//! must not do I/O.
use super::sender::SignedRequest;
use super::verify::{ct_eq, hmac_sha256, json_at, json_body, json_str};
use super::{HookReply, HookRequest, Intake, NewEvent, Platform, Rejection};
use axum::http::Method;
use serde_json::Value;
use shared::config::{ConfigIssue, SourceConfig};
use shared::envelope::{ChatType, Conversation};
use shared::keys::Keys;
use shared::Secret;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// Pushed commits listed in a summary; the payload has them all.
const MAX_COMMITS: usize = 20;

/// The keys this module reads.
pub const KEYS: &[&str] = &["secret"];

#[derive(Debug)]
pub struct Github {
    secret: Secret,
}

impl Github {
    pub fn from_config(source: &SourceConfig) -> Result<Self, Vec<ConfigIssue>> {
        let mut keys = Keys::source(source);
        let value = keys.required_secret("secret").map(|secret| Self { secret });
        keys.finish(value)
    }
}

/// `X-Hub-Signature-256`: `sha256=` + hex(hmac_sha256(secret, body)).
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &[body]))
    )
}

impl Platform for Github {
    fn name(&self) -> &'static str {
        "github"
    }

    /// GitHub signs the body only: no time, and the delivery id travels in a header of its own.
    fn replayable_forever(&self) -> bool {
        true
    }

    fn receive(&self, req: &HookRequest) -> Result<Intake, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        let presented = req
            .header(SIGNATURE_HEADER)
            .ok_or(Rejection::MissingSignature)?;
        let expected = signature(self.secret.expose(), &req.body);
        if !ct_eq(
            presented.trim().to_ascii_lowercase().as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(Rejection::BadSignature);
        }
        let event = req
            .header(EVENT_HEADER)
            .ok_or_else(|| Rejection::malformed("no X-GitHub-Event"))?;
        let delivery = req
            .header(DELIVERY_HEADER)
            .filter(|d| !d.trim().is_empty())
            .ok_or_else(|| Rejection::malformed("no X-GitHub-Delivery"))?;
        let form = req
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        let payload = if form {
            // The form content type carries the same JSON in its `payload` field.
            let json = url::form_urlencoded::parse(&req.body)
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| Rejection::malformed("no payload field"))?;
            json_body(json.as_bytes())?
        } else {
            json_body(&req.body)?
        };
        if !payload.is_object() {
            return Err(Rejection::malformed("the payload is not an object"));
        }
        if event == "ping" {
            return Ok(Intake::Ignore {
                reason: "ping",
                reply: HookReply::ok_empty(),
            });
        }
        if json_at(&payload, "/sender/type").as_deref() == Some("Bot") {
            return Ok(Intake::Ignore {
                reason: "bot_echo",
                reply: HookReply::ok_empty(),
            });
        }
        let repo = json_at(&payload, "/repository/full_name")
            .or_else(|| json_at(&payload, "/organization/login"))
            .unwrap_or_else(|| "github".into());
        let number = [
            "/issue/number",
            "/pull_request/number",
            "/discussion/number",
        ]
        .iter()
        .find_map(|p| json_at(&payload, p));
        let event = NewEvent {
            dedup_key: delivery.to_owned(),
            kind: event.to_owned(),
            conversation: Conversation {
                // One conversation per issue or pull request, else per repository.
                chat_id: match &number {
                    Some(n) => format!("{repo}#{n}"),
                    None => repo.clone(),
                },
                chat_type: ChatType::Group,
                sender_id: json_at(&payload, "/sender/login").unwrap_or_else(|| "github".into()),
                sender_name: None,
                thread_id: None,
            },
            text: summary(event, &payload, &repo),
            reply: None,
            payload,
        };
        Ok(Intake::Event {
            event,
            reply: HookReply::accepted(),
        })
    }
}

/// A short text for the event: what happened, its title and body.
pub fn summary(event: &str, p: &Value, repo: &str) -> String {
    let s = |ptr: &str| json_at(p, ptr).unwrap_or_default();
    let action = json_str(p, "action").unwrap_or_default();
    let titled = |kind: &str, obj: &str| {
        let head = format!(
            "{kind} {repo}#{} {action}: {}",
            s(&format!("/{obj}/number")),
            s(&format!("/{obj}/title"))
        );
        with_body(head, &s(&format!("/{obj}/body")))
    };
    match event {
        "issues" => titled("Issue", "issue"),
        "pull_request" => titled("Pull request", "pull_request"),
        "discussion" => titled("Discussion", "discussion"),
        "issue_comment" | "discussion_comment" => {
            let obj = if event == "issue_comment" {
                "issue"
            } else {
                "discussion"
            };
            let head = format!(
                "Comment on {repo}#{} {}",
                s(&format!("/{obj}/number")),
                s(&format!("/{obj}/title"))
            );
            with_body(head, &s("/comment/body"))
        }
        "pull_request_review" => {
            let head = format!(
                "Review ({}) of {repo}#{} {}",
                s("/review/state"),
                s("/pull_request/number"),
                s("/pull_request/title")
            );
            with_body(head, &s("/review/body"))
        }
        "pull_request_review_comment" => {
            let head = format!(
                "Review comment on {repo}#{} {}",
                s("/pull_request/number"),
                s("/pull_request/title")
            );
            with_body(head, &s("/comment/body"))
        }
        "push" => {
            let commits = p
                .get("commits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut text = format!("Push to {repo} {}: {} commit(s)", s("/ref"), commits.len());
            for c in commits.iter().take(MAX_COMMITS) {
                let first_line = json_str(c, "message")
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                text.push_str(&format!("\n- {first_line}"));
            }
            text
        }
        "release" => with_body(
            format!(
                "Release {} {action} in {repo}: {}",
                s("/release/tag_name"),
                s("/release/name")
            ),
            &s("/release/body"),
        ),
        _ if action.is_empty() => format!("{event} in {repo}"),
        _ => format!("{event} {action} in {repo}"),
    }
}

fn with_body(head: String, body: &str) -> String {
    if body.trim().is_empty() {
        head
    } else {
        format!("{head}\n\n{}", body.trim())
    }
}

/// A delivery as GitHub sends it (JSON content type).
pub fn request(secret: &str, event: &str, delivery: &str, body: &str) -> SignedRequest {
    SignedRequest::new(Method::POST, body.to_owned())
        .with_header("content-type", "application/json")
        .with_header(EVENT_HEADER, event)
        .with_header(DELIVERY_HEADER, delivery)
        .with_header(SIGNATURE_HEADER, signature(secret, body.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::platform::testkit::{at, event, issue_keys, outcome, problems, source};
    use serde_json::json;

    #[test]
    fn official_vector() {
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn receive_table() {
        let p =
            Github::from_config(&source("github", 300, json!({"secret": "gh-secret"}))).unwrap();
        let now = at(1_700_000_000);
        let issue = json!({
            "action": "opened",
            "issue": {"number": 7, "title": "Login fails", "body": "Since Monday."},
            "repository": {"full_name": "acme/app"},
            "sender": {"login": "octocat", "type": "User"},
        });
        let body = issue.to_string();
        let good = request("gh-secret", "issues", "d-1", &body).to_hook_request(now);
        let with = |f: &dyn Fn(&mut HookRequest)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        let mut bot = issue.clone();
        bot["sender"]["type"] = json!("Bot");
        let form = format!(
            "payload={}",
            url::form_urlencoded::byte_serialize(body.as_bytes()).collect::<String>()
        );
        let form_req = {
            let mut r = request("gh-secret", "issues", "d-2", &form).to_hook_request(now);
            r.headers.insert(
                "content-type",
                "application/x-www-form-urlencoded".parse().unwrap(),
            );
            r
        };
        let cases: Vec<(&str, HookRequest, &str)> = vec![
            ("issue", good.clone(), "event"),
            ("form encoded", form_req, "event"),
            (
                "ping",
                request(
                    "gh-secret",
                    "ping",
                    "d-3",
                    r#"{"zen":"Keep it logically awesome."}"#,
                )
                .to_hook_request(now),
                "ignore:ping",
            ),
            (
                "bot",
                request("gh-secret", "issues", "d-4", &bot.to_string()).to_hook_request(now),
                "ignore:bot_echo",
            ),
            (
                "tampered body",
                with(&|r| r.body = body.replace("Login", "Logon").into()),
                "bad_signature",
            ),
            (
                "wrong secret",
                request("other", "issues", "d-1", &body).to_hook_request(now),
                "bad_signature",
            ),
            (
                "no signature",
                with(&|r| {
                    r.headers.remove(SIGNATURE_HEADER);
                }),
                "missing_signature",
            ),
            (
                "no event",
                with(&|r| {
                    r.headers.remove(EVENT_HEADER);
                }),
                "malformed",
            ),
            (
                "no delivery",
                with(&|r| {
                    r.headers.remove(DELIVERY_HEADER);
                }),
                "malformed",
            ),
            (
                "not json",
                request("gh-secret", "issues", "d-5", "nope").to_hook_request(now),
                "malformed",
            ),
            (
                "GET",
                with(&|r| r.method = Method::GET),
                "method_not_allowed",
            ),
        ];
        for (name, req, want) in cases {
            assert_eq!(outcome(&p.receive(&req)), want, "{name}");
        }
        let e = event(p.receive(&good));
        assert_eq!((e.dedup_key.as_str(), e.kind.as_str()), ("d-1", "issues"));
        assert_eq!(
            e.text,
            "Issue acme/app#7 opened: Login fails\n\nSince Monday."
        );
        assert_eq!(
            (
                e.conversation.chat_id.as_str(),
                e.conversation.sender_id.as_str()
            ),
            ("acme/app#7", "octocat")
        );
        assert_eq!(e.payload, issue);
    }

    #[test]
    fn summaries_table() {
        let repo = json!({"full_name": "acme/app"});
        let cases = [
            (
                "issue_comment",
                json!({"action": "created", "issue": {"number": 3, "title": "T"}, "comment": {"body": "me too"}, "repository": repo}),
                "Comment on acme/app#3 T\n\nme too",
            ),
            (
                "pull_request",
                json!({"action": "closed", "pull_request": {"number": 4, "title": "Fix", "body": null}, "repository": repo}),
                "Pull request acme/app#4 closed: Fix",
            ),
            (
                "push",
                json!({"ref": "refs/heads/main", "commits": [{"message": "one\n\nmore"}, {"message": "two"}], "repository": repo}),
                "Push to acme/app refs/heads/main: 2 commit(s)\n- one\n- two",
            ),
            (
                "star",
                json!({"action": "created", "repository": repo}),
                "star created in acme/app",
            ),
        ];
        for (event, payload, want) in cases {
            assert_eq!(summary(event, &payload, "acme/app"), want, "{event}");
        }
    }

    #[test]
    fn config_table() {
        for (settings, key) in [
            (json!({}), "sources.src.secret"),
            (json!({"secret": "s", "token": "t"}), "sources.src.token"),
        ] {
            let src = source("github", 0, settings);
            assert_eq!(
                issue_keys(&problems(Github::from_config(&src), &src)),
                [key]
            );
        }
    }
}
