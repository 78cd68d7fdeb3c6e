//! Exports of the letters a filter matches: CSV (one row per letter, from the index: instant
//! at any size) and JSON Lines (every record whole, as `dlq export` writes it but with the
//! original message's credentials redacted, read from the stream and streamed out as it is
//! read, so a large export starts at once and never sits in memory).
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use deadletters::report::ExportLine;
use std::sync::Arc;

use crate::error::ConsoleError;
use crate::index::{Query, Row};
use crate::redact::redact;
use crate::state::Console;

/// The CSV of the matching letters, oldest first.
pub fn csv(state: &Console, q: &Query) -> Result<Response, ConsoleError> {
    let rows = state.index.all(q);
    let replays = state.index.replays();
    let mut w = csv::Writer::from_writer(Vec::new());
    let head = [
        "id",
        "dead_at",
        "stage",
        "reason",
        "source",
        "target",
        "attempts",
        "error",
        "event_id",
        "message_id",
        "seal",
        "replayed",
        "offset",
    ];
    let mut write = |fields: &[String]| {
        w.write_record(fields)
            .map_err(|e| ConsoleError::Unavailable(e.to_string()))
    };
    write(&head.map(str::to_owned))?;
    for r in &rows {
        write(&csv_fields(r, replays.ledger.marks(r.id).len()))?;
    }
    drop(replays);
    let bytes = w
        .into_inner()
        .map_err(|e| ConsoleError::Unavailable(e.to_string()))?;
    Ok(download(
        Body::from(bytes),
        "text/csv; charset=utf-8",
        "dead-letters.csv",
    ))
}

fn csv_fields(r: &Row, replays: usize) -> Vec<String> {
    vec![
        r.id.to_string(),
        r.dead_at.to_rfc3339(),
        r.stage.as_str().into(),
        r.reason.as_str().into(),
        r.source.clone(),
        r.target.clone().unwrap_or_default(),
        r.attempts.to_string(),
        r.error.clone(),
        r.event_id.map(|e| e.to_string()).unwrap_or_default(),
        r.dedup_key.clone().unwrap_or_default(),
        r.seal.as_ref().map_or("not checked", |v| v.word()).into(),
        replays.to_string(),
        r.offset.to_string(),
    ]
}

/// The JSON Lines of the matching letters, read from the stream as the body is sent.
pub async fn jsonl(state: Arc<Console>, q: &Query) -> Result<Response, ConsoleError> {
    let rows = state.index.all(q);
    if rows.is_empty() {
        return Err(ConsoleError::NotFound(
            "no dead letter matches the filter".into(),
        ));
    }
    let store = state.link.store().await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        // A chunk at a time: a slow client holds the read back instead of filling memory.
        for chunk in rows.chunks(CHUNK) {
            let batch = lines(&state, &store, chunk).await;
            let failed = batch.is_err();
            if tx.send(batch).await.is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(download(
        Body::from_stream(stream),
        "application/x-ndjson",
        "dead-letters.jsonl",
    ))
}

/// Letters read and sent per chunk.
const CHUNK: usize = 1000;

/// The export lines of these rows (oldest first), read from the stream.
async fn lines(
    state: &Console,
    store: &deadletters::store::Store,
    rows: &[Row],
) -> Result<Vec<u8>, std::io::Error> {
    let letters = crate::replay::whole_letters(state, store, rows)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut out = Vec::new();
    for mut l in letters {
        l.letter.message = redact(&l.letter.message);
        let line = ExportLine::new(&l, &state.index.marks(l.letter.id));
        out.extend(serde_json::to_vec(&line).unwrap_or_default());
        out.push(b'\n');
    }
    Ok(out)
}

fn download(body: Body, content_type: &'static str, name: &str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
