//! The task lifecycle's rules, on an in-memory store and a fixed clock.

use std::time::Duration;

use super::{OpenRequest, Opened};
use crate::error::ApiError;
use crate::store::{ApprovalState, TaskState};
use crate::tasks::testkit::{Kit, T0_MS, notes_policy};

/// What a refusal must be.
type Expect = fn(&ApiError) -> bool;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn kit() -> Kit {
    Kit::new(&notes_policy("http://127.0.0.1:9")).await
}

/// Opens with everything valid except what `change` alters.
async fn open_with(
    kit: &Kit,
    agent: &str,
    tools: &[&str],
    ttl_seconds: Option<i64>,
    purpose: &str,
    checks: &[&str],
) -> Result<Opened, ApiError> {
    let (tools, checks) = (strings(tools), strings(checks));
    kit.lifecycle
        .open(
            OpenRequest {
                agent,
                credential: None,
                purpose,
                tools: &tools,
                ttl_seconds,
                checks: &checks,
                user: None,
                user_group: None,
                audience: None,
            },
            || Ok(()),
        )
        .await
}

fn active(opened: Opened) -> (String, String, i64) {
    match opened {
        Opened::Active {
            task_id,
            token,
            expires_at_ms,
        } => (task_id, token, expires_at_ms),
        other => panic!("not active: {other:?}"),
    }
}

#[tokio::test]
async fn an_open_task_is_active_with_a_token_for_exactly_the_granted_tools() {
    let kit = kit().await;
    let opened = open_with(&kit, "bot", &["notes.*"], Some(60), "find notes", &[]).await;
    let (task_id, token, expires_at_ms) = active(opened.unwrap());
    assert_eq!(expires_at_ms, T0_MS + 60_000);
    let record = kit.lifecycle.load(&task_id).await.unwrap();
    assert_eq!(record.state, TaskState::Active);
    assert_eq!(
        record.tools,
        strings(&["notes.delete", "notes.read", "notes.search"])
    );
    assert_eq!(record.max_calls, Some(3));
    let verified = kit.present(&token).unwrap();
    assert_eq!(verified.tools.len(), 3);
    // At rest the token is sealed, never in clear.
    assert_ne!(record.token.as_deref(), Some(token.as_str()));
    let view = kit.lifecycle.view(&record, true).await.unwrap();
    assert_eq!(view.token.as_deref(), Some(token.as_str()));
    assert_eq!(
        kit.lifecycle.view(&record, false).await.unwrap().token,
        None
    );
}

#[tokio::test]
async fn the_window_defaults_to_the_grants_maximum_and_may_not_exceed_it() {
    let kit = kit().await;
    let (_, _, end) = active(
        open_with(&kit, "narrow", &["notes.read"], None, "p", &[])
            .await
            .unwrap(),
    );
    assert_eq!(end, T0_MS + 300_000);
    let above = open_with(&kit, "narrow", &["notes.read"], Some(301), "p", &[]).await;
    assert!(matches!(above, Err(ApiError::PolicyDenied(_))), "{above:?}");
    for ttl in [0, -5] {
        let bad = open_with(&kit, "narrow", &["notes.read"], Some(ttl), "p", &[]).await;
        assert!(
            matches!(bad, Err(ApiError::BadRequest(_))),
            "{ttl}: {bad:?}"
        );
    }
}

