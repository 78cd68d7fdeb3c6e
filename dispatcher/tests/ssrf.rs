//! The SSRF guard: the address policy as a table, literal URLs, and real requests through the
//! guarded client to a local server that a static resolver makes answer as `evil.test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use dispatcher::ssrf::{self, check_url, forbidden, reason, Forbidden, GuardedResolver};
use ipnet::IpNet;
use shared::config::DispatcherConfig;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn every_forbidden_range_is_named() {
    use reason::*;
    let cases: &[(&str, Option<&str>)] = &[
        // IPv4
        ("0.0.0.0", Some(UNSPECIFIED)),
        ("0.1.2.3", Some(THIS_NETWORK)),
        ("10.0.0.1", Some(PRIVATE)),
        ("10.255.255.255", Some(PRIVATE)),
        ("100.64.0.1", Some(CGNAT)),
        ("100.127.255.254", Some(CGNAT)),
        ("100.128.0.1", None),
        ("100.100.100.200", Some(METADATA)),
        ("127.0.0.1", Some(LOOPBACK)),
        ("127.255.0.9", Some(LOOPBACK)),
        ("169.254.1.1", Some(LINK_LOCAL)),
        ("169.254.169.254", Some(METADATA)),
        ("169.254.170.2", Some(METADATA)),
        ("168.63.129.16", Some(METADATA)),
        ("172.15.255.255", None),
        ("172.16.0.1", Some(PRIVATE)),
        ("172.31.255.255", Some(PRIVATE)),
        ("172.32.0.1", None),
        ("192.0.0.8", Some(IETF)),
        ("192.0.2.10", Some(DOCUMENTATION)),
        ("192.88.99.1", Some(RELAY)),
        ("192.168.1.1", Some(PRIVATE)),
        ("198.18.0.1", Some(BENCHMARK)),
        ("198.19.255.255", Some(BENCHMARK)),
        ("198.51.100.7", Some(DOCUMENTATION)),
        ("203.0.113.7", Some(DOCUMENTATION)),
        ("224.0.0.1", Some(MULTICAST)),
        ("239.255.255.250", Some(MULTICAST)),
        ("240.0.0.1", Some(RESERVED)),
        ("255.255.255.255", Some(BROADCAST)),
        ("1.1.1.1", None),
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        // IPv6
        ("::", Some(UNSPECIFIED)),
        ("::1", Some(LOOPBACK)),
        ("fe80::1", Some(LINK_LOCAL)),
        ("febf::1", Some(LINK_LOCAL)),
        ("fec0::1", Some(SITE_LOCAL)),
        ("fc00::1", Some(UNIQUE_LOCAL)),
        ("fd12:3456::1", Some(UNIQUE_LOCAL)),
        ("fd00:ec2::254", Some(METADATA)),
        ("ff02::1", Some(MULTICAST)),
        ("ff05::1:3", Some(MULTICAST)),
        ("2001:db8::1", Some(DOCUMENTATION)),
        ("3fff::1", Some(DOCUMENTATION)),
        ("2001::1", Some(IETF)),
        ("2001:2::1", Some(IETF)),
        ("100::1", Some(DISCARD)),
        ("64:ff9b:1::1", Some(NAT64_LOCAL)),
        ("5f00::1", Some(SRV6)),
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001:80b::200e", None),
        // IPv6 forms of IPv4 addresses are judged as the IPv4 address.
        ("::ffff:127.0.0.1", Some(LOOPBACK)),
        ("::ffff:7f00:1", Some(LOOPBACK)),
        ("::ffff:10.1.2.3", Some(PRIVATE)),
        ("::ffff:169.254.169.254", Some(METADATA)),
        ("::ffff:100.64.1.1", Some(CGNAT)),
        ("::ffff:0.0.0.0", Some(UNSPECIFIED)),
        ("::ffff:1.1.1.1", None),
        ("::127.0.0.1", Some(LOOPBACK)),
        ("::192.168.0.1", Some(PRIVATE)),
        ("::8.8.8.8", None),
        ("64:ff9b::127.0.0.1", Some(LOOPBACK)),
        ("64:ff9b::a9fe:a9fe", Some(METADATA)),
        ("64:ff9b::8.8.8.8", None),
        ("2002:7f00:1::", Some(LOOPBACK)),
        ("2002:c0a8:101::1", Some(PRIVATE)),
        ("2002:808:808::1", None),
        // IPv4-translated (SIIT): `::ffff:0:a.b.c.d` (issue 11 item 13).
        ("::ffff:0:127.0.0.1", Some(LOOPBACK)),
        ("::ffff:0:7f00:1", Some(LOOPBACK)),
        ("::ffff:0:10.0.0.1", Some(PRIVATE)),
        ("::ffff:0:169.254.169.254", Some(METADATA)),
        ("::ffff:0:8.8.8.8", None),
        // Every embedding of the metadata address.
        ("::169.254.169.254", Some(METADATA)),
        ("2002:a9fe:a9fe::", Some(METADATA)),
        ("64:ff9b:1:a9fe:a9:fe00::", Some(NAT64_LOCAL)),
    ];
    for (addr, want) in cases {
        assert_eq!(forbidden(ip(addr), &[]), *want, "{addr}");
    }
}

