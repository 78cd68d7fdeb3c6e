//! One connection slot of a stream source: it keeps one connection up for as long as the role
//! runs. It opens a fresh ticket for every connection (tickets are single-use), retries a failed
//! open or a lost connection after an exponential backoff with full jitter (reset once a
//! connection worked), retries refused credentials only after `refused_retry` with a clear log
//! line and `/readyz` saying so (as when the platform turned the mode off for the app), and
//! when the server asks to move, opens the new connection before it lets the old one go
//! (`crate::link` finishes the old one's events first).
use crate::backoff::Backoff;
use crate::link::{self, LinkEnd, Socket, SourceCtx};
use crate::protocol::{OpenError, Protocol};
use crate::status::{LinkState, Status};
use shared::config::ConnectorConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub protocol: Arc<dyn Protocol>,
    pub ctx: Arc<SourceCtx>,
    pub http: reqwest::Client,
    pub status: Status,
    pub config: ConnectorConfig,
}

/// The connection a slot holds now.
struct Live {
    leave: CancellationToken,
    refresh: mpsc::Receiver<String>,
    handle: JoinHandle<LinkEnd>,
}

impl Slot {
    fn set(&self, state: LinkState) {
        self.status.set(&self.name, &self.ctx.source_id, state);
    }

    fn reconnect(&self, reason: &'static str) {
        metrics::counter!("switchboard_connector_reconnects_total", "source" => self.ctx.source_id.clone(), "reason" => reason).increment(1);
    }

    /// A fresh ticket, then the WebSocket handshake, within `open_timeout`: the connection and
    /// the URL it was opened with.
    async fn connect(&self) -> Result<(Socket, url::Url), OpenError> {
        let timeout = self.config.open_timeout;
        let url = tokio::time::timeout(timeout, self.protocol.open(&self.http))
            .await
            .map_err(|_| OpenError::Failed(format!("open not answered within {timeout:?}")))??;
        let connected =
            tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url.as_str()))
                .await
                .map_err(|_| OpenError::Failed(format!("handshake not done within {timeout:?}")))?;
        connected
            .map(|(ws, _)| (ws, url))
            .map_err(|e| OpenError::Failed(format!("handshake failed: {e}")))
    }

    /// Holds the slot's connection until `stop`, then lets the connections finish their events.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut current: Option<Live> = None;
        let mut retired = JoinSet::new();
        let slot = self.name.as_str();
        while !stop.is_cancelled() {
            let (ws, url) = match self.connect().await {
                Ok(connected) => connected,
                Err(OpenError::Refused(why)) => {
                    let wait = self.config.refused_retry;
                    tracing::error!(slot, reason = %why, retry_in = ?wait, "the platform refused this source's credentials; check client_id/client_secret (or the app's token) in its console");
                    self.set(LinkState::Refused(why));
                    self.reconnect("refused");
                    wait_or_stop(wait, &stop).await;
                    continue;
                }
                Err(OpenError::Failed(why)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(slot, reason = %why, retry_in = ?wait, "cannot open a connection");
                    if current.is_none() {
                        self.set(LinkState::Connecting(Some(why)));
                    }
                    self.reconnect("open_failed");
                    wait_or_stop(wait, &stop).await;
                    continue;
                }
            };
            tracing::info!(slot, "connected");
            self.set(LinkState::Up);
            let (tell, refresh) = mpsc::channel(1);
            let leave = stop.child_token();
            let handle = tokio::spawn(link::run(
                ws,
                self.protocol.session_for(&url),
                self.ctx.clone(),
                tell,
                leave.clone(),
            ));
            if let Some(old) = current.replace(Live {
                leave,
                refresh,
                handle,
            }) {
                // The new connection is up: the old one finishes its events and closes.
                old.leave.cancel();
                retired.spawn(old.handle);
            }
            let Some(live) = current.as_mut() else {
                continue;
            };
            tokio::select! {
                ended = &mut live.handle => {
                    current = None;
                    let end = ended.unwrap_or_else(|e| LinkEnd { reason: format!("panicked: {e}"), heard: false, disabled: false });
                    if stop.is_cancelled() {
                        break;
                    }
                    if end.disabled {
                        let wait = self.config.refused_retry;
                        tracing::error!(slot, reason = %end.reason, retry_in = ?wait, "the platform turned this connection mode off for the app");
                        self.set(LinkState::Refused(end.reason));
                        self.reconnect("disabled");
                        wait_or_stop(wait, &stop).await;
                        continue;
                    }
                    if end.heard {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    tracing::warn!(slot, reason = %end.reason, retry_in = ?wait, "connection ended; reconnecting");
                    self.set(LinkState::Connecting(Some(end.reason)));
                    self.reconnect("lost");
                    wait_or_stop(wait, &stop).await;
                }
                Some(reason) = live.refresh.recv() => {
                    tracing::info!(slot, reason, "the server asks to move; opening the new connection first");
                    self.reconnect("refresh");
                }
                _ = stop.cancelled() => {}
            }
        }
        // `stop` reached every connection (their `leave` is its child): wait for them to close.
        if let Some(live) = current {
            let _ = live.handle.await;
        }
        while retired.join_next().await.is_some() {}
        tracing::info!(slot, "connection closed");
    }
}

async fn wait_or_stop(wait: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = stop.cancelled() => {}
    }
}
