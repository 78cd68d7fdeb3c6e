//! One WebSocket connection to a platform, from the handshake to its end. It reads frames and
//! hands each to the protocol's [`Session`]; sends what the session asks (pongs, control
//! answers); keeps each pushed event concurrently through the ingress's path (the platform
//! module's normalisation, door dedup, publish with confirm) and sends its ack only once the
//! broker confirmed it; probes a quiet connection with WebSocket pings and gives up on one that
//! stays silent. Asked to leave (its replacement is up, or shutdown), or told by the platform
//! that the mode is off for the app, it finishes the events in flight, sends their acks, then
//! closes. An event over the source's `rate` is not acknowledged (the platform delivers it again
//! later), as the ingress answers 429. Nothing here decides when to reconnect: `crate::slot`
//! does.
use crate::protocol::{Ack, Frame, Session, Step};
use futures_util::{SinkExt, StreamExt};
use ingress::keep::{KeepOutcome, Keeper};
use ingress::platform::{Intake, Platform};
use ingress::server::inbound_rate::InboundRates;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What every connection of one source shares.
#[derive(Debug)]
pub(crate) struct SourceCtx {
    pub source_id: String,
    pub platform: Box<dyn Platform>,
    pub keeper: Keeper,
    pub heartbeat: Duration,
    /// Every source's `rate`, as the ingress applies it (per process).
    pub rates: Arc<InboundRates>,
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) struct LinkEnd {
    pub reason: String,
    /// Whether the server said anything at all (a connection that worked resets the backoff).
    pub heard: bool,
    /// The platform turned the mode off for the app (`reason` says so): retried slowly.
    pub disabled: bool,
}

/// Runs one connection until it ends. `refresh` is told when the server asks us to move;
/// `leave` asks this connection to finish what it holds and close.
pub(crate) async fn run(
    ws: Socket,
    mut session: Box<dyn Session>,
    ctx: Arc<SourceCtx>,
    refresh: mpsc::Sender<String>,
    leave: CancellationToken,
) -> LinkEnd {
    let (mut sink, mut stream) = ws.split();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Frame>();
    let mut keeps = JoinSet::new();
    let mut heard = false;
    let mut last_heard = Instant::now();
    let mut probe = tokio::time::interval(ctx.heartbeat);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.tick().await;
    let mut keepalive = Keepalive::new(session.keepalive_every());
    let mut leaving = false;
    let mut disabled: Option<String> = None;
    let end = |reason: String, heard: bool| LinkEnd {
        reason,
        heard,
        disabled: false,
    };
    loop {
        if leaving && keeps.is_empty() {
            // Every event in flight is settled: its ack is queued, or it is not to be acked.
            while let Ok(frame) = ack_rx.try_recv() {
                if sink.send(message(frame)).await.is_err() {
                    break;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
            let _ = sink.close().await;
            return match disabled {
                Some(reason) => LinkEnd {
                    reason,
                    heard,
                    disabled: true,
                },
                None => end("left for its replacement".into(), heard),
            };
        }
        tokio::select! {
            received = stream.next() => {
                let frame = match received {
                    None => return dropped(keeps, end("closed by the server".into(), heard)),
                    Some(Err(e)) => return dropped(keeps, end(format!("connection lost: {e}"), heard)),
                    Some(Ok(m)) => {
                        heard = true;
                        last_heard = Instant::now();
                        match m {
                            Message::Text(t) => Frame::Text(t.to_string()),
                            Message::Binary(b) => Frame::Binary(b.to_vec()),
                            // Pongs are written by tungstenite itself; a close ends the stream.
                            _ => continue,
                        }
                    }
                };
                let read = session.read(frame);
                keepalive.follow(session.keepalive_every());
                metrics::counter!("switchboard_connector_frames_total", "source" => ctx.source_id.clone(), "type" => read.kind).increment(1);
                for step in read.steps {
                    match step {
                        Step::Send(frame) => {
                            if let Err(e) = sink.send(message(frame)).await {
                                return dropped(keeps, end(format!("cannot write: {e}"), heard));
                            }
                        }
                        Step::Event { delivery, payload, ack } => {
                            let (ctx, tx, received) = (ctx.clone(), ack_tx.clone(), Instant::now());
                            keeps.spawn(async move {
                                if let Some(frame) = keep_one(&ctx, &delivery, &payload, ack, received).await {
                                    let _ = tx.send(frame);
                                }
                            });
                        }
                        Step::Refresh { reason } => {
                            let _ = refresh.try_send(reason);
                        }
                        Step::Disabled { reason } => {
                            disabled = Some(reason);
                            leaving = true;
                        }
                    }
                }
            }
            Some(frame) = ack_rx.recv() => {
                if let Err(e) = sink.send(message(frame)).await {
                    return dropped(keeps, end(format!("cannot write an ack: {e}"), heard));
                }
            }
            Some(_) = keeps.join_next(), if !keeps.is_empty() => {}
            _ = keepalive.tick() => {
                if let Some(frame) = session.keepalive() {
                    if let Err(e) = sink.send(message(frame)).await {
                        return dropped(keeps, end(format!("cannot send a keep-alive: {e}"), heard));
                    }
                }
            }
            _ = probe.tick() => {
                if last_heard.elapsed() > ctx.heartbeat * 3 {
                    return dropped(keeps, end(format!("nothing heard for {:?}", last_heard.elapsed()), heard));
                }
                if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                    return dropped(keeps, end(format!("cannot ping: {e}"), heard));
                }
            }
            _ = leave.cancelled(), if !leaving => leaving = true,
        }
    }
}

/// The protocol's own keep-alive (`Session::keepalive_every`): due at once on a new
/// connection, then at the interval the session says, which it may change.
struct Keepalive {
    every: Option<Duration>,
    next: Instant,
}

impl Keepalive {
    fn new(every: Option<Duration>) -> Self {
        Self {
            every,
            next: Instant::now(),
        }
    }

    /// A new interval counts from now.
    fn follow(&mut self, every: Option<Duration>) {
        if every != self.every {
            self.every = every;
            self.next = Instant::now() + every.unwrap_or_default();
        }
    }

    /// Waits until the next keep-alive is due (forever without one).
    async fn tick(&mut self) {
        let Some(every) = self.every else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(self.next).await;
        self.next = Instant::now() + every.max(Duration::from_millis(100));
    }
}

/// The connection is gone: events in flight still finish keeping (a redelivery of a kept one
/// is then a door duplicate), but their acks have nowhere to go.
fn dropped(keeps: JoinSet<()>, end: LinkEnd) -> LinkEnd {
    let mut keeps = keeps;
    keeps.detach_all();
    end
}

fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(t) => Message::Text(t.into()),
        Frame::Binary(b) => Message::Binary(b.into()),
    }
}

