//! Delegation: an agent hands a sub-agent a token narrowed, offline, to one tool and one
//! argument prefix. The sub-agent's calls outside that are refused; revoking the child
//! token stops the sub-agent while the parent goes on; completing the task ends all.
//!
//! Run: `cargo run -p leash-examples --bin delegate` (credentials as in `agent`).

use leash_sdk::{Broker, Task, TaskRequest};
use serde_json::json;

#[path = "common.rs"]
mod common;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = common::broker_url();
    let credential = common::agent_credential(&url, "research-bot").await?;
    let parent = Broker::new(&url, credential)
        .start_task(TaskRequest::new("research, with a helper", ["notes.*"]))
        .await?;
    println!("parent task {}", parent.id());

    // Narrowed offline: no broker round trip, and it can only do less than the parent.
    let child_token = parent.attenuate(&[
        r#"check if call("notes.read")"#,
        r#"check if arg("path", $p), $p.starts_with("/notes/le")"#,
        "reject if token_calls($n), $n >= 5",
    ])?;
    let sub_agent = Task::from_token(&url, child_token.clone())?;

    let inside = sub_agent
        .call("notes.read", json!({"path": "/notes/leash"}))
        .await?;
    println!("sub-agent reads /notes/leash -> {inside}");
    for (tool, args) in [
        ("notes.read", json!({"path": "/notes/mcp"})),
        ("notes.search", json!({"query": "leash"})),
    ] {
        match sub_agent.call(tool, args.clone()).await {
            Err(err) => println!("sub-agent {tool} {args} is refused: {err}"),
            Ok(other) => anyhow::bail!("the narrowed token was not enforced: {other}"),
        }
    }

    parent.revoke_token(&child_token).await?;
    match sub_agent
        .call("notes.read", json!({"path": "/notes/leash"}))
        .await
    {
        Err(err) => println!("after revoking the child token: {err}"),
        Ok(other) => anyhow::bail!("a revoked child still worked: {other}"),
    }
    let still = parent
        .call("notes.search", json!({"query": "leash"}))
        .await?;
    println!("the parent goes on -> {still}");
    parent.complete().await?;
    println!("completed the parent task");
    Ok(())
}
