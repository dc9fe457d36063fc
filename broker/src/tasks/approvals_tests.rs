//! Approvals: bound, single use, final, expiring, capped per agent.

use std::time::Duration;

use super::*;
use crate::tasks::calls::CallOutcome;
use crate::tasks::testkit::{Kit, notes_policy};

#[test]
fn args_hash_ignores_key_order_but_not_values() {
    let a: Value = serde_json::from_str(r#"{"b":1,"a":"x"}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a":"x","b":1}"#).unwrap();
    let c: Value = serde_json::from_str(r#"{"a":"x","b":2}"#).unwrap();
    assert_eq!(args_hash(&a), args_hash(&b));
    assert_ne!(args_hash(&a), args_hash(&c));
    assert!(is_approval_id(&format!("apr_{}", "0".repeat(32))));
    assert!(!is_approval_id("apr_x"));
}

/// A task of `bot` with a call approval of `notes.delete {"id": 1}` filed.
async fn filed_call_approval(kit: &Kit) -> (String, String) {
    let (task_id, token) = kit.active_task("bot", &["notes.delete"]).await;
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
    let CallOutcome::PendingApproval(id) = held else {
        panic!("not held")
    };
    (task_id, id)
}

#[tokio::test]
async fn an_approved_call_is_spent_once_and_only_for_its_task_tool_and_arguments() {
    let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
    let (task_id, id) = filed_call_approval(&kit).await;
    let decided = kit
        .approvals
        .decide(&id, true, "approver:ann", Some("fine"))
        .await
        .unwrap();
    assert_eq!(decided.state, ApprovalState::Approved);
    assert_eq!(decided.decided_by.as_deref(), Some("approver:ann"));
    for (task, tool, args) in [
        ("tsk_other", "notes.delete", json!({"id": 1})),
        (task_id.as_str(), "notes.read", json!({"id": 1})),
        (task_id.as_str(), "notes.delete", json!({"id": 2})),
    ] {
        let refused = kit.approvals.spend_for_call(&id, task, tool, &args).await;
        assert!(
            matches!(refused, Err(ApiError::Forbidden(_))),
            "{task} {tool} {args}"
        );
    }
    let granted = kit
        .approvals
        .spend_for_call(&id, &task_id, "notes.delete", &json!({"id": 1}))
        .await
        .unwrap();
    assert!(matches!(granted, CallApproval::Granted));
    let replay = kit
        .approvals
        .spend_for_call(&id, &task_id, "notes.delete", &json!({"id": 1}))
        .await;
    assert!(matches!(replay, Err(ApiError::Forbidden(_))));
}

#[tokio::test]
async fn a_decision_is_final() {
    let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
    let (task_id, id) = filed_call_approval(&kit).await;
    kit.approvals
        .decide(&id, false, "approver:ann", Some("no"))
        .await
        .unwrap();
    let again = kit.approvals.decide(&id, true, "approver:bob", None).await;
    assert!(matches!(again, Err(ApiError::Conflict(_))));
    let spent = kit
        .approvals
        .spend_for_call(&id, &task_id, "notes.delete", &json!({"id": 1}))
        .await;
    assert!(matches!(spent, Err(ApiError::PolicyDenied(why)) if why.contains("no")));
}

#[tokio::test]
async fn an_undecided_approval_expires_as_denied() {
    let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
    let (task_id, id) = filed_call_approval(&kit).await;
    assert_eq!(kit.approvals.expire_due().await.unwrap(), 0);
    kit.clock
        .advance(kit.policy.approvals.expire_after + Duration::from_millis(1));
    assert_eq!(kit.approvals.expire_due().await.unwrap(), 1);
    let late = kit.approvals.decide(&id, true, "approver:ann", None).await;
    assert!(matches!(late, Err(ApiError::Conflict(_))));
    let spent = kit
        .approvals
        .spend_for_call(&id, &task_id, "notes.delete", &json!({"id": 1}))
        .await;
    assert!(matches!(spent, Err(ApiError::PolicyDenied(_))));
}

#[tokio::test]
async fn one_agent_cannot_keep_more_than_its_share_of_approvers_waiting() {
    let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
    for _ in 0..3 {
        filed_call_approval(&kit).await;
    }
    let refused = kit.approvals.check_pending_cap("bot").await;
    assert!(matches!(refused, Err(ApiError::BudgetExhausted(_))));
    kit.approvals.check_pending_cap("narrow").await.unwrap();
}
