//! Serving the ingress router on its listener: the accept loop, what bounds a connection, and a
//! graceful stop. `axum::serve` has neither a header timeout nor a connection cap, so a client
//! that opens sockets and sends a header line now and then would hold them forever; here:
//!
//! - at most `max_connections` are open at once: past that the loop stops accepting and new
//!   connections wait in the kernel's queue (a permit is taken before `accept`);
//! - a connection that has not sent a whole request head within `header_timeout` is closed
//!   (hyper's HTTP/1.1 header timer, which also runs while a keep-alive connection idles); the
//!   TLS handshake, when there is one, must finish within the same time;
//! - each request carries its peer address (`ConnectInfo`), for `allow_ips`.
//!
//! HTTP/1.1 only: every platform posts webhooks with it. On `shutdown` the loop stops accepting,
//! idle connections close and requests in flight finish (their own timeouts bound them). This
//! module never looks inside a request.
use crate::tls::Tls;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What bounds a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// How long the loop rests after `accept` failed for want of resources (file descriptors):
/// retrying at once would spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown`, then waits for the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header timer needs a timer; it also closes keep-alive connections left idle.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        // The permit first: at the cap, connections wait in the kernel's queue, unaccepted.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !is_per_connection(&e) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        // Answers are small and final: send them at once.
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            peer,
            http: http.clone(),
            tls: tls.clone(),
            header_timeout: limits.header_timeout,
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            connection.run(stream, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An `accept` error that concerns only the connection being accepted (the peer gave up before
/// we took it): take the next one at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    )
}

/// One accepted connection, served until it closes.
struct Connection {
    app: Router,
    peer: SocketAddr,
    http: hyper::server::conn::http1::Builder,
    tls: Option<Tls>,
    header_timeout: Duration,
}

impl Connection {
    async fn run(self, stream: TcpStream, watcher: hyper_util::server::graceful::Watcher) {
        let peer = self.peer;
        let service =
            self.app
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                });
        let service = TowerToHyperService::new(service);
        let result = match &self.tls {
            None => {
                let conn = self.http.serve_connection(TokioIo::new(stream), service);
                watcher.watch(conn).await
            }
            Some(tls) => {
                // The handshake is part of getting the request head: the same deadline.
                let handshake =
                    tokio::time::timeout(self.header_timeout, tls.acceptor().accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let conn = self.http.serve_connection(TokioIo::new(stream), service);
                watcher.watch(conn).await
            }
        };
        if let Err(e) = result {
            // Timeouts, resets and malformed heads: the client's business, not an incident.
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
