//! Opening, renewing and ending a task: the rules of DESIGN.md's task lifecycle, apart
//! from HTTP. A handler authenticates and parses; everything the contract says about a
//! purpose, the tools asked for, the window, the agent's checks, issuance approval and
//! renewal lives here, with unit tests against an in-memory store and a fixed clock.

use std::collections::BTreeSet;
use std::sync::Arc;

use leash_sdk::protocol::TaskView;
use serde_json::json;

use crate::audit::log::{Audit, AuditEvent};
use crate::clock::{Clock, rfc3339};
use crate::error::ApiError;
use crate::ids::new_task_id;
use crate::policy::{Grant, GrantApproval, Policy, ToolPattern};
use crate::store::{ApprovalKind, Store, TaskRecord, TaskState};
use crate::tasks::approvals::Approvals;
use crate::tasks::issue::{Issued, Issuer, TaskIdentity};
use crate::tasks::runtime::{EndOutcome, Tasks};
use crate::tokens::mint::parse_check;
use crate::tokens::seal::{Sealer, TASK_TOKEN};
use crate::upstream::catalog::Catalog;

/// Most checks an agent may add to a task.
pub const MAX_CHECKS: usize = 32;
/// Longest check an agent may add, in bytes.
pub const MAX_CHECK_BYTES: usize = 4096;
/// Most tools (names or patterns) one request may list.
pub const MAX_TOOLS: usize = 256;

/// What an agent asks for when it opens a task.
pub struct OpenRequest<'a> {
    /// The agent (from its verified credential).
    pub agent: &'a str,
    /// The revocation id of that credential: the task is created only while it is live.
    pub credential: Option<&'a str>,
    /// What the task is for.
    pub purpose: &'a str,
    /// Tool names or `prefix.*` patterns.
    pub tools: &'a [String],
    /// The window asked for, in seconds (default: the grant's maximum).
    pub ttl_seconds: Option<i64>,
    /// Extra Datalog checks for the token.
    pub checks: &'a [String],
    /// The person starting the task for a client (`agent` is then `client:<id>`): the
    /// task is under their `[users]` grant, and the token says `user("…")`.
    pub user: Option<&'a str>,
    /// The group whose `[groups]` grant applies to `user` (none: their `[users]` grant).
    pub user_group: Option<&'a str>,
    /// The one resource the task's tokens are for (an OAuth grant's `resource`).
    pub audience: Option<&'a str>,
}

/// How opening (or renewing) went.
#[derive(Debug)]
pub enum Opened {
    /// The task is active with this token.
    Active {
        /// The task.
        task_id: String,
        /// Its (new) token.
        token: String,
        /// End of the token's window (ms since epoch).
        expires_at_ms: i64,
    },
    /// The grant needs a human first; nothing was minted.
    Pending {
        /// The task.
        task_id: String,
        /// The approval to wait for.
        approval_id: String,
    },
}

/// The task lifecycle service.
pub struct Lifecycle {
    /// Live tasks.
    pub tasks: Arc<Tasks>,
    /// Task records.
    pub store: Arc<dyn Store>,
    /// Grants.
    pub policy: Arc<Policy>,
    /// Which tools exist (for names and patterns).
    pub catalog: Arc<Catalog>,
    /// Mints tokens.
    pub issuer: Issuer,
    /// Seals tokens at rest.
    pub sealer: Arc<Sealer>,
    /// Files issuance and renewal approvals.
    pub approvals: Arc<Approvals>,
    /// Records issuance and renewal.
    pub audit: Audit,
    /// The clock.
    pub clock: Clock,
}

