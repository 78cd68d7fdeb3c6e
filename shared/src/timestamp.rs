//! The wire form of a moment in the messages between roles, written and read with chrono's own
//! RFC 3339 routines but without the detours chrono's serde support takes.
//!
//! **Writing**: the text chrono's `Serialize` writes (UTC as `Z`, as many fraction digits as the
//! moment has: none, 3, 6 or 9), formatted once into a string and handed to the serializer
//! whole. chrono's `Serialize` writes the same text piece by piece through `collect_str`, and
//! serde_json escapes each of its 20-odd pieces on its own: about 2,500 instructions a moment
//! against about 1,100 this way.
//!
//! **Reading**: chrono's strict RFC 3339 parser (`DateTime::parse_from_rfc3339`) first, and only
//! for a text it refuses, chrono's own `Deserialize` path (`FromStr`, which also takes a space
//! for the `T` and a few other relaxations): the same moments from the same texts, and the same
//! refusals, but the texts Switchboard writes skip chrono's general format parser, about 1,800
//! instructions a moment. Every event carries one moment, every job three more (`timings`) and
//! every attempt one (docs/PERFORMANCE.md, "Issue 18, sixth round"). Pure.
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;

/// Writes a `DateTime<Utc>`: `#[serde(with = "crate::timestamp")]` on the field.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Reads a `DateTime<Utc>`: `#[serde(with = "crate::timestamp")]` on the field.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(MomentVisitor)
}

/// The same for an `Option<DateTime<Utc>>` (`null` when absent, as chrono's own):
/// `#[serde(default, with = "crate::timestamp::option")]`. With `with`, serde no longer treats
/// a missing field as `None` by itself: hence the `default`.
pub mod option {
    use super::MaybeMomentVisitor;
    use chrono::{DateTime, Utc};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        deserializer.deserialize_option(MaybeMomentVisitor)
    }
}

/// A moment from its text (pure): strict RFC 3339 first, then whatever else chrono's `FromStr`
/// (what its `Deserialize` uses) takes.
fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| text.parse::<DateTime<FixedOffset>>())
        .map(|at| at.with_timezone(&Utc))
}

struct MomentVisitor;

impl Visitor<'_> for MomentVisitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 date and time")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        parse(text).map_err(E::custom)
    }
}

struct MaybeMomentVisitor;

impl<'de> Visitor<'de> for MaybeMomentVisitor {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 date and time, or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Ours {
        #[serde(with = "super")]
        at: DateTime<Utc>,
        #[serde(default, with = "super::option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    /// Byte for byte what chrono writes, for every precision a moment can have, and read back
    /// by chrono as the same moment (a leap second aside: chrono writes 48 s + 1.5 s of leap as
    /// `…:49.500Z`, and reads that as an ordinary moment, whoever wrote it).
    #[test]
    fn the_same_text_as_chrono_writes_at_every_precision() {
        let second = Utc.with_ymd_and_hms(2026, 12, 4, 16, 38, 48).unwrap();
        let nanos = [
            0,
            959_000_000,
            959_816_000,
            959_816_905,
            1,
            10_000_000,
            1_000,
            // A leap second as chrono represents it.
            1_500_000_000,
        ];
        let early = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
        let late = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
        let mut moments: Vec<DateTime<Utc>> = nanos
            .iter()
            .map(|n| second.with_nanosecond(*n).unwrap())
            .collect();
        moments.extend([early, late, Utc::now()]);
        for at in moments {
            for maybe in [None, Some(at)] {
                let ours = serde_json::to_string(&Ours { at, maybe }).unwrap();
                let chronos = serde_json::to_string(&Chronos { at, maybe }).unwrap();
                assert_eq!(ours, chronos, "{at:?}");
                if at.nanosecond() < 1_000_000_000 {
                    let back: Chronos = serde_json::from_str(&ours).unwrap();
                    assert_eq!(back, Chronos { at, maybe });
                    let ours_back: Ours = serde_json::from_str(&ours).unwrap();
                    assert_eq!(ours_back, Ours { at, maybe });
                }
            }
        }
    }

    /// Whatever text chrono's own `Deserialize` reads, ours reads as the same moment, and
    /// whatever it refuses, ours refuses: strict and relaxed forms, offsets, escapes, nonsense.
    #[test]
    fn the_same_moments_as_chrono_reads_and_the_same_refusals() {
        let texts = [
            "2026-12-04T16:38:48Z",
            "2026-12-04T16:38:48.959816905Z",
            "2026-12-04T16:38:48.1Z",
            "2026-12-04T18:38:48.5+02:00",
            "2026-12-04T16:38:48-00:00",
            "2026-12-04t16:38:48z",
            "2026-12-04 16:38:48Z",
            "2026-12-04T16:38:48 +02:00",
            "2026-12-04T16:38:60Z",
            "2026-12-04T16:38Z",
            "2026-13-04T16:38:48Z",
            "2026-12-04T16:38:48",
            "2026-12-04",
            "1733330328",
            "yesterday",
            "",
        ];
        for text in texts {
            let json = serde_json::to_string(&text).unwrap();
            let ours = serde_json::from_str::<Wrapped>(&format!("{{\"at\":{json}}}"));
            let chronos = serde_json::from_str::<DateTime<Utc>>(&json);
            match (&ours, &chronos) {
                (Ok(ours), Ok(chronos)) => assert_eq!(&ours.at, chronos, "{text}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{text}: ours {ours:?}, chrono's {chronos:?}"),
            }
        }
        // An escaped string (not borrowed from the input) reads the same.
        let escaped: Wrapped =
            serde_json::from_str(r#"{"at":"2026-12-04T16:38:48\u005A"}"#).unwrap();
        assert_eq!(escaped.at.to_rfc3339(), "2026-12-04T16:38:48+00:00");
        // Absent and null are None; a number or a bad text is refused, not read as absent.
        let at = Utc.with_ymd_and_hms(2026, 12, 4, 16, 38, 48).unwrap();
        let cases = [
            (r#"{"at":"2026-12-04T16:38:48Z"}"#, Some(None)),
            (r#"{"at":"2026-12-04T16:38:48Z","maybe":null}"#, Some(None)),
            (
                r#"{"at":"2026-12-04T16:38:48Z","maybe":"2026-12-04T16:38:48Z"}"#,
                Some(Some(at)),
            ),
            (r#"{"at":"2026-12-04T16:38:48Z","maybe":5}"#, None),
            (r#"{"at":"2026-12-04T16:38:48Z","maybe":"soon"}"#, None),
            (r#"{"maybe":null}"#, None),
        ];
        for (json, want) in cases {
            let got = serde_json::from_str::<Ours>(json).ok().map(|o| o.maybe);
            assert_eq!(got, want, "{json}");
        }
    }

    #[derive(serde::Deserialize, Debug)]
    struct Wrapped {
        #[serde(deserialize_with = "super::deserialize")]
        at: DateTime<Utc>,
    }
}
