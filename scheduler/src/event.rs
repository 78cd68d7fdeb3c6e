//! The event a tick makes. Its source is the schedule's id and its platform `schedule`; its
//! dedup key is made from the schedule and the tick (`morning-briefing@2026-12-02T00:00:00Z`), so
//! that a tick published twice (a claimer that outlived its lease) still calls Dify once: the
//! worker's idempotency record is per (source, dedup key). A manual run has a dedup key of its
//! own (`…@manual:<uuid>`). The schedule's `inputs` and `query` are rendered here with the
//! built-ins (`tick`, `date`, `time`, `weekday`, `timezone`, `schedule`, `trigger`) in a
//! sandboxed template engine; the payload carries them to the worker (`payload.inputs`), which
//! adds them to the app's own mapping. Pure.
use crate::plan::Clock;
use chrono::{DateTime, Utc};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::{json, Map};
use shared::config::{ConfigIssue, ScheduleConfig, SCHEDULE_PLATFORM};
use shared::envelope::{ChatType, Conversation, InboundEvent};

/// Why a tick's event exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Its time came.
    Scheduled,
    /// Fired after downtime by the `catch_up` rule.
    CatchUp,
    /// `switchboard schedule run ID`.
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }
}

/// The default Dify `user` of a schedule's runs.
pub fn default_user(schedule: &ScheduleConfig) -> String {
    format!("schedule-{}", schedule.id)
}

/// The dedup key of a schedule's tick.
pub fn dedup_key(schedule_id: &str, tick: DateTime<Utc>) -> String {
    format!(
        "{schedule_id}@{}",
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

fn engine() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt built-in is an error (found by `config check`), not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

fn context(
    schedule: &ScheduleConfig,
    clock: &Clock,
    tick: DateTime<Utc>,
    trigger: Trigger,
) -> Value {
    let local = clock.local(tick);
    minijinja::context! {
        tick => local.to_rfc3339(),
        date => local.format("%Y-%m-%d").to_string(),
        time => local.format("%H:%M").to_string(),
        weekday => local.format("%A").to_string(),
        timezone => schedule.timezone.clone(),
        schedule => schedule.id.clone(),
        trigger => trigger.as_str(),
    }
}

/// Renders a value: strings through the engine, anything else as it is.
fn render(
    env: &Environment<'_>,
    value: &serde_json::Value,
    ctx: &Value,
) -> Result<serde_json::Value, String> {
    match value {
        serde_json::Value::String(s) if s.contains("{{") || s.contains("{%") => env
            .render_str(s, ctx)
            .map(serde_json::Value::String)
            .map_err(|e| e.to_string()),
        other => Ok(other.clone()),
    }
}

/// The rendered `(inputs, query)` of a tick.
pub fn rendered(
    schedule: &ScheduleConfig,
    clock: &Clock,
    tick: DateTime<Utc>,
    trigger: Trigger,
) -> Result<(Map<String, serde_json::Value>, String), Vec<ConfigIssue>> {
    let env = engine();
    let ctx = context(schedule, clock, tick, trigger);
    let mut issues = Vec::new();
    let mut inputs = Map::new();
    for (name, value) in &schedule.inputs {
        match render(&env, value, &ctx) {
            Ok(v) => {
                inputs.insert(name.clone(), v);
            }
            Err(problem) => issues.push(ConfigIssue {
                key: format!("schedules.{}.inputs.{name}", schedule.id),
                problem,
            }),
        }
    }
    let query = match schedule
        .query
        .as_deref()
        .map(|q| render(&env, &json!(q), &ctx))
    {
        None => String::new(),
        Some(Ok(q)) => q.as_str().unwrap_or_default().to_owned(),
        Some(Err(problem)) => {
            issues.push(ConfigIssue {
                key: format!("schedules.{}.query", schedule.id),
                problem,
            });
            String::new()
        }
    };
    if issues.is_empty() {
        Ok((inputs, query))
    } else {
        Err(issues)
    }
}

/// The event of one tick.
pub fn tick_event(
    schedule: &ScheduleConfig,
    clock: &Clock,
    tick: DateTime<Utc>,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<InboundEvent, Vec<ConfigIssue>> {
    let (inputs, query) = rendered(schedule, clock, tick, trigger)?;
    let dedup_key = match trigger {
        Trigger::Manual => format!("{}@manual:{}", schedule.id, uuid::Uuid::now_v7()),
        _ => dedup_key(&schedule.id, tick),
    };
    Ok(InboundEvent {
        id: uuid::Uuid::now_v7(),
        source: schedule.id.clone(),
        platform: SCHEDULE_PLATFORM.into(),
        dedup_key,
        kind: trigger.as_str().into(),
        received_at: now,
        conversation: Conversation {
            chat_id: schedule.id.clone(),
            chat_type: ChatType::Single,
            sender_id: schedule
                .user
                .clone()
                .unwrap_or_else(|| default_user(schedule)),
            sender_name: None,
            thread_id: None,
        },
        text: query,
        reply: None,
        payload: json!({
            "schedule": schedule.id,
            "tick": clock.local(tick).to_rfc3339(),
            "trigger": trigger.as_str(),
            "inputs": inputs,
        }),
        attempts: Vec::new(),
        replay_of: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn schedule(inputs: serde_json::Value, query: Option<&str>) -> ScheduleConfig {
        let mut s = json!({
            "id": "briefing", "cron": "0 8 * * *", "timezone": "Asia/Shanghai", "app": "a",
            "inputs": inputs,
        });
        if let Some(q) = query {
            s["query"] = json!(q);
        }
        serde_json::from_value(s).unwrap()
    }

    #[test]
    fn built_ins_are_the_ticks_wall_time_in_its_zone() {
        let s = schedule(
            json!({"city": "Shanghai", "day": "{{ date }} {{ weekday }} {{ time }}", "n": 3}),
            Some("Briefing for {{ date }}"),
        );
        let clock = Clock::of(&s).unwrap();
        let tick = DateTime::parse_from_rfc3339("2026-12-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = tick_event(&s, &clock, tick, Trigger::Scheduled, tick).unwrap();
        assert_eq!(e.dedup_key, "briefing@2026-12-02T00:00:00Z");
        assert_eq!(e.text, "Briefing for 2026-12-02");
        assert_eq!(
            e.payload["inputs"],
            json!({"city": "Shanghai", "day": "2026-12-02 Wednesday 08:00", "n": 3})
        );
        assert_eq!(e.payload["tick"], "2026-12-02T08:00:00+08:00");
        assert_eq!(e.conversation.sender_id, "schedule-briefing");
        let manual = tick_event(&s, &clock, tick, Trigger::Manual, tick).unwrap();
        assert!(manual.dedup_key.starts_with("briefing@manual:"));
        assert_eq!(manual.kind, "manual");
    }

    #[test]
    fn a_misspelt_built_in_is_a_config_issue() {
        let s = schedule(json!({"day": "{{ dat }}"}), Some("{% if %}"));
        let clock = Clock::of(&s).unwrap();
        let issues = rendered(&s, &clock, Utc::now(), Trigger::Scheduled).unwrap_err();
        let keys: Vec<_> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            ["schedules.briefing.inputs.day", "schedules.briefing.query"]
        );
    }
}
