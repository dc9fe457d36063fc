//! The `leash` binary: first start, restart, invalid policy, signals, kill -9.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::common::{BrokerProcess, ToolServer, leash_binary, post_json};

fn write_policy(dir: &std::path::Path, upstream: &str) {
    let text = crate::common::POLICY.replace("{UP}", upstream);
    std::fs::write(dir.join("policy.toml"), text).unwrap();
}

async fn admin_token(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("admin_token"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn first_start_creates_the_data_folder_and_restart_reuses_it() {
    let upstream = ToolServer::spawn().await;
    let policies = tempfile::tempdir().unwrap();
    write_policy(policies.path(), &upstream.addr.to_string());
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut first = BrokerProcess::start(policies.path(), &data).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["root_keys.json", "forwarding_key.json", "admin_token"] {
            let mode = std::fs::metadata(data.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
    assert!(data.join("leash.db").exists());
    let keys = reqwest::get(format!("{}/.well-known/leash/keys", first.url))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(keys["keys"][0]["kid"], 1);
    assert_eq!(keys["keys"][0]["algorithm"], "ed25519");
    assert!(
        keys["keys"][0]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ed25519/")
    );
    let admin = admin_token(&data).await;
    let cred = post_json(
        &format!("{}/v1/agents/bot/credentials", first.url),
        Some(&admin),
        json!({}),
    )
    .await;
    let cred = cred.body["credential"].as_str().unwrap().to_string();
    // Graceful stop on SIGTERM.
    let pid = first.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || first.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exited.success(),
        "SIGTERM must stop leash cleanly: {exited:?}"
    );

    let second = BrokerProcess::start(policies.path(), &data).await;
    let again = reqwest::get(format!("{}/.well-known/leash/keys", second.url))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert!(
        keys["forwarding_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("ed25519/")),
        "{keys}"
    );
    assert_eq!(
        keys, again,
        "the root key and the forwarding key are reused"
    );
    assert_eq!(admin, admin_token(&data).await);
    // The credential minted before the restart still opens tasks.
    let open = post_json(
        &format!("{}/v1/tasks", second.url),
        Some(&cred),
        json!({"purpose": "p", "tools": ["web.search"]}),
    )
    .await;
    assert_eq!(open.status, 201, "{open:?}");
}

#[tokio::test]
async fn an_invalid_policy_stops_serve_and_check_points_at_the_lines() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("bad.toml"),
        "[tools.\"a.b\"]\nupstream = \"http://127.0.0.1:1/x\"\ninput_schema = { type = \"object\" }\ncolour = 1\n\n[agents.bot]\ntools = [\"a.c\"]\n",
    )
    .unwrap();
    let check = Command::new(leash_binary())
        .args(["policy", "check", "--policies"])
        .arg(policies.path())
        .output()
        .unwrap();
    assert!(!check.status.success());
    let text = String::from_utf8_lossy(&check.stderr);
    assert!(
        text.contains("bad.toml:4:1: unknown key \"colour\""),
        "{text}"
    );
    assert!(
        text.contains("bad.toml:7:10: agent \"bot\" is granted tool \"a.c\""),
        "{text}"
    );
    let data = tempfile::tempdir().unwrap();
    let serve = Command::new(leash_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(policies.path())
        .arg("--data")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let text = String::from_utf8_lossy(&serve.stderr);
    assert!(
        text.contains("invalid policy") && text.contains("bad.toml:4:1"),
        "{text}"
    );
    let good = Command::new(leash_binary())
        .args(["policy", "check", "--policies", "../policies"])
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}

/// kill -9 while calls are in flight: every revoke and complete acknowledged before the
/// kill is still in force after a restart.
/// kill -9 rounds of `kill_9_during_calls_loses_no_acknowledged_revocation`.
const KILL_ROUNDS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_calls_loses_no_acknowledged_revocation() {
    let upstream = ToolServer::spawn().await;
    let policies = tempfile::tempdir().unwrap();
    // Long windows: tasks of the first round must outlive all 50.
    let policy = crate::common::POLICY
        .replacen("max_ttl_seconds = 600", "max_ttl_seconds = 3600", 1)
        .replacen(
            "idle_timeout_seconds = 120",
            "idle_timeout_seconds = 3600",
            1,
        )
        .replacen("max_calls = 1000", "max_calls = 100000", 1)
        .replace("{UP}", &upstream.addr.to_string());
    std::fs::write(policies.path().join("policy.toml"), policy).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut alive: Vec<(String, String)> = Vec::new();
    let mut unknown = 0;
    for round in 0..KILL_ROUNDS {
        let mut broker = BrokerProcess::start(policies.path(), data.path()).await;
        let admin = admin_token(data.path()).await;
        let cred = post_json(
            &format!("{}/v1/agents/bot/credentials", broker.url),
            Some(&admin),
            json!({}),
        )
        .await;
        let cred = cred.body["credential"].as_str().unwrap().to_string();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let open = post_json(
                &format!("{}/v1/tasks", broker.url),
                Some(&cred),
                json!({"purpose": "p", "tools": ["web.search"]}),
            )
            .await;
            tasks.push((
                open.body["task_id"].as_str().unwrap().to_string(),
                open.body["token"].as_str().unwrap().to_string(),
            ));
        }
        // Calls in flight on every task (and on survivors of earlier rounds) while some
        // tasks are ended and the broker is killed.
        let url = broker.url.clone();
        let mut load_tasks = tasks.clone();
        load_tasks.extend(alive.iter().rev().take(6).cloned());
        let load = tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                for (_, token) in &load_tasks {
                    let _ = client
                        .post(format!("{url}/v1/tools/web.search/call"))
                        .bearer_auth(token)
                        .json(&json!({"query": "x"}))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        // End half the tasks concurrently; kill -9 at a different moment each round, so
        // some ends are acknowledged, some are cut off mid-way.
        let mut ends = Vec::new();
        for (i, (task_id, token)) in tasks.iter().enumerate() {
            if i % 2 == 1 {
                alive.push((task_id.clone(), token.clone()));
                continue;
            }
            let path = if (round + i) % 2 == 0 {
                "revoke"
            } else {
                "complete"
            };
            let bearer = if path == "revoke" {
                admin.clone()
            } else {
                cred.clone()
            };
            let url = format!("{}/v1/tasks/{task_id}/{path}", broker.url);
            let task = (task_id.clone(), token.clone());
            if i == 0 {
                // One end per round is awaited before the kill: at least 50 are
                // acknowledged however loaded the machine is.
                let reply = post_json(&url, Some(&bearer), json!({})).await;
                assert_eq!(reply.status, 200, "{reply:?}");
                acknowledged.push(task);
                continue;
            }
            ends.push(tokio::spawn(async move {
                let reply = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(bearer)
                    .json(&json!({}))
                    .send()
                    .await;
                let acked = matches!(&reply, Ok(r) if r.status() == 200);
                (task, acked)
            }));
        }
        tokio::time::sleep(Duration::from_millis((round as u64 * 7) % 40)).await;
        broker.kill9();
        load.abort();
        for end in ends {
            let (task, acked) = end.await.unwrap();
            if acked {
                acknowledged.push(task);
            } else {
                unknown += 1;
            }
        }
    }
    println!(
        "kill -9 x{KILL_ROUNDS}: {} ends acknowledged, {unknown} cut off, {} survivors",
        acknowledged.len(),
        alive.len()
    );
    assert!(
        acknowledged.len() >= KILL_ROUNDS,
        "too few acknowledged ends to prove anything: {}",
        acknowledged.len()
    );
    let broker = BrokerProcess::start(policies.path(), data.path()).await;
    for (task_id, token) in &acknowledged {
        let reply = post_json(
            &format!("{}/v1/tools/web.search/call", broker.url),
            Some(token),
            json!({"query": "x"}),
        )
        .await;
        assert_eq!(
            reply.status, 401,
            "task {task_id} came back to life after kill -9: {reply:?}"
        );
    }
    for (task_id, token) in &alive {
        let reply = post_json(
            &format!("{}/v1/tools/web.search/call", broker.url),
            Some(token),
            json!({"query": "x"}),
        )
        .await;
        assert_eq!(
            reply.status, 200,
            "task {task_id} should have survived: {reply:?}"
        );
    }
    let (ok, out) = crate::common::audit_verify(data.path());
    assert!(ok, "{out}");
}
