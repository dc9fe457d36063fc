//! The guarantee: once revoke/complete answers, no call with the task's tokens is admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::TestBroker;

/// Callers hammer a task while it is revoked; every call that *starts* after the revoke
/// response must be refused, over many trials.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_calls_admitted_after_the_revoke_response() {
    const TRIALS: usize = 30;
    const CALLERS: usize = 8;
    let broker = Arc::new(TestBroker::spawn().await);
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let mut admitted_after = 0;
    let mut refused_after = 0;
    let mut admitted_before = 0;
    for trial in 0..TRIALS {
        let (task_id, token) = broker.task(&agent, &["web.search"]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut callers = Vec::new();
        for _ in 0..CALLERS {
            let broker = broker.clone();
            let token = token.clone();
            let stop = stop.clone();
            callers.push(tokio::spawn(async move {
                let mut log = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let reply = broker
                        .call(&token, "web.search", json!({"query": "x"}))
                        .await;
                    log.push((started, reply.status, reply.code().to_string()));
                }
                log
            }));
        }
        tokio::time::sleep(Duration::from_millis(20 + (trial as u64 % 5) * 5)).await;
        // Half the trials revoke, half complete.
        let reply = if trial % 2 == 0 {
            broker
                .post(
                    &format!("/v1/tasks/{task_id}/revoke"),
                    Some(&approver),
                    json!({}),
                )
                .await
        } else {
            broker
                .post(
                    &format!("/v1/tasks/{task_id}/complete"),
                    Some(&agent),
                    json!({}),
                )
                .await
        };
        let answered = Instant::now();
        assert_eq!(reply.status, 200, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
        stop.store(true, Ordering::SeqCst);
        for caller in callers {
            for (started, status, code) in caller.await.unwrap() {
                if started >= answered {
                    if status == 200 {
                        admitted_after += 1;
                    } else {
                        assert!(
                            matches!(code.as_str(), "token_revoked" | "task_inactive"),
                            "{status} {code}"
                        );
                        refused_after += 1;
                    }
                } else if status == 200 {
                    admitted_before += 1;
                }
            }
        }
    }
    println!(
        "concurrent revocation: {TRIALS} trials x {CALLERS} callers: {admitted_before} admitted before the response, \
         {refused_after} refused after, {admitted_after} admitted after"
    );
    assert!(
        admitted_before > 0 && refused_after > 0,
        "the test must overlap calls and revokes"
    );
    assert_eq!(admitted_after, 0);
}

