//! Human approval: before issuance, per call, for renewals; decisions, expiry, races,
//! the event stream and the signed webhook.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

use crate::common::{ADMIN, Reply, TestBroker};

/// `{UP}` is the upstream, `{HOOK}` the webhook receiver.
const POLICY: &str = r#"
[tools."web.search"]
upstream = "http://{UP}/search"
input_schema = { type = "object" }

[tools."payments.send"]
description = "Moves money"
upstream = "http://{UP}/pay"
approval = "per_call"
input_schema = { type = "object", required = ["amount"], properties = { amount = { type = "integer" }, to = { type = "string" } } }

[tools."payments.refund"]
upstream = "http://{UP}/refund"
approval = "per_call"
input_schema = { type = "object" }

[agents.careful]
tools = ["web.search", "payments.*"]
max_ttl_seconds = 600
approval = "issuance"

[agents.payer]
tools = ["web.search", "payments.*"]
max_ttl_seconds = 600

[approvals]
expire_after_seconds = 60
webhook = "http://{HOOK}/hook"
webhook_secret = "hook-secret"
"#;

/// A webhook receiver: answers `fail_first` requests with 500, then 200 (or hangs).
#[derive(Clone, Default)]
struct Hook {
    received: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    fail_first: Arc<Mutex<usize>>,
    hang: bool,
}

async fn spawn_hook(hook: Hook) -> String {
    let app = Router::new().route(
        "/hook",
        post(
            |axum::extract::State(hook): axum::extract::State<Hook>,
             headers: HeaderMap,
             body: String| async move {
                hook.received.lock().unwrap().push((headers, body));
                if hook.hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let mut fail = hook.fail_first.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                StatusCode::OK
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app.with_state(hook)).await.ok() });
    addr
}

async fn broker_with(hook: Hook) -> TestBroker {
    let addr = spawn_hook(hook).await;
    TestBroker::spawn_with(&POLICY.replace("{HOOK}", &addr)).await
}

async fn open(broker: &TestBroker, credential: &str) -> Reply {
    broker
        .post(
            "/v1/tasks",
            Some(credential),
            json!({"purpose": "pay the invoice", "tools": ["web.search", "payments.send"]}),
        )
        .await
}

fn call_with_approval(
    broker: &TestBroker,
    token: &str,
    tool: &str,
    args: Value,
    approval: &str,
) -> reqwest::RequestBuilder {
    broker
        .http
        .post(format!("{}/v1/tools/{tool}/call", broker.url))
        .bearer_auth(token)
        .header("Leash-Approval", approval)
        .json(&args)
}

async fn reply(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    Reply {
        status,
        body: response.json().await.unwrap_or(Value::Null),
    }
}

#[tokio::test]
async fn issuance_waits_for_an_approver_and_long_polls_see_it() {
    let broker = broker_with(Hook::default()).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let pending = open(&broker, &agent).await;
    assert_eq!(pending.status, 202, "{pending:?}");
    assert_eq!(pending.body["state"], "pending_approval");
    let task_id = pending.body["task_id"].as_str().unwrap().to_string();
    let approval_id = pending.body["approval_id"].as_str().unwrap().to_string();
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(shown.body["state"], "pending_approval");
    assert!(shown.body.get("token").is_none());

    let listed = broker
        .get("/v1/approvals?state=pending", Some(&approver))
        .await;
    let items = listed.body["approvals"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["kind"], "issuance");
    assert_eq!(items[0]["agent"], "careful");
    assert_eq!(items[0]["purpose"], "pay the invoice");
    assert_eq!(items[0]["tools"], json!(["payments.send", "web.search"]));

    // The agent long-polls while the approver decides.
    let poll = {
        let (url, agent, task_id) = (broker.url.clone(), agent.clone(), task_id.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let body: Value = reqwest::Client::new()
                .get(format!("{url}/v1/tasks/{task_id}?wait=20"))
                .bearer_auth(agent)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let approved = broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&approver),
            json!({"note": "invoice checked"}),
        )
        .await;
    assert_eq!(
        approved.body,
        json!({"approval_id": approval_id, "state": "approved"})
    );
    let (body, waited) = poll.await.unwrap();
    assert_eq!(body["state"], "active", "{body}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        broker.call(token, "web.search", json!({})).await.status,
        200
    );
    // A second decision is a conflict.
    let again = broker
        .post(
            &format!("/v1/approvals/{approval_id}/deny"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!((again.status, again.code()), (409, "conflict"));
    // The decision is audited with the approver and the note.
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    let decided = audit.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "approval.approved")
        .cloned()
        .unwrap();
    assert_eq!(decided["actor"], "approver:ann");
    assert_eq!(decided["detail"]["note"], "invoice checked");
}

/// The task is denied, and neither its answer nor the store holds a token for it.
async fn assert_denied_without_a_token(broker: &TestBroker, agent: &str, task_id: &str) {
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(agent))
        .await;
    assert_eq!(shown.body["state"], "denied", "{shown:?}");
    assert!(shown.body.get("token").is_none());
    assert!(
        broker
            .state
            .store
            .get_task(task_id)
            .await
            .unwrap()
            .unwrap()
            .token
            .is_none()
    );
}

