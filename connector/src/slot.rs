//! One connection slot of a stream source: it keeps one connection up for as long as the role
//! runs. It asks its protocol for every connection's URL (a fresh single-use ticket; Discord's
//! session to resume), retries a failed open or a lost connection after an exponential backoff
//! with full jitter (reset once a connection worked: for protocols that say when they are up,
//! once it was up), retries refused credentials only after `refused_retry` with a clear log line
//! and `/readyz` saying so (as when the platform turned the mode off for the app: Slack's
//! `link_disabled`), and asks the protocol what a connection's end means (Discord: resume
//! at once after op 7, a zombie; wait 1–5 s after op 9; refused after 4004 or 4014). When the
//! server asks to move (DingTalk's `disconnect`), it opens the new connection before it lets the
//! old one go (`crate::link` finishes the old one's events first); a protocol whose session is
//! one connection (Discord) never asks that, and resumes instead.
use crate::backoff::Backoff;
use crate::link::{self, LinkEnd, Note, Socket, SourceCtx};
use crate::protocol::{Ended, Next, OpenError, Protocol};
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
    notes: mpsc::Receiver<Note>,
    handle: JoinHandle<LinkEnd>,
    /// Whether it got as far as working (heard from, or up for protocols that say so).
    worked: bool,
    /// Whether the connection may still send notes.
    listening: bool,
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

    /// The platform refused this source: said loudly, retried slowly.
    async fn refused(&self, why: String, stop: &CancellationToken) {
        let wait = self.config.refused_retry;
        tracing::error!(slot = %self.name, platform = self.protocol.name(), reason = %why, retry_in = ?wait,
            "the platform refused this connection; fix the source's credentials or settings as the reason says (client_id/client_secret, app_token, app_id/app_secret, bot_token, intents); retried only slowly");
        self.set(LinkState::Refused(why));
        self.reconnect("refused");
        wait_or_stop(wait, stop).await;
    }

    /// Holds the slot's connection until `stop`, then lets the connections finish their events.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut current: Option<Live> = None;
        let mut retired = JoinSet::new();
        let slot = self.name.as_str();
        while !stop.is_cancelled() {
            let Some((ws, url)) = self.open(&mut backoff, current.is_some(), &stop).await else {
                continue;
            };
            tracing::info!(slot, "connected");
            if let Some(old) = current.replace(self.start(ws, &url, &stop)) {
                // The new connection is up: the old one finishes its events and closes.
                old.leave.cancel();
                retired.spawn(old.handle);
            }
            let Some(live) = current.as_mut() else {
                continue;
            };
            // Waits for what ends this connection, or for the server asking to move.
            loop {
                tokio::select! {
                    ended = &mut live.handle => {
                        let worked = live.worked;
                        current = None;
                        let end = ended.unwrap_or_else(|e| LinkEnd {
                            reason: format!("panicked: {e}"),
                            heard: false,
                            ended: Ended::default(),
                            disabled: false,
                        });
                        if !stop.is_cancelled() {
                            self.after(end, worked, &mut backoff, &stop).await;
                        }
                        break;
                    }
                    note = live.notes.recv(), if live.listening => match note {
                        Some(Note::Up) => {
                            live.worked = true;
                            backoff.reset();
                            tracing::info!(slot, "session up");
                            self.set(LinkState::Up);
                        }
                        Some(Note::Refresh(reason)) => {
                            tracing::info!(slot, reason, "the server asks to move; opening the new connection first");
                            self.reconnect("refresh");
                            break;
                        }
                        // The connection is ending: its handle says how.
                        None => live.listening = false,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        }
        // `stop` reached every connection (their `leave` is its child): wait for them to close.
        if let Some(live) = current {
            let _ = live.handle.await;
        }
        while retired.join_next().await.is_some() {}
        tracing::info!(slot, "connection closed");
    }

    /// Opens a connection, or says why not and waits as the failure asks (`None`). While
    /// another connection of the slot is `live`, the slot's state stays what that one says.
    async fn open(
        &self,
        backoff: &mut Backoff,
        live: bool,
        stop: &CancellationToken,
    ) -> Option<(Socket, url::Url)> {
        let slot = self.name.as_str();
        let (why, wait) = match self.connect().await {
            Ok(connected) => return Some(connected),
            Err(OpenError::Refused(why)) => {
                self.refused(why, stop).await;
                return None;
            }
            Err(OpenError::Later(why, wait)) => {
                tracing::warn!(slot, reason = %why, retry_in = ?wait, "the platform asks to wait before connecting");
                (why, wait)
            }
            Err(OpenError::Failed(why)) => {
                let wait = backoff.next_wait();
                tracing::warn!(slot, reason = %why, retry_in = ?wait, "cannot open a connection");
                (why, wait)
            }
        };
        if !live {
            self.set(LinkState::Connecting(Some(why)));
        }
        self.reconnect("open_failed");
        wait_or_stop(wait, stop).await;
        None
    }

    /// Starts the connection's link; the slot's state says up now only for protocols that are
    /// up at the handshake (otherwise it stays what it was, a refusal keeps showing, until the
    /// session says it is up).
    fn start(&self, ws: Socket, url: &url::Url, stop: &CancellationToken) -> Live {
        if self.protocol.up_at_handshake() {
            self.set(LinkState::Up);
        }
        let (tell, notes) = mpsc::channel(4);
        let leave = stop.child_token();
        let handle = tokio::spawn(link::run(
            ws,
            self.protocol.session_for(url),
            self.ctx.clone(),
            tell,
            leave.clone(),
            self.protocol.pings(),
        ));
        Live {
            leave,
            notes,
            handle,
            worked: false,
            listening: true,
        }
    }

    /// A connection ended (not for shutdown): says why, and waits as its end asks before the
    /// next one — slowly when the platform turned the mode off or refused, at once or after
    /// what the session asked, or after the backoff (reset first if the connection worked).
    async fn after(
        &self,
        end: LinkEnd,
        worked: bool,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) {
        let slot = self.name.as_str();
        if end.disabled {
            let wait = self.config.refused_retry;
            tracing::error!(slot, reason = %end.reason, retry_in = ?wait, "the platform turned this connection mode off for the app");
            self.set(LinkState::Refused(end.reason));
            self.reconnect("disabled");
            return wait_or_stop(wait, stop).await;
        }
        let worked = worked || (self.protocol.up_at_handshake() && end.heard);
        if worked {
            backoff.reset();
        }
        let (label, wait) = match self.protocol.ended(&end.ended) {
            Next::Refused(why) => {
                tracing::warn!(slot, reason = %end.reason, "connection ended");
                return self.refused(why, stop).await;
            }
            Next::Backoff => {
                let wait = backoff.next_wait();
                tracing::warn!(slot, reason = %end.reason, retry_in = ?wait, "connection ended; reconnecting");
                ("lost", wait)
            }
            Next::After(label, asked) => {
                // A connection that never worked does not get to ask for a quick one again:
                // the backoff applies too.
                let wait = if worked {
                    asked
                } else {
                    asked.max(backoff.next_wait())
                };
                tracing::info!(slot, reason = %end.reason, retry_in = ?wait, "reconnecting as the session asked");
                (label, wait)
            }
        };
        self.set(LinkState::Connecting(Some(end.reason)));
        self.reconnect(label);
        wait_or_stop(wait, stop).await;
    }
}

async fn wait_or_stop(wait: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = stop.cancelled() => {}
    }
}
