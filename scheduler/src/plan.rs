//! A schedule's clock, compiled once from its config: the cron expression (5 fields, or 6 with
//! seconds first) read in its IANA zone, and the pure decisions about ticks — which ticks fall
//! in a window, which missed ticks a catch-up fires. Daylight saving follows Vixie cron (the
//! rules croner implements): in a spring-forward gap a fixed-time job (`30 2 * * *`) runs once
//! at the first valid time after the gap, an interval job (`*/15 * * * *`) skips the missing
//! times; in a fall-back repeat a fixed-time job runs once (the first pass), an interval job on
//! both passes. Every tick is an instant (UTC); its wall time is the zone's.
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use shared::config::{CatchUp, ConfigIssue, ScheduleConfig};

/// A compiled schedule clock.
#[derive(Debug, Clone)]
pub struct Clock {
    cron: Cron,
    pub zone: Tz,
}

/// Ticks looked at in one window at most (a one-second schedule after a day of downtime has
/// 86 400; catch-up fires at most `catch_up_limit` of them anyway).
pub const MAX_TICKS: usize = 100_000;

impl Clock {
    /// Compiles `cron` in `timezone`, explaining what is wrong.
    pub fn new(cron: &str, timezone: &str) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let fields = cron.split_whitespace().count();
        let parsed = if !(5..=6).contains(&fields) || cron.contains('@') {
            problems.push((
                "cron",
                format!(
                    "`{cron}` has {fields} fields: write 5 (minute hour day-of-month month \
                     day-of-week) or 6 (seconds first), e.g. \"0 8 * * *\" or \"*/10 * * * * *\""
                ),
            ));
            None
        } else {
            CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Disallowed)
                .build()
                .parse(cron)
                .map_err(|e| {
                    problems.push(("cron", format!("`{cron}` is not a cron expression: {e}")))
                })
                .ok()
        };
        let zone = timezone
            .parse::<Tz>()
            .map_err(|_| {
                problems.push((
                    "timezone",
                    format!(
                        "`{timezone}` is not an IANA time zone name (such as \"UTC\", \
                         \"Europe/Berlin\", \"Asia/Shanghai\")"
                    ),
                ))
            })
            .ok();
        match (parsed, zone) {
            (Some(cron), Some(zone)) if problems.is_empty() => Ok(Self { cron, zone }),
            _ => Err(problems),
        }
    }

    /// The clock of a schedule, its problems as config issues.
    pub fn of(schedule: &ScheduleConfig) -> Result<Self, Vec<ConfigIssue>> {
        Self::new(&schedule.cron, &schedule.timezone).map_err(|problems| {
            problems
                .into_iter()
                .map(|(key, problem)| ConfigIssue {
                    key: format!("schedules.{}.{key}", schedule.id),
                    problem,
                })
                .collect()
        })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.zone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The ticks in `(from, to]`, oldest first, at most [`MAX_TICKS`].
    pub fn ticks(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.cron
            .iter_after(from.with_timezone(&self.zone))
            .map(|d| d.with_timezone(&Utc))
            .take_while(|d| *d <= to)
            .take(MAX_TICKS)
            .collect()
    }

    /// The next `n` ticks after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.cron
            .iter_after(t.with_timezone(&self.zone))
            .take(n)
            .map(|d| d.with_timezone(&Utc))
            .collect()
    }

    /// A tick's wall time in the zone.
    pub fn local(&self, tick: DateTime<Utc>) -> DateTime<Tz> {
        tick.with_timezone(&self.zone)
    }
}

