//! What a generic JSON source (`standard`, `hmac`, `bearer`, `github`) takes from a body beyond
//! its platform's own reading: the chat text (`text_field`: a path, `""` for none, or the
//! platform's default reading) and the body fields its app's `inputs` mapping requires. Built
//! once from the config ([`BodyFields::for_source`]); per request it is one path lookup per
//! field, on the body the platform already parsed. A body without a required field is refused
//! at the door with the path named, so nothing is published that Dify would refuse later; a
//! chat app gets no event without text. Pure.
use super::{NewEvent, Rejection};
use shared::config::{AppConfig, AppKind, ConfigIssue, SourceConfig};
use shared::jsonpath::JsonPath;

/// The platforms whose bodies are any JSON object of the sender's making.
pub const GENERIC: &[&str] = &["standard", "hmac", "bearer", "github"];

/// Where the chat text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TextRule {
    /// The platform's own reading (`text`, `message`, … or GitHub's comment body).
    Platform,
    /// A string (or number) at this path; absent: no text.
    At(JsonPath),
    /// No chat text at all (workflow apps that take only inputs).
    None,
}

/// A source's body fields, compiled.
#[derive(Debug, Clone)]
pub struct BodyFields {
    text: TextRule,
    /// A chat app needs a query: an event without text is refused.
    needs_text: bool,
    /// `(input name, path)` for every body field the app's mapping requires.
    required: Vec<(String, JsonPath)>,
}

impl BodyFields {
    /// The body fields of `source` (with its `app`, when configured). `None` for platforms
    /// whose bodies are the platform's own format; a `text_field` there is an issue.
    pub fn for_source(
        source: &SourceConfig,
        app: Option<&AppConfig>,
    ) -> Result<Option<Self>, Vec<ConfigIssue>> {
        let issue = |problem: String| {
            vec![ConfigIssue {
                key: format!("sources.{}.text_field", source.id),
                problem,
            }]
        };
        if !GENERIC.contains(&source.platform.as_str()) {
            return match source.text_field {
                Some(_) => Err(issue(format!(
                    "only generic JSON sources ({}) choose their text field",
                    GENERIC.join(", ")
                ))),
                None => Ok(None),
            };
        }
        let text = match source.text_field.as_deref() {
            None => TextRule::Platform,
            Some("") => TextRule::None,
            Some(path) => {
                let path = path.strip_prefix("payload.").unwrap_or(path);
                TextRule::At(JsonPath::parse(path).map_err(issue)?)
            }
        };
        let needs_text = app.is_some_and(|a| a.kind == AppKind::Chat);
        if needs_text && text == TextRule::None {
            return Err(issue(format!(
                "app `{}` is a chat app, which needs a query: name the text's field",
                source.app
            )));
        }
        Ok(Some(Self {
            text,
            needs_text,
            required: app.map(AppConfig::required_body_fields).unwrap_or_default(),
        }))
    }

