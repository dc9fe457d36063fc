//! `leash serve`: configuration from the command line and the environment, then the
//! broker until SIGINT or SIGTERM.

use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::cli::args::ServeArgs;
use crate::cli::args::env;
use crate::datadir;

/// Starts the broker and serves until a shutdown signal.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let admin_token = env("LEASH_ADMIN_TOKEN").filter(|t| !t.is_empty());
    let generated = admin_token.is_none();
    let master_key = env("LEASH_MASTER_KEY").filter(|t| !t.is_empty());
    let mut config = args.into_config(admin_token, master_key);
    config.metrics_token = env("LEASH_METRICS_TOKEN").filter(|t| !t.is_empty());
    let state = crate::prepare(config.clone(), &env).await?;
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
    crate::run(state, listener, shutdown_signal()).await?;
    tracing::info!("leash stopped");
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
