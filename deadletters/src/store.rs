//! The broker side of the dead-letter commands: one connection of their own (so that an
//! unreachable broker is one clear error, not a silent reconnect loop), reading a stream from an
//! offset or a time without consuming it, and appending or publishing with publisher confirms.
//!
//! A stream never says "that was the last message" over AMQP 0.9.1, and the message count a
//! passive declare returns for a stream is a metric refreshed every few seconds, not the end.
//! So a read first attaches its consumer, then appends an end marker (an empty message with
//! [`MARKER_HEADER`] and a fresh id) and reads until that marker comes back: everything
//! appended before the read started is before the marker, and nothing waits on an idle timeout.
//! Every reader skips every marker. With a keyring, everything this module appends or publishes
//! carries its seal ([`shared::seal`]). This module decides nothing about what entries mean.
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, PublisherConfirm,
};
use shared::config::BrokerConfig;
use shared::seal::{Keyring, SEAL_HEADER};
use shared::topology::Topology;
use std::ops::ControlFlow;
use std::time::Duration;
use uuid::Uuid;

mod headers;
pub use headers::{long, read_headers};

use super::filter::Start;
use super::record::{EntryMeta, MARKER_HEADER};
use super::DlqError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A read whose broker sends nothing for this long has stalled (a safety net: a read ends at
/// its marker, never by waiting this out).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages the broker may send ahead of our acks; streams refuse a consumer without one.
const PREFETCH: u16 = 2000;
/// Acknowledge (multiple) every this many deliveries, to keep credit flowing.
const ACK_EVERY: u64 = 500;

/// One entry as read from a stream.
#[derive(Debug)]
pub struct StreamEntry {
    pub offset: u64,
    pub body: Vec<u8>,
    pub meta: EntryMeta,
}

/// The dead-letter commands' connection to the broker.
pub struct Store {
    conn: Connection,
    publisher: Channel,
    topology: Topology,
    keyring: Option<Keyring>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.topology.prefix())
            .finish()
    }
}

