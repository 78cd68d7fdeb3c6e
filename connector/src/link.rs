//! One WebSocket connection to a platform, from the handshake to its end. It reads frames and
//! hands each to the protocol's [`Session`]; calls the session's timer when it is due (Discord's
//! heartbeat, Feishu's ping frames); sends what the session asks (pongs, control answers, heartbeats); keeps each
//! pushed event concurrently through the ingress's path (the platform module's normalisation,
//! door dedup, publish with confirm) and sends its ack, when the protocol has acks, only once
//! the broker confirmed it (without acks, an event the broker did not take goes to the source's
//! hold, `crate::hold`); probes a quiet connection with WebSocket pings (for protocols without a
//! heartbeat of their own) and gives up on one that stays silent. Asked to leave (its
//! replacement is up, or shutdown), it finishes the events in flight, sends their acks, then
//! closes with 1000; so it does when the platform turned the mode off for the app (Slack's
//! `link_disabled`). Asked by the session to reconnect, it closes at once with the session's
//! code. An event over the source's `rate` is not acknowledged (the platform delivers it
//! again later), as the ingress answers 429; a protocol without acks keeps it anyway (nothing
//! would deliver it again). Nothing here decides when to reconnect: `crate::slot` does, with
//! the protocol.
use crate::hold::Hold;
use crate::protocol::{Ack, Ended, Frame, Session, Step};
use futures_util::stream::SplitSink;
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
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Socket, Message>;

/// What every connection of one source shares.
#[derive(Debug)]
pub(crate) struct SourceCtx {
    pub source_id: String,
    pub platform: Box<dyn Platform>,
    pub keeper: Keeper,
    pub heartbeat: Duration,
    /// Where events the broker did not take wait, for protocols without acks.
    pub hold: Option<Hold>,
    /// Every source's `rate`, as the ingress applies it (per process).
    pub rates: Arc<InboundRates>,
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) struct LinkEnd {
    pub reason: String,
    /// Whether the server said anything at all (a connection that worked resets the backoff).
    pub heard: bool,
    /// What the protocol needs to know to decide what comes next.
    pub ended: Ended,
    /// The platform turned the mode off for the app (`reason` says so): retried slowly.
    pub disabled: bool,
}

/// What a connection tells its slot while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// The server will close this connection soon: open the next one first.
    Refresh(String),
    /// The session is up (Discord: READY, RESUMED).
    Up,
}

/// Why carrying out a session's steps ended the connection.
enum Stop {
    /// Writing failed.
    Failed(String),
    /// The session asked to reconnect.
    Asked {
        label: &'static str,
        after: Duration,
        reason: String,
    },
}

/// The connection's writing side and the events it is keeping.
struct Conn {
    sink: Sink,
    keeps: JoinSet<()>,
    ack_tx: mpsc::UnboundedSender<Frame>,
    ctx: Arc<SourceCtx>,
    notes: mpsc::Sender<Note>,
    heard: bool,
    /// The server's close frame, once it sent one.
    close: Option<(u16, String)>,
    /// Why the platform turned the mode off for the app, once it said so.
    disabled: Option<String>,
}

impl Conn {
    fn new(
        sink: Sink,
        ack_tx: mpsc::UnboundedSender<Frame>,
        ctx: Arc<SourceCtx>,
        notes: mpsc::Sender<Note>,
    ) -> Self {
        Self {
            sink,
            keeps: JoinSet::new(),
            ack_tx,
            ctx,
            notes,
            heard: false,
            close: None,
            disabled: None,
        }
    }

    /// Writes one message; `Err` says what could not be written, and why.
    async fn send(&mut self, m: Message, what: &str) -> Result<(), String> {
        self.sink
            .send(m)
            .await
            .map_err(|e| format!("cannot write {what}: {e}"))
    }

    /// The connection ends because carrying out the session's steps stopped.
    fn stopped(self, stop: Stop) -> LinkEnd {
        match stop {
            Stop::Failed(why) => self.dropped(why),
            Stop::Asked {
                label,
                after,
                reason,
            } => {
                let mut end = self.dropped(reason);
                end.ended.asked = Some((label, after));
                end
            }
        }
    }

