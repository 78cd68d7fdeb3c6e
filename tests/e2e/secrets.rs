//! No secret in any log line: the whole pipeline runs as one child process at debug level while
//! good requests, forged ones and a Dify refusal go through it; then its entire log is searched
//! for every secret in its config.
use crate::common::*;
use std::time::Duration;

#[tokio::test]
async fn no_secret_appears_in_the_log_even_at_debug_level() {
    let app = TestApp::spawn(Options {
        ingress: false,
        worker: false,
        dispatcher: false,
        ..Default::default()
    })
    .await;
    let log = std::env::temp_dir().join(format!("{}.log", app.prefix));
    let mut all = app.spawn_child_with("all", "debug", Some(&log));
    let ready = format!("{}/readyz", app.base);
    wait_for("the child to be ready", Duration::from_secs(30), || {
        let (http, url) = (app.http.clone(), ready.clone());
        async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert_eq!(
        app.send_signed("s-1", r#"{"text":"hello","sender_id":"u"}"#)
            .await
            .status(),
        202
    );
    let forged = app
        .post(
            "/hooks/crm-in",
            &[("authorization", "Bearer not-the-token")],
            r#"{"text":"x"}"#,
        )
        .await;
    assert_eq!(forged.status(), 401);
    app.dify.fail_next(1, 401, "unauthorized");
    assert_eq!(
        app.send_signed("s-2", r#"{"text":"refused","sender_id":"u"}"#)
            .await
            .status(),
        202
    );
    let r = app.receiver.clone();
    wait_for("the first answer", Duration::from_secs(30), || {
        let r = r.clone();
        async move { r.accepted() == 1 }
    })
    .await;
    wait_for("the refused call", Duration::from_secs(30), || {
        let d = app.dify.clone();
        async move { d.calls() >= 2 }
    })
    .await;
    all.terminate();
    all.wait(Duration::from_secs(30)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).ok();
    assert!(
        text.contains("event kept"),
        "the log is there: {} bytes",
        text.len()
    );
    let secret_b64 = SECRET.trim_start_matches("whsec_");
    let out_b64 = OUT_SECRET.trim_start_matches("whsec_");
    for secret in ["app-test", secret_b64, out_b64, TOKEN, "guest:guest"] {
        assert!(!text.contains(secret), "`{secret}` appears in the log");
    }
    app.shutdown().await;
}
