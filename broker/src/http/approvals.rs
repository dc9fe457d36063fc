//! Approver endpoints: list approvals, approve, deny, and the live event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use leash_sdk::protocol::{
    ApprovalCall, ApprovalDecided, ApprovalList, ApprovalView, DecisionBody, EventMessage,
};
use serde_json::Value;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::extract::{ListQuery, OptionalJson, PathParam, QueryParams};
use crate::app::state::AppState;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::http::auth::{ApproverOrAdmin, Authenticator};
use crate::store::{ApprovalRecord, ApprovalState};

/// How often an open event stream re-checks its approver credential's window.
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(5);

/// `GET /v1/approvals?state=pending` (approver, admin). `state=all` lists every state.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(ListQuery),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Approvals in the asked state (default `pending`)", body = ApprovalList)))]
pub async fn list(
    _: ApproverOrAdmin,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<ApprovalList>> {
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
    Ok(Json(ApprovalList {
        approvals: records.iter().map(approval_view).collect(),
    }))
}

/// An approval as the API shows it (the same shape as the events' `data`).
fn approval_view(a: &ApprovalRecord) -> ApprovalView {
    let decided = a.decided_at_ms.is_some();
    ApprovalView {
        approval_id: a.approval_id.clone(),
        task_id: (!a.task_id.is_empty()).then(|| a.task_id.clone()),
        agent: a.agent.clone(),
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

/// `POST /v1/approvals/{id}/approve`.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals",
    params(("id" = String, Path, description = "`apr_` and 32 hex digits", pattern = "^apr_[0-9a-f]{32}$")),
    request_body(content = Option<DecisionBody>, description = "May be empty"),
    security(("approver" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The approval is approved", body = ApprovalDecided),
        (status = 409, description = "It was already decided, or expired", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn approve(
    caller: ApproverOrAdmin,
    state: State<AppState>,
    id: PathParam,
    body: OptionalJson<DecisionBody>,
) -> ApiResult<Json<ApprovalDecided>> {
    decision(caller, state, id, body, true).await
}

/// `POST /v1/approvals/{id}/deny`.
#[utoipa::path(post, path = "/v1/approvals/{id}/deny", tag = "approvals",
    params(("id" = String, Path, description = "`apr_` and 32 hex digits", pattern = "^apr_[0-9a-f]{32}$")),
    request_body(content = Option<DecisionBody>, description = "May be empty"),
    security(("approver" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The approval is denied", body = ApprovalDecided),
        (status = 409, description = "It was already decided, or expired", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn deny(
    caller: ApproverOrAdmin,
    state: State<AppState>,
    id: PathParam,
    body: OptionalJson<DecisionBody>,
) -> ApiResult<Json<ApprovalDecided>> {
    decision(caller, state, id, body, false).await
}

async fn decision(
    caller: ApproverOrAdmin,
    State(state): State<AppState>,
    PathParam(id): PathParam,
    OptionalJson(body): OptionalJson<DecisionBody>,
    approve: bool,
) -> ApiResult<Json<ApprovalDecided>> {
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
    Ok(Json(ApprovalDecided {
        approval_id: decided.approval_id,
        state: decided.state.as_str().into(),
    }))
}

/// `GET /v1/events` (approver, admin): Server-Sent Events `approval.requested`,
/// `approval.decided`, `task.activated`, `task.completed`, `task.revoked`, `task.expired`.
#[utoipa::path(get, path = "/v1/events", tag = "approvals",
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "An endless stream of events; each `data` is `{\"kind\", \"task_id\", \"data\"}`", content_type = "text/event-stream", body = String)))]
pub async fn events(
    caller: ApproverOrAdmin,
    State(state): State<AppState>,
    State(auth): State<Authenticator>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    // An approver's stream ends the moment its credential is revoked, and soon after it
    // expires (checked every few seconds).
    let credential = caller.credential().cloned();
    let watcher = state.clone();
    let cut_off = async move {
        let Some(credential) = credential else {
            return std::future::pending().await;
        };
        loop {
            let next = watcher.revoked.next_publication();
            if auth.is_revoked(&credential) || auth.check_credential(&credential).is_err() {
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
            Ok(event) => {
                let message = EventMessage {
                    kind: event.kind.into(),
                    task_id: event.task_id,
                    data: event.data,
                };
                SseEvent::default()
                    .event(event.kind)
                    .json_data(message)
                    // Cannot fail (strings and JSON values); should it, re-read.
                    .unwrap_or_else(|_| SseEvent::default().event("resync").data("{}"))
            }
            // The subscriber fell behind: tell it to re-read instead of guessing.
            Err(_) => SseEvent::default().event("resync").data("{}"),
        })
    });
    let stream = futures_util::StreamExt::take_until(stream, cut_off);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::approval_view;
    use crate::store::{ApprovalKind, ApprovalRecord, ApprovalState};

    fn record() -> ApprovalRecord {
        ApprovalRecord {
            approval_id: "apr_1".into(),
            kind: ApprovalKind::Call,
            task_id: "tsk_1".into(),
            agent: "bot".into(),
            purpose: "p".into(),
            tools: vec!["web.search".into()],
            call_tool: Some("web.search".into()),
            call_args: None,
            args_hash: None,
            ttl_ms: None,
            state: ApprovalState::Pending,
            requested_at_ms: 1_000,
            expires_at_ms: 2_000,
            decided_at_ms: None,
            decided_by: None,
            note: None,
        }
    }

    /// The list shows an approval exactly as the events (`tasks::approvals::view`) do:
    /// the same fields, absent or null alike.
    #[test]
    fn the_list_and_the_events_show_the_same_approval() {
        let pending = record();
        let mut decided = record();
        decided.task_id = String::new();
        decided.kind = ApprovalKind::Renewal;
        decided.call_tool = None;
        decided.ttl_ms = Some(60_000);
        decided.state = ApprovalState::Denied;
        decided.decided_at_ms = Some(1_500);
        decided.decided_by = Some("approver:ann".into());
        for a in [pending, decided] {
            let typed = serde_json::to_value(approval_view(&a)).unwrap();
            assert_eq!(typed, crate::tasks::approvals::view(&a));
        }
    }
}