impl Store {
    /// Connects once, with a deadline: the commands are run by a person who wants an answer.
    /// What it appends and publishes is sealed with `keyring` when given.
    pub async fn connect(
        config: &BrokerConfig,
        keyring: Option<Keyring>,
    ) -> Result<Self, DlqError> {
        // On a cluster, the first node that answers (the URLs in the order configured).
        let mut last = None;
        let mut connected = None;
        for url in config.url.iter() {
            match Self::connect_node(url.expose()).await {
                Ok(c) => {
                    connected = Some(c);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let conn = match (connected, last) {
            (Some(c), _) => c,
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(DlqError::Unreachable {
                    endpoint: "the configured [broker] url".into(),
                    reason: "no URL configured".into(),
                })
            }
        };
        let publisher = conn.create_channel().await.map_err(broker)?;
        // Publisher confirms: a replayed message or a replay record counts only once kept.
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        Ok(Self {
            conn,
            publisher,
            topology: Topology::of_broker(config),
            keyring,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn connect_node(url: &str) -> Result<Connection, DlqError> {
        let endpoint = endpoint(url);
        let props = ConnectionProperties::default().with_connection_name("switchboard-dlq".into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
            Err(_) => Err(DlqError::Unreachable {
                endpoint,
                reason: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            }),
            Ok(Err(e)) => Err(DlqError::Unreachable {
                endpoint,
                reason: one_line(&e.to_string()),
            }),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// Whether the connection is still up (a long-lived user reconnects when it is not).
    pub fn is_open(&self) -> bool {
        self.conn.status().connected()
    }

    /// The keyring this store seals with (and readers verify with).
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Whether a queue or stream exists (a passive declare, on a channel of its own because a
    /// "not found" closes the channel it is asked on).
    pub async fn exists(&self, name: &str) -> Result<bool, DlqError> {
        let ch = self.conn.create_channel().await.map_err(broker)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = ch.close(200, "checked".into()).await;
                Ok(true)
            }
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(broker(e)),
        }
    }

    /// Reads `stream` from `start` up to its end as of now, handing each entry to `visit` (which
    /// may stop early). Nothing is consumed away: a stream keeps every entry for every reader.
    pub async fn scan(
        &self,
        stream: &str,
        start: Start,
        mut visit: impl FnMut(StreamEntry) -> ControlFlow<()>,
    ) -> Result<(), DlqError> {
        let (ch, mut consumer, tag) = self.follow(stream, start).await?;
        // The consumer is attached (consume-ok came back), so the marker lands after its
        // starting point and is bound to come back to it.
        let marker = Uuid::now_v7().to_string();
        let mut result = self.append_marker(stream, &marker).await;
        let mut seen = 0u64;
        while result.is_ok() {
            let entry = match next_entry(&mut consumer, stream, &mut seen).await {
                Ok(e) => e,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            match &entry.meta.marker {
                Some(m) if *m == marker => break,
                Some(_) => continue,
                None => {}
            }
            if visit(entry).is_break() {
                break;
            }
        }
        detach(ch, &tag).await;
        result
    }

    /// Reads `stream` from offset `from` until the entry at offset `until` (inclusive), which
    /// the caller knows exists (it saw it); appends no end marker. Entries retention removed
    /// are skipped (the read starts at the first retained one).
    pub async fn read_range(
        &self,
        stream: &str,
        from: u64,
        until: u64,
        mut visit: impl FnMut(StreamEntry) -> ControlFlow<()>,
    ) -> Result<(), DlqError> {
        let (ch, mut consumer, tag) = self.follow(stream, Start::Offset(from)).await?;
        let mut seen = 0u64;
        let result = loop {
            let entry = match next_entry(&mut consumer, stream, &mut seen).await {
                Ok(e) => e,
                Err(e) => break Err(e),
            };
            let last = entry.offset >= until;
            if entry.meta.marker.is_none() && visit(entry).is_break() || last {
                break Ok(());
            }
        };
        detach(ch, &tag).await;
        result
    }

    /// Attaches a consumer to `stream` at `start` on a channel of its own, for a reader that
    /// follows the stream as it grows (the caller acks every [`ACK_EVERY`] and cancels).
    pub async fn follow(
        &self,
        stream: &str,
        start: Start,
    ) -> Result<(Channel, Consumer, String), DlqError> {
        if !self.exists(stream).await? {
            return Err(DlqError::NoStream(stream.to_owned()));
        }
        let ch = self.conn.create_channel().await.map_err(broker)?;
        let tag = format!("switchboard-dlq-{}", Uuid::now_v7().simple());
        let consumer = attach(&ch, stream, start, &tag).await?;
        Ok((ch, consumer, tag))
    }

    /// Appends an end marker with this id: a reader following the stream knows it has read
    /// everything appended before once its marker comes back.
    pub async fn append_marker(&self, stream: &str, marker: &str) -> Result<(), DlqError> {
        let mut headers = FieldTable::default();
        headers.insert(
            MARKER_HEADER.into(),
            AMQPValue::LongString(marker.as_bytes().to_vec().into()),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self.start_publish(stream, &[], props).await?;
        settle(confirm, stream).await
    }

    /// Appends a message to a stream (or any queue), sealed, and waits for the broker's confirm.
    pub async fn append(&self, queue: &str, body: &[u8]) -> Result<(), DlqError> {
        let props = self.sealed(
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        );
        let confirm = self.start_publish(queue, body, props).await?;
        settle(confirm, queue).await
    }

    /// The properties with the body's seal added, when this store seals.
    fn sealed(&self, body: &[u8], props: BasicProperties) -> BasicProperties {
        let Some(k) = &self.keyring else {
            return props;
        };
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(SEAL_HEADER.into(), long(&k.seal(body)));
        props.with_headers(headers)
    }

    /// Publishes a replayed message to a stage queue; the returned confirm settles later, so
    /// that many can be in flight at once.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<PublisherConfirm, DlqError> {
        let props = BasicProperties::default()
            // Persistent: the stage's quorum queue writes it to disk before confirming.
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into());
        let props = self.sealed(body, props);
        self.start_publish(queue, body, props).await
    }

    async fn start_publish(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<PublisherConfirm, DlqError> {
        self.publisher
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
            .await
            .map_err(broker)
    }

    pub async fn close(self) {
        let _ = self.publisher.close(200, "done".into()).await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The next entry of a followed stream, acking (multiple) every [`ACK_EVERY`] to keep
/// credit flowing; an error when the broker sends nothing for [`STALL_TIMEOUT`].
pub async fn next_entry(
    consumer: &mut Consumer,
    stream: &str,
    seen: &mut u64,
) -> Result<StreamEntry, DlqError> {
    let next = match tokio::time::timeout(STALL_TIMEOUT, consumer.next()).await {
        Err(_) => return Err(DlqError::Stalled(stream.to_owned())),
        Ok(None) => {
            return Err(DlqError::Broker(format!(
                "the read of `{stream}` was cancelled by the broker"
            )))
        }
        Ok(Some(Err(e))) => return Err(broker(e)),
        Ok(Some(Ok(d))) => d,
    };
    *seen += 1;
    if seen.is_multiple_of(ACK_EVERY) {
        next.acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .map_err(broker)?;
    }
    Ok(entry_of(next))
}

/// Cancels a reader's consumer and closes its channel.
pub async fn detach(ch: Channel, tag: &str) {
    let _ = ch
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    let _ = ch.close(200, "read".into()).await;
}

/// A delivery from a stream as an entry: its offset, body and the facts about it.
pub fn entry_of(d: lapin::message::Delivery) -> StreamEntry {
    let headers = d.properties.headers().clone().unwrap_or_default();
    let (offset, meta) = read_headers(&headers, *d.properties.timestamp());
    StreamEntry {
        offset: offset.unwrap_or(0),
        body: d.data,
        meta,
    }
}

/// Attaches a consumer to `stream` at `start` on a channel of its own.
async fn attach(ch: &Channel, stream: &str, start: Start, tag: &str) -> Result<Consumer, DlqError> {
    // Streams require a prefetch; it bounds how far the broker reads ahead of our acks.
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(broker)?;
    let mut args = FieldTable::default();
    // Where to attach: the first retained entry, or the chunk holding a point in time.
    args.insert(
        "x-stream-offset".into(),
        match start {
            Start::First => AMQPValue::LongString("first".into()),
            Start::Timestamp(secs) => AMQPValue::Timestamp(secs),
            Start::Offset(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
        },
    );
    ch.basic_consume(
        stream.into(),
        tag.into(),
        // Manual acks: streams refuse automatic ones (acks only return credit here).
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .map_err(broker)
}

/// Waits for a publish's confirm and says whether the broker kept the message.
pub async fn settle(confirm: PublisherConfirm, queue: &str) -> Result<(), DlqError> {
    let confirmation = confirm.await.map_err(broker)?;
    if confirmation.is_nack() {
        return Err(DlqError::Broker(format!(
            "the broker refused the message for `{queue}` (nack)"
        )));
    }
    if confirmation.take_message().is_some() {
        return Err(DlqError::Broker(format!(
            "no queue `{queue}` took the message"
        )));
    }
    Ok(())
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

fn broker(e: lapin::Error) -> DlqError {
    DlqError::Broker(one_line(&e.to_string()))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `host:port` of an AMQP URL, for messages: never the credentials.
pub fn endpoint(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let default = if u.scheme() == "amqps" { 5671 } else { 5672 };
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(default)
            )
        }
        Err(_) => "the configured [broker] url".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_never_carry_credentials() {
        let cases = [
            ("amqp://guest:secret@10.0.0.5:5673/%2f", "10.0.0.5:5673"),
            ("amqps://u:p@mq.example/vh", "mq.example:5671"),
            ("amqp://localhost", "localhost:5672"),
            ("not a url with secret", "the configured [broker] url"),
        ];
        for (url, want) in cases {
            assert_eq!(endpoint(url), want);
        }
    }
}
