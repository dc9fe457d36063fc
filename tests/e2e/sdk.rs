//! The SDK against the real broker: the agent client (approvals waited for, renewals,
//! guard), delegation, and the tool-server verifier (revocation reach, fail closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use leash_sdk::protocol::ErrorCode;
use leash_sdk::{Broker, Error, RequireCapability, Task, TaskRequest, Verifier, VerifierConfig};
use serde_json::{Value, json};

use crate::common::TestBroker;

const POLICY: &str = r#"
[tools."web.search"]
upstream = "http://{TOOL}/search"
input_schema = { type = "object" }

[tools."fs.read"]
upstream = "http://{TOOL}/read"
input_schema = { type = "object", properties = { path = { type = "string" } } }

[tools."payments.send"]
upstream = "http://{UP}/pay"
approval = "per_call"
input_schema = { type = "object" }

[agents.careful]
tools = ["web.search", "fs.read"]
max_ttl_seconds = 600
approval = "issuance"

[agents.payer]
tools = ["web.search", "fs.read", "payments.send"]
max_ttl_seconds = 600
"#;

/// An axum tool server protected by the SDK's verifier, bound before the broker exists.
struct ProtectedTool {
    addr: std::net::SocketAddr,
    listener: Option<tokio::net::TcpListener>,
}

impl ProtectedTool {
    async fn bind() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ProtectedTool {
            addr: listener.local_addr().unwrap(),
            listener: Some(listener),
        }
    }

    /// Serves `/search` (web.search) and `/read` (fs.read), each one line of protection.
    fn serve(&mut self, verifier: &Verifier) {
        let echo = |body: axum::Json<Value>| async move { axum::Json(json!({ "echo": body.0 })) };
        let app = Router::new()
            .route(
                "/search",
                post(echo).layer(RequireCapability::new(verifier.clone(), "web.search")),
            )
            .route(
                "/read",
                post(echo).layer(RequireCapability::new(verifier.clone(), "fs.read")),
            );
        let listener = self.listener.take().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    }

    async fn call(&self, path: &str, capability: &str, args: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}", self.addr))
            .header("Leash-Capability", capability)
            .json(&args)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }
}

async fn setup() -> (TestBroker, ProtectedTool, Verifier) {
    let mut tool = ProtectedTool::bind().await;
    let broker = TestBroker::spawn_with(&POLICY.replace("{TOOL}", &tool.addr.to_string())).await;
    let verifier = Verifier::connect(&broker.url).await.unwrap();
    tool.serve(&verifier);
    (broker, tool, verifier)
}

