//! An agent's whole lifecycle with the SDK, against a running broker (README quickstart):
//! open a task, list and call tools, renew, complete — and see the token refused after.
//!
//! Run: `cargo run -p leash-examples --bin agent`
//! It uses `LEASH_AGENT_CREDENTIAL` if set; otherwise it mints a credential for
//! `research-bot` with the admin token (`LEASH_ADMIN_TOKEN`, or `./data/admin_token`).

use leash_sdk::{Broker, TaskRequest};
use serde_json::json;

#[path = "common.rs"]
mod common;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = common::broker_url();
    let credential = common::agent_credential(&url, "research-bot").await?;
    let broker = Broker::new(&url, credential);

    let task = broker
        .start_task(
            TaskRequest::new("find what the notes say about Biscuit", ["notes.*"]).ttl_seconds(300),
        )
        .await?;
    println!(
        "opened {} (until {})",
        task.id(),
        task.expires_at().unwrap_or("?")
    );
    let names: Vec<String> = task.tools().await?.iter().map(|t| t.name.clone()).collect();
    println!("may call: {}", names.join(", "));

    let hits = task
        .call("notes.search", json!({"query": "biscuit"}))
        .await?;
    println!("notes.search -> {hits}");
    let note = task
        .call("notes.read", json!({"path": "/notes/biscuit"}))
        .await?;
    println!("notes.read -> {note}");
    match task
        .call("notes.read", json!({"path": "../../etc/passwd"}))
        .await
    {
        Err(err) => println!("a path outside the schema is refused: {err}"),
        Ok(other) => anyhow::bail!("expected a refusal, got {other}"),
    }

    let mut task = task;
    task.renew(600).await?;
    println!("renewed until {}", task.expires_at().unwrap_or("?"));

    let guard = task.guard();
    let token = guard.token().to_string();
    guard.complete().await?;
    println!("completed");
    let after = leash_sdk::Task::from_token(&url, token)?;
    match after
        .call("notes.search", json!({"query": "biscuit"}))
        .await
    {
        Err(err) => println!("after completion the token is refused: {err}"),
        Ok(other) => anyhow::bail!("a completed task's token still worked: {other}"),
    }
    Ok(())
}
