//! The routes a dispatcher knows: every `[[targets]]` entry by id and every replying source's
//! channel by source id, each with the rate limits and the retry schedule the delivery loop
//! applies to it. Built once at start; building collects every problem so that `config check`
//! reports them all. Must not deliver anything.
use crate::target::{self, Target};
use shared::config::{Config, ConfigIssue};
use shared::retry::RetryPolicy;
use shared::units::Rate;
use std::collections::HashMap;
use std::sync::Arc;

/// A target with the policies the loop applies to it.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Arc<dyn Target>,
    pub rates: Vec<Rate>,
    pub policy: RetryPolicy,
}

/// Every target by id, and every source's reply channel by source id.
#[derive(Debug, Default)]
pub struct Routes {
    pub targets: HashMap<String, Route>,
    pub replies: HashMap<String, Route>,
}

/// Builds every target and reply channel, collecting every problem.
pub fn build_routes(config: &Config) -> Result<Routes, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut targets = HashMap::new();
    let mut replies = HashMap::new();
    let d = &config.dispatcher;
    for t in &config.targets {
        match target::build(t) {
            Ok(target) => {
                let rates = match t.rate {
                    Some(r) => vec![r],
                    None => target.default_rates(),
                };
                let schedule = t
                    .retry_schedule
                    .clone()
                    .unwrap_or_else(|| d.retry_schedule.clone());
                targets.insert(
                    t.id.clone(),
                    Route {
                        target,
                        rates,
                        policy: RetryPolicy::new(schedule, d.jitter),
                    },
                );
            }
            Err(mut e) => issues.append(&mut e),
        }
    }
    for s in config.sources.iter().filter(|s| s.reply) {
        match target::build_reply(s) {
            Ok(Some(target)) => {
                let rates = target.default_rates();
                replies.insert(
                    s.id.clone(),
                    Route {
                        target,
                        rates,
                        policy: RetryPolicy::new(d.retry_schedule.clone(), d.jitter),
                    },
                );
            }
            Ok(None) => {}
            Err(mut e) => issues.append(&mut e),
        }
    }
    if issues.is_empty() {
        Ok(Routes { targets, replies })
    } else {
        Err(issues)
    }
}
