//! The ceiling: the least an HTTP service can do to keep a webhook the way the ingress keeps it.
//! axum + lapin, one connection with a pool of confirm-mode channels taken round robin (like
//! `shared::broker`), every request body published persistently (mandatory) to a durable quorum
//! queue and answered 202 only after the broker's confirm. No signature check, no parsing, no
//! Redis, no metrics, no logs: whatever the ingress does beyond this costs throughput, and the
//! ratio to this service says how much. Run as its own process (`bench
//! ceiling-server`) so that it and the ingress are measured alike.
use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the ceiling service runs.
#[derive(Debug, Clone, clap::Args)]
pub struct CeilingArgs {
    /// AMQP URL of the broker.
    #[arg(long)]
    pub amqp: String,
    /// The quorum queue to publish to (declared durable if missing).
    #[arg(long)]
    pub queue: String,
    /// Confirm-mode channels in the pool (the ingress uses `broker.channel_pool`, default 8).
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    /// Where to listen; the bound address is printed as the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// A publish not confirmed by then is answered 503.
    #[arg(long, default_value = "5s", value_parser = shared::units::parse_duration)]
    pub publish_timeout: Duration,
}

struct Pool {
    channels: Vec<Channel>,
    next: AtomicUsize,
    queue: String,
    timeout: Duration,
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn serve(args: CeilingArgs) -> anyhow::Result<()> {
    let conn = Connection::connect(
        &args.amqp,
        ConnectionProperties::default().with_connection_name("bench-ceiling".into()),
    )
    .await
    .context("cannot connect to the broker")?;
    let setup = conn.create_channel().await?;
    let mut queue_args = FieldTable::default();
    // The same kind of queue the work queue is: replicated, fsynced before the confirm.
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(&b"quorum"[..])),
    );
    setup
        .queue_declare(
            args.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args,
        )
        .await?;
    let mut channels = Vec::with_capacity(args.channels.max(1));
    for _ in 0..args.channels.max(1) {
        let ch = conn.create_channel().await?;
        // Publisher confirms: 202 only for what the broker has kept.
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let pool = Arc::new(Pool {
        channels,
        next: AtomicUsize::new(0),
        queue: args.queue,
        timeout: args.publish_timeout,
    });
    let app = Router::new()
        .route("/hooks/{source}", post(keep))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    shared::shutdown::cancel_on_signals(stop.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

async fn keep(State(pool): State<Arc<Pool>>, body: Bytes) -> (StatusCode, &'static str) {
    match tokio::time::timeout(pool.timeout, publish(&pool, &body)).await {
        Ok(Ok(())) => (StatusCode::ACCEPTED, r#"{"status":"accepted"}"#),
        _ => (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"not_kept"}"#),
    }
}

async fn publish(pool: &Pool, body: &[u8]) -> anyhow::Result<()> {
    let slot = pool.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len();
    let confirm = pool.channels[slot]
        .basic_publish(
            "".into(),
            pool.queue.as_str().into(),
            // Mandatory, as the ingress publishes: an unroutable message comes back.
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            // Persistent, as the ingress publishes.
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await?
        .await?;
    anyhow::ensure!(!confirm.is_nack(), "nacked");
    anyhow::ensure!(confirm.take_message().is_none(), "returned");
    Ok(())
}
