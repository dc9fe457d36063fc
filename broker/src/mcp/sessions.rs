//! Who owns each `/mcp` session: the task whose token opened it. Checked at the HTTP edge,
//! before rmcp, on every request that names a session — tool calls, but also the GET
//! stream, DELETE and notifications, which rmcp answers without Leash's handlers — so a
//! holder of another task's token who learns a session id can neither read that
//! session's stream (an upstream's questions, logs, resource updates) nor answer on it.
//!
//! A session another task owns, or one this process never opened, is 404, as for a
//! session that ended: the client initializes again. New sessions are refused with 503
//! while [`MAX_SESSIONS`] are open.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::tokens::verify::{Principal, VerifiedToken};

/// Most `/mcp` sessions open at once in one process.
pub const MAX_SESSIONS: u64 = 10_000;

/// The header naming a session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Session id → the task that opened it, forgotten a little after rmcp closes an idle
/// session.
#[derive(Clone)]
pub struct SessionOwners {
    owners: moka::sync::Cache<String, String>,
}

impl SessionOwners {
    /// Owners of sessions that close after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        SessionOwners {
            owners: moka::sync::Cache::builder()
                .time_to_idle(idle + Duration::from_secs(60))
                .build(),
        }
    }

    /// The edge check (after the bearer check put the token in the request).
    pub async fn check(self: Arc<Self>, request: Request, next: Next) -> Response {
        let Some(task) = request
            .extensions()
            .get::<Arc<VerifiedToken>>()
            .and_then(|token| match &token.principal {
                Principal::Task { task_id, .. } => Some(task_id.clone()),
                _ => None,
            })
        else {
            return ApiError::TokenInvalid("not a task token".into()).into_response();
        };
        let named = request
            .headers()
            .get(SESSION_HEADER)
            .map(|v| v.to_str().unwrap_or_default().to_string());
        match &named {
            Some(session) => {
                if self.owners.get(session).as_deref() != Some(task.as_str()) {
                    return ApiError::NotFound(
                        "no such MCP session for this task's token: initialize a new one".into(),
                    )
                    .into_response();
                }
            }
            None => {
                self.owners.run_pending_tasks();
                if self.owners.entry_count() >= MAX_SESSIONS {
                    return ApiError::Unavailable(format!(
                        "{MAX_SESSIONS} MCP sessions are open: try again later"
                    ))
                    .into_response();
                }
            }
        }
        let response = next.run(request).await;
        if named.is_none()
            && let Some(opened) = response
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
        {
            self.owners.insert(opened.to_string(), task);
        }
        response
    }
}
