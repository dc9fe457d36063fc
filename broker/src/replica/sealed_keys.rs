//! Root keys in PostgreSQL, sealed: each private key is encrypted (ChaCha20-Poly1305,
//! the key id as associated data) with the key-encryption key every replica gets from
//! `LEASH_MASTER_KEY`. A database dump alone cannot mint tokens; a replica without the
//! master key, or with another one, refuses to start.
//!
//! Rotation adds a key with the next id (new tokens use it; old ones verify until they
//! expire); retirement ends a key everywhere. Both announce `keys` to every replica.
//!
//! The forwarding key lives beside them (table `forwarding_key`, one row), sealed the
//! same way with `forwarding` as associated data, so every replica signs forwarded
//! capabilities with the same key and a sealed root key cannot be passed off as it.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use biscuit_auth::builder::Algorithm;
use biscuit_auth::{KeyPair, PrivateKey, PublicKey};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sqlx::{PgPool, Row};

use crate::tokens::keys::{ForwardingKey, RootKeys, StoredKey};

/// Associated data of the sealed forwarding key (root keys use their key id).
const FORWARDING_AAD: &str = "forwarding";

/// A 32-byte key-encryption key.
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// From `LEASH_MASTER_KEY`: 64 hex digits (generate one with `openssl rand -hex 32`).
    pub fn parse(text: &str) -> anyhow::Result<MasterKey> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| anyhow::anyhow!("LEASH_MASTER_KEY must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`"))?;
        Ok(MasterKey(key))
    }

    /// The at-rest sealer of this deployment (a key derived from this one).
    pub fn sealer(&self) -> crate::tokens::seal::Sealer {
        crate::tokens::seal::Sealer::from_master(&self.0)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(self.0))
    }

    /// Seals a private key (hex) for key id `kid`: hex of nonce ‖ ciphertext.
    fn seal(&self, kid: u32, private_hex: &str) -> anyhow::Result<String> {
        self.seal_as(&kid.to_string(), &format!("root key {kid}"), private_hex)
    }

    fn open(&self, kid: u32, sealed: &str) -> anyhow::Result<String> {
        self.open_as(&kid.to_string(), &format!("root key {kid}"), sealed)
    }

    /// Seals `private_hex` bound to `aad`; `what` names it in errors.
    fn seal_as(&self, aad: &str, what: &str, private_hex: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: private_hex.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing {what} failed"))?;
        Ok(format!("{}{}", hex::encode(nonce), hex::encode(sealed)))
    }

    fn open_as(&self, aad: &str, what: &str, sealed: &str) -> anyhow::Result<String> {
        let bytes = hex::decode(sealed).with_context(|| format!("{what} is not sealed data"))?;
        if bytes.len() < 12 + 16 {
            bail!("{what} is truncated");
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().context("sealed key nonce")?;
        let plain = self
            .cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "LEASH_MASTER_KEY does not open {what} in the database (wrong master key?)"
                )
            })?;
        String::from_utf8(plain).with_context(|| format!("{what} plaintext"))
    }
}

