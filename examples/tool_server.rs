//! A small HTTP tool server for the quickstart: the upstream behind Leash.
//!
//! Tools (each takes the JSON arguments Leash forwards):
//! - `POST /search` `{"query"}`: searches a small built-in corpus of notes;
//! - `POST /read` `{"path"}`: reads a note by path (`/notes/<name>`).
//!
//! Every call must carry two things, both put there by Leash:
//! - the upstream credential Leash injects (`Authorization: Bearer <key>`, the key from
//!   `--api-key` / `TOOL_API_KEY`, default `demo-upstream-key`), and
//! - a valid per-call capability (`Leash-Capability`) for that very tool, forwarded by Leash
//!   (its last block signed by the broker's forwarding key), verified offline by the SDK's
//!   [`Verifier`] against the broker's keys and revocation feed — one line per route. A
//!   task token sent here directly, skipping Leash, is refused (403); a revoked task is
//!   refused too, within the verifier's poll interval.
//!
//! Run (after the broker): `cargo run -p leash-examples --bin tool-server`
//! (listens on 127.0.0.1:9001, follows the broker at 127.0.0.1:7070).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use leash_sdk::{RequireCapability, Verifier};
use serde_json::{Value, json};

/// Command line of the example tool server.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// The credential Leash must present.
    #[arg(long, env = "TOOL_API_KEY", default_value = "demo-upstream-key")]
    api_key: String,
    /// The broker whose capabilities this server accepts.
    #[arg(long, env = "LEASH_URL", default_value = "http://127.0.0.1:7070")]
    broker: String,
}

const NOTES: &[(&str, &str)] = &[
    (
        "/notes/leash",
        "Leash issues task-bound Biscuit capabilities and revokes them when the task ends.",
    ),
    (
        "/notes/biscuit",
        "Biscuit tokens can be attenuated offline: a holder adds checks, never rights.",
    ),
    (
        "/notes/mcp",
        "The Model Context Protocol connects agents to tool servers.",
    ),
];

async fn search(
    State(key): State<Arc<String>>,
    headers: HeaderMap,
    Json(args): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Err(refused) = authorize(&key, &headers) {
        return refused;
    }
    let query = args["query"].as_str().unwrap_or("").to_lowercase();
    let hits: Vec<Value> = NOTES
        .iter()
        .filter(|(_, text)| !query.is_empty() && text.to_lowercase().contains(&query))
        .map(|(path, text)| json!({ "path": path, "snippet": text }))
        .collect();
    (
        StatusCode::OK,
        Json(json!({ "query": query, "hits": hits })),
    )
}

async fn read(
    State(key): State<Arc<String>>,
    headers: HeaderMap,
    Json(args): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Err(refused) = authorize(&key, &headers) {
        return refused;
    }
    let path = args["path"].as_str().unwrap_or("");
    match NOTES.iter().find(|(p, _)| *p == path) {
        Some((_, text)) => (StatusCode::OK, Json(json!({ "path": path, "text": text }))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no note at {path}") })),
        ),
    }
}

fn authorize(key: &str, headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    let expected = format!("Bearer {key}");
    match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(given) if given == expected => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "missing or wrong upstream credential" })),
        )),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let verifier = Verifier::connect(&args.broker)
        .await
        .map_err(|e| anyhow::anyhow!("cannot follow the broker at {}: {e}", args.broker))?;
    let app = Router::new()
        .route(
            "/search",
            post(search).layer(RequireCapability::new(verifier.clone(), "notes.search")),
        )
        .route(
            "/read",
            post(read).layer(RequireCapability::new(verifier.clone(), "notes.read")),
        )
        .with_state(Arc::new(args.api_key));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "example tool server listening on http://{} (capabilities of {})",
        listener.local_addr()?,
        args.broker
    );
    axum::serve(listener, app).await?;
    Ok(())
}