/// Which of the `missed` ticks (oldest first) a catch-up fires: `(fire, skipped)`.
pub fn catch_up(
    rule: CatchUp,
    limit: usize,
    missed: &[DateTime<Utc>],
) -> (Vec<DateTime<Utc>>, usize) {
    let keep = match rule {
        CatchUp::Skip => 0,
        CatchUp::Latest => 1,
        CatchUp::All => limit,
    }
    .min(missed.len());
    (missed[missed.len() - keep..].to_vec(), missed.len() - keep)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn walls(clock: &Clock, from: &str, to: &str) -> Vec<String> {
        clock
            .ticks(utc(from), utc(to))
            .into_iter()
            .map(|t| clock.local(t).to_rfc3339())
            .collect()
    }

    #[test]
    fn five_and_six_fields_in_a_zone() {
        let daily = Clock::new("0 8 * * *", "Asia/Shanghai").unwrap();
        assert_eq!(
            daily.next_after(utc("2026-12-02T00:30:00Z")),
            Some(utc("2026-12-03T00:00:00Z")),
            "08:00 in Shanghai is 00:00 UTC"
        );
        let every_second = Clock::new("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second
                .ticks(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T00:00:20Z"))
                .len(),
            20
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_explained() {
        let problems = |cron: &str, tz: &str| Clock::new(cron, tz).unwrap_err();
        let p = problems("0 8 * *", "UTC");
        assert_eq!(p[0].0, "cron");
        assert!(p[0].1.contains("4 fields"), "{p:?}");
        let p = problems("0 25 * * *", "UTC");
        assert!(p[0].1.contains("not a cron expression"), "{p:?}");
        let p = problems("0 8 * * *", "Mars/Olympus");
        assert_eq!(p[0].0, "timezone");
        assert!(p[0].1.contains("IANA"), "{p:?}");
        assert_eq!(problems("x", "Nowhere").len(), 2);
    }

    /// Europe/Berlin springs forward on 2026-03-29 (02:00 -> 03:00) and falls back on
    /// 2026-10-25 (03:00 -> 02:00).
    #[test]
    fn daylight_saving_days_behave_as_cron_users_expect() {
        let tz = "Europe/Berlin";
        // Spring forward: 02:30 does not exist; a fixed-time job runs once, right after the gap.
        let fixed = Clock::new("30 2 * * *", tz).unwrap();
        assert_eq!(
            walls(&fixed, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
        );
        // An interval job skips the missing hour's times.
        let quarterly = Clock::new("*/30 * * * *", tz).unwrap();
        assert_eq!(
            walls(&quarterly, "2026-03-29T00:15:00Z", "2026-03-29T01:45:00Z"),
            [
                "2026-03-29T01:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:30:00+02:00"
            ]
        );
        // Fall back: 02:30 happens twice; the fixed-time job runs once, on the first pass.
        assert_eq!(
            walls(&fixed, "2026-10-24T12:00:00Z", "2026-10-25T12:00:00Z"),
            ["2026-10-25T02:30:00+02:00"]
        );
        // The interval job runs on both passes.
        assert_eq!(
            walls(&quarterly, "2026-10-24T23:45:00Z", "2026-10-25T01:45:00Z"),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00"
            ]
        );
        // A daily 08:00 on the short and the long day is 08:00 local both times.
        let daily = Clock::new("0 8 * * *", tz).unwrap();
        let ticks = daily.ticks(utc("2026-03-27T12:00:00Z"), utc("2026-03-29T12:00:00Z"));
        assert_eq!(ticks[1] - ticks[0], chrono::Duration::hours(23));
        let ticks = daily.ticks(utc("2026-10-23T12:00:00Z"), utc("2026-10-25T12:00:00Z"));
        assert_eq!(ticks[1] - ticks[0], chrono::Duration::hours(25));
    }

    #[test]
    fn catch_up_rules() {
        let missed: Vec<_> = (1..=5)
            .map(|m| utc(&format!("2026-01-01T0{m}:00:00Z")))
            .collect();
        assert_eq!(catch_up(CatchUp::Skip, 10, &missed), (vec![], 5));
        assert_eq!(catch_up(CatchUp::Latest, 10, &missed), (vec![missed[4]], 4));
        assert_eq!(
            catch_up(CatchUp::All, 2, &missed),
            (vec![missed[3], missed[4]], 3)
        );
        assert_eq!(catch_up(CatchUp::All, 10, &missed), (missed.clone(), 0));
        assert_eq!(catch_up(CatchUp::Latest, 10, &[]), (vec![], 0));
    }
}