/// The feed's long-poll answers as soon as something is revoked, and only then.
#[tokio::test]
async fn the_revocation_feed_long_poll_wakes_on_revocation() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, _) = broker.task(&agent, &["web.search"]).await;
    let url = format!("{}/v1/revocations?after=0&wait=10", broker.url);
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        (body, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered with nothing revoked"
    );
    let revoked_at = Instant::now();
    broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(crate::common::ADMIN),
            json!({}),
        )
        .await;
    let (body, waited) = poll.await.unwrap();
    assert_eq!(body["revocations"][0]["task_id"], json!(task_id), "{body}");
    assert_eq!(body["revocations"][0]["reason"], "revoked");
    assert!(
        waited >= Duration::from_millis(300) && revoked_at.elapsed() < Duration::from_secs(2),
        "{waited:?}"
    );
    // An empty long-poll ends at its deadline; too long a wait is refused.
    let started = Instant::now();
    let next = body["next"].as_i64().unwrap();
    let empty = broker
        .get(&format!("/v1/revocations?after={next}&wait=1"), None)
        .await;
    assert_eq!(empty.body["revocations"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let too_long = broker.get("/v1/revocations?wait=31", None).await;
    assert_eq!((too_long.status, too_long.code()), (400, "bad_request"));
}

/// `token` with one more (harmless) block, as a holder appends offline.
async fn child_of(broker: &TestBroker, token: &str, n: usize) -> String {
    biscuit_auth::Biscuit::from_base64(token, broker.public_key().await)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(format!("check if true || {n} == {n}"))
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap()
}

#[tokio::test]
async fn revoking_tokens_one_by_one_is_capped_per_task() {
    let broker = crate::common::TestBroker::spawn_tuned(crate::common::POLICY, |config| {
        config.max_revoked_tokens_per_task = 3;
    })
    .await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    let mut children = Vec::new();
    for n in 0..4 {
        children.push(child_of(&broker, &token, n).await);
    }
    for child in &children[..3] {
        let reply = broker
            .post("/v1/tokens/revoke", Some(child), json!({"token": child}))
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let over = broker
        .post(
            "/v1/tokens/revoke",
            Some(&children[3]),
            json!({"token": children[3]}),
        )
        .await;
    assert_eq!(
        (over.status, over.code()),
        (429, "budget_exhausted"),
        "{over:?}"
    );
    assert!(
        over.message().contains("revoke or complete the task"),
        "{over:?}"
    );
    // Asking again for an id already revoked is still fine, and the task can always end.
    let again = broker
        .post(
            "/v1/tokens/revoke",
            Some(&agent),
            json!({"token": children[0]}),
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    let ended = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(ended.status, 200, "{ended:?}");
    assert_eq!(
        broker
            .call(&children[3], "web.search", json!({"query": "x"}))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn revoking_tokens_is_rate_limited_per_agent() {
    let broker = crate::common::TestBroker::spawn_tuned(crate::common::POLICY, |config| {
        config.rate_limit = 2;
        config.rate_burst = 2;
    })
    .await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (_, token) = broker.task(&agent, &["web.search"]).await;
    let mut statuses = Vec::new();
    for n in 0..4 {
        let child = child_of(&broker, &token, n).await;
        let reply = broker
            .post("/v1/tokens/revoke", Some(&child), json!({"token": child}))
            .await;
        statuses.push(reply.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Approvers are not limited: they are the kill switch.
    let child = child_of(&broker, &token, 9).await;
    let reply = broker
        .post(
            "/v1/tokens/revoke",
            Some(&approver),
            json!({"token": child}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn revoked_ids_are_forgotten_after_their_window_and_stay_refused() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    let child = child_of(&broker, &token, 1).await;
    let revoked = broker
        .post("/v1/tokens/revoke", Some(&child), json!({"token": child}))
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let id = revoked.body["revocation_id"].as_str().unwrap().to_string();
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    let feed = broker.get("/v1/revocations?after=0", None).await;
    let entry = feed.body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["revocation_id"] == id.as_str())
        .cloned()
        .expect("on the feed");
    assert_eq!(
        entry["expires_at"], shown.body["expires_at"],
        "the task's window"
    );
    // Within the window and the margin, the id is kept.
    let (from_feed, _) = leash_broker::app::prune_revocations(&broker.state)
        .await
        .unwrap();
    assert_eq!(from_feed, 0);
    assert!(broker.state.revoked.contains(&id));
    // Past the task's window (600 s) and the 5-minute margin: forgotten in memory; the
    // feed keeps it a day longer, for verifiers that start late.
    broker.state.clock.advance(Duration::from_secs(600 + 301));
    let (from_feed, from_memory) = leash_broker::app::prune_revocations(&broker.state)
        .await
        .unwrap();
    assert_eq!(from_feed, 0);
    assert!(from_memory >= 1, "{from_memory}");
    assert!(!broker.state.revoked.contains(&id));
    let listed = |feed: &crate::common::Reply| {
        feed.body["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["revocation_id"] == id.as_str())
    };
    assert!(listed(&broker.get("/v1/revocations?after=0", None).await));
    broker.state.clock.advance(Duration::from_secs(24 * 3600));
    let (from_feed, _) = leash_broker::app::prune_revocations(&broker.state)
        .await
        .unwrap();
    assert!(from_feed >= 1, "{from_feed}");
    let feed = broker.get("/v1/revocations?after=0", None).await;
    assert!(!listed(&feed), "{feed:?}");
    // The forgotten token is still refused: its own window is over.
    for dead in [&child, &token] {
        let reply = broker.call(dead, "web.search", json!({"query": "x"})).await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "token_expired"),
            "{reply:?}"
        );
    }
}

#[tokio::test]
async fn a_renewal_never_shortens_a_window_so_no_id_is_forgotten_early() {
    let broker = TestBroker::spawn().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    let before = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&agent))
        .await;
    // Asking for a shorter window keeps the longer one: the first token still lives
    // until then, and so must its revocation id.
    let renewed = broker
        .post(
            &format!("/v1/tasks/{task_id}/renew"),
            Some(&agent),
            json!({"ttl_seconds": 1}),
        )
        .await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    assert_eq!(
        renewed.body["expires_at"], before.body["expires_at"],
        "{renewed:?}"
    );
    let completed = broker
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&agent),
            json!({}),
        )
        .await;
    assert_eq!(completed.status, 200);
    let feed = broker.get("/v1/revocations?after=0", None).await;
    for entry in feed.body["revocations"].as_array().unwrap() {
        if entry["task_id"] == task_id.as_str() {
            assert_eq!(entry["expires_at"], before.body["expires_at"], "{entry:?}");
        }
    }
    // Two seconds on (the short window would be over): nothing is forgotten.
    broker.state.clock.advance(Duration::from_secs(2 + 301));
    leash_broker::app::prune_revocations(&broker.state)
        .await
        .unwrap();
    let first_id = hex::encode(
        &biscuit_auth::UnverifiedBiscuit::from_base64(&token)
            .unwrap()
            .revocation_identifiers()[0],
    );
    assert!(broker.state.revoked.contains(&first_id));
}
