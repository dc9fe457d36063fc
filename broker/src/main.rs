//! The `leash` binary: parses the command line and calls the library.

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use leash_broker::config::{
    AuditCommand, Cli, Command, DatabaseArgs, KeysCommand, PolicyCommand, TokenCommand,
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
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
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
        Command::Audit(AuditCommand::Verify { data }) => verify_audit(&data).await,
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

async fn verify_audit(data: &std::path::Path) -> anyhow::Result<ExitCode> {
    use leash_broker::store::Store;
    let path = data.join(datadir::DATABASE_FILE);
    if !path.exists() {
        anyhow::bail!("no database at {}", path.display());
    }
    let store = SqliteStore::open(&path).await?;
    let mut head: (i64, String) = (0, String::new());
    loop {
        let rows = store.audit_after(head.0, 5000).await?;
        if rows.is_empty() {
            break;
        }
        match leash_broker::audit::verify_chain((head.0, &head.1), &rows) {
            Ok(next) => head = next,
            Err(broken) => {
                eprintln!("{broken}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    println!("audit chain verifies: {} events, head {}", head.0, head.1);
    Ok(ExitCode::SUCCESS)
}

async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use leash_broker::sealed_keys::{MasterKey, retire, rotate};
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
