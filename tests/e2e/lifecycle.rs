//! The life of a task: open, call, deny, budget, expire, renew, complete.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{ADMIN, TestBroker};

#[tokio::test]
async fn quickstart_flow_open_call_deny_complete() {
    let broker = TestBroker::spawn().await;
    assert_eq!(
        broker.get("/healthz", None).await.body,
        json!({"status": "ok"})
    );
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    assert!(task_id.starts_with("tsk_"));

    let ok = broker
        .call(&token, "web.search", json!({"query": "rust"}))
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body["result"]["echo"], json!({"query": "rust"}));
    // The upstream got its own credential, never the agent's token.
    let seen = broker
        .upstream
        .received
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        seen.authorization.as_deref(),
        Some("Bearer upstream-secret-key")
    );
    assert_eq!(
        (seen.path.as_str(), &seen.body),
        ("/search", &json!({"query": "rust"}))
    );

    // fs.read is granted to the agent but not part of this task.
    let denied = broker.call(&token, "fs.read", json!({"path": "/x"})).await;
    assert_eq!(
        (denied.status, denied.code()),
        (403, "capability_denied"),
        "{denied:?}"
    );
    assert!(denied.message().contains("fs.read"), "{denied:?}");

    let done = broker
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&agent),
            json!({}),
        )
        .await;
    assert_eq!(done.body, json!({"task_id": task_id, "state": "completed"}));
    let after = broker
        .call(&token, "web.search", json!({"query": "rust"}))
        .await;
    assert_eq!(
        (after.status, after.code()),
        (401, "task_inactive"),
        "{after:?}"
    );
    assert_eq!(broker.upstream.count(), 1);
}

#[tokio::test]
async fn policy_refuses_tools_outside_the_grant_and_long_windows() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let open = |tools: serde_json::Value, ttl: Option<i64>| {
        let mut body = json!({"purpose": "p", "tools": tools});
        if let Some(ttl) = ttl {
            body["ttl_seconds"] = json!(ttl);
        }
        broker.post("/v1/tasks", Some(&agent), body)
    };
    let outside = open(json!(["shell.exec"]), None).await;
    assert_eq!((outside.status, outside.code()), (403, "policy_denied"));
    assert!(outside.message().contains("shell.exec"), "{outside:?}");
    let long = open(json!(["web.search"]), Some(601)).await;
    assert_eq!((long.status, long.code()), (403, "policy_denied"));
    assert!(long.message().contains("600"), "{long:?}");
    let unknown = open(json!(["no.such"]), None).await;
    assert_eq!((unknown.status, unknown.code()), (404, "unknown_tool"));
    let zero = open(json!(["web.search"]), Some(0)).await;
    assert_eq!((zero.status, zero.code()), (400, "bad_request"));
    let bad_check = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "p", "tools": ["web.search"], "checks": ["tool(\"shell.exec\")"]}),
        )
        .await;
    assert_eq!(
        (bad_check.status, bad_check.code()),
        (400, "bad_request"),
        "{bad_check:?}"
    );
    // A wildcard expands to the granted tools only.
    let wild = open(json!(["bad.*"]), Some(60)).await;
    assert_eq!(wild.status, 201);
    let id = wild.body["task_id"].as_str().unwrap();
    let shown = broker.get(&format!("/v1/tasks/{id}"), Some(&agent)).await;
    assert_eq!(
        shown.body["tools"].as_array().unwrap().len(),
        6,
        "{shown:?}"
    );
    // No task was created by the refused requests.
    let all = broker.get("/v1/tasks", Some(ADMIN)).await;
    assert_eq!(all.body["tasks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn agent_checks_and_grant_checks_are_in_the_token() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let reply = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "p", "tools": ["web.search"], "checks": ["check if arg(\"query\", $q), $q.starts_with(\"leash\")"]}),
        )
        .await;
    let token = reply.body["token"].as_str().unwrap();
    assert_eq!(
        broker
            .call(token, "web.search", json!({"query": "leash docs"}))
            .await
            .status,
        200
    );
    let refused = broker
        .call(token, "web.search", json!({"query": "other"}))
        .await;
    assert_eq!((refused.status, refused.code()), (403, "capability_denied"));
    assert!(refused.message().contains("starts_with"), "{refused:?}");
}

