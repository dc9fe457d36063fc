//! Leash's OAuth server of `/mcp` with software nobody here wrote, on Node
//! (`tests/browser`, installed by scripts/test.sh): the official MCP TypeScript SDK's
//! OAuth client (`mcp_oauth_client.mjs`) connects with nothing but the URL, refreshes and
//! is cut off by a revocation; and a person in headless Chromium with JavaScript off
//! (`consent.mjs`) signs in, consents to fewer tools than asked and is sent back to the
//! client, whose code then buys a token for exactly the ticked tools; and an approver in
//! headless Chromium with JavaScript on (`approver_session.mjs`) signs in to the approver
//! page the same way, sees the MCP client's task as "alice via client:…", revokes it, and
//! the client's next call is refused.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::common::{ADMIN, TestBroker, free_port};
use crate::oauth::{
    ALICE_PASSWORD, App, INTEROP_POLICY, choose, code_of, form_body, mcp_tools, pkce, read_form,
    signed_in, task_of,
};

const ANN_PASSWORD: &str = "ann-Pa55word-that-is-long-too";

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Fails with what to do when `package` is not installed in `tests/browser`.
fn require_package(package: &str) {
    assert!(
        browser_dir().join("node_modules").join(package).exists(),
        "{package} is missing: run scripts/test.sh (it installs it)"
    );
}

/// Runs `node tests/browser/<script> <args>` (killed when it outlives `limit`) and reads
/// the one JSON report it prints on stdout.
async fn node_report(script: &str, args: &[String], limit: Duration) -> Value {
    let dir = browser_dir();
    let child = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {limit:?}"))
        .expect("node ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON report ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

// ------------------------------------------------- the official MCP TypeScript SDK

/// As with the Python SDK (oauth.rs): the SDK asks for every scope Leash's challenge
/// names, the consent page offers only alice's grant, and she ticks two of its three
/// tools. The access token lives 2 s, so a call 3 s later makes the SDK refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_oauth_client_connects_refreshes_and_is_cut_off_by_revocation() {
    require_package("@modelcontextprotocol/sdk");
    let broker = TestBroker::spawn_tuned(INTEROP_POLICY, |c| {
        c.access_token_ttl = Duration::from_secs(2);
    })
    .await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .expect("alice added");
    let approver = broker.approver("ann").await;
    let resource = format!("{}/mcp", broker.url);
    let args = [
        resource.clone(),
        "alice".to_string(),
        ALICE_PASSWORD.to_string(),
        approver,
        "web.search,fs.read".to_string(),
    ];
    let report = node_report("mcp_oauth_client.mjs", &args, Duration::from_secs(180)).await;
    println!("MCP OAuth interop (TypeScript SDK): {report}");
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["sdk_version"], "1.32.2", "{report}");
    assert_eq!(
        report["registered"], 1,
        "one dynamic registration: {report}"
    );
    assert_eq!(report["resource_requested"], resource, "RFC 8707: {report}");
    assert_eq!(
        (&report["state_ok"], &report["iss_ok"]),
        (&json!(true), &json!(true)),
        "the redirect carries the state sent and Leash's issuer: {report}"
    );
    let mut offered: Vec<String> = report["offered"]
        .as_object()
        .unwrap_or_else(|| panic!("{report}"))
        .keys()
        .cloned()
        .collect();
    offered.sort();
    assert_eq!(
        offered,
        vec![
            "fs.read".to_string(),
            "fs.write".to_string(),
            "web.search".to_string()
        ],
        "the consent page offers alice's grant, not every scope asked for: {report}"
    );
    assert_eq!(
        report["consented"],
        json!(["fs.read", "web.search"]),
        "{report}"
    );
    assert_eq!(
        report["tools"],
        json!(["fs.read", "web.search"]),
        "exactly the consented tools: {report}"
    );
    assert_eq!(report["call"]["is_error"], false, "{report}");
    assert_eq!(
        report["refreshed"], true,
        "a refresh, not a new authorization: {report}"
    );
    assert_eq!(report["authorizations_before_revoke"], 1, "{report}");
    assert_eq!(report["after_refresh"]["is_error"], false, "{report}");
    let requests = report["token_requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        requests
            .iter()
            .any(|r| r["grant_type"] == "refresh_token" && r["status"] == 200),
        "{report}"
    );
    assert!(
        requests.iter().all(|r| r["resource"] == resource.as_str()),
        "every token request names the resource: {report}"
    );
    assert_eq!(report["task"]["user"], "alice", "{report}");
    assert!(
        report["task"]["agent"]
            .as_str()
            .is_some_and(|a| a.starts_with("client:")),
        "{report}"
    );
    assert_eq!(
        report["task"]["tools"],
        json!(["fs.read", "web.search"]),
        "{report}"
    );
    assert_eq!(report["revoke_status"], 200, "{report}");
    let after = &report["after_revoke"];
    assert!(
        after.get("error").is_some() || after["is_error"] == true,
        "the client still got through after its task was revoked: {report}"
    );
    let last = requests.last().cloned().unwrap_or(Value::Null);
    assert_eq!(
        (
            last["grant_type"].as_str(),
            last["status"].as_u64(),
            last["error"].as_str()
        ),
        (Some("refresh_token"), Some(400), Some("invalid_grant")),
        "after the revocation its refresh token is dead too: {report}"
    );
}

