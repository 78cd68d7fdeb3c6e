//! A TCP proxy in front of a real service (the broker, Redis) that a test can cut and restore:
//! cutting closes every open connection and refuses new ones, as a network partition or a
//! stopped server would look to the client, without disturbing other tests that use the same
//! server directly.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy on 127.0.0.1.
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (e.g. `127.0.0.1:5672`).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (generation, _) = watch::channel(0u64);
        let p = Self {
            addr: listener.local_addr()?,
            up: Arc::new(AtomicBool::new(true)),
            generation,
        };
        let proxy = p.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !proxy.up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = proxy.generation.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(p)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
