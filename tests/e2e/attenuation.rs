//! Tokens attenuated offline with biscuit-auth itself, exactly as a holder would.

use biscuit_auth::Biscuit;
use biscuit_auth::builder::BlockBuilder;
use serde_json::json;

use crate::common::{ADMIN, TestBroker};

async fn attenuate(broker: &TestBroker, token: &str, code: &str) -> String {
    let parent = Biscuit::from_base64(token, broker.public_key().await)
        .expect("verifies with the published key");
    parent
        .append(BlockBuilder::new().code(code).expect("datalog"))
        .unwrap()
        .to_base64()
        .unwrap()
}

#[tokio::test]
async fn a_token_narrowed_to_one_tool_refuses_the_other() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["web.search", "fs.read"]).await;
    let child = attenuate(
        &broker,
        &token,
        r#"check if call("fs.read"); check if arg("path", $p), $p.starts_with("/data/");"#,
    )
    .await;
    assert_eq!(
        broker
            .call(&child, "fs.read", json!({"path": "/data/a"}))
            .await
            .status,
        200
    );
    let outside = broker
        .call(&child, "fs.read", json!({"path": "/etc/passwd"}))
        .await;
    assert_eq!((outside.status, outside.code()), (403, "capability_denied"));
    let other = broker
        .call(&child, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!((other.status, other.code()), (403, "capability_denied"));
    assert!(other.message().contains("call(\"fs.read\")"), "{other:?}");
    // The parent is untouched.
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    // The child lists only what it may call.
    let listed = broker.get("/v1/tools", Some(&child)).await;
    let names: Vec<&str> = listed.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["fs.read"]);
}

#[tokio::test]
async fn attenuation_blocks_grant_nothing() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    // A tool the agent is granted but the task is not.
    let more_tools = attenuate(&broker, &token, r#"tool("fs.read"); tool("shell.exec");"#).await;
    for tool in ["fs.read", "shell.exec"] {
        let reply = broker.call(&more_tools, tool, json!({})).await;
        assert_eq!(reply.status, 403, "{tool}: {reply:?}");
    }
    // A role fact does not make a task token an approver.
    let approver = attenuate(&broker, &token, r#"role("approver"); approver("mallory");"#).await;
    let revoke = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(
        (revoke.status, revoke.code()),
        (403, "forbidden"),
        "{revoke:?}"
    );
    let list = broker.get("/v1/tasks", Some(&approver)).await;
    assert_eq!(list.status, 403);
    // A later time fact does not extend the window.
    let later = attenuate(&broker, &token, "time(2030-01-01T00:00:00Z);").await;
    // Walk to the end of the 600 s window, calling often enough to stay under the idle timeout.
    for _ in 0..5 {
        broker
            .state
            .clock
            .advance(std::time::Duration::from_secs(100));
        assert_eq!(
            broker
                .call(&later, "web.search", json!({"query": "x"}))
                .await
                .status,
            200
        );
    }
    broker
        .state
        .clock
        .advance(std::time::Duration::from_secs(90));
    assert_eq!(
        broker
            .call(&later, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    broker
        .state
        .clock
        .advance(std::time::Duration::from_secs(15));
    let late = broker
        .call(&later, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!(late.status, 401, "{late:?}");
    assert_eq!(late.code(), "token_expired");
}

async fn status(broker: &TestBroker, token: &str) -> (u16, String) {
    let reply = broker
        .call(token, "web.search", json!({"query": "x"}))
        .await;
    (reply.status, reply.code().to_string())
}

fn ok() -> (u16, String) {
    (200, String::new())
}

fn spent() -> (u16, String) {
    (429, "budget_exhausted".to_string())
}

#[tokio::test]
async fn a_child_budget_holds_while_the_parent_goes_on() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    let child = attenuate(&broker, &token, "reject if token_calls($n), $n >= 3").await;
    for _ in 0..3 {
        assert_eq!(status(&broker, &child).await, ok());
    }
    assert_eq!(status(&broker, &child).await, spent());
    for _ in 0..5 {
        assert_eq!(status(&broker, &token).await, ok());
    }
}

#[tokio::test]
async fn a_grandchild_cannot_outspend_its_parents_budget() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    let child = attenuate(&broker, &token, "reject if token_calls($n), $n >= 3").await;
    let sibling = attenuate(&broker, &token, "reject if token_calls($n), $n >= 2").await;
    for _ in 0..3 {
        assert_eq!(status(&broker, &child).await, ok());
    }
    assert_eq!(status(&broker, &child).await, spent());
    // Appending a block offline does not reset the child's budget: any grandchild, with
    // no budget of its own or a larger one, is refused too.
    let blank = attenuate(&broker, &child, "check if true").await;
    let larger = attenuate(&broker, &child, "reject if token_calls($n), $n >= 100").await;
    let great = attenuate(&broker, &blank, "check if true").await;
    for descendant in [&blank, &larger, &great] {
        assert_eq!(status(&broker, descendant).await, spent());
    }
    // A sibling with its own budget is unaffected, and the parent goes on.
    for _ in 0..2 {
        assert_eq!(status(&broker, &sibling).await, ok());
    }
    assert_eq!(status(&broker, &sibling).await, spent());
    for _ in 0..3 {
        assert_eq!(status(&broker, &token).await, ok());
    }
}

#[tokio::test]
async fn calls_of_grandchildren_count_against_the_childs_budget() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    let child = attenuate(&broker, &token, "reject if token_calls($n), $n >= 4").await;
    let first = attenuate(&broker, &child, "check if true").await;
    let second = attenuate(&broker, &child, "check if true; check if true").await;
    assert_eq!(status(&broker, &first).await, ok());
    assert_eq!(status(&broker, &second).await, ok());
    assert_eq!(status(&broker, &first).await, ok());
    assert_eq!(status(&broker, &child).await, ok());
    for token in [&child, &first, &second] {
        assert_eq!(status(&broker, token).await, spent());
    }
    // A grandchild's own, smaller budget holds on its own count.
    let other = attenuate(&broker, &token, "reject if token_calls($n), $n >= 10").await;
    let small = attenuate(&broker, &other, "reject if token_calls($n), $n >= 1").await;
    assert_eq!(status(&broker, &small).await, ok());
    assert_eq!(status(&broker, &small).await, spent());
    assert_eq!(status(&broker, &other).await, ok());
}

#[tokio::test]
async fn a_spent_budget_stays_spent_across_a_restart() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    let child = attenuate(&broker, &token, "reject if token_calls($n), $n >= 3").await;
    let grandchild = attenuate(&broker, &child, "check if true").await;
    assert_eq!(status(&broker, &grandchild).await, ok());
    assert_eq!(status(&broker, &child).await, ok());
    let broker = broker.restart().await;
    assert_eq!(status(&broker, &grandchild).await, ok());
    let broker = broker.restart().await;
    for descendant in [&child, &grandchild] {
        assert_eq!(status(&broker, descendant).await, spent());
    }
    let late = attenuate(&broker, &child, "check if true").await;
    assert_eq!(status(&broker, &late).await, spent());
    assert_eq!(status(&broker, &token).await, ok());
}