// ------------------------------------------------------ a person in a real browser

/// Chromium with JavaScript off: the pages are plain HTML forms. The client asks for
/// all three of alice's tools; she unticks `fs.write`. The redirect goes to a loopback
/// port nothing listens on: the script reads the browser's request for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_and_consents_in_headless_chromium_without_javascript() {
    require_package("playwright-core");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("consent.png");
    let _ = std::fs::remove_file(&shot);

    let broker = TestBroker::spawn_with(INTEROP_POLICY).await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .expect("alice added");
    let redirect = format!("http://127.0.0.1:{}/callback", free_port());
    let registered = broker
        .post(
            "/oauth/register",
            None,
            json!({
                "redirect_uris": [redirect],
                "client_name": "Acme Test Agent",
                "token_endpoint_auth_method": "none",
            }),
        )
        .await;
    assert_eq!(registered.status, 201, "{registered:?}");
    let client_id = registered.body["client_id"].as_str().unwrap().to_string();
    let (verifier, challenge) = pkce();
    let state = format!("state-{}", &verifier[..16]);
    let resource = format!("{}/mcp", broker.url);
    let authorize = format!(
        "{}/oauth/authorize?{}",
        broker.url,
        form_body(&[
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", state.as_str()),
            ("resource", resource.as_str()),
            ("scope", "web.search fs.read fs.write"),
        ])
    );
    let args = [
        authorize,
        "alice".to_string(),
        ALICE_PASSWORD.to_string(),
        redirect.clone(),
        "fs.write".to_string(),
        shot.to_string_lossy().into_owned(),
    ];
    let report = node_report("consent.mjs", &args, Duration::from_secs(120)).await;
    println!("consent in headless Chromium: {report}");
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(
        report["javascript_ran"], false,
        "the pages are tried without JavaScript: {report}"
    );
    assert_eq!(report["page_errors"], json!([]), "{report}");
    assert!(
        report["signin_url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{}/signin?", broker.url))),
        "{report}"
    );
    assert_eq!(
        report["offered"],
        json!({"fs.read": true, "fs.write": true, "web.search": true}),
        "the tools asked for, preselected: {report}"
    );
    assert_eq!(
        report["submitted"],
        json!(["fs.read", "web.search"]),
        "{report}"
    );
    assert!(
        report["redirect"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{redirect}?"))),
        "{report}"
    );
    assert_eq!(report["callback_method"], "GET", "{report}");
    assert_eq!(report["state"], state.as_str(), "{report}");
    assert_eq!(report["iss"], broker.url.as_str(), "RFC 9207: {report}");
    let code = report["code"]
        .as_str()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| panic!("no code: {report}"))
        .to_string();

    assert!(shot.exists(), "{}", shot.display());
    std::fs::copy(&shot, root.join("../docs/consent.png")).expect("docs/consent.png written");

    // The client's part, with the code the browser carried.
    let exchanged = broker
        .http
        .post(format!("{}/oauth/token", broker.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("client_id", client_id.as_str()),
            ("code_verifier", verifier.as_str()),
            ("resource", resource.as_str()),
        ]))
        .send()
        .await
        .unwrap();
    let status = exchanged.status().as_u16();
    let tokens: Value = exchanged.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {tokens}"));
    assert_eq!(
        mcp_tools(&broker, access).await,
        vec!["fs.read".to_string(), "web.search".to_string()],
        "exactly the ticked tools"
    );
    let task = task_of(&broker, &client_id).await;
    assert_eq!(
        (&task["user"], &task["tools"]),
        (&json!("alice"), &json!(["fs.read", "web.search"])),
        "{task}"
    );
}

// ------------------------------------------ the approver page, signed in the same way

