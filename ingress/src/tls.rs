//! HTTPS on the ingress without a proxy in front (`[ingress.tls]`): rustls with the ring provider,
//! TLS 1.2 and 1.3 only (rustls implements nothing older), its default suites only (forward
//! secret AEAD: AES-GCM and ChaCha20-Poly1305; rustls has no CBC, RC4, 3DES or static-RSA key
//! exchange to switch off), HTTP/1.1 by ALPN. The certificate is served from memory and
//! replaced when the PEM files' content changes (compared every `reload_interval`), so a renewed
//! certificate is picked up without a restart; files that do not load (a renewal half-written,
//! a key that does not match) leave the served one in place and are tried again next time.
//! This module owns the certificate; the accept loop (`crate::serve`) owns connections.
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shared::config::TlsConfig;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// Why the certificate files could not be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: not a PEM certificate chain: {detail}")]
    BadCertificate { path: String, detail: String },
    #[error("{path}: no usable PEM private key in it")]
    BadKey { path: String },
    #[error("the key does not fit the certificate or is of an unsupported type: {0}")]
    Mismatch(String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The PEM bytes of the two files, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Self, TlsError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(Self {
            cert: read(&config.cert_file)?,
            key: read(&config.key_file)?,
        })
    }

    fn certified_key(&self, config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
        let cert_path = config.cert_file.display().to_string();
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate {
                path: cert_path.clone(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: cert_path });
        }
        // The key's own parse error could quote nothing secret, but say no more than needed.
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| TlsError::BadKey {
            path: config.key_file.display().to_string(),
        })?;
        CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| TlsError::Mismatch(e.to_string()))
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate being served; swapped whole on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = match self.0.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(current.clone())
    }
}

impl Current {
    fn replace(&self, key: CertifiedKey) {
        let mut current = match self.0.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(key);
    }
}

/// Whether the files load, for `config check`.
pub fn check(config: &TlsConfig) -> Result<(), TlsError> {
    Files::read(config)?.certified_key(config).map(|_| ())
}

/// The TLS side of the listener: the acceptor and the certificate it serves.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate (start-up fails on files that do not load) and starts watching the
    /// files until `shutdown`.
    pub fn start(config: &TlsConfig, shutdown: CancellationToken) -> Result<Self, TlsError> {
        let files = Files::read(config)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(files.certified_key(config)?))));
        let mut server = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // Webhooks are HTTP/1.1; the server speaks nothing else.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio::spawn(watch(config.clone(), files, current, shutdown));
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// Compares the files with what is served every `reload_interval` and serves them anew when
/// they changed and load.
async fn watch(
    config: TlsConfig,
    mut served: Files,
    current: Arc<Current>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let files = match Files::read(&config) {
            Ok(f) if f != served => f,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "TLS files unreadable; serving the certificate loaded before");
                continue;
            }
        };
        match files.certified_key(&config) {
            Ok(key) => {
                current.replace(key);
                served = files;
                tracing::info!(cert = %config.cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                // Perhaps half-written: the next look may find it whole.
                tracing::warn!(error = %e, "changed TLS files do not load; serving the certificate loaded before");
            }
        }
    }
}
