//! The revoked-id set in memory: every revocation id ever published, checked on every
//! use of every token, before any signature work.
//!
//! Ids are kept as their first 8 bytes (64 bits of an ed25519 signature), so a million
//! revoked ids cost about 20 MiB, not hundreds. A collision could only refuse a token
//! (fail closed), never admit one: a holder who grinds its own attenuation blocks to
//! collide with a revoked id only gets its own token refused. Each id keeps why it was revoked, so the refusal says
//! whether the task completed, expired or was revoked.
//!
//! Each id also keeps when every token carrying it is past its own window (the task's
//! window, the credential's expiry). Past that, plus [`PRUNE_MARGIN_MS`] for clocks, the
//! id is forgotten ([`RevocationSet::prune`]): such a token is refused as expired by its
//! own window check, so the set holds only ids that still matter and cannot grow without
//! bound.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::error::ApiError;
use crate::store::Revocation;

/// How long after its window an id is still kept in memory: covers clocks of verifiers
/// that run behind the broker's.
pub const PRUNE_MARGIN_MS: i64 = 5 * 60 * 1000;

/// How long after its window an id stays on the feed (the table): a day, so a verifier
/// that starts late, or a replica whose clock ran ahead for a while, loses nothing.
pub const FEED_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// One revoked id: why, and until when it matters (seconds since the epoch; `u32::MAX`
/// for ever). Eight bytes, so a million ids stay small.
#[derive(Debug, Clone, Copy)]
struct Entry {
    because: RevokedBecause,
    until_secs: u32,
}

fn until_secs(expires_at_ms: Option<i64>) -> u32 {
    match expires_at_ms {
        // Rounded up: an id is never dropped before its window ends.
        Some(ms) => u32::try_from(ms.max(0).saturating_add(999) / 1000).unwrap_or(u32::MAX),
        None => u32::MAX,
    }
}

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
    ids: RwLock<HashMap<u64, Entry>>,
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
                Ok(set) => set.get(&k).map(|e| e.because),
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

    /// Adds published revocations (their reason and window come from the feed).
    pub fn extend<'a>(&self, revocations: impl IntoIterator<Item = &'a Revocation>) {
        let entries: Vec<(u64, Entry)> = revocations
            .into_iter()
            .filter_map(|r| {
                key(&r.revocation_id).map(|k| {
                    let entry = Entry {
                        because: RevokedBecause::from_reason(&r.reason),
                        until_secs: until_secs(r.expires_at_ms),
                    };
                    (k, entry)
                })
            })
            .collect();
        if let Ok(mut set) = self.ids.write() {
            for (k, entry) in entries {
                // Two ids sharing a prefix: keep the later end, so neither is forgotten early.
                set.entry(k)
                    .and_modify(|e| e.until_secs = e.until_secs.max(entry.until_secs))
                    .or_insert(entry);
            }
        }
        self.published.notify_waiters();
    }

    /// Forgets ids whose tokens' windows ended more than [`PRUNE_MARGIN_MS`] before
    /// `now_ms`; answers how many.
    pub fn prune(&self, now_ms: i64) -> usize {
        let horizon = until_secs(Some(now_ms - PRUNE_MARGIN_MS)).saturating_sub(1);
        match self.ids.write() {
            Ok(mut set) => {
                let before = set.len();
                set.retain(|_, e| e.until_secs > horizon);
                let pruned = before - set.len();
                if pruned > before / 4 {
                    set.shrink_to_fit();
                }
                pruned
            }
            Err(_) => 0,
        }
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

    fn revocation(id: &str, reason: &str, expires_at_ms: Option<i64>) -> Revocation {
        Revocation {
            seq: 1,
            revocation_id: id.to_string(),
            task_id: None,
            reason: reason.to_string(),
            at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn ids_are_matched_by_prefix_and_bad_hex_fails_closed() {
        let set = RevocationSet::default();
        let id = "ab".repeat(64);
        assert!(!set.contains(&id));
        set.extend([&revocation(&id, "completed", None)]);
        assert_eq!(set.lookup(&id), Some(RevokedBecause::Completed));
        assert!(set.contains("zz"));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn ids_are_forgotten_only_after_their_window_and_the_margin() {
        let set = RevocationSet::default();
        let (old, live, forever) = ("aa".repeat(64), "bb".repeat(64), "cc".repeat(64));
        set.extend([
            &revocation(&old, "token", Some(10_000)),
            &revocation(&live, "revoked", Some(10_000 + PRUNE_MARGIN_MS + 5_000)),
            &revocation(&forever, "credential", None),
        ]);
        // Within the margin after the window: kept.
        assert_eq!(set.prune(10_000 + PRUNE_MARGIN_MS), 0);
        assert!(set.contains(&old));
        // Past it: forgotten; the others stay.
        assert_eq!(set.prune(11_001 + PRUNE_MARGIN_MS), 1);
        assert!(!set.contains(&old));
        assert!(set.contains(&live) && set.contains(&forever));
        assert_eq!(set.prune(i64::MAX / 2), 1);
        assert!(set.contains(&forever));
    }
}