/// One pushed event through the platform module and the door: its ack if it may be sent.
async fn keep_one(
    ctx: &SourceCtx,
    delivery: &str,
    payload: &[u8],
    ack: Ack,
    received: Instant,
) -> Option<Frame> {
    let source = ctx.source_id.as_str();
    let span = tracing::info_span!("pushed", source, delivery, event_id = tracing::field::Empty);
    async {
        let kept = match ctx.platform.pushed(payload) {
            Ok(Intake::Event { event, .. }) => {
                if let Err(wait) = ctx.rates.admit(source) {
                    metrics::counter!("switchboard_connector_rate_limited_total", "source" => source.to_owned()).increment(1);
                    tracing::warn!(?wait, "over the source's rate; not acknowledged, so the platform delivers it again later");
                    return None;
                }
                match ctx.keeper.keep(source, ctx.platform.name(), event, None).await {
                    KeepOutcome::New | KeepOutcome::Duplicate => true,
                    KeepOutcome::NotKept => false,
                }
            }
            Ok(Intake::Ignore { reason, .. }) => {
                metrics::counter!("switchboard_connector_ignored_total", "source" => source.to_owned(), "reason" => reason).increment(1);
                tracing::debug!(reason, "acknowledged and dropped by rule");
                true
            }
            Ok(Intake::Reply(_)) => true,
            Err(rejection) => {
                // Sent again it would be refused again: acknowledged, counted and logged.
                let reason = rejection.reason();
                metrics::counter!("switchboard_connector_rejected_total", "source" => source.to_owned(), "reason" => reason).increment(1);
                tracing::warn!(reason, detail = %rejection, "pushed event refused; acknowledged so that it is not sent again");
                true
            }
        };
        if !kept {
            return None;
        }
        let took = received.elapsed();
        metrics::histogram!("switchboard_connector_ack_seconds", "source" => source.to_owned())
            .record(took.as_secs_f64());
        Some(ack(took))
    }
    .instrument(span)
    .await
}
