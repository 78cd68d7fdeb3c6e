//! What the AMQP properties of a stream entry say, lifted off lapin's types into
//! [`EntryMeta`]: its offset, the end-marker and seal headers, the broker's dead-lettering
//! headers (`x-first-death-*`, `x-death`) and the publisher's timestamp. Pure.
use lapin::types::{AMQPValue, FieldTable, LongString};
use shared::seal::SEAL_HEADER;

use crate::record::{Death, EntryMeta, MARKER_HEADER};

/// Lifts the entry's offset and the facts [`EntryMeta`] needs off its AMQP headers.
pub fn read_headers(headers: &FieldTable, timestamp: Option<u64>) -> (Option<u64>, EntryMeta) {
    let h = headers.inner();
    let text = |k: &str| h.get(k).and_then(as_text);
    let offset = h.get("x-stream-offset").and_then(as_u64);
    let death = match h.get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().first().and_then(|v| match v {
            AMQPValue::FieldTable(t) => {
                let t = t.inner();
                Some(Death {
                    queue: t.get("queue").and_then(as_text),
                    reason: t.get("reason").and_then(as_text),
                    count: t.get("count").and_then(as_u64),
                    time: t.get("time").and_then(as_u64).and_then(seconds),
                })
            }
            _ => None,
        }),
        _ => None,
    };
    let meta = EntryMeta {
        marker: text(MARKER_HEADER),
        seal: text(SEAL_HEADER),
        first_death_queue: text("x-first-death-queue"),
        first_death_reason: text("x-first-death-reason"),
        death,
        timestamp: timestamp.and_then(seconds),
    };
    (offset, meta)
}

fn seconds(s: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(i64::try_from(s).ok()?, 0)
}

fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// Long strings for headers (lapin's type).
pub fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn headers_give_the_offset_and_the_death() {
        let mut death = FieldTable::default();
        death.insert("queue".into(), long("p.work"));
        death.insert("reason".into(), long("delivery_limit"));
        death.insert("count".into(), AMQPValue::LongLongInt(3));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut h = FieldTable::default();
        h.insert("x-stream-offset".into(), AMQPValue::LongLongInt(42));
        h.insert("x-first-death-queue".into(), long("p.work"));
        h.insert("x-first-death-reason".into(), long("delivery_limit"));
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let (offset, meta) = read_headers(&h, Some(1_700_000_001));
        assert_eq!(offset, Some(42));
        assert_eq!(meta.first_death_queue.as_deref(), Some("p.work"));
        assert_eq!(meta.first_death_reason.as_deref(), Some("delivery_limit"));
        let d = meta.death.unwrap();
        assert_eq!(
            (d.count, d.time.map(|t| t.timestamp())),
            (Some(3), Some(1_700_000_000))
        );
        assert_eq!(meta.timestamp.map(|t| t.timestamp()), Some(1_700_000_001));
        assert_eq!(meta.marker, None);

        let mut m = FieldTable::default();
        m.insert(MARKER_HEADER.into(), long("abc"));
        m.insert("x-stream-offset".into(), AMQPValue::LongLongInt(43));
        assert_eq!(read_headers(&m, None).1.marker.as_deref(), Some("abc"));
    }
}