impl Lifecycle {
    /// Opens a task for `request`. `still_authorized` is asked once the task exists: an
    /// agent revoked while its task was being created must not keep it (the task is then
    /// ended and the refusal returned).
    pub async fn open(
        &self,
        request: OpenRequest<'_>,
        still_authorized: impl FnOnce() -> Result<(), ApiError>,
    ) -> Result<Opened, ApiError> {
        let agent = request.agent;
        let grant = self.grant(agent, request.user, request.user_group, "has no grant for")?;
        let purpose = request.purpose.trim();
        if purpose.is_empty() || !crate::text::is_free_text(purpose) {
            return Err(ApiError::BadRequest(
                "purpose must be 1 to 1000 characters".into(),
            ));
        }
        let tools = self.resolve_tools(&grant, request.tools)?;
        let ttl = ttl_within(&grant, request.ttl_seconds)?;
        check_agent_checks(request.checks)?;
        let now = self.clock.now_ms();
        let task_id = new_task_id();
        let identity = TaskIdentity {
            task_id: &task_id,
            agent,
            user: request.user,
            audience: request.audience,
        };
        let ttl_ms = ttl * 1000;
        let needs_approval = grant.approval == GrantApproval::Issuance;
        if needs_approval {
            self.approvals.check_pending_cap(agent).await?;
        }
        let issued = if needs_approval {
            None
        } else {
            Some(
                self.issuer
                    .issue(&identity, &grant, &tools, request.checks, ttl_ms, None)?,
            )
        };
        let record = TaskRecord {
            task_id: task_id.clone(),
            agent: agent.to_string(),
            purpose: purpose.to_string(),
            tools: tools.clone(),
            checks: request.checks.to_vec(),
            state: if needs_approval {
                TaskState::PendingApproval
            } else {
                TaskState::Active
            },
            created_at_ms: now,
            // A pending task has no window yet; it starts when it is approved.
            expires_at_ms: issued.as_ref().map_or(now + ttl_ms, |i| i.expires_at_ms),
            idle_timeout_ms: grant.idle_timeout.map(|d| d.as_millis() as i64),
            max_calls: grant.max_calls,
            calls: 0,
            last_activity_ms: now,
            ended_at_ms: None,
            end_reason: None,
            // At rest the token is sealed: a dump of the database yields no bearer token.
            token: issued
                .as_ref()
                .map(|i| self.sealer.seal(TASK_TOKEN, &task_id, &i.token)),
            user: request.user.map(str::to_string),
            user_group: request.user_group.map(str::to_string),
            audience: request.audience.map(str::to_string),
        };
        // The credential is checked again inside the creating transaction: an agent
        // revoked on another replica a moment ago cannot slip a task past the revoke.
        let created = self
            .tasks
            .create(
                &record,
                issued.as_ref().map(|i| i.revocation_id.as_str()),
                request.credential,
            )
            .await
            .map_err(ApiError::internal)?;
        if !created {
            return Err(ApiError::TokenRevoked(
                "the agent credential was revoked".into(),
            ));
        }
        self.audit
            .record(AuditEvent {
                kind: if needs_approval {
                    "task.requested"
                } else {
                    "task.issued"
                },
                actor: match request.user {
                    Some(user) => format!("user:{user}"),
                    None => format!("agent:{agent}"),
                },
                task_id: Some(task_id.clone()),
                detail: json!({
                    "agent": agent, "purpose": purpose, "tools": tools, "ttl_seconds": ttl,
                    "checks": request.checks, "revocation_id": issued.as_ref().map(|i| &i.revocation_id),
                    "policy": self.policy.source_hash,
                }),
            })
            .await;
        // The agent may have been revoked while this task was being created: look again
        // now that the task exists, and end it if so (an agent revoke may have missed it).
        if let Err(refusal) = still_authorized() {
            self.tasks
                .end(
                    &task_id,
                    TaskState::Revoked,
                    "its agent was revoked",
                    "broker",
                )
                .await?;
            return Err(refusal);
        }
        let Some(issued) = issued else {
            let approval = self
                .approvals
                .request(ApprovalKind::Issuance, &record, None, Some(ttl_ms))
                .await?;
            return Ok(Opened::Pending {
                task_id,
                approval_id: approval.approval_id,
            });
        };
        Ok(Opened::Active {
            task_id,
            token: issued.token,
            expires_at_ms: issued.token_expires_at_ms,
        })
    }

