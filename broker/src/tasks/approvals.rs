//! Human approval: before a task is issued, before one call of a `per_call` tool, and
//! before a renewal of a grant that needs approval.
//!
//! Every decision is committed in the store before it is answered, audited with the
//! approver's id and note, and published as `approval.decided`. An undecided approval
//! counts as denied once `[approvals] expire_after_seconds` has passed. A call approval
//! is single use and bound to its task, its tool and a hash of the canonical arguments.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::audit::log::{Audit, AuditEvent};
use crate::clock::{Clock, rfc3339};
use crate::error::ApiError;
use crate::events::hub::Events;
use crate::ids::random_hex;
use crate::policy::Policy;
use crate::store::{
    Activation, ApprovalKind, ApprovalRecord, ApprovalState, Decided, Store, TaskRecord, TaskState,
};
use crate::tasks::issue::{Issuer, TaskIdentity};
use crate::tasks::runtime::Tasks;
use crate::tokens::seal::Sealer;
use crate::upstream::catalog::Catalog;
use crate::upstream::pins::{self, DefinitionReview};
use leash_sdk::protocol::{ApprovalCall, ApprovalView};

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

/// The approval as the API shows it: in lists and as the data of its events.
pub fn view(a: &ApprovalRecord) -> ApprovalView {
    let decided = a.decided_at_ms.is_some();
    ApprovalView {
        approval_id: a.approval_id.clone(),
        task_id: (!a.task_id.is_empty()).then(|| a.task_id.clone()),
        agent: a.agent.clone(),
        user: a.user.clone(),
        kind: a.kind.as_str().into(),
        purpose: a.purpose.clone(),
        tools: a.tools.clone(),
        state: a.state.as_str().into(),
        requested_at: rfc3339(a.requested_at_ms),
        expires_at: rfc3339(a.expires_at_ms),
        call: a.call_tool.as_ref().map(|tool| ApprovalCall {
            tool: tool.clone(),
            arguments: a.call_args.clone().unwrap_or(Value::Null),
        }),
        ttl_seconds: a.ttl_ms.map(|ttl| ttl / 1000),
        decided_at: a.decided_at_ms.map(rfc3339),
        decided_by: decided.then(|| a.decided_by.clone()),
        note: decided.then(|| a.note.clone()),
    }
}

/// [`view`] as event data.
fn event_data(a: &ApprovalRecord) -> Value {
    serde_json::to_value(view(a)).unwrap_or(Value::Null)
}

/// Human approvals: filing, deciding, expiring and spending them. Holds exactly the
/// handles that needs — the store, the audit log, the event hub, the live tasks (a
/// decision activates or ends one), the issuer (an approved issuance mints), the policy
/// (expiry, grants) and the catalog (an accepted definition releases a tool).
pub struct Approvals {
    store: Arc<dyn Store>,
    audit: Audit,
    events: Events,
    clock: Clock,
    tasks: Arc<Tasks>,
    issuer: Issuer,
    sealer: Arc<Sealer>,
    policy: Arc<Policy>,
    catalog: Arc<Catalog>,
    max_pending_per_agent: i64,
}

/// What [`Approvals::new`] is built from.
pub struct ApprovalsParts {
    /// Durable self.
    pub store: Arc<dyn Store>,
    /// The audit writer.
    pub audit: Audit,
    /// Where approvers hear of requests and decisions.
    pub events: Events,
    /// The clock.
    pub clock: Clock,
    /// Live tasks (a decision activates or ends one).
    pub tasks: Arc<Tasks>,
    /// Mints the token an approved issuance or renewal activates.
    pub issuer: Issuer,
    /// Seals that token for the store.
    pub sealer: Arc<Sealer>,
    /// Expiry of approvals and the grants.
    pub policy: Arc<Policy>,
    /// Released tools when a changed definition is accepted.
    pub catalog: Arc<Catalog>,
    /// Undecided approvals one agent may have waiting.
    pub max_pending_per_agent: i64,
}