#[tokio::test]
async fn tools_must_exist_and_be_granted() {
    let kit = kit().await;
    let cases: [(&[&str], Expect); 6] = [
        (&["notes.nothing"], |e| {
            matches!(e, ApiError::UnknownTool(_))
        }),
        (&["notes.search"], |e| {
            matches!(e, ApiError::PolicyDenied(_))
        }),
        (&["web.*"], |e| matches!(e, ApiError::PolicyDenied(_))),
        (&["not a tool"], |e| matches!(e, ApiError::BadRequest(_))),
        (&[], |e| matches!(e, ApiError::BadRequest(_))),
        (&["notes.read", "notes.delete"], |e| {
            matches!(e, ApiError::PolicyDenied(_))
        }),
    ];
    for (tools, expected) in cases {
        let refused = open_with(&kit, "narrow", tools, None, "p", &[])
            .await
            .unwrap_err();
        assert!(expected(&refused), "{tools:?}: {refused:?}");
    }
    // A pattern takes only what the grant allows.
    let (task_id, _, _) = active(
        open_with(&kit, "narrow", &["notes.*"], None, "p", &[])
            .await
            .unwrap(),
    );
    let record = kit.lifecycle.load(&task_id).await.unwrap();
    assert_eq!(record.tools, strings(&["notes.read"]));
    // An agent without a grant gets nothing.
    let stranger = open_with(&kit, "stranger", &["notes.read"], None, "p", &[]).await;
    assert!(matches!(stranger, Err(ApiError::PolicyDenied(_))));
}

