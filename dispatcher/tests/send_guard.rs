//! Every kind sends through `target::send`, which refuses IP-literal hosts in private ranges
//! (no resolver sees them) unless `allow_private` lets them through.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use dispatcher::target::{send, Context, Verdict};
use testkit::Fixture;

fn ctx(kit: &Fixture, allow: &[&str]) -> Context {
    Context {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        store: kit.store_with_pool(1),
        allow_private: allow.iter().map(|a| a.parse().unwrap()).collect(),
        pace: None,
    }
}

#[tokio::test]
async fn literal_loopback_urls_are_refused_unless_allowed() {
    let kit = Fixture::new("guard");
    let receiver = standins::receiver::Receiver::start(None).await.unwrap();
    let port = receiver.addr().port();
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        // IPv4-translated, NAT64, 6to4 and IPv4-compatible forms of 127.0.0.1.
        format!("http://[::ffff:0:127.0.0.1]:{port}/x"),
        format!("http://[64:ff9b::7f00:1]:{port}/x"),
        format!("http://[2002:7f00:1::]:{port}/x"),
        format!("http://[::127.0.0.1]:{port}/x"),
    ] {
        let c = ctx(&kit, &[]);
        let (outcome, answer) =
            send(&c, c.http.post(&url).body("{}"), |_| Verdict::Delivered).await;
        assert_eq!(outcome.verdict, Verdict::Permanent, "{url}");
        assert!(answer.is_none(), "no request was made to {url}");
        let error = outcome.attempt.error.unwrap();
        assert!(
            error.contains("SSRF") && error.contains("loopback"),
            "{error}"
        );
    }
    assert_eq!(receiver.requests_for(""), 0, "the receiver saw nothing");
    let c = ctx(&kit, &["127.0.0.0/8"]);
    let url = format!("http://127.0.0.1:{port}/x");
    let (outcome, _) = send(
        &c,
        c.http.post(&url).body("{}"),
        dispatcher::target::classify_http,
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Delivered, "allowed explicitly");
}
