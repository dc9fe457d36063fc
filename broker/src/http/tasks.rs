//! Task lifecycle endpoints: open, read, list, renew, complete, revoke.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use leash_sdk::protocol::{
    ReasonBody, RenewBody, TaskEnded, TaskIssued, TaskList, TaskRequest, TaskView,
};
use serde::Deserialize;
use serde_json::json;

use super::admin::reason_text;
use super::extract::{JsonBody, ListQuery, OptionalJson, PathParam, QueryParams};
use crate::app::state::AppState;
use crate::audit::log::AuditEvent;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::http::auth::{Agent, AgentOrTask, ApproverOrAdmin, Caller, RenewsTask};
use crate::ids::{is_task_id, new_task_id};
use crate::policy::{Grant, GrantApproval, ToolPattern};
use crate::store::{ApprovalKind, TaskRecord, TaskState};
use crate::tasks::runtime::EndOutcome;
use crate::tokens::mint::parse_check;
use crate::tokens::seal::TASK_TOKEN;
use crate::tokens::verify::Principal;

/// Most checks an agent may add to a task.
const MAX_CHECKS: usize = 32;

/// `POST /v1/tasks` (agent credential).
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = TaskRequest,
    security(("agent" = [])),
    responses(
        (status = 201, description = "The task is active; its token is in the answer", body = TaskIssued),
        (status = 202, description = "The task waits for an approver (poll `GET /v1/tasks/{id}?wait=`)", body = TaskIssued),
        (status = 429, description = "The agent's request rate is used up (see Retry-After)", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn create(
    caller: Agent,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TaskRequest>,
) -> ApiResult<(StatusCode, Json<TaskIssued>)> {
    let agent = caller.credential.id.clone();
    state.rate_limiter.check(&agent)?;
    let grant = state.policy.grant(&agent).cloned().ok_or_else(|| {
        ApiError::PolicyDenied(format!("the policy has no grant for agent {agent:?}"))
    })?;
    let purpose = body.purpose.trim().to_string();
    if purpose.is_empty() || purpose.chars().count() > 1000 || !crate::ids::is_plain_text(&purpose)
    {
        return Err(ApiError::BadRequest(
            "purpose must be 1 to 1000 characters".into(),
        ));
    }
    let tools = resolve_tools(&state, &grant, &body.tools)?;
    let ttl = ttl_within(&grant, body.ttl_seconds)?;
    if body.checks.len() > MAX_CHECKS {
        return Err(ApiError::BadRequest(format!("at most {MAX_CHECKS} checks")));
    }
    for check in &body.checks {
        if check.len() > 4096 {
            return Err(ApiError::BadRequest(
                "a check is longer than 4096 bytes".into(),
            ));
        }
        parse_check(check).map_err(|why| ApiError::BadRequest(format!("checks: {why}")))?;
    }
    let now = state.clock.now_ms();
    let task_id = new_task_id();
    let ttl_ms = ttl * 1000;
    let needs_approval = grant.approval == GrantApproval::Issuance;
    if needs_approval {
        state.approvals.check_pending_cap(&agent).await?;
    }
    let issued = if needs_approval {
        None
    } else {
        Some(
            state
                .issuer
                .issue(&task_id, &grant, &tools, &body.checks, ttl_ms, None)?,
        )
    };
    let record = TaskRecord {
        task_id: task_id.clone(),
        agent: agent.clone(),
        purpose: purpose.clone(),
        tools: tools.clone(),
        checks: body.checks.clone(),
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
            .map(|i| state.sealer.seal(TASK_TOKEN, &task_id, &i.token)),
    };
    // The credential that asks, checked again inside the creating transaction: an agent
    // revoked on another replica a moment ago cannot slip a task past the revoke.
    let credential = caller.credential.token.revocation_ids.first().cloned();
    let created = state
        .tasks
        .create(
            &record,
            issued.as_ref().map(|i| i.revocation_id.as_str()),
            credential.as_deref(),
        )
        .await
        .map_err(ApiError::internal)?;
    if !created {
        return Err(ApiError::TokenRevoked(
            "the agent credential was revoked".into(),
        ));
    }
    state
        .audit
        .record(AuditEvent {
            kind: if needs_approval {
                "task.requested"
            } else {
                "task.issued"
            },
            actor: format!("agent:{agent}"),
            task_id: Some(task_id.clone()),
            detail: json!({
                "purpose": purpose, "tools": tools, "ttl_seconds": ttl,
                "checks": body.checks, "revocation_id": issued.as_ref().map(|i| &i.revocation_id),
            }),
        })
        .await;
    // The agent may have been revoked while this task was being created: look again now
    // that the task exists, and end it if so (an agent revoke may have missed it).
    if let Err(refusal) = state
        .verifier
        .verify(&caller.bearer, |id| state.revoked.refusal(id))
    {
        state
            .tasks
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
        let approval = state
            .approvals
            .request(ApprovalKind::Issuance, &record, None, Some(ttl_ms))
            .await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(pending_task(task_id, approval.approval_id)),
        ));
    };
    Ok((
        StatusCode::CREATED,
        Json(active_task(task_id, issued.token, issued.expires_at_ms)),
    ))
}

