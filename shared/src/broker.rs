//! The process's one connection to RabbitMQ: connecting with backoff, declaring the topology on
//! every (re)connect, a pool of confirm-mode channels shared by every publisher, and channels
//! for consumers. A publish returns only once the broker confirmed it (or says why not), so a
//! caller can answer "kept" or "not kept" truthfully. On a cluster (`broker.url` lists several
//! nodes) it connects to any live node and moves to another when that one goes away; which node
//! comes next is [`NodeRing`]'s decision. With an `[audit] key`, every publish carries the
//! body's seal ([`crate::seal`]), so whatever a role publishes can be told from what someone
//! else put on the broker. This module never decides what to publish.
use crate::nodes::{endpoint, NodeRing, NodeUrls};
use crate::seal::{Keyring, SEAL_HEADER};
use crate::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a message was not kept by the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue took the message (returned): {0}")]
    Unroutable(String),
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("shutting down")]
    ShuttingDown,
}

/// Per-message options of a publish.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// AMQP `message_id`: our envelope id, for tracing in the management UI.
    pub message_id: Option<String>,
    /// Per-message TTL, for delay queues.
    pub expiration: Option<Duration>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

struct Live {
    conn: Connection,
    channels: Vec<Mutex<Channel>>,
}

struct Inner {
    urls: NodeUrls,
    name: String,
    pool_size: usize,
    publish_timeout: Duration,
    topology: Topology,
    /// Seals every publish when set (once, right after start).
    keyring: std::sync::OnceLock<Keyring>,
    live: Mutex<Option<Arc<Live>>>,
    next: AtomicUsize,
    /// Bumped on every successful connect; `None` while disconnected.
    generation: watch::Sender<Option<u64>>,
}

