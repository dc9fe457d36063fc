//! Human approval: before a task is issued, before one call of a `per_call` tool, and
//! before a renewal of a grant that needs approval.
//!
//! Every decision is committed in the store before it is answered, audited with the
//! approver's id and note, and published as `approval.decided`. An undecided approval
//! counts as denied once `[approvals] expire_after_seconds` has passed. A call approval
//! is single use and bound to its task, its tool and a hash of the canonical arguments.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::audit::log::AuditEvent;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::ids::random_hex;
use crate::store::{
    Activation, ApprovalKind, ApprovalRecord, ApprovalState, Decided, TaskRecord, TaskState,
};
use crate::tasks::issue::issue;

/// Prefix of approval ids.
pub const APPROVAL_PREFIX: &str = "apr_";

/// Whether `id` has the exact shape of an approval id.
pub fn is_approval_id(id: &str) -> bool {
    id.strip_prefix(APPROVAL_PREFIX).is_some_and(|rest| {
        rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// SHA-256 of the canonical JSON of the arguments (object keys sorted, no spaces).
pub fn args_hash(args: &Value) -> String {
    // serde_json's map is ordered by key, so `to_string` is canonical for our purpose.
    hex::encode(Sha256::digest(args.to_string().as_bytes()))
}

/// What a per-call approval check concluded.
pub enum CallApproval {
    /// Approved and now spent: forward the call.
    Granted,
    /// Still waiting for a human.
    Pending(String),
}

/// The approval as the API shows it.
pub fn view(a: &ApprovalRecord) -> Value {
    let mut out = json!({
        "approval_id": a.approval_id,
        "task_id": (!a.task_id.is_empty()).then_some(&a.task_id),
        "agent": a.agent,
        "kind": a.kind.as_str(),
        "purpose": a.purpose,
        "tools": a.tools,
        "state": a.state.as_str(),
        "requested_at": rfc3339(a.requested_at_ms),
        "expires_at": rfc3339(a.expires_at_ms),
    });
    if let Some(tool) = &a.call_tool {
        out["call"] = json!({ "tool": tool, "arguments": a.call_args });
    }
    if let Some(ttl) = a.ttl_ms {
        out["ttl_seconds"] = json!(ttl / 1000);
    }
    if let Some(at) = a.decided_at_ms {
        out["decided_at"] = json!(rfc3339(at));
        out["decided_by"] = json!(a.decided_by);
        out["note"] = json!(a.note);
    }
    out
}

/// A new pending approval, due to expire after `[approvals] expire_after_seconds`.
fn pending(
    state: &AppState,
    kind: ApprovalKind,
    task_id: &str,
    agent: String,
    purpose: String,
    tools: Vec<String>,
) -> ApprovalRecord {
    let now = state.clock.now_ms();
    ApprovalRecord {
        approval_id: format!("{APPROVAL_PREFIX}{}", random_hex(16)),
        kind,
        task_id: task_id.to_string(),
        agent,
        purpose,
        tools,
        call_tool: None,
        call_args: None,
        args_hash: None,
        ttl_ms: None,
        state: ApprovalState::Pending,
        requested_at_ms: now,
        expires_at_ms: now + state.policy.approvals.expire_after.as_millis() as i64,
        decided_at_ms: None,
        decided_by: None,
        note: None,
    }
}

/// Stores a pending approval, audits its request by `actor` and tells approvers.
async fn file(
    state: &AppState,
    approval: ApprovalRecord,
    actor: String,
    detail: Value,
) -> Result<ApprovalRecord, ApiError> {
    state
        .store
        .insert_approval(&approval)
        .await
        .map_err(ApiError::internal)?;
    let task_id = (!approval.task_id.is_empty()).then(|| approval.task_id.clone());
    state
        .audit
        .record(AuditEvent {
            kind: "approval.requested",
            actor,
            task_id: task_id.clone(),
            detail,
        })
        .await;
    state
        .events
        .publish("approval.requested", task_id.as_deref(), view(&approval));
    Ok(approval)
}

/// Refuses (429) an agent that already has as many undecided approvals as
/// `max_pending_approvals_per_agent` allows, so one agent cannot bury the others'
/// requests. Asked before anything is filed or created.
pub async fn check_pending_cap(state: &AppState, agent: &str) -> Result<(), ApiError> {
    let cap = state.config.max_pending_approvals_per_agent;
    let pending = state
        .store
        .pending_approvals_of(agent)
        .await
        .map_err(ApiError::internal)?;
    if pending >= cap {
        return Err(ApiError::BudgetExhausted(format!(
            "agent {agent:?} already has {pending} requests waiting for an approver (at most {cap})"
        )));
    }
    Ok(())
}

/// Files a new pending approval for a task (issuance, a call, a renewal) and tells approvers.
pub async fn request(
    state: &AppState,
    kind: ApprovalKind,
    task: &TaskRecord,
    call: Option<(&str, &Value)>,
    ttl_ms: Option<i64>,
) -> Result<ApprovalRecord, ApiError> {
    let mut approval = pending(
        state,
        kind,
        &task.task_id,
        task.agent.clone(),
        task.purpose.clone(),
        task.tools.clone(),
    );
    approval.call_tool = call.map(|(tool, _)| tool.to_string());
    approval.call_args = call.map(|(_, args)| args.clone());
    approval.args_hash = call.map(|(_, args)| args_hash(args));
    approval.ttl_ms = ttl_ms;
    let detail = json!({ "approval_id": approval.approval_id, "kind": kind.as_str(), "tool": approval.call_tool, "args_hash": approval.args_hash });
    file(state, approval, format!("agent:{}", task.agent), detail).await
}

/// Files an approval for a changed upstream tool definition. It names no task: the
/// tool is withheld from everyone until it is decided.
pub async fn request_definition(
    state: &AppState,
    server: &str,
    tool: &str,
    definition: &Value,
    hash: &str,
) -> Result<ApprovalRecord, ApiError> {
    let purpose = format!("the upstream definition of {tool} changed; accept the new one?");
    let mut approval = pending(
        state,
        ApprovalKind::Definition,
        "",
        format!("mcp:{server}"),
        purpose,
        vec![tool.to_string()],
    );
    approval.call_tool = Some(tool.to_string());
    approval.call_args = Some(definition.clone());
    approval.args_hash = Some(hash.to_string());
    let detail = json!({ "approval_id": approval.approval_id, "kind": "definition", "tool": tool, "definition_hash": hash });
    file(state, approval, format!("mcp:{server}"), detail).await
}

/// Approves or denies a pending approval. 404 if unknown, 409 if already decided or
/// expired, or if its task ended before the decision.
pub async fn decide(
    state: &AppState,
    approval_id: &str,
    approve: bool,
    actor: &str,
    note: Option<&str>,
) -> Result<ApprovalRecord, ApiError> {
    let approval = load(state, approval_id).await?;
    let now = state.clock.now_ms();
    if approval.state == ApprovalState::Pending && approval.expires_at_ms <= now {
        expire(state, &approval).await?;
        return Err(ApiError::Conflict(format!(
            "approval {approval_id} expired undecided (counts as denied)"
        )));
    }
    if approval.state != ApprovalState::Pending {
        return Err(ApiError::Conflict(format!(
            "approval {approval_id} is already {}",
            approval.state.as_str()
        )));
    }
    let target = if approve {
        ApprovalState::Approved
    } else {
        ApprovalState::Denied
    };
    let activation = if approve {
        activation_for(state, &approval).await?
    } else {
        None
    };
    let decided = match &activation {
        Some(activation) => {
            state
                .tasks
                .apply_approval(&approval, actor, note, activation)
                .await?
        }
        None => state
            .store
            .decide_approval(approval_id, target, actor, note, now, None)
            .await
            .map_err(ApiError::internal)?,
    };
    match decided {
        Decided::Done => {}
        Decided::AlreadyDecided(current) => {
            return Err(ApiError::Conflict(format!(
                "approval {approval_id} is already {}",
                current.as_str()
            )));
        }
        Decided::TaskNotPending => {
            let reason = "its task ended before the decision";
            state
                .store
                .decide_approval(
                    approval_id,
                    ApprovalState::Denied,
                    "broker",
                    Some(reason),
                    now,
                    None,
                )
                .await
                .map_err(ApiError::internal)?;
            return Err(ApiError::Conflict(format!(
                "approval {approval_id} cannot be approved: {reason}"
            )));
        }
    }
    if approve
        && approval.kind == ApprovalKind::Definition
        && let (Some(tool), Some(hash)) = (&approval.call_tool, &approval.args_hash)
    {
        crate::upstream::pins::accept(state, tool, hash).await?;
    }
    if !approve && approval.kind == ApprovalKind::Issuance {
        state
            .tasks
            .end(
                &approval.task_id,
                TaskState::Denied,
                note.unwrap_or("denied by an approver"),
                actor,
            )
            .await?;
    }
    let decided = load(state, approval_id).await?;
    state
        .audit
        .record(AuditEvent {
            kind: if approve { "approval.approved" } else { "approval.denied" },
            actor: actor.to_string(),
            task_id: Some(approval.task_id.clone()),
            detail: json!({ "approval_id": approval_id, "kind": approval.kind.as_str(), "note": note }),
        })
        .await;
    state
        .events
        .publish("approval.decided", Some(&approval.task_id), view(&decided));
    Ok(decided)
}

/// The token an approved issuance or renewal activates.
async fn activation_for(
    state: &AppState,
    approval: &ApprovalRecord,
) -> Result<Option<Activation>, ApiError> {
    if matches!(approval.kind, ApprovalKind::Call | ApprovalKind::Definition) {
        return Ok(None);
    }
    let task = state
        .store
        .get_task(&approval.task_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no task {}", approval.task_id)))?;
    let grant = state.policy.grant(&task.agent).cloned().ok_or_else(|| {
        ApiError::PolicyDenied(format!(
            "the policy no longer grants agent {:?}",
            task.agent
        ))
    })?;
    let ttl_ms = approval.ttl_ms.unwrap_or(grant.max_ttl.as_millis() as i64);
    let issued = issue(
        state,
        &task.task_id,
        &grant,
        &task.tools,
        &task.checks,
        ttl_ms,
        // A pending task's stored window is only a placeholder; a renewal keeps its own.
        (approval.kind == ApprovalKind::Renewal).then_some(task.expires_at_ms),
    )?;
    Ok(Some(issued.activation(&task.task_id, &state.sealer)))
}

async fn load(state: &AppState, approval_id: &str) -> Result<ApprovalRecord, ApiError> {
    if !is_approval_id(approval_id) {
        return Err(ApiError::BadRequest(format!(
            "{approval_id:?} is not an approval id (apr_ and 32 hex digits)"
        )));
    }
    state
        .store
        .get_approval(approval_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no approval {approval_id}")))
}

/// Marks an undecided approval expired (denied); an issuance's task is denied with it.
/// Safe to race (sweeper vs a late decision): whoever sees the approval expired makes
/// sure the task is denied before answering; only the one that expired it audits.
async fn expire(state: &AppState, approval: &ApprovalRecord) -> Result<(), ApiError> {
    let now = state.clock.now_ms();
    let reason = "nobody decided in time";
    let decided = state
        .store
        .decide_approval(
            &approval.approval_id,
            ApprovalState::Expired,
            "broker",
            Some(reason),
            now,
            None,
        )
        .await
        .map_err(ApiError::internal)?;
    let expired_here = decided == Decided::Done;
    if !expired_here && decided != Decided::AlreadyDecided(ApprovalState::Expired) {
        return Ok(());
    }
    if approval.kind == ApprovalKind::Issuance {
        state
            .tasks
            .end(
                &approval.task_id,
                TaskState::Denied,
                "approval expired",
                "broker",
            )
            .await?;
    }
    if !expired_here {
        return Ok(());
    }
    state
        .audit
        .record(AuditEvent {
            kind: "approval.expired",
            actor: "broker".into(),
            task_id: Some(approval.task_id.clone()),
            detail: json!({ "approval_id": approval.approval_id, "kind": approval.kind.as_str() }),
        })
        .await;
    if let Ok(Some(now_state)) = state.store.get_approval(&approval.approval_id).await {
        state.events.publish(
            "approval.decided",
            Some(&approval.task_id),
            view(&now_state),
        );
    }
    Ok(())
}

/// Expires every approval whose time ran out. Returns how many.
pub async fn expire_due(state: &AppState) -> Result<usize, ApiError> {
    let due = state
        .store
        .due_approvals(state.clock.now_ms())
        .await
        .map_err(ApiError::internal)?;
    for approval in &due {
        expire(state, approval).await?;
    }
    Ok(due.len())
}

/// Checks the `Leash-Approval` of a repeated call: it must be this task's approval of
/// this tool with these exact arguments, approved and unused; it is spent here.
pub async fn spend_for_call(
    state: &AppState,
    approval_id: &str,
    task_id: &str,
    tool: &str,
    args: &Value,
) -> Result<CallApproval, ApiError> {
    let approval = match load(state, approval_id).await {
        Ok(a) => a,
        Err(ApiError::NotFound(_) | ApiError::BadRequest(_)) => {
            return Err(ApiError::Forbidden(format!(
                "Leash-Approval {approval_id:?} is not a known approval"
            )));
        }
        Err(other) => return Err(other),
    };
    let bound = approval.kind == ApprovalKind::Call
        && approval.task_id == task_id
        && approval.call_tool.as_deref() == Some(tool)
        && approval.args_hash.as_deref() == Some(args_hash(args).as_str());
    if !bound {
        return Err(ApiError::Forbidden(format!(
            "approval {approval_id} was given for another task, tool or arguments"
        )));
    }
    match approval.state {
        ApprovalState::Pending if approval.expires_at_ms <= state.clock.now_ms() => {
            expire(state, &approval).await?;
            Err(ApiError::PolicyDenied(format!(
                "approval {approval_id} expired undecided"
            )))
        }
        ApprovalState::Pending => Ok(CallApproval::Pending(approval.approval_id)),
        ApprovalState::Denied | ApprovalState::Expired => Err(ApiError::PolicyDenied(format!(
            "approval {approval_id} was {}{}",
            approval.state.as_str(),
            approval
                .note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ))),
        ApprovalState::Used => Err(ApiError::Forbidden(format!(
            "approval {approval_id} was already used"
        ))),
        ApprovalState::Approved => {
            if state
                .store
                .use_approval(approval_id, state.clock.now_ms())
                .await
                .map_err(ApiError::internal)?
            {
                Ok(CallApproval::Granted)
            } else {
                Err(ApiError::Forbidden(format!(
                    "approval {approval_id} was already used"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
