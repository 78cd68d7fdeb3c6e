//! The `inputs` a Dify app receives, built from an event by the app's mapping
//! (`[apps.inputs]`: Dify input name -> event field). Fields are the event's text, source,
//! conversation (`chat_id`, `sender_id`, `sender_name`, `chat_type`, `thread_id`), `platform`,
//! `event_id`, `kind`, or any value inside the platform's payload (`payload.a.b.0.c`; `payload`
//! alone is the whole payload). Payload values keep their JSON type (strings stay strings,
//! objects stay objects). A field an event does not have is left out rather than sent empty, so
//! Dify reports a required input as missing instead of answering from nothing; for the generic
//! JSON sources the ingress already refused such a body at the door, unless the field is marked
//! optional with a trailing `?` (`payload.data.note?`). A scheduled event's own `inputs` (static
//! values and built-ins, see `scheduler`) come on top of the mapping. Pure.
use serde_json::{Map, Value};
use shared::config::{AppConfig, ConfigIssue, SCHEDULE_PLATFORM};
use shared::envelope::{ChatType, InboundEvent};
use shared::jsonpath::JsonPath;
use std::str::FromStr;

/// Where one input's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputField {
    Text,
    Source,
    ChatId,
    SenderId,
    SenderName,
    ChatType,
    ThreadId,
    Platform,
    EventId,
    Kind,
    /// A path into the payload: object keys, or array indices for arrays.
    Payload(JsonPath),
}

impl FromStr for InputField {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.strip_suffix('?').unwrap_or(s);
        Ok(match s {
            "text" => Self::Text,
            "source" => Self::Source,
            "chat_id" => Self::ChatId,
            "sender_id" => Self::SenderId,
            "sender_name" => Self::SenderName,
            "chat_type" => Self::ChatType,
            "thread_id" => Self::ThreadId,
            "platform" => Self::Platform,
            "event_id" => Self::EventId,
            "kind" => Self::Kind,
            "payload" => Self::Payload(JsonPath::default()),
            _ => {
                let path = s.strip_prefix("payload.").ok_or_else(|| {
                    format!(
                        "unknown event field {s:?}: use text, source, chat_id, sender_id, \
                         sender_name, chat_type, thread_id, platform, event_id, kind or \
                         payload.<path> (a trailing `?` marks it optional)"
                    )
                })?;
                if path.is_empty() {
                    return Err(format!("{s:?} has an empty path segment"));
                }
                Self::Payload(JsonPath::parse(path)?)
            }
        })
    }
}

impl InputField {
    /// This field's value in `event`, if it has one.
    pub fn value(&self, event: &InboundEvent) -> Option<Value> {
        let conv = &event.conversation;
        let s = |v: &str| Some(Value::String(v.to_owned()));
        match self {
            Self::Text => s(&event.text),
            Self::Source => s(&event.source),
            Self::ChatId => s(&conv.chat_id),
            Self::SenderId => s(&conv.sender_id),
            Self::SenderName => conv.sender_name.as_deref().and_then(s),
            Self::ChatType => s(match conv.chat_type {
                ChatType::Single => "single",
                ChatType::Group => "group",
            }),
            Self::ThreadId => conv.thread_id.as_deref().and_then(s),
            Self::Platform => s(&event.platform),
            Self::EventId => Some(Value::String(event.id.to_string())),
            Self::Kind => s(&event.kind),
            Self::Payload(path) => path.present(&event.payload).cloned(),
        }
    }
}