impl Approvals {
    /// Assembles the approvals service.
    pub fn new(parts: ApprovalsParts) -> Self {
        let ApprovalsParts {
            store,
            audit,
            events,
            clock,
            tasks,
            issuer,
            sealer,
            policy,
            catalog,
            max_pending_per_agent,
        } = parts;
        Approvals {
            store,
            audit,
            events,
            clock,
            tasks,
            issuer,
            sealer,
            policy,
            catalog,
            max_pending_per_agent,
        }
    }

    /// A new pending approval, due to expire after `[approvals] expire_after_seconds`.
    fn pending(
        &self,
        kind: ApprovalKind,
        task_id: &str,
        agent: String,
        purpose: String,
        tools: Vec<String>,
    ) -> ApprovalRecord {
        let now = self.clock.now_ms();
        ApprovalRecord {
            approval_id: format!("{APPROVAL_PREFIX}{}", random_hex(16)),
            kind,
            task_id: task_id.to_string(),
            agent,
            user: None,
            purpose,
            tools,
            call_tool: None,
            call_args: None,
            args_hash: None,
            ttl_ms: None,
            state: ApprovalState::Pending,
            requested_at_ms: now,
            expires_at_ms: now + self.policy.approvals.expire_after.as_millis() as i64,
            decided_at_ms: None,
            decided_by: None,
            note: None,
        }
    }

    /// Stores a pending approval, audits its request by `actor` and tells approvers.
    async fn file(
        &self,
        approval: ApprovalRecord,
        actor: String,
        detail: Value,
    ) -> Result<ApprovalRecord, ApiError> {
        self.store
            .insert_approval(&approval)
            .await
            .map_err(ApiError::internal)?;
        let task_id = (!approval.task_id.is_empty()).then(|| approval.task_id.clone());
        self.audit
            .record(AuditEvent {
                kind: "approval.requested",
                actor,
                task_id: task_id.clone(),
                detail,
            })
            .await;
        self.events.publish(
            "approval.requested",
            task_id.as_deref(),
            event_data(&approval),
        );
        Ok(approval)
    }

    /// Refuses (429) an agent that already has as many undecided approvals as
    /// `max_pending_approvals_per_agent` allows, so one agent cannot bury the others'
    /// requests. Asked before anything is filed or created.
    pub async fn check_pending_cap(&self, agent: &str) -> Result<(), ApiError> {
        let cap = self.max_pending_per_agent;
        let pending = self
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
        &self,
        kind: ApprovalKind,
        task: &TaskRecord,
        call: Option<(&str, &Value)>,
        ttl_ms: Option<i64>,
    ) -> Result<ApprovalRecord, ApiError> {
        let approval = self.request_unfiled(kind, task, call, ttl_ms);
        self.file_request(approval, task).await
    }

    /// The approval [`Approvals::request`] files, bound to the call's arguments.
    fn request_unfiled(
        &self,
        kind: ApprovalKind,
        task: &TaskRecord,
        call: Option<(&str, &Value)>,
        ttl_ms: Option<i64>,
    ) -> ApprovalRecord {
        let mut approval = self.pending(
            kind,
            &task.task_id,
            task.agent.clone(),
            task.purpose.clone(),
            task.tools.clone(),
        );
        approval.user = task.user.clone();
        approval.call_tool = call.map(|(tool, _)| tool.to_string());
        // The approver sees the arguments as the timeline does: `writeOnly` values
        // masked. The approval is bound to the real ones by their hash.
        approval.call_args = call.map(|(tool, args)| match self.catalog.get(tool) {
            Some(def) => crate::policy::write_only::masked(&def.input_schema, args),
            None => Value::String(crate::policy::write_only::MASK.into()),
        });
        approval.args_hash = call.map(|(_, args)| args_hash(args));
        approval.ttl_ms = ttl_ms;
        approval
    }

