//! A task's signed evidence: what it holds matches what the agent did; it verifies
//! offline with `leash evidence verify` and with software nobody here wrote (Python's
//! `rfc8785` and `cryptography`, key from `/.well-known/leash/keys`); changing any byte
//! of it makes both fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::common::{ADMIN, TestBroker, attenuate, leash_binary};

/// `leash evidence verify FILE --keys KEYS`: (success, what it printed).
fn leash_verify(file: &Path, keys: &str) -> (bool, String) {
    let out = Command::new(leash_binary())
        .args(["evidence", "verify"])
        .arg(file)
        .args(["--keys", keys])
        .output()
        .expect("leash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The Python check of every file: one `ok`/`bad` line each.
fn python_verify(keys_url: &str, files: &[PathBuf]) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/interop-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (it installs rfc8785 and cryptography)",
        python.display()
    );
    let out = Command::new(python)
        .arg(root.join("interop/verify_evidence.py"))
        .arg(keys_url)
        .args(files)
        .output()
        .expect("python runs");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_evidence_matches_what_happened_and_verifies_offline_byte_for_byte() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (task_id, token) = broker
        .task(&agent, &["web.search", "fs.read", "bad.fail"])
        .await;
    // What the agent does: three calls served, two refused (one by its schema, one by
    // the upstream), one of them with a token its holder derived.
    let did = [
        (
            token.clone(),
            "web.search",
            json!({"query": "invoices"}),
            200,
        ),
        (token.clone(), "fs.read", json!({"path": "/q3.txt"}), 200),
        (
            token.clone(),
            "web.search",
            json!({"query": "x".repeat(80)}),
            422,
        ),
        (token.clone(), "bad.fail", json!({}), 502),
    ];
    for (token, tool, args, status) in &did {
        let reply = broker.call(token, tool, args.clone()).await;
        assert_eq!(reply.status, *status, "{tool}: {reply:?}");
    }
    let child = attenuate(&token, r#"check if call("web.search")"#);
    assert_eq!(
        broker
            .call(&child, "web.search", json!({"query": "child"}))
            .await
            .status,
        200
    );
    let done = broker
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}");
    broker.state.audit.flush().await;

    // Who may fetch it: approvers and the admin; not the agent, not its token.
    let path = format!("/v1/tasks/{task_id}/evidence");
    for bearer in [&agent, &token] {
        let refused = broker.get(&path, Some(bearer)).await;
        assert!(
            matches!(refused.status, 401 | 403),
            "{bearer:.12}: {refused:?}"
        );
    }
    let missing = broker
        .get(
            "/v1/tasks/tsk_00000000000000000000000000000000/evidence",
            Some(&approver),
        )
        .await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    let malformed = broker.get("/v1/tasks/nope/evidence", Some(&approver)).await;
    assert_eq!(malformed.status, 400);

    let fetched = broker.get(&path, Some(&approver)).await;
    assert_eq!(fetched.status, 200, "{fetched:?}");
    let by_admin = broker.get(&path, Some(ADMIN)).await;
    assert_eq!(by_admin.body, fetched.body, "one evidence, whoever asks");
    let evidence = &fetched.body["evidence"];
    assert_eq!(evidence["format"], "leash-task-evidence-v1");
    assert_eq!(evidence["task"]["task_id"], task_id.as_str());
    assert_eq!(evidence["task"]["state"], "completed");
    assert_eq!(evidence["issuance"]["by"], "policy");
    assert!(
        evidence["policy"]["sha256"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let summary = &evidence["summary"];
    assert_eq!(
        (
            &summary["calls_allowed"],
            &summary["calls_denied"],
            &summary["calls_held"]
        ),
        (&json!(3), &json!(2), &json!(0)),
        "{summary}"
    );
    assert_eq!(
        summary["by_tool"],
        json!({
            "web.search": {"allowed": 2, "denied": 1},
            "fs.read": {"allowed": 1},
            "bad.fail": {"denied": 1},
        })
    );
    // The tokens: the one issued, and the child by its chain and the block it added.
    let tokens = evidence["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_eq!(tokens[0]["source"], "issued");
    assert_eq!(tokens[1]["source"], "derived by its holder");
    assert_eq!(tokens[1]["chain"][0], tokens[0]["revocation_id"]);
    assert!(
        tokens[1]["blocks"][0]
            .as_str()
            .unwrap()
            .contains(r#"check if call("web.search")"#),
        "{tokens:?}"
    );
    // The rows: the issuance, five calls, the end — each with the upstream's part.
    let rows = evidence["audit"]["rows"].as_array().unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "task.issued",
            "call.allowed",
            "call.allowed",
            "call.denied",
            "call.denied",
            "call.allowed",
            "task.completed"
        ]
    );
    let detail =
        |i: usize| -> Value { serde_json::from_str(rows[i]["detail"].as_str().unwrap()).unwrap() };
    assert_eq!(detail(1)["upstream"], "ok");
    assert_eq!(detail(1)["arguments"], json!({"query": "invoices"}));
    assert_eq!(detail(3)["code"], "invalid_arguments");
    assert!(
        detail(3).get("upstream").is_none(),
        "refused before the upstream"
    );
    assert_eq!(detail(4)["upstream"], "bad_answer");
    assert!(!fetched.body.to_string().contains(&token), "never a token");

    // Offline: the CLI and Python both accept it, with the keys from a file or the URL.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evidence.json");
    let compact = serde_json::to_string(&fetched.body).unwrap();
    std::fs::write(&file, &compact).unwrap();
    let keys_url = format!("{}/.well-known/leash/keys", broker.url);
    let keys_file = dir.path().join("keys.json");
    let keys = broker.get("/.well-known/leash/keys", None).await;
    std::fs::write(&keys_file, keys.body.to_string()).unwrap();
    for keys in [keys_url.as_str(), keys_file.to_str().unwrap()] {
        let (ok, said) = leash_verify(&file, keys);
        assert!(ok, "{said}");
        assert!(said.contains("7 audit row(s)"), "{said}");
    }
    assert_eq!(
        python_verify(&keys_url, std::slice::from_ref(&file)),
        [format!("ok {}", file.display())]
    );

    // Any byte changed, anywhere: both refuse it.
    let bytes = compact.as_bytes();
    let positions: Vec<usize> = (0..40).map(|i| i * (bytes.len() - 1) / 39).collect();
    let mut changed_files = Vec::new();
    for (n, &at) in positions.iter().enumerate() {
        let mut changed = bytes.to_vec();
        changed[at] = if changed[at] == b'7' { b'8' } else { b'7' };
        let changed_file = dir.path().join(format!("changed-{n}.json"));
        std::fs::write(&changed_file, &changed).unwrap();
        let (ok, said) = leash_verify(&changed_file, keys_file.to_str().unwrap());
        assert!(!ok, "byte {at} changed, yet the CLI accepted it: {said}");
        assert!(
            said.contains("does not match") || said.contains("not JSON"),
            "{said}"
        );
        changed_files.push(changed_file);
    }
    let verdicts = python_verify(&keys_url, &changed_files);
    assert_eq!(verdicts.len(), changed_files.len());
    for verdict in verdicts {
        assert!(verdict.starts_with("bad "), "{verdict}");
    }
}

/// The timeline reads a task's rows a page at a time; the task list finds tasks by agent,
/// tool and state, a page at a time; bad filters are 400s.
#[tokio::test]
async fn a_tasks_timeline_pages_and_the_task_list_searches() {
    let broker = TestBroker::spawn().await;
    let bot = broker.agent("bot").await;
    let small = broker.agent("small").await;
    let approver = broker.approver("ann").await;
    let (task_id, token) = broker.task(&bot, &["web.search"]).await;
    for n in 0..5 {
        let reply = broker
            .call(&token, "web.search", json!({"query": format!("q{n}")}))
            .await;
        assert_eq!(reply.status, 200);
    }
    let (other, _) = broker.task(&small, &["web.search"]).await;
    broker.state.audit.flush().await;

    let mut after = 0;
    let mut kinds = Vec::new();
    loop {
        let page = broker
            .get(
                &format!("/v1/tasks/{task_id}/timeline?after={after}&limit=2"),
                Some(&approver),
            )
            .await;
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(page.body["task"]["task_id"], task_id.as_str());
        let entries = page.body["entries"].as_array().unwrap();
        if entries.is_empty() {
            assert_eq!(page.body["next"], after);
            break;
        }
        assert!(entries.len() <= 2);
        kinds.extend(
            entries
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_string()),
        );
        after = page.body["next"].as_i64().unwrap();
    }
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    assert_eq!(kinds[0], "task.issued");
    assert!(kinds[1..].iter().all(|k| k == "call.allowed"));
    let refused = broker
        .get(&format!("/v1/tasks/{task_id}/timeline"), Some(&bot))
        .await;
    assert!(matches!(refused.status, 401 | 403), "{refused:?}");

    let list = async |query: &str| {
        broker
            .get(&format!("/v1/tasks?{query}"), Some(&approver))
            .await
    };
    let ids = |reply: &crate::common::Reply| -> Vec<String> {
        reply.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&list("agent=small").await), [other.as_str()]);
    assert_eq!(
        ids(&list("agent=bot&tool=web.search&state=active").await),
        [task_id.as_str()]
    );
    assert!(ids(&list("tool=fs.read").await).is_empty());
    let first = list("limit=1").await;
    assert_eq!(ids(&first), [other.as_str()], "newest first");
    let next = first.body["next"].as_str().unwrap().to_string();
    let second = list(&format!("limit=1&after={next}")).await;
    assert_eq!(ids(&second), [task_id.as_str()]);
    assert!(second.body.get("next").is_none(), "{:?}", second.body);
    let since = list("since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z").await;
    assert!(ids(&since).is_empty());
    for bad in [
        "state=sleeping",
        "since=yesterday",
        "after=garbage",
        "after=12.tsk_nothex",
        "agent=",
        "colour=red",
    ] {
        let reply = list(bad).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "bad_request"),
            "{bad}: {reply:?}"
        );
    }
}

