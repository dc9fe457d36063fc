//! Task bodies: opening, reading, listing, renewing and ending a task.

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/tasks`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// What the task is for (shown to approvers, audited; at most 1000 printable characters).
    pub purpose: String,
    /// Tool names or `prefix.*` patterns, each within the agent's grant.
    pub tools: Vec<String>,
    /// The window in seconds (default and maximum: the grant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Extra Biscuit checks to put in the token (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

/// A new or renewed task (`POST /v1/tasks`, `POST /v1/tasks/{id}/renew`): `active`
/// with its token and window, or `pending_approval` with the approval to wait for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskIssued {
    /// `tsk_` and 32 hex digits.
    pub task_id: String,
    /// `active` or `pending_approval`.
    pub state: String,
    /// The task token (when active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// End of the window (RFC 3339, when active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The approval to wait for (when pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

/// A task as `GET /v1/tasks/{id}` and the task list show it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    /// `tsk_` and 32 hex digits.
    pub task_id: String,
    /// The owner agent (`client:<client_id>` for an MCP client a person connected).
    pub agent: String,
    /// The person who started the task for an MCP client (their grant applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the task is for.
    pub purpose: String,
    /// `pending_approval`, `active`, `completed`, `revoked`, `expired` or `denied`.
    pub state: String,
    /// The tools the task may call.
    pub tools: Vec<String>,
    /// When it was opened (RFC 3339).
    pub created_at: String,
    /// End of the window (RFC 3339).
    pub expires_at: String,
    /// Calls admitted so far.
    pub calls: u64,
    /// The grant's call budget (null: none).
    #[serde(default)]
    pub max_calls: Option<u64>,
    /// When it ended (RFC 3339); present once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Why it ended; present (possibly null) once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub end_reason: Option<Option<String>>,
    /// The task token: only to its owner agent, only while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /v1/tasks`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskView>,
}

/// Body of `POST /v1/tasks/{id}/renew`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    /// The new window, from now, in seconds (at most the grant's).
    pub ttl_seconds: i64,
}

/// `POST /v1/tasks/{id}/complete` and `/revoke`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskEnded {
    /// The task.
    pub task_id: String,
    /// `completed`, `revoked` or `expired`: the task's final state.
    pub state: String,
}