#[tokio::test]
async fn grant_budget_is_enforced_and_refusals_do_not_count() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("small").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    // Refused calls (bad arguments) do not use the budget.
    for _ in 0..3 {
        let bad = broker.call(&token, "web.search", json!({"query": 7})).await;
        assert_eq!(bad.code(), "invalid_arguments");
    }
    for _ in 0..3 {
        assert_eq!(
            broker
                .call(&token, "web.search", json!({"query": "a"}))
                .await
                .status,
            200
        );
    }
    let over = broker
        .call(&token, "web.search", json!({"query": "a"}))
        .await;
    assert_eq!(
        (over.status, over.code()),
        (429, "budget_exhausted"),
        "{over:?}"
    );
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(shown.body["calls"], 3);
    assert_eq!(broker.upstream.count(), 3);
}

#[tokio::test]
async fn a_call_one_millisecond_after_expiry_is_refused_and_the_task_expires() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let reply = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "p", "tools": ["web.search"], "ttl_seconds": 30}),
        )
        .await;
    let token = reply.body["token"].as_str().unwrap().to_string();
    let task_id = reply.body["task_id"].as_str().unwrap().to_string();
    let expires_ms = broker
        .state
        .tasks
        .runtime(&task_id)
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms();
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "a"}))
            .await
            .status,
        200
    );
    // Move the clock to exactly one millisecond past the window.
    let now = broker.state.clock.now_ms();
    broker
        .state
        .clock
        .advance(Duration::from_millis((expires_ms - now + 1) as u64));
    let late = broker
        .call(&token, "web.search", json!({"query": "a"}))
        .await;
    assert_eq!(
        (late.status, late.code()),
        (401, "token_expired"),
        "{late:?}"
    );
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(shown.body["state"], "expired");
    assert!(shown.body.get("token").is_none());
}

#[tokio::test]
async fn the_sweeper_expires_idle_and_overdue_tasks_without_any_call() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (idle_id, _) = broker.task(&agent, &["web.search"]).await;
    let small = broker.agent("small").await;
    let (overdue_id, _) = broker.task(&small, &["web.search"]).await;
    // bot's idle timeout is 120 s; small's window is 60 s.
    broker.state.clock.advance(Duration::from_secs(121));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let a = broker
            .get(&format!("/v1/tasks/{idle_id}"), Some(ADMIN))
            .await;
        let b = broker
            .get(&format!("/v1/tasks/{overdue_id}"), Some(ADMIN))
            .await;
        if a.body["state"] == "expired" && b.body["state"] == "expired" {
            assert_eq!(a.body["end_reason"], "it was idle too long");
            assert_eq!(b.body["end_reason"], "its window ended");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sweeper did not expire: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Expiry published the tasks' tokens on the revocation feed.
    let feed = broker.get("/v1/revocations?after=0", None).await;
    assert_eq!(
        feed.body["revocations"].as_array().unwrap().len(),
        2,
        "{feed:?}"
    );
}

#[tokio::test]
async fn renew_gives_a_new_window_within_policy() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, old) = broker.task(&agent, &["web.search"]).await;
    let too_long = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&agent),
            json!({"ttl_seconds": 601}),
        )
        .await;
    assert_eq!((too_long.status, too_long.code()), (403, "policy_denied"));
    let by_token = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&old),
            json!({"ttl_seconds": 60}),
        )
        .await;
    assert_eq!((by_token.status, by_token.code()), (403, "forbidden"));
    broker.state.clock.advance(Duration::from_secs(100));
    let renewed = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&agent),
            json!({"ttl_seconds": 600}),
        )
        .await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    let new = renewed.body["token"].as_str().unwrap();
    assert_ne!(new, old);
    // Past the old window (600 s from creation), only the new token works; calls every
    // 100 s keep the task under its 120 s idle timeout.
    for _ in 0..5 {
        broker.state.clock.advance(Duration::from_secs(100));
        assert_eq!(
            broker
                .call(new, "web.search", json!({"query": "a"}))
                .await
                .status,
            200
        );
    }
    broker.state.clock.advance(Duration::from_secs(50));
    assert_eq!(
        broker
            .call(new, "web.search", json!({"query": "a"}))
            .await
            .status,
        200
    );
    let stale = broker.call(&old, "web.search", json!({"query": "a"})).await;
    assert_eq!(
        (stale.status, stale.code()),
        (403, "capability_denied"),
        "{stale:?}"
    );
    assert!(stale.message().contains("time"), "{stale:?}");
}