/// Agent "careful" asks for a task that needs issuance approval: (broker, agent,
/// approver, task id, approval id).
async fn asked_issuance() -> (TestBroker, String, String, String, String) {
    let broker = broker_with(Hook::default()).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let pending = open(&broker, &agent).await;
    let (task_id, approval_id) = (
        pending.body["task_id"].as_str().unwrap().to_string(),
        pending.body["approval_id"].as_str().unwrap().to_string(),
    );
    (broker, agent, approver, task_id, approval_id)
}

#[tokio::test]
async fn a_denied_issuance_never_mints_a_token() {
    let (broker, agent, approver, task_id, approval_id) = asked_issuance().await;
    let reply = broker
        .post(
            &format!("/v1/approvals/{approval_id}/deny"),
            Some(&approver),
            json!({"note": "no"}),
        )
        .await;
    assert_eq!(reply.body["state"], "denied");
    assert_denied_without_a_token(&broker, &agent, &task_id).await;
}

#[tokio::test]
async fn approving_an_expired_issuance_is_409_conflict_and_mints_no_token() {
    let (broker, agent, approver, task_id, approval_id) = asked_issuance().await;
    broker.state.clock.advance(Duration::from_secs(61));
    let late = broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!((late.status, late.code()), (409, "conflict"), "{late:?}");
    assert!(late.message().contains("expired"), "{late:?}");
    assert_denied_without_a_token(&broker, &agent, &task_id).await;
    assert!(
        broker.get("/v1/approvals", Some(&approver)).await.body["approvals"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_sweeper_denies_an_undecided_issuance_once_it_expires() {
    // Without anyone looking at the approval.
    let (broker, agent, _, task_id, _) = asked_issuance().await;
    broker.state.clock.advance(Duration::from_secs(61));
    let mut state = Value::Null;
    for _ in 0..100 {
        state = broker
            .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
            .await
            .body["state"]
            .clone();
        if state == "denied" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(state, "denied");
    assert_denied_without_a_token(&broker, &agent, &task_id).await;
}

/// A payer's task on payments.send and payments.refund, another task of the payer, an
/// approver, and one call of payments.send held for approval.
struct HeldCall {
    broker: TestBroker,
    agent: String,
    approver: String,
    task_id: String,
    token: String,
    other_token: String,
    args: Value,
    held: Reply,
    approval_id: String,
}

async fn held_call() -> HeldCall {
    let broker = broker_with(Hook::default()).await;
    let agent = broker.agent("payer").await;
    let approver = broker.approver("ann").await;
    let (task_id, token) = broker
        .task(&agent, &["payments.send", "payments.refund"])
        .await;
    let (_, other_token) = broker.task(&agent, &["payments.send"]).await;
    let args = json!({"amount": 40, "to": "acme"});
    let held = broker.call(&token, "payments.send", args.clone()).await;
    assert_eq!(held.status, 202, "{held:?}");
    let approval_id = held.body["approval_id"].as_str().unwrap().to_string();
    HeldCall {
        broker,
        agent,
        approver,
        task_id,
        token,
        other_token,
        args,
        held,
        approval_id,
    }
}

impl HeldCall {
    async fn decide(&self, decision: &str, body: Value) {
        let decided = self
            .broker
            .post(
                &format!("/v1/approvals/{}/{decision}", self.approval_id),
                Some(&self.approver),
                body,
            )
            .await;
        assert_eq!(decided.status, 200, "{decided:?}");
    }

    async fn calls(&self) -> Value {
        self.broker
            .get(&format!("/v1/tasks/{}", self.task_id), Some(&self.agent))
            .await
            .body["calls"]
            .clone()
    }
}

#[tokio::test]
async fn a_per_call_tool_answers_202_and_holds_the_call_until_an_approver_decides() {
    let h = held_call().await;
    let broker = &h.broker;
    assert_eq!(h.held.body["state"], "pending_approval");
    assert_eq!(broker.upstream.count(), 0);
    let listed = broker.get("/v1/approvals", Some(&h.approver)).await;
    let item = &listed.body["approvals"][0];
    assert_eq!(item["kind"], "call");
    assert_eq!(
        item["call"],
        json!({"tool": "payments.send", "arguments": h.args})
    );

    // Repeating while it is pending answers 202 with the same id.
    let still = reply(call_with_approval(
        broker,
        &h.token,
        "payments.send",
        h.args.clone(),
        &h.approval_id,
    ))
    .await;
    assert_eq!(
        (still.status, still.body["approval_id"].as_str()),
        (202, Some(h.approval_id.as_str()))
    );
    assert_eq!(broker.upstream.count(), 0);
}

#[tokio::test]
async fn an_approval_is_bound_to_its_task_tool_and_arguments_and_ids_are_not_guessable() {
    let h = held_call().await;
    let broker = &h.broker;
    h.decide("approve", json!({})).await;
    for (tok, tool, a) in [
        (
            &h.token,
            "payments.send",
            json!({"amount": 4000, "to": "acme"}),
        ),
        (&h.token, "payments.refund", h.args.clone()),
        (&h.other_token, "payments.send", h.args.clone()),
    ] {
        let refused = reply(call_with_approval(broker, tok, tool, a, &h.approval_id)).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "forbidden"),
            "{refused:?}"
        );
    }
    for id in ["apr_00000000000000000000000000000000", "'; drop table"] {
        let refused = reply(call_with_approval(
            broker,
            &h.token,
            "payments.send",
            h.args.clone(),
            id,
        ))
        .await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "forbidden"),
            "{id}: {refused:?}"
        );
    }
    assert_eq!(broker.upstream.count(), 0);
    assert_eq!(h.calls().await, 0);
}

