//! Replicas: three `leash serve` processes on this machine's PostgreSQL (database `test`,
//! a fresh schema per test). Issue on A, call on B, revoke on C; measure propagation; kill
//! a replica under load; cut the listeners; sealed keys and rotation.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    ADMIN, BrokerProcess, Reply, ToolServer, attenuate, json_of, leash_binary, post_json,
};

const DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";
const MASTER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One deployment: policies, a schema, and the environment its replicas share.
struct Deployment {
    policies: tempfile::TempDir,
    schema: String,
    /// The tool the replicas forward to; kept alive for the deployment's lifetime.
    _upstream: ToolServer,
    data: Vec<tempfile::TempDir>,
}

impl Deployment {
    async fn new() -> Deployment {
        let upstream = ToolServer::spawn().await;
        let policies = tempfile::tempdir().unwrap();
        std::fs::write(
            policies.path().join("p.toml"),
            crate::common::POLICY.replace("{UP}", &upstream.addr.to_string()),
        )
        .unwrap();
        let schema = format!("replica_{}", hex::encode(rand_bytes()));
        Deployment {
            policies,
            schema,
            _upstream: upstream,
            data: Vec::new(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LEASH_DATABASE_URL", DATABASE.to_string()),
            ("LEASH_DATABASE_SCHEMA", self.schema.clone()),
            ("LEASH_MASTER_KEY", MASTER.to_string()),
            ("LEASH_ADMIN_TOKEN", ADMIN.to_string()),
        ]
    }

    async fn replica(&mut self) -> BrokerProcess {
        self.replica_with(&[]).await
    }

    /// A replica with extra environment variables.
    async fn replica_with(&mut self, extra: &[(&'static str, String)]) -> BrokerProcess {
        let data = tempfile::tempdir().unwrap();
        let mut env = self.env();
        env.extend_from_slice(extra);
        let replica = BrokerProcess::start_env(self.policies.path(), data.path(), &env).await;
        self.data.push(data);
        replica
    }

    /// Runs SQL in this deployment's schema; what it printed.
    fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qtAc"])
            .arg(format!("SET search_path TO {}; {sql}", self.schema))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn leash(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(leash_binary());
        command.args(args);
        for (k, v) in self.env() {
            command.env(k, v);
        }
        command.output().unwrap()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-qc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            ])
            .output();
    }
}

fn rand_bytes() -> [u8; 6] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut out = [0u8; 6];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (nanos >> (i * 8)) as u8 ^ (std::process::id() >> (i % 4)) as u8;
    }
    out
}

async fn call(url: &str, token: &str) -> Reply {
    post_json(
        &format!("{url}/v1/tools/web.search/call"),
        Some(token),
        json!({"query": "x"}),
    )
    .await
}

async fn task(url: &str, credential: &str) -> (String, String) {
    let open = post_json(
        &format!("{url}/v1/tasks"),
        Some(credential),
        json!({"purpose": "p", "tools": ["web.search"]}),
    )
    .await;
    assert_eq!(open.status, 201, "{open:?}");
    (
        open.body["task_id"].as_str().unwrap().to_string(),
        open.body["token"].as_str().unwrap().to_string(),
    )
}

async fn credential(url: &str, path: &str) -> String {
    let reply = post_json(&format!("{url}{path}"), Some(ADMIN), json!({})).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    reply.body["credential"].as_str().unwrap().to_string()
}

