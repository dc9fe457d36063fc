//! The OpenAPI contract: `/openapi.json` describes the API, and schemathesis (PyPI;
//! nobody here wrote it) attacks a running broker with generated requests for every
//! role, checking each answer against the document: no server error, no status,
//! content type, header or body the document does not allow.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::{ADMIN, TestBroker};

#[tokio::test]
async fn the_document_is_openapi_3_1_and_covers_the_api() {
    let broker = TestBroker::spawn().await;
    let reply = broker.get("/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    let doc = reply.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/tasks", "post"),
        ("/v1/tasks/{id}", "get"),
        ("/v1/tasks/{id}/complete", "post"),
        ("/v1/tools", "get"),
        ("/v1/tools/{tool}/call", "post"),
        ("/v1/tokens/revoke", "post"),
        ("/v1/revocations", "get"),
        ("/v1/approvals/{id}/approve", "post"),
        ("/v1/agents/{agent}/revoke", "post"),
        ("/.well-known/leash/keys", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        // Every error answer is the documented error object.
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for role in ["admin", "approver", "agent", "task"] {
        assert_eq!(schemes[role]["scheme"], "bearer", "{role}");
    }
}

/// One schemathesis run: its exit status, the cases it generated, and its output.
async fn schemathesis(url: &str, bearer: Option<&str>, seed: &str) -> (bool, u64, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/interop-venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test.sh (it installs schemathesis)",
        bin.display()
    );
    let report = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(bin);
    command
        .current_dir(report.path())
        .arg("--config-file")
        .arg(root.join("tests/openapi/schemathesis.toml"))
        .args([
            "run",
            &format!("{url}/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            // An endless event stream: tested by the approvals and browser tests.
            "--exclude-path",
            "/v1/events",
            "--max-examples",
            "40",
            "--seed",
            seed,
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            "--no-color",
            // One worker: hypothesis' lambda descriptions are not thread-safe on
            // CPython 3.11 ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
        ]);
    if let Some(bearer) = bearer {
        command.args(["-H", &format!("Authorization: Bearer {bearer}")]);
    }
    let output = command.output().await.expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // "Test cases:\n  1028 generated, 1028 passed"
    let generated = text
        .lines()
        .skip_while(|line| !line.starts_with("Test cases:"))
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (output.status.success(), generated, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contract_break_for_any_role() {
    let broker = TestBroker::spawn().await;
    let seed = std::env::var("LEASH_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261123".into());
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (_, task) = broker.task(&agent, &["web.search", "fs.read"]).await;
    // The admin goes last: it may revoke what the other roles hold.
    let roles: [(&str, Option<&str>); 5] = [
        ("anonymous", None),
        ("task token", Some(&task)),
        ("agent", Some(&agent)),
        ("approver", Some(&approver)),
        ("admin", Some(ADMIN)),
    ];
    let mut total = 0;
    for (role, bearer) in roles {
        let (passed, generated, output) = schemathesis(&broker.url, bearer, &seed).await;
        println!("schemathesis as {role}: {generated} cases (seed {seed})");
        assert!(passed, "schemathesis as {role} found problems:\n{output}");
        assert!(generated > 200, "too few cases as {role}:\n{output}");
        total += generated;
    }
    println!("schemathesis: {total} cases over 5 roles, 0 failures");
    let health: Value = broker.get("/healthz", None).await.body;
    assert_eq!(health["status"], "ok");
}