#[tokio::test]
async fn task_views_show_the_token_only_to_the_owner() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let other = broker.agent("small").await;
    let approver = broker.approver("ann").await;
    let (task_id, token) = broker.task(&agent, &["web.search", "fs.read"]).await;
    let path = format!("/v1/tasks/{task_id}");
    let owner = broker.get(&path, Some(&agent)).await;
    assert_eq!(owner.body["token"], json!(token));
    assert_eq!(owner.body["state"], "active");
    assert_eq!(owner.body["tools"], json!(["fs.read", "web.search"]));
    let holder = broker.get(&path, Some(&token)).await;
    assert_eq!(holder.status, 200);
    assert!(holder.body.get("token").is_none());
    let approver_view = broker.get(&path, Some(&approver)).await;
    assert!(approver_view.body.get("token").is_none());
    let stranger = broker.get(&path, Some(&other)).await;
    assert_eq!((stranger.status, stranger.code()), (404, "not_found"));
    let listed = broker.get("/v1/tasks?state=active", Some(&approver)).await;
    assert_eq!(listed.body["tasks"].as_array().unwrap().len(), 1);
    assert!(listed.body["tasks"][0].get("token").is_none());
    let by_agent = broker.get("/v1/tasks", Some(&agent)).await;
    assert_eq!((by_agent.status, by_agent.code()), (403, "forbidden"));
    let tools = broker.get("/v1/tools", Some(&token)).await;
    let names: Vec<&str> = tools.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["fs.read", "web.search"]);
    assert!(tools.body["tools"][1]["input_schema"]["properties"]["query"].is_object());
}

/// An upstream's answer is passed on as it was written (numbers beyond 64 bits, escapes
/// and key order included) once it is one JSON value a client can parse into a tree;
/// anything else (JSON syntax or not) is a 502, never a 200 the SDKs cannot read.
#[tokio::test]
async fn an_upstream_answer_is_passed_on_as_written_or_refused() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["bad.answer"]).await;
    let answer = |text: &[u8]| {
        let body = json!({ "hex": hex::encode(text) });
        let request = broker
            .http
            .post(format!("{}/v1/tools/bad.answer/call", broker.url))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let reply = request.send().await.unwrap();
            (reply.status().as_u16(), reply.text().await.unwrap())
        }
    };
    let written = r#"{"z":123456789012345678901234567890,"a":1.10,"s":"\u00e9\n","n":[1.0e-7]}"#;
    assert_eq!(
        answer(format!(" {written}\n").as_bytes()).await,
        (200, format!(r#"{{"result":{written}}}"#))
    );
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_eq!(
        answer(deep(100).as_bytes()).await,
        (200, format!(r#"{{"result":{}}}"#, deep(100)))
    );
    let too_deep = deep(200);
    for bad in [
        &b"{\"a\":\"\xff\"}"[..],
        b"{\"a\":1} {\"b\":2}",
        b"{\"a\":1",
        b"",
        b"\"\\ud800\"",
        b"[1e400]",
        too_deep.as_bytes(),
    ] {
        let (status, text) = answer(bad).await;
        let refused: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (502, Some("upstream_error")),
            "{}: {text}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504_and_timeouts_do_not_count() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["bad.*"]).await;
    let slow = broker.call(&token, "bad.slow", json!({})).await;
    assert_eq!(
        (slow.status, slow.code()),
        (504, "upstream_timeout"),
        "{slow:?}"
    );
    let down = broker.call(&token, "bad.down", json!({})).await;
    assert_eq!(
        (down.status, down.code()),
        (502, "upstream_error"),
        "{down:?}"
    );
    for tool in ["bad.fail", "bad.garbage", "bad.huge"] {
        let reply = broker.call(&token, tool, json!({})).await;
        assert_eq!(
            (reply.status, reply.code()),
            (502, "upstream_error"),
            "{tool}: {reply:?}"
        );
    }
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    // fail, garbage and huge reached an upstream that did work; slow and down did not count.
    assert_eq!(shown.body["calls"], 3, "{shown:?}");
}