#[tokio::test]
async fn a_purpose_is_one_to_a_thousand_printable_characters() {
    let kit = kit().await;
    let long = "x".repeat(1001);
    for purpose in ["", "   ", "bell\u{7}", long.as_str()] {
        let refused = open_with(&kit, "bot", &["notes.read"], None, purpose, &[]).await;
        assert!(
            matches!(refused, Err(ApiError::BadRequest(_))),
            "{purpose:?}"
        );
    }
    let exactly = "é".repeat(1000);
    open_with(&kit, "bot", &["notes.read"], None, &exactly, &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn an_agents_checks_are_few_short_and_valid_and_they_narrow_the_token() {
    let kit = kit().await;
    let many: Vec<&str> = vec!["check if true"; 33];
    let long = format!("check if true or \"{}\" == \"\"", "a".repeat(4096));
    for checks in [many, vec!["not datalog"], vec![long.as_str()]] {
        let refused = open_with(&kit, "bot", &["notes.read"], None, "p", &checks).await;
        assert!(
            matches!(refused, Err(ApiError::BadRequest(_))),
            "{refused:?}"
        );
    }
    let (_, token, _) = active(
        open_with(
            &kit,
            "bot",
            &["notes.*"],
            None,
            "p",
            &[r#"check if call("notes.read")"#],
        )
        .await
        .unwrap(),
    );
    let search = kit
        .calls
        .call_tool(
            kit.present(&token).unwrap(),
            "notes.search",
            serde_json::json!({"query": "q"}),
            None,
        )
        .await;
    assert!(
        matches!(search, Err(ApiError::CapabilityDenied(_))),
        "{search:?}"
    );
}

#[tokio::test]
async fn a_grant_with_issuance_approval_opens_a_pending_task_without_a_token() {
    let kit = kit().await;
    let opened = open_with(&kit, "careful", &["notes.read"], Some(120), "p", &[])
        .await
        .unwrap();
    let Opened::Pending {
        task_id,
        approval_id,
    } = opened
    else {
        panic!("issued without approval")
    };
    let record = kit.lifecycle.load(&task_id).await.unwrap();
    assert_eq!(record.state, TaskState::PendingApproval);
    assert_eq!(record.token, None);
    // Approval activates it with a window that starts at the decision.
    kit.clock.advance(Duration::from_secs(30));
    let decided = kit
        .approvals
        .decide(&approval_id, true, "approver:ann", None)
        .await
        .unwrap();
    assert_eq!(decided.state, ApprovalState::Approved);
    let record = kit.lifecycle.load(&task_id).await.unwrap();
    assert_eq!(record.state, TaskState::Active);
    assert_eq!(record.expires_at_ms, T0_MS + 30_000 + 120_000);
    let view = kit.lifecycle.view(&record, true).await.unwrap();
    kit.present(view.token.as_deref().unwrap()).unwrap();
}

#[tokio::test]
async fn a_task_whose_agent_lost_its_authority_meanwhile_is_ended_not_kept() {
    let kit = kit().await;
    let tools = strings(&["notes.read"]);
    let refused = kit
        .lifecycle
        .open(
            OpenRequest {
                agent: "bot",
                credential: None,
                purpose: "p",
                tools: &tools,
                ttl_seconds: None,
                checks: &[],
                user: None,
                user_group: None,
                audience: None,
            },
            || Err(ApiError::TokenRevoked("the agent was revoked".into())),
        )
        .await;
    assert!(matches!(refused, Err(ApiError::TokenRevoked(_))));
    let tasks = kit
        .store
        .list_tasks(&crate::store::TaskQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, TaskState::Revoked);
}

#[tokio::test]
async fn a_renewal_gives_a_new_token_and_never_shortens_the_window() {
    let kit = kit().await;
    let (task_id, first, first_end) = active(
        open_with(&kit, "bot", &["notes.read"], Some(600), "p", &[])
            .await
            .unwrap(),
    );
    kit.clock.advance(Duration::from_secs(10));
    let (_, second, second_end) = active(kit.lifecycle.renew("bot", &task_id, 60).await.unwrap());
    assert_ne!(first, second);
    assert_eq!(second_end, first_end, "a shorter renewal keeps the window");
    kit.present(&first).unwrap();
    kit.present(&second).unwrap();
    kit.clock.advance(Duration::from_secs(20));
    let (_, _, third_end) = active(kit.lifecycle.renew("bot", &task_id, 600).await.unwrap());
    assert_eq!(third_end, T0_MS + 30_000 + 600_000);
}

#[tokio::test]
async fn only_the_owner_renews_and_only_an_active_task() {
    let kit = kit().await;
    let (task_id, _, _) = active(
        open_with(&kit, "bot", &["notes.read"], None, "p", &[])
            .await
            .unwrap(),
    );
    let foreign = kit.lifecycle.renew("narrow", &task_id, 60).await;
    assert!(matches!(foreign, Err(ApiError::NotFound(_))));
    let too_long = kit.lifecycle.renew("bot", &task_id, 601).await;
    assert!(matches!(too_long, Err(ApiError::PolicyDenied(_))));
    kit.lifecycle
        .end(&task_id, TaskState::Completed, "done", "agent:bot")
        .await
        .unwrap();
    let ended = kit.lifecycle.renew("bot", &task_id, 60).await;
    assert!(matches!(ended, Err(ApiError::TaskInactive(_))), "{ended:?}");
}

#[tokio::test]
async fn a_renewal_of_an_approval_gated_grant_waits_for_an_approver() {
    let kit = kit().await;
    let Opened::Pending {
        task_id,
        approval_id,
    } = open_with(&kit, "careful", &["notes.read"], None, "p", &[])
        .await
        .unwrap()
    else {
        panic!("not pending")
    };
    kit.approvals
        .decide(&approval_id, true, "approver:ann", None)
        .await
        .unwrap();
    let renewal = kit.lifecycle.renew("careful", &task_id, 60).await.unwrap();
    assert!(matches!(renewal, Opened::Pending { .. }), "{renewal:?}");
    assert_eq!(
        kit.lifecycle.load(&task_id).await.unwrap().state,
        TaskState::Active
    );
}

#[tokio::test]
async fn ending_twice_the_same_way_is_fine_and_otherwise_a_conflict() {
    let kit = kit().await;
    let (task_id, _, _) = active(
        open_with(&kit, "bot", &["notes.read"], None, "p", &[])
            .await
            .unwrap(),
    );
    for _ in 0..2 {
        kit.lifecycle
            .end(&task_id, TaskState::Completed, "done", "agent:bot")
            .await
            .unwrap();
    }
    let revoke = kit
        .lifecycle
        .end(&task_id, TaskState::Revoked, "stop", "approver:ann")
        .await;
    assert!(matches!(revoke, Err(ApiError::Conflict(_))));
    let unknown = kit
        .lifecycle
        .end(
            "tsk_00000000000000000000000000000000",
            TaskState::Revoked,
            "x",
            "admin",
        )
        .await;
    assert!(matches!(unknown, Err(ApiError::NotFound(_))));
}