#[test]
fn the_allow_list_admits_on_premises_receivers_but_not_metadata() {
    let cases: &[(&str, &[&str], bool)] = &[
        ("10.20.1.5", &["10.20.0.0/16"], true),
        ("10.21.1.5", &["10.20.0.0/16"], false),
        ("127.0.0.1", &["127.0.0.0/8"], true),
        ("::ffff:127.0.0.1", &["127.0.0.0/8"], true),
        ("64:ff9b::127.0.0.1", &["127.0.0.0/8"], true),
        ("::1", &["127.0.0.0/8"], false),
        ("::1", &["::1/128"], true),
        ("fd12::1", &["fd12::/16"], true),
        // A broad entry never opens a metadata endpoint; naming the address does.
        ("169.254.169.254", &["169.254.0.0/16"], false),
        ("169.254.169.254", &["0.0.0.0/0"], false),
        ("169.254.169.254", &["169.254.169.254/32"], true),
        ("::ffff:169.254.169.254", &["169.254.0.0/16"], false),
        ("fd00:ec2::254", &["fc00::/7"], false),
        ("169.254.1.1", &["169.254.0.0/16"], true),
    ];
    for (addr, allow, admitted) in cases {
        let got = forbidden(ip(addr), &nets(allow));
        assert_eq!(got.is_none(), *admitted, "{addr} with {allow:?}: {got:?}");
    }
}

#[test]
fn literal_urls_are_checked_before_sending() {
    let loopback = &["127.0.0.0/8", "::1/128"][..];
    let cases: &[(&str, &[&str], Result<(), &str>)] = &[
        ("http://127.0.0.1/", &[], Err(reason::LOOPBACK)),
        (
            "http://127.0.0.1:8080/x?key=secret",
            &[],
            Err(reason::LOOPBACK),
        ),
        ("http://[::ffff:127.0.0.1]/", &[], Err(reason::LOOPBACK)),
        ("http://[::1]/", &[], Err(reason::LOOPBACK)),
        // The URL parser normalises the odd spellings of IPv4 literals.
        ("http://2130706433/", &[], Err(reason::LOOPBACK)),
        ("http://0x7f.0.0.1/", &[], Err(reason::LOOPBACK)),
        ("http://0177.0.0.1/", &[], Err(reason::LOOPBACK)),
        (
            "http://169.254.169.254/latest/meta-data/",
            &[],
            Err(reason::METADATA),
        ),
        ("https://[fd00:ec2::254]/", &[], Err(reason::METADATA)),
        ("http://10.0.0.1/", &[], Err(reason::PRIVATE)),
        ("http://0.0.0.0:9000/", &[], Err(reason::UNSPECIFIED)),
        ("http://127.0.0.1/", loopback, Ok(())),
        ("http://[::ffff:127.0.0.1]/", loopback, Ok(())),
        ("http://[::1]/", loopback, Ok(())),
        ("https://93.184.215.14/hook", &[], Ok(())),
        // Names are the resolver's business.
        ("https://example.com/hook", &[], Ok(())),
        ("http://localhost/", &[], Ok(())),
    ];
    for (url, allow, want) in cases {
        let got = check_url(&url.parse().unwrap(), &nets(allow));
        let got = got.map_err(|e| match e {
            Forbidden::Address { reason, .. } => reason,
            other => panic!("{url}: {other}"),
        });
        assert_eq!(got, *want, "{url}");
    }
    let e = check_url(&"ftp://example.com/".parse().unwrap(), &[]).unwrap_err();
    assert_eq!(e, Forbidden::Scheme("ftp".into()));
    let e = check_url(&"http://127.0.0.1/?key=s3cr3t".parse().unwrap(), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "address 127.0.0.1 is forbidden (loopback)",
        "says which address and why, and nothing of the URL"
    );
}

