//! The index's followers: one task per stream (dead letters, replays) that reads it from the
//! first retained entry and then keeps reading as it grows. On start each appends an end
//! marker and counts itself caught up when the marker comes back (then `/readyz` answers 200);
//! when the broker drops the connection it attaches again after the last entry it indexed.
use deadletters::filter::Start;
use deadletters::record::Names;
use deadletters::store::{detach, entry_of, StreamEntry};
use deadletters::trail::link_of;
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{row_of, Index};
use crate::broker::BrokerLink;

/// Acknowledge (multiple) every this many deliveries while catching up; each one after.
const ACK_EVERY: u64 = 500;

/// Follows the dead-letter stream into the index until `stop`.
pub async fn letters(
    index: Arc<Index>,
    link: Arc<BrokerLink>,
    names: Names,
    stop: CancellationToken,
) {
    let stream = names.stream.clone();
    let idx = index.clone();
    follow(
        &link,
        &stream,
        &stop,
        || idx.letters_resume(),
        || index.set_letters_ready(),
        |e| match e.meta.marker {
            Some(_) => index.passed(e.offset),
            None => index.add(row_of(&e, &names)),
        },
    )
    .await
}

/// Follows the replays stream into the index until `stop`.
pub async fn replays(
    index: Arc<Index>,
    link: Arc<BrokerLink>,
    stream: String,
    stop: CancellationToken,
) {
    let idx = index.clone();
    let l = link.clone();
    follow(
        &link,
        &stream,
        &stop,
        || idx.replays_resume(),
        || index.set_replays_ready(),
        |e| {
            if e.meta.marker.is_some() {
                return index.replay_passed(e.offset);
            }
            let keyring = l.keyring();
            let (link, part) = link_of(&e, keyring);
            index.add_replay(link, part);
        },
    )
    .await
}

async fn follow(
    link: &BrokerLink,
    stream: &str,
    stop: &CancellationToken,
    resume: impl Fn() -> Option<u64>,
    ready: impl Fn(),
    mut visit: impl FnMut(StreamEntry),
) {
    let mut backoff = Duration::from_millis(200);
    let mut caught_up = false;
    while !stop.is_cancelled() {
        match follow_once(
            link,
            stream,
            stop,
            &resume,
            &mut caught_up,
            &ready,
            &mut visit,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(stream, error = %e, retry_in = ?backoff, "the console lost its read of a stream; attaching again");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One attachment: reads until `stop` (Ok) or the broker fails (Err).
async fn follow_once(
    link: &BrokerLink,
    stream: &str,
    stop: &CancellationToken,
    resume: &impl Fn() -> Option<u64>,
    caught_up: &mut bool,
    ready: &impl Fn(),
    visit: &mut impl FnMut(StreamEntry),
) -> Result<(), String> {
    let store = link.store().await.map_err(|e| e.to_string())?;
    let start = resume().map_or(Start::First, Start::Offset);
    let (ch, mut consumer, tag) = store
        .follow(stream, start)
        .await
        .map_err(|e| e.to_string())?;
    let marker = Uuid::now_v7().to_string();
    if !*caught_up {
        store
            .append_marker(stream, &marker)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut seen = 0u64;
    let floor = resume();
    let result = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            n = consumer.next() => n,
        };
        let d = match next {
            None => break Err("the broker cancelled the read".to_owned()),
            Some(Err(e)) => break Err(e.to_string()),
            Some(Ok(d)) => d,
        };
        seen += 1;
        if *caught_up || seen.is_multiple_of(ACK_EVERY) {
            let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
        }
        let e = entry_of(d);
        if floor.is_some_and(|f| e.offset < f) {
            continue;
        }
        if e.meta.marker.as_deref() == Some(marker.as_str()) && !*caught_up {
            *caught_up = true;
            ready();
        }
        visit(e);
    };
    detach(ch, &tag).await;
    result
}