/// The answer for a task (or renewal) that waits for an approver.
fn pending_task(task_id: String, approval_id: String) -> TaskIssued {
    TaskIssued {
        task_id,
        state: "pending_approval".into(),
        token: None,
        expires_at: None,
        approval_id: Some(approval_id),
    }
}

/// The answer for an active task with its (new) token.
fn active_task(task_id: String, token: String, expires_at_ms: i64) -> TaskIssued {
    TaskIssued {
        task_id,
        state: "active".into(),
        token: Some(token),
        expires_at: Some(rfc3339(expires_at_ms)),
        approval_id: None,
    }
}

/// Expands requested tools (names or `prefix.*`) into granted, existing tool names.
fn resolve_tools(state: &AppState, grant: &Grant, requested: &[String]) -> ApiResult<Vec<String>> {
    if requested.is_empty() || requested.len() > 256 {
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
                if state.catalog.get(tool).is_none() {
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
                let matched: Vec<String> = state
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

/// The window asked for, within the grant's maximum (which is also the default).
fn ttl_within(grant: &Grant, ttl_seconds: Option<i64>) -> ApiResult<i64> {
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

/// Parses a task id from the path (400 if malformed).
fn task_id_of(id: &str) -> ApiResult<&str> {
    if is_task_id(id) {
        Ok(id)
    } else {
        Err(ApiError::BadRequest(format!(
            "{id:?} is not a task id (tsk_ and 32 hex digits)"
        )))
    }
}

/// A task as the API shows it, with live state and counters from memory.
async fn view(state: &AppState, record: &TaskRecord, with_token: bool) -> ApiResult<TaskView> {
    let (live_state, calls, expires) = match state.tasks.runtime(&record.task_id).await? {
        Some(rt) => (rt.state(), rt.calls(), rt.expires_at_ms()),
        None => (record.state, record.calls, record.expires_at_ms),
    };
    let token = match &record.token {
        Some(sealed) if with_token && live_state == TaskState::Active => Some(
            state
                .sealer
                .open(TASK_TOKEN, &record.task_id, sealed)
                .map_err(ApiError::internal)?,
        ),
        _ => None,
    };
    Ok(TaskView {
        task_id: record.task_id.clone(),
        agent: record.agent.clone(),
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

async fn load(state: &AppState, id: &str) -> ApiResult<TaskRecord> {
    state
        .store
        .get_task(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no task {id}")))
}

/// `?wait=SECONDS` of a task read.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Hold the answer up to this many seconds (0 to 60) while the task is pending approval.
    #[param(maximum = 60)]
    wait: Option<u64>,
}

/// Longest long-poll of `GET /v1/tasks/{id}?wait=`.
const MAX_WAIT_SECONDS: u64 = 60;

/// `GET /v1/tasks/{id}` (owner agent, a token of the task, approver, admin).
/// `?wait=SECONDS` (at most 60) holds the answer while the task is pending approval.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "`tsk_` and 32 hex digits", pattern = "^tsk_[0-9a-f]{32}$"), ShowQuery),
    security(("agent" = []), ("task" = []), ("approver" = []), ("admin" = [])),
    responses((status = 200, description = "The task (its token only to the owner, while active)", body = TaskView)))]
pub async fn show(
    caller: Caller,
    State(state): State<AppState>,
    PathParam(id): PathParam,
    QueryParams(query): QueryParams<ShowQuery>,
) -> ApiResult<Json<TaskView>> {
    let id = task_id_of(&id)?;
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::BadRequest(format!(
            "wait is at most {MAX_WAIT_SECONDS} seconds"
        )));
    }
    // Subscribe before the first read, so no change between the two is missed.
    let mut changes = state.events.subscribe();
    let mut record = load(&state, id).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    while record.state == TaskState::PendingApproval && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Err(_) => break,
            Ok(Ok(event)) if event.task_id.as_deref() != Some(id) => continue,
            Ok(_) => record = load(&state, id).await?,
        }
    }
    // Only the owner's credential sees the token: a sub-agent holding an attenuated
    // token must not be able to fetch its parent.
    let with_token = match &caller {
        Caller::Admin | Caller::Approver(_) => false,
        Caller::Agent(agent) if agent.id == record.agent => true,
        // Only the task's own token, not an attenuation of it (a sub-agent's token, or the
        // per-call capability an upstream received).
        Caller::Task(token)
            if token.revocation_ids.len() == 1
                && matches!(&token.principal, Principal::Task { task_id, .. } if task_id == id) =>
        {
            false
        }
        _ => return Err(ApiError::NotFound(format!("no task {id}"))),
    };
    Ok(Json(view(&state, &record, with_token).await?))
}

/// `GET /v1/tasks?state=…` (approver, admin); no state, or `all`, lists every state.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Tasks, newest first", body = TaskList)))]
pub async fn list(
    _: ApproverOrAdmin,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<TaskList>> {
    let filter = match q.state.as_deref() {
        None | Some("all") => None,
        Some(text) => Some(TaskState::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!("unknown state {text:?} (active, pending_approval, completed, revoked, expired, denied, all)"))
        })?),
    };
    let limit = q.limit();
    let records = state
        .store
        .list_tasks(filter, limit)
        .await
        .map_err(ApiError::internal)?;
    let mut tasks = Vec::with_capacity(records.len());
    for record in &records {
        tasks.push(view(&state, record, false).await?);
    }
    Ok(Json(TaskList { tasks }))
}

