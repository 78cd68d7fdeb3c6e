//! The console's API and sign-in against the real RabbitMQ and Redis: what each role may do
//! (a viewer reads but cannot replay, a replayer cannot force, an admin can), that a change
//! made with a session cookie needs the session's CSRF token, that failed sign-ins are
//! rate-limited, that a replay through the API is on record with who asked, and what "where is
//! my event" and the exports show (credentials redacted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{work_letter, TestConsole, PASSWORD};
use reqwest::StatusCode;
use shared::envelope::{Destination, DispatchJob, Reason};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the form (as a browser would) and returns the client and its CSRF token.
async fn sign_in(
    c: &TestConsole,
    user: &str,
    password: &str,
) -> (reqwest::Client, StatusCode, String) {
    let http = client();
    let page = http
        .get(c.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let login_csrf = page
        .split("name=\"login_csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let r = http
        .post(c.url("/login"))
        .form(&[
            ("user", user),
            ("password", password),
            ("login_csrf", &login_csrf),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let csrf = if status == StatusCode::SEE_OTHER {
        let me: serde_json::Value = http
            .get(c.url("/api/whoami"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        me["csrf"].as_str().unwrap().to_owned()
    } else {
        String::new()
    };
    (http, status, csrf)
}

async fn replay(
    c: &TestConsole,
    token: Option<&str>,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let mut r = client().post(c.url("/api/replays")).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn each_role_may_do_what_it_should_and_no_more() {
    let c = TestConsole::start("").await;
    let dl = work_letter("crm", "order 4242: where is it?", Reason::Exhausted);
    c.bury(&dl).await;
    c.wait_indexed(1).await;
    let ids = serde_json::json!({ "ids": [dl.id], "dry_run": true });
    for role in ["viewer", "replayer", "admin"] {
        let r = client()
            .get(c.url("/api/letters"))
            .bearer_auth(c.token(role))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{role} reads");
    }
    let (s, body) = replay(&c, Some(c.token("viewer")), ids.clone()).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a viewer cannot replay, not even a dry run: {body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("replayer role"),
        "{body}"
    );
    let (s, body) = replay(&c, Some(c.token("replayer")), ids).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["send"], 1, "{body}");
    let forced = serde_json::json!({ "ids": [dl.id], "force": true });
    let (s, _) = replay(&c, Some(c.token("replayer")), forced.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "forcing needs admin");
    let (s, body) = replay(&c, Some(c.token("admin")), forced).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let run = c
        .wait_run(body["replay_id"].as_str().unwrap(), "done")
        .await;
    assert_eq!(run["actor"], "token:admin-script", "{run}");
    assert_eq!(run["sent"], 1, "{run}");
    // Nobody, and a token nobody was given.
    let (s, _) = replay(&c, None, serde_json::json!({ "ids": [dl.id] })).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = replay(
        &c,
        Some("sbt_not-a-token"),
        serde_json::json!({ "ids": [dl.id] }),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = client().get(c.url("/letters")).send().await.unwrap();
    assert_eq!(
        r.headers()["location"],
        "/login",
        "pages send strangers to sign in"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_change_made_with_a_session_needs_its_csrf_token() {
    let c = TestConsole::start("").await;
    let dl = work_letter("crm", "csrf", Reason::Permanent);
    c.bury(&dl).await;
    c.wait_indexed(1).await;
    let (http, status, csrf) = sign_in(&c, "rita", PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let body = serde_json::json!({ "ids": [dl.id] });
    let r = http
        .post(c.url("/api/replays"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let r = http
        .post(c.url("/api/replays"))
        .header("x-csrf-token", "forged")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a wrong CSRF token");
    let form = [("id", dl.id.to_string()), ("scope", "selected".into())];
    let r = http
        .post(c.url("/replay"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a form without the token"
    );
    let r = http
        .post(c.url("/api/replays"))
        .header("x-csrf-token", &csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<serde_json::Value>().await.unwrap()["replay_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = c.wait_run(&id, "done").await;
    assert_eq!(
        run["actor"], "rita",
        "the signed-in user is on record: {run}"
    );
    // Signed out: the cookie no longer works.
    let r = http
        .post(c.url("/logout"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = http.get(c.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    c.stop().await;
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited() {
    let c = TestConsole::start("").await;
    for _ in 0..3 {
        let (_, s, _) = sign_in(&c, "vera", "wrong password").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Past the limit even the right password is refused, with how long to wait.
    let http = client();
    let page = http
        .get(c.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = page
        .split("name=\"login_csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let r = http
        .post(c.url("/login"))
        .form(&[
            ("user", "vera"),
            ("password", PASSWORD),
            ("login_csrf", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 15 * 60, "{wait}");
    // Another user is not locked out by vera's failures.
    let (_, s, _) = sign_in(&c, "adam", PASSWORD).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    // An unknown user is counted the same way and told nothing more.
    let (_, s, _) = sign_in(&c, "nobody", PASSWORD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Without the sign-in form's own token, nothing is checked.
    let r = client()
        .post(c.url("/login"))
        .form(&[("user", "adam"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    c.stop().await;
}

#[tokio::test]
async fn where_is_my_event_and_the_exports() {
    let c = TestConsole::start(
        "[[apps]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"k\"\nkind = \"chat\"\n[[sources]]\nid = \"crm\"\nplatform = \"bearer\"\ntoken = \"t\"\napp = \"a\"\nreply = true\ntargets = [\"hook\"]\n[[targets]]\nid = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n",
    )
    .await;
    let dl = work_letter("crm", "order 4242: refund", Reason::Exhausted);
    let event = dl.event_id.unwrap();
    let message_id = dl.message["dedup_key"].as_str().unwrap().to_owned();
    c.bury(&dl).await;
    c.wait_indexed(1).await;
    // What the ingress, the worker and the dispatcher leave in Redis for this event.
    let key = |parts: &[&str]| c.services.store.key(parts);
    let mut r = c.services.store.conn().await.unwrap();
    let job = DispatchJob::job_id_of_platform_event(
        "crm",
        &message_id,
        &Destination::Target { id: "hook".into() },
    );
    let _: () = deadpool_redis::redis::pipe()
        .set(key(&["seen", "crm", &message_id]), event.to_string())
        .set(
            key(&["event", &event.to_string()]),
            serde_json::json!({"source": "crm", "dedup_key": message_id}).to_string(),
        )
        .hset(key(&["idem", "crm", &message_id]), "state", "done")
        .hset(key(&["idem", "crm", &message_id]), "answer", "{}")
        .set(key(&["delivered", &job.to_string()]), "1")
        .query_async(&mut r)
        .await
        .unwrap();
    let http = client();
    for asked in [event.to_string(), message_id.clone(), dl.id.to_string()] {
        let t: serde_json::Value = http
            .get(c.url(&format!("/api/events?q={asked}")))
            .bearer_auth(c.token("viewer"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(t["event_id"], event.to_string(), "{asked}: {t}");
        assert_eq!(t["kept"], true, "{asked}: {t}");
        assert_eq!(t["answer"], "done (answer recorded)", "{asked}: {t}");
        assert_eq!(t["delivered"], serde_json::json!(["hook"]), "{asked}: {t}");
        assert_eq!(
            t["not_delivered"],
            serde_json::json!(["reply"]),
            "{asked}: {t}"
        );
        assert_eq!(t["letters"].as_array().unwrap().len(), 1, "{asked}: {t}");
    }
    let csv = http
        .get(c.url("/api/export.csv?reason=exhausted"))
        .bearer_auth(c.token("viewer"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("id,dead_at,stage") && csv.contains(&dl.id.to_string()),
        "{csv}"
    );
    let jsonl = http
        .get(c.url("/api/export.jsonl?q=refund"))
        .bearer_auth(c.token("viewer"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(line["id"], dl.id.to_string());
    assert_eq!(line["message"]["payload"]["token"], "[redacted]", "{line}");
    assert_eq!(line["message"]["text"], "order 4242: refund");
    assert_eq!(line["store"]["seal"]["state"], "verified", "{line}");
    let doc: serde_json::Value = http
        .get(c.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/replays"]["post"].is_object());
    c.stop().await;
}
