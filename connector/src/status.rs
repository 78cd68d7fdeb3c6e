//! What each connection is doing, for `/readyz` (one line per connection) and the
//! `switchboard_connector_connections_up` gauge. The connection slots write it; the admin
//! listener reads it. A process is ready when the broker is reachable and every connection is
//! up: a connection whose credentials the platform refused says so, with the platform's words.
use shared::broker::Broker;
use shared::telemetry::Readiness;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The state of one connection slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Opening (first time, or again after a failure: the reason of the last one).
    Connecting(Option<String>),
    Up,
    /// The platform refused the credentials: retried slowly.
    Refused(String),
}

/// Every connection slot of this process, by name (`{source}#{n}`).
#[derive(Debug, Clone, Default)]
pub struct Status(Arc<Mutex<BTreeMap<String, (String, LinkState)>>>);

impl Status {
    pub fn set(&self, slot: &str, source: &str, state: LinkState) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(slot.to_owned(), (source.to_owned(), state));
        let mut up: BTreeMap<&str, f64> = BTreeMap::new();
        for (source, state) in map.values() {
            *up.entry(source.as_str()).or_default() += f64::from(u8::from(*state == LinkState::Up));
        }
        for (source, n) in up {
            metrics::gauge!("switchboard_connector_connections_up", "source" => source.to_owned())
                .set(n);
        }
    }

    /// Every slot and its state, in name order.
    pub fn snapshot(&self) -> Vec<(String, LinkState)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, (_, s))| (k.clone(), s.clone()))
            .collect()
    }

    pub fn all_up(&self) -> bool {
        self.snapshot().iter().all(|(_, s)| *s == LinkState::Up)
    }

    /// One line per connection.
    pub fn report(&self) -> String {
        self.snapshot()
            .iter()
            .map(|(slot, state)| match state {
                LinkState::Up => format!("{slot} up"),
                LinkState::Connecting(None) => format!("{slot} connecting"),
                LinkState::Connecting(Some(why)) => format!("{slot} reconnecting: {why}"),
                LinkState::Refused(why) => format!("{slot} refused: {why}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `/readyz` of a process holding connections: the broker, then every connection.
#[derive(Debug, Clone)]
pub struct ConnectorReadiness {
    pub broker: Broker,
    pub status: Status,
}

impl Readiness for ConnectorReadiness {
    fn ready(&self) -> bool {
        self.broker.is_connected() && self.status.all_up()
    }

    fn report(&self) -> String {
        let links = self.status.report();
        let broker = match (self.broker.is_connected(), links.is_empty()) {
            (true, true) => return "ready".into(),
            (false, true) => return "broker unreachable".into(),
            (true, false) => "broker connected",
            (false, false) => "broker unreachable",
        };
        format!("{broker}\n{links}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_connection_is_up_and_the_report_names_each() {
        let s = Status::default();
        s.set("ding#0", "ding", LinkState::Connecting(None));
        s.set("ding#1", "ding", LinkState::Up);
        assert!(!s.all_up());
        s.set(
            "ding#0",
            "ding",
            LinkState::Refused("HTTP 401 bad secret".into()),
        );
        assert_eq!(s.report(), "ding#0 refused: HTTP 401 bad secret\nding#1 up");
        s.set("ding#0", "ding", LinkState::Up);
        assert!(s.all_up());
    }
}