#[tokio::test]
async fn an_approved_call_runs_once_whatever_its_key_order_and_a_replay_is_403() {
    let h = held_call().await;
    let broker = &h.broker;
    h.decide("approve", json!({})).await;
    // Key order does not matter: the arguments are compared canonically.
    let reordered = json!({"to": "acme", "amount": 40});
    let done = reply(call_with_approval(
        broker,
        &h.token,
        "payments.send",
        reordered,
        &h.approval_id,
    ))
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(broker.upstream.count(), 1);
    let replay = reply(call_with_approval(
        broker,
        &h.token,
        "payments.send",
        h.args.clone(),
        &h.approval_id,
    ))
    .await;
    assert_eq!(
        (replay.status, replay.code()),
        (403, "forbidden"),
        "{replay:?}"
    );
    assert!(replay.message().contains("already used"));
    assert_eq!(broker.upstream.count(), 1);
    // Only the forwarded call counted.
    assert_eq!(h.calls().await, 1);
}

#[tokio::test]
async fn a_denied_call_approval_is_403_policy_denied_with_the_note() {
    let h = held_call().await;
    h.decide("deny", json!({"note": "not today"})).await;
    let denied = reply(call_with_approval(
        &h.broker,
        &h.token,
        "payments.send",
        h.args.clone(),
        &h.approval_id,
    ))
    .await;
    assert_eq!((denied.status, denied.code()), (403, "policy_denied"));
    assert!(denied.message().contains("not today"), "{denied:?}");
    assert_eq!(h.broker.upstream.count(), 0);
}

