//! Root signing keys: ed25519 key pairs, each with a root key id (`kid`); and the
//! forwarding key.
//!
//! The signing key is the one with the highest id; every key listed here verifies.
//! Verification chooses the key by the token's root key id and fails closed on an
//! unknown or missing id.
//!
//! The forwarding key is a separate key pair, one per deployment: the broker signs the
//! third-party block of every `Leash-Capability` it forwards with it, so tool servers can
//! tell a call the broker checked from a task token an agent sends them directly. It is
//! never a root key (a root key's authority block must not count as forwarded) and it
//! signs no token of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use biscuit_auth::{KeyPair, PrivateKey, PublicKey, builder::Algorithm, error};
use serde::{Deserialize, Serialize};

/// The broker's root keys. Replaceable in place ([`RootKeys::replace`]) when keys are
/// rotated or retired on another replica.
pub struct RootKeys {
    /// Every key that verifies, by root key id.
    keys: RwLock<BTreeMap<u32, Arc<KeyPair>>>,
}

/// One key as stored on disk (the file is mode 0600).
#[derive(Serialize, Deserialize)]
pub struct StoredKey {
    /// Root key id written into every token signed with this key.
    pub kid: u32,
    /// Always `ed25519`.
    pub algorithm: String,
    /// Hex of the 32-byte private key.
    pub private_key: String,
}

/// A public key as published at `/.well-known/leash/keys`.
#[derive(Serialize, Debug, Clone)]
pub struct PublishedKey {
    /// Root key id.
    pub kid: u32,
    /// Always `ed25519`.
    pub algorithm: &'static str,
    /// Biscuit's textual form, `ed25519/<hex>`.
    pub public_key: String,
}

/// Why a detached root-key signature ([`RootKeys::sign_detached`]) does not hold; each
/// caller words it for what was signed.
#[derive(Debug, PartialEq, Eq)]
pub enum DetachedSignatureError {
    /// No key with this id among the keys given.
    UnknownKey,
    /// The key with this id is not a usable Ed25519 key.
    NotEd25519,
    /// The signature is not 64 bytes of base64url.
    Malformed,
    /// A well-formed signature that does not verify over the bytes.
    Mismatch,
}

/// Checks a detached signature by root key `kid` over `bytes` (strict Ed25519: no
/// malleable or small-order forms).
pub fn verify_detached(
    keys: &BTreeMap<u32, PublicKey>,
    kid: u32,
    signature: &str,
    bytes: &[u8],
) -> Result<(), DetachedSignatureError> {
    let key = keys.get(&kid).ok_or(DetachedSignatureError::UnknownKey)?;
    let key: [u8; 32] = key
        .to_bytes()
        .try_into()
        .map_err(|_| DetachedSignatureError::NotEd25519)?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| DetachedSignatureError::NotEd25519)?;
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DetachedSignatureError::Malformed)?;
    key.verify_strict(bytes, &ed25519_dalek::Signature::from_bytes(&signature))
        .map_err(|_| DetachedSignatureError::Mismatch)
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The stored key material is not a valid key.
    #[error("root key {kid} is not a valid ed25519 private key")]
    Invalid {
        /// The offending key id.
        kid: u32,
    },
    /// No keys at all.
    #[error("no root key")]
    Empty,
    /// The stored forwarding key is not a valid key.
    #[error("the forwarding key is not a valid ed25519 private key")]
    InvalidForwarding,
}

