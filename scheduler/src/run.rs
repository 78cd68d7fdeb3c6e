//! The scheduler role's loop. Every `scheduler.poll` each process, for each enabled schedule:
//! reads the cursor; if it lies before the grace window (no process looked for a while), the
//! process that moves it first applies the `catch_up` rule to the ticks missed in between; then
//! every tick of the grace window that no process claimed or fired is claimed (`SET NX` with a
//! lease), published to the work queue with a confirm, and marked fired. Metrics:
//! `switchboard_scheduler_ticks_total{schedule, outcome=fired|skipped|late}` (late: fired more
//! than `late_after` after its time) and the delay histogram.
use crate::claims::{Claims, LastRun};
use crate::event::{tick_event, Trigger};
use crate::plan::{catch_up, Clock};
use chrono::{DateTime, Utc};
use shared::broker::Publish;
use shared::config::{Config, ScheduleConfig, SchedulerConfig};
use shared::envelope::encode;
use shared::topology::Stage;
use shared::Services;
use std::collections::HashSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One schedule, compiled.
#[derive(Debug)]
pub struct Planned {
    pub config: ScheduleConfig,
    pub clock: Clock,
}

/// Compiles every schedule, or says what is wrong with each (`config check` too).
pub fn plan_all(config: &Config) -> Result<Vec<Planned>, Vec<shared::config::ConfigIssue>> {
    let mut issues = Vec::new();
    let mut planned = Vec::new();
    for s in &config.schedules {
        match Clock::of(s) {
            Ok(clock) => {
                // The built-ins render now, so that a misspelt one is found at load.
                if let Err(mut e) =
                    crate::event::rendered(s, &clock, Utc::now(), Trigger::Scheduled)
                {
                    issues.append(&mut e);
                }
                planned.push(Planned {
                    config: s.clone(),
                    clock,
                });
            }
            Err(mut e) => issues.append(&mut e),
        }
    }
    if issues.is_empty() {
        Ok(planned)
    } else {
        Err(issues)
    }
}

/// The scheduler of one process.
pub struct Scheduler {
    schedules: Vec<Planned>,
    settings: SchedulerConfig,
    services: Services,
    claims: Claims,
    work_queue: String,
    /// Ticks this process saw fired (by anyone): not asked about again.
    done: HashSet<(usize, DateTime<Utc>)>,
}

