//! The `leash` binary: parses the command line and calls the library.

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use leash_broker::cli::args::{
    AuditCommand, AuditVerifyArgs, Cli, Command, DatabaseArgs, KeysCommand, PolicyCommand,
    TokenCommand,
};
use leash_broker::{datadir, policy, store::SqliteStore};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Leash's clients carry their own provider (ring); this covers any other client.
    leash_sdk::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEASH_LOG")
                // rmcp logs three lines per request at info (FIELD-NOTES.md).
                .unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        // Every line is scrubbed of the secrets the policy expanded.
        .with_writer(leash_broker::logging::ScrubbedStderr)
        // Colour codes only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let admin_token = env("LEASH_ADMIN_TOKEN").filter(|t| !t.is_empty());
            let generated = admin_token.is_none();
            let master_key = env("LEASH_MASTER_KEY").filter(|t| !t.is_empty());
            let mut config = (*args).into_config(admin_token, master_key);
            config.metrics_token = env("LEASH_METRICS_TOKEN").filter(|t| !t.is_empty());
            let state = leash_broker::prepare(config.clone(), &env).await?;
            let listener = TcpListener::bind(config.listen).await?;
            let address = listener.local_addr()?;
            tracing::info!(
                %address,
                https = state.server_tls.is_some(),
                policies = %config.policies.display(),
                data = %config.data.display(),
                tools = state.policy.tools.len(),
                agents = state.policy.grants.len(),
                "leash is listening"
            );
            if generated {
                tracing::info!(
                    file = %datadir::admin_token_path(&config.data).display(),
                    "admin token is in this file (set LEASH_ADMIN_TOKEN to choose your own)"
                );
            }
            leash_broker::run(state, listener, shutdown_signal()).await?;
            tracing::info!("leash stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check { policies }) => {
            match policy::load_dir(&policies, &env) {
                Ok(policy) => {
                    println!(
                        "{}: ok ({} tools, {} agents)",
                        policies.display(),
                        policy.tools.len(),
                        policy.grants.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("{} mistake(s) found", errors.0.len());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Token(TokenCommand::Inspect { token, data }) => {
            let token = if token == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text.trim().to_string()
            } else {
                token
            };
            inspect(&token, &data)
        }
        Command::Audit(AuditCommand::Verify(args)) => verify_audit(args).await,
        Command::Keys(command) => keys(command).await,
    }
}

fn inspect(token: &str, data: &std::path::Path) -> anyhow::Result<ExitCode> {
    let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .map_err(|_| anyhow::anyhow!("not a valid Biscuit token"))?;
    println!("root key id: {:?}", unverified.root_key_id());
    for (index, id) in unverified.revocation_identifiers().iter().enumerate() {
        let source = unverified.print_block_source(index).unwrap_or_default();
        println!("block {index} (revocation id {}):", hex::encode(id));
        for line in source.lines() {
            println!("    {line}");
        }
    }
    if data.join(datadir::ROOT_KEYS_FILE).exists() {
        let keys = datadir::load_or_create_keys(data)?;
        match unverified.verify(|kid: Option<u32>| keys.public_for(kid)) {
            Ok(_) => println!("signature: valid (root keys of {})", data.display()),
            Err(err) => {
                println!("signature: INVALID ({err})");
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        println!(
            "signature: not checked (no root keys in {})",
            data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify_audit(args: AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    use leash_broker::audit::checkpoint::{read_file, verify_log};
    use leash_broker::store::{PgStore, Store};
    let (store, keys): (Box<dyn Store>, _) = match args.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let master = leash_broker::replica::sealed_keys::MasterKey::parse(
                &env("LEASH_MASTER_KEY").ok_or_else(|| {
                    anyhow::anyhow!(
                        "LEASH_MASTER_KEY is required: the root keys that signed the checkpoints are sealed with it"
                    )
                })?,
            )?;
            let store = PgStore::open_existing(url, &args.database_schema).await?;
            let keys =
                leash_broker::replica::sealed_keys::all_public_keys(store.pool(), &master).await?;
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
                "audit chain verifies: {} events, head {}",
                verified.head, verified.head_hash
            );
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
                    leash_broker::clock::rfc3339(latest.at_ms),
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

async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use leash_broker::replica::sealed_keys::{MasterKey, retire, rotate};
    let master = MasterKey::parse(
        &env("LEASH_MASTER_KEY").ok_or_else(|| anyhow::anyhow!("LEASH_MASTER_KEY is not set"))?,
    )?;
    let open = |db: &DatabaseArgs| {
        let (url, schema) = (db.database_url.clone(), db.database_schema.clone());
        let ca_bundle = db.ca_bundle.clone();
        async move {
            if let Some(bundle) = &ca_bundle {
                // The same check as `leash serve`: a bad bundle is named, not ignored.
                leash_broker::tls::ca_bundle(Some(bundle))?;
            }
            Ok::<_, anyhow::Error>(
                leash_broker::store::PgStore::open_with_ca(&url, &schema, ca_bundle.as_deref())
                    .await?,
            )
        }
    };
    let now = leash_broker::clock::Clock::default().now_ms();
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
