//! `GET /metrics`: OpenMetrics text for operators, behind the admin token or a
//! scrape-only token; bounded labels; no secrets.

use serde_json::json;

use crate::common::{ADMIN, POLICY, TestBroker};

const SCRAPE: &str = "scrape-only-token-0123456789";

async fn scrape(broker: &TestBroker, bearer: Option<&str>) -> (u16, String, String) {
    let mut request = broker.http.get(format!("{}/metrics", broker.url));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn metrics_broker() -> TestBroker {
    TestBroker::spawn_tuned(POLICY, |c| c.metrics_token = Some(SCRAPE.to_string())).await
}

#[tokio::test]
async fn metrics_answer_only_the_admin_token_or_the_scrape_token() {
    let broker = metrics_broker().await;
    let agent = broker.agent("bot").await;
    assert_eq!(scrape(&broker, None).await.0, 401);
    assert_eq!(scrape(&broker, Some(&agent)).await.0, 403);
    assert_eq!(scrape(&broker, Some("wrong-scrape-token")).await.0, 401);
    let (status, content_type, _) = scrape(&broker, Some(ADMIN)).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    let (status, content_type, _) = scrape(&broker, Some(SCRAPE)).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
}

#[tokio::test]
async fn metrics_count_calls_by_tool_and_outcome_with_bounded_labels_and_no_secrets() {
    let broker = metrics_broker().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;
    assert_eq!(
        broker
            .call(&token, "web.search", json!({"query": "x"}))
            .await
            .status,
        200
    );
    assert_eq!(broker.call(&token, "fs.read", json!({})).await.status, 403);
    // Invented names do not become series.
    for name in ["made.up.1", "made.up.2"] {
        assert_eq!(broker.call(&token, name, json!({})).await.status, 404);
    }
    let revoked = broker
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(revoked.status, 200);
    assert_eq!(
        broker.get("/v1/audit", Some("not-a-token")).await.status,
        401
    );

    let (status, _, admin_view) = scrape(&broker, Some(ADMIN)).await;
    assert_eq!(status, 200);
    assert!(admin_view.contains("leash_calls_total"));
    let (status, _, text) = scrape(&broker, Some(SCRAPE)).await;
    assert_eq!(status, 200);
    for line in [
        r#"leash_calls_total{tool="web.search",outcome="allowed"} 1"#,
        r#"leash_calls_total{tool="fs.read",outcome="capability_denied"} 1"#,
        r#"leash_calls_total{tool="unknown",outcome="unknown_tool"} 2"#,
        "leash_call_duration_seconds_count 1",
        "leash_audit_writable 1",
        "leash_feed_healthy 1",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    assert!(!text.contains("made.up"), "{text}");
    let revoked_ids: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("leash_revoked_ids "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(revoked_ids >= 1.0, "{text}");
    assert!(text.contains("leash_invalid_credentials_total"), "{text}");
    for secret in [token.as_str(), agent.as_str(), ADMIN, SCRAPE] {
        assert!(!text.contains(secret));
    }
}