impl Scheduler {
    pub fn new(config: &Config, services: Services, owner: String) -> anyhow::Result<Self> {
        let schedules = plan_all(config).map_err(shared::config::ConfigError)?;
        Ok(Self {
            schedules,
            settings: config.scheduler.clone(),
            claims: Claims::new(services.store.clone(), owner),
            work_queue: services.broker.topology().stage_queue(Stage::Work),
            services,
            done: HashSet::new(),
        })
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.settings.poll);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(schedules = self.schedules.len(), "scheduler started");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            for i in 0..self.schedules.len() {
                if !self.schedules[i].config.enabled {
                    continue;
                }
                if let Err(e) = self.pass(i).await {
                    tracing::warn!(schedule = %self.schedules[i].config.id, error = %e, "schedule pass failed; trying again");
                }
            }
        }
    }

    /// One look at one schedule.
    async fn pass(&mut self, i: usize) -> anyhow::Result<()> {
        let now = Utc::now();
        let grace = chrono::Duration::from_std(self.settings.grace)?;
        let id = self.schedules[i].config.id.clone();
        let since = self.claims.since(&id, now).await?;
        let window_start = (now - grace).max(since);
        let (seen, cursor) = self.claims.cursor(&id).await?;
        if self.claims.move_cursor(&id, &seen, now).await? {
            if let Some(cursor) = cursor.filter(|c| *c < window_start) {
                self.catch_up(i, cursor, window_start, now).await?;
            }
        }
        self.done.retain(|(_, t)| *t > window_start);
        let ticks: Vec<_> = self.schedules[i]
            .clock
            .ticks(window_start, now)
            .into_iter()
            .filter(|t| !self.done.contains(&(i, *t)))
            .collect();
        let open = self.claims.open(&id, &ticks).await?;
        for t in &ticks {
            if !open.contains(t) {
                self.done.insert((i, *t));
            }
        }
        for tick in open {
            self.fire(i, tick, Trigger::Scheduled, now).await?;
        }
        Ok(())
    }

    /// Ticks missed while no process looked: `catch_up` decides.
    async fn catch_up(
        &mut self,
        i: usize,
        cursor: DateTime<Utc>,
        window_start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let s = &self.schedules[i];
        let missed = s.clock.ticks(cursor, window_start);
        let (fire, skipped) = catch_up(s.config.catch_up, s.config.catch_up_limit, &missed);
        let id = s.config.id.clone();
        if skipped > 0 {
            tracing::warn!(schedule = %id, skipped, "ticks missed while no scheduler ran; skipped by catch_up");
            metrics::counter!("switchboard_scheduler_ticks_total", "schedule" => id.clone(), "outcome" => "skipped")
                .increment(skipped as u64);
        }
        for tick in self.claims.open(&id, &fire).await? {
            self.fire(i, tick, Trigger::CatchUp, now).await?;
        }
        Ok(())
    }

    /// Claims, publishes and marks one tick.
    async fn fire(
        &mut self,
        i: usize,
        tick: DateTime<Utc>,
        trigger: Trigger,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let s = &self.schedules[i];
        let id = s.config.id.clone();
        if !self
            .claims
            .claim(&id, tick, self.settings.claim_lease)
            .await?
        {
            return Ok(());
        }
        let event = tick_event(&s.config, &s.clock, tick, trigger, now)
            .map_err(shared::config::ConfigError)?;
        let publish = Publish {
            message_id: Some(event.id.to_string()),
            ..Default::default()
        };
        if let Err(e) = self
            .services
            .broker
            .publish(&self.work_queue, &encode(&event), publish)
            .await
        {
            let _ = self.claims.release(&id, tick).await;
            return Err(e.into());
        }
        self.claims.fired(&id, tick).await?;
        self.done.insert((i, tick));
        let delay = (Utc::now() - tick).to_std().unwrap_or_default();
        metrics::counter!("switchboard_scheduler_ticks_total", "schedule" => id.clone(), "outcome" => "fired").increment(1);
        metrics::histogram!("switchboard_scheduler_tick_delay_seconds", "schedule" => id.clone())
            .record(delay.as_secs_f64());
        if delay > self.settings.late_after {
            metrics::counter!("switchboard_scheduler_ticks_total", "schedule" => id.clone(), "outcome" => "late").increment(1);
            tracing::warn!(schedule = %id, ?delay, "tick fired late");
        }
        tracing::info!(schedule = %id, tick = %tick, trigger = trigger.as_str(), event_id = %event.id, "tick fired");
        let _ = self
            .claims
            .record_last(&id, &last_run(&event, tick, trigger))
            .await;
        Ok(())
    }
}

fn last_run(event: &shared::InboundEvent, tick: DateTime<Utc>, trigger: Trigger) -> LastRun {
    LastRun {
        tick: tick.to_rfc3339(),
        at: Utc::now().to_rfc3339(),
        trigger: trigger.as_str().into(),
        event_id: event.id.to_string(),
        dedup_key: event.dedup_key.clone(),
    }
}

/// Publishes one run of a schedule now, recorded as manual (`switchboard schedule run ID`).
pub async fn run_now(config: &Config, services: &Services, id: &str) -> anyhow::Result<LastRun> {
    let planned = plan_all(config).map_err(shared::config::ConfigError)?;
    let s = planned
        .iter()
        .find(|p| p.config.id == id)
        .ok_or_else(|| anyhow::anyhow!("no [[schedules]] has id `{id}`"))?;
    let now = Utc::now();
    let event = tick_event(&s.config, &s.clock, now, Trigger::Manual, now)
        .map_err(shared::config::ConfigError)?;
    let queue = services.broker.topology().stage_queue(Stage::Work);
    let publish = Publish {
        message_id: Some(event.id.to_string()),
        ..Default::default()
    };
    services
        .broker
        .publish(&queue, &encode(&event), publish)
        .await?;
    metrics::counter!("switchboard_scheduler_ticks_total", "schedule" => id.to_owned(), "outcome" => "manual").increment(1);
    let run = last_run(&event, now, Trigger::Manual);
    Claims::new(services.store.clone(), "cli".into())
        .record_last(id, &run)
        .await?;
    Ok(run)
}

/// The scheduler role until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    services: Services,
    owner: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Scheduler::new(&config, services, owner)?
        .run(shutdown)
        .await;
    Ok(())
}
