//! `leash users add NAME [--approver]`: a local account, written straight into the
//! deployment's store (the broker need not be running; a running one sees it at once).

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::accounts::passwords::add_user;
use crate::cli::args::UsersCommand;
use crate::store::{PgStore, SqliteStore, Store};

/// Runs a `leash users` command.
pub async fn users(command: UsersCommand) -> anyhow::Result<ExitCode> {
    let UsersCommand::Add {
        name,
        approver,
        data,
        database_url,
        database_schema,
    } = command;
    let store: Arc<dyn Store> = match database_url.as_deref() {
        None => {
            std::fs::create_dir_all(&data)
                .with_context(|| format!("cannot create {}", data.display()))?;
            Arc::new(
                SqliteStore::open(&data.join(crate::datadir::DATABASE_FILE))
                    .await
                    .context("cannot open the SQLite database")?,
            )
        }
        Some(url) if url.starts_with("sqlite:") => Arc::new(SqliteStore::open_url(url).await?),
        Some(url) => Arc::new(
            PgStore::open(url, &database_schema)
                .await
                .context("cannot open the PostgreSQL database")?,
        ),
    };
    let stdin = std::io::stdin();
    let mut typed = String::new();
    if !stdin.is_terminal() {
        stdin
            .lock()
            .take(4096)
            .read_to_string(&mut typed)
            .context("cannot read the password from standard input")?;
    }
    let typed = typed.lines().next().unwrap_or("").to_string();
    let (password, generated) = if typed.is_empty() {
        (crate::ids::random_hex(16), true)
    } else {
        (typed, false)
    };
    let now = crate::clock::Clock::default().now_ms();
    add_user(store.as_ref(), &name, &password, approver, now).await?;
    let role = if approver { " (approver)" } else { "" };
    if generated {
        println!("added user {name}{role}; password (shown once): {password}");
    } else {
        println!("added user {name}{role}");
    }
    Ok(ExitCode::SUCCESS)
}
