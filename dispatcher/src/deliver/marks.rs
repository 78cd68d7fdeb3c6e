//! A job's two marks in Redis. `delivered:<job id>` says a receiver took the job (kept for
//! `dispatcher.delivered_ttl`), so a copy the broker redelivers is acked without posting again.
//! `delivering:<job id>` is a short lock, so that two dispatchers never post the same job at
//! once. What a Redis error on each mark means is decided here and listed in the module notes of
//! `crate::deliver`. This module never delivers, parks or acks.
use deadpool_redis::redis::{self, AsyncCommands};
use shared::envelope::DispatchJob;
use shared::store::{Store, StoreError};
use std::time::Duration;

/// The marks of one job.
pub(super) struct Marks<'a> {
    store: &'a Store,
    delivered: String,
    lock: String,
}

/// Whether this dispatcher may post the job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lock {
    /// Post it: the lock is ours (or Redis could not say; see [`Lock::from_reply`]).
    Held,
    /// Another dispatcher is posting this job right now.
    Busy,
}

impl Lock {
    /// The lock-error policy, in one place: what the answer to `SET … NX` means (pure).
    ///
    /// A Redis error counts as holding the lock, deliberately. The lock only guards a rare race
    /// — a second copy of the job (a broker redelivery) arriving while the first is still being
    /// posted — and the `delivered` mark, read a moment before, already covers the common case
    /// of a copy arriving after the delivery. Parking the job instead would make every job in
    /// flight wait 5 s for a Redis blip (a reply slower than redis-rs' 500 ms is an error), and
    /// when the `SET` did reach Redis and only its reply was lost, the job would find its own
    /// lock and wait up to `lock_ttl` (three request timeouts) for nothing. Posting costs at
    /// most one duplicate, and only when both happen at once; it carries the same `webhook-id`,
    /// on which Standard Webhooks receivers dedup (docs/GUARANTEES.md names this window).
    pub(super) fn from_reply<E>(reply: Result<Option<String>, E>) -> Lock {
        match reply {
            Ok(Some(_)) => Lock::Held,
            Ok(None) => Lock::Busy,
            Err(_) => Lock::Held,
        }
    }
}

impl<'a> Marks<'a> {
    pub(super) fn of(store: &'a Store, job: &DispatchJob) -> Self {
        let id = job.id.to_string();
        Self {
            store,
            delivered: store.key(&["delivered", &id]),
            lock: store.key(&["delivering", &id]),
        }
    }

    /// Was the job delivered before? An error means Redis could not say.
    pub(super) async fn is_delivered(&self) -> Result<bool, StoreError> {
        let mut conn = self.store.conn().await?;
        Ok(conn.exists::<_, bool>(&self.delivered).await?)
    }

    /// Takes the job's lock for `ttl` (see [`Lock::from_reply`] for what an error means).
    pub(super) async fn lock(&self, ttl: Duration) -> Lock {
        let reply = match self.store.conn().await {
            Ok(mut conn) => redis::cmd("SET")
                .arg(&self.lock)
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async::<Option<String>>(&mut conn)
                .await
                .map_err(StoreError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = &reply {
            tracing::warn!(error = %e, "could not take the job's lock; posting anyway");
        }
        Lock::from_reply(reply)
    }

    /// Marks the job delivered for `ttl` and releases its lock, in one round trip.
    pub(super) async fn mark_delivered(&self, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.store.conn().await?;
        redis::pipe()
            .cmd("SET")
            .arg(&self.delivered)
            .arg("1")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .ignore()
            .cmd("DEL")
            .arg(&self.lock)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Releases the job's lock; if Redis cannot, the lock lapses after its ttl.
    pub(super) async fn unlock(&self) {
        if let Ok(mut conn) = self.store.conn().await {
            let _: Result<(), _> = conn.del(&self.lock).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_replies_table() {
        let cases: [(Result<Option<String>, &str>, Lock); 3] = [
            (Ok(Some("OK".into())), Lock::Held),
            (Ok(None), Lock::Busy),
            (Err("redis: timed out"), Lock::Held),
        ];
        for (reply, want) in cases {
            assert_eq!(Lock::from_reply(reply.clone()), want, "{reply:?}");
        }
    }
}
