//! Tests of Slack Socket Mode's frames and config: envelopes shaped as `slack_sdk.socket_mode`
//! reads them (`SocketModeRequest.from_dict`), and its acknowledgement (`SocketModeResponse`).
use super::*;
use std::time::Duration;

fn text(f: &Frame) -> Value {
    match f {
        Frame::Text(t) => serde_json::from_str(t).unwrap(),
        Frame::Binary(_) => panic!("binary"),
    }
}

fn read(v: Value) -> Read {
    SocketSession.read(Frame::Text(v.to_string()), Instant::now())
}

fn event_callback() -> Value {
    json!({"token": "legacy", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
           "event_id": "Ev1", "event_time": 1_700_000_000,
           "event": {"type": "message", "channel": "D1", "channel_type": "im", "user": "U1", "text": "hi", "ts": "1.1"}})
}

#[test]
fn hello_asks_nothing() {
    let r = read(
        json!({"type": "hello", "num_connections": 2, "debug_info": {"host": "applink-1", "approximate_connection_time": 18060}, "connection_info": {"app_id": "A1"}}),
    );
    assert_eq!(r.kind, "hello");
    assert!(r.steps.is_empty());
}

#[test]
fn an_events_api_envelope_is_the_callback_acked_with_its_envelope_id_only_when_asked() {
    let r = read(
        json!({"envelope_id": "env-1", "type": "events_api", "payload": event_callback(),
                        "accepts_response_payload": false, "retry_attempt": 0, "retry_reason": ""}),
    );
    assert_eq!(r.kind, "events_api");
    let mut steps = r.steps;
    let Some(Step::Event {
        delivery,
        payload,
        ack,
    }) = steps.pop()
    else {
        panic!("not an event")
    };
    assert_eq!(delivery, "env-1");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap(),
        event_callback()
    );
    assert_eq!(
        text(&ack.expect("Slack acks envelopes")(Duration::ZERO)),
        json!({"envelope_id": "env-1"})
    );
    // A retry says so in the logs' delivery, and is kept the same way.
    let retry = read(
        json!({"envelope_id": "env-2", "type": "events_api", "payload": event_callback(),
                            "accepts_response_payload": false, "retry_attempt": 1, "retry_reason": "timeout"}),
    );
    assert!(
        matches!(&retry.steps[..], [Step::Event { delivery, .. }] if delivery == "env-2 (retry 1: timeout)")
    );
}

#[test]
fn a_slash_command_is_an_event_its_fields_the_payload() {
    let fields = json!({"command": "/ask", "text": "hi", "trigger_id": "t.1", "user_id": "U1",
                        "channel_id": "C1", "response_url": "https://hooks.slack.com/commands/T/1/x"});
    let r = read(
        json!({"envelope_id": "env-c", "type": "slash_commands", "payload": fields,
                        "accepts_response_payload": true}),
    );
    assert_eq!(r.kind, "slash_commands");
    let [Step::Event { payload, .. }] = &r.steps[..] else {
        panic!("{:?}", r.steps)
    };
    assert_eq!(serde_json::from_slice::<Value>(payload).unwrap(), fields);
}

#[test]
fn interactive_and_unknown_envelopes_are_acked_at_once_and_never_kept() {
    for (kind, label) in [("interactive", "interactive"), ("new_kind", "other")] {
        let r = read(
            json!({"envelope_id": "env-i", "type": kind, "payload": {"type": "shortcut"}, "accepts_response_payload": false}),
        );
        assert_eq!(r.kind, label);
        assert!(
            matches!(&r.steps[..], [Step::Send(f)] if text(f) == json!({"envelope_id": "env-i"})),
            "{kind}"
        );
    }
    // An events_api envelope without a payload cannot be kept: acknowledged so it stops.
    let r = read(json!({"envelope_id": "env-e", "type": "events_api"}));
    assert!(matches!(&r.steps[..], [Step::Send(_)]));
    // Not Slack's JSON, binary, no envelope id: nothing.
    for f in [
        Frame::Text("nope".into()),
        Frame::Binary(vec![1]),
        Frame::Text(json!({"type": "events_api"}).to_string()),
    ] {
        assert!(SocketSession.read(f, Instant::now()).steps.is_empty());
    }
}

#[test]
fn disconnect_asks_for_a_replacement_unless_socket_mode_is_off() {
    for reason in ["refresh_requested", "warning", "too_many_websockets"] {
        let r = read(
            json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-1"}}),
        );
        assert_eq!(r.kind, "disconnect");
        assert!(
            matches!(&r.steps[..], [Step::Refresh { reason: why }] if why == reason),
            "{reason}"
        );
    }
    let r = read(json!({"type": "disconnect", "reason": "link_disabled"}));
    assert!(
        matches!(&r.steps[..], [Step::Disabled { reason }] if reason.contains("link_disabled"))
    );
}

#[test]
fn open_failures_that_no_retry_cures_are_refusals_in_slacks_words() {
    for e in ["invalid_auth", "not_allowed_token_type", "token_revoked"] {
        let OpenError::Refused(why) = open_failure(e) else {
            panic!("{e}")
        };
        assert!(
            why.starts_with(&format!("apps.connections.open: {e}")),
            "{why}"
        );
    }
    assert!(open_failure("not_allowed_token_type")
        .to_string()
        .contains("xapp-"));
    for e in ["ratelimited", "internal_error", "unknown"] {
        assert!(matches!(open_failure(e), OpenError::Failed(_)), "{e}");
    }
}

fn source(settings: Value) -> SourceConfig {
    let mut v = json!({"id": "sl", "platform": "slack", "mode": "stream", "app": "support"});
    v.as_object_mut()
        .unwrap()
        .extend(settings.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

#[test]
fn the_app_token_is_required_must_be_app_level_and_never_shown() {
    let built =
        SlackSocket::from_config(&source(json!({"app_token": "xapp-1-zzsecretzz"}))).unwrap();
    assert_eq!(built.api_base, DEFAULT_API_BASE);
    assert!(!format!("{built:?}").contains("zzsecretzz"));
    let keys = |settings| {
        SlackSocket::from_config(&source(settings))
            .unwrap_err()
            .into_iter()
            .map(|i| (i.key, i.problem))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(json!({}))[0].0, "sources.sl.app_token");
    let wrong = keys(json!({"app_token": "xoxb-zzsecretzz"}));
    assert_eq!(wrong[0].0, "sources.sl.app_token");
    assert!(wrong[0].1.contains("xapp-") && !wrong[0].1.contains("zzsecretzz"));
}
