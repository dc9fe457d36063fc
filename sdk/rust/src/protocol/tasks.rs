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
    /// When more tasks match: pass it as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
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

/// `GET /v1/tasks/{id}/timeline`: a page of what happened in one task, oldest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskTimeline {
    /// The task as it stands.
    pub task: TaskView,
    /// Its audit rows after the asked position: issuance, approvals, every call (tool,
    /// outcome, upstream, arguments with `writeOnly` values masked), renewals, the end.
    pub entries: Vec<TimelineEntry>,
    /// Ask again with `after` set to this for what comes next.
    pub next: i64,
}

/// One entry of a task's timeline: one audit row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// The row's position in the audit chain.
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// What happened (`task.issued`, `approval.approved`, `call.allowed`, …).
    pub kind: String,
    /// Who (`agent:x`, `user:y`, `approver:z`, `broker`).
    pub actor: String,
    /// The row's details (never a token or secret).
    pub detail: serde_json::Value,
}

/// `GET /v1/tasks/{id}/evidence`: a task's facts, signed by the deployment's root key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEvidence {
    /// The facts (`format` `leash-task-evidence-v1`): the task, the policy's hash, who
    /// approved it, its tokens by revocation id, counts, and its audit rows with their
    /// hashes and the latest signed checkpoint.
    pub evidence: serde_json::Value,
    /// Ed25519 over the RFC 8785 (JCS) canonical JSON of `evidence`.
    pub signature: EvidenceSignature,
}

/// The signature of a [`TaskEvidence`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceSignature {
    /// The root key id (see `/.well-known/leash/keys`).
    pub kid: u32,
    /// Always `ed25519`.
    pub alg: String,
    /// The signature, base64url without padding.
    pub value: String,
}
