//! The checked call: what reaches the upstream and what every refusal costs.

use serde_json::json;

use super::CallOutcome;
use crate::error::ApiError;
use crate::store::TaskState;
use crate::tasks::testkit::{Kit, notes_policy, recording_upstream};

async fn kit() -> (Kit, crate::tasks::testkit::Received) {
    let (url, received) = recording_upstream().await;
    (Kit::new(&notes_policy(&url)).await, received)
}

#[tokio::test]
async fn an_allowed_call_reaches_the_upstream_with_its_credential_and_a_narrowed_capability() {
    let (kit, received) = kit().await;
    let (task_id, token) = kit.active_task("bot", &["notes.search"]).await;
    let outcome = kit
        .calls
        .call_tool(
            kit.present(&token).unwrap(),
            "notes.search",
            json!({"query": "x"}),
            None,
        )
        .await
        .unwrap();
    let CallOutcome::Done(answer) = outcome else {
        panic!("not forwarded")
    };
    assert_eq!(
        answer.into_value().unwrap(),
        json!({"echo": {"query": "x"}})
    );
    let (headers, body) = received.lock().unwrap()[0].clone();
    assert_eq!(body, json!({"query": "x"}));
    assert_eq!(headers["authorization"], "Bearer upstream-secret");
    let capability = headers[leash_sdk::protocol::CAPABILITY_HEADER]
        .to_str()
        .unwrap();
    assert_ne!(
        capability, token,
        "the agent's own token never goes upstream"
    );
    let runtime = kit.tasks.runtime(&task_id).await.unwrap().unwrap();
    assert_eq!(runtime.calls(), 1);
}

#[tokio::test]
async fn unknown_and_malformed_tool_names_are_unknown_tool_and_cost_nothing() {
    let (kit, received) = kit().await;
    let (task_id, token) = kit.active_task("bot", &["notes.search"]).await;
    for name in ["notes.nothing", "not a name", ""] {
        let refused = kit
            .calls
            .call_tool(kit.present(&token).unwrap(), name, json!({}), None)
            .await;
        assert!(matches!(refused, Err(ApiError::UnknownTool(_))), "{name:?}");
    }
    assert!(received.lock().unwrap().is_empty());
    let runtime = kit.tasks.runtime(&task_id).await.unwrap().unwrap();
    assert_eq!(runtime.calls(), 0);
}