#[tokio::test]
async fn the_resolver_drops_forbidden_addresses_and_keeps_the_rest() {
    let r = GuardedResolver::with_static(
        &[],
        [
            ("mixed.test", vec![ip("127.0.0.1"), ip("93.184.215.14")]),
            ("Evil.Test.", vec![ip("10.0.0.1"), ip("::ffff:127.0.0.1")]),
        ],
    );
    let got = r.resolve_host("mixed.test").await.unwrap();
    assert_eq!(got, vec![SocketAddr::new(ip("93.184.215.14"), 0)]);
    let e = r.resolve_host("evil.test").await.unwrap_err().to_string();
    assert_eq!(
        e,
        "every address of `evil.test` is forbidden: 10.0.0.1 (private), ::ffff:127.0.0.1 (loopback)"
    );
    assert!(r.resolve_host("unknown.test").await.is_err());
}

/// A local receiver: `/` answers 200, `/moved` redirects to `/landed`, which counts its hits.
async fn receiver() -> (u16, Arc<AtomicUsize>) {
    let landed = Arc::new(AtomicUsize::new(0));
    let hits = landed.clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/moved", get(|| async { Redirect::temporary("/landed") }))
        .route(
            "/landed",
            get(move || {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    "landed"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, landed)
}

fn client(allow: &[&str], evil: &str) -> reqwest::Client {
    let cfg = DispatcherConfig {
        allow_private: nets(allow),
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let resolver =
        GuardedResolver::with_static(&cfg.allow_private, [("evil.test", vec![ip(evil)])]);
    ssrf::client_with_resolver(&cfg, resolver).unwrap()
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
    let (port, _) = receiver().await;
    for evil in ["127.0.0.1", "::ffff:127.0.0.1"] {
        let url = format!("http://evil.test:{port}/?key=s3cr3t");
        let e = client(&[], evil).get(&url).send().await.unwrap_err();
        let said = dispatcher::target::describe_transport_error(&e);
        assert!(e.is_connect(), "{evil}: {said}");
        assert!(
            said.contains(&format!("{evil} (loopback)")),
            "{evil}: {said}"
        );
        assert!(
            !said.contains("s3cr3t"),
            "the query stays out of errors: {said}"
        );

        let resp = client(&["127.0.0.0/8"], evil).get(&url).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("{evil} allowed: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "{evil}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn the_system_resolver_is_guarded_too() {
    let (port, _) = receiver().await;
    let cfg = DispatcherConfig::default();
    let http = ssrf::client(&cfg).unwrap();
    let e = http
        .get(format!("http://localhost:{port}/"))
        .send()
        .await
        .unwrap_err();
    let said = dispatcher::target::describe_transport_error(&e);
    assert!(said.contains("(loopback)"), "{said}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (port, landed) = receiver().await;
    let resp = client(&["127.0.0.0/8"], "127.0.0.1")
        .get(format!("http://evil.test:{port}/moved"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        landed.load(Ordering::SeqCst),
        0,
        "the redirect target was never called"
    );
}