/// A cheaply clonable handle on the process's broker connection.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Broker {
    /// Starts the connection supervisor. Returns at once: a role must start (and answer 503)
    /// while the broker is unreachable, and connect by itself when it comes back.
    pub fn start(
        urls: impl Into<NodeUrls>,
        name: &str,
        pool_size: usize,
        publish_timeout: Duration,
        topology: Topology,
        shutdown: CancellationToken,
    ) -> Self {
        let (generation, _) = watch::channel(None);
        let broker = Self {
            inner: Arc::new(Inner {
                urls: urls.into(),
                name: name.to_owned(),
                pool_size: pool_size.max(1),
                publish_timeout,
                topology,
                keyring: std::sync::OnceLock::new(),
                live: Mutex::new(None),
                next: AtomicUsize::new(0),
                generation,
            }),
        };
        tokio::spawn(broker.clone().supervise(shutdown));
        broker
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Seals every message published from now on with `keyring`'s key; consumers of this
    /// broker check seals when the keyring requires them. Set once; later calls are ignored.
    pub fn seal_with(&self, keyring: Keyring) {
        let _ = self.inner.keyring.set(keyring);
    }

    /// The keyring this broker seals and verifies with, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.inner.keyring.get()
    }

    /// Whether a connection is up right now (`/readyz`).
    pub fn is_connected(&self) -> bool {
        self.inner.generation.borrow().is_some()
    }

    /// Waits until connected (or shutdown), then returns a new channel for a consumer.
    pub async fn consumer_channel(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Channel, BrokerError> {
        loop {
            let live = self.wait_live(shutdown).await?;
            match live.conn.create_channel().await {
                Ok(ch) => return Ok(ch),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a consumer channel; waiting for reconnect");
                    self.mark_broken(&live);
                }
            }
        }
    }

    async fn wait_live(&self, shutdown: &CancellationToken) -> Result<Arc<Live>, BrokerError> {
        let mut rx = self.inner.generation.subscribe();
        loop {
            if shutdown.is_cancelled() {
                return Err(BrokerError::ShuttingDown);
            }
            if rx.borrow_and_update().is_some() {
                if let Some(live) = self.current() {
                    return Ok(live);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(BrokerError::ShuttingDown),
                r = rx.changed() => if r.is_err() { return Err(BrokerError::ShuttingDown) },
            }
        }
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.inner.live.lock().ok().and_then(|g| g.clone())
    }

    /// Tells the supervisor the connection is unusable so it reconnects now.
    fn mark_broken(&self, live: &Arc<Live>) {
        let mut guard = match self.inner.live.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            *guard = None;
            self.inner.generation.send_replace(None);
        }
    }

    /// Publishes persistently to a queue (default exchange) and waits for the broker's confirm.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        opts: Publish,
    ) -> Result<(), BrokerError> {
        let timeout = self.inner.publish_timeout;
        match tokio::time::timeout(timeout, self.publish_inner(queue, body, opts)).await {
            Ok(r) => {
                if r.is_ok() {
                    metrics::counter!("switchboard_broker_published_total").increment(1);
                } else {
                    metrics::counter!("switchboard_broker_publish_failures_total").increment(1);
                }
                r
            }
            Err(_) => {
                metrics::counter!("switchboard_broker_publish_failures_total").increment(1);
                Err(BrokerError::ConfirmTimeout(timeout))
            }
        }
    }

    async fn publish_inner(
        &self,
        queue: &str,
        body: &[u8],
        opts: Publish,
    ) -> Result<(), BrokerError> {
        let live = self.current().ok_or(BrokerError::NotConnected)?;
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % live.channels.len();
        let channel = self.pooled_channel(&live, slot).await?;
        let mut props = BasicProperties::default()
            // Persistent: written to disk by the quorum queue before the confirm.
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            // When it was published: the broker stamps no time on a message it dead-letters
            // (poison), so this is the only time an auditor would otherwise lack.
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        if let Some(id) = opts.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(exp) = opts.expiration {
            props = props.with_expiration(exp.as_millis().to_string().as_str().into());
        }
        let seal = self
            .keyring()
            .map(|k| (SEAL_HEADER.to_owned(), k.seal(body)));
        if !opts.headers.is_empty() || seal.is_some() {
            let mut headers = FieldTable::default();
            for (k, v) in opts.headers.into_iter().chain(seal) {
                headers.insert(
                    k.as_str().into(),
                    AMQPValue::LongString(v.into_bytes().into()),
                );
            }
            props = props.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                // Mandatory: a message no queue takes comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked);
        }
        if let Some(returned) = confirm.take_message() {
            return Err(BrokerError::Unroutable(returned.reply_text.to_string()));
        }
        Ok(())
    }

    /// The pool's channel in `slot`, replaced by a fresh confirm-mode channel if it was closed
    /// (a channel error closes only that channel, not the connection).
    async fn pooled_channel(&self, live: &Arc<Live>, slot: usize) -> Result<Channel, BrokerError> {
        let existing = match live.channels[slot].lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if existing.status().connected() {
            return Ok(existing);
        }
        let fresh = match confirm_channel(&live.conn).await {
            Ok(ch) => ch,
            Err(e) => {
                self.mark_broken(live);
                return Err(e.into());
            }
        };
        if let Ok(mut g) = live.channels[slot].lock() {
            *g = fresh.clone();
        }
        Ok(fresh)
    }

    async fn supervise(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut generation = 0u64;
        let mut ring = NodeRing::new(self.inner.urls.len(), seed(&self.inner.name));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let node = ring.current();
            match self.connect_once(node).await {
                Ok((live, events)) => {
                    ring.connected();
                    backoff = Duration::from_millis(100);
                    generation += 1;
                    let live = Arc::new(live);
                    if let Ok(mut g) = self.inner.live.lock() {
                        *g = Some(live.clone());
                    }
                    self.inner.generation.send_replace(Some(generation));
                    tracing::info!(generation, node = %self.endpoint(node), "connected to the broker");
                    metrics::gauge!("switchboard_broker_connected").set(1.0);
                    self.watch(&live, events, &shutdown).await;
                    self.mark_broken(&live);
                    metrics::gauge!("switchboard_broker_connected").set(0.0);
                    if shutdown.is_cancelled() {
                        // Give consumers a moment to ack their last messages before closing.
                        let _ = live.conn.close(200, "shutdown".into()).await;
                        break;
                    }
                    // The node went away (or the connection did): try the next node at once.
                    ring.lost();
                }
                Err(e) => {
                    let round_failed = ring.failed();
                    if !round_failed {
                        tracing::warn!(error = %e, node = %self.endpoint(node), "cannot connect to this broker node; trying the next");
                        continue;
                    }
                    tracing::warn!(error = %e, node = %self.endpoint(node), retry_in = ?backoff, "cannot connect to the broker");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Waits for a connection error, a publisher marking the connection broken, or shutdown.
    async fn watch(&self, live: &Arc<Live>, mut events: EventStream, shutdown: &CancellationToken) {
        let mut gen_rx = self.inner.generation.subscribe();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.next() => match ev {
                    // lapin reports channel errors here too (a refused declaration, a
                    // publish to a bad queue): only a connection that is down is lost.
                    Some(lapin::Event::Error(e)) if !live.conn.status().connected() => {
                        tracing::warn!(error = %e, "broker connection lost");
                        break;
                    }
                    Some(lapin::Event::Error(e)) => {
                        tracing::debug!(error = %e, "a channel failed; the connection is fine");
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = gen_rx.changed() => if gen_rx.borrow().is_none() { break },
                _ = check.tick() => if !live.conn.status().connected() {
                    tracing::warn!("broker connection closed");
                    break;
                },
            }
        }
    }

    /// The node's host and port, for log lines (never its credentials).
    fn endpoint(&self, node: usize) -> String {
        self.inner
            .urls
            .get(node)
            .map(|u| endpoint(u.expose()))
            .unwrap_or_default()
    }

    async fn connect_once(&self, node: usize) -> Result<(Live, EventStream), BrokerError> {
        let url = self.inner.urls.get(node).ok_or(BrokerError::NotConnected)?;
        let props =
            ConnectionProperties::default().with_connection_name(self.inner.name.as_str().into());
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(url.expose(), props),
        )
        .await
        .map_err(|_| BrokerError::ConfirmTimeout(Duration::from_secs(10)))??;
        let events: EventStream = Box::pin(conn.events_listener());
        // The streams on a channel of their own, and not fatal: a stream the broker cannot serve
        // (seen after a crash right after its creation) must not stop events and jobs from
        // flowing; dead letters then wait in their queues until it is back.
        let streams = conn.create_channel().await?;
        match self.inner.topology.declare_streams(&streams).await {
            Ok(()) => {
                let _ = streams.close(200, "declared".into()).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot declare the dead-letter streams; events and jobs flow on, dead letters wait")
            }
        }
        let setup = conn.create_channel().await?;
        if let Err(e) = self.inner.topology.declare_queues(&setup).await {
            if e.to_string().contains("x-quorum-initial-group-size") {
                tracing::error!(
                    "the queues exist with another replica count than broker.quorum_group_size \
                     asks for: set broker.quorum_group_size to the count they were declared with \
                     (0: none), and change replicas with `rabbitmq-queues grow|shrink`"
                );
            }
            return Err(e.into());
        }
        let _ = setup.close(200, "declared".into()).await;
        let mut channels = Vec::with_capacity(self.inner.pool_size);
        for _ in 0..self.inner.pool_size {
            channels.push(Mutex::new(confirm_channel(&conn).await?));
        }
        Ok((Live { conn, channels }, events))
    }
}

/// Where in the node list a process starts: spread by its name and pid, so that the roles of
/// one machine do not all land on the same node.
fn seed(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}

type EventStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = lapin::Event> + Send>>;

async fn confirm_channel(conn: &Connection) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    // Publisher confirms: a publish counts as kept only when the broker says so.
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}
