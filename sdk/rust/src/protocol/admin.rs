//! Credential and kill-switch bodies: minting agent and approver credentials, revoking
//! an agent, an approver, one credential or one token.

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/agents/{agent}/credentials` and `/v1/approvers/{approver}/credentials`
/// (may be empty).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// Lifetime of the credential (1 to 31622400 s); default 90 days. A credential
    /// also ends when it, its agent or its approver is revoked.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31622400))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `POST /v1/agents/{agent}/credentials`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentCredential {
    /// The agent id.
    pub agent: String,
    /// The credential (a Biscuit); shown once.
    pub credential: String,
}

/// `POST /v1/approvers/{approver}/credentials`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApproverCredential {
    /// The approver id.
    pub approver: String,
    /// The credential (a Biscuit); shown once.
    pub credential: String,
}

/// Body of a task, agent or approver revocation (may be empty).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why, for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/agents/{agent}/revoke`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRevoked {
    /// How many live tasks were ended.
    pub revoked_tasks: u64,
}

/// `POST /v1/approvers/{approver}/revoke`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApproverRevoked {
    /// The approver id.
    pub approver: String,
    /// How many of its credentials were revoked now.
    pub revoked_credentials: u64,
}

/// Body of `POST /v1/credentials/revoke`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialBody {
    /// The agent or approver credential to revoke.
    pub credential: String,
}

/// `POST /v1/credentials/revoke`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialRevoked {
    /// `agent` or `approver`.
    pub role: String,
    /// The agent or approver id.
    pub subject: String,
    /// The credential's revocation id (hex), now on the revocation feed.
    pub revocation_id: String,
    /// Always `revoked`.
    pub state: String,
}

/// Body of `POST /v1/tokens/revoke`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The token to revoke.
    pub token: String,
}

/// `POST /v1/tokens/revoke`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// The token's task (it goes on).
    pub task_id: String,
    /// The revoked block's revocation id (hex).
    pub revocation_id: String,
    /// Always `revoked`.
    pub state: String,
}