const APPROVED: &str = r#"
[tools."payments.send"]
upstream = "http://{UP}/pay"
approval = "per_call"
input_schema = { type = "object", properties = { amount = { type = "integer" }, pin = { type = "string", writeOnly = true } } }

[agents.careful]
tools = ["payments.send"]
max_ttl_seconds = 600
approval = "issuance"
"#;

/// Who let a task start and every per-call approval are in its evidence; the approver
/// deciding a call sees its `writeOnly` argument masked, as the timeline does, while the
/// approval stays bound to the real value.
#[tokio::test]
async fn approvals_are_in_the_evidence_and_an_approver_never_sees_a_write_only_value() {
    let broker = TestBroker::spawn_with(APPROVED).await;
    let agent = broker.agent("careful").await;
    let ann = broker.approver("ann").await;
    let opened = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "pay the March invoice", "tools": ["payments.send"]}),
        )
        .await;
    assert_eq!(opened.status, 202, "{opened:?}");
    let task_id = opened.body["task_id"].as_str().unwrap().to_string();
    let issuance = opened.body["approval_id"].as_str().unwrap().to_string();
    let approve = |id: String, note: &'static str| {
        let ann = ann.clone();
        let broker = &broker;
        async move {
            let reply = broker
                .post(
                    &format!("/v1/approvals/{id}/approve"),
                    Some(&ann),
                    json!({"note": note}),
                )
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    };
    approve(issuance, "invoice checked").await;
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    let token = shown.body["token"].as_str().unwrap().to_string();
    let args = json!({"amount": 120, "pin": "4921-secret"});
    let held = broker.call(&token, "payments.send", args.clone()).await;
    assert_eq!(held.status, 202, "{held:?}");
    let call_approval = held.body["approval_id"].as_str().unwrap().to_string();
    let pending = broker.get("/v1/approvals?state=pending", Some(&ann)).await;
    let card = &pending.body["approvals"][0];
    assert_eq!(
        card["call"]["arguments"],
        json!({"amount": 120, "pin": "[writeOnly]"}),
        "{card}"
    );
    approve(call_approval.clone(), "amount matches").await;
    let paid = broker
        .http
        .post(format!("{}/v1/tools/payments.send/call", broker.url))
        .bearer_auth(&token)
        .header("Leash-Approval", &call_approval)
        .json(&args)
        .send()
        .await
        .unwrap();
    assert_eq!(
        paid.status(),
        200,
        "bound to the real arguments, not the shown ones"
    );
    assert_eq!(
        broker
            .upstream
            .received
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .body["pin"],
        "4921-secret",
        "the upstream gets the real value"
    );
    broker.state.audit.flush().await;

    let fetched = broker
        .get(&format!("/v1/tasks/{task_id}/evidence"), Some(&ann))
        .await;
    assert_eq!(fetched.status, 200);
    assert!(!fetched.body.to_string().contains("4921-secret"));
    let evidence = &fetched.body["evidence"];
    assert_eq!(
        (
            &evidence["issuance"]["by"],
            &evidence["issuance"]["approver"],
            &evidence["issuance"]["note"]
        ),
        (
            &json!("approver"),
            &json!("approver:ann"),
            &json!("invoice checked")
        )
    );
    assert_eq!(evidence["tokens"][0]["source"], "issued on approval");
    assert!(evidence["tokens"][0]["revocation_id"].is_string());
    let summary = &evidence["summary"];
    assert_eq!(
        (
            &summary["calls_held"],
            &summary["calls_allowed"],
            &summary["approvals_requested"]
        ),
        (&json!(1), &json!(1), &json!(2)),
        "{summary}"
    );
}

