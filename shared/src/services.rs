//! The connections a role needs, made once per process and shared: one broker connection with
//! its topology, one Redis pool. `switchboard all` builds one `Services` for the three roles;
//! tests build one per test with their own prefixes.
use crate::broker::Broker;
use crate::config::Config;
use crate::store::Store;
use crate::topology::Topology;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Services {
    pub broker: Broker,
    pub store: Store,
}

impl Services {
    /// Starts the broker supervisor (sealing with `[audit] key` when set) and builds the Redis
    /// pool. Returns at once, connected or
    /// not; the broker connects (and reconnects) in the background.
    pub fn start(config: &Config, name: &str, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let topology = Topology::from_config(config);
        let broker = Broker::start(
            config.broker.url.clone(),
            name,
            config.broker.channel_pool,
            config.broker.publish_timeout,
            topology,
            shutdown,
        );
        if let Some(keyring) = config.audit.keyring() {
            broker.seal_with(keyring);
        }
        let store = Store::new(&config.redis)?;
        crate::telemetry::metrics();
        Ok(Self { broker, store })
    }
}
