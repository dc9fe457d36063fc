//! The revoked-id set in memory: every revocation id ever published, checked on every
//! use of every token, before any signature work.
//!
//! Ids are kept as their first 8 bytes (64 bits of an ed25519 signature), so a million
//! revoked ids cost about 20 MiB, not hundreds. A collision could only refuse a token
//! (fail closed), never admit one: a holder who grinds its own attenuation blocks to
//! collide with a revoked id only gets its own token refused. Each id keeps why it was revoked, so the refusal says
//! whether the task completed, expired or was revoked.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::error::ApiError;

/// Why an id was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedBecause {
    /// The task was revoked (or denied), or the id was revoked on its own.
    Revoked,
    /// The task was completed.
    Completed,
    /// The task expired.
    Expired,
}

impl RevokedBecause {
    /// From the feed's `reason` column.
    pub fn from_reason(reason: &str) -> Self {
        match reason {
            "completed" => RevokedBecause::Completed,
            "expired" => RevokedBecause::Expired,
            _ => RevokedBecause::Revoked,
        }
    }

    /// The refusal a token with such an id gets.
    pub fn refusal(self) -> ApiError {
        match self {
            RevokedBecause::Revoked => {
                ApiError::TokenRevoked("the token (or its task) was revoked".into())
            }
            RevokedBecause::Completed => {
                ApiError::TaskInactive("the token's task was completed".into())
            }
            RevokedBecause::Expired => {
                ApiError::TokenExpired("the token's task has expired".into())
            }
        }
    }
}

/// Every revoked id.
#[derive(Default)]
pub struct RevocationSet {
    ids: RwLock<HashMap<u64, RevokedBecause>>,
    /// Wakes long-polls of the revocation feed whenever ids are added.
    published: tokio::sync::Notify,
}

fn key(id: &str) -> Option<u64> {
    let prefix = id.get(..16)?;
    let mut out = [0u8; 8];
    hex::decode_to_slice(prefix, &mut out).ok()?;
    Some(u64::from_be_bytes(out))
}

impl RevocationSet {
    /// Why the id (hex) is revoked, if it is. An id that is not valid hex counts as revoked.
    pub fn lookup(&self, id: &str) -> Option<RevokedBecause> {
        match key(id) {
            Some(k) => match self.ids.read() {
                Ok(set) => set.get(&k).copied(),
                Err(_) => Some(RevokedBecause::Revoked),
            },
            None => Some(RevokedBecause::Revoked),
        }
    }

    /// Whether the id (hex) is revoked.
    pub fn contains(&self, id: &str) -> bool {
        self.lookup(id).is_some()
    }

    /// The refusal for a token with this id, if it is revoked.
    pub fn refusal(&self, id: &str) -> Option<ApiError> {
        self.lookup(id).map(RevokedBecause::refusal)
    }

    /// Adds ids (hex) with their reason (the feed's `reason`).
    pub fn extend<'a>(&self, ids: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let entries: Vec<(u64, RevokedBecause)> = ids
            .into_iter()
            .filter_map(|(id, reason)| key(id).map(|k| (k, RevokedBecause::from_reason(reason))))
            .collect();
        if let Ok(mut set) = self.ids.write() {
            set.extend(entries);
        }
        self.published.notify_waiters();
    }

    /// A future that completes at the next [`RevocationSet::extend`]. Create it before
    /// reading the feed, so a publication in between is not missed.
    pub fn next_publication(&self) -> tokio::sync::futures::Notified<'_> {
        self.published.notified()
    }

    /// Makes room for `additional` more ids at once (avoids growth copies at start).
    pub fn reserve(&self, additional: usize) {
        if let Ok(mut set) = self.ids.write() {
            set.reserve(additional);
        }
    }

    /// How many ids are revoked.
    pub fn len(&self) -> usize {
        self.ids.read().map(|set| set.len()).unwrap_or(0)
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_matched_by_prefix_and_bad_hex_fails_closed() {
        let set = RevocationSet::default();
        let id = "ab".repeat(64);
        assert!(!set.contains(&id));
        set.extend([(id.as_str(), "completed")]);
        assert_eq!(set.lookup(&id), Some(RevokedBecause::Completed));
        assert!(set.contains("zz"));
        assert_eq!(set.len(), 1);
    }
}
