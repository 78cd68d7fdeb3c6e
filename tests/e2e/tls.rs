//! Issue 11, TLS on the ingress without a proxy in front (`[ingress.tls]`): a certificate made
//! here (rcgen: a CA and a leaf it signs), clients that insist on TLS 1.2 or on 1.3, hellos that
//! offer only older versions or only weak suites (refused), plain HTTP on the TLS port (no
//! answer), and a certificate renewed on disk while the ingress runs.
use crate::common::*;
use crate::kit::{QUIET, T};
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA and the leaves it signs for `localhost`.
struct Authority {
    cert: Certificate,
    key: KeyPair,
}

impl Authority {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "switchboard test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf for `localhost` named `name` (its CN), as PEM certificate and key.
    fn leaf(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// A directory of the test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, (cert, key): &(String, String)) {
        // The key first: a reader between the two writes sees a mismatch, which must not load.
        std::fs::write(self.0.join("key.pem"), key).unwrap();
        std::fs::write(self.0.join("cert.pem"), cert).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn spawn_tls(dir: &Dir) -> TestApp {
    let p = |n: &str| dir.path(n).display().to_string();
    TestApp::spawn(Options {
        ingress_keys: format!(
            "tls = {{ cert_file = {:?}, key_file = {:?}, reload_interval = \"100ms\" }}",
            p("cert.pem"),
            p("key.pem")
        ),
        worker: false,
        dispatcher: false,
        ..Default::default()
    })
    .await
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// What a TLS client that allows only `versions` saw: the version and suite agreed, the leaf's
/// DER, and the answer to `GET /healthz`.
struct Session {
    version: ProtocolVersion,
    suite: String,
    leaf: CertificateDer<'static>,
    answer: String,
}

async fn connect(
    addr: &str,
    roots: RootCertStore,
    versions: &[&'static SupportedProtocolVersion],
) -> std::io::Result<Session> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let version = conn.protocol_version().unwrap();
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(Session {
        version,
        suite,
        leaf,
        answer,
    })
}

/// A ClientHello by hand: record version 3.1, `version` in the hello, `suites` and no
/// extension, as a client from before TLS 1.2 (or a weak one) would send.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut hello = Vec::new();
    hello.extend_from_slice(&version);
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&u16::try_from(suites.len() * 2).unwrap().to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // null compression only
    let mut handshake = vec![1u8]; // client_hello
    handshake.extend_from_slice(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

/// The first byte the server sends back to `bytes` (`None`: it closed without a word).
async fn first_byte_back(addr: &str, bytes: &[u8]) -> Option<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
        Ok(Ok(1)) => Some(buf[0]),
        Ok(_) => None,
        Err(_) => panic!("the server neither answered nor closed"),
    }
}

#[tokio::test]
async fn the_ingress_speaks_tls_1_2_and_1_3_with_strong_suites_only() {
    let ca = Authority::new();
    let dir = Dir::new("e2e");
    dir.write(&ca.leaf("ingress-1"));
    let app = spawn_tls(&dir).await;
    let at = addr(&app);

    // A client that insists on TLS 1.2, then one on 1.3: both served, with forward-secret AEAD.
    let s12 = connect(&at, ca.roots(), &[&rustls::version::TLS12])
        .await
        .unwrap();
    assert_eq!(s12.version, ProtocolVersion::TLSv1_2);
    assert!(
        s12.suite.starts_with("TLS_ECDHE_")
            && (s12.suite.contains("_GCM_") || s12.suite.contains("CHACHA20_POLY1305")),
        "{}",
        s12.suite
    );
    assert!(s12.answer.starts_with("HTTP/1.1 200"), "{}", s12.answer);
    let s13 = connect(&at, ca.roots(), &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert_eq!(s13.version, ProtocolVersion::TLSv1_3);
    assert!(s13.answer.ends_with("ok"), "{}", s13.answer);

    // A real signed webhook over HTTPS, from a client that refuses anything below TLS 1.2.
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .add_root_certificate(reqwest::Certificate::from_der(ca.cert.der()).unwrap())
        .resolve("localhost", at.parse().unwrap())
        .build()
        .unwrap();
    let key = shared::signing::SigningKey::parse(SECRET).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let body = r#"{"text":"over tls"}"#;
    let port = at.rsplit(':').next().unwrap();
    let answer = http
        .post(format!("https://localhost:{port}/hooks/hooks"))
        .header("webhook-id", "tls-1")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", key.sign("tls-1", ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);

    // Hellos from before TLS 1.2 (1.0, 1.1), and a 1.2 hello offering only weak suites (RSA key
    // exchange with CBC, 3DES, RC4): an alert (21) or silence, never a ServerHello (22).
    let weak = [0x002f, 0x0035, 0x000a, 0x0005];
    for (name, hello) in [
        ("TLS 1.0", client_hello([3, 1], &[0xc02f, 0xc013, 0x002f])),
        ("TLS 1.1", client_hello([3, 2], &[0xc02f, 0xc013, 0x002f])),
        ("weak suites", client_hello([3, 3], &weak)),
    ] {
        let back = first_byte_back(&at, &hello).await;
        assert!(matches!(back, Some(21) | None), "{name}: {back:?}");
    }
    // Plain HTTP on the TLS port gets no HTTP answer.
    let back = first_byte_back(&at, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_ne!(back, Some(b'H'), "plain HTTP answered on the TLS port");
    app.shutdown().await;
}

/// The CN of a DER certificate, read from the bytes: the leaves differ in it.
fn names(leaf: &CertificateDer<'_>, name: &str) -> bool {
    leaf.as_ref()
        .windows(name.len())
        .any(|w| w == name.as_bytes())
}

async fn served_leaf(addr: &str, ca: &Authority) -> CertificateDer<'static> {
    connect(addr, ca.roots(), &[&rustls::version::TLS13])
        .await
        .unwrap()
        .leaf
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let ca = Authority::new();
    let dir = Dir::new("e2e");
    dir.write(&ca.leaf("ingress-first"));
    let app = spawn_tls(&dir).await;
    let at = addr(&app);
    assert!(names(&served_leaf(&at, &ca).await, "ingress-first"));

    // Renewed on disk: served within a few reload intervals, by the same process.
    dir.write(&ca.leaf("ingress-renewed"));
    let deadline = Instant::now() + T;
    while !names(&served_leaf(&at, &ca).await, "ingress-renewed") {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Half-written or mismatched files are not served: the renewed one stays.
    let (cert, _) = ca.leaf("ingress-broken");
    std::fs::write(dir.path("cert.pem"), cert).unwrap();
    std::fs::write(dir.path("key.pem"), "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
    let until = Instant::now() + QUIET;
    while Instant::now() < until {
        assert!(names(&served_leaf(&at, &ca).await, "ingress-renewed"));
    }
    app.shutdown().await;
}

/// `config check` (and start-up) refuse certificate files that do not load, naming the file.
#[test]
fn tls_files_that_do_not_load_are_a_config_problem() {
    let dir = Dir::new("check");
    std::fs::write(dir.path("key.pem"), "not a key").unwrap();
    std::fs::write(dir.path("cert.pem"), "not a certificate").unwrap();
    let config = |cert: &Path| {
        let text = format!(
            r#"
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[redis]
url = "redis://127.0.0.1:6379"
[ingress]
tls = {{ cert_file = {:?}, key_file = {:?} }}
"#,
            cert.display().to_string(),
            dir.path("key.pem").display().to_string()
        );
        shared::Config::from_toml(&text).unwrap()
    };
    for (cert, says) in [
        (dir.path("missing.pem"), "missing.pem"),
        (dir.path("cert.pem"), "no PEM certificate"),
    ] {
        let issues = ingress::validate(&config(&cert));
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "ingress.tls");
        assert!(issues[0].problem.contains(says), "{issues:?}");
    }
    let ca = Authority::new();
    dir.write(&ca.leaf("ok"));
    assert!(ingress::validate(&config(&dir.path("cert.pem"))).is_empty());
}
