//! The audit log: every decision recorded, no secrets in it, tampering detected.

use serde_json::json;
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::common::{ADMIN, TestBroker, audit_verify, audit_verify_with};

/// A broker after credentials, a task, an allowed and a denied call, and a revoke by
/// approver ann ("test over"): (broker, agent, approver, token), the audit flushed.
async fn audited_story() -> (TestBroker, String, String, String) {
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
    (broker, agent, approver, token)
}

#[tokio::test]
async fn every_decision_is_audited_with_its_actor_and_no_secret() {
    let (broker, agent, approver, token) = audited_story().await;
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
}

#[tokio::test]
async fn audit_verify_finds_an_edited_row_and_a_missing_row() {
    let (broker, _, _, _) = audited_story().await;
    let page = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    let actor_3 = page.body["events"][2]["actor"]
        .as_str()
        .unwrap()
        .to_string();
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
    // Put back, the chain verifies again.
    sqlx::query("UPDATE audit SET actor = ? WHERE seq = 3")
        .bind(&actor_3)
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

// ---- Signed checkpoints: deleting the newest rows, forging, rewriting ----

/// Some audited activity: credentials, a task, an allowed and a denied call.
async fn activity(broker: &TestBroker) -> (String, String, String) {
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    assert_eq!(broker.call(&token, "fs.read", json!({})).await.status, 403);
    (agent, approver, token)
}

async fn open_db(data: &std::path::Path) -> sqlx::SqliteConnection {
    SqliteConnectOptions::new()
        .filename(data.join("leash.db"))
        .connect()
        .await
        .unwrap()
}

async fn scalar(conn: &mut sqlx::SqliteConnection, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn deleting_the_newest_rows_is_named_as_a_truncation() {
    let broker = TestBroker::spawn().await;
    activity(&broker).await;
    // A graceful stop signs a last checkpoint over the head.
    let folder = broker.shutdown().await;
    let data = folder.path();
    let mut conn = open_db(data).await;
    let head = scalar(&mut conn, "SELECT MAX(seq) FROM audit").await;
    assert!(head >= 5, "{head} events");
    assert_eq!(
        scalar(&mut conn, "SELECT MAX(seq) FROM audit_checkpoints").await,
        head,
        "the final checkpoint covers the head"
    );
    let (ok, out) = audit_verify(data);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("the latest covers seq {head}")),
        "{out}"
    );

    sqlx::query("DELETE FROM audit WHERE seq > ?")
        .bind(head - 2)
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = audit_verify(data);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "truncated: rows after seq {} are missing (checkpoint at seq {head}",
            head - 2
        )),
        "{out}"
    );
}

#[tokio::test]
async fn forged_checkpoints_are_refused() {
    let broker = TestBroker::spawn().await;
    activity(&broker).await;
    let folder = broker.shutdown().await;
    let data = folder.path();
    let mut conn = open_db(data).await;
    let head = scalar(&mut conn, "SELECT MAX(seq) FROM audit").await;
    let (hash, signature): (String, String) =
        sqlx::query_as("SELECT hash, signature FROM audit_checkpoints WHERE seq = ?")
            .bind(head)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(audit_verify(data).0);

    // Another hash under the genuine signature.
    sqlx::query(
        "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit WHERE seq = 1) WHERE seq = ?",
    )
    .bind(head)
    .execute(&mut conn)
    .await
    .unwrap();
    let (ok, out) = audit_verify(data);
    assert!(
        !ok && out.contains(&format!("checkpoint at seq {head}"))
            && out.contains("does not verify"),
        "{out}"
    );
    // The genuine hash under an altered signature.
    let mut altered = signature.clone().into_bytes();
    altered[0] = if altered[0] == b'A' { b'B' } else { b'A' };
    sqlx::query("UPDATE audit_checkpoints SET hash = ?, signature = ? WHERE seq = ?")
        .bind(&hash)
        .bind(String::from_utf8(altered).unwrap())
        .bind(head)
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = audit_verify(data);
    assert!(
        !ok && out.contains(&format!("checkpoint at seq {head}"))
            && out.contains("does not verify"),
        "{out}"
    );
    // Rows cut, and the checkpoints replaced by one the attacker signed over the new head
    // with a key of their own, under the deployment's key id.
    sqlx::query("DELETE FROM audit WHERE seq > ?")
        .bind(head - 2)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&mut conn)
        .await
        .unwrap();
    let new_head: String = sqlx::query_scalar("SELECT hash FROM audit WHERE seq = ?")
        .bind(head - 2)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let forged = leash_broker::audit::checkpoint::sign(
        &leash_broker::tokens::keys::RootKeys::generate(),
        head - 2,
        &new_head,
        1_800_000_000_000,
    )
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, at_ms, kid, signature) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(forged.seq)
    .bind(&forged.hash)
    .bind(forged.at_ms)
    .bind(i64::from(forged.kid))
    .bind(&forged.signature)
    .execute(&mut conn)
    .await
    .unwrap();
    let (ok, out) = audit_verify(data);
    assert!(
        !ok && out.contains(&format!("checkpoint at seq {}", head - 2))
            && out.contains("does not verify with root key 1"),
        "{out}"
    );
}

