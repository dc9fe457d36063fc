//! The security test matrix: one named test per attack, each against a real broker and
//! a real upstream. Every attack must be refused with the documented error, must not
//! reach the upstream, and must leave the broker working. (README: "Security model".)

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Biscuit, KeyPair};
use serde_json::{Value, json};

use crate::common::{ADMIN, Reply, TestBroker};

/// Posts a raw body (not re-encoded by a JSON library) as a tool call.
async fn call_raw(broker: &TestBroker, token: &str, tool: &str, body: String) -> Reply {
    let response = broker
        .http
        .post(format!("{}/v1/tools/{tool}/call", broker.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// Appends a block written in Datalog, as any holder can, offline.
async fn append_block(broker: &TestBroker, token: &str, code: &str) -> String {
    Biscuit::from_base64(token, broker.public_key().await)
        .unwrap()
        .append(BlockBuilder::new().code(code).unwrap())
        .unwrap()
        .to_base64()
        .unwrap()
}

/// A broker, the bot's credential and a task token for `web.search` and `fs.read`.
async fn setup() -> (TestBroker, String, String, String) {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search", "fs.read"]).await;
    (broker, agent, task_id, token)
}

fn assert_refused(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(
        (reply.status, reply.code()),
        (status, code),
        "{what}: {reply:?}"
    );
}

#[tokio::test]
async fn forged_signature() {
    let (broker, _, _, token) = setup().await;
    let mut bytes = URL_SAFE.decode(&token).unwrap();
    // The last bytes are the final block's signature: flip one bit there, and one in
    // the authority block's payload in a second forgery.
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    let forged_signature = URL_SAFE.encode(&bytes);
    let mut bytes = URL_SAFE.decode(&token).unwrap();
    bytes[20] ^= 0x01;
    let forged_payload = URL_SAFE.encode(&bytes);
    for forged in [forged_signature, forged_payload] {
        let reply = broker
            .call(&forged, "web.search", json!({"query": "x"}))
            .await;
        assert_refused(&reply, 401, "token_invalid", "forged token");
    }
    assert_eq!(broker.upstream.count(), 0);
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn token_of_another_root_key() {
    let (broker, _, _, _) = setup().await;
    // Another deployment (its own root key, also key id 1) mints a perfectly valid token.
    let other = TestBroker::spawn().await;
    let other_agent = other.agent("bot").await;
    let (_, foreign) = other.task(&other_agent, &["web.search"]).await;
    let reply = broker
        .call(&foreign, "web.search", json!({"query": "x"}))
        .await;
    assert_refused(&reply, 401, "token_invalid", "token of another root key");
    // The same for credentials: another deployment's agent credential opens nothing here.
    let reply = broker
        .post(
            "/v1/tasks",
            Some(&other_agent),
            json!({"purpose": "p", "tools": ["web.search"]}),
        )
        .await;
    assert_refused(
        &reply,
        401,
        "token_invalid",
        "credential of another root key",
    );
    assert_eq!(broker.upstream.count(), 0);
}

#[tokio::test]
async fn unknown_key_id() {
    let (broker, _, _, _) = setup().await;
    let keys = KeyPair::new();
    let mut builder = Biscuit::builder()
        .code(r#"task("tsk_00000000000000000000000000000000"); agent("bot"); tool("web.search");"#)
        .unwrap();
    builder = builder.root_key_id(99);
    let token = builder.build(&keys).unwrap().to_base64().unwrap();
    let reply = broker
        .call(&token, "web.search", json!({"query": "x"}))
        .await;
    assert_refused(&reply, 401, "token_invalid", "unknown key id");
    assert!(reply.message().contains("unknown root key id"), "{reply:?}");
}

#[tokio::test]
async fn expired_token() {
    let (broker, _, _, token) = setup().await;
    // The bot's grant allows 600 s; go past it.
    broker.state.clock.advance(Duration::from_secs(601));
    let reply = broker
        .call(&token, "web.search", json!({"query": "x"}))
        .await;
    assert_refused(&reply, 401, "token_expired", "expired token");
    assert_eq!(broker.upstream.count(), 0);
}

#[tokio::test]
async fn revoked_task() {
    let (broker, _, task_id, token) = setup().await;
    let reply = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(reply.status, 200);
    let reply = broker
        .call(&token, "web.search", json!({"query": "x"}))
        .await;
    assert_refused(&reply, 401, "token_revoked", "revoked task");
    let child = append_block(&broker, &token, r#"check if call("web.search");"#).await;
    let reply = broker
        .call(&child, "web.search", json!({"query": "x"}))
        .await;
    assert_refused(&reply, 401, "token_revoked", "child of a revoked task");
    assert_eq!(broker.upstream.count(), 0);
}

#[tokio::test]
async fn revoked_attenuated_token_while_its_parent_lives() {
    let (broker, _, _, token) = setup().await;
    let child = append_block(&broker, &token, r#"check if call("web.search");"#).await;
    let grandchild = append_block(&broker, &child, r#"check if call("web.search");"#).await;
    let reply = broker
        .post("/v1/tokens/revoke", Some(&child), json!({"token": child}))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    for (what, revoked) in [("child", &child), ("grandchild", &grandchild)] {
        let reply = broker
            .call(revoked, "web.search", json!({"query": "x"}))
            .await;
        assert_refused(&reply, 401, "token_revoked", what);
    }
    let reply = broker
        .call(&token, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!(reply.status, 200, "the parent lives: {reply:?}");
    // A child cannot revoke its parent.
    let reply = broker
        .post(
            "/v1/tokens/revoke",
            Some(&grandchild),
            json!({"token": token}),
        )
        .await;
    assert_eq!(reply.status, 401, "a revoked holder has no say: {reply:?}");
}

#[tokio::test]
async fn attenuation_that_tries_to_widen_tools_time_or_roles() {
    let (broker, _, task_id, token) = setup().await;
    let widenings = [
        // More tools.
        r#"tool("shell.exec"); right("shell.exec");"#,
        // A later time, or a claim to be another task.
        r#"time(2099-01-01T00:00:00Z); task("tsk_ffffffffffffffffffffffffffffffff");"#,
        // A role.
        r#"role("admin"); approver("mallory"); agent("small"); role("approver");"#,
        // A rule that would derive a tool from anything.
        r#"tool($t) <- call($t);"#,
    ];
    for code in widenings {
        let widened = append_block(&broker, &token, code).await;
        let reply = broker
            .call(&widened, "shell.exec", json!({"cmd": "id"}))
            .await;
        assert_eq!(reply.status, 403, "{code}: {reply:?}");
        // Roles: the widened token is still only a task token.
        let reply = broker.get("/v1/approvals", Some(&widened)).await;
        assert_eq!(reply.status, 403, "{code}: approvals {reply:?}");
        let reply = broker
            .post("/v1/agents/bot/credentials", Some(&widened), json!({}))
            .await;
        assert_eq!(reply.status, 403, "{code}: credentials {reply:?}");
    }
    // Time: past the window, a block asserting a later time changes nothing.
    let later = append_block(&broker, &token, r#"time(2099-01-01T00:00:00Z);"#).await;
    broker.state.clock.advance(Duration::from_secs(601));
    let reply = broker
        .call(&later, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(broker.upstream.count(), 0);
    let _ = task_id;
}

#[tokio::test]
async fn tool_name_confusion() {
    let (broker, _, _, token) = setup().await;
    let confusions = [
        "WEB.SEARCH",
        "Web.search",
        "web.search.",
        ".web.search",
        "web..search",
        "web.search%00",
        "web.search%20",
        "web%2Fsearch",
        "web.search%2F..%2Fshell.exec",
        "w%D0%B5b.search",     // Cyrillic е
        "web.%E2%80%8Bsearch", // zero-width space
        "web.search%3Bshell.exec",
        "shell.exec",
        "web.*",
        "*",
    ];
    for name in confusions {
        let reply = broker.call(&token, name, json!({"query": "x"})).await;
        assert!(matches!(reply.status, 400 | 403 | 404), "{name}: {reply:?}");
        assert!(reply.body["error"]["code"].is_string(), "{name}: {reply:?}");
    }
    // Path segments around the tool route.
    for path in [
        "/v1/tools/web.search/../shell.exec/call",
        "/v1/tools/web.search/call/../../shell.exec/call",
        "/v1/tools//call",
    ] {
        let reply = broker
            .send(reqwest::Method::POST, path, Some(&token), Some(json!({})))
            .await;
        assert!(matches!(reply.status, 400 | 403 | 404), "{path}: {reply:?}");
    }
    assert_eq!(broker.upstream.count(), 0, "nothing reached an upstream");
    // A percent-encoded spelling of the same name is the same name (RFC 3986 2.3):
    // decoded before any check, so a token narrowed away from the tool refuses it too.
    let narrowed = append_block(&broker, &token, r#"check if call("fs.read");"#).await;
    for spelling in ["web.search", "web%2Esearch", "%77eb.search"] {
        let reply = broker
            .call(&narrowed, spelling, json!({"query": "x"}))
            .await;
        assert_refused(&reply, 403, "capability_denied", spelling);
        let reply = broker.call(&token, spelling, json!({"query": "x"})).await;
        assert_eq!(reply.status, 200, "{spelling}: {reply:?}");
    }
}

#[tokio::test]
async fn smuggled_arguments_are_refused_with_400_413_or_422_and_nothing_goes_upstream() {
    let (broker, _, _, token) = setup().await;
    // web.search: {query: string, maxLength 50}, no other properties.
    let long = "x".repeat(60);
    let refused = [
        // Duplicate keys: the last one is what is validated and forwarded, so a bad
        // value last is refused, whatever comes first.
        (format!(r#"{{"query":"ok","query":"{long}"}}"#), 422),
        // Type confusion.
        (r#"{"query":["a","b"]}"#.to_string(), 422),
        (r#"{"query":{"$ne":""}}"#.to_string(), 422),
        (r#"{"query":1}"#.to_string(), 422),
        (r#"{"query":null}"#.to_string(), 422),
        (r#"{"query":"x","extra":"y"}"#.to_string(), 422),
        (r#"["query","x"]"#.to_string(), 400),
        (r#""query""#.to_string(), 400),
        // Nesting past the limit, and past the parser's.
        (
            format!(
                r#"{{"query":"x","n":{}{}}}"#,
                "[".repeat(40),
                "]".repeat(40)
            ),
            400,
        ),
        (
            format!(r#"{{"n":{}{}}}"#, "[".repeat(5000), "]".repeat(5000)),
            400,
        ),
        // Not JSON at all, or numbers JSON cannot hold.
        (r#"{"query":"x""#.to_string(), 400),
        (r#"{"query":1e999}"#.to_string(), 400),
        // Very long strings: past the schema, and past the body limit.
        (format!(r#"{{"query":"{}"}}"#, "y".repeat(100_000)), 422),
        (
            format!(r#"{{"query":"{}"}}"#, "y".repeat(2 * 1024 * 1024)),
            413,
        ),
    ];
    for (body, status) in refused {
        let shown: String = body.chars().take(60).collect();
        let reply = call_raw(&broker, &token, "web.search", body).await;
        assert_eq!(reply.status, status, "{shown}: {reply:?}");
    }
    assert_eq!(broker.upstream.count(), 0, "no smuggled call went upstream");
}

#[tokio::test]
async fn with_duplicate_keys_exactly_the_validated_value_goes_upstream() {
    let (broker, _, _, token) = setup().await;
    let long = "x".repeat(60);
    // With a bad value first and a good one last, exactly the validated value goes
    // upstream: the broker forwards what it checked, never the raw bytes.
    let reply = call_raw(
        &broker,
        &token,
        "web.search",
        format!(r#"{{"query":"{long}","query":"ok"}}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let received = broker
        .upstream
        .received
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .body
        .clone();
    assert_eq!(received, json!({"query": "ok"}));
}

#[tokio::test]
async fn datalog_looking_arguments_are_data_to_a_narrowed_token() {
    let (broker, _, _, token) = setup().await;
    // A narrowed token still only allows its prefix.
    let narrowed = append_block(
        &broker,
        &token,
        r#"check if call("fs.read"), arg("path", $p), $p.starts_with("/notes/");"#,
    )
    .await;
    for path in [
        r#"/etc/passwd"), arg("path", "/notes/x"#,
        "/notes/../etc/passwd\u{0}",
        "/etc/passwd",
    ] {
        let reply = broker
            .call(&narrowed, "fs.read", json!({ "path": path }))
            .await;
        if path.starts_with("/notes/") {
            // A prefix check is a prefix check: `..` is the tool server's to resolve.
            assert_eq!(reply.status, 200, "{path:?}: {reply:?}");
        } else {
            assert_refused(&reply, 403, "capability_denied", path);
        }
    }
}

#[tokio::test]
async fn approval_replay() {
    let broker = TestBroker::spawn_with(
        r#"
[tools."payments.send"]
upstream = "http://{UP}/pay"
approval = "per_call"
input_schema = { type = "object", required = ["amount"], properties = { amount = { type = "integer" } } }

[agents.payer]
tools = ["payments.send"]
max_ttl_seconds = 600
"#,
    )
    .await;
    let agent = broker.agent("payer").await;
    let approver = broker.approver("ann").await;
    let (_, token) = broker.task(&agent, &["payments.send"]).await;
    let (_, other_task) = broker.task(&agent, &["payments.send"]).await;
    let args = json!({"amount": 5});
    let held = broker.call(&token, "payments.send", args.clone()).await;
    assert_eq!(held.status, 202);
    let id = held.body["approval_id"].as_str().unwrap().to_string();
    let approve = broker
        .post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(approve.status, 200);
    let with_approval = |token: String, args: Value| {
        let broker = &broker;
        let id = id.clone();
        async move {
            let response = broker
                .http
                .post(format!("{}/v1/tools/payments.send/call", broker.url))
                .bearer_auth(token)
                .header("Leash-Approval", id)
                .json(&args)
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    // On another task, or with other arguments: refused, and the approval is not spent.
    assert_eq!(
        with_approval(other_task.clone(), args.clone()).await,
        403,
        "another task"
    );
    assert_eq!(
        with_approval(token.clone(), json!({"amount": 5000})).await,
        403,
        "other arguments"
    );
    assert_eq!(broker.upstream.count(), 0);
    // Used once: 200. Replayed: refused, and nothing more goes upstream.
    assert_eq!(with_approval(token.clone(), args.clone()).await, 200);
    assert_eq!(
        with_approval(token.clone(), args.clone()).await,
        403,
        "replay"
    );
    assert_eq!(broker.upstream.count(), 1);
}

#[tokio::test]
async fn approver_credential_as_a_task_token_and_the_reverse() {
    let (broker, agent, task_id, token) = setup().await;
    let approver = broker.approver("ann").await;
    // Approver credential where a task token belongs.
    let reply = broker
        .call(&approver, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!(reply.status, 401, "approver as task token: {reply:?}");
    let reply = broker.get("/v1/tools", Some(&approver)).await;
    assert_eq!(reply.status, 401, "approver lists tools: {reply:?}");
    // Agent credential where a task token belongs.
    let reply = broker
        .call(&agent, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!(
        reply.status, 401,
        "agent credential as task token: {reply:?}"
    );
    // Task token where an approver belongs.
    let reply = broker.get("/v1/approvals", Some(&token)).await;
    assert_refused(&reply, 403, "forbidden", "task token lists approvals");
    let reply = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_refused(
        &reply,
        403,
        "forbidden",
        "task token revokes like an approver",
    );
    let reply = broker
        .post("/v1/agents/bot/revoke", Some(&token), json!({}))
        .await;
    assert_refused(&reply, 403, "forbidden", "task token revokes an agent");
    // Task token where an agent credential belongs.
    let reply = broker
        .post(
            "/v1/tasks",
            Some(&token),
            json!({"purpose": "p", "tools": ["web.search"]}),
        )
        .await;
    assert_eq!(reply.status, 401, "task token opens a task: {reply:?}");
    // Approver credential where the admin belongs.
    let reply = broker
        .post("/v1/agents/bot/credentials", Some(&approver), json!({}))
        .await;
    assert_refused(&reply, 403, "forbidden", "approver mints credentials");
    // An approver credential with a block claiming the admin role is still an approver.
    let claimed = append_block(&broker, &approver, r#"role("admin"); admin(true);"#).await;
    let reply = broker
        .post("/v1/agents/bot/credentials", Some(&claimed), json!({}))
        .await;
    assert_refused(&reply, 403, "forbidden", "approver claiming admin");
    assert_eq!(broker.upstream.count(), 0);
}

/// The admin token is compared as SHA-256 digests in constant time, so how much of a
/// guess is right cannot show in the answer time. Measured: guesses that share nothing
/// with the admin token against guesses that differ only in the last character,
/// interleaved, 400 each; the medians must agree within a tolerance far below what
/// a leak large enough to exploit over a network would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_timing() {
    let broker = TestBroker::spawn().await;
    let mut near = ADMIN.to_string();
    near.pop();
    near.push('#');
    let far = "#".repeat(ADMIN.len());
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..800 {
        let guess = if round % 2 == 0 { &near } else { &far };
        let started = Instant::now();
        let reply = broker.get("/v1/audit", Some(guess)).await;
        times[round % 2].push(started.elapsed());
        assert_eq!(reply.status, 401);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let near_median = median(&mut times[0]);
    let far_median = median(&mut times[1]);
    let ratio = near_median.as_secs_f64() / far_median.as_secs_f64();
    println!("admin-token guesses: near {near_median:?}, far {far_median:?}, ratio {ratio:.3}");
    assert!(
        (0.75..1.33).contains(&ratio),
        "answer time depends on how much of the admin token is right: {ratio:.3}"
    );
    // And the right token works (the comparison is real).
    assert_eq!(broker.get("/v1/audit", Some(ADMIN)).await.status, 200);
}

#[tokio::test]
async fn whole_valued_floats_are_the_integers_they_equal() {
    let (broker, _, _, token) = setup().await;
    let guarded = append_block(
        &broker,
        &token,
        r#"reject if arg("account", $a), $a == 1234;
           reject if arg("account", $a), {100, 7}.contains($a);
           reject if arg("limit", $l), $l > 10;
           check if arg("page", $p), $p == 0"#,
    )
    .await;
    // Every spelling of a denied integer is that integer, for the check.
    for account in [
        "1234.0", "1.234e3", "12340e-1", "1e2", "100.0", "7.0", "7e0",
    ] {
        let body = format!(r#"{{"account":{account},"limit":1,"page":0}}"#);
        let reply = call_raw(&broker, &guarded, "fs.read", body).await;
        assert_refused(&reply, 403, "capability_denied", account);
    }
    for limit in ["11.0", "1.1e1", "2e1"] {
        let body = format!(r#"{{"account":5,"limit":{limit},"page":0}}"#);
        let reply = call_raw(&broker, &guarded, "fs.read", body).await;
        assert_refused(&reply, 403, "capability_denied", limit);
    }
    assert_eq!(
        broker.upstream.count(),
        0,
        "nothing refused reached the upstream"
    );
    // Allowed calls: the upstream receives the integer the check saw, not the float.
    let reply = call_raw(
        &broker,
        &guarded,
        "fs.read",
        r#"{"account":5.0,"limit":1e1,"page":-0.0,"nested":[2.0,{"x":3e0}],"ratio":1.5}"#
            .to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let received = broker.upstream.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body,
        json!({"account": 5, "limit": 10, "page": 0, "nested": [2, {"x": 3}], "ratio": 1.5})
    );
    // A fraction stays a string for the checks: a numeric comparison fails closed.
    let reply = call_raw(
        &broker,
        &guarded,
        "fs.read",
        r#"{"account":5,"limit":1.5,"page":0}"#.to_string(),
    )
    .await;
    assert_refused(&reply, 403, "capability_denied", "limit 1.5");
}

/// Two tools for `bot`, and an approval-gated `gated` agent, at `{UP}`.
fn renewal_policy(bot_tools: &str, gated_tools: &str) -> String {
    format!(
        r#"
[tools."web.search"]
upstream = "http://{{UP}}/search"
input_schema = {{ type = "object" }}

[tools."fs.read"]
upstream = "http://{{UP}}/read"
input_schema = {{ type = "object" }}

[tools."shell.exec"]
upstream = "http://{{UP}}/exec"
input_schema = {{ type = "object" }}

[agents.bot]
tools = {bot_tools}
max_ttl_seconds = 600

[agents.gated]
tools = {gated_tools}
max_ttl_seconds = 600
approval = "issuance"
"#
    )
}

#[tokio::test]
async fn renewal_mints_from_the_current_policy() {
    let broker = TestBroker::spawn_with(&renewal_policy(
        r#"["web.search", "fs.read"]"#,
        r#"["web.search"]"#,
    ))
    .await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search", "fs.read"]).await;
    assert_eq!(broker.call(&token, "fs.read", json!({})).await.status, 200);
    // The operator takes fs.read away from the bot and restarts the broker.
    broker.write_policy(&renewal_policy(r#"["web.search"]"#, r#"["web.search"]"#));
    let broker = broker.restart().await;
    let renewed = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&agent),
            json!({"ttl_seconds": 300}),
        )
        .await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    let new_token = renewed.body["token"].as_str().unwrap().to_string();
    let refused = broker.call(&new_token, "fs.read", json!({})).await;
    assert_refused(&refused, 403, "capability_denied", "a tool the grant lost");
    assert_eq!(
        broker
            .call(&new_token, "web.search", json!({}))
            .await
            .status,
        200
    );
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(shown.body["tools"], json!(["web.search"]), "{shown:?}");
    // The grant keeps none of the task's tools: renewal is refused, nothing is minted.
    broker.write_policy(&renewal_policy(r#"["shell.exec"]"#, r#"["web.search"]"#));
    let broker = broker.restart().await;
    let refused = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&agent),
            json!({"ttl_seconds": 300}),
        )
        .await;
    assert_refused(&refused, 403, "policy_denied", "no granted tool left");
}

#[tokio::test]
async fn an_approved_issuance_mints_from_the_current_policy() {
    let broker = TestBroker::spawn_with(&renewal_policy(
        r#"["web.search"]"#,
        r#"["web.search", "fs.read"]"#,
    ))
    .await;
    let agent = broker.agent("gated").await;
    let approver = broker.approver("ann").await;
    let open = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "p", "tools": ["web.search", "fs.read"]}),
        )
        .await;
    assert_eq!(open.status, 202, "{open:?}");
    let task_id = open.body["task_id"].as_str().unwrap().to_string();
    let approval_id = open.body["approval_id"].as_str().unwrap().to_string();
    broker.write_policy(&renewal_policy(r#"["web.search"]"#, r#"["web.search"]"#));
    let broker = broker.restart().await;
    let approved = broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(approved.status, 200, "{approved:?}");
    let task = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(task.body["tools"], json!(["web.search"]), "{task:?}");
    let token = task.body["token"].as_str().unwrap().to_string();
    let refused = broker.call(&token, "fs.read", json!({})).await;
    assert_refused(&refused, 403, "capability_denied", "a tool the grant lost");
    assert_eq!(
        broker.call(&token, "web.search", json!({})).await.status,
        200
    );
}

/// Every route an approver credential opens, each asked with `credential`.
async fn approver_routes(
    broker: &TestBroker,
    credential: &str,
    task_id: &str,
) -> Vec<(String, Reply)> {
    let approval = "apr_00000000000000000000000000000000";
    let mut replies = Vec::new();
    for path in [
        "/v1/approvals?state=pending".to_string(),
        "/v1/tasks?state=all".to_string(),
        format!("/v1/tasks/{task_id}"),
        "/v1/audit?after=0".to_string(),
    ] {
        let reply = broker.get(&path, Some(credential)).await;
        replies.push((format!("GET {path}"), reply));
    }
    // The event stream never ends when it is allowed: read its head, and its body only
    // when it is a refusal.
    let events = broker
        .http
        .get(format!("{}/v1/events", broker.url))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    let status = events.status().as_u16();
    let body = if status == 200 {
        Value::Null
    } else {
        events.json().await.unwrap_or(Value::Null)
    };
    replies.push(("GET /v1/events".into(), Reply { status, body }));
    for path in [
        format!("/v1/approvals/{approval}/approve"),
        format!("/v1/approvals/{approval}/deny"),
        format!("/v1/tasks/{task_id}/revoke"),
        "/v1/agents/bot/revoke".to_string(),
    ] {
        let reply = broker.post(&path, Some(credential), json!({})).await;
        replies.push((format!("POST {path}"), reply));
    }
    let reply = broker
        .post("/v1/tokens/revoke", Some(credential), json!({"token": "x"}))
        .await;
    replies.push(("POST /v1/tokens/revoke".into(), reply));
    replies
}

#[tokio::test]
async fn a_revoked_approver_is_refused_on_every_approver_route_at_once() {
    let (broker, _, task_id, _) = setup().await;
    let ann = broker.approver("ann").await;
    let ann_spare = broker.approver("ann").await;
    let bob = broker.approver("bob").await;
    assert_eq!(broker.get("/v1/approvals", Some(&ann)).await.status, 200);
    // An approver may not cut off another approver: that is the admin's.
    let refused = broker
        .post("/v1/approvers/bob/revoke", Some(&ann), json!({}))
        .await;
    assert_refused(&refused, 403, "forbidden", "approver revoking an approver");
    // ann's live event stream, opened before the revocation.
    let mut stream = broker
        .http
        .get(format!("{}/v1/events", broker.url))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let revoked = broker
        .post(
            "/v1/approvers/ann/revoke",
            Some(ADMIN),
            json!({"reason": "left"}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(revoked.body["revoked_credentials"], 2);
    for credential in [&ann, &ann_spare] {
        for (route, reply) in approver_routes(&broker, credential, &task_id).await {
            assert_refused(&reply, 401, "token_revoked", &route);
        }
    }
    // The open stream ends instead of going on serving a revoked approver.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream of a revoked approver must end"
    );
    // Another approver is untouched.
    for (route, reply) in approver_routes(&broker, &bob, &task_id).await {
        assert_ne!(reply.status, 401, "{route}: {reply:?}");
    }
    // The credentials are on the public revocation feed, for verifiers and replicas.
    let feed = broker.get("/v1/revocations?after=0", None).await;
    let published = feed.body["revocations"].as_array().unwrap().len();
    assert!(published >= 2, "{feed:?}");
}

fn open_request() -> Value {
    json!({"purpose": "p", "tools": ["web.search"]})
}

#[tokio::test]
async fn only_its_holder_or_the_admin_may_revoke_a_credential() {
    let (broker, agent, _, token) = setup().await;
    let ann = broker.approver("ann").await;
    let other_agent = broker.agent("small").await;
    // Not the holder: another agent's credential, an approver, a task token.
    for (who, bearer) in [
        ("another agent", &other_agent),
        ("an approver", &ann),
        ("a task token", &token),
    ] {
        let reply = broker
            .post(
                "/v1/credentials/revoke",
                Some(bearer),
                json!({"credential": agent}),
            )
            .await;
        assert_refused(&reply, 403, "forbidden", who);
    }
    let alive = broker.post("/v1/tasks", Some(&agent), open_request()).await;
    assert_eq!(alive.status, 201, "{alive:?}");
}

#[tokio::test]
async fn revoking_what_is_not_a_credential_is_400_bad_request() {
    let (broker, agent, _, token) = setup().await;
    for (what, body) in [
        ("a task token", json!({"credential": token})),
        ("garbage", json!({"credential": "not a biscuit"})),
        ("no field", json!({})),
    ] {
        let reply = broker
            .post("/v1/credentials/revoke", Some(ADMIN), body)
            .await;
        assert_refused(&reply, 400, "bad_request", what);
    }
    let alive = broker.post("/v1/tasks", Some(&agent), open_request()).await;
    assert_eq!(alive.status, 201, "{alive:?}");
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_credential_its_holder_revokes_dies_alone_and_its_tasks_go_on() {
    let (broker, agent, _, token) = setup().await;
    let spare = broker.agent("bot").await;
    let reply = broker
        .post(
            "/v1/credentials/revoke",
            Some(&agent),
            json!({"credential": agent}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["role"], "agent");
    assert_eq!(reply.body["subject"], "bot");
    let dead = broker.post("/v1/tasks", Some(&agent), open_request()).await;
    assert_refused(&dead, 401, "token_revoked", "a revoked agent credential");
    // Its twin goes on.
    assert_eq!(
        broker
            .post("/v1/tasks", Some(&spare), open_request())
            .await
            .status,
        201
    );
    // The task the revoked credential opened goes on: a credential is not a task.
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_credential_the_admin_revokes_takes_its_attenuations_and_revoking_twice_is_fine() {
    let (broker, _, _, _) = setup().await;
    let spare = broker.agent("bot").await;
    let narrowed = append_block(&broker, &spare, "check if true").await;
    let reply = broker
        .post(
            "/v1/credentials/revoke",
            Some(ADMIN),
            json!({"credential": spare}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let again = broker
        .post(
            "/v1/credentials/revoke",
            Some(ADMIN),
            json!({"credential": spare}),
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    for credential in [&spare, &narrowed] {
        let dead = broker
            .post("/v1/tasks", Some(credential), open_request())
            .await;
        assert_refused(
            &dead,
            401,
            "token_revoked",
            "a revoked credential or its attenuation",
        );
    }
}

#[tokio::test]
async fn a_revoked_approver_credential_is_401_token_revoked() {
    let (broker, _, _, _) = setup().await;
    let ann = broker.approver("ann").await;
    let reply = broker
        .post(
            "/v1/credentials/revoke",
            Some(ADMIN),
            json!({"credential": ann}),
        )
        .await;
    assert_eq!(reply.body["role"], "approver", "{reply:?}");
    let dead = broker.get("/v1/approvals", Some(&ann)).await;
    assert_refused(&dead, 401, "token_revoked", "a revoked approver credential");
}

#[tokio::test]
async fn credentials_expire_after_90_days_by_default() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    broker
        .state
        .clock
        .advance(Duration::from_secs(89 * 24 * 3600));
    assert_eq!(
        broker.get("/v1/approvals", Some(&approver)).await.status,
        200
    );
    let open = json!({"purpose": "p", "tools": ["web.search"]});
    assert_eq!(
        broker
            .post("/v1/tasks", Some(&agent), open.clone())
            .await
            .status,
        201
    );
    broker
        .state
        .clock
        .advance(Duration::from_secs(2 * 24 * 3600));
    let expired = broker.get("/v1/approvals", Some(&approver)).await;
    assert_refused(
        &expired,
        401,
        "token_expired",
        "an approver credential after 91 days",
    );
    let expired = broker.post("/v1/tasks", Some(&agent), open).await;
    assert_refused(
        &expired,
        401,
        "token_expired",
        "an agent credential after 91 days",
    );
}

/// Every byte of every file in `dir` (the database, its WAL, keys…), as text.
fn folder_bytes(dir: &std::path::Path) -> String {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn task_tokens_are_sealed_at_rest() {
    let (broker, agent, task_id, token) = setup().await;
    let renewed = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&agent),
            json!({"ttl_seconds": 300}),
        )
        .await;
    let renewed = renewed.body["token"].as_str().unwrap().to_string();
    // The owner still reads its live token back.
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(shown.body["token"].as_str(), Some(renewed.as_str()));
    broker.state.tasks.flush().await;
    let data = broker.data.path().to_path_buf();
    let dump = folder_bytes(&data);
    for live in [&token, &renewed] {
        // A run of the token's signature bytes is enough to say it is there.
        let tail = &live[live.len() - 40..];
        assert!(!dump.contains(tail), "a task token is stored in clear");
    }
    // A database written before sealing: its clear token is sealed at the next start.
    let db = format!("sqlite://{}", data.join("leash.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query("UPDATE tasks SET token = ? WHERE task_id = ?")
        .bind(&renewed)
        .bind(&task_id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let broker = broker.restart().await;
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    assert_eq!(
        shown.body["token"].as_str(),
        Some(renewed.as_str()),
        "{shown:?}"
    );
    let dump = folder_bytes(broker.data.path());
    assert!(
        !dump.contains(&renewed[renewed.len() - 40..]),
        "the clear token was not sealed"
    );
    // A sealed token moved to another task's row does not open there.
    assert_eq!(
        broker
            .call(&renewed, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn mcp_connection_errors_never_log_expanded_secrets() {
    let secret = "mcp-secret-4f1d9c";
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("p.toml"),
        r#"
[mcp_servers.vault]
url = "http://svc:${MCP_SECRET}@127.0.0.1:9/mcp?key=${MCP_SECRET}"
headers = { Authorization = "Bearer ${MCP_SECRET}" }

[agents.bot]
tools = ["vault.*"]
max_ttl_seconds = 60
"#,
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("broker.log");
    let broker = crate::common::BrokerProcess::start_logged(
        policies.path(),
        data.path(),
        &[("MCP_SECRET", secret.to_string())],
        Some(&log),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("cannot connect to MCP upstream").count() >= 2 || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(broker);
    assert!(text.contains("cannot connect to MCP upstream"), "{text}");
    assert!(!text.contains(secret), "a secret reached the log: {text}");
}

/// A block of `n` regex checks: each `.matches()` compiles its pattern again, so
/// evaluating it costs the authorizer up to its time limit.
fn heavy_checks(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                r#"check if arg("query", $q), $q.matches("^(a{{1,{}}}|b{{1,80}}|[c-z0-9]{{2,90}}){{1,60}}x?$")"#,
                40 + i % 50
            )
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

#[tokio::test]
async fn heavy_attenuations_do_not_stall_other_requests() {
    let (broker, _, _, token) = setup().await;
    let heavy = append_block(&broker, &token, &heavy_checks(150)).await;
    // How long one heavy call takes (the authorizer stops it at its time limit).
    let started = Instant::now();
    let reply = broker
        .call(&heavy, "web.search", json!({"query": "aaaa"}))
        .await;
    let one = started.elapsed();
    println!("one heavy call: {one:?}, {:?}", reply.status);
    // Eight at once, and a health check in the middle of them: the health check must
    // not wait for the heavy evaluations (this test runs the broker on one thread).
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, heavy) = (broker.http.clone(), broker.url.clone(), heavy.clone());
            tokio::spawn(async move {
                http.post(format!("{url}/v1/tools/web.search/call"))
                    .bearer_auth(heavy)
                    .json(&json!({"query": "aaaa"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    let health = broker.get("/healthz", None).await;
    let health_took = started.elapsed();
    let all = Instant::now();
    for call in calls {
        let _ = call.await.unwrap();
    }
    println!(
        "health {health_took:?} while heavy calls ran; the rest took {:?}",
        all.elapsed()
    );
    assert_eq!(health.status, 200);
    assert!(
        health_took < one * 4,
        "a health check waited {health_took:?} behind heavy evaluations of {one:?} each"
    );
}

#[tokio::test]
async fn tokens_with_too_many_blocks_are_refused() {
    let (broker, _, _, token) = setup().await;
    let mut long = Biscuit::from_base64(&token, broker.public_key().await).unwrap();
    for _ in 0..leash_broker::tokens::verify::MAX_BLOCKS {
        long = long
            .append(BlockBuilder::new().code("check if true").unwrap())
            .unwrap();
    }
    let reply = broker
        .call(
            &long.to_base64().unwrap(),
            "web.search",
            json!({"query": "x"}),
        )
        .await;
    assert_refused(&reply, 401, "token_invalid", "33 blocks");
    assert!(reply.message().contains("blocks"), "{reply:?}");
    assert_eq!(broker.upstream.count(), 0);
}

#[tokio::test]
async fn an_approvers_event_stream_ends_when_its_credential_expires() {
    let broker = TestBroker::spawn().await;
    let issued = broker
        .post(
            "/v1/approvers/ann/credentials",
            Some(ADMIN),
            json!({"ttl_seconds": 60}),
        )
        .await;
    let approver = issued.body["credential"].as_str().unwrap().to_string();
    let mut stream = broker
        .http
        .get(format!("{}/v1/events", broker.url))
        .bearer_auth(&approver)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    broker.state.clock.advance(Duration::from_secs(61));
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream of an expired credential must end"
    );
}

#[tokio::test]
async fn a_forwarded_capability_is_no_bearer_for_leash() {
    let (broker, _, _, token) = setup().await;
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    // What the upstream received: it must not be able to call through Leash with it.
    let captured = broker.upstream.received.lock().unwrap()[0]
        .capability
        .clone()
        .expect("a Leash-Capability header");
    let replay = broker
        .call(&captured, "web.search", json!({"query": "y"}))
        .await;
    assert_refused(
        &replay,
        401,
        "token_invalid",
        "a forwarded capability replayed to Leash",
    );
    assert!(replay.message().contains("forwarded"), "{replay:?}");
    assert_eq!(
        broker.upstream.count(),
        1,
        "nothing more reached the upstream"
    );
}
