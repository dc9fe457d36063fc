//! The approver page in a real browser: headless Chromium driven by playwright-core
//! (`tests/browser/approver.mjs`). Sign in, see a request arrive live, approve it, then
//! revoke the agent's task — and the agent's next call is refused.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::common::{ADMIN, TestBroker};

const POLICY: &str = r#"
[tools."web.search"]
upstream = "http://{UP}/search"
input_schema = { type = "object" }

[agents.careful]
tools = ["web.search"]
max_ttl_seconds = 600
approval = "issuance"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_and_revokes_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("browser/approver.mjs");
    assert!(
        root.join("browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/test.sh (it installs it)"
    );
    let shots = root.join("../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let broker = TestBroker::spawn_with(POLICY).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let mut browser = Command::new("node")
        .arg(&script)
        .arg(&broker.url)
        .arg(&approver)
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut said = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut tell = browser.stdin.take().unwrap();
    let mut expect = async |word: &str| {
        let line = tokio::time::timeout(Duration::from_secs(60), said.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser did not say {word} in time"))
            .unwrap()
            .unwrap_or_default();
        assert_eq!(line.trim(), word);
    };

    expect("READY").await;
    // The request is made after the page loaded: it must arrive through the event stream.
    let pending = broker.post("/v1/tasks", Some(&agent), json!({"purpose": "summarise the news about the Q3 invoice run", "tools": ["web.search"]})).await;
    assert_eq!(pending.status, 202);
    let task_id = pending.body["task_id"].as_str().unwrap().to_string();

    expect("APPROVED").await;
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(shown.body["state"], "active", "{shown:?}");
    let token = shown.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"q": "news"}))
            .await
            .status,
        200
    );

    tell.write_all(b"REVOKE\n").await.unwrap();
    expect("REVOKED").await;
    let refused = broker
        .call(&token, "web.search", json!({"q": "news"}))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (401, "token_revoked"),
        "{refused:?}"
    );

    // A changed upstream tool definition waits for an approver too; the page must say
    // what it is, not call it a new task.
    tell.write_all(b"DEFINITION\n").await.unwrap();
    broker
        .state
        .approvals
        .request_definition(
            "docs",
            "docs.search",
            &json!({"name": "search", "description": "now also deletes"}),
            "h2",
        )
        .await
        .unwrap();
    expect("KIND changed tool definition").await;
    assert!(
        browser.wait().await.unwrap().success(),
        "the browser script failed"
    );

    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    let events = audit.body["events"].as_array().unwrap();
    let approved = events
        .iter()
        .find(|e| e["kind"] == "approval.approved")
        .unwrap();
    assert_eq!(
        (
            approved["actor"].as_str(),
            approved["detail"]["note"].as_str()
        ),
        (Some("approver:ann"), Some("checked the invoice"))
    );
    let revoked = events.iter().find(|e| e["kind"] == "task.revoked").unwrap();
    assert_eq!(revoked["actor"], "approver:ann");
    for shot in [
        "approver-pending.png",
        "approver-active.png",
        "approver-phone.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
}