/// Alice's MCP client connects (reqwest plays her browser and the client); then ann, an
/// approver with a local account, opens /ui in Chromium with JavaScript on, follows its
/// sign-in link, signs in on the same /signin form, sees the client's task with its user
/// and revokes it; alice, who is no approver, signing in there gets no app. The client's
/// next call with its access token is refused, and the audit names ann's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_signs_in_sees_the_clients_task_and_revoking_it_ends_the_clients_access() {
    require_package("playwright-core");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("approver-session.png");
    let _ = std::fs::remove_file(&shot);

    let broker = TestBroker::spawn_with(INTEROP_POLICY).await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .expect("alice added");
    broker
        .state
        .accounts
        .add("ann", ANN_PASSWORD, true)
        .await
        .expect("ann added");

    // Alice's MCP client: registered, she signs in and allows, the code is exchanged.
    let redirect = format!("http://127.0.0.1:{}/callback", free_port());
    let app = App::register(&broker, &redirect).await;
    let mut alice = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    let consent = alice
        .get(&app.authorize(&broker, "st", Some("web.search fs.read")))
        .await;
    assert_eq!(consent.status, 200, "the consent page: {consent:?}");
    let form = read_form(&consent.body, "/oauth/authorize");
    let answer = alice
        .post_form("/oauth/authorize", &choose(&form, None, "allow"))
        .await;
    let code = code_of(&broker, &app, "st", &answer);
    let tokens = app.exchange(&broker, &code).await;
    assert_eq!(tokens.status, 200, "{tokens:?}");
    let access = tokens.access();
    let refresh = tokens.body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh token: {tokens:?}"))
        .to_string();
    assert_eq!(
        mcp_tools(&broker, &access).await,
        vec!["fs.read".to_string(), "web.search".to_string()],
        "the client works at /mcp"
    );
    let task = task_of(&broker, &app.id).await;
    let task_id = task["task_id"].as_str().unwrap().to_string();
    assert_eq!(
        (&task["user"], &task["state"]),
        (&json!("alice"), &json!("active")),
        "{task}"
    );

    // Ann in the approver page.
    let shown_as = format!("alice via client:{}", app.id);
    let args = [
        broker.url.clone(),
        "ann".to_string(),
        ANN_PASSWORD.to_string(),
        "alice".to_string(),
        ALICE_PASSWORD.to_string(),
        shown_as.clone(),
        shot.to_string_lossy().into_owned(),
    ];
    let report = node_report("approver_session.mjs", &args, Duration::from_secs(120)).await;
    println!("the approver page with a session in headless Chromium: {report}");
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["javascript_ran"], true, "{report}");
    assert_eq!(report["page_errors"], json!([]), "{report}");
    let ui = format!("{}/ui", broker.url);
    assert_eq!(
        report["signin_url"],
        format!("{}/signin?next=/ui", broker.url),
        "the page's sign-in link goes to the sign-in form: {report}"
    );
    assert_eq!(report["landed"], ui.as_str(), "back on /ui: {report}");
    assert_eq!(
        (&report["who"], &report["live"]),
        (&json!("ann"), &json!("live")),
        "signed in with the event stream live: {report}"
    );
    assert_eq!(report["cards"], 1, "{report}");
    assert_eq!(
        (&report["card"]["task_id"], &report["card"]["agent"]),
        (&json!(task_id), &json!(shown_as)),
        "the card shows the task's user and client: {report}"
    );
    assert_eq!(
        report["card"]["tools"], "Tools: fs.read, web.search",
        "{report}"
    );
    assert_eq!(
        (&report["revoke_status"], &report["revoked"]),
        (&json!(200), &json!(true)),
        "the revocation (with the session's CSRF token) went through and the card went: {report}"
    );
    assert_eq!(report["error_shown"], "", "{report}");
    assert_eq!(report["active_empty"], true, "{report}");
    let other = &report["not_approver"];
    assert_eq!(other["landed"], ui.as_str(), "{report}");
    assert!(
        other["message"]
            .as_str()
            .is_some_and(|m| m.contains("alice") && m.contains("not an approver")),
        "alice is told she is not an approver: {report}"
    );
    assert_eq!(
        (&other["app_visible"], &other["signin_visible"]),
        (&json!(false), &json!(true)),
        "and gets no app: {report}"
    );
    assert_eq!(
        other["tasks_status"], 403,
        "her session does not open the approver API: {report}"
    );

    assert!(shot.exists(), "{}", shot.display());
    std::fs::copy(&shot, root.join("../docs/approver-session.png"))
        .expect("docs/approver-session.png written");

    // The client's next call is refused.
    let refused = crate::common::mcp_request(&broker.http, &broker.url, 2, "tools/list", json!({}))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    let status = refused.status().as_u16();
    let challenge = refused
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(status, 401, "the client got through after the revocation");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    // Its refresh token is dead too.
    let renewed = broker
        .http
        .post(format!("{}/oauth/token", broker.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", app.id.as_str()),
        ]))
        .send()
        .await
        .unwrap();
    let renewed_status = renewed.status().as_u16();
    let renewed: Value = renewed.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (renewed_status, renewed["error"].as_str()),
        (400, Some("invalid_grant")),
        "{renewed}"
    );

    let approver = broker.approver("ann").await;
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&approver))
        .await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(shown.body["state"], "revoked", "{shown:?}");

    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    let events = audit.body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "user.signed_in" && e["actor"] == "user:ann"),
        "ann's sign-in is audited: {audit:?}"
    );
    let revoked = events
        .iter()
        .find(|e| e["kind"] == "task.revoked" && e["task_id"] == task_id.as_str())
        .unwrap_or_else(|| panic!("no task.revoked for {task_id}: {audit:?}"));
    assert_eq!(revoked["actor"], "user:ann", "{revoked}");
    assert_eq!(
        revoked["detail"]["reason"], "revoked from the approver page",
        "{revoked}"
    );
}
