//! `switchboard schedule list` (each schedule's next runs in its zone, its last run and what
//! became of it) and `switchboard schedule run ID` (one run now, recorded as manual).
use crate::claims::Claims;
use crate::run::plan_all;
use chrono::Utc;
use shared::config::Config;
use shared::Services;
use std::fmt::Write as _;

/// The text of `schedule list`.
pub async fn list(config: &Config, services: &Services) -> anyhow::Result<String> {
    let planned = plan_all(config).map_err(shared::config::ConfigError)?;
    let claims = Claims::new(services.store.clone(), "cli".into());
    let now = Utc::now();
    let mut out = String::new();
    if planned.is_empty() {
        out.push_str("no [[schedules]] in the config\n");
    }
    for p in &planned {
        let c = &p.config;
        let state = if c.enabled { "" } else { " (disabled)" };
        let _ = writeln!(
            out,
            "{}{state}: \"{}\" in {} -> app {}",
            c.id, c.cron, c.timezone, c.app
        );
        let next: Vec<String> = p
            .clock
            .upcoming(now, 3)
            .into_iter()
            .map(|t| p.clock.local(t).to_rfc3339())
            .collect();
        let _ = writeln!(out, "  next: {}", next.join(", "));
        match claims.last(&c.id).await? {
            None => out.push_str("  last: never\n"),
            Some(last) => {
                let outcome = claims.outcome(&c.id, &last.dedup_key).await?;
                let _ = writeln!(
                    out,
                    "  last: {} ({}, published {}), event {}: {outcome}",
                    last.tick, last.trigger, last.at, last.event_id
                );
            }
        }
    }
    Ok(out)
}
