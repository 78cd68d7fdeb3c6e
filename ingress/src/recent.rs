//! What this process remembers of the events it kept lately: door keys (as `crate::door` names
//! them) and the id each was kept under, so that a platform's retry that comes back to the same
//! process is answered as a duplicate without asking Redis, and is so even before the door's
//! marker reached Redis (it is written behind the answer: `crate::door_rounds`).
//!
//! Bounded in both ways: at most `capacity` keys (the oldest kept is forgotten first) and none
//! older than the door's `dedup_ttl`. A key it does not hold says nothing: the caller asks Redis,
//! where the other processes' markers are.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many keys an ingress or a connector remembers. It exceeds what the door's rounds may hold
/// unwritten (`crate::door_rounds::UNWRITTEN_AT_MOST`, checked at compile time), so a key whose
/// marker is not yet in Redis is still here.
pub const CAPACITY: usize = 16_384;
const _: () = assert!(CAPACITY > crate::door_rounds::UNWRITTEN_AT_MOST);

/// Recently kept door keys, oldest first.
#[derive(Debug)]
pub struct Recent {
    capacity: usize,
    ttl: Duration,
    ids: HashMap<String, (String, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl Recent {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The id of the event kept under the first of `keys` remembered and still within the ttl.
    pub fn first(&self, keys: &[String], now: Instant) -> Option<String> {
        keys.iter().find_map(|k| {
            let (id, at) = self.ids.get(k)?;
            (now.saturating_duration_since(*at) < self.ttl).then(|| id.clone())
        })
    }

    /// Remembers `event_id` under every key (a key seen again is remembered anew).
    pub fn remember(&mut self, keys: &[String], event_id: &str, now: Instant) {
        for key in keys {
            self.ids.insert(key.clone(), (event_id.to_owned(), now));
            self.order.push_back((key.clone(), now));
        }
        self.forget(now);
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Drops what is over the capacity or past the ttl, oldest first. An entry of `order` whose
    /// key was remembered anew since only drops itself.
    fn forget(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if self.ids.len() <= self.capacity && !expired && self.order.len() <= 2 * self.capacity
            {
                break;
            }
            if self.ids.get(key).is_some_and(|(_, kept)| kept == at) {
                self.ids.remove(key);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_kept_key_is_found_under_any_of_its_keys_and_another_is_not() {
        let now = Instant::now();
        let mut r = Recent::new(8, DAY);
        r.remember(&keys(&["seen:a", "seen-body:h"]), "e1", now);
        assert_eq!(r.first(&keys(&["seen:a"]), now).as_deref(), Some("e1"));
        assert_eq!(
            r.first(&keys(&["seen:b", "seen-body:h"]), now).as_deref(),
            Some("e1")
        );
        assert_eq!(r.first(&keys(&["seen:b"]), now), None);
    }

    #[test]
    fn it_never_holds_more_than_its_capacity_and_forgets_the_oldest_first() {
        let now = Instant::now();
        let mut r = Recent::new(3, DAY);
        for i in 0..10 {
            r.remember(&keys(&[&format!("k{i}")]), &format!("e{i}"), now);
            assert!(r.len() <= 3, "{} keys after {i}", r.len());
        }
        assert!(r.order.len() <= 6);
        assert_eq!(r.first(&keys(&["k6"]), now), None);
        for i in 7..10 {
            let id = format!("e{i}");
            assert_eq!(r.first(&keys(&[&format!("k{i}")]), now), Some(id));
        }
    }

    #[test]
    fn a_key_past_the_ttl_is_not_an_answer_and_is_dropped() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut r = Recent::new(8, ttl);
        r.remember(&keys(&["old"]), "e1", t0);
        assert_eq!(r.first(&keys(&["old"]), t0 + ttl), None);
        r.remember(&keys(&["new"]), "e2", t0 + ttl);
        assert_eq!(r.len(), 1);
        assert_eq!(r.first(&keys(&["new"]), t0 + ttl).as_deref(), Some("e2"));
    }

    #[test]
    fn a_key_remembered_anew_outlives_its_first_entry() {
        let t0 = Instant::now();
        let mut r = Recent::new(2, DAY);
        r.remember(&keys(&["a"]), "e1", t0);
        r.remember(&keys(&["b"]), "e2", t0);
        r.remember(&keys(&["a"]), "e1", t0 + Duration::from_secs(1));
        // `a`'s first entry is the oldest; dropping it must not drop `a`'s newer one.
        r.remember(&keys(&["c"]), "e3", t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(2);
        assert_eq!(r.first(&keys(&["a"]), now).as_deref(), Some("e1"));
        assert_eq!(r.first(&keys(&["b"]), now), None);
        assert_eq!(r.len(), 2);
    }
}
