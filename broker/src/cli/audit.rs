//! `leash audit verify`: walks the audit chain and its signed checkpoints (and an
//! optional checkpoint file), naming the first row that does not match.

use std::process::ExitCode;

use crate::cli::args::AuditVerifyArgs;
use crate::cli::args::env;
use crate::datadir;
use crate::store::SqliteStore;

/// Verifies the audit log of a data folder or database.
pub async fn verify_audit(args: AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    use crate::audit::checkpoint::{read_file, verify_log};
    use crate::store::{PgStore, Store};
    let (store, keys): (Box<dyn Store>, _) = match args.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let master = crate::replica::sealed_keys::MasterKey::parse(
                &env("LEASH_MASTER_KEY").ok_or_else(|| {
                    anyhow::anyhow!(
                        "LEASH_MASTER_KEY is required: the root keys that signed the checkpoints are sealed with it"
                    )
                })?,
            )?;
            let store = PgStore::open_existing(url, &args.database_schema).await?;
            let keys = crate::replica::sealed_keys::all_public_keys(store.pool(), &master).await?;
            (Box::new(store), keys)
        }
        Some(url) if url.starts_with("sqlite:") => (
            Box::new(SqliteStore::open_url(url).await?),
            sqlite_public_keys(&args.data)?,
        ),
        Some(_) => anyhow::bail!("--database-url must start with sqlite: or postgres://"),
        None => {
            let path = args.data.join(datadir::DATABASE_FILE);
            if !path.exists() {
                anyhow::bail!("no database at {}", path.display());
            }
            (
                Box::new(SqliteStore::open(&path).await?),
                sqlite_public_keys(&args.data)?,
            )
        }
    };
    let file = match &args.checkpoints {
        Some(path) => read_file(path)?,
        None => Vec::new(),
    };
    match verify_log(store.as_ref(), &file, &keys).await? {
        Ok(verified) => {
            println!(
                "audit chain verifies: through seq {}, head {}",
                verified.head, verified.head_hash
            );
            if let Some(pruned) = verified.pruned_through {
                println!(
                    "rows 1 to {pruned} were pruned for retention; the signed checkpoint at seq {pruned} anchors the rest"
                );
            }
            match &verified.latest {
                Some(latest) => println!(
                    "{} checkpoint(s) verify{}; the latest covers seq {} (signed {} by root key {})",
                    verified.checkpoints,
                    if args.checkpoints.is_some() {
                        ", the file's included"
                    } else {
                        ""
                    },
                    latest.seq,
                    crate::clock::rfc3339(latest.at_ms),
                    latest.kid
                ),
                None => println!(
                    "no checkpoint yet: the deletion of the newest rows could not be detected"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            eprintln!("{problem}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The root public keys of a data folder (never creates keys).
fn sqlite_public_keys(
    data: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<u32, biscuit_auth::PublicKey>> {
    if !data.join(datadir::ROOT_KEYS_FILE).exists() {
        // Without keys no checkpoint verifies: each one is then reported as unknown.
        return Ok(Default::default());
    }
    Ok(datadir::load_or_create_keys(data)?.public_keys())
}