/// `POST /v1/tasks/{id}/renew` (owner agent credential). A grant that needs approval
/// answers 202 with an approval id; the task stays active and the new token appears in
/// `GET /v1/tasks/{id}` once approved.
#[utoipa::path(post, path = "/v1/tasks/{id}/renew", tag = "tasks",
    params(("id" = String, Path, description = "`tsk_` and 32 hex digits", pattern = "^tsk_[0-9a-f]{32}$")),
    request_body = RenewBody,
    security(("agent" = [])),
    responses(
        (status = 200, description = "A new token with the new window", body = TaskIssued),
        (status = 202, description = "The renewal waits for an approver", body = TaskIssued),
    ))]
pub async fn renew(
    caller: Agent<RenewsTask>,
    State(state): State<AppState>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<RenewBody>,
) -> ApiResult<(StatusCode, Json<TaskIssued>)> {
    let id = task_id_of(&id)?;
    let record = load(&state, id).await?;
    if caller.credential.id != record.agent {
        return Err(ApiError::NotFound(format!("no task {id}")));
    }
    let grant = state.policy.grant(&record.agent).cloned().ok_or_else(|| {
        ApiError::PolicyDenied(format!(
            "the policy no longer grants agent {:?}",
            record.agent
        ))
    })?;
    let ttl = ttl_within(&grant, Some(body.ttl_seconds))?;
    let runtime = state
        .tasks
        .runtime(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task {id}")))?;
    state.tasks.check_active(&runtime).await?;
    if grant.approval == GrantApproval::Issuance {
        state.approvals.check_pending_cap(&record.agent).await?;
        let approval = state
            .approvals
            .request(ApprovalKind::Renewal, &record, None, Some(ttl * 1000))
            .await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(pending_task(id.to_string(), approval.approval_id)),
        ));
    }
    let issued = state.issuer.issue(
        id,
        &grant,
        &record.tools,
        &record.checks,
        ttl * 1000,
        Some(runtime.expires_at_ms()),
    )?;
    if !state
        .tasks
        .renew(&runtime, &issued.activation(id, &state.sealer))
        .await?
    {
        return Err(crate::tasks::runtime::inactive(id, runtime.state()));
    }
    state
        .audit
        .record(AuditEvent {
            kind: "task.renewed",
            actor: format!("agent:{}", caller.credential.id),
            task_id: Some(id.to_string()),
            detail: json!({ "expires_at": rfc3339(issued.expires_at_ms), "revocation_id": issued.revocation_id, "tools": issued.tools }),
        })
        .await;
    Ok((
        StatusCode::OK,
        Json(active_task(
            id.to_string(),
            issued.token,
            issued.expires_at_ms,
        )),
    ))
}

