//! The approver page in a real browser: headless Chromium driven by playwright-core
//! (`tests/browser/approver.mjs`). Sign in, see a request arrive live, approve it, then
//! revoke the agent's task — and the agent's next call is refused.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::common::{ADMIN, LineScript, TestBroker};

const POLICY: &str = r#"
[tools."web.search"]
upstream = "http://{UP}/search"
input_schema = { type = "object" }

[agents.careful]
tools = ["web.search"]
max_ttl_seconds = 600
approval = "issuance"
"#;

/// A playwright-core script of `tests/browser` driving headless Chromium on the approver
/// page as `approver`, told what to do a line at a time; its screenshots go to
/// [`shots`].
fn page_script(script: &str, broker: &TestBroker, approver: &str) -> LineScript {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/test.sh (it installs it)"
    );
    std::fs::create_dir_all(shots()).unwrap();
    let args = [
        broker.url.clone(),
        approver.to_string(),
        shots().display().to_string(),
    ];
    LineScript::spawn(Path::new("node"), &root.join("browser").join(script), &args)
}

/// Where the page scripts leave their screenshots.
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_and_revokes_in_headless_chromium() {
    let broker = TestBroker::spawn_with(POLICY).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let mut page = page_script("approver.mjs", &broker, &approver);

    page.expect_line("READY").await;
    // The request is made after the page loaded: it must arrive through the event stream.
    let pending = broker.post("/v1/tasks", Some(&agent), json!({"purpose": "summarise the news about the Q3 invoice run", "tools": ["web.search"]})).await;
    assert_eq!(pending.status, 202);
    let task_id = pending.body["task_id"].as_str().unwrap().to_string();

    page.expect_line("APPROVED").await;
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

    page.tell("REVOKE").await;
    page.expect_line("REVOKED").await;
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
    page.tell("DEFINITION").await;
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
    page.expect_line("KIND changed tool definition").await;
    page.finished().await;

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
        assert!(shots().join(shot).exists(), "{shot}");
    }
}

const TIMELINE_POLICY: &str = r#"
[tools."web.search"]
upstream = "http://{UP}/search"
input_schema = { type = "object" }

[tools."vault.login"]
upstream = "http://{UP}/login"
input_schema = { type = "object", properties = { user = { type = "string" }, password = { type = "string", writeOnly = true } } }

[agents.worker]
tools = ["web.search", "vault.login"]
max_ttl_seconds = 600
"#;

/// An approver watches a task's timeline fill up live while the agent works, sees a
/// `writeOnly` argument masked, revokes the task from the timeline — the agent's next
/// call is refused — and prints its signed evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_watches_a_task_timeline_live_and_revokes_it_there() {
    let broker = TestBroker::spawn_with(TIMELINE_POLICY).await;
    let agent = broker.agent("worker").await;
    let approver = broker.approver("ann").await;
    let mut page = page_script("timeline.mjs", &broker, &approver);

    page.expect_line("READY").await;
    let opened = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "Summarise the quarterly report and file it in the vault", "tools": ["web.search", "vault.login"]}),
        )
        .await;
    assert_eq!(opened.status, 201, "{opened:?}");
    let task_id = opened.body["task_id"].as_str().unwrap().to_string();
    let token = opened.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"q": "first"}))
            .await
            .status,
        200
    );
    broker.state.audit.flush().await;
    page.tell(&format!("OPEN {task_id}")).await;
    page.expect_line("OPENED").await;

    // Made while the approver watches: they must arrive through the event stream.
    let secret = "hunter2-correct-horse";
    let login = broker
        .call(
            &token,
            "vault.login",
            json!({"user": "ada", "password": secret}),
        )
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    let unknown = broker.call(&token, "web.nothing", json!({})).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        broker
            .call(
                &token,
                "web.search",
                json!({"q": "quarterly report \u{202E}fdp.exe"})
            )
            .await
            .status,
        200
    );
    page.tell("EXPECT 4").await;
    let seen: serde_json::Value = serde_json::from_str(&page.expect("SEEN").await).unwrap();
    let text = seen["text"].as_str().unwrap();
    assert!(
        !text.contains(secret),
        "the password is on the page: {text}"
    );
    assert!(
        !text.contains('\u{202E}'),
        "a right-to-left override from the agent is shown, not applied"
    );
    let args: Vec<&str> = seen["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.iter()
            .any(|a| a.contains("\"[writeOnly]\"") && a.contains("\"ada\"")),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a.contains("quarterly report")),
        "{args:?}"
    );
    assert_eq!(
        seen["kinds"],
        json!([
            "task.issued",
            "call.allowed",
            "call.allowed",
            "call.denied",
            "call.allowed"
        ])
    );

    page.tell("REVOKE").await;
    page.expect_line("REVOKED").await;
    let refused = broker
        .call(&token, "web.search", json!({"q": "after"}))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (401, "token_revoked"),
        "{refused:?}"
    );

    page.tell("EVIDENCE").await;
    let printed: serde_json::Value = serde_json::from_str(&page.expect("EVIDENCE").await).unwrap();
    assert!(printed["rows"].as_u64().unwrap() >= 6, "{printed}");
    assert_eq!(printed["searchShown"], false, "only the evidence prints");
    assert_eq!(printed["violations"], json!([]), "the page broke its CSP");
    let facts = printed["facts"].as_str().unwrap();
    assert!(facts.contains("3 allowed, 1 refused, 0 held"), "{facts}");
    page.finished().await;

    // Nothing kept holds the password: not the audit rows, not the evidence.
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    assert!(!audit.body.to_string().contains(secret));
    let evidence = broker
        .get(&format!("/v1/tasks/{task_id}/evidence"), Some(&approver))
        .await;
    assert_eq!(evidence.status, 200);
    assert!(!evidence.body.to_string().contains(secret));
    for shot in [
        "task-timeline.png",
        "task-timeline-phone.png",
        "task-evidence-print.png",
    ] {
        assert!(shots().join(shot).exists(), "{shot}");
    }
    std::fs::copy(
        shots().join("task-timeline.png"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/task-timeline.png"),
    )
    .expect("docs/task-timeline.png written");
}