#[tokio::test]
async fn decisions_racing_revokes_never_leave_a_usable_token() {
    let broker = Arc::new(broker_with(Hook::default()).await);
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let (mut approved_first, mut revoked_first) = (0, 0);
    for trial in 0..30u64 {
        let pending = open(&broker, &agent).await;
        let task_id = pending.body["task_id"].as_str().unwrap().to_string();
        let approval_id = pending.body["approval_id"].as_str().unwrap().to_string();
        let (b1, b2) = (broker.clone(), broker.clone());
        let (a1, a2) = (approver.clone(), approver.clone());
        let (t, a) = (task_id.clone(), approval_id.clone());
        let approve = tokio::spawn(async move {
            b1.post(&format!("/v1/approvals/{a}/approve"), Some(&a1), json!({}))
                .await
        });
        // Spread the revoke from 0 to 1.35 ms after the approve, so both orders happen.
        let revoke = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(trial % 10 * 150)).await;
            b2.post(
                &format!("/v1/tasks/{t}/revoke"),
                Some(&a2),
                json!({"reason": "race"}),
            )
            .await
        });
        let (approve, revoke) = (approve.await.unwrap(), revoke.await.unwrap());
        assert_eq!(revoke.status, 200, "{revoke:?}");
        match approve.status {
            200 => approved_first += 1,
            409 => revoked_first += 1,
            other => panic!("approve answered {other}: {approve:?}"),
        }
        let shown = broker
            .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
            .await;
        assert_eq!(shown.body["state"], "revoked", "{shown:?}");
        // Whatever token the approval minted is dead (the store keeps it sealed).
        if let Some(sealed) = broker
            .state
            .store
            .get_task(&task_id)
            .await
            .unwrap()
            .unwrap()
            .token
        {
            let token = broker
                .state
                .sealer
                .open(leash_broker::tokens::seal::TASK_TOKEN, &task_id, &sealed)
                .unwrap();
            let reply = broker.call(&token, "web.search", json!({})).await;
            assert_eq!(
                (reply.status, reply.code()),
                (401, "token_revoked"),
                "{reply:?}"
            );
        }
    }
    println!(
        "decision racing revoke: approve first {approved_first}, revoke first {revoked_first}"
    );
    assert_eq!(approved_first + revoked_first, 30);
}

#[tokio::test]
async fn renewals_of_an_approval_grant_wait_for_an_approver() {
    let broker = broker_with(Hook::default()).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let pending = open(&broker, &agent).await;
    let task_id = pending.body["task_id"].as_str().unwrap().to_string();
    broker
        .post(
            &format!(
                "/v1/approvals/{}/approve",
                pending.body["approval_id"].as_str().unwrap()
            ),
            Some(&approver),
            json!({}),
        )
        .await;
    let first = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    let old_token = first.body["token"].as_str().unwrap().to_string();
    broker.state.clock.advance(Duration::from_secs(100));
    let renewal = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&agent),
            json!({"ttl_seconds": 600}),
        )
        .await;
    assert_eq!(renewal.status, 202, "{renewal:?}");
    let approval_id = renewal.body["approval_id"].as_str().unwrap();
    let listed = broker.get("/v1/approvals", Some(&approver)).await;
    assert_eq!(listed.body["approvals"][0]["kind"], "renewal");
    assert_eq!(listed.body["approvals"][0]["ttl_seconds"], 600);
    // Still active on the old token meanwhile.
    assert_eq!(
        broker
            .call(&old_token, "web.search", json!({}))
            .await
            .status,
        200
    );
    broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    let renewed = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    let new_token = renewed.body["token"].as_str().unwrap();
    assert_ne!(new_token, old_token);
    assert!(
        renewed.body["expires_at"].as_str().unwrap() > first.body["expires_at"].as_str().unwrap()
    );
    assert_eq!(
        broker.call(new_token, "web.search", json!({})).await.status,
        200
    );
}

/// A broker with one issuance held for approval by agent "careful", and approver ann:
/// (broker, agent, approver, the 202 answer).
async fn pending_issuance() -> (TestBroker, String, String, Reply) {
    let broker = broker_with(Hook::default()).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let pending = open(&broker, &agent).await;
    assert_eq!(pending.status, 202, "{pending:?}");
    (broker, agent, approver, pending)
}

