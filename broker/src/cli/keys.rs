//! `leash keys rotate|retire`: root keys of a PostgreSQL deployment.

use std::process::ExitCode;

use crate::cli::args::env;
use crate::cli::args::{DatabaseArgs, KeysCommand};

/// Rotates or retires a root key.
pub async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use crate::replica::sealed_keys::{MasterKey, retire, rotate};
    let master = MasterKey::parse(
        &env("LEASH_MASTER_KEY").ok_or_else(|| anyhow::anyhow!("LEASH_MASTER_KEY is not set"))?,
    )?;
    let open = |db: &DatabaseArgs| {
        let (url, schema) = (db.database_url.clone(), db.database_schema.clone());
        let ca_bundle = db.ca_bundle.clone();
        async move {
            if let Some(bundle) = &ca_bundle {
                // The same check as `leash serve`: a bad bundle is named, not ignored.
                crate::tls::ca_bundle(Some(bundle))?;
            }
            Ok::<_, anyhow::Error>(
                crate::store::PgStore::open_with_ca(&url, &schema, ca_bundle.as_deref()).await?,
            )
        }
    };
    let now = crate::clock::Clock::default().now_ms();
    match command {
        KeysCommand::Rotate(db) => {
            let store = open(&db).await?;
            let kid = rotate(store.pool(), store.channel(), &master, now).await?;
            println!("added root key {kid}; new tokens are signed with it");
        }
        KeysCommand::Retire { kid, database } => {
            let store = open(&database).await?;
            retire(store.pool(), store.channel(), kid, now).await?;
            println!("retired root key {kid}; tokens signed with it no longer verify");
        }
    }
    Ok(ExitCode::SUCCESS)
}
