//! Approver endpoints: list approvals, approve, deny, and the live event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::extract::{ListQuery, OptionalJson, PathParam, QueryParams};
use crate::app::state::AppState;
use crate::error::{ApiError, ApiResult};
use crate::http::auth::{Caller, authenticate, bearer};
use crate::store::ApprovalState;
use crate::tasks::approvals::view;

/// How often an open event stream re-checks its approver credential's window.
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(5);

/// `GET /v1/approvals?state=pending` (approver, admin). `state=all` lists every state.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(ListQuery),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Approvals in the asked state (default `pending`)", body = super::openapi::ApprovalList)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Value>> {
    authenticate(&state, &headers)?.require_approver_or_admin()?;
    let filter = match q.state.as_deref().unwrap_or("pending") {
        "all" => None,
        text => Some(ApprovalState::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state {text:?} (pending, approved, denied, expired, used, all)"
            ))
        })?),
    };
    // Undecided approvals past their time are expired before anyone sees them.
    state.approvals.expire_due().await?;
    let limit = q.limit();
    let records = state
        .store
        .list_approvals(filter, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "approvals": records.iter().map(view).collect::<Vec<_>>() }),
    ))
}

/// Body of a decision.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why, for the audit log and the agent (at most 1000 printable characters).
    #[serde(default)]
    note: Option<String>,
}

/// `POST /v1/approvals/{id}/approve`.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals",
    params(("id" = String, Path, description = "`apr_` and 32 hex digits", pattern = "^apr_[0-9a-f]{32}$")),
    request_body(content = Option<DecisionBody>, description = "May be empty"),
    security(("approver" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The approval is approved", body = super::openapi::Decided),
        (status = 409, description = "It was already decided, or expired", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn approve(
    state: State<AppState>,
    headers: HeaderMap,
    id: PathParam,
    body: OptionalJson<DecisionBody>,
) -> ApiResult<Json<Value>> {
    decision(state, headers, id, body, true).await
}

/// `POST /v1/approvals/{id}/deny`.
#[utoipa::path(post, path = "/v1/approvals/{id}/deny", tag = "approvals",
    params(("id" = String, Path, description = "`apr_` and 32 hex digits", pattern = "^apr_[0-9a-f]{32}$")),
    request_body(content = Option<DecisionBody>, description = "May be empty"),
    security(("approver" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The approval is denied", body = super::openapi::Decided),
        (status = 409, description = "It was already decided, or expired", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn deny(
    state: State<AppState>,
    headers: HeaderMap,
    id: PathParam,
    body: OptionalJson<DecisionBody>,
) -> ApiResult<Json<Value>> {
    decision(state, headers, id, body, false).await
}

async fn decision(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParam(id): PathParam,
    OptionalJson(body): OptionalJson<DecisionBody>,
    approve: bool,
) -> ApiResult<Json<Value>> {
    let caller = authenticate(&state, &headers)?;
    caller.require_approver_or_admin()?;
    if body
        .note
        .as_ref()
        .is_some_and(|n| n.chars().count() > 1000 || !crate::ids::is_plain_text(n))
    {
        return Err(ApiError::BadRequest(
            "note must be at most 1000 printable characters".into(),
        ));
    }
    let decided = state
        .approvals
        .decide(&id, approve, &caller.actor(), body.note.as_deref())
        .await?;
    Ok(Json(
        json!({ "approval_id": decided.approval_id, "state": decided.state.as_str() }),
    ))
}

/// `GET /v1/events` (approver, admin): Server-Sent Events `approval.requested`,
/// `approval.decided`, `task.activated`, `task.completed`, `task.revoked`, `task.expired`.
#[utoipa::path(get, path = "/v1/events", tag = "approvals",
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "An endless stream of events; each `data` is `{\"kind\", \"task_id\", \"data\"}`", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let caller = authenticate(&state, &headers)?;
    caller.require_approver_or_admin()?;
    // An approver's stream ends the moment its credential is revoked, and soon after it
    // expires (checked every few seconds).
    let credential = match caller {
        Caller::Admin => None,
        _ => Some(state.verifier.verify(bearer(&headers)?, |_| None)?),
    };
    let watcher = state.clone();
    let cut_off = async move {
        let Some(credential) = credential else {
            return std::future::pending().await;
        };
        loop {
            let next = watcher.revoked.next_publication();
            let revoked = credential
                .revocation_ids
                .iter()
                .any(|id| watcher.revoked.contains(id));
            if revoked || crate::http::auth::check_credential(&watcher, &credential).is_err() {
                return;
            }
            tokio::select! {
                () = next => {}
                () = tokio::time::sleep(CREDENTIAL_RECHECK) => {}
            }
        }
    };
    let stream = BroadcastStream::new(state.events.subscribe()).map(|item| {
        Ok(match item {
            Ok(event) => SseEvent::default().event(event.kind).data(
                json!({ "kind": event.kind, "task_id": event.task_id, "data": event.data })
                    .to_string(),
            ),
            // The subscriber fell behind: tell it to re-read instead of guessing.
            Err(_) => SseEvent::default().event("resync").data("{}"),
        })
    });
    let stream = futures_util::StreamExt::take_until(stream, cut_off);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