const STRICT_SECRETS: &str = r#"
[tools."vault.unlock"]
upstream = "http://{UP}/unlock"
input_schema = { type = "object", properties = { user = { type = "string" }, pin = { type = "string", writeOnly = true, pattern = "^[0-9]{4}$" }, code = { type = "integer", writeOnly = true, maximum = 999 }, keys = { type = "array", items = { type = "string", writeOnly = true, maxLength = 3 } } } }

[agents.worker]
tools = ["vault.unlock"]
max_ttl_seconds = 600
"#;

/// Calls refused because a `writeOnly` value breaks the schema (a pattern, a maximum, an
/// item's length) are recorded with their reason and their arguments masked: no audit
/// row, timeline entry or evidence holds the value — strings, numbers and values inside
/// arrays alike. (An upstream's error that quotes one: `mcp.rs`.)
#[tokio::test]
async fn schema_refusals_of_write_only_values_keep_them_out_of_the_record() {
    let broker = TestBroker::spawn_with(STRICT_SECRETS).await;
    let agent = broker.agent("worker").await;
    let ann = broker.approver("ann").await;
    let opened = broker
        .post(
            "/v1/tasks",
            Some(&agent),
            json!({"purpose": "open the vault", "tools": ["vault.unlock"]}),
        )
        .await;
    assert_eq!(opened.status, 201, "{opened:?}");
    let task_id = opened.body["task_id"].as_str().unwrap().to_string();
    let token = opened.body["token"].as_str().unwrap().to_string();
    let attempts = [
        (json!({"user": "ada", "pin": "hunter2-pin"}), "hunter2-pin"),
        (json!({"user": "ada", "code": 48213}), "48213"),
        (
            json!({"user": "ada", "keys": ["ok", "sesame-key"]}),
            "sesame-key",
        ),
    ];
    for (args, _) in &attempts {
        let refused = broker.call(&token, "vault.unlock", args.clone()).await;
        assert_eq!(refused.status, 422, "{refused:?}");
    }
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    let timeline = broker
        .get(&format!("/v1/tasks/{task_id}/timeline"), Some(&ann))
        .await;
    let evidence = broker
        .get(&format!("/v1/tasks/{task_id}/evidence"), Some(&ann))
        .await;
    let entries = timeline.body["entries"].as_array().unwrap();
    let refusals: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "call.denied")
        .collect();
    assert_eq!(refusals.len(), 3, "{entries:?}");
    for refusal in &refusals {
        assert_eq!(refusal["detail"]["status"], 422, "{refusal}");
        assert!(
            refusal["detail"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{refusal}"
        );
    }
    for (_, secret) in &attempts {
        for (what, body) in [
            ("audit", &audit.body),
            ("timeline", &timeline.body),
            ("evidence", &evidence.body),
        ] {
            assert!(
                !body.to_string().contains(secret),
                "{what} holds {secret}: {body}"
            );
        }
    }
    assert_eq!(
        refusals[0]["detail"]["arguments"],
        json!({"user": "ada", "pin": "[writeOnly]"})
    );
    assert_eq!(
        refusals[2]["detail"]["arguments"],
        json!({"user": "ada", "keys": ["[writeOnly]", "[writeOnly]"]})
    );
}
