//! Secrets at rest, sealed: what the store must keep but a dump of the database must not
//! give away (a live task's token, which the owner agent reads back once its task is
//! approved; a person's upstream refresh and access tokens). ChaCha20-Poly1305 with a
//! fresh nonce per value; the associated data names the value's kind, its owner and the
//! key's id, so a sealed value moved to another row, or relabelled as sealed by another
//! key, does not open — and one sealed by another key says so.
//!
//! The sealing key is not in the database: on the embedded default it is a file in the
//! data folder (`seal.key`, 0600); on PostgreSQL it is derived from `LEASH_MASTER_KEY`,
//! which every replica has.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The kind of a sealed task token (its owner is the task id).
pub const TASK_TOKEN: &str = "task token";

/// What a sealed value of the first format starts with (no key id; still opened).
const PREFIX: &str = "sealed:v1:";
/// What a sealed value starts with: `sealed:v2:<key id>:<nonce><ciphertext>` in hex.
const PREFIX_V2: &str = "sealed:v2:";

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not sealed data, or sealed for another owner, or with another key.
    #[error("a sealed {0} does not open (wrong key, or moved to another row)")]
    DoesNotOpen(&'static str),
    /// Sealed by a key this broker does not hold (named by its id).
    #[error("a sealed {kind} was sealed by key {kid}, which this broker does not hold")]
    OtherKey {
        /// The kind of value.
        kind: &'static str,
        /// The id of the key that sealed it.
        kid: String,
    },
}

/// Seals and opens values with the deployment's at-rest key.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    kid: String,
}

impl Sealer {
    /// A sealer for a 32-byte key.
    pub fn new(key: [u8; 32]) -> Sealer {
        let mut hasher = Sha256::new();
        hasher.update(b"leash at-rest key id v1\n");
        hasher.update(key);
        let kid = hex::encode(&hasher.finalize()[..6]);
        Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
            kid,
        }
    }

    /// The id of the key (a digest of it, not the key): written beside every sealed value
    /// and bound into its associated data.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The sealer of a PostgreSQL deployment: its key is derived from the master key
    /// (domain-separated, so it never equals the key that seals the root keys).
    pub fn from_master(master: &[u8; 32]) -> Sealer {
        let mut hasher = Sha256::new();
        hasher.update(b"leash at-rest sealing key v1\n");
        hasher.update(master);
        Sealer::new(hasher.finalize().into())
    }

    /// Seals `value` of `kind` (e.g. "task token") belonging to `owner` (e.g. a task id).
    pub fn seal(&self, kind: &'static str, owner: &str, value: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = format!("{}:{}", associated(kind, owner), self.kid);
        // Encryption with a valid key and nonce cannot fail for inputs this size.
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        format!(
            "{PREFIX_V2}{}:{}{}",
            self.kid,
            hex::encode(nonce),
            hex::encode(sealed)
        )
    }

    /// Opens what [`Sealer::seal`] made for the same `kind` and `owner`.
    pub fn open(&self, kind: &'static str, owner: &str, sealed: &str) -> Result<String, SealError> {
        let fail = || SealError::DoesNotOpen(kind);
        let (hex_text, aad) = if let Some(rest) = sealed.strip_prefix(PREFIX_V2) {
            let (kid, rest) = rest.split_once(':').ok_or_else(fail)?;
            if kid != self.kid {
                return Err(SealError::OtherKey {
                    kind,
                    kid: kid.chars().take(16).collect(),
                });
            }
            (rest, format!("{}:{}", associated(kind, owner), self.kid))
        } else {
            let rest = sealed.strip_prefix(PREFIX).ok_or_else(fail)?;
            (rest, associated(kind, owner))
        };
        let bytes = hex::decode(hex_text).map_err(|_| fail())?;
        if bytes.len() < 12 + 16 {
            return Err(fail());
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| fail())?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }

    /// Whether `stored` is sealed data (rows written before sealing existed are not).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX) || stored.starts_with(PREFIX_V2)
    }
}

fn associated(kind: &str, owner: &str) -> String {
    format!("leash:{kind}:{owner}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_owner_and_key() {
        let sealer = Sealer::new([7; 32]);
        let sealed = sealer.seal("task token", "tsk_a", "En0KEw...");
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("En0KEw"));
        assert_eq!(
            sealer.open("task token", "tsk_a", &sealed).unwrap(),
            "En0KEw..."
        );
        // Another row, another kind, another key, tampered or plain text: refused.
        assert!(sealer.open("task token", "tsk_b", &sealed).is_err());
        assert!(sealer.open("refresh token", "tsk_a", &sealed).is_err());
        assert!(
            Sealer::new([8; 32])
                .open("task token", "tsk_a", &sealed)
                .is_err()
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('0') { '1' } else { '0' });
        assert!(sealer.open("task token", "tsk_a", &tampered).is_err());
        assert!(sealer.open("task token", "tsk_a", "En0KEw...").is_err());
        // A fresh nonce each time.
        assert_ne!(sealed, sealer.seal("task token", "tsk_a", "En0KEw..."));
    }

    #[test]
    fn the_key_id_is_written_and_bound_and_a_foreign_key_is_named() {
        let sealer = Sealer::new([7; 32]);
        let other = Sealer::new([8; 32]);
        assert_ne!(sealer.key_id(), other.key_id());
        let sealed = sealer.seal("upstream refresh token", "con_1", "rt-secret");
        assert!(sealed.starts_with(&format!("sealed:v2:{}:", sealer.key_id())));
        // Sealed by another key: named as such.
        match other.open("upstream refresh token", "con_1", &sealed) {
            Err(SealError::OtherKey { kid, .. }) => assert_eq!(kid, sealer.key_id()),
            other => panic!("{other:?}"),
        }
        // Relabelled with the opener's key id: the associated data still refuses it.
        let relabelled = sealed.replacen(sealer.key_id(), other.key_id(), 1);
        assert!(matches!(
            other.open("upstream refresh token", "con_1", &relabelled),
            Err(SealError::DoesNotOpen(_))
        ));
    }

    #[test]
    fn values_sealed_before_key_ids_still_open() {
        // The first format, as an earlier release wrote it (associated data without key id).
        let key = [7; 32];
        let cipher = ChaCha20Poly1305::new(&Key::from(key));
        let nonce = [1u8; 12];
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: b"old-token",
                    aad: b"leash:task token:tsk_a",
                },
            )
            .unwrap();
        let stored = format!(
            "sealed:v1:{}{}",
            hex::encode(nonce),
            hex::encode(ciphertext)
        );
        assert_eq!(
            Sealer::new(key)
                .open("task token", "tsk_a", &stored)
                .unwrap(),
            "old-token"
        );
    }

    #[test]
    fn the_master_derived_key_differs_from_the_master_key() {
        let master = [9; 32];
        let sealed = Sealer::from_master(&master).seal("task token", "t", "v");
        assert!(
            Sealer::new(master)
                .open("task token", "t", &sealed)
                .is_err()
        );
        assert_eq!(
            Sealer::from_master(&master)
                .open("task token", "t", &sealed)
                .unwrap(),
            "v"
        );
    }
}