/// Approves every pending approval until stopped, like an attentive human.
fn auto_approve(broker: &TestBroker, approver: String) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (url, flag) = (broker.url.clone(), stop.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !flag.load(Ordering::SeqCst) {
            let list: Value = http
                .get(format!("{url}/v1/approvals"))
                .bearer_auth(&approver)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for a in list["approvals"].as_array().cloned().unwrap_or_default() {
                let id = a["approval_id"].as_str().unwrap();
                http.post(format!("{url}/v1/approvals/{id}/approve"))
                    .bearer_auth(&approver)
                    .send()
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    stop
}

fn code(result: Result<Value, Error>) -> Option<ErrorCode> {
    result.err().and_then(|e| e.code())
}

#[tokio::test]
async fn the_agent_client_waits_for_approvals_renews_and_completes() {
    let (broker, _tool, _verifier) = setup().await;
    let approver = broker.approver("ann").await;
    let stop = auto_approve(&broker, approver);

    let careful = Broker::new(&broker.url, broker.agent("careful").await)
        .approval_timeout(Duration::from_secs(20));
    let mut task = careful
        .start_task(TaskRequest::new("look things up", ["web.search"]).ttl_seconds(120))
        .await
        .unwrap();
    assert_eq!(
        task.call("web.search", json!({"q": "x"})).await.unwrap(),
        json!({"echo": {"q": "x"}})
    );
    let before = task.token().to_string();
    task.renew(300).await.unwrap();
    assert_ne!(
        task.token(),
        before,
        "the approved renewal's token replaced the old one"
    );
    assert_eq!(
        code(task.call("no.such", json!({})).await),
        Some(ErrorCode::UnknownTool)
    );

    let payer = Broker::new(&broker.url, broker.agent("payer").await)
        .approval_timeout(Duration::from_secs(20));
    let paying = payer
        .start_task(TaskRequest::new("pay", ["payments.send"]))
        .await
        .unwrap();
    let paid = paying
        .call("payments.send", json!({"amount": 5}))
        .await
        .unwrap();
    assert_eq!(paid["echo"], json!({"amount": 5}));
    assert_eq!(
        broker.upstream.count(),
        1,
        "the held call went through exactly once"
    );
    stop.store(true, Ordering::SeqCst);

    // The guard completes the task when it goes out of scope.
    let id = {
        let guard = payer
            .start_task(TaskRequest::new("short", ["web.search"]))
            .await
            .unwrap()
            .guard();
        guard.call("web.search", json!({})).await.unwrap();
        guard.id().to_string()
    };
    let mut state = Value::Null;
    for _ in 0..100 {
        state = broker
            .get(&format!("/v1/tasks/{id}"), Some(crate::common::ADMIN))
            .await
            .body["state"]
            .clone();
        if state == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "completed");
    task.complete().await.unwrap();
    assert_eq!(
        code(task.call("web.search", json!({})).await),
        Some(ErrorCode::TaskInactive)
    );
}

#[tokio::test]
async fn start_task_gives_up_or_reports_a_denial() {
    let (broker, _tool, _verifier) = setup().await;
    let careful = Broker::new(&broker.url, broker.agent("careful").await)
        .approval_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let err = careful
        .start_task(TaskRequest::new("nobody looks", ["web.search"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ApprovalTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let approver = broker.approver("ann").await;
    let (url, who) = (broker.url.clone(), approver.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let http = reqwest::Client::new();
        let list: Value = http
            .get(format!("{url}/v1/approvals"))
            .bearer_auth(&who)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for a in list["approvals"].as_array().unwrap() {
            let id = a["approval_id"].as_str().unwrap();
            http.post(format!("{url}/v1/approvals/{id}/deny"))
                .bearer_auth(&who)
                .send()
                .await
                .unwrap();
        }
    });
    let careful = careful.approval_timeout(Duration::from_secs(20));
    let err = careful
        .start_task(TaskRequest::new("will be denied", ["web.search"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotActivated { state, .. } if state == "denied"),
        "{err}"
    );
}

#[tokio::test]
async fn delegation_narrows_and_revocation_reaches_children() {
    let (broker, _tool, _verifier) = setup().await;
    let payer = Broker::new(&broker.url, broker.agent("payer").await);
    let parent = payer
        .start_task(TaskRequest::new("research", ["web.search", "fs.read"]))
        .await
        .unwrap();
    let child = parent
        .attenuate(&[
            r#"check if call("fs.read")"#,
            r#"check if arg("path", $p), $p.starts_with("/data/")"#,
        ])
        .unwrap();
    let sibling = parent
        .attenuate(&[r#"check if call("web.search")"#])
        .unwrap();
    let sub = Task::from_token(&broker.url, child.clone()).unwrap();
    assert_eq!(sub.id(), parent.id());
    sub.call("fs.read", json!({"path": "/data/a"}))
        .await
        .unwrap();
    assert_eq!(
        code(sub.call("fs.read", json!({"path": "/etc/passwd"})).await),
        Some(ErrorCode::CapabilityDenied)
    );
    assert_eq!(
        code(sub.call("web.search", json!({})).await),
        Some(ErrorCode::CapabilityDenied)
    );
    assert!(
        parent.attenuate(&["tool(\"payments.send\")"]).is_err(),
        "attenuation accepts checks only"
    );
    // A model-chosen tool name cannot walk to another endpoint.
    let traversal = sub
        .call(&format!("../tasks/{}/complete?", parent.id()), json!({}))
        .await
        .unwrap_err();
    assert!(matches!(traversal, Error::Token(_)), "{traversal}");
    assert!(
        !format!("{sub:?}").contains(sub.token()),
        "no token in Debug output"
    );

    // One child revoked: the parent and the sibling go on.
    parent.revoke_token(&child).await.unwrap();
    assert_eq!(
        code(sub.call("fs.read", json!({"path": "/data/a"})).await),
        Some(ErrorCode::TokenRevoked)
    );
    let sibling_task = Task::from_token(&broker.url, sibling).unwrap();
    sibling_task.call("web.search", json!({})).await.unwrap();
    parent.call("fs.read", json!({"path": "/x"})).await.unwrap();

    // The parent task revoked: every child dies.
    let approver = broker.approver("ann").await;
    broker
        .post(
            &format!("/v1/tasks/{}/revoke", parent.id()),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(
        code(sibling_task.call("web.search", json!({})).await),
        Some(ErrorCode::TokenRevoked)
    );
}

#[tokio::test]
async fn a_verifier_protected_tool_server_refuses_a_revoked_task() {
    let (broker, tool, _verifier) = setup().await;
    let payer = Broker::new(&broker.url, broker.agent("payer").await);
    let approver = broker.approver("ann").await;
    let mut delays = Vec::new();
    for _ in 0..15 {
        let task = payer
            .start_task(TaskRequest::new("search", ["web.search", "fs.read"]))
            .await
            .unwrap();
        // Through the broker: the tool server verified the per-call capability itself.
        assert_eq!(
            task.call("web.search", json!({"q": 1})).await.unwrap(),
            json!({"echo": {"q": 1}})
        );
        // A capability as the broker would send it, replayed straight to the tool server.
        let biscuit =
            biscuit_auth::Biscuit::from_base64(task.token(), broker.public_key().await).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let capability = leash_sdk::capability::per_call(&biscuit, "web.search", now + 30).unwrap();
        assert_eq!(
            tool.call("/search", &capability, json!({"q": 2})).await.0,
            200
        );
        let (status, body) = tool.call("/read", &capability, json!({"path": "/x"})).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("capability_denied")),
            "{body}"
        );
        assert_eq!(tool.call("/search", "garbage", json!({})).await.0, 401);

        let revoked = broker
            .post(
                &format!("/v1/tasks/{}/revoke", task.id()),
                Some(&approver),
                json!({}),
            )
            .await;
        assert_eq!(revoked.status, 200);
        let answered = Instant::now();
        loop {
            let (status, body) = tool.call("/search", &capability, json!({"q": 3})).await;
            if status == 401 {
                assert_eq!(body["error"]["code"], "token_revoked");
                break;
            }
            assert!(
                answered.elapsed() < Duration::from_secs(3),
                "the tool server kept accepting a revoked task"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delays.push(answered.elapsed());
    }
    delays.sort();
    println!(
        "revoke response -> refusal at a verifier-protected tool server (long-poll): p50 {:?}, max {:?} over {} trials",
        delays[delays.len() / 2],
        delays[delays.len() - 1],
        delays.len()
    );
}

#[tokio::test]
async fn the_verifier_fails_closed_when_its_revocation_view_is_stale() {
    let (broker, _tool, _verifier) = setup().await;
    let mut config = VerifierConfig::new(&broker.url);
    config.max_staleness = Duration::from_millis(400);
    config.poll_interval = Duration::from_millis(50);
    let verifier = Verifier::connect_with(config).await.unwrap();
    let payer = Broker::new(&broker.url, broker.agent("payer").await);
    let task = payer
        .start_task(TaskRequest::new("search", ["web.search"]))
        .await
        .unwrap();
    let args = json!({});
    verifier
        .verify(task.token(), "web.search", &args)
        .await
        .unwrap();
    // The capability expires with its window, checked offline.
    let biscuit =
        biscuit_auth::Biscuit::from_base64(task.token(), broker.public_key().await).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let capability = leash_sdk::capability::per_call(&biscuit, "web.search", now + 30).unwrap();
    let map = serde_json::Map::new();
    let later = leash_sdk::capability::CallFacts {
        tool: "web.search",
        args: &map,
        now_secs: now + 31,
        counters: None,
    };
    let capability =
        biscuit_auth::Biscuit::from_base64(&capability, broker.public_key().await).unwrap();
    assert!(leash_sdk::capability::evaluate(&capability, &later).is_err());

    // The broker goes away: the view ages, and past 400 ms everything is refused.
    broker.shutdown().await;
    let cut = Instant::now();
    let refused_after = loop {
        match verifier.verify(task.token(), "web.search", &args).await {
            Ok(_) => {}
            Err(err) => {
                assert!(matches!(err, leash_sdk::VerifyError::Stale { .. }), "{err}");
                assert_eq!(err.status(), 503);
                break cut.elapsed();
            }
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "a stale verifier kept accepting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        refused_after <= Duration::from_millis(600),
        "{refused_after:?}"
    );
}
