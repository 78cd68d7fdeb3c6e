//! Human units in the config: durations (`"5s"`, `"24h"`), byte sizes (`"1MiB"`) and rates
//! (`"20/min"`, `"3/5s"`). Parsing is pure and each parser names what it expected.
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parses `"250ms"`, `"5s"`, `"5m"`, `"2h"`, `"1d"` and combinations humantime accepts.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like \"5s\" or \"2h\": {e}"))
}

/// serde helper: `#[serde(with = "crate::units::duration")]`.
pub mod duration {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
    pub fn serialize<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

/// serde helper for a list of durations.
pub mod durations {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Parses `"1MiB"`, `"512KiB"`, `"10MB"`, `"2048"` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like \"1MiB\""))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// serde helper for byte sizes written as strings or plain integers.
pub mod bytes {
    use super::*;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A rate: `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rate {
    pub count: u32,
    #[serde(with = "duration")]
    pub per: Duration,
}

impl Rate {
    /// `count` a second.
    pub const fn per_second(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// Parses `N/s`, `N/min`, `N/h` or `N/<duration>` such as `3/5s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a rate like \"20/min\", \"5/s\" or \"3/5s\"");
        let (n, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => parse_duration(other).map_err(|_| bad())?,
        };
        if count == 0 || per.is_zero() {
            return Err(format!(
                "`{s}`: a rate needs a count and a period above zero"
            ));
        }
        Ok(Self { count, per })
    }

    /// The time between two events at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let cases = [
            ("20/min", 20, 60_000),
            ("5/s", 5, 1_000),
            ("100/h", 100, 3_600_000),
            ("3/5s", 3, 5_000),
            (" 1 / 250ms ", 1, 250),
        ];
        for (s, n, ms) in cases {
            let r = Rate::parse(s).unwrap();
            assert_eq!((r.count, r.per.as_millis() as u64), (n, ms), "{s}");
        }
        for bad in ["", "20", "x/min", "0/s", "5/0s", "5/fortnight"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("2048").unwrap(), 2048);
        assert!(parse_bytes("1 parsec").is_err());
    }

    #[test]
    fn durations_parse_and_errors_say_what_was_expected() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").unwrap_err().contains("\"5s\""));
    }
}
