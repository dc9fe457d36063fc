//! The broker's clock: wall time in milliseconds, with an offset tests can move.
//!
//! Biscuit `time` facts use wall time, which `tokio::time::pause()` does not move,
//! so every place that needs "now" asks this clock instead of the system.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A shared wall clock. Cloning shares the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Added to the system time; only tests move it.
    offset_ms: Arc<AtomicI64>,
    /// A clock that stands still at this time (plus the offset) instead of following
    /// the system: unit tests of time rules.
    fixed_ms: Option<i64>,
}

impl Clock {
    /// Milliseconds since the Unix epoch, as this broker sees them.
    pub fn now_ms(&self) -> i64 {
        if let Some(fixed) = self.fixed_ms {
            return fixed + self.offset_ms.load(Ordering::Relaxed);
        }
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        system + self.offset_ms.load(Ordering::Relaxed)
    }

    /// A clock that stands at `at_ms` until [`Clock::advance`] moves it: domain rules
    /// about windows and idle time are tested against exact instants.
    pub fn fixed(at_ms: i64) -> Self {
        Clock {
            offset_ms: Arc::default(),
            fixed_ms: Some(at_ms),
        }
    }

    /// Moves this clock (and every clone) forward: for tests of expiry and idle timeouts.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

/// Reads an RFC 3339 time as epoch milliseconds (`None` if it is not one, or out of range).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats epoch milliseconds as RFC 3339 UTC (`2026-11-23T10:15:00Z`, millis when non-zero).
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| ms.to_string()),
        Err(_) => ms.to_string(),
    }
}