    fn end(&self, reason: String) -> LinkEnd {
        LinkEnd {
            reason,
            heard: self.heard,
            ended: Ended {
                close: self.close.clone(),
                asked: None,
            },
            disabled: false,
        }
    }

    /// The connection is gone: events in flight still finish keeping (a redelivery of a kept
    /// one is then a door duplicate; without acks, one not kept goes to the hold), but their
    /// acks have nowhere to go.
    fn dropped(mut self, reason: String) -> LinkEnd {
        let end = self.end(reason);
        self.keeps.detach_all();
        end
    }

    /// A message read from the server: the frame for the session, if it is one (a close frame
    /// is noted for the connection's end; pongs are tungstenite's own business).
    fn heard(&mut self, m: Message) -> Option<Frame> {
        self.heard = true;
        match m {
            Message::Text(t) => Some(Frame::Text(t.to_string())),
            Message::Binary(b) => Some(Frame::Binary(b.to_vec())),
            Message::Close(Some(f)) => {
                self.close = Some((u16::from(f.code), f.reason.to_string()));
                None
            }
            _ => None,
        }
    }

    /// The server ended the stream, with or without a close frame first.
    fn closed_by_server(self) -> LinkEnd {
        let why = match &self.close {
            Some((code, reason)) => format!("closed by the server: {code} {reason}")
                .trim()
                .to_owned(),
            None => "closed by the server".into(),
        };
        self.dropped(why)
    }

    /// Leaves once every event in flight is settled (its ack is queued, or it is not to be
    /// acked): sends the queued acks, then closes with 1000.
    async fn leave(mut self, acks: &mut mpsc::UnboundedReceiver<Frame>) -> LinkEnd {
        while let Ok(frame) = acks.try_recv() {
            if self.sink.send(message(frame)).await.is_err() {
                break;
            }
        }
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.sink.send(Message::Close(Some(bye))).await;
        let _ = self.sink.close().await;
        match self.disabled.take() {
            Some(reason) => LinkEnd {
                disabled: true,
                ..self.end(reason)
            },
            None => self.end("left for its replacement, or stopping".into()),
        }
    }

