//! The wire form of a moment in the messages between roles: the text chrono's own `Serialize`
//! writes (RFC 3339, UTC as `Z`, as many fraction digits as the moment has: none, 3, 6 or 9),
//! formatted once by chrono into a string and handed to the serializer whole. chrono's
//! `Serialize` writes the same text piece by piece through `collect_str`, and serde_json escapes
//! each piece on its own, 20 and more for one moment: about 2,400 instructions a moment against
//! about 700 this way (docs/PERFORMANCE.md, "Issue 18, sixth round"), and every event and job
//! carries several. Only serializing is replaced: reading stays chrono's, which takes any
//! RFC 3339 text, this one included. Pure.
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// `#[serde(serialize_with = "crate::timestamp::rfc3339")]` on a `DateTime<Utc>`.
pub fn rfc3339<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// The same for an `Option<DateTime<Utc>>` (`null` when absent, as chrono's own).
pub fn rfc3339_opt<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[derive(serde::Serialize)]
    struct Ours {
        #[serde(serialize_with = "rfc3339")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "rfc3339_opt")]
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
                }
            }
        }
    }
}