impl RootKeys {
    /// A new key set with one fresh key of id 1.
    pub fn generate() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(1, Arc::new(KeyPair::new()));
        RootKeys {
            keys: RwLock::new(keys),
        }
    }

    /// Keys from their stored form.
    pub fn from_stored(stored: &[StoredKey]) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        for key in stored {
            let private = PrivateKey::from_bytes_hex(&key.private_key, Algorithm::Ed25519)
                .map_err(|_| KeyError::Invalid { kid: key.kid })?;
            keys.insert(key.kid, Arc::new(KeyPair::from(&private)));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(RootKeys {
            keys: RwLock::new(keys),
        })
    }

    /// The stored form of every key (secret material: write only to a 0600 file).
    pub fn to_stored(&self) -> Vec<StoredKey> {
        self.snapshot()
            .iter()
            .map(|(kid, pair)| StoredKey {
                kid: *kid,
                algorithm: "ed25519".into(),
                private_key: pair.private().to_bytes_hex(),
            })
            .collect()
    }

    /// A copy of the key map.
    fn snapshot(&self) -> BTreeMap<u32, Arc<KeyPair>> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// Replaces every key with `other`'s (rotation or retirement seen from the store).
    pub fn replace(&self, other: RootKeys) {
        let fresh = other.snapshot();
        if !fresh.is_empty()
            && let Ok(mut keys) = self.keys.write()
        {
            *keys = fresh;
        }
    }

    /// The signing key (the highest id) and its id.
    pub fn signing(&self) -> (u32, Arc<KeyPair>) {
        let keys = self.snapshot();
        let (kid, pair) = keys
            .iter()
            .next_back()
            .expect("RootKeys is never empty by construction");
        (*kid, pair.clone())
    }

    /// Signs `bytes` with the signing key: its id and the Ed25519 signature, base64url
    /// without padding (how checkpoints and evidence publish it).
    pub fn sign_detached(&self, bytes: &[u8]) -> anyhow::Result<(u32, String)> {
        let (kid, pair) = self.signing();
        let signature = pair
            .sign(bytes)
            .map_err(|err| anyhow::anyhow!("root key {kid} cannot sign: {err}"))?;
        Ok((kid, URL_SAFE_NO_PAD.encode(signature.to_bytes())))
    }

    /// The public key for a token's root key id; unknown or missing ids fail.
    pub fn public_for(&self, kid: Option<u32>) -> Result<PublicKey, error::Format> {
        let keys = self
            .keys
            .read()
            .map_err(|_| error::Format::UnknownPublicKey)?;
        kid.and_then(|kid| keys.get(&kid))
            .map(|pair| pair.public())
            .ok_or(error::Format::UnknownPublicKey)
    }

    /// Every public key by root key id (for checking audit checkpoints).
    pub fn public_keys(&self) -> BTreeMap<u32, PublicKey> {
        self.snapshot()
            .iter()
            .map(|(kid, pair)| (*kid, pair.public()))
            .collect()
    }

    /// Every public key, for publication.
    pub fn published(&self) -> Vec<PublishedKey> {
        self.snapshot()
            .iter()
            .map(|(kid, pair)| PublishedKey {
                kid: *kid,
                algorithm: "ed25519",
                public_key: pair.public().to_string(),
            })
            .collect()
    }
}

/// The deployment's forwarding key (see the module comment).
pub struct ForwardingKey {
    pair: KeyPair,
}

impl ForwardingKey {
    /// A fresh key.
    pub fn generate() -> Self {
        ForwardingKey {
            pair: KeyPair::new(),
        }
    }

    /// From the hex of its 32-byte private key.
    pub fn from_hex(private_hex: &str) -> Result<Self, KeyError> {
        let private = PrivateKey::from_bytes_hex(private_hex, Algorithm::Ed25519)
            .map_err(|_| KeyError::InvalidForwarding)?;
        Ok(ForwardingKey {
            pair: KeyPair::from(&private),
        })
    }

    /// Hex of the private key (secret material: a 0600 file or sealed only).
    pub fn to_hex(&self) -> String {
        self.pair.private().to_bytes_hex()
    }

    /// The key pair, for signing forwarded blocks.
    pub fn pair(&self) -> &KeyPair {
        &self.pair
    }

    /// Biscuit's textual form of the public key, `ed25519/<hex>`, for publication.
    pub fn published(&self) -> String {
        self.pair.public().to_string()
    }
}
