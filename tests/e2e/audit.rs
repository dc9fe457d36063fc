//! The audit log: every decision recorded, no secrets in it, tampering detected.

use serde_json::json;
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::common::{ADMIN, TestBroker, audit_verify};

#[tokio::test]
async fn decisions_are_chained_secret_free_and_tamper_evident() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    assert_eq!(broker.call(&token, "fs.read", json!({})).await.status, 403);
    broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(&approver),
            json!({"reason": "test over"}),
        )
        .await;
    broker.state.audit.flush().await;

    let page = broker.get("/v1/audit?after=0", Some(&approver)).await;
    let events = page.body["events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in [
        "credential.issued",
        "task.issued",
        "call.allowed",
        "call.denied",
        "task.revoked",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let denied = events.iter().find(|e| e["kind"] == "call.denied").unwrap();
    assert_eq!(denied["detail"]["code"], "capability_denied");
    let revoked = events.iter().find(|e| e["kind"] == "task.revoked").unwrap();
    assert_eq!(revoked["actor"], "approver:ann");
    assert_eq!(revoked["detail"]["reason"], "test over");
    let dump = page.body.to_string();
    for secret in [
        token.as_str(),
        agent.as_str(),
        approver.as_str(),
        ADMIN,
        "upstream-secret-key",
    ] {
        assert!(!dump.contains(secret), "a secret leaked into the audit log");
    }
    let next = page.body["next"].as_i64().unwrap();
    assert!(
        broker
            .get(&format!("/v1/audit?after={next}"), Some(ADMIN))
            .await
            .body["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let folder = broker.shutdown().await;
    let data = folder.path().to_path_buf();
    let db = data.join("leash.db");
    let (ok, out) = audit_verify(&data);
    assert!(ok, "{out}");
    assert!(out.contains("audit chain verifies"), "{out}");

    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE audit SET actor = 'approver:nobody' WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = audit_verify(&data);
    assert!(
        !ok && out.contains("seq 3") && out.contains("edited"),
        "{out}"
    );
    sqlx::query("UPDATE audit SET actor = ? WHERE seq = 3")
        .bind(events[2]["actor"].as_str().unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(audit_verify(&data).0);
    sqlx::query("DELETE FROM audit WHERE seq = 2")
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = audit_verify(&data);
    assert!(!ok && out.contains("missing"), "{out}");
}
