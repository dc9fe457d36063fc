//! The data folder: created on first start, reused after.
//!
//! It holds `root_keys.json` (the root keys, mode 0600), `forwarding_key.json` (the key
//! forwarded capabilities are signed with, mode 0600), `seal.key` (the key that seals
//! secrets kept in the database, mode 0600), `admin_token` (mode 0600, only when
//! `LEASH_ADMIN_TOKEN` is unset) and `leash.db` (SQLite).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::ids::random_hex;
use crate::tokens::keys::{ForwardingKey, RootKeys, StoredKey};

/// File name of the root keys inside the data folder.
pub const ROOT_KEYS_FILE: &str = "root_keys.json";
/// File name of the forwarding key inside the data folder.
pub const FORWARDING_KEY_FILE: &str = "forwarding_key.json";
/// File name of the generated admin token inside the data folder.
pub const ADMIN_TOKEN_FILE: &str = "admin_token";
/// File name of the at-rest sealing key inside the data folder.
pub const SEAL_KEY_FILE: &str = "seal.key";
/// File name of the SQLite database inside the data folder.
pub const DATABASE_FILE: &str = "leash.db";

/// Creates the data folder (mode 0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Proves the data folder takes writes (a probe file is written, synced and removed), so
/// a read-only or full folder stops the start with a clear message instead of failing
/// requests later.
pub fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(".leash-write-check");
    let written = fs::write(&probe, b"ok").and_then(|()| fs::File::open(&probe)?.sync_all());
    let _ = fs::remove_file(&probe);
    written.with_context(|| {
        format!(
            "the data folder {} is not writable (read-only or full?): Leash keeps its database and keys there",
            dir.display()
        )
    })
}

/// Loads the root keys, or generates and saves them on first start.
pub fn load_or_create_keys(dir: &Path) -> anyhow::Result<RootKeys> {
    let path = dir.join(ROOT_KEYS_FILE);
    if path.exists() {
        check_private(&path)?;
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let stored: Vec<StoredKey> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid root key file", path.display()))?;
        return RootKeys::from_stored(&stored)
            .with_context(|| format!("{} holds an invalid key", path.display()));
    }
    let keys = RootKeys::generate();
    let text = serde_json::to_string_pretty(&keys.to_stored())?;
    write_private(&path, text.as_bytes())?;
    Ok(keys)
}

/// The key that seals secrets in the SQLite database (64 hex digits in `seal.key`),
/// generated on first start. Kept out of the database, so a copy of `leash.db` alone
/// yields no usable token.
pub fn load_or_create_seal_key(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = dir.join(SEAL_KEY_FILE);
    if path.exists() {
        check_private(&path)?;
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| anyhow::anyhow!("{} must hold 64 hex digits", path.display()))?;
        return Ok(key);
    }
    let text = random_hex(32);
    let mut key = [0u8; 32];
    hex::decode_to_slice(&text, &mut key).context("generated seal key")?;
    write_private(&path, text.as_bytes())?;
    Ok(key)
}

/// The forwarding key as stored on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredForwardingKey {
    /// Always `ed25519`.
    algorithm: String,
    /// Hex of the 32-byte private key.
    private_key: String,
}

/// Loads the forwarding key, or generates and saves it on first start.
pub fn load_or_create_forwarding_key(dir: &Path) -> anyhow::Result<ForwardingKey> {
    let path = dir.join(FORWARDING_KEY_FILE);
    if path.exists() {
        check_private(&path)?;
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let stored: StoredForwardingKey = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid forwarding key file", path.display()))?;
        return ForwardingKey::from_hex(&stored.private_key)
            .with_context(|| format!("{} holds an invalid key", path.display()));
    }
    let key = ForwardingKey::generate();
    let stored = StoredForwardingKey {
        algorithm: "ed25519".into(),
        private_key: key.to_hex(),
    };
    write_private(&path, serde_json::to_string_pretty(&stored)?.as_bytes())?;
    Ok(key)
}

/// The admin token: from `configured` (the environment) when given, else read from the
/// data folder, generated there on first start.
pub fn load_or_create_admin_token(dir: &Path, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(token) = configured {
        if token.len() < 16 {
            bail!("LEASH_ADMIN_TOKEN must be at least 16 characters long");
        }
        return Ok(token.to_string());
    }
    let path = admin_token_path(dir);
    if path.exists() {
        check_private(&path)?;
        let token =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let token = token.trim().to_string();
        if token.len() < 16 {
            bail!(
                "{} holds a token shorter than 16 characters",
                path.display()
            );
        }
        return Ok(token);
    }
    let token = format!("leash_admin_{}", random_hex(32));
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Where the generated admin token lives.
pub fn admin_token_path(dir: &Path) -> PathBuf {
    dir.join(ADMIN_TOKEN_FILE)
}

/// Writes a secret file readable by its owner only (0600), atomically.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Refuses a secret file that others can read.
fn check_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by other users (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_admin_token_persist_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let keys = load_or_create_keys(dir.path()).unwrap();
        let again = load_or_create_keys(dir.path()).unwrap();
        assert_eq!(
            keys.published()[0].public_key,
            again.published()[0].public_key
        );
        let token = load_or_create_admin_token(dir.path(), None).unwrap();
        assert_eq!(token, load_or_create_admin_token(dir.path(), None).unwrap());
        let forwarding = load_or_create_forwarding_key(dir.path()).unwrap();
        assert_eq!(
            forwarding.published(),
            load_or_create_forwarding_key(dir.path())
                .unwrap()
                .published()
        );
        assert_ne!(forwarding.published(), keys.published()[0].public_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [ROOT_KEYS_FILE, ADMIN_TOKEN_FILE, FORWARDING_KEY_FILE] {
                let mode = fs::metadata(dir.path().join(file))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{file}");
            }
        }
    }

    #[test]
    fn world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_keys(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(ROOT_KEYS_FILE);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create_keys(dir.path()).err().unwrap();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }
}