/// A task's token, two children of it, and a grandchild under the first child.
struct Family {
    broker: TestBroker,
    agent: String,
    task_id: String,
    token: String,
    child: String,
    sibling: String,
    grandchild: String,
}

async fn family() -> Family {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    let child = attenuate(&broker, &token, r#"check if call("web.search")"#).await;
    let sibling = attenuate(&broker, &token, r#"check if call("web.search")"#).await;
    let grandchild = attenuate(&broker, &child, "check if true").await;
    Family {
        broker,
        agent,
        task_id,
        token,
        child,
        sibling,
        grandchild,
    }
}

async fn assert_revoked(broker: &TestBroker, dead: &str) {
    let reply = broker.call(dead, "web.search", json!({"query": "x"})).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "token_revoked"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn an_attenuated_token_can_neither_complete_nor_read_its_task() {
    // A sub-agent's token, or a per-call capability an upstream got.
    let f = family().await;
    let (broker, task_id) = (&f.broker, &f.task_id);
    let by_child = broker
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&f.child),
            json!({}),
        )
        .await;
    assert_eq!(
        (by_child.status, by_child.code()),
        (403, "forbidden"),
        "{by_child:?}"
    );
    let read = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&f.child))
        .await;
    assert_eq!((read.status, read.code()), (404, "not_found"), "{read:?}");
    assert_eq!(
        broker
            .call(&f.token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    let capability = broker
        .upstream
        .received
        .lock()
        .unwrap()
        .last()
        .and_then(|r| r.capability.clone())
        .expect("Leash-Capability sent upstream");
    let by_upstream = broker
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&capability),
            json!({}),
        )
        .await;
    // A forwarded capability is no bearer for Leash at all (see
    // security::a_forwarded_capability_is_no_bearer_for_leash): refused before any role.
    assert_eq!(
        (by_upstream.status, by_upstream.code()),
        (401, "token_invalid"),
        "{by_upstream:?}"
    );
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&f.agent))
        .await;
    assert_eq!(shown.body["state"], "active", "{shown:?}");
}

