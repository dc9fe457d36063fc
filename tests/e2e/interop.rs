//! Independent check: biscuit-python (PyPI; nobody here wrote it) verifies a task token
//! and a `Leash-Capability` header using only the published root key, and runs an
//! authorizer with the same facts and policy; and it sees the capability's last block
//! signed by the published forwarding key, which the raw task token lacks.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::TestBroker;

#[tokio::test]
async fn biscuit_python_verifies_task_tokens_and_forwarded_capabilities() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/interop-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (it installs biscuit-python)",
        python.display()
    );
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    let capability = broker
        .upstream
        .received
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .capability
        .clone()
        .expect("Leash-Capability sent upstream");

    let broker_url = broker.url.clone();
    let script = root.join("interop/verify_tokens.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([
                &broker_url,
                &token,
                &capability,
                "web.search",
                "fs.read",
                r#"{"query": "x"}"#,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("biscuit-python: {report:#}");

    let task = &report["task_token"];
    assert_eq!(task["verified"], true);
    assert_eq!(task["blocks"], 1);
    assert!(
        task["authority"]
            .as_str()
            .unwrap()
            .contains("tool(\"web.search\")")
    );
    assert_eq!(task["call"], "allowed");
    assert!(
        task["other_tool"].as_str().unwrap().starts_with("denied"),
        "{task}"
    );

    let cap = &report["capability"];
    assert_eq!(cap["verified"], true);
    assert_eq!(cap["blocks"], 2, "the task token plus the per-call block");
    assert_eq!(cap["call"], "allowed");
    assert!(
        cap["other_tool"].as_str().unwrap().starts_with("denied"),
        "{cap}"
    );
    // The capability derives from the task token: same authority block, same first id.
    assert_eq!(cap["revocation_ids"][0], task["revocation_ids"][0]);
    assert!(
        report["forged"].as_str().unwrap().starts_with("rejected"),
        "{report}"
    );

    // Forwarded by the broker: the last block is a third-party block signed by the
    // published forwarding key, and the tool server's check holds for the capability
    // only, and only for its tool.
    let published = broker.get("/.well-known/leash/keys", None).await.body["forwarding_key"]
        .as_str()
        .expect("the broker publishes its forwarding key")
        .to_string();
    assert_eq!(report["forwarding_key"], published.as_str());
    assert_eq!(
        cap["external_keys"],
        json!([null, published]),
        "the per-call block is signed by the forwarding key"
    );
    assert!(
        cap["last_block"]
            .as_str()
            .unwrap()
            .contains("forwarded(\"web.search\")"),
        "{cap}"
    );
    assert_eq!(task["external_keys"], json!([null]));
    assert_eq!(cap["forwarded_call"], "allowed", "{cap}");
    assert!(
        cap["forwarded_other_tool"]
            .as_str()
            .unwrap()
            .starts_with("denied"),
        "{cap}"
    );
    assert!(
        task["forwarded_call"]
            .as_str()
            .unwrap()
            .starts_with("denied"),
        "a raw task token is not forwarded: {task}"
    );
}
