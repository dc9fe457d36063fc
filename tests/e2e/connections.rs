//! Upstream credentials per user and per task, against a real OAuth provider and a
//! resource server nobody here wrote the core of: `oidc-provider` (npm) in
//! `tests/oidc/upstream.mjs`, with refresh tokens, RFC 7009 revocation, introspection and
//! an RFC 8693 token exchange registered through its own extension point, and a resource
//! server (`/rs/whoami`) that accepts only tokens the provider's introspection calls
//! active and records whose token it received.
//!
//! People connect through `/connections` (signed in; the provider's code flow with PKCE),
//! then an MCP client's task calls tools whose `upstream_auth` names the provider: each
//! call carries the task's person's token, never seen by the client.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{ADMIN, TestBroker, free_port};
use crate::oauth::{ALICE_PASSWORD, App, Browser, Page, code_with, read_form, signed_in};
use crate::oidc::{Answer, NodeScript, through_a_provider};

const CLIENT_ID: &str = "leash-up";
const CLIENT_SECRET: &str = "upstream-Secret-4711";
const BOB_PASSWORD: &str = "bob-Pa55word-that-is-long-too";
const CAROL_PASSWORD: &str = "carol-Pa55word-that-is-long-three";
const LOOPBACK: &str = "http://127.0.0.1:8976/callback";

/// `{IDP}` is the provider's address.
const POLICY: &str = r#"
[providers.acme]
display_name = "Acme Notes"
issuer = "http://{IDP}"
client_id = "leash-up"
client_secret = "upstream-Secret-4711"
token_exchange = true
scopes = ["offline_access"]

[providers.plain]
display_name = "Plain Notes"
authorize_url = "http://{IDP}/auth"
token_url = "http://{IDP}/token"
revocation_url = "http://{IDP}/token/revocation"
client_id = "leash-up"
client_secret = "upstream-Secret-4711"
scopes = ["offline_access"]

[providers.deploy]
authorize_url = "http://{IDP}/auth"
token_url = "http://{IDP}/token"
client_id = "leash-up"
client_secret = "upstream-Secret-4711"

[tools."notes.whoami"]
description = "Who the notes service thinks I am (per-task token)"
upstream = "http://{IDP}/rs/whoami"
input_schema = { type = "object" }
upstream_auth = { provider = "acme", scopes = ["notes:read"] }

[tools."notes.write"]
description = "Needs the write scope"
upstream = "http://{IDP}/rs/whoami"
input_schema = { type = "object" }
upstream_auth = { provider = "acme", scopes = ["notes:write"] }

[tools."plain.whoami"]
description = "Who the notes service thinks I am (the user's own token)"
upstream = "http://{IDP}/rs/whoami"
input_schema = { type = "object" }
upstream_auth = { provider = "plain", scopes = ["notes:read"] }

[tools."ops.whoami"]
description = "As the deployment"
upstream = "http://{IDP}/rs/whoami"
input_schema = { type = "object" }
upstream_auth = { provider = "deploy", grant = "client_credentials", scopes = ["admin"] }

# Its tools list without a token; each call carries the person's token, on a session of
# its own. Nothing listens on {MCP} unless the test starts the server.
[mcp_servers.remote]
url = "http://127.0.0.1:{MCP}/mcp"
timeout_ms = 5000
upstream_auth = { provider = "plain", scopes = ["notes:read"] }

[users.alice]
tools = ["notes.*", "plain.*", "ops.*", "remote.*"]
max_ttl_seconds = 3600

[users.bob]
tools = ["notes.*", "plain.*", "remote.*"]
max_ttl_seconds = 3600

# Tasks that expire by themselves, soon.
[users.carol]
tools = ["notes.*"]
max_ttl_seconds = 5

[agents.bot]
tools = ["notes.whoami", "ops.whoami"]
max_ttl_seconds = 600
"#;

// ---------------------------------------------------------------- the provider

/// `tests/oidc/upstream.mjs`; killed on drop.
pub(crate) struct Upstream {
    pub(crate) issuer: String,
    http: reqwest::Client,
    _script: NodeScript,
}

