//! The `leash` command line: [`main`] parses it and runs one command — `serve`, or one
//! of the operator commands (`policy check`, `token inspect`, `audit verify`, `evidence
//! verify`, `keys`, `users add`).
//! The binary is one line calling [`main`].

pub mod args;
mod audit;
mod evidence;
mod inspect;
mod keys;
mod serve;
mod users;

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::args::{
    AuditCommand, Cli, Command, EvidenceCommand, PolicyCommand, TokenCommand, env,
};

/// The whole `leash` command: parses the command line, sets up logging, runs the command.
pub fn main() -> ExitCode {
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
        .with_writer(crate::logging::ScrubbedStderr)
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

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve::serve(*args).await,
        Command::Policy(PolicyCommand::Check { policies }) => {
            match crate::policy::load_dir(&policies, &env) {
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
            inspect::inspect(&token, &data)
        }
        Command::Audit(AuditCommand::Verify(args)) => audit::verify_audit(args).await,
        Command::Evidence(EvidenceCommand::Verify { file, keys }) => {
            evidence::verify(&file, &keys).await
        }
        Command::Keys(command) => keys::keys(command).await,
        Command::Users(command) => users::users(command).await,
    }
}