/// `POST /v1/tasks/{id}/complete` (owner agent credential, or a token of the task).
#[utoipa::path(post, path = "/v1/tasks/{id}/complete", tag = "tasks",
    params(("id" = String, Path, description = "`tsk_` and 32 hex digits", pattern = "^tsk_[0-9a-f]{32}$")),
    security(("agent" = []), ("task" = [])),
    responses(
        (status = 200, description = "The task is completed; every token of it is revoked", body = TaskEnded),
        (status = 409, description = "The task already ended otherwise", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn complete(
    caller: AgentOrTask,
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<Json<TaskEnded>> {
    let id = task_id_of(&id)?;
    let owner = match &caller {
        AgentOrTask::Agent(agent) => Some(agent.id.clone()),
        AgentOrTask::Task(token) if token.revocation_ids.len() > 1 => {
            return Err(ApiError::Forbidden(
                "an attenuated token cannot complete its task: use the task's own token or the agent credential".into(),
            ));
        }
        AgentOrTask::Task(token) => match &token.principal {
            Principal::Task { task_id, agent } if task_id == id => Some(agent.clone()),
            _ => {
                return Err(ApiError::Forbidden(
                    "this token belongs to another task".into(),
                ));
            }
        },
    };
    let record = load(&state, id).await?;
    if owner.as_deref() != Some(record.agent.as_str()) {
        return Err(ApiError::NotFound(format!("no task {id}")));
    }
    finish(
        &state,
        id,
        TaskState::Completed,
        "completed by its agent",
        &caller.actor(),
    )
    .await
}

/// `POST /v1/tasks/{id}/revoke` (approver, admin).
#[utoipa::path(post, path = "/v1/tasks/{id}/revoke", tag = "tasks",
    params(("id" = String, Path, description = "`tsk_` and 32 hex digits", pattern = "^tsk_[0-9a-f]{32}$")),
    request_body(content = Option<ReasonBody>, description = "May be empty"),
    security(("approver" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The task is revoked; every token of it is dead", body = TaskEnded),
        (status = 409, description = "The task already ended otherwise", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn revoke(
    caller: ApproverOrAdmin,
    State(state): State<AppState>,
    PathParam(id): PathParam,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> ApiResult<Json<TaskEnded>> {
    let id = task_id_of(&id)?;
    let reason = reason_text(body.reason)?;
    finish(&state, id, TaskState::Revoked, &reason, &caller.actor()).await
}

/// Ends a task; repeating the same end is answered 200, a different one 409.
async fn finish(
    state: &AppState,
    id: &str,
    target: TaskState,
    reason: &str,
    actor: &str,
) -> ApiResult<Json<TaskEnded>> {
    match state.tasks.end(id, target, reason, actor).await? {
        EndOutcome::Ended(_) => {}
        EndOutcome::AlreadyEnded(current) if current == target => {}
        EndOutcome::AlreadyEnded(current) => {
            return Err(ApiError::Conflict(format!(
                "task {id} has already ended: it is {}",
                current.as_str()
            )));
        }
    }
    Ok(Json(TaskEnded {
        task_id: id.to_string(),
        state: target.as_str().into(),
    }))
}
