//! The SDK against the real broker: the agent client (approvals waited for, renewals,
//! guard), delegation, and the tool-server verifier (revocation reach, fail closed, only
//! forwarded capabilities accepted).

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
    /// Every `Leash-Capability` that passed, in order.
    admitted: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ProtectedTool {
    async fn bind() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ProtectedTool {
            addr: listener.local_addr().unwrap(),
            listener: Some(listener),
            admitted: Arc::default(),
        }
    }

    /// Serves `/search` (web.search) and `/read` (fs.read), each one line of protection,
    /// and `/search-raw` (web.search, raw task tokens accepted by opt-in).
    fn serve(&mut self, verifier: &Verifier) {
        let admitted = self.admitted.clone();
        let echo = move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
            let admitted = admitted.clone();
            async move {
                if let Some(capability) = headers
                    .get("leash-capability")
                    .and_then(|v| v.to_str().ok())
                {
                    admitted.lock().unwrap().push(capability.to_string());
                }
                axum::Json(json!({ "echo": body.0 }))
            }
        };
        let app = Router::new()
            .route(
                "/search",
                post(echo.clone()).layer(RequireCapability::new(verifier.clone(), "web.search")),
            )
            .route(
                "/read",
                post(echo.clone()).layer(RequireCapability::new(verifier.clone(), "fs.read")),
            )
            .route(
                "/search-raw",
                post(echo).layer(
                    RequireCapability::new(verifier.clone(), "web.search").accept_raw_task_tokens(),
                ),
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
        let capability = leash_sdk::capability::per_call(
            &biscuit,
            "web.search",
            now + 30,
            broker.state.forwarding.pair(),
        )
        .unwrap();
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
    let biscuit =
        biscuit_auth::Biscuit::from_base64(task.token(), broker.public_key().await).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let forwarding = broker.state.forwarding.pair();
    let capability =
        leash_sdk::capability::per_call(&biscuit, "web.search", now + 30, forwarding).unwrap();
    verifier
        .verify(&capability, "web.search", &args)
        .await
        .unwrap();
    // The capability expires with its window, checked offline.
    let map = serde_json::Map::new();
    let later = leash_sdk::capability::CallFacts {
        tool: "web.search",
        args: &map,
        now_secs: now + 31,
        counters: None,
        subject: leash_sdk::capability::Subject::Tool,
    };
    let parsed =
        biscuit_auth::Biscuit::from_base64(&capability, broker.public_key().await).unwrap();
    assert!(
        leash_sdk::capability::evaluate_forwarded(&parsed, &later, &forwarding.public()).is_err()
    );

    // The broker goes away: the view ages, and past 400 ms everything is refused.
    broker.shutdown().await;
    let cut = Instant::now();
    let refused_after = loop {
        match verifier.verify(&capability, "web.search", &args).await {
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

/// `token` with one more first-party block holding `code`, appended offline by its holder.
fn append_first_party(token: &str, code: &str) -> String {
    let block = biscuit_auth::builder::BlockBuilder::new()
        .code(code)
        .unwrap();
    biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .unwrap()
        .append(block)
        .unwrap()
        .to_base64()
        .unwrap()
}

/// `token` with one more block holding `code`, signed as a third party by `key`.
fn append_third_party(
    token: &str,
    root: biscuit_auth::PublicKey,
    key: &biscuit_auth::KeyPair,
    code: &str,
) -> String {
    let token = biscuit_auth::Biscuit::from_base64(token, root).unwrap();
    let block = biscuit_auth::builder::BlockBuilder::new()
        .code(code)
        .unwrap();
    let signed = token
        .third_party_request()
        .unwrap()
        .create_block(&key.private(), block)
        .unwrap();
    token
        .append_third_party(key.public(), signed)
        .unwrap()
        .to_base64()
        .unwrap()
}

/// The last block of `capability` cut out as a third-party block (payload and external
/// signature), as anyone who holds the capability can, and appended to `token`.
fn transplant_last_block(capability: &str, token: &str) -> String {
    use biscuit_auth::format::schema;
    use prost::Message;
    let bytes = biscuit_auth::UnverifiedBiscuit::from_base64(capability)
        .unwrap()
        .to_vec()
        .unwrap();
    let container = schema::Biscuit::decode(&bytes[..]).unwrap();
    let last = container.blocks.last().unwrap();
    let cut = schema::ThirdPartyBlockContents {
        payload: last.block.clone(),
        external_signature: last
            .external_signature
            .clone()
            .expect("a third-party block"),
    }
    .encode_to_vec();
    // The unverified API appends without checking the external signature, like a
    // hand-made token would.
    biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .unwrap()
        .append_third_party(&cut)
        .unwrap()
        .to_base64()
        .unwrap()
}

fn assert_refused(reply: &(u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(
        (reply.0, reply.1["error"]["code"].as_str()),
        (status, Some(code)),
        "{what}: {}",
        reply.1
    );
}

/// A tool server behind a verifier, a task on web.search and fs.read, another task on
/// web.search, and the capability the broker forwarded for one call of the first.
struct Forwarded {
    broker: TestBroker,
    tool: ProtectedTool,
    verifier: Verifier,
    task: Task,
    other: Task,
    capability: String,
}

async fn forwarded() -> Forwarded {
    let (broker, tool, verifier) = setup().await;
    let payer = Broker::new(&broker.url, broker.agent("payer").await);
    let task = payer
        .start_task(TaskRequest::new("search", ["web.search", "fs.read"]))
        .await
        .unwrap();
    let other = payer
        .start_task(TaskRequest::new("another", ["web.search"]))
        .await
        .unwrap();
    assert_eq!(
        task.call("web.search", json!({"q": 1})).await.unwrap(),
        json!({"echo": {"q": 1}})
    );
    let capability = tool
        .admitted
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("the tool server admitted the forwarded call");
    Forwarded {
        broker,
        tool,
        verifier,
        task,
        other,
        capability,
    }
}

#[tokio::test]
async fn the_forwarding_key_is_published_beside_the_root_keys() {
    let (broker, _tool, _verifier) = setup().await;
    let keys = broker.get("/.well-known/leash/keys", None).await.body;
    let published = keys["forwarding_key"]
        .as_str()
        .expect("a forwarding key is published");
    assert!(published.starts_with("ed25519/"), "{keys}");
    assert_ne!(
        published,
        keys["keys"][0]["public_key"].as_str().unwrap(),
        "not a root key"
    );
}

#[tokio::test]
async fn a_tool_server_accepts_a_forwarded_capability_and_refuses_the_raw_task_token() {
    let Forwarded {
        broker: _broker,
        tool,
        verifier,
        task,
        other: _other,
        capability,
    } = forwarded().await;
    let verified = verifier
        .verify(&capability, "web.search", &json!({}))
        .await
        .unwrap();
    assert!(verified.forwarded);
    assert_eq!(
        tool.call("/search", &capability, json!({"q": 2})).await.0,
        200
    );

    // The raw task token, sent straight to the tool server: no approvals, schema,
    // budgets or audit would have run. Refused.
    let raw = tool.call("/search", task.token(), json!({"q": 3})).await;
    assert_refused(&raw, 403, "capability_denied", "a raw task token");
    assert!(
        raw.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not forwarded"),
        "{}",
        raw.1
    );
}

#[tokio::test]
async fn an_agent_made_copy_of_a_forwarded_block_is_403_capability_denied() {
    let Forwarded {
        broker,
        tool,
        verifier: _verifier,
        task,
        other: _other,
        capability: _capability,
    } = forwarded().await;
    let root = broker.public_key().await;
    let copies = [
        (
            "the forwarded block's checks, first-party",
            append_first_party(
                task.token(),
                r#"check if call("web.search"); check if time($t), $t <= 2099-01-01T00:00:00Z;"#,
            ),
        ),
        (
            "a first-party forwarded fact",
            append_first_party(task.token(), r#"forwarded("web.search");"#),
        ),
        (
            "a first-party rule deriving forwarded",
            append_first_party(task.token(), "forwarded($t) <- call($t);"),
        ),
        (
            "a forwarded fact in a third-party block signed by the agent's own key",
            append_third_party(
                task.token(),
                root,
                &biscuit_auth::KeyPair::new(),
                r#"forwarded("web.search"); check if call("web.search");"#,
            ),
        ),
    ];
    for (what, copy) in &copies {
        assert_refused(
            &tool.call("/search", copy, json!({"q": 4})).await,
            403,
            "capability_denied",
            what,
        );
    }
}

#[tokio::test]
async fn a_forwarded_block_moved_onto_another_token_is_401_token_invalid() {
    // Its signature covers the block it was signed after.
    let Forwarded {
        broker: _broker,
        tool,
        verifier: _verifier,
        task,
        other,
        capability,
    } = forwarded().await;
    for (what, target) in [
        ("another task's token", other.token().to_string()),
        (
            "the same task's token, attenuated",
            task.attenuate(&[r#"check if call("web.search")"#]).unwrap(),
        ),
    ] {
        assert_refused(
            &tool
                .call(
                    "/search",
                    &transplant_last_block(&capability, &target),
                    json!({"q": 5}),
                )
                .await,
            401,
            "token_invalid",
            what,
        );
    }
}

#[tokio::test]
async fn a_forwarded_capability_only_narrows_and_names_its_one_tool() {
    let Forwarded {
        broker: _broker,
        tool,
        verifier: _verifier,
        task: _task,
        other: _other,
        capability,
    } = forwarded().await;
    // Replayed for another tool of the same task: its block names web.search only.
    let replayed = tool.call("/read", &capability, json!({"path": "/x"})).await;
    assert_refused(&replayed, 403, "capability_denied", "replayed for fs.read");
    assert!(
        replayed.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call(\"web.search\")"),
        "{}",
        replayed.1
    );

    // Its holder can still narrow it, never widen it.
    let narrowed = append_first_party(&capability, r#"check if arg("q", $q), $q == 6;"#);
    assert_eq!(
        tool.call("/search", &narrowed, json!({"q": 6})).await.0,
        200
    );
    assert_refused(
        &tool.call("/search", &narrowed, json!({"q": 7})).await,
        403,
        "capability_denied",
        "a narrowed forwarded capability",
    );
}

#[tokio::test]
async fn a_route_or_a_verifier_that_opts_in_accepts_raw_task_tokens() {
    let Forwarded {
        broker,
        tool,
        verifier,
        task,
        other: _other,
        capability,
    } = forwarded().await;
    assert_eq!(
        tool.call("/search-raw", task.token(), json!({"q": 8}))
            .await
            .0,
        200
    );
    assert_eq!(
        tool.call("/search-raw", &capability, json!({"q": 9}))
            .await
            .0,
        200
    );
    let mut config = VerifierConfig::new(&broker.url);
    config.accept_raw_task_tokens = true;
    let lenient = Verifier::connect_with(config).await.unwrap();
    let verified = lenient
        .verify(task.token(), "web.search", &json!({}))
        .await
        .unwrap();
    assert!(!verified.forwarded, "a raw token is marked as such");
    assert!(
        verifier
            .verify(task.token(), "web.search", &json!({}))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_verifier_refuses_everything_when_the_broker_publishes_no_forwarding_key() {
    let (broker, tool, _verifier) = setup().await;
    let payer = Broker::new(&broker.url, broker.agent("payer").await);
    let task = payer
        .start_task(TaskRequest::new("search", ["web.search"]))
        .await
        .unwrap();
    task.call("web.search", json!({})).await.unwrap();
    let forwarded = tool.admitted.lock().unwrap().last().cloned().unwrap();

    // An older broker: root keys only, and an empty revocation feed.
    let mut keys = broker.get("/.well-known/leash/keys", None).await.body;
    keys.as_object_mut().unwrap().remove("forwarding_key");
    let app = Router::new()
        .route(
            "/.well-known/leash/keys",
            axum::routing::get(move || {
                let keys = keys.clone();
                async move { axum::Json(keys) }
            }),
        )
        .route(
            "/v1/revocations",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                axum::Json(json!({"revocations": [], "next": 0}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });

    let verifier = Verifier::connect(&old).await.unwrap();
    let err = verifier
        .verify(&forwarded, "web.search", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 403, "{err}");
    assert!(err.to_string().contains("no forwarding key"), "{err}");
    // Opted in, the tool server still takes task tokens it can check with the root key.
    let mut config = VerifierConfig::new(&old);
    config.accept_raw_task_tokens = true;
    let lenient = Verifier::connect_with(config).await.unwrap();
    lenient
        .verify(task.token(), "web.search", &json!({}))
        .await
        .unwrap();
}