impl Upstream {
    /// Starts the provider on `port`, sending people back to `redirect_uris`, its access
    /// tokens living `access_ttl` seconds.
    pub(crate) async fn start(port: u16, redirect_uris: &[String], access_ttl: u64) -> Upstream {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--access-ttl",
            &access_ttl.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        for uri in redirect_uris {
            args.extend(["--redirect-uri".to_string(), uri.clone()]);
        }
        let issuer = format!("http://127.0.0.1:{port}");
        let script = NodeScript::start(
            "upstream.mjs",
            &args,
            &format!("upstream-provider listening {issuer}"),
        )
        .await;
        Upstream {
            issuer,
            http: reqwest::Client::new(),
            _script: script,
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every call the resource server answered: `{sub, scope, token, at}`.
    pub(crate) async fn seen(&self) -> Vec<Value> {
        self.get("/test/seen").await.as_array().cloned().unwrap()
    }

    /// Successful refresh grants so far.
    pub(crate) async fn refreshes(&self) -> u64 {
        self.get("/test/refreshes").await["count"].as_u64().unwrap()
    }

    /// Successful token exchanges so far.
    async fn exchanges(&self) -> u64 {
        self.get("/test/exchanges").await["count"].as_u64().unwrap()
    }

    /// Whether the provider's introspection calls `token` active.
    pub(crate) async fn active(&self, token: &str) -> bool {
        let answer: Value = self
            .http
            .post(format!("{}/test/introspect", self.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(crate::oauth::form_body(&[("token", token)]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["active"] == true
    }

    /// How `/token` answers from now on.
    pub(crate) async fn mode(&self, mode: &str) {
        let answer = self
            .http
            .post(format!("{}/test/mode?mode={mode}", self.issuer))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success());
    }

    /// Destroys every grant of `account` at the provider (its refresh tokens die).
    pub(crate) async fn revoke_account(&self, account: &str) {
        let answer = self
            .http
            .post(format!(
                "{}/test/revoke-account?account={account}",
                self.issuer
            ))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success());
    }
}

/// A broker on [`POLICY`] with accounts alice and bob, and the provider, its access
/// tokens living `access_ttl` seconds.
async fn deployment(access_ttl: u64) -> (TestBroker, Upstream) {
    deployment_with(access_ttl, free_port(), 9).await
}

/// [`deployment`] with the provider on `port` and the `remote` MCP server on `mcp_port`.
async fn deployment_with(access_ttl: u64, port: u16, mcp_port: u16) -> (TestBroker, Upstream) {
    let policy = POLICY
        .replace("{IDP}", &format!("127.0.0.1:{port}"))
        .replace("{MCP}", &mcp_port.to_string());
    let broker = TestBroker::spawn_with(&policy).await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .unwrap();
    broker
        .state
        .accounts
        .add("bob", BOB_PASSWORD, false)
        .await
        .unwrap();
    broker
        .state
        .accounts
        .add("carol", CAROL_PASSWORD, false)
        .await
        .unwrap();
    let upstream = Upstream::start(port, &[callback_of(&broker.url)], access_ttl).await;
    (broker, upstream)
}

pub(crate) fn callback_of(base: &str) -> String {
    format!("{base}/connections/callback")
}

fn password_of(user: &str) -> &'static str {
    match user {
        "alice" => ALICE_PASSWORD,
        "carol" => CAROL_PASSWORD,
        _ => BOB_PASSWORD,
    }
}

// ------------------------------------------------------------------- connecting

/// On `/connections`, presses Connect for `provider`: the provider's authorization URL.
pub(crate) async fn leave_to_connect(browser: &mut Browser, provider: &str) -> String {
    let page = browser.get("/connections").await;
    assert_eq!(page.status, 200, "the connections page: {page:?}");
    let action = format!("/connections/{provider}/connect");
    let form = read_form(&page.body, &action);
    let started = browser.post_form(&action, &form.filled()).await;
    assert_eq!(started.status, 303, "off to the provider: {started:?}");
    let cookie = started
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("leash_connect="))
        .unwrap_or_else(|| panic!("the leash_connect cookie: {started:?}"));
    assert!(
        cookie
            .to_ascii_lowercase()
            .replace(' ', "")
            .contains(";httponly"),
        "{cookie}"
    );
    let to = started.location.clone().unwrap();
    assert!(
        !to.contains(CLIENT_SECRET),
        "the client secret is in the URL"
    );
    let query = crate::oauth::query_of(&to);
    assert_eq!(
        query.get("code_challenge_method").map(String::as_str),
        Some("S256"),
        "{to}"
    );
    assert!(query.get("state").is_some_and(|s| s.len() >= 16), "{to}");
    to
}

/// Connects `user`'s account at `provider` (signed in as `browser`); the page after.
pub(crate) async fn connect(
    browser: &mut Browser,
    issuer: &str,
    base: &str,
    provider: &str,
    user: &str,
) -> Page {
    let authorization = leave_to_connect(browser, provider).await;
    let back = through_a_provider(
        browser,
        issuer,
        &callback_of(base),
        &authorization,
        user,
        Answer::Allow,
    )
    .await;
    let answer = browser.get(&back).await;
    assert_eq!(answer.status, 303, "connected: {answer:?}");
    assert_eq!(
        answer.location.as_deref(),
        Some("/connections"),
        "{answer:?}"
    );
    answer
}

/// `GET /v1/connections` in this browser: provider → its connection (or null).
async fn connections_of(browser: &mut Browser) -> Value {
    let page = browser.get("/v1/connections").await;
    assert_eq!(page.status, 200, "{page:?}");
    let listed: Value = serde_json::from_str(&page.body).unwrap();
    let mut by_provider = serde_json::Map::new();
    for provider in listed["providers"].as_array().unwrap() {
        by_provider.insert(
            provider["provider"].as_str().unwrap().to_string(),
            provider["connection"].clone(),
        );
    }
    Value::Object(by_provider)
}

/// Presses Disconnect for `provider` on `/connections`.
async fn disconnect(browser: &mut Browser, provider: &str) {
    let listed = connections_of(browser).await;
    let id = listed[provider]["connection_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {provider} connection: {listed}"))
        .to_string();
    let page = browser.get("/connections").await;
    let action = format!("/connections/{id}/disconnect");
    let form = read_form(&page.body, &action);
    // Without the session's CSRF token: refused, nothing changes.
    let forged = browser.post_form(&action, &[("csrf", "nope")]).await;
    assert_eq!(forged.status, 403, "{forged:?}");
    let done = browser.post_form(&action, &form.filled()).await;
    assert_eq!(done.status, 303, "{done:?}");
}

/// A signed-in browser of `user` that connected `providers`.
async fn connected(
    broker: &TestBroker,
    upstream: &Upstream,
    user: &str,
    providers: &[&str],
) -> Browser {
    let mut browser = signed_in(broker, user, password_of(user)).await;
    for provider in providers {
        connect(&mut browser, &upstream.issuer, &broker.url, provider, user).await;
    }
    let listed = connections_of(&mut browser).await;
    for provider in providers {
        assert_eq!(listed[provider]["state"], "active", "{listed}");
    }
    browser
}

// ------------------------------------------------------------------- MCP calls

/// An MCP client's access token for `user`'s task over `tools` (the browser consents).
async fn mcp_token(broker: &TestBroker, browser: &mut Browser, tools: &[&str]) -> String {
    let app = App::register(broker, LOOPBACK).await;
    let code = code_with(broker, browser, &app, Some(&tools.join(" "))).await;
    let reply = app.exchange(broker, &code).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.access()
}

/// `tools/call` at `/mcp`: the whole JSON-RPC answer (and its raw text).
async fn mcp_call(url: &str, token: &str, tool: &str) -> (Value, String) {
    let response = crate::common::mcp_request(
        &reqwest::Client::new(),
        url,
        7,
        "tools/call",
        json!({"name": tool, "arguments": {}}),
    )
    .bearer_auth(token)
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200, "tools/call {tool}");
    let text = response.text().await.unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

/// A successful call's structured result (what the resource server answered).
async fn whoami(url: &str, token: &str, tool: &str) -> (Value, String) {
    let (answer, text) = mcp_call(url, token, tool).await;
    let result = &answer["result"];
    assert_ne!(result["isError"], true, "{tool}: {answer}");
    (result["structuredContent"].clone(), text)
}

/// The active tasks `user` started, as the admin sees them.
async fn task_id_of(broker: &TestBroker, user: &str) -> Vec<String> {
    let listed = broker.get("/v1/tasks", Some(ADMIN)).await;
    listed.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["user"] == user && t["state"] == "active")
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every audit event.
async fn audit(broker: &TestBroker) -> Vec<Value> {
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    audit.body["events"].as_array().unwrap().clone()
}

// ------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_persons_task_reaches_the_resource_server_as_that_person_and_never_sees_a_token() {
    let (broker, upstream) = deployment(3600).await;
    let mut alice = connected(&broker, &upstream, "alice", &["acme", "plain"]).await;
    let mut bob = connected(&broker, &upstream, "bob", &["acme"]).await;
    let alice_token = mcp_token(&broker, &mut alice, &["notes.whoami", "plain.whoami"]).await;
    let bob_token = mcp_token(&broker, &mut bob, &["notes.whoami"]).await;