    /// A new token for an active task, its window unchanged: how an OAuth client's
    /// refresh gets a fresh access token (short-lived; the task's window bounds it). The
    /// task's tools are re-read from the current policy.
    pub async fn reissue(&self, task_id: &str) -> Result<Issued, ApiError> {
        let record = self.load(task_id).await?;
        let grant = self.grant(
            &record.agent,
            record.user.as_deref(),
            record.user_group.as_deref(),
            "no longer grants",
        )?;
        let runtime = self
            .tasks
            .runtime(task_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no task {task_id}")))?;
        self.tasks.check_active(&runtime).await?;
        let window_end = runtime.expires_at_ms();
        let issued = self.issuer.issue(
            &TaskIdentity::of(&record),
            &grant,
            &record.tools,
            &record.checks,
            0,
            Some(window_end),
        )?;
        if !self
            .tasks
            .renew(&runtime, &issued.activation(task_id, &self.sealer))
            .await?
        {
            return Err(crate::tasks::runtime::inactive(task_id, runtime.state()));
        }
        Ok(issued)
    }

    /// Renews an active task of `agent` for `ttl_seconds` from now (never shortening its
    /// window): a new token, or a pending approval when the grant needs one. Another
    /// agent's task is "not found".
    pub async fn renew(
        &self,
        agent: &str,
        task_id: &str,
        ttl_seconds: i64,
    ) -> Result<Opened, ApiError> {
        let record = self.load(task_id).await?;
        if record.agent != agent {
            return Err(ApiError::NotFound(format!("no task {task_id}")));
        }
        let grant = self.grant(
            &record.agent,
            record.user.as_deref(),
            record.user_group.as_deref(),
            "no longer grants",
        )?;
        let ttl = ttl_within(&grant, Some(ttl_seconds))?;
        let runtime = self
            .tasks
            .runtime(task_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no task {task_id}")))?;
        self.tasks.check_active(&runtime).await?;
        if grant.approval == GrantApproval::Issuance {
            self.approvals.check_pending_cap(&record.agent).await?;
            let approval = self
                .approvals
                .request(ApprovalKind::Renewal, &record, None, Some(ttl * 1000))
                .await?;
            return Ok(Opened::Pending {
                task_id: task_id.to_string(),
                approval_id: approval.approval_id,
            });
        }
        let issued = self.issuer.issue(
            &TaskIdentity::of(&record),
            &grant,
            &record.tools,
            &record.checks,
            ttl * 1000,
            Some(runtime.expires_at_ms()),
        )?;
        if !self
            .tasks
            .renew(&runtime, &issued.activation(task_id, &self.sealer))
            .await?
        {
            return Err(crate::tasks::runtime::inactive(task_id, runtime.state()));
        }
        self.audit
            .record(AuditEvent {
                kind: "task.renewed",
                actor: format!("agent:{agent}"),
                task_id: Some(task_id.to_string()),
                detail: json!({ "expires_at": rfc3339(issued.expires_at_ms), "revocation_id": issued.revocation_id, "tools": issued.tools }),
            })
            .await;
        Ok(Opened::Active {
            task_id: task_id.to_string(),
            token: issued.token,
            expires_at_ms: issued.token_expires_at_ms,
        })
    }

    /// Ends a task as `target` (completed or revoked). Ending it the same way again is
    /// fine (idempotent); a task that already ended otherwise is a conflict.
    pub async fn end(
        &self,
        task_id: &str,
        target: TaskState,
        reason: &str,
        actor: &str,
    ) -> Result<(), ApiError> {
        match self.tasks.end(task_id, target, reason, actor).await? {
            EndOutcome::Ended(_) => Ok(()),
            EndOutcome::AlreadyEnded(current) if current == target => Ok(()),
            EndOutcome::AlreadyEnded(current) => Err(ApiError::Conflict(format!(
                "task {task_id} has already ended: it is {}",
                current.as_str()
            ))),
        }
    }

    /// The stored task (404 if unknown).
    pub async fn load(&self, task_id: &str) -> Result<TaskRecord, ApiError> {
        self.store
            .get_task(task_id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::NotFound(format!("no task {task_id}")))
    }

    /// A task as the API shows it, with live state and counters from memory; its token
    /// only when `with_token` and the task is active.
    pub async fn view(&self, record: &TaskRecord, with_token: bool) -> Result<TaskView, ApiError> {
        let (live_state, calls, expires) = match self.tasks.runtime(&record.task_id).await? {
            Some(rt) => (rt.state(), rt.calls(), rt.expires_at_ms()),
            None => (record.state, record.calls, record.expires_at_ms),
        };
        let token = match &record.token {
            Some(sealed) if with_token && live_state == TaskState::Active => Some(
                self.sealer
                    .open(TASK_TOKEN, &record.task_id, sealed)
                    .map_err(ApiError::internal)?,
            ),
            _ => None,
        };
        Ok(TaskView {
            task_id: record.task_id.clone(),
            agent: record.agent.clone(),
            user: record.user.clone(),
            purpose: record.purpose.clone(),
            state: live_state.as_str().into(),
            tools: record.tools.clone(),
            created_at: rfc3339(record.created_at_ms),
            expires_at: rfc3339(expires),
            calls,
            max_calls: record.max_calls,
            ended_at: record.ended_at_ms.map(rfc3339),
            end_reason: record.ended_at_ms.map(|_| record.end_reason.clone()),
            token,
        })
    }

    fn grant(
        &self,
        agent: &str,
        user: Option<&str>,
        group: Option<&str>,
        wording: &str,
    ) -> Result<Arc<Grant>, ApiError> {
        self.policy
            .grant_for(agent, user, group)
            .cloned()
            .ok_or_else(|| {
                ApiError::PolicyDenied(match user {
                    Some(user) => format!("the policy {wording} user {user:?}"),
                    None => format!("the policy {wording} agent {agent:?}"),
                })
            })
    }

    /// Expands requested tools (names or `prefix.*`) into granted, existing tool names.
    fn resolve_tools(&self, grant: &Grant, requested: &[String]) -> Result<Vec<String>, ApiError> {
        if requested.is_empty() || requested.len() > MAX_TOOLS {
            return Err(ApiError::BadRequest(
                "tools must list 1 to 256 tools".into(),
            ));
        }
        let mut tools = BTreeSet::new();
        for name in requested {
            let pattern = ToolPattern::parse(name).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name:?} is neither a tool name nor a \"prefix.*\" pattern"
                ))
            })?;
            match &pattern {
                ToolPattern::Exact(tool) => {
                    if self.catalog.get(tool).is_none() {
                        return Err(ApiError::UnknownTool(format!("no tool named {tool:?}")));
                    }
                    if !grant.allows(tool) {
                        return Err(ApiError::PolicyDenied(format!(
                            "agent {:?} is not granted tool {tool:?}",
                            grant.agent
                        )));
                    }
                    tools.insert(tool.clone());
                }
                ToolPattern::Prefix(_) => {
                    let matched: Vec<String> = self
                        .catalog
                        .names()
                        .into_iter()
                        .filter(|tool| pattern.matches(tool) && grant.allows(tool))
                        .collect();
                    if matched.is_empty() {
                        return Err(ApiError::PolicyDenied(format!(
                            "agent {:?} is granted no tool matching {name:?}",
                            grant.agent
                        )));
                    }
                    tools.extend(matched);
                }
            }
        }
        Ok(tools.into_iter().collect())
    }
}

/// The window asked for, within the grant's maximum (which is also the default).
fn ttl_within(grant: &Grant, ttl_seconds: Option<i64>) -> Result<i64, ApiError> {
    let max = grant.max_ttl.as_secs() as i64;
    match ttl_seconds {
        None => Ok(max),
        Some(ttl) if ttl <= 0 => Err(ApiError::BadRequest("ttl_seconds must be positive".into())),
        Some(ttl) if ttl > max => Err(ApiError::PolicyDenied(format!(
            "ttl_seconds {ttl} is above the grant's maximum of {max} for agent {:?}",
            grant.agent
        ))),
        Some(ttl) => Ok(ttl),
    }
}

/// The agent's own checks: few, short, and valid Datalog checks.
fn check_agent_checks(checks: &[String]) -> Result<(), ApiError> {
    if checks.len() > MAX_CHECKS {
        return Err(ApiError::BadRequest(format!("at most {MAX_CHECKS} checks")));
    }
    for check in checks {
        if check.len() > MAX_CHECK_BYTES {
            return Err(ApiError::BadRequest(
                "a check is longer than 4096 bytes".into(),
            ));
        }
        parse_check(check).map_err(|why| ApiError::BadRequest(format!("checks: {why}")))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
