//! The broker nodes a process may connect to (`broker.url`: one URL or a list, one per node of a
//! RabbitMQ cluster) and the order it tries them in. Pure: no I/O here; the broker supervisor
//! asks [`NodeRing`] which node to try next and tells it how the attempt went.
//!
//! The order: each process starts at a node picked from its own name, so that many processes
//! spread over the cluster; after a lost connection or a failed attempt it moves on to the next
//! node (a node that went away is the one *not* to try first); once every node failed in a row,
//! the caller backs off before the next round.
use crate::secret::Secret;
use serde::{Deserialize, Deserializer};

/// One or more AMQP URLs, each possibly carrying a password (so each is a [`Secret`]).
#[derive(Debug, Clone)]
pub struct NodeUrls(Vec<Secret>);

impl NodeUrls {
    pub fn new(urls: Vec<Secret>) -> Self {
        Self(urls)
    }

    pub fn one(url: impl Into<String>) -> Self {
        Self(vec![Secret::new(url)])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&Secret> {
        self.0.get(i)
    }
}

impl From<Secret> for NodeUrls {
    fn from(url: Secret) -> Self {
        Self(vec![url])
    }
}

impl<'de> Deserialize<'de> for NodeUrls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Secret),
            Many(Vec<Secret>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => Self(vec![s]),
            OneOrMany::Many(v) => Self(v),
        })
    }
}

/// The host and port of an AMQP URL, for log lines (never the credentials).
pub fn endpoint(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host.split(['/', '?']).next().unwrap_or_default().to_owned()
}

/// Which node to try next.
#[derive(Debug, Clone)]
pub struct NodeRing {
    len: usize,
    next: usize,
    /// Attempts that failed since the last success.
    failed_in_a_row: usize,
}

impl NodeRing {
    /// A ring over `len` nodes starting at a node chosen by `seed` (e.g. a hash of the
    /// process's name), so that processes spread over the nodes.
    pub fn new(len: usize, seed: u64) -> Self {
        let len = len.max(1);
        Self {
            len,
            next: (seed % len as u64) as usize,
            failed_in_a_row: 0,
        }
    }

    /// The node to try now.
    pub fn current(&self) -> usize {
        self.next
    }

    /// The attempt on the current node succeeded: stay on it until it is lost.
    pub fn connected(&mut self) {
        self.failed_in_a_row = 0;
    }

    /// The connection to the current node was lost: the next attempt goes to the next node,
    /// at once (the other nodes are probably up).
    pub fn lost(&mut self) {
        self.next = (self.next + 1) % self.len;
        self.failed_in_a_row = 0;
    }

    /// The attempt on the current node failed. Returns true when every node has now failed in
    /// a row: the caller waits its backoff before the next round.
    pub fn failed(&mut self) -> bool {
        self.next = (self.next + 1) % self.len;
        self.failed_in_a_row += 1;
        if self.failed_in_a_row >= self.len {
            self.failed_in_a_row = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Ok,
        Fail,
        Lost,
    }

    #[test]
    fn the_ring_moves_on_and_backs_off_only_after_a_full_round() {
        use Step::*;
        // (nodes, seed, steps, nodes tried in order, rounds that ended in a backoff)
        type Case = (usize, u64, &'static [Step], &'static [usize], usize);
        let cases: &[Case] = &[
            (1, 7, &[Fail, Fail, Ok], &[0, 0, 0], 2),
            (3, 0, &[Ok, Lost, Ok], &[0, 0, 1], 0),
            (3, 1, &[Fail, Fail, Fail, Ok], &[1, 2, 0, 1], 1),
            (3, 2, &[Fail, Ok, Lost, Fail, Ok], &[2, 0, 0, 1, 2], 0),
            (3, 0, &[Fail, Fail, Ok, Fail, Fail], &[0, 1, 2, 2, 0], 0),
        ];
        for (len, seed, steps, want, want_backoffs) in cases {
            let mut ring = NodeRing::new(*len, *seed);
            let mut tried = Vec::new();
            let mut backoffs = 0;
            for step in *steps {
                tried.push(ring.current());
                match step {
                    Ok => ring.connected(),
                    Fail => backoffs += usize::from(ring.failed()),
                    Lost => ring.lost(),
                }
            }
            assert_eq!(&tried, want, "{len} nodes, seed {seed}, {steps:?}");
            assert_eq!(
                backoffs, *want_backoffs,
                "{len} nodes, seed {seed}, {steps:?}"
            );
        }
    }

    #[test]
    fn a_url_or_a_list_of_urls() {
        #[derive(Deserialize)]
        struct T {
            url: NodeUrls,
        }
        let one: T = toml::from_str(r#"url = "amqp://a:5672/%2f""#).unwrap();
        assert_eq!(one.url.len(), 1);
        let many: T =
            toml::from_str(r#"url = ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]"#).unwrap();
        assert_eq!(many.url.len(), 2);
        assert_eq!(many.url.get(1).unwrap().expose(), "amqp://b:5672/%2f");
    }

    #[test]
    fn endpoints_never_show_credentials() {
        for (url, want) in [
            ("amqp://guest:s3cret@node1:5672/%2f", "node1:5672"),
            (
                "amqps://u:p@rabbit.example.com/vhost?heartbeat=5",
                "rabbit.example.com",
            ),
            ("amqp://127.0.0.1:5673", "127.0.0.1:5673"),
        ] {
            assert_eq!(endpoint(url), want);
        }
    }
}
