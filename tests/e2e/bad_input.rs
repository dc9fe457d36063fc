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

#[tokio::test]
async fn malformed_bodies_are_400_or_413_and_change_nothing() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    let call = "/v1/tools/web.search/call";
    let json_ct = Some("application/json");
    assert_error(
        &raw(
            &broker,
            "POST",
            call,
            Some(&token),
            json_ct,
            b"{\"query\": ".to_vec(),
        )
        .await,
        400,
        "bad_request",
    );
    assert_error(
        &raw(
            &broker,
            "POST",
            call,
            Some(&token),
            Some("text/plain"),
            b"{\"query\":\"a\"}".to_vec(),
        )
        .await,
        400,
        "bad_request",
    );
    assert_error(
        &raw(
            &broker,
            "POST",
            call,
            Some(&token),
            json_ct,
            b"[1,2]".to_vec(),
        )
        .await,
        400,
        "bad_request",
    );
    assert_error(
        &raw(&broker, "POST", call, Some(&token), json_ct, Vec::new()).await,
        400,
        "bad_request",
    );
    let deep = format!("{{\"query\":{}1{}}}", "[".repeat(40), "]".repeat(40));
    assert_error(
        &raw(
            &broker,
            "POST",
            call,
            Some(&token),
            json_ct,
            deep.into_bytes(),
        )
        .await,
        400,
        "bad_request",
    );
    let big = vec![b' '; 2 * 1024 * 1024];
    assert_error(
        &raw(&broker, "POST", call, Some(&token), json_ct, big.clone()).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &raw(&broker, "POST", "/v1/tasks", Some(&agent), json_ct, big).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &raw(
            &broker,
            "POST",
            "/v1/tasks",
            Some(&agent),
            json_ct,
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
    // Control characters in free text are refused (PostgreSQL cannot store NUL).
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
    // Schema violations list JSON pointers.
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
    // Nothing was counted or forwarded.
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
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

#[tokio::test]
async fn unknown_tools_paths_ids_and_methods() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    assert_error(
        &broker.call(&token, "no.such", json!({})).await,
        404,
        "unknown_tool",
    );
    assert_error(
        &broker.call(&token, "WEB.SEARCH", json!({})).await,
        404,
        "unknown_tool",
    );
    assert_error(
        &broker.call(&token, "web.search%2F..", json!({})).await,
        404,
        "unknown_tool",
    );
    assert_error(
        &broker.call(&token, "wеb.search", json!({})).await,
        404,
        "unknown_tool",
    ); // Cyrillic e
    assert_error(
        &broker.get("/v1/tasks/not-a-task", Some(&agent)).await,
        400,
        "bad_request",
    );
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
        &broker.get("/v1/tasks/%00", Some(&agent)).await,
        400,
        "bad_request",
    );
    assert_error(&broker.get("/v1/nothing", None).await, 404, "not_found");
    assert_error(
        &broker
            .send(reqwest::Method::DELETE, "/v1/tasks", Some(ADMIN), None)
            .await,
        405,
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
    assert_error(
        &broker
            .post("/v1/agents/nobody/credentials", Some(ADMIN), json!({}))
            .await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn garbage_truncated_foreign_and_wrong_kind_tokens() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    let args = json!({"query": "x"});
    assert_error(
        &broker
            .send(
                reqwest::Method::POST,
                "/v1/tools/web.search/call",
                None,
                Some(args.clone()),
            )
            .await,
        401,
        "unauthenticated",
    );
    assert_error(
        &broker.call("garbage", "web.search", args.clone()).await,
        401,
        "token_invalid",
    );
    assert_error(
        &broker
            .call(&token[..token.len() - 20], "web.search", args.clone())
            .await,
        401,
        "token_invalid",
    );
    let mut flipped = token.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    assert_error(
        &broker
            .call(
                &String::from_utf8(flipped).unwrap(),
                "web.search",
                args.clone(),
            )
            .await,
        401,
        "token_invalid",
    );
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
    let reply = broker.call(&unknown_kid, "web.search", args.clone()).await;
    assert_error(&reply, 401, "token_invalid");
    assert!(reply.message().contains("root key id"), "{reply:?}");
    // Credentials are not task tokens, and the reverse.
    assert_error(
        &broker.call(&agent, "web.search", args.clone()).await,
        401,
        "token_invalid",
    );
    assert_error(
        &broker.call(&approver, "web.search", args.clone()).await,
        401,
        "token_invalid",
    );
    assert_error(
        &broker.call(ADMIN, "web.search", args.clone()).await,
        401,
        "token_invalid",
    );
    let open = broker
        .post(
            "/v1/tasks",
            Some(&token),
            json!({"purpose": "p", "tools": ["web.search"]}),
        )
        .await;
    assert_error(&open, 401, "token_invalid");
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
    // None of it changed the task.
    assert_eq!(broker.call(&token, "web.search", args).await.status, 200);
    assert_eq!(broker.upstream.count(), 1);
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