    /// Stores a task's request and records it (`approval.requested`).
    async fn file_request(
        &self,
        approval: ApprovalRecord,
        task: &TaskRecord,
    ) -> Result<ApprovalRecord, ApiError> {
        // Not the arguments' hash: over a `writeOnly` value it would let a reader of the
        // audit guess it. The approvals row keeps it, for binding.
        let detail = json!({ "approval_id": approval.approval_id, "kind": approval.kind.as_str(), "tool": approval.call_tool });
        self.file(approval, format!("agent:{}", task.agent), detail)
            .await
    }

    /// Files a per-call approval of `tool` with `args` in `task`, bound to `bound` (the
    /// arguments, or for a later round of a call, with that round: see `tasks::calls`).
    pub async fn request_call(
        &self,
        task: &TaskRecord,
        tool: &str,
        args: &Value,
        bound: &Value,
    ) -> Result<ApprovalRecord, ApiError> {
        let mut approval = self.request_unfiled(ApprovalKind::Call, task, Some((tool, args)), None);
        approval.args_hash = Some(args_hash(bound));
        self.file_request(approval, task).await
    }

    /// Files an approval for a changed upstream tool definition. It names no task: the
    /// tool is withheld from everyone until it is decided.
    pub async fn request_definition(
        &self,
        server: &str,
        tool: &str,
        definition: &Value,
        hash: &str,
    ) -> Result<ApprovalRecord, ApiError> {
        let purpose = format!("the upstream definition of {tool} changed; accept the new one?");
        let mut approval = self.pending(
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
        self.file(approval, format!("mcp:{server}"), detail).await
    }

    /// Approves or denies a pending approval. 404 if unknown, 409 if already decided or
    /// expired, or if its task ended before the decision.
    pub async fn decide(
        &self,
        approval_id: &str,
        approve: bool,
        actor: &str,
        note: Option<&str>,
    ) -> Result<ApprovalRecord, ApiError> {
        let approval = self.load(approval_id).await?;
        let now = self.clock.now_ms();
        if approval.state == ApprovalState::Pending && approval.expires_at_ms <= now {
            self.expire(&approval).await?;
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
        // A person approves nobody's request of their own: their MCP client's task
        // waits for another approver (denying it is fine).
        if approve
            && let (Some(person), Some(user)) = (actor.strip_prefix("user:"), &approval.user)
            && person == user
        {
            return Err(ApiError::Forbidden(
                "this request is your own; another approver must decide it".into(),
            ));
        }
        let target = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        let activation = if approve {
            self.activation_for(&approval).await?
        } else {
            None
        };
        let decided = match &activation {
            Some(activation) => {
                self.tasks
                    .apply_approval(&approval, actor, note, activation)
                    .await?
            }
            None => self
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
                self.store
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
            pins::accept(self.store.as_ref(), &self.catalog, tool, hash).await?;
        }
        if !approve && approval.kind == ApprovalKind::Issuance {
            self.tasks
                .end(
                    &approval.task_id,
                    TaskState::Denied,
                    note.unwrap_or("denied by an approver"),
                    actor,
                )
                .await?;
        }
        let decided = self.load(approval_id).await?;
        self
        .audit
        .record(AuditEvent {
            kind: if approve { "approval.approved" } else { "approval.denied" },
            actor: actor.to_string(),
            task_id: Some(approval.task_id.clone()),
            // The token an approved issuance or renewal activated, by revocation id.
            detail: json!({ "approval_id": approval_id, "kind": approval.kind.as_str(), "note": note,
                "revocation_id": activation.as_ref().map(|a| &a.revocation_id) }),
        })
        .await;
        self.events.publish(
            "approval.decided",
            Some(&approval.task_id),
            event_data(&decided),
        );
        Ok(decided)
    }

    /// The token an approved issuance or renewal activates.
    async fn activation_for(
        &self,
        approval: &ApprovalRecord,
    ) -> Result<Option<Activation>, ApiError> {
        if matches!(approval.kind, ApprovalKind::Call | ApprovalKind::Definition) {
            return Ok(None);
        }
        let task = self
            .store
            .get_task(&approval.task_id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::NotFound(format!("no task {}", approval.task_id)))?;
        let grant = self
            .policy
            .grant_for(
                &task.agent,
                task.user.as_deref(),
                task.user_group.as_deref(),
            )
            .cloned()
            .ok_or_else(|| {
                ApiError::PolicyDenied(format!("the policy no longer grants {}", task.holder()))
            })?;
        let ttl_ms = approval.ttl_ms.unwrap_or(grant.max_ttl.as_millis() as i64);
        let issued = self.issuer.issue(
            &TaskIdentity::of(&task),
            &grant,
            &task.tools,
            &task.checks,
            ttl_ms,
            // A pending task's stored window is only a placeholder; a renewal keeps its own.
            (approval.kind == ApprovalKind::Renewal).then_some(task.expires_at_ms),
        )?;
        Ok(Some(issued.activation(&task.task_id, &self.sealer)))
    }

    async fn load(&self, approval_id: &str) -> Result<ApprovalRecord, ApiError> {
        if !is_approval_id(approval_id) {
            return Err(ApiError::BadRequest(format!(
                "{approval_id:?} is not an approval id (apr_ and 32 hex digits)"
            )));
        }
        self.store
            .get_approval(approval_id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::NotFound(format!("no approval {approval_id}")))
    }

    /// Marks an undecided approval expired (denied); an issuance's task is denied with it.
    /// Safe to race (sweeper vs a late decision): whoever sees the approval expired makes
    /// sure the task is denied before answering; only the one that expired it audits.
    async fn expire(&self, approval: &ApprovalRecord) -> Result<(), ApiError> {
        let now = self.clock.now_ms();
        let reason = "nobody decided in time";
        let decided = self
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
            self.tasks
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
        self
        .audit
        .record(AuditEvent {
            kind: "approval.expired",
            actor: "broker".into(),
            task_id: Some(approval.task_id.clone()),
            detail: json!({ "approval_id": approval.approval_id, "kind": approval.kind.as_str() }),
        })
        .await;
        if let Ok(Some(now_state)) = self.store.get_approval(&approval.approval_id).await {
            self.events.publish(
                "approval.decided",
                Some(&approval.task_id),
                event_data(&now_state),
            );
        }
        Ok(())
    }

    /// Expires every approval whose time ran out. Returns how many.
    pub async fn expire_due(&self) -> Result<usize, ApiError> {
        let due = self
            .store
            .due_approvals(self.clock.now_ms())
            .await
            .map_err(ApiError::internal)?;
        for approval in &due {
            self.expire(approval).await?;
        }
        Ok(due.len())
    }

    /// Checks the `Leash-Approval` of a repeated call: it must be this task's approval of
    /// this tool with these exact arguments, approved and unused; it is spent here.
    pub async fn spend_for_call(
        &self,
        approval_id: &str,
        task_id: &str,
        tool: &str,
        args: &Value,
    ) -> Result<CallApproval, ApiError> {
        let approval = match self.load(approval_id).await {
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
            ApprovalState::Pending if approval.expires_at_ms <= self.clock.now_ms() => {
                self.expire(&approval).await?;
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
                if self
                    .store
                    .use_approval(approval_id, self.clock.now_ms())
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
}

#[async_trait]
impl DefinitionReview for Approvals {
    async fn file(
        &self,
        server: &str,
        tool: &str,
        definition: &Value,
        hash: &str,
    ) -> Result<String, ApiError> {
        Ok(self
            .request_definition(server, tool, definition, hash)
            .await?
            .approval_id)
    }
}

#[cfg(test)]
#[path = "approvals_tests.rs"]
mod tests;
