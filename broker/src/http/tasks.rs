//! Task lifecycle endpoints: open, read, list, renew, complete, revoke.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use leash_sdk::protocol::{
    ReasonBody, RenewBody, TaskEnded, TaskEvidence, TaskIssued, TaskList, TaskRequest,
    TaskTimeline, TaskView, TimelineEntry,
};
use serde::Deserialize;

use super::admin::reason_text;
use super::extract::{JsonBody, OptionalJson, PathParam, QueryParams};
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::events::hub::Events;
use crate::http::auth::{Agent, AgentOrTask, ApproverOrAdmin, Caller, RenewsTask};
use crate::ids::is_task_id;
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::store::{TaskQuery, TaskState};
use crate::tasks::history::History;
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
        (status = 404, description = "A tool the request names is not in the catalog (`unknown_tool`)", body = leash_sdk::protocol::ErrorBody),
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

/// `GET /v1/tasks`'s filters: each narrows the list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskSearch {
    /// Only tasks in this state (`all`, the default, for every state).
    state: Option<String>,
    /// Only this agent's tasks.
    agent: Option<String>,
    /// Only tasks this person started.
    user: Option<String>,
    /// Only tasks holding this tool.
    tool: Option<String>,
    /// Only tasks created at or after this time (RFC 3339).
    since: Option<String>,
    /// Only tasks created before this time (RFC 3339).
    until: Option<String>,
    /// The `next` of the page before.
    after: Option<String>,
    /// At most this many (default 100; clamped to 1 to 1000).
    limit: Option<i64>,
}

/// The next page's cursor after `record`: its creation time and id.
fn cursor_of(record: &crate::store::TaskRecord) -> String {
    format!("{}.{}", record.created_at_ms, record.task_id)
}

fn time_of(name: &str, text: Option<&str>) -> ApiResult<Option<i64>> {
    text.map(|text| {
        crate::clock::parse_rfc3339(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be an RFC 3339 time (2026-12-01T10:00:00Z)"
            ))
        })
    })
    .transpose()
}

impl TaskSearch {
    fn query(self) -> ApiResult<TaskQuery> {
        let state = match self.state.as_deref() {
            None | Some("all") => None,
            Some(text) => Some(TaskState::parse(text).ok_or_else(|| {
                ApiError::BadRequest(format!("unknown state {text:?} (active, pending_approval, completed, revoked, expired, denied, all)"))
            })?),
        };
        let after = match self.after.as_deref() {
            None => None,
            Some(text) => {
                let parsed = text
                    .split_once('.')
                    .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)))
                    .filter(|(_, id)| is_task_id(id));
                let (ms, id) = parsed.ok_or_else(|| {
                    ApiError::BadRequest("after must be the next of an earlier page".into())
                })?;
                Some((ms, id.to_string()))
            }
        };
        let bounded = |name: &str, value: Option<String>| match value {
            Some(text) if text.is_empty() || text.len() > 256 => Err(ApiError::BadRequest(
                format!("{name} must be 1 to 256 characters"),
            )),
            other => Ok(other),
        };
        Ok(TaskQuery {
            state,
            agent: bounded("agent", self.agent)?,
            user: bounded("user", self.user)?,
            tool: bounded("tool", self.tool)?,
            since_ms: time_of("since", self.since.as_deref())?,
            until_ms: time_of("until", self.until.as_deref())?,
            after,
            limit: self.limit.unwrap_or(100).clamp(1, 1000),
        })
    }
}

/// `GET /v1/tasks` (approver, admin): tasks newest first, filtered by state, agent,
/// person, tool and creation time, a page at a time (`next` → `after`).
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskSearch),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Tasks, newest first", body = TaskList)))]
pub async fn list(
    _: ApproverOrAdmin,
    State(lifecycle): State<Arc<Lifecycle>>,
    State(store): State<Arc<dyn Store>>,
    QueryParams(q): QueryParams<TaskSearch>,
) -> ApiResult<Json<TaskList>> {
    let query = q.query()?;
    // One more than asked tells whether there is a next page.
    let records = store
        .list_tasks(&TaskQuery {
            limit: query.limit + 1,
            ..query.clone()
        })
        .await
        .map_err(ApiError::internal)?;
    let more = records.len() as i64 > query.limit;
    let shown = &records[..records.len().min(query.limit as usize)];
    let mut tasks = Vec::with_capacity(shown.len());
    for record in shown {
        tasks.push(lifecycle.view(record, false).await?);
    }
    let next = more.then(|| shown.last().map(cursor_of)).flatten();
    Ok(Json(TaskList { tasks, next }))
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

/// `?after=SEQ&limit=N` of a task's timeline.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// Entries after this audit position (default 0: from the start).
    #[serde(default)]
    after: i64,
    /// At most this many (default 500; clamped to 1 to 1000).
    limit: Option<i64>,
}

/// `GET /v1/tasks/{id}/timeline` (approver, admin): what happened in the task, oldest
/// first, a page at a time; `timeline.appended` on `/v1/events` says when there is more.
#[utoipa::path(get, path = "/v1/tasks/{id}/timeline", tag = "tasks",
    params(("id" = String, Path, description = "`tsk_` and 32 hex digits", pattern = "^tsk_[0-9a-f]{32}$"), TimelineQuery),
    security(("approver" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The task and its entries after `after`", body = TaskTimeline),
        (status = 404, description = "No such task", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn timeline(
    _: ApproverOrAdmin,
    State(history): State<Arc<History>>,
    State(lifecycle): State<Arc<Lifecycle>>,
    PathParam(id): PathParam,
    QueryParams(q): QueryParams<TimelineQuery>,
) -> ApiResult<Json<TaskTimeline>> {
    let id = task_id_of(&id)?;
    let record = lifecycle.load(id).await?;
    let page = history
        .timeline(id, q.after, q.limit.unwrap_or(500))
        .await?;
    let entries = page
        .rows
        .into_iter()
        .map(|row| TimelineEntry {
            seq: row.seq,
            at: rfc3339(row.at_ms),
            kind: row.kind,
            actor: row.actor,
            detail: row.detail,
        })
        .collect();
    Ok(Json(TaskTimeline {
        task: lifecycle.view(&record, false).await?,
        entries,
        next: page.next,
    }))
}

/// `GET /v1/tasks/{id}/evidence` (approver, admin): the task's facts and audit rows,
/// signed with the root key over their RFC 8785 canonical JSON; `leash evidence verify`
/// checks it offline.
#[utoipa::path(get, path = "/v1/tasks/{id}/evidence", tag = "tasks",
    params(("id" = String, Path, description = "`tsk_` and 32 hex digits", pattern = "^tsk_[0-9a-f]{32}$")),
    security(("approver" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The signed evidence", body = TaskEvidence),
        (status = 404, description = "No such task", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn evidence(
    _: ApproverOrAdmin,
    State(history): State<Arc<History>>,
    State(lifecycle): State<Arc<Lifecycle>>,
    PathParam(id): PathParam,
) -> ApiResult<Json<TaskEvidence>> {
    let record = lifecycle.load(task_id_of(&id)?).await?;
    Ok(Json(history.evidence(&record).await?))
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