    /// Applies the rules to an event the platform made of a verified body.
    pub fn apply(&self, event: &mut NewEvent) -> Result<(), Rejection> {
        if !event.payload.is_object() {
            return Err(Rejection::malformed("the JSON body is not an object"));
        }
        match &self.text {
            TextRule::Platform => {}
            TextRule::None => event.text.clear(),
            TextRule::At(path) => {
                event.text = match path.present(&event.payload) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        v.to_string()
                    }
                    _ => String::new(),
                };
                if self.needs_text && event.text.trim().is_empty() {
                    return Err(Rejection::malformed(format!(
                        "the body has no text at `{path}`"
                    )));
                }
            }
        }
        if self.needs_text && event.text.trim().is_empty() {
            return Err(Rejection::malformed(
                "the JSON body has no `text` string (or set the source's text_field)",
            ));
        }
        for (input, path) in &self.required {
            if path.present(&event.payload).is_none() {
                return Err(Rejection::malformed(format!(
                    "the body has no `{path}` (input `{input}`)"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared::envelope::{ChatType, Conversation};

    fn app(kind: &str, inputs: serde_json::Value) -> AppConfig {
        serde_json::from_value(json!({
            "id": "a", "base_url": "http://dify", "api_key": "k", "kind": kind, "inputs": inputs
        }))
        .unwrap()
    }

    fn source(platform: &str, text_field: Option<&str>) -> SourceConfig {
        let mut s = json!({"id": "crm", "platform": platform, "app": "a"});
        if let Some(t) = text_field {
            s["text_field"] = json!(t);
        }
        serde_json::from_value(s).unwrap()
    }

    fn event(text: &str, payload: serde_json::Value) -> NewEvent {
        NewEvent {
            dedup_key: "d".into(),
            kind: "message".into(),
            conversation: Conversation {
                chat_id: "c".into(),
                chat_type: ChatType::Single,
                sender_id: "s".into(),
                sender_name: None,
                thread_id: None,
            },
            text: text.into(),
            reply: None,
            payload,
        }
    }

    #[test]
    fn workflow_sources_take_any_object_and_name_a_missing_input() {
        let app = app(
            "workflow",
            json!({"email": "payload.data.customer.email", "note": "payload.data.note?", "t": "text"}),
        );
        let fields = BodyFields::for_source(&source("standard", None), Some(&app))
            .unwrap()
            .unwrap();
        let body = json!({"type": "invoice.paid", "data": {"customer": {"email": "a@b.c"}}});
        let mut e = event("", body);
        fields.apply(&mut e).unwrap();
        assert_eq!(e.text, "");
        let mut e = event("", json!({"type": "invoice.paid", "data": {}}));
        let refused = fields.apply(&mut e).unwrap_err();
        assert_eq!(refused.reason(), "malformed");
        assert!(
            refused.to_string().contains("data.customer.email")
                && refused.to_string().contains("`email`"),
            "{refused}"
        );
        let mut e = event("", json!([1, 2]));
        assert!(fields
            .apply(&mut e)
            .unwrap_err()
            .to_string()
            .contains("not an object"));
    }

    #[test]
    fn the_text_comes_from_its_field_or_nowhere() {
        let chat = app("chat", json!({}));
        let fields =
            BodyFields::for_source(&source("hmac", Some("payload.alert.summary")), Some(&chat))
                .unwrap()
                .unwrap();
        let mut e = event("platform's", json!({"alert": {"summary": "disk full"}}));
        fields.apply(&mut e).unwrap();
        assert_eq!(e.text, "disk full");
        let mut e = event("platform's", json!({"alert": {}}));
        assert!(fields
            .apply(&mut e)
            .unwrap_err()
            .to_string()
            .contains("alert.summary"));
        // Default reading: a chat app still needs some text.
        let fields = BodyFields::for_source(&source("bearer", None), Some(&chat))
            .unwrap()
            .unwrap();
        assert!(fields.apply(&mut event("", json!({}))).is_err());
        // No text for a workflow app.
        let wf = app("workflow", json!({}));
        let fields = BodyFields::for_source(&source("standard", Some("")), Some(&wf))
            .unwrap()
            .unwrap();
        let mut e = event("hello", json!({"text": "hello"}));
        fields.apply(&mut e).unwrap();
        assert_eq!(e.text, "");
    }

    #[test]
    fn config_issues() {
        let chat = app("chat", json!({}));
        let key = |r: Result<Option<BodyFields>, Vec<ConfigIssue>>| r.unwrap_err()[0].key.clone();
        assert_eq!(
            key(BodyFields::for_source(
                &source("standard", Some("")),
                Some(&chat)
            )),
            "sources.crm.text_field"
        );
        assert_eq!(
            key(BodyFields::for_source(
                &source("slack", Some("x")),
                Some(&chat)
            )),
            "sources.crm.text_field"
        );
        assert_eq!(
            key(BodyFields::for_source(
                &source("standard", Some("a..b")),
                Some(&chat)
            )),
            "sources.crm.text_field"
        );
        assert!(BodyFields::for_source(&source("slack", None), Some(&chat))
            .unwrap()
            .is_none());
    }
}
