//! Tool bodies for task-token holders: what may be called, and a call's answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tool the token may call.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The tool's name (`NAME.tool` for MCP upstream tools).
    pub name: String,
    /// What it does.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub input_schema: Value,
    /// `none` or `per_call`.
    pub approval: String,
}

/// `GET /v1/tools`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolList {
    /// What this token may call.
    pub tools: Vec<ToolInfo>,
}

/// `200` of `POST /v1/tools/{tool}/call`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallResult {
    /// The upstream's JSON answer.
    pub result: Value,
}

/// `202` of a call that waits for a per-call approval.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingApproval {
    /// Repeat the call with this id in `Leash-Approval` once approved.
    pub approval_id: String,
    /// Always `pending_approval`.
    pub state: String,
}