    /// Carries out what the session asked; `Err` is why the connection ends.
    async fn apply(&mut self, steps: Vec<Step>) -> Result<(), Stop> {
        for step in steps {
            match step {
                Step::Send(frame) => {
                    if let Err(e) = self.sink.send(message(frame)).await {
                        return Err(Stop::Failed(format!("cannot write: {e}")));
                    }
                }
                Step::Event {
                    delivery,
                    payload,
                    ack,
                } => {
                    let (ctx, tx, received) =
                        (self.ctx.clone(), self.ack_tx.clone(), Instant::now());
                    self.keeps.spawn(async move {
                        if let Some(frame) =
                            keep_one(&ctx, &delivery, &payload, ack, received).await
                        {
                            let _ = tx.send(frame);
                        }
                    });
                }
                Step::Refresh { reason } => {
                    let _ = self.notes.try_send(Note::Refresh(reason));
                }
                Step::Up => {
                    let _ = self.notes.try_send(Note::Up);
                }
                Step::Disabled { reason } => self.disabled = Some(reason),
                Step::Reconnect {
                    code,
                    reason,
                    label,
                    after,
                } => {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.clone().into(),
                    };
                    let _ = self.sink.send(Message::Close(Some(frame))).await;
                    let _ = self.sink.close().await;
                    return Err(Stop::Asked {
                        label,
                        after,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Runs one connection until it ends. `notes` tells the slot what it should know; `leave`
/// asks this connection to finish what it holds and close; `pings` whether a quiet connection
/// is probed with WebSocket pings.
pub(crate) async fn run(
    ws: Socket,
    mut session: Box<dyn Session>,
    ctx: Arc<SourceCtx>,
    notes: mpsc::Sender<Note>,
    leave: CancellationToken,
    pings: bool,
) -> LinkEnd {
    let (sink, mut stream) = ws.split();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Frame>();
    let heartbeat = ctx.heartbeat;
    let source = ctx.source_id.clone();
    let mut conn = Conn::new(sink, ack_tx, ctx, notes);
    let mut last_heard = Instant::now();
    let mut probe = tokio::time::interval(heartbeat);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.tick().await;
    let mut leaving = false;
    loop {
        if leaving && conn.keeps.is_empty() {
            return conn.leave(&mut ack_rx).await;
        }
        let deadline = session.deadline();
        let steps = tokio::select! {
            received = stream.next() => {
                let frame = match received {
                    None => return conn.closed_by_server(),
                    Some(Err(e)) => return conn.dropped(format!("connection lost: {e}")),
                    Some(Ok(m)) => {
                        last_heard = Instant::now();
                        match conn.heard(m) {
                            Some(frame) => frame,
                            None => continue,
                        }
                    }
                };
                let read = session.read(frame, Instant::now());
                metrics::counter!("switchboard_connector_frames_total", "source" => source.clone(), "type" => read.kind).increment(1);
                read.steps
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let read = session.timer(Instant::now());
                if !read.steps.is_empty() {
                    metrics::counter!("switchboard_connector_heartbeats_total", "source" => source.clone(), "type" => read.kind).increment(1);
                }
                read.steps
            }
            Some(frame) = ack_rx.recv() => {
                if let Err(why) = conn.send(message(frame), "an ack").await { return conn.dropped(why); }
                continue;
            }
            Some(_) = conn.keeps.join_next(), if !conn.keeps.is_empty() => continue,
            _ = probe.tick(), if pings => {
                if last_heard.elapsed() > heartbeat * 3 {
                    return conn.dropped(format!("nothing heard for {:?}", last_heard.elapsed()));
                }
                if let Err(why) = conn.send(Message::Ping(Vec::new().into()), "a ping").await { return conn.dropped(why); }
                continue;
            }
            _ = leave.cancelled(), if !leaving => {
                leaving = true;
                continue;
            }
        };
        match conn.apply(steps).await {
            // The platform turned the mode off: the events in flight finish, then it closes.
            Ok(()) => leaving |= conn.disabled.is_some(),
            Err(stop) => return conn.stopped(stop),
        }
    }
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
    ack: Option<Ack>,
    received: Instant,
) -> Option<Frame> {
    let source = ctx.source_id.as_str();
    let span = tracing::info_span!("pushed", source, delivery, event_id = tracing::field::Empty);
    async {
        let kept = match ctx.platform.pushed(payload) {
            Ok(Intake::Event { event, .. }) => {
                if let Err(wait) = ctx.rates.admit(source) {
                    metrics::counter!("switchboard_connector_rate_limited_total", "source" => source.to_owned()).increment(1);
                    if ack.is_some() {
                        tracing::warn!(?wait, "over the source's rate; not acknowledged, so the platform delivers it again later");
                        return None;
                    }
                    // Nothing would deliver it again (Discord's Gateway): kept all the same.
                    tracing::warn!(?wait, "over the source's rate; kept anyway, as the platform does not deliver it again");
                }
                // Without acks the platform will not send it again: keep a copy to hold.
                let spare = ack.is_none().then(|| event.clone());
                match ctx.keeper.keep(source, ctx.platform.name(), event, None).await {
                    KeepOutcome::New | KeepOutcome::Duplicate => true,
                    KeepOutcome::NotKept => {
                        if let (Some(hold), Some(event)) = (&ctx.hold, spare) {
                            hold.put(event);
                        }
                        false
                    }
                }
            }
            Ok(Intake::Ignore { reason, .. }) => {
                metrics::counter!("switchboard_connector_ignored_total", "source" => source.to_owned(), "reason" => reason).increment(1);
                tracing::debug!(reason, "dropped by rule");
                true
            }
            Ok(Intake::Reply(_)) => true,
            Err(rejection) => {
                // Sent again it would be refused again: acknowledged, counted and logged.
                let reason = rejection.reason();
                metrics::counter!("switchboard_connector_rejected_total", "source" => source.to_owned(), "reason" => reason).increment(1);
                tracing::warn!(reason, detail = %rejection, "pushed event refused; acknowledged (if the platform acks) so that it is not sent again");
                true
            }
        };
        let ack = ack.filter(|_| kept)?;
        let took = received.elapsed();
        metrics::histogram!("switchboard_connector_ack_seconds", "source" => source.to_owned())
            .record(took.as_secs_f64());
        Some(ack(took))
    }
    .instrument(span)
    .await
}