/// Nothing decided the approval: it is still the one pending.
async fn assert_still_pending(broker: &TestBroker, approver: &str) {
    assert_eq!(
        broker.get("/v1/approvals", Some(approver)).await.body["approvals"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn an_agent_on_the_approval_routes_is_403_forbidden() {
    let (broker, agent, approver, pending) = pending_issuance().await;
    let approval_id = pending.body["approval_id"].as_str().unwrap();
    let by_agent = broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&agent),
            json!({}),
        )
        .await;
    assert_eq!((by_agent.status, by_agent.code()), (403, "forbidden"));
    assert_eq!(broker.get("/v1/approvals", Some(&agent)).await.status, 403);
    assert_eq!(broker.get("/v1/events", Some(&agent)).await.status, 403);
    assert_still_pending(&broker, &approver).await;
}

#[tokio::test]
async fn bad_approval_ids_states_notes_and_waits_are_400_or_404() {
    let (broker, agent, approver, pending) = pending_issuance().await;
    let approval_id = pending.body["approval_id"].as_str().unwrap();
    let unknown = broker
        .post(
            "/v1/approvals/apr_00000000000000000000000000000000/approve",
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
    let malformed = broker
        .post("/v1/approvals/nope/approve", Some(&approver), json!({}))
        .await;
    assert_eq!((malformed.status, malformed.code()), (400, "bad_request"));
    let bad_state = broker
        .get("/v1/approvals?state=maybe", Some(&approver))
        .await;
    assert_eq!((bad_state.status, bad_state.code()), (400, "bad_request"));
    let long_note = broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&approver),
            json!({"note": "x".repeat(1001)}),
        )
        .await;
    assert_eq!((long_note.status, long_note.code()), (400, "bad_request"));
    assert_still_pending(&broker, &approver).await;
    let wait = broker
        .get(
            &format!(
                "/v1/tasks/{}?wait=61",
                pending.body["task_id"].as_str().unwrap()
            ),
            Some(&agent),
        )
        .await;
    assert_eq!((wait.status, wait.code()), (400, "bad_request"));
}

#[tokio::test]
async fn approvers_get_a_live_event_stream() {
    use futures_util::StreamExt;
    let broker = broker_with(Hook::default()).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let response = broker
        .http
        .get(format!("{}/v1/events", broker.url))
        .bearer_auth(&approver)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let pending = open(&broker, &agent).await;
    let approval_id = pending.body["approval_id"].as_str().unwrap().to_string();
    broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    broker
        .post(
            &format!(
                "/v1/tasks/{}/revoke",
                pending.body["task_id"].as_str().unwrap()
            ),
            Some(&approver),
            json!({}),
        )
        .await;
    let mut text = String::new();
    let wanted = [
        "event: approval.requested",
        "event: approval.decided",
        "event: task.activated",
        "event: task.revoked",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !wanted.iter().all(|w| text.contains(w)) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(&approval_id));
    assert!(!text.contains(&agent), "no credential in events");
}

#[tokio::test]
async fn the_webhook_is_signed_retried_and_never_blocks() {
    use hmac::{Hmac, Mac};
    let hook = Hook {
        fail_first: Arc::new(Mutex::new(2)),
        ..Hook::default()
    };
    let broker = broker_with(hook.clone()).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    let pending = open(&broker, &agent).await;
    let approval_id = pending.body["approval_id"].as_str().unwrap();
    broker
        .post(
            &format!("/v1/approvals/{approval_id}/deny"),
            Some(&approver),
            json!({"note": "nope"}),
        )
        .await;
    // Two failures, then the requested and the decided notifications get through.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let received = hook.received.lock().unwrap().clone();
        let ok: Vec<Value> = received
            .iter()
            .skip(2)
            .map(|(_, body)| serde_json::from_str(body).unwrap())
            .collect();
        if ok.len() >= 2 {
            break received;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhook not retried: {} received",
            received.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kinds: Vec<String> = events
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<Value>(b).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        kinds.contains(&"approval.requested".to_string())
            && kinds.contains(&"approval.decided".to_string()),
        "{kinds:?}"
    );
    for (headers, body) in &events {
        let timestamp = headers["leash-timestamp"].to_str().unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers["leash-signature"].to_str().unwrap(), expected);
        assert!(!body.contains(&agent) && !body.contains("hook-secret"));
    }

    // A receiver that hangs delays nothing.
    let hanging = Hook {
        hang: true,
        ..Hook::default()
    };
    let broker = broker_with(hanging.clone()).await;
    let agent = broker.agent("careful").await;
    let approver = broker.approver("ann").await;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let pending = open(&broker, &agent).await;
        let approval_id = pending.body["approval_id"].as_str().unwrap();
        let decided = broker
            .post(
                &format!("/v1/approvals/{approval_id}/approve"),
                Some(&approver),
                json!({}),
            )
            .await;
        assert_eq!(decided.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a hanging webhook slowed the broker: {:?}",
            started.elapsed()
        );
    }
    assert!(!hanging.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_sealed_token_is_refused_before_its_approval_is_spent() {
    let broker = broker_with(Hook::default()).await;
    let agent = broker.agent("payer").await;
    let approver = broker.approver("ann").await;
    let (_, token) = broker.task(&agent, &["payments.send"]).await;
    let args = json!({"amount": 7});
    let held = broker.call(&token, "payments.send", args.clone()).await;
    let approval_id = held.body["approval_id"].as_str().unwrap().to_string();
    broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    // A holder may seal its token (no more blocks can be appended): Leash cannot narrow
    // it for the upstream, and says so before the approval is spent. (Past half of the
    // per-call window, so no capability minted for the unsealed twin is reused.)
    broker
        .state
        .clock
        .advance(std::time::Duration::from_secs(20));
    let sealed = biscuit_auth::Biscuit::from_base64(&token, broker.public_key().await)
        .unwrap()
        .seal()
        .unwrap()
        .to_base64()
        .unwrap();
    let refused = reply(call_with_approval(
        &broker,
        &sealed,
        "payments.send",
        args.clone(),
        &approval_id,
    ))
    .await;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "bad_request"),
        "{refused:?}"
    );
    assert!(refused.message().contains("sealed"), "{refused:?}");
    assert_eq!(broker.upstream.count(), 0);
    // The approval is still there for the unsealed token.
    let done = reply(call_with_approval(
        &broker,
        &token,
        "payments.send",
        args,
        &approval_id,
    ))
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(broker.upstream.count(), 1);
}