    let mut answers = String::new();
    let (as_alice, text) = whoami(&broker.url, &alice_token, "notes.whoami").await;
    answers.push_str(&text);
    assert_eq!(as_alice["sub"], "alice", "{as_alice}");
    // The per-task token holds only the scopes of the task's tools at that provider.
    assert_eq!(as_alice["scope"], "notes:read", "{as_alice}");
    assert_eq!(as_alice["client_id"], CLIENT_ID);
    let (as_bob, text) = whoami(&broker.url, &bob_token, "notes.whoami").await;
    answers.push_str(&text);
    assert_eq!(as_bob["sub"], "bob", "{as_bob}");
    // Without token exchange, the person's own token (all the connection's scopes).
    let (plain, text) = whoami(&broker.url, &alice_token, "plain.whoami").await;
    answers.push_str(&text);
    assert_eq!(plain["sub"], "alice", "{plain}");
    assert!(
        plain["scope"].as_str().unwrap().contains("offline_access"),
        "{plain}"
    );
    // A second call of the same task reuses its token: one exchange per task.
    let exchanges = upstream.exchanges().await;
    whoami(&broker.url, &alice_token, "notes.whoami").await;
    assert_eq!(upstream.exchanges().await, exchanges);

    // What the resource server received: Alice's token for Alice's task, Bob's for Bob's,
    // and none of those tokens anywhere a client, the audit or a page can see.
    let seen = upstream.seen().await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    let tokens: Vec<&str> = seen.iter().map(|s| s["token"].as_str().unwrap()).collect();
    assert_ne!(tokens[0], tokens[1], "Alice's and Bob's tokens differ");
    assert_ne!(tokens[0], tokens[2], "the task's token is not the person's");
    let audit_text = serde_json::to_string(&audit(&broker).await).unwrap();
    let mut pages = String::new();
    for browser in [&mut alice, &mut bob] {
        pages.push_str(&browser.get("/connections").await.body);
        pages.push_str(&browser.get("/v1/connections").await.body);
    }
    let tasks = broker.get("/v1/tasks", Some(ADMIN)).await.body.to_string();
    for token in &tokens {
        for (place, text) in [
            ("an MCP answer", &answers),
            ("the audit log", &audit_text),
            ("a connections page", &pages),
            ("the task list", &tasks),
        ] {
            assert!(!text.contains(token), "a provider token is in {place}");
        }
    }
    assert!(!audit_text.contains(CLIENT_SECRET) && !pages.contains(CLIENT_SECRET));

