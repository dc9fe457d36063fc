//! The official MCP conformance suite's authorization-server scenarios
//! (`@modelcontextprotocol/conformance` 0.2.0-alpha.12, `conformance authorization`, pinned
//! in `tests/conformance/package-lock.json`) against Leash: its RFC 8414 metadata (PKCE
//! S256, issuer, client ID metadata documents) and a whole authorization-code grant with
//! PKCE and the RFC 8707 resource. `tests/conformance/drive.mjs` registers the suite's
//! client, runs the suite and plays the user's browser (sign-in and consent forms); it
//! fails on any check that does not pass unless `tests/conformance/expected-failures.yml`
//! lists it with its reason, and on a listed check that passes now.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::common::TestBroker;

const POLICY: &str = r#"
[tools."web.search"]
description = "Search the web"
upstream = "http://{UP}/search"
input_schema = { type = "object" }

[users.alice]
tools = ["web.search"]
max_ttl_seconds = 3600
"#;

const ALICE_PASSWORD: &str = "alice-Pa55word-for-the-conformance-suite";

/// The status of the check `id` in drive.mjs's report, if it ran.
fn status_of<'a>(report: &'a Value, id: &str) -> Option<&'a str> {
    report["checks"]
        .as_array()?
        .iter()
        .find(|check| check["id"] == id)
        .and_then(|check| check["status"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_conformance_suite_passes_leash_as_an_authorization_server() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let suite = root.join("conformance");
    assert!(
        suite
            .join("node_modules/@modelcontextprotocol/conformance")
            .exists(),
        "the MCP conformance suite is missing: run scripts/test.sh (it installs it)"
    );

    let broker = TestBroker::spawn_with(POLICY).await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .expect("alice added");

    let mut drive = Command::new("node");
    drive
        .arg(suite.join("drive.mjs"))
        .arg(&broker.url)
        .arg("alice")
        .arg(ALICE_PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), drive.output())
        .await
        .expect("the conformance suite did not finish in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("drive.mjs printed no JSON report: {stdout}"));
    assert!(
        out.status.success() && report["ok"] == true,
        "the conformance suite failed ({}): {report:#}",
        out.status
    );

    // Whatever expected-failures.yml says, the metadata and the code grant themselves
    // must pass: the grant really ran, through Leash's forms, up to the token response.
    assert_eq!(
        status_of(&report, "authorization-server-metadata"),
        Some("SUCCESS"),
        "{report:#}"
    );
    assert_eq!(
        status_of(&report, "authorization-code-grant"),
        Some("SUCCESS"),
        "{report:#}"
    );

    // The grant is a task of the suite's client for alice, as an approver sees it.
    let client_id = report["client_id"]
        .as_str()
        .expect("client_id in the report");
    let approver = broker.approver("ann").await;
    let listed = broker.get("/v1/tasks?state=active", Some(&approver)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let agent = format!("client:{client_id}");
    let tasks: Vec<&Value> = listed.body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|task| task["agent"] == agent.as_str())
        .collect();
    assert_eq!(tasks.len(), 1, "{listed:?}");
    assert_eq!(tasks[0]["user"], "alice", "{listed:?}");
    assert_eq!(
        tasks[0]["tools"],
        serde_json::json!(["web.search"]),
        "{listed:?}"
    );
}