/// Polls until `url` refuses `token`; returns how long that took.
async fn until_refused(url: String, token: String, from: Instant) -> Duration {
    loop {
        let reply = call(&url, &token).await;
        if reply.status == 401 {
            return from.elapsed();
        }
        assert!(
            from.elapsed() < Duration::from_secs(5),
            "{url} kept admitting a revoked task: {reply:?}"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_on_c_stops_calls_on_a_and_b_within_milliseconds() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let b = deployment.replica().await;
    let c = deployment.replica().await;
    let keys_a: Value = reqwest::get(format!("{}/.well-known/leash/keys", a.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys_c: Value = reqwest::get(format!("{}/.well-known/leash/keys", c.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys_a, keys_c, "one set of root keys, from the database");
    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    let approver = credential(&b.url, "/v1/approvers/ann/credentials").await;

    const TRIALS: usize = 200;
    let mut delays = Vec::with_capacity(TRIALS * 2);
    for trial in 0..TRIALS {
        let (task_id, token) = task(&a.url, &agent).await;
        assert_eq!(
            call(&b.url, &token).await.status,
            200,
            "issued on A, called on B"
        );
        assert_eq!(call(&a.url, &token).await.status, 200);
        let path = if trial % 2 == 0 { "revoke" } else { "complete" };
        let bearer = if path == "revoke" { &approver } else { &agent };
        let ended = post_json(
            &format!("{}/v1/tasks/{task_id}/{path}", c.url),
            Some(bearer),
            json!({}),
        )
        .await;
        assert_eq!(ended.status, 200, "{ended:?}");
        let answered = Instant::now();
        let (da, db) = tokio::join!(
            until_refused(a.url.clone(), token.clone(), answered),
            until_refused(b.url.clone(), token.clone(), answered)
        );
        delays.push(da);
        delays.push(db);
    }
    delays.sort();
    println!(
        "replica propagation (revoke/complete on C -> refusal on A and B), {} samples: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
    // The three replicas append to one audit chain, with no gap or fork.
    let events: Value = reqwest::Client::new()
        .get(format!("{}/v1/audit?after=0", b.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<i64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one gap-free chain across replicas"
    );
}

#[tokio::test]
async fn a_budget_spent_on_one_replica_holds_on_the_other() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let b = deployment.replica().await;
    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    let (_, token) = task(&a.url, &agent).await;
    let child = attenuate(&token, "reject if token_calls($n), $n >= 3");
    // B counts one call of the child, so it holds the child's counter in memory.
    assert_eq!(call(&b.url, &child).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&a.url, &child).await.status, 200);
    assert_eq!(call(&a.url, &child).await.status, 200);
    assert_eq!(call(&a.url, &child).await.status, 429);
    // The documented bound: counters reach the database every 50 ms; past that, B
    // refuses the child and every descendant, appended before or after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grandchild = attenuate(&child, "check if true");
    for (url, token) in [
        (&b.url, &child),
        (&b.url, &grandchild),
        (&a.url, &grandchild),
    ] {
        let reply = call(url, token).await;
        assert_eq!(
            (reply.status, reply.code()),
            (429, "budget_exhausted"),
            "{reply:?}"
        );
    }
    assert_eq!(call(&b.url, &token).await.status, 200, "the parent goes on");
}

#[tokio::test]
async fn a_tasks_call_budget_holds_across_replicas() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let b = deployment.replica().await;
    // The test policy gives agent `small` 3 calls per task.
    let agent = credential(&a.url, "/v1/agents/small/credentials").await;
    let (_, token) = task(&a.url, &agent).await;
    assert_eq!(call(&a.url, &token).await.status, 200);
    assert_eq!(call(&a.url, &token).await.status, 200);
    // Past the write-behind bound, B knows of A's two calls.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&b.url, &token).await.status, 200);
    for url in [&b.url, &a.url] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let over = call(url, &token).await;
        assert_eq!(
            (over.status, over.code()),
            (429, "budget_exhausted"),
            "{over:?}"
        );
    }
}

#[tokio::test]
async fn a_revoked_approver_is_refused_on_every_replica() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let b = deployment.replica().await;
    let ann = credential(&a.url, "/v1/approvers/ann/credentials").await;
    let http = reqwest::Client::new();
    let approvals = |url: &str| {
        http.get(format!("{url}/v1/approvals"))
            .bearer_auth(&ann)
            .send()
    };
    assert_eq!(approvals(&b.url).await.unwrap().status(), 200);
    let revoked = post_json(
        &format!("{}/v1/approvers/ann/revoke", a.url),
        Some(ADMIN),
        json!({}),
    )
    .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(
        approvals(&a.url).await.unwrap().status(),
        401,
        "at once on A"
    );
    // B hears of it through the revocation feed within the replica bound.
    let answered = Instant::now();
    loop {
        let status = approvals(&b.url).await.unwrap().status();
        if status == 401 {
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(2),
            "B still admits a revoked approver"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "approver revocation reached B after {:?}",
        answered.elapsed()
    );
    for path in ["/v1/tasks?state=all", "/v1/audit?after=0"] {
        let reply = http
            .get(format!("{}{path}", b.url))
            .bearer_auth(&ann)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn a_task_cannot_slip_past_an_agent_revoke_the_replica_has_not_heard_of() {
    let mut deployment = Deployment::new().await;
    let b = deployment.replica().await;
    let agent = credential(&b.url, "/v1/agents/bot/credentials").await;
    // B has verified the credential (it is cached there).
    let (_, _) = task(&b.url, &agent).await;
    // The agent's credential is revoked in the database, but the notification has not
    // reached B (written here without NOTIFY, as if it were still in flight).
    let id = hex::encode(
        biscuit_auth::UnverifiedBiscuit::from_base64(&agent)
            .unwrap()
            .revocation_identifiers()[0]
            .clone(),
    );
    let inserted = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
        .arg(format!(
            "INSERT INTO {}.revocations (revocation_id, task_id, reason, at_ms) VALUES ('{id}', NULL, 'credential', 0)",
            deployment.schema
        ))
        .output()
        .unwrap();
    assert!(inserted.status.success(), "{inserted:?}");
    // B still believes the credential, but the creating transaction does not.
    let open = post_json(
        &format!("{}/v1/tasks", b.url),
        Some(&agent),
        json!({"purpose": "p", "tools": ["web.search"]}),
    )
    .await;
    assert_eq!(
        (open.status, open.code()),
        (401, "token_revoked"),
        "{open:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_replica_under_load_leaves_the_others_serving() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let mut b = deployment.replica().await;
    let c = deployment.replica().await;
    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    let (task_id, token) = task(&a.url, &agent).await;
    let (_, other) = task(&c.url, &agent).await;
    let urls = [a.url.clone(), b.url.clone(), c.url.clone()];
    let load = {
        let (urls, token) = (urls.clone(), token.clone());
        tokio::spawn(async move {
            let mut outcomes: HashMap<String, (u32, u32)> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                for url in &urls {
                    let ok = reqwest::Client::new()
                        .post(format!("{url}/v1/tools/web.search/call"))
                        .bearer_auth(&token)
                        .json(&json!({"query": "x"}))
                        .timeout(Duration::from_secs(1))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    let entry = outcomes.entry(url.clone()).or_default();
                    if ok { entry.0 += 1 } else { entry.1 += 1 }
                }
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    b.kill9();
    let outcomes = load.await.unwrap();
    println!("load while B was killed: {outcomes:?}");
    for url in [&a.url, &c.url] {
        let (ok, failed) = outcomes[url];
        assert!(ok > 10 && failed == 0, "{url}: {ok} ok, {failed} failed");
    }
    // The survivors still revoke for each other.
    post_json(
        &format!("{}/v1/tasks/{task_id}/revoke", a.url),
        Some(ADMIN),
        json!({}),
    )
    .await;
    until_refused(c.url.clone(), token.clone(), Instant::now()).await;
    assert_eq!(call(&a.url, &other).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_listeners_fail_closed_then_recover_without_missing_a_revocation() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let b = deployment.replica().await;
    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    let (doomed_id, doomed) = task(&a.url, &agent).await;
    let (_, survivor) = task(&a.url, &agent).await;
    assert_eq!(call(&b.url, &doomed).await.status, 200);
    assert_eq!(call(&b.url, &survivor).await.status, 200);

    // Keep killing this deployment's listener connections for 6 s (three times the 2 s
    // staleness: under a loaded CI machine each psql kill takes a while, and B may
    // reconnect between kills), revoking one task on A while B cannot hear it.
    let channel = format!("leash_{}", deployment.schema);
    let cutter = {
        let channel = channel.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < deadline {
                let sql = format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%{channel}%' AND pid <> pg_backend_pid()"
                );
                let _ = Command::new("psql")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-d",
                        "test",
                        "-qtc",
                        &sql,
                    ])
                    .output();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let revoked = post_json(
        &format!("{}/v1/tasks/{doomed_id}/revoke", a.url),
        Some(ADMIN),
        json!({}),
    )
    .await;
    assert_eq!(revoked.status, 200);
    let revoked_at = Instant::now();
    // While B is deaf: it must not admit the revoked task beyond the staleness bound, and
    // must fail closed (503) for everything once stale.
    let mut saw_fail_closed = false;
    let mut admitted_late = 0;
    while !cutter.is_finished() {
        let reply = call(&b.url, &doomed).await;
        if reply.status == 200 && revoked_at.elapsed() > Duration::from_millis(2_000) {
            admitted_late += 1;
        }
        let other = call(&b.url, &survivor).await;
        if other.status == 503 {
            assert_eq!(other.code(), "unavailable");
            saw_fail_closed = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cutter.await.unwrap();
    assert_eq!(
        admitted_late, 0,
        "B admitted a revoked task after the staleness bound"
    );
    assert!(
        saw_fail_closed,
        "B never failed closed while its listener was cut"
    );
    // Recovery: B reconnects, catches up from the tables, and missed nothing.
    let recovered = Instant::now();
    loop {
        let reply = call(&b.url, &survivor).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(10),
            "B did not recover: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "listener cut: B failed closed, then recovered {:?} after the cuts stopped",
        recovered.elapsed()
    );
    assert_eq!(
        call(&b.url, &doomed).await.status,
        401,
        "the revocation made during the outage is in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_keys_need_the_master_key_and_rotate_everywhere() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let b = deployment.replica().await;
    // Without, or with another master key, a replica refuses to start.
    for (key, message) in [
        (None, "LEASH_MASTER_KEY is required"),
        (Some("ab".repeat(32)), "wrong master key"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut command = Command::new(leash_binary());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
            .arg(deployment.policies.path())
            .arg("--data")
            .arg(data.path());
        for (k, v) in deployment.env() {
            if k != "LEASH_MASTER_KEY" {
                command.env(k, v);
            }
        }
        match &key {
            Some(k) => command.env("LEASH_MASTER_KEY", k),
            None => command.env_remove("LEASH_MASTER_KEY"),
        };
        let out = command.output().unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(message), "{text}");
    }
    // A dump of the key table holds no private key material.
    let dump = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-qtc",
            &format!("SELECT sealed FROM {}.root_keys", deployment.schema),
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&dump.stdout).trim().is_empty());
    // One forwarding key for the deployment, sealed beside the root keys: every replica
    // signs forwarded capabilities with it.
    let dump = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-qtc",
            &format!("SELECT sealed FROM {}.forwarding_key", deployment.schema),
        ])
        .output()
        .unwrap();
    let sealed = String::from_utf8_lossy(&dump.stdout).trim().to_string();
    assert_eq!(
        sealed.len(),
        2 * (12 + 64 + 16),
        "nonce, sealed hex key, tag"
    );
    let forwarding_key = |url: String| async move {
        let keys: Value = reqwest::get(format!("{url}/.well-known/leash/keys"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys["forwarding_key"].as_str().unwrap().to_string()
    };
    let published = forwarding_key(a.url.clone()).await;
    assert_eq!(published, forwarding_key(b.url.clone()).await);

    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    let (_, old) = task(&a.url, &agent).await;
    let rotated = deployment.leash(&["keys", "rotate"]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys: Value = reqwest::get(format!("{}/.well-known/leash/keys", b.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if keys["keys"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "B never saw the rotated key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, new) = task(&b.url, &agent).await;
    let kid = biscuit_auth::UnverifiedBiscuit::from_base64(&new)
        .unwrap()
        .root_key_id();
    assert_eq!(kid, Some(2), "new tokens use the new key");
    assert_eq!(
        call(&a.url, &old).await.status,
        200,
        "old tokens verify until they expire"
    );
    assert_eq!(call(&a.url, &new).await.status, 200);

    let retired = deployment.leash(&["keys", "retire", "1"]);
    assert!(
        retired.status.success(),
        "{}",
        String::from_utf8_lossy(&retired.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ra, rb) = (call(&a.url, &old).await, call(&b.url, &old).await);
        if ra.code() == "token_invalid" && rb.code() == "token_invalid" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retired key still verifies: {ra:?} {rb:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call(&b.url, &new).await.status, 200);
    let last = deployment.leash(&["keys", "retire", "2"]);
    assert!(
        !last.status.success(),
        "the last live key cannot be retired"
    );
}

/// `leash audit verify` on a PostgreSQL deployment: rows written by two replicas, one
/// chain, checkpoints signed by whichever replica got there first, keys opened with the
/// master key. Then a truncation and an edit are each named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_verify_checks_a_postgres_deployment() {
    let mut deployment = Deployment::new().await;
    let fast = [("LEASH_AUDIT_CHECKPOINT_SECONDS", "1".to_string())];
    let mut a = deployment.replica_with(&fast).await;
    let mut b = deployment.replica_with(&fast).await;
    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    for url in [&a.url, &b.url, &a.url] {
        let (_, token) = task(url, &agent).await;
        assert_eq!(call(url, &token).await.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let head = loop {
        let head: i64 = deployment
            .psql("SELECT COALESCE(MAX(seq), 0) FROM audit")
            .parse()
            .unwrap();
        let published = reqwest::Client::new()
            .get(format!("{}/v1/audit/checkpoints", b.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let latest = published["checkpoints"]
            .as_array()
            .unwrap()
            .last()
            .and_then(|c| c["seq"].as_i64());
        if head >= 7 && latest == Some(head) {
            break head;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covered {head}: {published}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    a.kill9();
    b.kill9();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(extra);
        let out = deployment.leash(&args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = verify(&[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("through seq {head}")) && out.contains(&format!("covers seq {head}")),
        "{out}"
    );
    let (ok, out) = verify(&["--database-schema", "no_such_schema"]);
    assert!(!ok && out.contains("no schema"), "{out}");
    let without_master = Command::new(leash_binary())
        .args(["audit", "verify"])
        .envs(
            deployment
                .env()
                .into_iter()
                .filter(|(k, _)| *k != "LEASH_MASTER_KEY"),
        )
        .env_remove("LEASH_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!without_master.status.success());
    assert!(
        String::from_utf8_lossy(&without_master.stderr).contains("LEASH_MASTER_KEY is required")
    );

    deployment.psql(&format!("DELETE FROM audit WHERE seq > {}", head - 2));
    let (ok, out) = verify(&[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "truncated: rows after seq {} are missing (checkpoint at seq {head}",
            head - 2
        )),
        "{out}"
    );
    deployment.psql("UPDATE audit SET actor = 'approver:nobody' WHERE seq = 2");
    let (ok, out) = verify(&[]);
    assert!(
        !ok && out.contains("seq 2") && out.contains("edited"),
        "{out}"
    );
}

/// Reads an `/v1/events` stream until a `timeline.appended` event names `task_id`;
/// fails after 10 seconds.
async fn await_timeline_event<S, B, E>(mut body: S, task_id: &str)
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Debug,
{
    use futures_util::StreamExt;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let wanted = format!("\"task_id\":\"{task_id}\"");
    while !text
        .split("\n\n")
        .any(|event| event.contains("event: timeline.appended") && event.contains(&wanted))
    {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no timeline.appended for {task_id}: {text}"))
            .expect("the stream stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(chunk.as_ref()));
    }
}

/// An approver's open timeline is live whichever replica served the agent: the rows
/// one replica commits are announced on every replica's event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_open_on_one_replica_hears_calls_served_by_another() {
    let mut deployment = Deployment::new().await;
    let a = deployment.replica().await;
    let b = deployment.replica().await;
    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    let ann = credential(&a.url, "/v1/approvers/ann/credentials").await;
    let (task_id, token) = task(&a.url, &agent).await;
    let http = reqwest::Client::new();
    // The issuance row is in first, so only the call's row can announce the task below.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let timeline = json_of(
            http.get(format!("{}/v1/tasks/{task_id}/timeline", b.url))
                .bearer_auth(&ann),
        )
        .await;
        if timeline["entries"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "issuance never recorded: {timeline}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events_of = async |url: &str| {
        let response = http.get(format!("{url}/v1/events")).bearer_auth(&ann);
        let response = response.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes_stream()
    };
    let (mut on_a, mut on_b) = (events_of(&a.url).await, events_of(&b.url).await);
    // The issuance's notice may still be on its way to a replica's feed: let it pass.
    for stream in [&mut on_a, &mut on_b] {
        drain_until_quiet(stream).await;
    }
    assert_eq!(call(&a.url, &token).await.status, 200);
    await_timeline_event(on_b, &task_id).await;
    await_timeline_event(on_a, &task_id).await;
}

/// Reads and drops what an event stream says until it has been quiet for half a second
/// (the stream's keep-alive comes far less often).
async fn drain_until_quiet<S, B, E>(body: &mut S)
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
{
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(chunk) = tokio::time::timeout(Duration::from_millis(500), body.next()).await {
        assert!(chunk.is_some(), "the stream stays open");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never went quiet"
        );
    }
}

/// A task's evidence is built from the shared database only: fetched from another
/// replica it is the same, byte for byte — signature included — and it verifies.
#[tokio::test]
async fn a_tasks_evidence_is_the_same_on_every_replica() {
    let mut deployment = Deployment::new().await;
    // No checkpoint by time: the two fetches must see the same latest checkpoint.
    let quiet = [("LEASH_AUDIT_CHECKPOINT_SECONDS", "0".to_string())];
    let a = deployment.replica_with(&quiet).await;
    let b = deployment.replica_with(&quiet).await;
    let agent = credential(&a.url, "/v1/agents/bot/credentials").await;
    let ann = credential(&a.url, "/v1/approvers/ann/credentials").await;
    let (task_id, token) = task(&a.url, &agent).await;
    assert_eq!(call(&a.url, &token).await.status, 200);
    assert_eq!(call(&b.url, &token).await.status, 200);
    let done = post_json(
        &format!("{}/v1/tasks/{task_id}/complete", b.url),
        Some(&token),
        json!({}),
    )
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    let http = reqwest::Client::new();
    let fetch = async |url: &str| -> String {
        let reply = http
            .get(format!("{url}/v1/tasks/{task_id}/evidence"))
            .bearer_auth(&ann)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        reply.text().await.unwrap()
    };
    // Each replica writes its own rows behind its answers: wait until all four are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let from_a = loop {
        let text = fetch(&a.url).await;
        let evidence: Value = serde_json::from_str(&text).unwrap();
        if evidence["evidence"]["audit"]["count"] == 4 {
            break text;
        }
        assert!(Instant::now() < deadline, "rows never arrived: {evidence}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let from_b = fetch(&b.url).await;
    assert_eq!(from_a, from_b, "the same evidence from either replica");
    let evidence: Value = serde_json::from_str(&from_a).unwrap();
    assert_eq!(evidence["evidence"]["summary"]["calls_allowed"], 2);
    assert_eq!(evidence["evidence"]["task"]["state"], "completed");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evidence.json");
    std::fs::write(&file, &from_b).unwrap();
    let out = Command::new(leash_binary())
        .args(["evidence", "verify"])
        .arg(&file)
        .arg("--keys")
        .arg(format!("{}/.well-known/leash/keys", a.url))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