/// Builds the `inputs` of a call for `app` from `event`. Entries whose field does not parse are
/// skipped here; [`validate_inputs`] reports them when the config loads.
pub fn build_inputs(app: &AppConfig, event: &InboundEvent) -> Map<String, Value> {
    let mut inputs: Map<String, Value> = app
        .inputs
        .iter()
        .filter_map(|(name, field)| {
            let value = field.parse::<InputField>().ok()?.value(event)?;
            Some((name.clone(), value))
        })
        .collect();
    if event.platform == SCHEDULE_PLATFORM {
        if let Some(Value::Object(own)) = event.payload.get("inputs") {
            inputs.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    inputs
}

/// Every mapping entry of `app` that names no event field, as config issues.
pub fn validate_inputs(app: &AppConfig) -> Vec<ConfigIssue> {
    app.inputs
        .iter()
        .filter_map(|(name, field)| {
            field
                .parse::<InputField>()
                .err()
                .map(|problem| ConfigIssue {
                    key: format!("apps.{}.inputs.{name}", app.id),
                    problem,
                })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared::envelope::Conversation;
    use shared::Secret;
    use std::collections::BTreeMap;

    fn app(inputs: &[(&str, &str)]) -> AppConfig {
        AppConfig {
            id: "support".into(),
            base_url: "http://dify".into(),
            api_key: Secret::new("k"),
            kind: shared::config::AppKind::Workflow,
            response_mode: shared::config::ResponseMode::Blocking,
            timeout: std::time::Duration::from_secs(1),
            concurrency: 1,
            inputs: inputs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>(),
            answer_output: None,
        }
    }

    fn event() -> InboundEvent {
        InboundEvent {
            id: uuid::Uuid::nil(),
            source: "crm".into(),
            platform: "bearer".into(),
            dedup_key: "d".into(),
            kind: "message".into(),
            received_at: chrono::Utc::now(),
            conversation: Conversation {
                chat_id: "c1".into(),
                chat_type: ChatType::Group,
                sender_id: "u1".into(),
                sender_name: Some("Ann".into()),
                thread_id: None,
            },
            text: "hello".into(),
            reply: None,
            payload: json!({"ticket": {"id": 42, "tags": ["a", "b"], "none": null}}),
            attempts: vec![],
            replay_of: None,
        }
    }

    #[test]
    fn each_field_maps_to_its_value() {
        let table: &[(&str, Option<Value>)] = &[
            ("text", Some(json!("hello"))),
            ("source", Some(json!("crm"))),
            ("chat_id", Some(json!("c1"))),
            ("sender_id", Some(json!("u1"))),
            ("sender_name", Some(json!("Ann"))),
            ("chat_type", Some(json!("group"))),
            ("thread_id", None),
            ("platform", Some(json!("bearer"))),
            ("event_id", Some(json!(uuid::Uuid::nil().to_string()))),
            ("kind", Some(json!("message"))),
            ("payload.ticket.id", Some(json!(42))),
            ("payload.ticket.tags.1", Some(json!("b"))),
            ("payload.ticket.tags.9", None),
            ("payload.ticket.none", None),
            ("payload.missing.x", None),
            (
                "payload.ticket",
                Some(json!({"id": 42, "tags": ["a", "b"], "none": null})),
            ),
        ];
        for (field, expected) in table {
            let built = build_inputs(&app(&[("v", field)]), &event());
            assert_eq!(built.get("v"), expected.as_ref(), "{field}");
        }
    }

    #[test]
    fn a_scheduled_event_brings_its_own_inputs() {
        let mut e = event();
        e.platform = SCHEDULE_PLATFORM.into();
        e.payload = json!({"inputs": {"city": "Shanghai", "day": "2026-12-02"}});
        let built = build_inputs(&app(&[("s", "source"), ("city", "text")]), &e);
        assert_eq!(
            Value::Object(built),
            json!({"s": "crm", "city": "Shanghai", "day": "2026-12-02"})
        );
    }

    #[test]
    fn unknown_fields_are_config_issues_and_skipped() {
        let app = app(&[("a", "text"), ("b", "body"), ("c", "payload..x")]);
        let issues = validate_inputs(&app);
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["apps.support.inputs.b", "apps.support.inputs.c"]);
        assert_eq!(
            build_inputs(&app, &event()),
            json!({"a": "hello"}).as_object().cloned().unwrap()
        );
    }
}
