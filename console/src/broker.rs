//! The console's connection to the broker: the dead-letter crate's [`Store`] (reads, end
//! markers, sealed appends and publishes), made on first use and made again when the broker
//! dropped it, so that a broker restart costs the console a few failed requests, not a restart.
use deadletters::store::Store;
use deadletters::DlqError;
use shared::config::BrokerConfig;
use shared::seal::Keyring;
use std::sync::Arc;
use tokio::sync::Mutex;

/// A shared, reconnecting handle on the broker.
pub struct BrokerLink {
    config: BrokerConfig,
    keyring: Option<Keyring>,
    current: Mutex<Option<Arc<Store>>>,
}

impl BrokerLink {
    pub fn new(config: BrokerConfig, keyring: Option<Keyring>) -> Self {
        Self {
            config,
            keyring,
            current: Mutex::new(None),
        }
    }

    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// The open store, connecting (again) when there is none or it was dropped.
    pub async fn store(&self) -> Result<Arc<Store>, DlqError> {
        let mut current = self.current.lock().await;
        if let Some(s) = current.as_ref().filter(|s| s.is_open()) {
            return Ok(s.clone());
        }
        let store = Arc::new(Store::connect(&self.config, self.keyring.clone()).await?);
        *current = Some(store.clone());
        Ok(store)
    }
}
