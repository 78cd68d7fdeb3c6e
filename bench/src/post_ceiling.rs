//! The dispatcher's ceiling: the least a consumer can do to deliver a job the way the dispatcher
//! delivers a webhook job. lapin + reqwest: one consumer with the dispatcher's prefetch on the
//! deliver queue; for each job it reads the job's id (the `webhook-id`: a receiver needs it to
//! dedup and the signature covers it), signs the job's bytes per Standard Webhooks with the
//! target's secret, POSTs them to the receiver and acks after the 2xx (anything else: the job
//! goes back to the queue). No delivered mark, no lock, no breaker, no rate limit, no retry
//! schedule, no metrics, no logs: whatever the dispatcher does beyond this costs throughput, and
//! the ratio to this consumer says how much. Run as its own process (`bench post-ceiling`) so
//! that its CPU is counted apart from the receiver's, like the dispatcher's.
use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use shared::signing::SigningKey;
use std::sync::Arc;

/// How the ceiling consumer runs.
#[derive(Debug, Clone, clap::Args)]
pub struct PostCeilingArgs {
    /// AMQP URL of the broker.
    #[arg(long)]
    pub amqp: String,
    /// The queue holding the jobs (the dispatcher's deliver queue).
    #[arg(long)]
    pub queue: String,
    /// Unacked jobs at a time (the dispatcher's `dispatcher.concurrency`).
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// Where every job is POSTed.
    #[arg(long)]
    pub url: String,
    /// The target's signing secret (`whsec_…`).
    #[arg(long)]
    pub secret: String,
}

/// The one field of a job this consumer reads.
#[derive(serde::Deserialize)]
struct JobId<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

struct Post {
    http: reqwest::Client,
    url: reqwest::Url,
    key: SigningKey,
}

/// Consumes until SIGTERM or Ctrl-C; prints `consuming` once the consumer is registered.
pub async fn serve(args: PostCeilingArgs) -> anyhow::Result<()> {
    let conn = Connection::connect(
        &args.amqp,
        ConnectionProperties::default().with_connection_name("bench-post-ceiling".into()),
    )
    .await
    .context("cannot connect to the broker")?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "post-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let post = Arc::new(Post {
        // As the dispatcher's client: no redirects; keep-alive connections pooled.
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        url: reqwest::Url::parse(&args.url).context("--url")?,
        key: SigningKey::parse(&args.secret).map_err(anyhow::Error::msg)?,
    });
    println!("consuming");
    let stop = tokio_util::sync::CancellationToken::new();
    shared::shutdown::cancel_on_signals(stop.clone());
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tokio::spawn(deliver(post.clone(), delivery));
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// POSTs one job and acks it after the receiver's 2xx; otherwise it goes back to the queue.
async fn deliver(post: Arc<Post>, delivery: Delivery) {
    let taken = match serde_json::from_slice::<JobId>(&delivery.data) {
        Ok(job) => {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = post.key.sign(&job.id, timestamp, &delivery.data);
            post.http
                .post(post.url.clone())
                .header("content-type", "application/json")
                .header("webhook-id", job.id.as_ref())
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(delivery.data.clone())
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
        Err(_) => false,
    };
    let _ = if taken {
        delivery.ack(BasicAckOptions::default()).await
    } else {
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
    };
}
