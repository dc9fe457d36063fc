//! Bad input: each a clear 4xx in the documented format, never a 500, never a state change.

use biscuit_auth::KeyPair;
use biscuit_auth::builder::{fact, string};
use serde_json::{Value, json};

use crate::common::{ADMIN, Reply, TestBroker};

async fn raw(
    broker: &TestBroker,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut request = broker
        .http
        .request(method.parse().unwrap(), format!("{}{path}", broker.url))
        .body(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    Reply {
        status,
        body: serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null),
    }
}

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!((reply.status, reply.code()), (status, code), "{reply:?}");
    assert!(!reply.message().is_empty(), "{reply:?}");
}

/// A broker, the bot's credential, and one active task on web.search.
async fn one_task() -> (TestBroker, String, String, String) {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    (broker, agent, task_id, token)
}

/// The refused requests changed nothing: the task is active with no call counted,
/// nothing went upstream, and no other task exists.
async fn assert_nothing_changed(broker: &TestBroker, agent: &str, task_id: &str) {
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(agent))
        .await;
    assert_eq!(shown.body["calls"], 0);
    assert_eq!(shown.body["state"], "active");
    assert_eq!(broker.upstream.count(), 0);
    assert_eq!(
        broker.get("/v1/tasks", Some(ADMIN)).await.body["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

const CALL: &str = "/v1/tools/web.search/call";
const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn a_call_body_that_is_not_one_json_object_is_400_bad_request() {
    let (broker, agent, task_id, token) = one_task().await;
    let deep = format!("{{\"query\":{}1{}}}", "[".repeat(40), "]".repeat(40));
    // One value past the limit: an array of MAX_VALUES items is MAX_VALUES + 1 values.
    let many = format!(
        "{{\"query\":[{}]}}",
        vec!["\"x\""; leash_sdk::facts::MAX_VALUES].join(",")
    );
    for (what, content_type, body) in [
        ("truncated JSON", JSON, b"{\"query\": ".to_vec()),
        (
            "not a JSON content type",
            Some("text/plain"),
            b"{\"query\":\"a\"}".to_vec(),
        ),
        ("an array", JSON, b"[1,2]".to_vec()),
        ("an empty body", JSON, Vec::new()),
        ("nesting past the depth limit", JSON, deep.into_bytes()),
        ("more values than the limit", JSON, many.into_bytes()),
    ] {
        let reply = raw(&broker, "POST", CALL, Some(&token), content_type, body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "bad_request"),
            "{what}: {reply:?}"
        );
        assert!(!reply.message().is_empty(), "{what}: {reply:?}");
    }
    assert_nothing_changed(&broker, &agent, &task_id).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_payload_too_large() {
    let (broker, agent, task_id, token) = one_task().await;
    let big = vec![b' '; 2 * 1024 * 1024];
    assert_error(
        &raw(&broker, "POST", CALL, Some(&token), JSON, big.clone()).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &raw(&broker, "POST", "/v1/tasks", Some(&agent), JSON, big).await,
        413,
        "payload_too_large",
    );
    assert_nothing_changed(&broker, &agent, &task_id).await;
}

#[tokio::test]
async fn a_task_request_of_the_wrong_shape_is_400_bad_request() {
    let (broker, agent, task_id, _) = one_task().await;
    assert_error(
        &raw(
            &broker,
            "POST",
            "/v1/tasks",
            Some(&agent),
            JSON,
            b"{\"purpose\":1}".to_vec(),
        )
        .await,
        400,
        "bad_request",
    );
    let unknown_field = json!({"purpose": "p", "tools": ["web.search"], "admin": true});
    assert_error(
        &broker.post("/v1/tasks", Some(&agent), unknown_field).await,
        400,
        "bad_request",
    );
    assert_nothing_changed(&broker, &agent, &task_id).await;
}

#[tokio::test]
async fn control_characters_in_free_text_are_400_bad_request() {
    // PostgreSQL cannot store NUL; no free text field takes control characters.
    let (broker, agent, task_id, _) = one_task().await;
    let nul = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "a\u{0}b", "tools": ["web.search"]}),
        )
        .await;
    assert_error(&nul, 400, "bad_request");
    let reason = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({"reason": "x\u{7}"}),
        )
        .await;
    assert_error(&reason, 400, "bad_request");
    assert_nothing_changed(&broker, &agent, &task_id).await;
}

