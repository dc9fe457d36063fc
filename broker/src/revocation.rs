//! The revoked-id set in memory: every revocation id ever published, checked on every
//! use of every token, before any signature work.
//!
//! Ids are kept as their first 16 bytes (128 bits of an ed25519 signature), so a million
//! revoked ids cost tens of MiB, not hundreds. A collision could only refuse a token
//! (fail closed), never admit one.

use std::collections::HashSet;
use std::sync::RwLock;

/// Every revoked id.
#[derive(Default)]
pub struct RevocationSet {
    ids: RwLock<HashSet<[u8; 16]>>,
}

fn key(id: &str) -> Option<[u8; 16]> {
    let prefix = id.get(..32)?;
    let mut out = [0u8; 16];
    hex::decode_to_slice(prefix, &mut out).ok()?;
    Some(out)
}

impl RevocationSet {
    /// Whether the id (hex) is revoked. An id that is not valid hex counts as revoked.
    pub fn contains(&self, id: &str) -> bool {
        match key(id) {
            Some(k) => self.ids.read().map(|set| set.contains(&k)).unwrap_or(true),
            None => true,
        }
    }

    /// Adds ids (hex).
    pub fn extend<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let keys: Vec<[u8; 16]> = ids.into_iter().filter_map(key).collect();
        if let Ok(mut set) = self.ids.write() {
            set.extend(keys);
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
        set.extend([id.as_str()]);
        assert!(set.contains(&id));
        assert!(set.contains("zz"));
        assert_eq!(set.len(), 1);
    }
}