#[tokio::test]
async fn another_tasks_token_may_not_revoke_a_child_token() {
    let f = family().await;
    let (_, stranger) = f.broker.task(&f.agent, &["web.search"]).await;
    let refused = f
        .broker
        .post(
            "/v1/tokens/revoke",
            Some(&stranger),
            json!({"token": f.child}),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "forbidden"),
        "{refused:?}"
    );
    assert_eq!(
        f.broker
            .call(&f.child, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn revoking_a_child_token_kills_its_descendants_and_leaves_the_parent_and_siblings() {
    let f = family().await;
    let broker = &f.broker;
    // The parent (an ancestor) revokes the child.
    let revoked = broker
        .post(
            "/v1/tokens/revoke",
            Some(&f.token),
            json!({"token": f.child}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    for dead in [&f.child, &f.grandchild] {
        assert_revoked(broker, dead).await;
    }
    for alive in [&f.token, &f.sibling] {
        assert_eq!(
            broker
                .call(alive, "web.search", json!({"query": "x"}))
                .await
                .status,
            200
        );
    }
    let feed = broker.get("/v1/revocations?after=0", None).await;
    let entries = feed.body["revocations"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["task_id"], json!(f.task_id));
    assert_eq!(revoked.body["revocation_id"], entries[0]["revocation_id"]);
}

#[tokio::test]
async fn revoking_the_task_kills_every_token_after_a_child_revoke_and_ends_it_for_good() {
    // A story: a child is revoked first, then the whole task.
    let f = family().await;
    let (broker, task_id) = (&f.broker, &f.task_id);
    let revoked = broker
        .post(
            "/v1/tokens/revoke",
            Some(&f.token),
            json!({"token": f.child}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let feed = broker.get("/v1/revocations?after=0", None).await;

    let approver = broker.approver("ann").await;
    let ended = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(&approver),
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!(ended.body, json!({"task_id": task_id, "state": "revoked"}));
    for dead in [&f.token, &f.sibling, &f.child, &f.grandchild] {
        assert_revoked(broker, dead).await;
    }
    let feed = broker
        .get(
            &format!("/v1/revocations?after={}", feed.body["next"]),
            None,
        )
        .await;
    assert_eq!(
        feed.body["revocations"].as_array().unwrap().len(),
        1,
        "{feed:?}"
    );
    // Completing after a revoke is a conflict; revoking again is idempotent.
    let complete = broker
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&f.agent),
            json!({}),
        )
        .await;
    assert_eq!((complete.status, complete.code()), (409, "conflict"));
    let again = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(again.status, 200);
}

#[tokio::test]
async fn revoking_an_agent_ends_its_tasks_and_credentials() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, a) = broker.task(&agent, &["web.search"]).await;
    let (_, b) = broker.task(&agent, &["fs.read"]).await;
    let other = broker.agent("small").await;
    let (_, c) = broker.task(&other, &["web.search"]).await;
    let approver = broker.approver("ann").await;
    let by_agent = broker
        .post("/v1/agents/bot/revoke", Some(&other), json!({}))
        .await;
    assert_eq!((by_agent.status, by_agent.code()), (403, "forbidden"));
    let reply = broker
        .post(
            "/v1/agents/bot/revoke",
            Some(&approver),
            json!({"reason": "compromised"}),
        )
        .await;
    assert_eq!(reply.body, json!({"revoked_tasks": 2}));
    assert_eq!(
        broker
            .call(&a, "web.search", json!({"query": "x"}))
            .await
            .code(),
        "token_revoked"
    );
    assert_eq!(
        broker.call(&b, "fs.read", json!({})).await.code(),
        "token_revoked"
    );
    let open = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "p", "tools": ["web.search"]}),
        )
        .await;
    assert_eq!(
        (open.status, open.code()),
        (401, "token_revoked"),
        "{open:?}"
    );
    assert_eq!(
        broker
            .call(&c, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    // A new credential minted by the admin works again.
    let fresh = broker.agent("bot").await;
    broker.task(&fresh, &["web.search"]).await;
}
