//! Approver endpoints: list approvals, approve, deny, and the live event stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use leash_sdk::protocol::{ApprovalDecided, ApprovalList, DecisionBody, EventMessage};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::extract::{ListQuery, OptionalJson, PathParam, QueryParams};
use crate::accounts::sessions::Sessions;
use crate::error::{ApiError, ApiResult};
use crate::events::hub::Events;
use crate::http::auth::{ApproverOrAdmin, Authenticator};
use crate::store::ApprovalState;
use crate::store::Store;
use crate::tasks::approvals::Approvals;
use crate::tasks::approvals::view;
use crate::tokens::revocation::RevocationSet;

/// How often an open event stream re-checks its approver credential's window.
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(5);

/// `GET /v1/approvals?state=pending` (approver, admin). `state=all` lists every state.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(ListQuery),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Approvals in the asked state (default `pending`)", body = ApprovalList)))]
pub async fn list(
    _: ApproverOrAdmin,
    State(approvals): State<Arc<Approvals>>,
    State(store): State<Arc<dyn Store>>,
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
    approvals.expire_due().await?;
    let limit = q.limit();
    let records = store
        .list_approvals(filter, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ApprovalList {
        approvals: records.iter().map(view).collect(),
    }))
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
    approvals: State<Arc<Approvals>>,
    id: PathParam,
    body: OptionalJson<DecisionBody>,
) -> ApiResult<Json<ApprovalDecided>> {
    decision(caller, approvals, id, body, true).await
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
    approvals: State<Arc<Approvals>>,
    id: PathParam,
    body: OptionalJson<DecisionBody>,
) -> ApiResult<Json<ApprovalDecided>> {
    decision(caller, approvals, id, body, false).await
}

async fn decision(
    caller: ApproverOrAdmin,
    State(approvals): State<Arc<Approvals>>,
    PathParam(id): PathParam,
    OptionalJson(body): OptionalJson<DecisionBody>,
    approve: bool,
) -> ApiResult<Json<ApprovalDecided>> {
    if body
        .note
        .as_ref()
        .is_some_and(|n| !crate::text::is_free_text(n))
    {
        return Err(ApiError::BadRequest(
            "note must be at most 1000 printable characters".into(),
        ));
    }
    let decided = approvals
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
    State(events): State<Events>,
    State(revoked): State<Arc<RevocationSet>>,
    State(auth): State<Authenticator>,
    State(sessions): State<Arc<Sessions>>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    // An approver's stream ends the moment its credential is revoked, and soon after it
    // expires (checked every few seconds); a signed-in person's soon after sign-out.
    let credential = caller.credential().cloned();
    let session = caller.session().cloned();
    let cut_off = async move {
        if let Some(session) = session {
            while sessions.is_live(&session).await {
                tokio::time::sleep(CREDENTIAL_RECHECK).await;
            }
            return;
        }
        let Some(credential) = credential else {
            return std::future::pending().await;
        };
        loop {
            let next = revoked.next_publication();
            if auth.is_revoked(&credential) || auth.check_credential(&credential).is_err() {
                return;
            }
            tokio::select! {
                () = next => {}
                () = tokio::time::sleep(CREDENTIAL_RECHECK) => {}
            }
        }
    };
    let merged = futures_util::stream::select(
        BroadcastStream::new(events.subscribe()),
        BroadcastStream::new(events.subscribe_timeline()),
    );
    let stream = merged.map(|item| {
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