/// The deployment's forwarding key; creates it if there is none yet (the first replica
/// to start wins; the others read its key).
pub async fn load_or_create_forwarding(
    pool: &PgPool,
    master: &MasterKey,
    now_ms: i64,
) -> anyhow::Result<ForwardingKey> {
    if let Some(key) = load_forwarding(pool, master).await? {
        return Ok(key);
    }
    let fresh = ForwardingKey::generate();
    sqlx::query(
        "INSERT INTO forwarding_key (id, sealed, created_at_ms) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(master.seal_as(FORWARDING_AAD, "the forwarding key", &fresh.to_hex())?)
    .bind(now_ms)
    .execute(pool)
    .await?;
    load_forwarding(pool, master)
        .await?
        .context("no forwarding key after creating one")
}

async fn load_forwarding(
    pool: &PgPool,
    master: &MasterKey,
) -> anyhow::Result<Option<ForwardingKey>> {
    let Some(row) = sqlx::query("SELECT sealed FROM forwarding_key WHERE id = 1")
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let sealed: String = row.try_get("sealed")?;
    let private = master.open_as(FORWARDING_AAD, "the forwarding key", &sealed)?;
    Ok(Some(ForwardingKey::from_hex(&private)?))
}

/// The live (not retired) root keys; creates key 1 if there is none yet.
pub async fn load_or_create(
    pool: &PgPool,
    master: &MasterKey,
    now_ms: i64,
) -> anyhow::Result<RootKeys> {
    let keys = load(pool, master).await?;
    if let Some(keys) = keys {
        return Ok(keys);
    }
    let private = KeyPair::new().private().to_bytes_hex();
    sqlx::query("INSERT INTO root_keys (kid, sealed, created_at_ms) VALUES (1, $1, $2) ON CONFLICT (kid) DO NOTHING")
        .bind(master.seal(1, &private)?)
        .bind(now_ms)
        .execute(pool)
        .await?;
    // Another replica may have won the race: read what is there.
    load(pool, master)
        .await?
        .context("no root key after creating one")
}

/// The live root keys, or `None` if the table is empty.
pub async fn load(pool: &PgPool, master: &MasterKey) -> anyhow::Result<Option<RootKeys>> {
    let rows =
        sqlx::query("SELECT kid, sealed FROM root_keys WHERE retired_at_ms IS NULL ORDER BY kid")
            .fetch_all(pool)
            .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut stored = Vec::new();
    for row in rows {
        let kid: i64 = row.try_get("kid")?;
        let kid = u32::try_from(kid).context("root key id out of range")?;
        let sealed: String = row.try_get("sealed")?;
        let private_key = master.open(kid, &sealed)?;
        PrivateKey::from_bytes_hex(&private_key, Algorithm::Ed25519)
            .map_err(|_| anyhow::anyhow!("root key {kid} is not an ed25519 key"))?;
        stored.push(StoredKey {
            kid,
            algorithm: "ed25519".into(),
            private_key,
        });
    }
    Ok(Some(RootKeys::from_stored(&stored)?))
}

/// The public half of every root key, retired ones included: a checkpoint signed before a
/// key was retired still proves what the audit log held then. Opening each sealed key
/// with the master key is what makes the public keys trustworthy: someone who can only
/// write to the database cannot put a key of their own there.
pub async fn all_public_keys(
    pool: &PgPool,
    master: &MasterKey,
) -> anyhow::Result<BTreeMap<u32, PublicKey>> {
    let rows = sqlx::query("SELECT kid, sealed FROM root_keys ORDER BY kid")
        .fetch_all(pool)
        .await?;
    let mut keys = BTreeMap::new();
    for row in rows {
        let kid: i64 = row.try_get("kid")?;
        let kid = u32::try_from(kid).context("root key id out of range")?;
        let sealed: String = row.try_get("sealed")?;
        let private = PrivateKey::from_bytes_hex(&master.open(kid, &sealed)?, Algorithm::Ed25519)
            .map_err(|_| anyhow::anyhow!("root key {kid} is not an ed25519 key"))?;
        keys.insert(kid, KeyPair::from(&private).public());
    }
    Ok(keys)
}

/// Adds a key with the next id; returns it. Replicas learn it through `keys`.
pub async fn rotate(
    pool: &PgPool,
    channel: &str,
    master: &MasterKey,
    now_ms: i64,
) -> anyhow::Result<u32> {
    load(pool, master)
        .await?
        .context("there is no root key to rotate from yet: start a broker first")?;
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE root_keys IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let next: i64 = sqlx::query("SELECT COALESCE(MAX(kid), 0) + 1 AS next FROM root_keys")
        .fetch_one(&mut *tx)
        .await?
        .try_get("next")?;
    let kid = u32::try_from(next).context("root key ids exhausted")?;
    let private = KeyPair::new().private().to_bytes_hex();
    sqlx::query("INSERT INTO root_keys (kid, sealed, created_at_ms) VALUES ($1, $2, $3)")
        .bind(next)
        .bind(master.seal(kid, &private)?)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, 'keys')")
        .bind(channel)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(kid)
}

/// Retires a key everywhere: tokens signed with it stop verifying. The last live key
/// cannot be retired.
pub async fn retire(pool: &PgPool, channel: &str, kid: u32, now_ms: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE root_keys IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let live: i64 = sqlx::query("SELECT COUNT(*) AS n FROM root_keys WHERE retired_at_ms IS NULL")
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
    let changed = sqlx::query(
        "UPDATE root_keys SET retired_at_ms = $1 WHERE kid = $2 AND retired_at_ms IS NULL",
    )
    .bind(now_ms)
    .bind(i64::from(kid))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        bail!("no live root key {kid}");
    }
    if live <= 1 {
        bail!("root key {kid} is the last live key; rotate first");
    }
    sqlx::query("SELECT pg_notify($1, 'keys')")
        .bind(channel)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_binds_the_key_id_and_needs_the_master_key() {
        let master = MasterKey::parse(&"11".repeat(32)).unwrap();
        let sealed = master.seal(3, "abcd").unwrap();
        assert_eq!(master.open(3, &sealed).unwrap(), "abcd");
        assert!(master.open(4, &sealed).is_err(), "moved to another id");
        let other = MasterKey::parse(&"22".repeat(32)).unwrap();
        assert!(
            other
                .open(3, &sealed)
                .unwrap_err()
                .to_string()
                .contains("wrong master key")
        );
        assert!(MasterKey::parse("short").is_err());
        let forwarding = master
            .seal_as(FORWARDING_AAD, "the forwarding key", "abcd")
            .unwrap();
        assert!(
            master.open(1, &forwarding).is_err(),
            "a sealed forwarding key is no root key"
        );
        assert!(
            master
                .open_as(FORWARDING_AAD, "the forwarding key", &sealed)
                .is_err(),
            "a sealed root key is no forwarding key"
        );
    }
}
