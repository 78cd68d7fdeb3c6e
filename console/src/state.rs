//! What every console request shares: the config, the users and sessions, the index, the
//! broker and Redis, the replay record's appender and the replays running in this process.
//! Built once by [`crate::run`] (or by tests), never changed after.
use deadletters::record::Names;
use deadletters::trail::Appender;
use shared::config::{AuditorConfig, ConsoleConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::auth::Auth;
use crate::broker::BrokerLink;
use crate::index::Index;

/// The console's shared state.
pub struct Console {
    pub config: Arc<AuditorConfig>,
    pub console: ConsoleConfig,
    pub auth: Auth,
    pub index: Arc<Index>,
    pub link: Arc<BrokerLink>,
    pub names: Names,
    pub redis: shared::store::Store,
    pub trail: Appender,
    /// Replays started by this process and still sending, by id, with how far they got.
    pub running: Mutex<HashMap<Uuid, String>>,
    /// Cancelled on shutdown: running replays stop and record themselves as interrupted.
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
}

impl Console {
    /// Notes how a replay started here stands (`None`: it ended).
    pub fn set_running(&self, id: Uuid, state: Option<String>) {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => {
                r.insert(id, s);
            }
            None => {
                r.remove(&id);
            }
        }
    }

    pub fn running(&self, id: Uuid) -> Option<String> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}
