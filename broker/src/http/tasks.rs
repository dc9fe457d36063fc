//! Task lifecycle endpoints: open, read, list, renew, complete, revoke.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use leash_sdk::protocol::{
    ReasonBody, RenewBody, TaskEnded, TaskIssued, TaskList, TaskRequest, TaskView,
};
use serde::Deserialize;

use super::admin::reason_text;
use super::extract::{JsonBody, ListQuery, OptionalJson, PathParam, QueryParams};
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::events::hub::Events;
use crate::http::auth::{Agent, AgentOrTask, ApproverOrAdmin, Caller, RenewsTask};
use crate::ids::is_task_id;
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::store::TaskState;
use crate::tasks::lifecycle::{Lifecycle, OpenRequest, Opened};
use crate::tokens::revocation::RevocationSet;
use crate::tokens::verify::Principal;
use crate::tokens::verify::TokenVerifier;

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
    State(lifecycle): State<Arc<Lifecycle>>,
    State(rate_limiter): State<Arc<RateLimiter>>,
    State(revoked): State<Arc<RevocationSet>>,
    State(verifier): State<Arc<TokenVerifier>>,
    JsonBody(body): JsonBody<TaskRequest>,
) -> ApiResult<(StatusCode, Json<TaskIssued>)> {
    let agent = caller.credential.id.as_str();
    rate_limiter.check(agent)?;
    let request = OpenRequest {
        agent,
        credential: caller
            .credential
            .token
            .revocation_ids
            .first()
            .map(String::as_str),
        purpose: &body.purpose,
        tools: &body.tools,
        ttl_seconds: body.ttl_seconds,
        checks: &body.checks,
        user: None,
        user_group: None,
        audience: None,
    };
    // Once the task exists, the credential is looked at again (revoked meanwhile?).
    let still_authorized = || {
        verifier
            .verify(&caller.bearer, |id| revoked.refusal(id))
            .map(|_| ())
    };
    let opened = lifecycle.open(request, still_authorized).await?;
    Ok(issued(opened, StatusCode::CREATED))
}

/// The answer of opening or renewing: `active` (with the token) or `pending_approval`
/// (202, with the approval to wait for).
fn issued(opened: Opened, active_status: StatusCode) -> (StatusCode, Json<TaskIssued>) {
    match opened {
        Opened::Active {
            task_id,
            token,
            expires_at_ms,
        } => (
            active_status,
            Json(active_task(task_id, token, expires_at_ms)),
        ),
        Opened::Pending {
            task_id,
            approval_id,
        } => (
            StatusCode::ACCEPTED,
            Json(pending_task(task_id, approval_id)),
        ),
    }
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
    State(events): State<Events>,
    State(lifecycle): State<Arc<Lifecycle>>,
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
    let mut changes = events.subscribe();
    let mut record = lifecycle.load(id).await?;
    // Who may see it is decided before any waiting: someone else's task is "not found"
    // at once, and never holds a long-poll or tells when it was decided.
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
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    while record.state == TaskState::PendingApproval && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Err(_) => break,
            Ok(Ok(event)) if event.task_id.as_deref() != Some(id) => continue,
            Ok(_) => record = lifecycle.load(id).await?,
        }
    }
    Ok(Json(lifecycle.view(&record, with_token).await?))
}

/// `GET /v1/tasks?state=…` (approver, admin); no state, or `all`, lists every state.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Tasks, newest first", body = TaskList)))]
pub async fn list(
    _: ApproverOrAdmin,
    State(lifecycle): State<Arc<Lifecycle>>,
    State(store): State<Arc<dyn Store>>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<TaskList>> {
    let filter = match q.state.as_deref() {
        None | Some("all") => None,
        Some(text) => Some(TaskState::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!("unknown state {text:?} (active, pending_approval, completed, revoked, expired, denied, all)"))
        })?),
    };
    let limit = q.limit();
    let records = store
        .list_tasks(filter, limit)
        .await
        .map_err(ApiError::internal)?;
    let mut tasks = Vec::with_capacity(records.len());
    for record in &records {
        tasks.push(lifecycle.view(record, false).await?);
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
    State(lifecycle): State<Arc<Lifecycle>>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<RenewBody>,
) -> ApiResult<(StatusCode, Json<TaskIssued>)> {
    let id = task_id_of(&id)?;
    let opened = lifecycle
        .renew(&caller.credential.id, id, body.ttl_seconds)
        .await?;
    Ok(issued(opened, StatusCode::OK))
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
    State(lifecycle): State<Arc<Lifecycle>>,
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
    let record = lifecycle.load(id).await?;
    if owner.as_deref() != Some(record.agent.as_str()) {
        return Err(ApiError::NotFound(format!("no task {id}")));
    }
    finish(
        &lifecycle,
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
    State(lifecycle): State<Arc<Lifecycle>>,
    PathParam(id): PathParam,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> ApiResult<Json<TaskEnded>> {
    let id = task_id_of(&id)?;
    let reason = reason_text(body.reason)?;
    finish(&lifecycle, id, TaskState::Revoked, &reason, &caller.actor()).await
}

/// Ends a task; repeating the same end is answered 200, a different one 409.
async fn finish(
    lifecycle: &Lifecycle,
    id: &str,
    target: TaskState,
    reason: &str,
    actor: &str,
) -> ApiResult<Json<TaskEnded>> {
    lifecycle.end(id, target, reason, actor).await?;
    Ok(Json(TaskEnded {
        task_id: id.to_string(),
        state: target.as_str().into(),
    }))
}