    // The audit names the connection that served each call.
    let events = audit(&broker).await;
    let alice_connections = connections_of(&mut alice).await;
    let acme = alice_connections["acme"]["connection_id"].as_str().unwrap();
    assert!(acme.starts_with("con_"), "{alice_connections}");
    let served: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "call.allowed" && e["detail"]["connection"] == acme)
        .collect();
    assert_eq!(
        served.len(),
        2,
        "Alice's two notes.whoami calls: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "connection.connected" && e["actor"] == "user:bob"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_task_ends_its_token_dies_at_the_provider_and_the_persons_does_not() {
    let (broker, upstream) = deployment(3600).await;
    let mut alice = connected(&broker, &upstream, "alice", &["acme"]).await;
    let token = mcp_token(&broker, &mut alice, &["notes.whoami"]).await;
    whoami(&broker.url, &token, "notes.whoami").await;
    let task_token = upstream.seen().await[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(upstream.active(&task_token).await);
    let task_id = task_id_of(&broker, "alice").await.pop().unwrap();

    // The person (through the approver page's API) ends the task.
    let ended = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!(ended.status, 200, "{ended:?}");
    let from = Instant::now();
    let deadline = from + Duration::from_secs(15);
    while upstream.active(&task_token).await {
        assert!(
            Instant::now() < deadline,
            "the task's token is still active at the provider"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "task end -> provider refuses the task's token: {} ms",
        from.elapsed().as_millis()
    );
    // The provider's resource server refuses it too.
    let refused = reqwest::Client::new()
        .get(format!("{}/rs/whoami", upstream.issuer))
        .bearer_auth(&task_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // The person's connection lives on: a new task gets a new token.
    let listed = connections_of(&mut alice).await;
    assert_eq!(listed["acme"]["state"], "active", "{listed}");
    let again = mcp_token(&broker, &mut alice, &["notes.whoami"]).await;
    let (as_alice, _) = whoami(&broker.url, &again, "notes.whoami").await;
    assert_eq!(as_alice["sub"], "alice");
    // The audit row follows the provider's answer by a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let revoked = loop {
        let events = audit(&broker).await;
        let revoked: Vec<Value> = events
            .iter()
            .filter(|e| e["kind"] == "connection.task_token_revoked")
            .cloned()
            .collect();
        if !revoked.is_empty() {
            break revoked;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["task_id"], task_id.as_str());
    assert_eq!(revoked[0]["detail"]["at_provider"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_oauth_task_revokes_its_token_too() {
    // The MCP client revokes its own access token (RFC 7009 at Leash): the task ends,
    // and so does its token at the provider.
    let (broker, upstream) = deployment(3600).await;
    let mut alice = connected(&broker, &upstream, "alice", &["acme"]).await;
    let token = mcp_token(&broker, &mut alice, &["notes.whoami"]).await;
    whoami(&broker.url, &token, "notes.whoami").await;
    let task_token = upstream.seen().await[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = broker
        .http
        .post(format!("{}/oauth/revoke", broker.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::oauth::form_body(&[("token", token.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while upstream.active(&task_token).await {
        assert!(Instant::now() < deadline, "still active at the provider");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_revokes_the_connection_at_the_provider() {
    let (broker, upstream) = deployment(3600).await;
    let mut alice = connected(&broker, &upstream, "alice", &["plain", "acme"]).await;
    let token = mcp_token(&broker, &mut alice, &["plain.whoami", "notes.whoami"]).await;
    whoami(&broker.url, &token, "plain.whoami").await;
    whoami(&broker.url, &token, "notes.whoami").await;
    let seen = upstream.seen().await;
    let (user_token, task_token) = (
        seen[0]["token"].as_str().unwrap().to_string(),
        seen[1]["token"].as_str().unwrap().to_string(),
    );
    for provider in ["plain", "acme"] {
        disconnect(&mut alice, provider).await;
    }
    // oidc-provider revokes a refresh token's whole grant: the person's access token
    // from it is dead, and so is the task's token exchanged from the other connection.
    assert!(!upstream.active(&user_token).await, "the person's token");
    // The tasks' tokens from the connection are revoked by the sweep, woken at once.
    let deadline = Instant::now() + Duration::from_secs(15);
    while upstream.active(&task_token).await {
        assert!(
            Instant::now() < deadline,
            "the task's token is still active"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = connections_of(&mut alice).await;
    assert!(
        listed["plain"].is_null() && listed["acme"].is_null(),
        "{listed}"
    );
    // The task's next call needs a connection again.
    let (answer, _) = mcp_call(&broker.url, &token, "plain.whoami").await;
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    let events = audit(&broker).await;
    let disconnected: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "connection.disconnected")
        .collect();
    assert_eq!(disconnected.len(), 2, "{events:?}");
    assert!(
        disconnected
            .iter()
            .all(|e| e["detail"]["revoked_at_provider"] == true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connection_the_mcp_client_gets_a_url_elicitation_and_the_page_asks() {
    let (broker, _upstream) = deployment(3600).await;
    let mut bob = signed_in(&broker, "bob", BOB_PASSWORD).await;
    let token = mcp_token(&broker, &mut bob, &["notes.whoami"]).await;
    let (answer, _) = mcp_call(&broker.url, &token, "notes.whoami").await;
    let error = &answer["error"];
    assert_eq!(
        error["code"], -32042,
        "URLElicitationRequiredError: {answer}"
    );
    let elicitation = &error["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url", "{answer}");
    let url = elicitation["url"].as_str().unwrap();
    assert_eq!(url, format!("{}/connections?connect=acme", broker.url));
    assert!(
        elicitation["elicitationId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(error["message"].as_str().unwrap().contains("acme"));
    // The page it points to names the provider the task needs.
    let page = bob.get(url).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("A task needs your account at"),
        "{}",
        page.body
    );
    // Not signed in: the sign-in page, coming back here.
    let mut stranger = Browser::new(&broker);
    let page = stranger.get("/connections?connect=acme").await;
    assert_eq!(page.status, 303);
    assert!(
        page.location
            .as_deref()
            .unwrap()
            .starts_with("/signin?next=%2Fconnections%3Fconnect%3Dacme"),
        "{page:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_get_the_deployments_token_and_never_a_persons() {
    let (broker, upstream) = deployment(3600).await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["notes.whoami", "ops.whoami"]).await;
    let ops = broker.call(&token, "ops.whoami", json!({})).await;
    assert_eq!(ops.status, 200, "{ops:?}");
    assert_eq!(ops.body["result"]["client_id"], CLIENT_ID);
    assert!(ops.body["result"]["sub"].is_null(), "{ops:?}");
    assert_eq!(ops.body["result"]["scope"], "admin");
    // A tool that acts as a person, in a task no person started: refused, not forwarded.
    let before = upstream.seen().await.len();
    let notes = broker.call(&token, "notes.whoami", json!({})).await;
    assert_eq!(notes.status, 403, "{notes:?}");
    assert_eq!(notes.code(), "policy_denied");
    assert_eq!(upstream.seen().await.len(), before);
    let deployment_token = upstream.seen().await[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!ops.body.to_string().contains(&deployment_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_calls_after_expiry_make_one_refresh_and_a_refused_refresh_breaks_the_connection()
 {
    let ttl = 4;
    let (broker, upstream) = deployment(ttl).await;
    let mut alice = connected(&broker, &upstream, "alice", &["plain"]).await;
    let token = mcp_token(&broker, &mut alice, &["plain.whoami"]).await;
    whoami(&broker.url, &token, "plain.whoami").await;
    assert_eq!(upstream.refreshes().await, 0);
    tokio::time::sleep(Duration::from_secs(ttl) + Duration::from_millis(300)).await;
    let calls = (0..32).map(|_| {
        let (url, token) = (broker.url.clone(), token.clone());
        tokio::spawn(async move { whoami(&url, &token, "plain.whoami").await.0 })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.unwrap()["sub"], "alice");
    }
    assert_eq!(upstream.refreshes().await, 1, "one refresh for 32 calls");
    assert!(
        audit(&broker)
            .await
            .iter()
            .any(|e| e["kind"] == "connection.refreshed")
    );

    // The provider forgets Alice's grant: the next refresh is refused, the connection
    // is broken, the client is told to have her connect again, and her page says so.
    upstream.revoke_account("alice").await;
    tokio::time::sleep(Duration::from_secs(ttl) + Duration::from_millis(300)).await;
    let (answer, _) = mcp_call(&broker.url, &token, "plain.whoami").await;
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken"),
        "{answer}"
    );
    let listed = connections_of(&mut alice).await;
    assert_eq!(listed["plain"]["state"], "broken", "{listed}");
    let page = alice.get("/connections").await;
    assert!(page.body.contains("Broken"), "{}", page.body);
    assert!(page.body.contains("Connect again"), "{}", page.body);
    // Connecting again mends it.
    connect(&mut alice, &upstream.issuer, &broker.url, "plain", "alice").await;
    let (as_alice, _) = whoami(&broker.url, &token, "plain.whoami").await;
    assert_eq!(as_alice["sub"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_answers_garbage_or_redirects_is_a_clear_502() {
    let ttl = 3;
    let (broker, upstream) = deployment(ttl).await;
    let mut alice = connected(&broker, &upstream, "alice", &["plain"]).await;
    let token = mcp_token(&broker, &mut alice, &["plain.whoami"]).await;
    tokio::time::sleep(Duration::from_secs(ttl) + Duration::from_millis(300)).await;
    for mode in ["down", "garbage", "redirect", "slow"] {
        upstream.mode(mode).await;
        let started = Instant::now();
        let (answer, text) = mcp_call(&broker.url, &token, "plain.whoami").await;
        // Not a speed target: a hang guard (the provider answers `slow` after 30 s;
        // Leash gives up on a provider exchange after 10).
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{mode}: no hang"
        );
        let result = &answer["result"];
        assert_eq!(result["isError"], true, "{mode}: {answer}");
        let said = result["content"][0]["text"].as_str().unwrap();
        assert!(said.starts_with("upstream_error:"), "{mode}: {said}");
        assert!(said.contains("plain"), "{mode}: names the provider: {said}");
        assert!(!text.contains(CLIENT_SECRET), "{mode}");
        assert!(!text.contains("9/stolen"), "{mode}: no URL of the redirect");
    }
    // A provider that was only away does not break the connection.
    upstream.mode("normal").await;
    let listed = connections_of(&mut alice).await;
    assert_eq!(listed["plain"]["state"], "active", "{listed}");
    let (as_alice, _) = whoami(&broker.url, &token, "plain.whoami").await;
    assert_eq!(as_alice["sub"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_with_a_wrong_state_a_replayed_code_or_another_browser_connects_nothing() {
    let (broker, upstream) = deployment(3600).await;
    let mut alice = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    let authorization = leave_to_connect(&mut alice, "acme").await;
    let back = through_a_provider(
        &mut alice,
        &upstream.issuer,
        &callback_of(&broker.url),
        &authorization,
        "alice",
        Answer::Allow,
    )
    .await;
    let query = crate::oauth::query_of(&back);
    let code = query["code"].clone();
    // The state changed: refused, and the connect in progress is used up.
    let forged = alice
        .get(&format!(
            "/connections/callback?code={code}&state=not-the-state"
        ))
        .await;
    assert_eq!(forged.status, 400, "{forged:?}");
    assert!(alice.cookie("leash_connect").is_none());
    // The right answer, now without the cookie that started it: refused too.
    let replay = alice.get(&back).await;
    assert_eq!(replay.status, 400, "{replay:?}");
    assert!(connections_of(&mut alice).await["acme"].is_null());

    // Bob's browser cannot finish Alice's connect (her cookie is sealed to her).
    let authorization = leave_to_connect(&mut alice, "acme").await;
    let cookie = alice.cookie("leash_connect").unwrap().to_string();
    let back = through_a_provider(
        &mut alice,
        &upstream.issuer,
        &callback_of(&broker.url),
        &authorization,
        "alice",
        Answer::Allow,
    )
    .await;
    let mut bob = signed_in(&broker, "bob", BOB_PASSWORD).await;
    bob.cookies.insert("leash_connect".into(), cookie.clone());
    let stolen = bob.get(&back).await;
    assert_eq!(stolen.status, 400, "{stolen:?}");
    assert!(connections_of(&mut bob).await["acme"].is_null());
    // Alice finishes it; then her code, replayed with her cookie, is refused by the
    // provider and changes nothing.
    let done = alice.get(&back).await;
    assert_eq!(done.status, 303, "{done:?}");
    let first = connections_of(&mut alice).await["acme"]["connection_id"].clone();
    alice.cookies.insert("leash_connect".into(), cookie);
    let replayed = alice.get(&back).await;
    assert_eq!(
        replayed.status, 403,
        "the provider refuses a used code: {replayed:?}"
    );
    assert_eq!(
        connections_of(&mut alice).await["acme"]["connection_id"],
        first
    );

    // The person declines at the provider.
    let authorization = leave_to_connect(&mut bob, "plain").await;
    let back = through_a_provider(
        &mut bob,
        &upstream.issuer,
        &callback_of(&broker.url),
        &authorization,
        "bob",
        Answer::Decline,
    )
    .await;
    let declined = bob.get(&back).await;
    assert_eq!(declined.status, 403, "{declined:?}");
    assert!(connections_of(&mut bob).await["plain"].is_null());
    // Unknown provider, no session, a forged connect form.
    let page = bob.get("/connections").await;
    let form = read_form(&page.body, "/connections/plain/connect");
    let unknown = bob
        .post_form("/connections/nope/connect", &form.filled())
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let forged = bob
        .post_form("/connections/plain/connect", &[("csrf", "x")])
        .await;
    assert_eq!(forged.status, 403, "{forged:?}");
    let mut stranger = Browser::new(&broker);
    let nobody = stranger.get(&back).await;
    assert_eq!(nobody.status, 401, "{nobody:?}");
    let listed = stranger.get("/v1/connections").await;
    assert_eq!(listed.status, 401, "{listed:?}");
    // A repeated parameter, or an unknown provider's long name: a plain 4xx page.
    let doubled = bob
        .get("/connections/callback?code=a&state=b&state=c")
        .await;
    assert_eq!(doubled.status, 400, "{doubled:?}");
    assert!(
        doubled
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/html")
    );
    let long = "x".repeat(3000);
    let page = bob.get("/connections").await;
    let form = read_form(&page.body, "/connections/plain/connect");
    let unknown = bob
        .post_form(&format!("/connections/{long}/connect"), &form.filled())
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(
        !unknown.body.contains(&long),
        "the name is not echoed whole"
    );
}

/// Two replicas on this machine's PostgreSQL (a fresh schema), both naming the first one's
/// URL as the public URL (as replicas behind one load balancer do), and the provider.
/// A replica as its own `leash serve` process, logging at debug level to a file.
struct LoggedReplica {
    process: crate::common::BrokerProcess,
    log: std::path::PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Replica A in this process, replica B a `leash serve` process whose debug log the test
/// reads, on this machine's PostgreSQL (a fresh schema), both naming A's URL as the
/// public URL (as replicas behind one load balancer do); and the provider.
async fn replicas(access_ttl: u64) -> (TestBroker, LoggedReplica, Upstream, String) {
    let port = free_port();
    let policy = POLICY
        .replace("{IDP}", &format!("127.0.0.1:{port}"))
        .replace("{MCP}", "9");
    let schema = format!("conn_{}", leash_broker::ids::random_hex(6));
    let pg = |config: &mut leash_broker::ServeConfig, schema: &str| {
        config.database_url = Some("postgres://postgres@127.0.0.1:5432/test".into());
        config.database_schema = schema.to_string();
        config.master_key =
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into());
    };
    let a = TestBroker::spawn_tuned(&policy, |config| pg(config, &schema)).await;
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("p.toml"), &policy).unwrap();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("leash.log");
    let env = [
        (
            "LEASH_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test".to_string(),
        ),
        ("LEASH_DATABASE_SCHEMA", schema.clone()),
        (
            "LEASH_MASTER_KEY",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string(),
        ),
        ("LEASH_ADMIN_TOKEN", ADMIN.to_string()),
        ("LEASH_PUBLIC_URL", a.url.clone()),
        ("LEASH_LOG", "debug".to_string()),
    ];
    let process = crate::common::BrokerProcess::start_logged(
        policies.path(),
        &data.path().join("data"),
        &env,
        Some(&log),
    )
    .await;
    let b = LoggedReplica {
        process,
        log,
        _dirs: (policies, data),
    };
    a.state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .unwrap();
    let upstream = Upstream::start(port, &[callback_of(&a.url)], access_ttl).await;
    (a, b, upstream, schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_connection_and_refresh_it_once() {
    let ttl = 4;
    let (a, b, upstream, schema) = replicas(ttl).await;
    let b_url = b.process.url.clone();
    let mut alice = connected(&a, &upstream, "alice", &["plain", "acme"]).await;
    let token = mcp_token(&a, &mut alice, &["plain.whoami", "notes.whoami"]).await;
    // The connection made on A serves calls on B.
    let (on_b, _) = whoami(&b_url, &token, "plain.whoami").await;
    assert_eq!(on_b["sub"], "alice", "{on_b}");
    assert_eq!(upstream.refreshes().await, 0);
    tokio::time::sleep(Duration::from_secs(ttl) + Duration::from_millis(300)).await;
    // After expiry, 16 calls on each replica at once: one refresh in all.
    let calls = (0..32).map(|i| {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b_url.clone()
        };
        let token = token.clone();
        tokio::spawn(async move { whoami(&url, &token, "plain.whoami").await.0 })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.unwrap()["sub"], "alice");
    }
    assert_eq!(upstream.refreshes().await, 1, "one refresh across replicas");

    // The task's own token, obtained on whichever replica calls first, serves both and
    // dies at the provider when the task ends on B.
    let exchanges = upstream.exchanges().await;
    let on_a = tokio::spawn({
        let (url, token) = (a.url.clone(), token.clone());
        async move { whoami(&url, &token, "notes.whoami").await.0 }
    });
    let (on_b, _) = whoami(&b_url, &token, "notes.whoami").await;
    assert_eq!(on_b["sub"], "alice");
    assert_eq!(on_a.await.unwrap()["sub"], "alice");
    let stored: Vec<Value> = upstream
        .seen()
        .await
        .into_iter()
        .filter(|s| s["scope"] == "notes:read")
        .collect();
    let kept = stored.last().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    // Two replicas racing may both exchange; the loser's token is revoked at once.
    let made = upstream.exchanges().await - exchanges;
    assert!((1..=2).contains(&made), "{made} exchanges");
    for seen in &stored {
        let token = seen["token"].as_str().unwrap();
        if token != kept {
            assert!(
                !upstream.active(token).await,
                "a surplus task token stays active"
            );
        }
    }
    let task_id = task_id_of(&a, "alice").await.pop().unwrap();
    let ended = crate::common::post_json(
        &format!("{b_url}/v1/tasks/{task_id}/revoke"),
        Some(ADMIN),
        json!({"reason": "done"}),
    )
    .await;
    assert_eq!(ended.status, 200, "{ended:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while upstream.active(&kept).await {
        assert!(Instant::now() < deadline, "still active at the provider");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B's debug log names no provider token, nor the client secret.
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "B logged at debug level"
    );
    for seen in upstream.seen().await {
        let token = seen["token"].as_str().unwrap();
        assert!(!log.contains(token), "a provider token is in B's log");
    }
    assert!(
        !log.contains(CLIENT_SECRET),
        "the client secret is in B's log"
    );
    drop((a, b));
    let _ = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
        .arg(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .output();
}

/// `tests/interop/mcp_whoami.py` (the official MCP Python SDK), killed on drop.
struct WhoamiServer {
    child: std::process::Child,
    port: u16,
}

impl WhoamiServer {
    async fn start(port: u16, introspect: &str) -> WhoamiServer {
        leash_sdk::tls::install_default_provider();
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("../target/interop-venv/bin/python");
        assert!(
            python.exists(),
            "run scripts/test.sh: it installs the MCP Python SDK"
        );
        let child = std::process::Command::new(python)
            .arg(root.join("interop/mcp_whoami.py"))
            .arg(port.to_string())
            .arg(introspect)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("http://127.0.0.1:{port}/ready"))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the whoami MCP server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        WhoamiServer { child, port }
    }

    async fn seen(&self) -> Vec<Value> {
        reqwest::get(format!("http://127.0.0.1:{}/seen", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for WhoamiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_mcp_server_gets_each_persons_own_token_on_a_session_of_its_own() {
    let (port, mcp_port) = (free_port(), free_port());
    let introspect = format!("http://127.0.0.1:{port}/test/introspect");
    let server = WhoamiServer::start(mcp_port, &introspect).await;
    let (broker, upstream) = deployment_with(3600, port, mcp_port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.state.catalog.get("remote.whoami").is_none() {
        assert!(
            Instant::now() < deadline,
            "Leash did not discover remote.whoami"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut alice = connected(&broker, &upstream, "alice", &["plain"]).await;
    let mut bob = connected(&broker, &upstream, "bob", &["plain"]).await;
    let alice_token = mcp_token(&broker, &mut alice, &["remote.whoami"]).await;
    let bob_token = mcp_token(&broker, &mut bob, &["remote.whoami"]).await;
    for _ in 0..2 {
        for (token, who) in [(&alice_token, "alice"), (&bob_token, "bob")] {
            let (answer, text) = whoami(&broker.url, token, "remote.whoami").await;
            assert_eq!(answer["sub"], who, "{text}");
            for seen in server.seen().await {
                assert!(!text.contains(seen["token"].as_str().unwrap()));
            }
        }
    }
    let seen = server.seen().await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen[0]["token"], seen[2]["token"],
        "Alice's token both times"
    );
    assert_ne!(
        seen[0]["token"], seen[1]["token"],
        "Alice's and Bob's tokens differ"
    );
    // A person without a connection is asked to connect, as for HTTP tools.
    disconnect(&mut bob, "plain").await;
    let (answer, _) = mcp_call(&broker.url, &bob_token, "remote.whoami").await;
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_upstream_refuses_before_its_time_is_replaced_on_the_next_call() {
    let (broker, upstream) = deployment(3600).await;
    let mut alice = connected(&broker, &upstream, "alice", &["acme"]).await;
    let token = mcp_token(&broker, &mut alice, &["notes.whoami"]).await;
    whoami(&broker.url, &token, "notes.whoami").await;
    let first = upstream.seen().await[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    // Someone revokes the task's token at the provider behind Leash's back.
    let revoked = reqwest::Client::new()
        .post(format!("{}/token/revocation", upstream.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::oauth::form_body(&[("token", first.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert!(!upstream.active(&first).await);
    // The call it was sent with fails and says so...
    let (answer, _) = mcp_call(&broker.url, &token, "notes.whoami").await;
    let said = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(said.contains("refused the credential"), "{answer}");
    // ...and the next one carries a new token of the task.
    let exchanges = upstream.exchanges().await;
    let (as_alice, _) = whoami(&broker.url, &token, "notes.whoami").await;
    assert_eq!(as_alice["sub"], "alice");
    assert_eq!(upstream.exchanges().await, exchanges + 1);
    let last = upstream.seen().await.last().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(last, first);
    // An upstream that refuses every token cannot turn each call into a new exchange at
    // the provider: one drop per 30 s.
    let revoked = reqwest::Client::new()
        .post(format!("{}/token/revocation", upstream.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::oauth::form_body(&[("token", last.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    for _ in 0..5 {
        let (answer, _) = mcp_call(&broker.url, &token, "notes.whoami").await;
        assert_eq!(answer["result"]["isError"], true, "{answer}");
    }
    assert_eq!(
        upstream.exchanges().await,
        exchanges + 1,
        "no exchange per refused call"
    );
}

impl Upstream {
    /// Whether `POST /token/revocation` answers 503.
    async fn revocation_down(&self, down: bool) {
        let answer = self
            .http
            .post(format!(
                "{}/test/revocation?down={}",
                self.issuer,
                u8::from(down)
            ))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success());
    }

    /// The secrets `echo` mode quoted back in error descriptions.
    async fn echoed(&self) -> Vec<String> {
        self.get("/test/echoed")
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_quoting_a_token_shows_nobody_that_token() {
    let ttl = 3;
    let (broker, upstream) = deployment(ttl).await;
    let mut alice = connected(&broker, &upstream, "alice", &["plain", "acme"]).await;
    let token = mcp_token(&broker, &mut alice, &["plain.whoami", "notes.whoami"]).await;
    // The exchange quotes the person's token, as the error code and then in the
    // description; the refresh (after expiry) quotes the refresh token.
    upstream.mode("echo_code").await;
    let (as_code, as_code_text) = mcp_call(&broker.url, &token, "notes.whoami").await;
    assert_eq!(as_code["result"]["isError"], true, "{as_code}");
    assert!(
        as_code_text.contains("unrecognised_error"),
        "{as_code_text}"
    );
    upstream.mode("echo").await;
    let (exchange, exchange_text) = mcp_call(&broker.url, &token, "notes.whoami").await;
    assert_eq!(exchange["result"]["isError"], true, "{exchange}");
    tokio::time::sleep(Duration::from_secs(ttl) + Duration::from_millis(300)).await;
    let (refresh, refresh_text) = mcp_call(&broker.url, &token, "plain.whoami").await;
    assert_eq!(refresh["error"]["code"], -32042, "{refresh}");
    let echoed = upstream.echoed().await;
    assert_eq!(echoed.len(), 3, "{echoed:?}");
    let mut shown = as_code_text + &exchange_text + &refresh_text;
    shown.push_str(&alice.get("/connections").await.body);
    shown.push_str(&alice.get("/v1/connections").await.body);
    shown.push_str(&serde_json::to_string(&audit(&broker).await).unwrap());
    for secret in &echoed {
        assert!(secret.len() > 10, "{secret}");
        assert!(
            !shown.contains(secret.as_str()),
            "a token the provider quoted is shown"
        );
    }
    assert!(shown.contains("invalid_grant"), "the error code is shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_while_the_provider_is_away_stops_the_task_at_once_and_revokes_later() {
    let (broker, upstream) = deployment(3600).await;
    let mut alice = connected(&broker, &upstream, "alice", &["acme"]).await;
    let token = mcp_token(&broker, &mut alice, &["notes.whoami"]).await;
    whoami(&broker.url, &token, "notes.whoami").await;
    let task_token = upstream.seen().await[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    upstream.revocation_down(true).await;
    disconnect(&mut alice, "acme").await;
    // The connection serves nothing from now on, though the provider has not heard yet.
    assert!(connections_of(&mut alice).await["acme"].is_null());
    let (answer, _) = mcp_call(&broker.url, &token, "notes.whoami").await;
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    assert!(upstream.active(&task_token).await);
    // The provider comes back: the sweep revokes what it could not.
    upstream.revocation_down(false).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.active(&task_token).await {
        assert!(
            Instant::now() < deadline,
            "never revoked after the provider came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sweep revokes the connection's own grant too, maybe a moment after the task's
    // token; until it has, connecting again is refused ("try again shortly").
    while !broker
        .state
        .store
        .disconnected_of("alice", "acme")
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the old connection was never confirmed revoked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Connecting again gives the same task a new token of the new connection.
    connect(&mut alice, &upstream.issuer, &broker.url, "acme", "alice").await;
    let (as_alice, _) = whoami(&broker.url, &token, "notes.whoami").await;
    assert_eq!(as_alice["sub"], "alice");
    let last = upstream.seen().await.last().unwrap()["token"].clone();
    assert_ne!(last, task_token.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_would_inject_a_header_is_refused_and_the_connection_survives() {
    let ttl = 3;
    let (broker, upstream) = deployment(ttl).await;
    let mut alice = connected(&broker, &upstream, "alice", &["plain"]).await;
    let token = mcp_token(&broker, &mut alice, &["plain.whoami"]).await;
    tokio::time::sleep(Duration::from_secs(ttl) + Duration::from_millis(300)).await;
    upstream.mode("ctrl").await;
    let (answer, _) = mcp_call(&broker.url, &token, "plain.whoami").await;
    let said = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(said.contains("not a bearer token"), "{answer}");
    upstream.mode("normal").await;
    let (as_alice, _) = whoami(&broker.url, &token, "plain.whoami").await;
    assert_eq!(as_alice["sub"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_task_expires_its_token_dies_at_the_provider_too() {
    let (broker, upstream) = deployment(3600).await;
    // Carol's account at the provider is the one named bob there.
    let mut carol = signed_in(&broker, "carol", CAROL_PASSWORD).await;
    connect(&mut carol, &upstream.issuer, &broker.url, "acme", "bob").await;
    // Carol's grant lets a task live 5 s: the consent page offers no more.
    let token = mcp_token(&broker, &mut carol, &["notes.whoami"]).await;
    let (as_carol, _) = whoami(&broker.url, &token, "notes.whoami").await;
    assert_eq!(as_carol["sub"], "bob");
    let task_token = upstream.seen().await[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.active(&task_token).await {
        assert!(
            Instant::now() < deadline,
            "the expired task's token is still active at the provider"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The audit row follows the provider's answer by a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = audit(&broker).await;
        assert!(
            events.iter().any(|e| e["kind"] == "task.expired"),
            "the task expired: {events:?}"
        );
        let revoked = events.iter().any(|e| {
            e["kind"] == "connection.task_token_revoked" && e["detail"]["why"] == "the task ended"
        });
        if revoked {
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_while_the_provider_is_away_still_revokes_the_old_connection() {
    // Disconnected while the provider's revocation is away: connecting again waits until
    // the provider confirms the old connection is revoked (many providers revoke a whole
    // grant and reuse it for a returning person: revoked later, the old tokens would take
    // the new connection with them).
    let (broker, upstream) = deployment(3600).await;
    let mut alice = connected(&broker, &upstream, "alice", &["plain"]).await;
    let token = mcp_token(&broker, &mut alice, &["plain.whoami"]).await;
    whoami(&broker.url, &token, "plain.whoami").await;
    let old = upstream.seen().await[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    upstream.revocation_down(true).await;
    disconnect(&mut alice, "plain").await;
    let page = alice.get("/connections").await;
    let form = read_form(&page.body, "/connections/plain/connect");
    let refused = alice
        .post_form("/connections/plain/connect", &form.filled())
        .await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert!(
        refused.body.contains("earlier connection"),
        "{}",
        refused.body
    );
    assert!(upstream.active(&old).await);
    // Once the provider answers again, the old one is revoked and the new one lives.
    upstream.revocation_down(false).await;
    // (The sweep may be retrying it right now: connecting waits for that.)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = alice.get("/connections").await;
        let form = read_form(&page.body, "/connections/plain/connect");
        let started = alice
            .post_form("/connections/plain/connect", &form.filled())
            .await;
        if started.status == 303 {
            break;
        }
        assert!(Instant::now() < deadline, "connecting again: {started:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !upstream.active(&old).await,
        "the old connection's token lives on"
    );
    connect(&mut alice, &upstream.issuer, &broker.url, "plain", "alice").await;
    let (as_alice, _) = whoami(&broker.url, &token, "plain.whoami").await;
    assert_eq!(as_alice["sub"], "alice");
    let new = upstream.seen().await.last().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    // Nothing of the old connection is left for the sweep: the new one lives on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        upstream.active(&new).await,
        "the new connection is untouched"
    );
}