#[tokio::test]
async fn a_rewritten_chain_does_not_match_its_checkpoint() {
    let broker = TestBroker::spawn().await;
    activity(&broker).await;
    let store = broker.state.store.clone();
    let folder = broker.shutdown().await;
    let data = folder.path();
    // Edit row 2 and re-chain every row after it: the hash chain alone is valid again.
    let rows = store.audit_after(0, 1000).await.unwrap();
    let events: Vec<_> = rows
        .iter()
        .map(|r| leash_broker::store::NewAuditEvent {
            at_ms: r.at_ms,
            kind: r.kind.clone(),
            actor: if r.seq == 2 {
                "approver:nobody".into()
            } else {
                r.actor.clone()
            },
            task_id: r.task_id.clone(),
            detail: r.detail.clone(),
        })
        .collect();
    let mut conn = open_db(data).await;
    for row in leash_broker::store::chain::chain_after(None, &events) {
        sqlx::query("UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&row.actor)
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .bind(row.seq)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let head = rows.last().unwrap().seq;
    let (ok, out) = audit_verify(data);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("checkpoint at seq {head}")) && out.contains("rewritten"),
        "{out}"
    );
}

#[tokio::test]
async fn the_checkpoint_file_names_a_truncation_the_database_no_longer_shows() {
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("checkpoints.jsonl");
    let path = file.clone();
    let broker = TestBroker::spawn_tuned(crate::common::POLICY, move |config| {
        config.audit_checkpoint_file = Some(path);
    })
    .await;
    let (agent, approver, token) = activity(&broker).await;
    let folder = broker.shutdown().await;
    let data = folder.path();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.trim().is_empty(), "the file holds checkpoints");
    for line in text.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut keys: Vec<_> = line.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["at", "hash", "kid", "seq", "signature"]);
    }
    for secret in [token.as_str(), agent.as_str(), approver.as_str(), ADMIN] {
        assert!(
            !text.contains(secret),
            "a secret leaked into the checkpoint file"
        );
    }
    let file_arg = file.to_str().unwrap();
    let (ok, out) = audit_verify_with(data, &["--checkpoints", file_arg]);
    assert!(ok && out.contains("the file's included"), "{out}");

    // Someone with the database alone removes checkpoints: the file still has them.
    let mut conn = open_db(data).await;
    let head = scalar(&mut conn, "SELECT MAX(seq) FROM audit").await;
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = audit_verify_with(data, &["--checkpoints", file_arg]);
    assert!(!ok && out.contains("is missing from the database"), "{out}");
    // ... and the newest rows: without the file this is undetectable (the documented
    // limit); with it, the truncation is named.
    sqlx::query("DELETE FROM audit WHERE seq > ?")
        .bind(head - 3)
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = audit_verify(data);
    assert!(ok && out.contains("no checkpoint yet"), "{out}");
    let (ok, out) = audit_verify_with(data, &["--checkpoints", file_arg]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "truncated: rows after seq {} are missing (checkpoint at seq {head}",
            head - 3
        )) && out.contains("from the file"),
        "{out}"
    );
}