#[tokio::test]
async fn schema_violations_are_422_invalid_arguments_listing_json_pointers() {
    let (broker, agent, task_id, token) = one_task().await;
    let invalid = broker
        .call(
            &token,
            "web.search",
            json!({"query": "x".repeat(51), "extra": 1}),
        )
        .await;
    assert_error(&invalid, 422, "invalid_arguments");
    let pointers: Vec<&str> = invalid.body["error"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/query") && pointers.contains(&""),
        "{invalid:?}"
    );
    assert_nothing_changed(&broker, &agent, &task_id).await;
}

#[tokio::test]
async fn an_unknown_or_misspelled_tool_name_is_404_unknown_tool() {
    let (broker, _, _, token) = one_task().await;
    for name in [
        "no.such",
        "WEB.SEARCH",
        "web.search%2F..",
        "wеb.search", // Cyrillic e
    ] {
        assert_error(
            &broker.call(&token, name, json!({})).await,
            404,
            "unknown_tool",
        );
    }
    assert_eq!(broker.upstream.count(), 0);
}

#[tokio::test]
async fn a_malformed_id_name_or_query_value_is_400_bad_request() {
    let (broker, agent, _, _) = one_task().await;
    assert_error(
        &broker.get("/v1/tasks/not-a-task", Some(&agent)).await,
        400,
        "bad_request",
    );
    assert_error(
        &broker.get("/v1/tasks/%00", Some(&agent)).await,
        400,
        "bad_request",
    );
    assert_error(
        &broker.get("/v1/tasks?state=weird", Some(ADMIN)).await,
        400,
        "bad_request",
    );
    assert_error(
        &broker.get("/v1/revocations?after=abc", None).await,
        400,
        "bad_request",
    );
    assert_error(
        &broker
            .post("/v1/agents/bad%20name/credentials", Some(ADMIN), json!({}))
            .await,
        400,
        "bad_request",
    );
}

#[tokio::test]
async fn an_unknown_id_or_path_is_404_not_found_and_a_wrong_method_is_405() {
    let (broker, agent, _, _) = one_task().await;
    assert_error(
        &broker
            .get(
                "/v1/tasks/tsk_00000000000000000000000000000000",
                Some(&agent),
            )
            .await,
        404,
        "not_found",
    );
    assert_error(
        &broker
            .post("/v1/agents/nobody/credentials", Some(ADMIN), json!({}))
            .await,
        404,
        "not_found",
    );
    assert_error(&broker.get("/v1/nothing", None).await, 404, "not_found");
    assert_error(
        &broker
            .send(reqwest::Method::DELETE, "/v1/tasks", Some(ADMIN), None)
            .await,
        405,
        "bad_request",
    );
}

