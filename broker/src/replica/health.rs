//! Whether a replica may admit checked calls. Health is proven, not assumed: every
//! heartbeat a replica NOTIFYs a ping carrying its own id and must hear it back on its
//! listener ([`crate::replica::feed`]). If it has heard nothing for longer than the
//! configured staleness (default 2 s) — listener cut, database down, anything —
//! [`FeedHealth::check`] fails and checked calls are refused (503) until the listener is
//! back *and* the replica has caught up from the tables.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::error::ApiError;

/// Whether this replica's view of the other replicas' changes is fresh.
pub struct FeedHealth {
    /// Replicated at all (PostgreSQL); a single SQLite broker is always fresh.
    replicated: bool,
    /// When this replica last heard its own ping after being caught up (ms).
    last_heard_ms: AtomicI64,
    /// Caught up since the listener last (re)connected.
    caught_up: AtomicBool,
    /// Longest tolerated silence.
    staleness_ms: i64,
    clock: Clock,
}

impl FeedHealth {
    /// Health of a single broker: always fresh.
    pub fn single(clock: Clock) -> Self {
        FeedHealth {
            replicated: false,
            last_heard_ms: AtomicI64::new(0),
            caught_up: AtomicBool::new(true),
            staleness_ms: 0,
            clock,
        }
    }

    /// Health of a replica; fresh for one staleness window from now (startup read the tables).
    pub fn replicated(clock: Clock, staleness: Duration) -> Self {
        let now = clock.now_ms();
        FeedHealth {
            replicated: true,
            last_heard_ms: AtomicI64::new(now),
            caught_up: AtomicBool::new(true),
            staleness_ms: staleness.as_millis() as i64,
            clock,
        }
    }

    /// Refuses (503) while the view may be stale.
    pub fn check(&self) -> Result<(), ApiError> {
        if !self.replicated {
            return Ok(());
        }
        let silence = self.clock.now_ms() - self.last_heard_ms.load(Ordering::SeqCst);
        if !self.caught_up.load(Ordering::SeqCst) || silence > self.staleness_ms {
            return Err(ApiError::Unavailable(format!(
                "this replica has not heard from the revocation channel for {silence} ms (limit {} ms); \
                 refusing checked calls until it has caught up",
                self.staleness_ms
            )));
        }
        Ok(())
    }

    /// The listener (re)connected and is reading the tables (`false`), or has caught up
    /// with them (`true`).
    pub fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, Ordering::SeqCst);
    }

    /// This replica heard its own ping back.
    pub fn heard_own_ping(&self) {
        self.last_heard_ms
            .store(self.clock.now_ms(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_broker_is_always_fresh() {
        let clock = Clock::fixed(1_000_000);
        let health = FeedHealth::single(clock.clone());
        clock.advance(Duration::from_secs(3600));
        health.check().unwrap();
    }

    #[test]
    fn a_replica_is_fresh_only_while_it_hears_its_own_ping_and_has_caught_up() {
        let clock = Clock::fixed(1_000_000);
        let health = FeedHealth::replicated(clock.clone(), Duration::from_secs(2));
        health.check().unwrap();
        clock.advance(Duration::from_millis(2001));
        assert!(matches!(health.check(), Err(ApiError::Unavailable(_))));
        health.heard_own_ping();
        health.check().unwrap();
        // Reconnecting: stale until the tables were read again.
        health.set_caught_up(false);
        assert!(matches!(health.check(), Err(ApiError::Unavailable(_))));
        health.set_caught_up(true);
        health.check().unwrap();
    }
}
