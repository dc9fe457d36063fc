//! Who owns each `/mcp` session: the task whose token opened it. Checked at the HTTP edge,
//! before rmcp, on every request that names a session — tool calls, but also the GET
//! stream, DELETE and notifications, which rmcp answers without Leash's handlers — so a
//! holder of another task's token who learns a session id can neither read that
//! session's stream (an upstream's questions, logs, resource updates) nor answer on it.
//!
//! A session another task owns, or one this process never opened, is 404, as for a
//! session that ended: the client initializes again. An entry is removed when its client
//! closes the session (DELETE) or when rmcp drops it (its handler's [`SessionEnd`], once a
//! request named the session); one that only ever saw `initialize` and idled out is
//! forgotten after the longest task lifetime. A new session is refused with 503 while
//! [`MAX_SESSIONS`] are open, or [`MAX_SESSIONS_PER_TASK`] of its own task's.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::tokens::verify::{Principal, VerifiedToken};

/// Most `/mcp` sessions open at once in one process.
pub const MAX_SESSIONS: u64 = 10_000;

/// Most `/mcp` sessions one task may have open.
pub const MAX_SESSIONS_PER_TASK: usize = 16;

/// The header naming a session.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// Session id → the task that opened it.
pub struct SessionOwners {
    owners: moka::sync::Cache<String, String>,
    /// Largest request body (`--body-limit`): a sessionless request is read whole to
    /// tell whether it opens a session.
    body_limit: usize,
}

impl SessionOwners {
    /// No session yet. An entry whose session somehow never reports its end is still
    /// forgotten after `longest` (no task lives longer).
    pub fn new(longest: Duration, body_limit: usize) -> Arc<Self> {
        Arc::new(SessionOwners {
            owners: moka::sync::Cache::builder()
                .time_to_live(longest + Duration::from_secs(60))
                .build(),
            body_limit,
        })
    }

    /// Forgets a session rmcp closed.
    pub fn ended(&self, session: &str) {
        self.owners.invalidate(session);
    }

    /// Why a new session of `task` may not open now, if it may not.
    fn refuse_new(&self, task: &str) -> Option<ApiError> {
        self.owners.run_pending_tasks();
        if self.owners.entry_count() >= MAX_SESSIONS {
            return Some(ApiError::Unavailable(format!(
                "{MAX_SESSIONS} MCP sessions are open: try again later"
            )));
        }
        let own = self
            .owners
            .iter()
            .filter(|(_, owner)| owner.as_str() == task)
            .count();
        (own >= MAX_SESSIONS_PER_TASK).then(|| {
            ApiError::Unavailable(format!(
                "task {task} has {MAX_SESSIONS_PER_TASK} MCP sessions open: close one (DELETE) first"
            ))
        })
    }

    /// The edge check (after the bearer check put the token in the request).
    pub async fn check(self: Arc<Self>, mut request: Request, next: Next) -> Response {
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
            Some(session) if self.owners.get(session).as_deref() != Some(task.as_str()) => {
                return ApiError::NotFound(
                    "no such MCP session for this task's token: initialize a new one".into(),
                )
                .into_response();
            }
            Some(_) => {}
            // A 2026-07-28 request is served without a session and no quota applies —
            // unless it is an `initialize`, which opens one whatever the header says.
            None => {
                let opens = if stateless(&request) {
                    let (parts, body) = request.into_parts();
                    let bytes = match axum::body::to_bytes(body, self.body_limit).await {
                        Ok(bytes) => bytes,
                        Err(_) => {
                            return ApiError::PayloadTooLarge(format!(
                                "the request body is over {} bytes, or broke off",
                                self.body_limit
                            ))
                            .into_response();
                        }
                    };
                    let opens = is_initialize(&bytes);
                    request = Request::from_parts(parts, axum::body::Body::from(bytes));
                    opens
                } else {
                    true
                };
                if opens && let Some(refused) = self.refuse_new(&task) {
                    return refused.into_response();
                }
            }
        }
        let closing = request.method() == axum::http::Method::DELETE;
        let response = next.run(request).await;
        // A session its client closed is forgotten at once (its handler may never have
        // learnt its id, if no request but `initialize` came).
        if let Some(session) = named.as_deref().filter(|_| closing)
            && response.status().is_success()
        {
            self.ended(session);
        }
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

/// Whether a JSON-RPC body is an `initialize` request (what makes rmcp open a session).
fn is_initialize(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Probe<'_>>(body)
        .ok()
        .and_then(|probe| probe.method)
        .is_some_and(|method| method == "initialize")
}

/// Whether a request speaks 2026-07-28 or later (served without a session).
fn stateless(request: &Request) -> bool {
    request
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|version| version >= "2026-07-28")
}

/// Held by a session's handler: when rmcp drops the session (DELETE, idle, shutdown),
/// the last clone of the handler drops this, and the session's owner is forgotten.
pub struct SessionEnd {
    owners: Arc<SessionOwners>,
    session: OnceLock<String>,
}

impl SessionEnd {
    /// For a handler of `owners`' sessions.
    pub fn new(owners: Arc<SessionOwners>) -> Self {
        SessionEnd {
            owners,
            session: OnceLock::new(),
        }
    }

    /// Records the session this handler serves (from a request that names it).
    pub fn serves(&self, session: &str) {
        let _ = self.session.set(session.to_string());
    }
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        if let Some(session) = self.session.get() {
            self.owners.ended(session);
        }
    }
}