#[tokio::test]
async fn a_tool_outside_the_token_is_capability_denied() {
    let (kit, received) = kit().await;
    let (_, token) = kit.active_task("bot", &["notes.search"]).await;
    let refused = kit
        .calls
        .call_tool(kit.present(&token).unwrap(), "notes.read", json!({}), None)
        .await;
    assert!(
        matches!(refused, Err(ApiError::CapabilityDenied(_))),
        "{refused:?}"
    );
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn arguments_off_the_schema_are_invalid_and_give_their_slot_back() {
    let (kit, received) = kit().await;
    let (task_id, token) = kit.active_task("bot", &["notes.search"]).await;
    for args in [
        json!({"query": 7}),
        json!({"query": "x", "extra": 1}),
        json!({}),
    ] {
        let refused = kit
            .calls
            .call_tool(
                kit.present(&token).unwrap(),
                "notes.search",
                args.clone(),
                None,
            )
            .await;
        assert!(
            matches!(refused, Err(ApiError::InvalidArguments { .. })),
            "{args}: {refused:?}"
        );
    }
    let not_object = kit
        .calls
        .call_tool(
            kit.present(&token).unwrap(),
            "notes.search",
            json!([1]),
            None,
        )
        .await;
    assert!(matches!(not_object, Err(ApiError::BadRequest(_))));
    assert!(received.lock().unwrap().is_empty());
    let runtime = kit.tasks.runtime(&task_id).await.unwrap().unwrap();
    assert_eq!(runtime.calls(), 0, "refused calls do not count");
}

#[tokio::test]
async fn the_grants_call_budget_ends_at_max_calls() {
    let (kit, received) = kit().await;
    let (_, token) = kit.active_task("bot", &["notes.read"]).await;
    for _ in 0..3 {
        kit.calls
            .call_tool(kit.present(&token).unwrap(), "notes.read", json!({}), None)
            .await
            .unwrap();
    }
    let fourth = kit
        .calls
        .call_tool(kit.present(&token).unwrap(), "notes.read", json!({}), None)
        .await;
    assert!(
        matches!(fourth, Err(ApiError::BudgetExhausted(_))),
        "{fourth:?}"
    );
    assert_eq!(received.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn an_ended_or_expired_task_admits_no_call() {
    let (kit, received) = kit().await;
    let (task_id, token) = kit.active_task("bot", &["notes.read"]).await;
    kit.tasks
        .end(&task_id, TaskState::Completed, "done", "agent:bot")
        .await
        .unwrap();
    let refused = match kit.present(&token) {
        Ok(token) => kit
            .calls
            .call_tool(token, "notes.read", json!({}), None)
            .await
            .err(),
        Err(err) => Some(err),
    };
    assert!(
        matches!(
            refused,
            Some(ApiError::TokenRevoked(_) | ApiError::TaskInactive(_))
        ),
        "{refused:?}"
    );

    let (_, token) = kit.active_task("bot", &["notes.read"]).await;
    kit.clock.advance(std::time::Duration::from_secs(601));
    let expired = kit
        .calls
        .call_tool(kit.present(&token).unwrap(), "notes.read", json!({}), None)
        .await;
    assert!(
        matches!(expired, Err(ApiError::TokenExpired(_))),
        "{expired:?}"
    );
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_per_call_tool_files_an_approval_instead_of_calling() {
    let (kit, received) = kit().await;
    let (_, token) = kit.active_task("bot", &["notes.delete"]).await;
    let held = kit
        .calls
        .call_tool(
            kit.present(&token).unwrap(),
            "notes.delete",
            json!({"id": 1}),
            None,
        )
        .await
        .unwrap();
    let CallOutcome::PendingApproval(approval_id) = held else {
        panic!("called without approval")
    };
    assert!(crate::tasks::approvals::is_approval_id(&approval_id));
    assert!(received.lock().unwrap().is_empty());
    // Pending still: repeating with the id waits too, and calls nothing.
    let again = kit
        .calls
        .call_tool(
            kit.present(&token).unwrap(),
            "notes.delete",
            json!({"id": 1}),
            Some(&approval_id),
        )
        .await
        .unwrap();
    assert!(matches!(again, CallOutcome::PendingApproval(id) if id == approval_id));
    assert!(received.lock().unwrap().is_empty());
}

/// A resource URI a prefix check could not judge is refused before anything else.
#[test]
fn a_uri_that_could_slip_past_a_prefix_check_is_refused() {
    use super::check_uri;
    for fine in [
        "file:///docs/readme.md",
        "test://template/123/data",
        "file:///docs/{name}",
        "https://example.org/a/b?q=../x",
        "file:///docs/a..b/c.",
    ] {
        assert!(check_uri(fine).is_ok(), "{fine}");
    }
    for refused in [
        "",
        "file:///docs/../secret/keys.txt",
        "file:///docs/./../secret",
        "file:///docs/..",
        "file:///docs/%2e%2e/secret",
        "file:///docs/%2E%2E/secret",
        "file:///docs%2f..%2fsecret",
        "file:///docs/..\\secret",
        "file:///docs/a%5csecret",
        "file:///docs/a%00",
        "file:///docs/a\nb",
    ] {
        assert!(
            matches!(check_uri(refused), Err(ApiError::BadRequest(_))),
            "{refused:?}"
        );
    }
    let long = format!(
        "file:///docs/{}",
        "a".repeat(crate::upstream::mcp::MAX_URI_BYTES)
    );
    assert!(check_uri(&long).is_err());
}
