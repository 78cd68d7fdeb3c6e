//! A webhook target's body template (`template`): MiniJinja, compiled once when the config
//! loads, rendered per delivery in a sandbox (no file, network or environment access; a fuel
//! bound stops a runaway loop) with JSON auto-escaping, so `{{ answer }}` prints a JSON string
//! (quotes and escapes included) and a template shaped like JSON stays valid JSON whatever the
//! answer holds. Available: `answer` (the text), `outputs` (a workflow's outputs), `query`,
//! `event` (the event's body: a JSON webhook's fields, a schedule's tick and inputs),
//! `source`, `platform`, `event_id`, `job_id`, `conversation`, `usage`. A missing field is
//! `null`, not an error. Pure.
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use shared::envelope::DispatchJob;

/// Steps one render may take (a template that loops over a huge list is refused, not run).
const FUEL: u64 = 100_000;

/// A compiled body template.
#[derive(Debug)]
pub struct BodyTemplate {
    env: Environment<'static>,
}

impl BodyTemplate {
    /// Compiles `source`, or says what is wrong with it (line and reason).
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Json);
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.add_template_owned("body", source.to_owned())
            .map_err(|e| format!("the template does not compile: {e}"))?;
        Ok(Self { env })
    }

    /// The body of one job.
    pub fn render(&self, job: &DispatchJob) -> Result<String, String> {
        let p = &job.payload;
        let ctx = minijinja::context! {
            answer => p.answer.text.as_str(),
            outputs => Value::from(Serde(&p.answer.outputs)),
            usage => Value::from(Serde(&p.answer.usage)),
            query => p.query.as_str(),
            event => Value::from(Serde(&p.event)),
            source => p.source.as_str(),
            platform => p.platform.as_str(),
            event_id => p.event_id.to_string(),
            job_id => job.id.to_string(),
            conversation => Value::from(Serde(&p.conversation)),
        };
        self.env
            .get_template("body")
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("the body template failed: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared::envelope::{Answer, AnswerPayload, ChatType, Conversation, Destination, Timings};

    fn job(answer: &str, event: serde_json::Value) -> DispatchJob {
        DispatchJob {
            id: uuid::Uuid::nil(),
            destination: Destination::Target { id: "crm".into() },
            payload: AnswerPayload {
                event_id: uuid::Uuid::nil(),
                source: "crm-events".into(),
                platform: "standard".into(),
                conversation: Conversation {
                    chat_id: "c".into(),
                    chat_type: ChatType::Single,
                    sender_id: "s".into(),
                    sender_name: None,
                    thread_id: None,
                },
                query: String::new(),
                answer: Answer {
                    text: answer.into(),
                    outputs: Some(json!({"score": 7, "summary": answer})),
                    ..Default::default()
                },
                timings: Timings::default(),
                event: Some(event),
            },
            attempts: vec![],
            replay_of: None,
            parts_left: None,
        }
    }

    #[test]
    fn values_are_json_escaped_and_the_body_stays_json() {
        let t = BodyTemplate::compile(
            r#"{"email": {{ event.data.customer.email }}, "note": {{ answer }}, "score": {{ outputs.score }}, "missing": {{ event.nope.deeper }}, "from": {{ source }}}"#,
        )
        .unwrap();
        let nasty = "say \"hi\"\n</script>{{ x }}";
        let body = t
            .render(&job(
                nasty,
                json!({"data": {"customer": {"email": "a@b.c"}}}),
            ))
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&body).expect(&body);
        assert_eq!(
            parsed,
            json!({"email": "a@b.c", "note": nasty, "score": 7, "missing": null, "from": "crm-events"})
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let e = BodyTemplate::compile(r#"{"a": {{ answer }"#).unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
        let runaway = BodyTemplate::compile(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        assert!(runaway.render(&job("a", json!({}))).is_err());
    }
}