/// Verifies a published checkpoint as an outside collector would: the documented byte
/// string, the published key of its `kid`, ed25519.
fn collector_verifies(checkpoint: &serde_json::Value, keys: &serde_json::Value) -> bool {
    use base64::Engine;
    let kid = checkpoint["kid"].as_u64().unwrap();
    let key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_u64() == Some(kid))
        .unwrap();
    let hex_key = key["public_key"]
        .as_str()
        .unwrap()
        .strip_prefix("ed25519/")
        .unwrap();
    let key: [u8; 32] = hex::decode(hex_key).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
    let signature: [u8; 64] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(checkpoint["signature"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let text = format!(
        "leash-audit-checkpoint-v1\n{}\n{}\n{}",
        checkpoint["seq"],
        checkpoint["hash"].as_str().unwrap(),
        checkpoint["at"].as_str().unwrap()
    );
    key.verify_strict(
        text.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&signature),
    )
    .is_ok()
}

async fn checkpoints_until(
    broker: &TestBroker,
    bearer: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = broker.get("/v1/audit/checkpoints", Some(bearer)).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let list = reply.body["checkpoints"].as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint came: {list:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn checkpoints_are_signed_every_n_events_and_published_to_approvers_only() {
    let broker = TestBroker::spawn_tuned(crate::common::POLICY, |config| {
        config.audit_checkpoint_events = 3;
        config.audit_checkpoint_interval = std::time::Duration::ZERO;
    })
    .await;
    let (agent, approver, token) = activity(&broker).await;
    let list = checkpoints_until(&broker, &approver, |list| !list.is_empty()).await;
    let keys = broker.get("/.well-known/leash/keys", None).await.body;
    let events = broker.get("/v1/audit?after=0", Some(ADMIN)).await.body["events"]
        .as_array()
        .unwrap()
        .clone();
    for checkpoint in &list {
        assert!(collector_verifies(checkpoint, &keys), "{checkpoint}");
        let seq = checkpoint["seq"].as_i64().unwrap();
        let row = events
            .iter()
            .find(|e| e["seq"].as_i64() == Some(seq))
            .unwrap();
        assert_eq!(
            checkpoint["hash"], row["hash"],
            "it covers the row at its seq"
        );
    }
    // A changed byte does not verify for the collector either.
    let mut forged = list[0].clone();
    forged["seq"] = json!(forged["seq"].as_i64().unwrap() + 1);
    assert!(!collector_verifies(&forged, &keys));

    let last = list.last().unwrap()["seq"].as_i64().unwrap();
    let after = broker
        .get(&format!("/v1/audit/checkpoints?after={last}"), Some(ADMIN))
        .await;
    assert_eq!(after.status, 200);
    assert!(after.body["checkpoints"].as_array().unwrap().is_empty());

    assert_eq!(broker.get("/v1/audit/checkpoints", None).await.status, 401);
    assert_eq!(
        broker
            .get("/v1/audit/checkpoints", Some("not-a-token"))
            .await
            .status,
        401
    );
    for caller in [&agent, &token] {
        let reply = broker.get("/v1/audit/checkpoints", Some(caller)).await;
        assert_eq!(reply.status, 403, "{:?}", reply.body);
    }
}

#[tokio::test]
async fn checkpoints_are_signed_every_t_seconds_only_when_there_are_new_events() {
    let broker = TestBroker::spawn_tuned(crate::common::POLICY, |config| {
        config.audit_checkpoint_events = 0;
        config.audit_checkpoint_interval = std::time::Duration::from_millis(200);
    })
    .await;
    broker.agent("bot").await;
    broker.state.audit.flush().await;
    let head = broker.state.store.audit_head().await.unwrap().unwrap().0;
    let list = checkpoints_until(&broker, ADMIN, |list| {
        list.last().and_then(|c| c["seq"].as_i64()) == Some(head)
    })
    .await;
    // Nothing new: no new checkpoint, however long it waits.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let again = broker.get("/v1/audit/checkpoints", Some(ADMIN)).await;
    assert_eq!(
        again.body["checkpoints"].as_array().unwrap().len(),
        list.len()
    );
    broker.approver("ann").await;
    broker.state.audit.flush().await;
    let head = broker.state.store.audit_head().await.unwrap().unwrap().0;
    checkpoints_until(&broker, ADMIN, |list| {
        list.last().and_then(|c| c["seq"].as_i64()) == Some(head)
    })
    .await;
}

// ---- Retention: ended tasks pruned, only up to a signed checkpoint ----

/// Ended tasks past their retention are pruned with the audit rows before them, only up
/// to a signed checkpoint; a running task keeps its rows and its evidence; the pruned log
/// still verifies from that checkpoint, and deleting one more row does not.
#[tokio::test]
async fn retention_prunes_ended_tasks_only_up_to_a_signed_checkpoint() {
    let broker = TestBroker::spawn_tuned(crate::common::POLICY, |config| {
        config.task_retention = std::time::Duration::from_millis(1);
    })
    .await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (ended, token) = broker.task(&agent, &["web.search"]).await;
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    let done = broker
        .post(
            &format!("/v1/tasks/{ended}/complete"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(done.status, 200);
    broker.state.audit.flush().await;
    let signer = leash_broker::audit::checkpoint::Checkpoints {
        audit: broker.state.audit.clone(),
        store: broker.state.store.clone(),
        keys: broker.state.keys.clone(),
        clock: broker.state.clock.clone(),
        file: None,
        interval: std::time::Duration::ZERO,
    };
    let anchor = signer.checkpoint_head().await.unwrap().unwrap().seq;
    // A task still running: none of its rows, nor any row after its first, may go.
    let (running, running_token) = broker.task(&agent, &["web.search"]).await;
    assert_eq!(
        broker
            .call(&running_token, "web.search", json!({"query": "y"}))
            .await
            .status,
        200
    );
    broker.state.audit.flush().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let pruned = leash_broker::app::run::prune_history(&broker.state)
        .await
        .unwrap();
    assert_eq!(pruned.through_seq, Some(anchor), "{pruned:?}");
    assert_eq!(pruned.tasks, 1, "{pruned:?}");
    assert_eq!(
        leash_broker::app::run::prune_history(&broker.state)
            .await
            .unwrap()
            .through_seq,
        None,
        "nothing more until a later checkpoint"
    );
    // The pruning is recorded, and a later checkpoint seals that record.
    broker.state.audit.flush().await;
    let sealed = signer.checkpoint_head().await.unwrap().unwrap().seq;
    for path in [
        format!("/v1/tasks/{ended}"),
        format!("/v1/tasks/{ended}/evidence"),
    ] {
        let gone = broker.get(&path, Some(&approver)).await;
        assert_eq!(gone.status, 404, "{path}: {gone:?}");
    }
    let kept = broker
        .get(&format!("/v1/tasks/{running}/evidence"), Some(&approver))
        .await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.body["evidence"]["summary"]["calls_allowed"], 1);
    assert_eq!(
        broker
            .call(&running_token, "web.search", json!({"query": "z"}))
            .await
            .status,
        200,
        "the running task goes on"
    );

    let folder = broker.shutdown().await;
    let data = folder.path();
    let (ok, out) = audit_verify(data);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "rows 1 to {anchor} were pruned for retention; the signed checkpoint at seq {anchor} anchors the rest"
        )),
        "{out}"
    );
    let mut conn = open_db(data).await;
    assert_eq!(
        scalar(
            &mut conn,
            "SELECT COUNT(*) FROM audit WHERE kind = 'audit.pruned'"
        )
        .await,
        1,
        "the pruning is itself recorded"
    );
    // Someone deletes everything up to a later checkpoint, as if it were retention: no
    // record of such a pruning exists, so it is named as a deletion.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(data).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    let mut copied = open_db(copy.path()).await;
    sqlx::query("DELETE FROM audit WHERE seq <= ?")
        .bind(sealed)
        .execute(&mut copied)
        .await
        .unwrap();
    let (ok, out) = audit_verify(copy.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "no audit.pruned row records a pruning through seq {sealed}"
        )),
        "{out}"
    );
    // Someone deletes one more row at the start: no checkpoint anchors what remains.
    sqlx::query("DELETE FROM audit WHERE seq = ?")
        .bind(anchor + 1)
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out) = audit_verify(data);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("no signed checkpoint at seq {}", anchor + 1)),
        "{out}"
    );
}