/// The refused requests changed nothing: the task's token still calls, and exactly
/// that one call went upstream.
async fn assert_task_unharmed(broker: &TestBroker, token: &str) {
    assert_eq!(
        broker
            .call(token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    assert_eq!(broker.upstream.count(), 1);
}

#[tokio::test]
async fn a_call_without_a_token_is_401_unauthenticated() {
    let (broker, _, _, token) = one_task().await;
    assert_error(
        &broker
            .send(
                reqwest::Method::POST,
                CALL,
                None,
                Some(json!({"query": "x"})),
            )
            .await,
        401,
        "unauthenticated",
    );
    assert_task_unharmed(&broker, &token).await;
}

#[tokio::test]
async fn a_garbage_truncated_or_altered_token_is_401_token_invalid() {
    let (broker, agent, _, token) = one_task().await;
    let args = json!({"query": "x"});
    let mut flipped = token.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    for bad in [
        "garbage".to_string(),
        token[..token.len() - 20].to_string(),
        String::from_utf8(flipped).unwrap(),
    ] {
        assert_error(
            &broker.call(&bad, "web.search", args.clone()).await,
            401,
            "token_invalid",
        );
    }
    // Asking to revoke a token that is not one is a bad request.
    assert_error(
        &broker
            .post(
                "/v1/tokens/revoke",
                Some(&agent),
                json!({"token": "garbage"}),
            )
            .await,
        400,
        "bad_request",
    );
    assert_task_unharmed(&broker, &token).await;
}

#[tokio::test]
async fn a_token_of_another_or_an_unknown_root_key_is_401_token_invalid() {
    let (broker, _, task_id, token) = one_task().await;
    let args = json!({"query": "x"});
    // Same facts, signed by another root key.
    let forged = biscuit_auth::Biscuit::builder()
        .fact(fact("task", &[string(&task_id)]))
        .unwrap()
        .fact(fact("agent", &[string("bot")]))
        .unwrap()
        .fact(fact("tool", &[string("web.search")]))
        .unwrap()
        .root_key_id(1)
        .build(&KeyPair::new())
        .unwrap()
        .to_base64()
        .unwrap();
    assert_error(
        &broker.call(&forged, "web.search", args.clone()).await,
        401,
        "token_invalid",
    );
    // An unknown root key id.
    let unknown_kid = biscuit_auth::Biscuit::builder()
        .fact(fact("role", &[string("agent")]))
        .unwrap()
        .root_key_id(77)
        .build(&KeyPair::new())
        .unwrap()
        .to_base64()
        .unwrap();
    let reply = broker.call(&unknown_kid, "web.search", args).await;
    assert_error(&reply, 401, "token_invalid");
    assert!(reply.message().contains("root key id"), "{reply:?}");
    assert_task_unharmed(&broker, &token).await;
}

#[tokio::test]
async fn a_credential_is_no_task_token_and_a_task_token_no_credential_401_token_invalid() {
    let (broker, agent, _, token) = one_task().await;
    let approver = broker.approver("ann").await;
    let args = json!({"query": "x"});
    for credential in [agent.as_str(), approver.as_str(), ADMIN] {
        assert_error(
            &broker.call(credential, "web.search", args.clone()).await,
            401,
            "token_invalid",
        );
    }
    let open = broker
        .post(
            "/v1/tasks",
            Some(&token),
            json!({"purpose": "p", "tools": ["web.search"]}),
        )
        .await;
    assert_error(&open, 401, "token_invalid");
    assert_task_unharmed(&broker, &token).await;
}

#[tokio::test]
async fn a_credential_of_the_wrong_role_is_403_forbidden() {
    let (broker, agent, task_id, token) = one_task().await;
    let approver = broker.approver("ann").await;
    // An approver opens no task and mints no credential.
    assert_error(
        &broker
            .post(
                "/v1/tasks",
                Some(&approver),
                json!({"purpose": "p", "tools": ["web.search"]}),
            )
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &broker
            .post("/v1/agents/bot/credentials", Some(&approver), json!({}))
            .await,
        403,
        "forbidden",
    );
    // An agent mints no credential, revokes no task, reads no audit log.
    assert_error(
        &broker
            .post("/v1/agents/bot/credentials", Some(&agent), json!({}))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &broker
            .post(
                &format!("/v1/tasks/{task_id}/revoke"),
                Some(&agent),
                json!({}),
            )
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &broker.get("/v1/audit", Some(&agent)).await,
        403,
        "forbidden",
    );
    assert_task_unharmed(&broker, &token).await;
}

#[tokio::test]
async fn an_expired_credential_is_refused() {
    let broker = TestBroker::spawn().await;
    let reply = broker
        .post(
            "/v1/agents/bot/credentials",
            Some(ADMIN),
            json!({"ttl_seconds": 60}),
        )
        .await;
    let credential = reply.body["credential"].as_str().unwrap().to_string();
    broker.task(&credential, &["web.search"]).await;
    broker
        .state
        .clock
        .advance(std::time::Duration::from_secs(61));
    let open = broker
        .post(
            "/v1/tasks",
            Some(&credential),
            json!({"purpose": "p", "tools": ["web.search"]}),
        )
        .await;
    assert_error(&open, 401, "token_expired");
}

#[tokio::test]
async fn each_agent_is_rate_limited_with_retry_after() {
    let broker = TestBroker::spawn_tuned(crate::common::POLICY, |config| {
        config.rate_limit = 5;
        config.rate_burst = 5;
    })
    .await;
    let bot = broker.agent("bot").await;
    let small = broker.agent("small").await;
    let (_, token) = broker.task(&bot, &["web.search"]).await; // 1 of bot's 5
    for _ in 0..4 {
        assert_eq!(
            broker
                .call(&token, "web.search", json!({"query": "x"}))
                .await
                .status,
            200
        );
    }
    let over = broker
        .http
        .post(format!("{}/v1/tools/web.search/call", broker.url))
        .bearer_auth(&token)
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    assert_eq!(over.headers()["retry-after"], "1");
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exhausted");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{body}"
    );
    assert_eq!(broker.upstream.count(), 4, "the refused call did no work");
    // Another agent has its own bucket; the limited one refills with time.
    let (_, other) = broker.task(&small, &["web.search"]).await;
    assert_eq!(
        broker
            .call(&other, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    broker
        .state
        .clock
        .advance(std::time::Duration::from_secs(1));
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
}