#[tokio::test]
async fn one_agent_cannot_bury_the_approvers_in_requests() {
    let addr = spawn_hook(Hook::default()).await;
    let broker = TestBroker::spawn_tuned(&POLICY.replace("{HOOK}", &addr), |config| {
        config.max_pending_approvals_per_agent = 2;
    })
    .await;
    let careful = broker.agent("careful").await;
    let payer = broker.agent("payer").await;
    let approver = broker.approver("ann").await;
    let first = open(&broker, &careful).await;
    assert_eq!(open(&broker, &careful).await.status, 202);
    let over = open(&broker, &careful).await;
    assert_eq!(
        (over.status, over.code()),
        (429, "budget_exhausted"),
        "{over:?}"
    );
    // Nothing was created for the refused request.
    let tasks = broker
        .get("/v1/tasks?state=pending_approval", Some(&approver))
        .await;
    assert_eq!(
        tasks.body["tasks"].as_array().unwrap().len(),
        2,
        "{tasks:?}"
    );
    // Another agent's requests still reach the approvers, up to its own cap.
    let (_, token) = broker.task(&payer, &["payments.send"]).await;
    for amount in [1, 2] {
        let held = broker
            .call(&token, "payments.send", json!({"amount": amount}))
            .await;
        assert_eq!(held.status, 202, "{held:?}");
    }
    let over = broker
        .call(&token, "payments.send", json!({"amount": 3}))
        .await;
    assert_eq!(
        (over.status, over.code()),
        (429, "budget_exhausted"),
        "{over:?}"
    );
    assert_eq!(broker.upstream.count(), 0);
    // Once an approver decides, there is room again.
    let approval_id = first.body["approval_id"].as_str().unwrap();
    let decided = broker
        .post(
            &format!("/v1/approvals/{approval_id}/deny"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(decided.status, 200, "{decided:?}");
    assert_eq!(open(&broker, &careful).await.status, 202);
}

#[tokio::test]
async fn someone_elses_pending_task_is_not_found_at_once_not_after_a_long_poll() {
    let broker = broker_with(Hook::default()).await;
    let owner = broker.agent("careful").await;
    let stranger = broker.agent("payer").await;
    let pending = open(&broker, &owner).await;
    assert_eq!(pending.status, 202, "{pending:?}");
    let task_id = pending.body["task_id"].as_str().unwrap();
    // A stranger's long-poll must neither hold a slot nor learn when the task is decided:
    // it is refused before any waiting (the whole wait is 30 s; the answer is immediate).
    let started = std::time::Instant::now();
    let refused = broker
        .get(&format!("/v1/tasks/{task_id}?wait=30"), Some(&stranger))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (404, "not_found"),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused only after the wait"
    );
}
