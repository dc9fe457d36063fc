//! Approval bodies: the approvals an approver sees, a decision, and the live events.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The call an approval is about (per-call approvals).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalCall {
    /// The tool.
    pub tool: String,
    /// The arguments, as the agent sent them.
    pub arguments: Value,
}

/// One approval, as `GET /v1/approvals` shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalView {
    /// `apr_` and 32 hex digits.
    pub approval_id: String,
    /// The task (null for a tool-definition approval).
    #[serde(default)]
    pub task_id: Option<String>,
    /// The agent asking (empty for a tool-definition approval; `client:<id>` for an MCP
    /// client).
    pub agent: String,
    /// The person whose MCP client asks (their grant applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `issuance`, `call`, `renewal` or `definition`.
    pub kind: String,
    /// The task's purpose, or the changed definition.
    pub purpose: String,
    /// The tools concerned.
    pub tools: Vec<String>,
    /// `pending`, `approved`, `denied`, `expired` or `used`.
    pub state: String,
    /// When it was asked (RFC 3339).
    pub requested_at: String,
    /// When an undecided request expires (RFC 3339).
    pub expires_at: String,
    /// The call (per-call approvals only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<ApprovalCall>,
    /// The window asked for (issuance and renewal only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// When it was decided (RFC 3339); present once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Who decided (`approver:…` or `admin`); present (possibly null) once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub decided_by: Option<Option<String>>,
    /// The decider's note; present (possibly null) once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub note: Option<Option<String>>,
}

/// `GET /v1/approvals`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalList {
    /// Oldest first.
    pub approvals: Vec<ApprovalView>,
}

/// Body of `POST /v1/approvals/{id}/approve` and `/deny` (may be empty).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why, for the audit log and the agent (at most 1000 printable characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `POST /v1/approvals/{id}/approve` and `/deny`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalDecided {
    /// The approval.
    pub approval_id: String,
    /// `approved` or `denied`.
    pub state: String,
}

/// The `data` of one event of `GET /v1/events` (Server-Sent Events).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventMessage {
    /// `approval.requested`, `approval.decided`, `task.activated`, `task.completed`, …
    /// (also the SSE `event` name).
    pub kind: String,
    /// The task concerned, if any.
    #[serde(default)]
    pub task_id: Option<String>,
    /// What happened (for approvals: the approval as the list shows it).
    pub data: Value,
}

/// `GET /v1/session`: who is signed in to this browser (the approver page reads it).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageSession {
    /// The signed-in user.
    pub user: String,
    /// Whether they may decide approvals.
    pub approver: bool,
    /// The session's CSRF token: sent back in `X-Leash-CSRF` on every change.
    pub csrf: String,
}
