//! Credentials and kill switches, on an in-memory store and a fixed clock.

use leash_sdk::capability::attenuate;

use super::MAX_CREDENTIAL_TTL_SECONDS;
use crate::error::ApiError;
use crate::store::TaskState;
use crate::tasks::testkit::{Kit, notes_policy};
use crate::tokens::mint::Role;
use crate::tokens::verify::Principal;

async fn kit() -> Kit {
    Kit::new(&notes_policy("http://127.0.0.1:9")).await
}

#[tokio::test]
async fn a_minted_credential_names_its_subject_and_its_window_is_bounded() {
    let kit = kit().await;
    let text = kit
        .credentials
        .mint(Role::Agent, "bot", None)
        .await
        .unwrap();
    let verified = kit.present(&text).unwrap();
    assert!(matches!(&verified.principal, Principal::Agent(id) if id == "bot"));
    for ttl in [0, -1, MAX_CREDENTIAL_TTL_SECONDS + 1] {
        let refused = kit.credentials.mint(Role::Agent, "bot", Some(ttl)).await;
        assert!(matches!(refused, Err(ApiError::BadRequest(_))), "{ttl}");
    }
    kit.credentials
        .mint(Role::Approver, "ann", Some(MAX_CREDENTIAL_TTL_SECONDS))
        .await
        .unwrap();
}

#[tokio::test]
async fn cutting_off_an_agent_kills_its_credentials_and_ends_only_its_live_tasks() {
    let kit = kit().await;
    let credential = kit
        .credentials
        .mint(Role::Agent, "bot", None)
        .await
        .unwrap();
    let other = kit
        .credentials
        .mint(Role::Agent, "narrow", None)
        .await
        .unwrap();
    let (first, first_token) = kit.active_task("bot", &["notes.read"]).await;
    let (second, _) = kit.active_task("bot", &["notes.read"]).await;
    let (kept, kept_token) = kit.active_task("narrow", &["notes.read"]).await;
    kit.tasks
        .end(&second, TaskState::Completed, "done", "agent:bot")
        .await
        .unwrap();
    let ended = kit
        .credentials
        .revoke_agent("bot", "compromised", "approver:ann")
        .await
        .unwrap();
    assert_eq!(ended, 1, "only the live task is ended by the revoke");
    assert!(matches!(
        kit.present(&credential),
        Err(ApiError::TokenRevoked(_))
    ));
    assert!(matches!(
        kit.present(&first_token),
        Err(ApiError::TokenRevoked(_))
    ));
    let first = kit.store.get_task(&first).await.unwrap().unwrap();
    assert_eq!(
        (first.state, first.end_reason.as_deref()),
        (TaskState::Revoked, Some("compromised"))
    );
    assert_eq!(
        kit.store.get_task(&second).await.unwrap().unwrap().state,
        TaskState::Completed
    );
    // Another agent is untouched.
    kit.present(&other).unwrap();
    kit.present(&kept_token).unwrap();
    assert_eq!(
        kit.store.get_task(&kept).await.unwrap().unwrap().state,
        TaskState::Active
    );
}

#[tokio::test]
async fn revoking_an_approver_kills_every_credential_of_it() {
    let kit = kit().await;
    let one = kit
        .credentials
        .mint(Role::Approver, "ann", None)
        .await
        .unwrap();
    let two = kit
        .credentials
        .mint(Role::Approver, "ann", None)
        .await
        .unwrap();
    let bob = kit
        .credentials
        .mint(Role::Approver, "bob", None)
        .await
        .unwrap();
    assert_eq!(
        kit.credentials
            .revoke_approver("ann", "left")
            .await
            .unwrap(),
        2
    );
    for text in [&one, &two] {
        assert!(matches!(kit.present(text), Err(ApiError::TokenRevoked(_))));
    }
    kit.present(&bob).unwrap();
}

#[tokio::test]
async fn a_revoked_token_takes_its_attenuations_and_leaves_its_task_and_parent() {
    let kit = kit().await;
    let (task_id, token) = kit
        .active_task("bot", &["notes.read", "notes.search"])
        .await;
    let child = attenuate(&token, &["check if call(\"notes.read\")"]).unwrap();
    let grandchild = attenuate(&child, &["check if true"]).unwrap();
    let target = kit.credentials.target(&child, "token").unwrap();
    kit.credentials
        .revoke_token(&target, &task_id, "agent:bot")
        .await
        .unwrap();
    for text in [&child, &grandchild] {
        assert!(matches!(kit.present(text), Err(ApiError::TokenRevoked(_))));
    }
    kit.present(&token).unwrap();
    assert_eq!(
        kit.store.get_task(&task_id).await.unwrap().unwrap().state,
        TaskState::Active
    );
    // Revoking it again is fine and does not count twice.
    kit.credentials
        .revoke_token(&target, &task_id, "agent:bot")
        .await
        .unwrap();
}

#[tokio::test]
async fn one_task_may_revoke_only_so_many_tokens_one_by_one() {
    let kit = kit().await;
    let (task_id, token) = kit.active_task("bot", &["notes.read"]).await;
    let mut children = Vec::new();
    for i in 0..3 {
        let check = format!("check if {i} == {i}");
        let child = attenuate(&token, &[check.as_str()]).unwrap();
        children.push(kit.credentials.target(&child, "token").unwrap());
    }
    for child in &children[..2] {
        kit.credentials
            .revoke_token(child, &task_id, "agent:bot")
            .await
            .unwrap();
    }
    let third = kit
        .credentials
        .revoke_token(&children[2], &task_id, "agent:bot")
        .await;
    assert!(
        matches!(third, Err(ApiError::BudgetExhausted(_))),
        "{third:?}"
    );
    // An already revoked one is still answered (idempotent), past the cap.
    kit.credentials
        .revoke_token(&children[0], &task_id, "agent:bot")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_revocation_must_name_a_token_of_ours() {
    let kit = kit().await;
    let refused = kit.credentials.target("garbage", "credential");
    assert!(matches!(refused, Err(ApiError::BadRequest(why)) if why.starts_with("credential:")));
}
