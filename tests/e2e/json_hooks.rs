//! Any JSON webhook starting a workflow: a Standard Webhooks event without `text` reaches a
//! workflow app with its fields as inputs (the app's `inputs` mapping), and the target's body
//! template shapes what the receiver gets; a body missing a mapped field is refused at the door
//! with the path named, and nothing is published.
use crate::common::{wait_for, Options, TestApp, SECRET};
use shared::signing::SigningKey;
use shared::topology::Stage;
use std::time::Duration;

const EXTRA: &str = r#"
[[apps]]
id = "crm-flow"
base_url = "{dify}"
api_key = "app-test"
kind = "workflow"
response_mode = "blocking"
inputs = { email = "payload.data.customer.email", plan = "payload.data.plan", note = "payload.data.note?", kind = "kind" }

[[sources]]
id = "crm-events"
platform = "standard"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
app = "crm-flow"
text_field = ""
targets = ["crm-shaped"]

[[targets]]
id = "crm-shaped"
kind = "webhook"
url = "{receiver}/shaped"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
template = '{"customer": {{ event.data.customer.email }}, "summary": {{ answer }}, "event": {{ event.type }}, "from": {{ source }}}'
"#;

async fn post(app: &TestApp, id: &str, body: &str) -> (u16, serde_json::Value) {
    let key = SigningKey::parse(SECRET).expect("key");
    let ts = chrono::Utc::now().timestamp();
    let r = app
        .http
        .post(format!("{}/hooks/crm-events", app.base))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", key.sign(id, ts, body.as_bytes()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standard_webhooks_event_without_text_runs_a_workflow_and_the_shaped_body_arrives() {
    let app = TestApp::spawn(Options {
        extra: EXTRA.into(),
        ..Default::default()
    })
    .await;
    let work = app.services.broker.topology().stage_queue(Stage::Work);

    // Refused at the door, with the missing path named; nothing is published.
    let (status, body) = post(
        &app,
        "evt-missing",
        r#"{"type":"invoice.paid","data":{"plan":"pro"}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("data.customer.email"),
        "{body}"
    );
    let (status, body) = post(&app, "evt-array", "[1,2,3]").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("malformed")));
    assert_eq!(app.queue_len(&work).await, 0);
    assert_eq!(app.dify.calls(), 0);

    // A correct event: its fields become the workflow's inputs.
    let event = r#"{"type":"invoice.paid","data":{"customer":{"email":"ann@example.com"},"plan":"pro","amount":4200}}"#;
    let (status, body) = post(&app, "evt-1", event).await;
    assert_eq!(status, 202, "{body}");
    wait_for(
        "the shaped body at the receiver",
        Duration::from_secs(20),
        || {
            let r = &app.receiver;
            async move { r.accepted() >= 1 }
        },
    )
    .await;
    let records = app.dify.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].endpoint, standins::dify::Endpoint::Workflow);
    assert_eq!(
        records[0].inputs,
        serde_json::json!({"email": "ann@example.com", "plan": "pro", "kind": "invoice.paid"}),
        "mapped fields only; the optional note is absent, no empty query"
    );
    let got = &app.receiver.received()[0];
    assert!(got.signature_ok, "a templated body is still signed");
    let answer = format!(
        "echo: {}",
        serde_json::json!({"email": "ann@example.com", "kind": "invoice.paid", "plan": "pro"})
    );
    assert_eq!(
        got.body,
        serde_json::json!({
            "customer": "ann@example.com",
            "summary": answer,
            "event": "invoice.paid",
            "from": "crm-events"
        })
    );
    app.shutdown().await;
}
