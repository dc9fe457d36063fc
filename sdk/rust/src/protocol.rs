//! The wire protocol of Leash's HTTP API v1 (DESIGN.md): request and response bodies
//! and the error codes. The broker and the SDK both use these, so they cannot drift.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Header carrying a per-call attenuated capability from the broker to a tool server.
pub const CAPABILITY_HEADER: &str = "leash-capability";
/// Header carrying an approval id when a call is repeated after a per-call approval.
pub const APPROVAL_HEADER: &str = "leash-approval";

/// Every error `code` of the API.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed JSON, wrong content type, bad path or query.
    BadRequest,
    /// 401: no credential, or one that is not understood.
    Unauthenticated,
    /// 401: the token does not parse, is forged, has an unknown key, or is the wrong kind.
    TokenInvalid,
    /// 401: the token's window passed, or its task expired.
    TokenExpired,
    /// 401: the token or its task was revoked.
    TokenRevoked,
    /// 401: the task is not active (completed, pending, denied).
    TaskInactive,
    /// 403: the caller's role may not do this.
    Forbidden,
    /// 403: policy refuses the request.
    PolicyDenied,
    /// 403: a check of the capability failed (the message names it).
    CapabilityDenied,
    /// 404: no such resource.
    NotFound,
    /// 404: no such tool.
    UnknownTool,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 422: the arguments break the tool's input schema.
    InvalidArguments,
    /// 429: a call budget is used up.
    BudgetExhausted,
    /// 502: the upstream failed.
    UpstreamError,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 503: the broker could not do its part (it fails closed).
    Unavailable,
    /// A code this SDK does not know (a newer broker).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire string of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::TaskInactive => "task_inactive",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::CapabilityDenied => "capability_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownTool => "unknown_tool",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidArguments => "invalid_arguments",
            ErrorCode::BudgetExhausted => "budget_exhausted",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The body of every error: `{"error": {...}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: ErrorCode,
    /// Human message.
    pub message: String,
    /// For `invalid_arguments`: one entry per schema violation (`pointer`, `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<Value>>,
}

/// `POST /v1/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskRequest {
    /// What the task is for (shown to approvers, audited).
    pub purpose: String,
    /// Tool names or `prefix.*` patterns.
    pub tools: Vec<String>,
    /// Window in seconds (default: the grant's maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Extra Biscuit checks to put in the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

/// A task as the API shows it (`POST /v1/tasks`, `GET /v1/tasks/{id}`, renew).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    /// `tsk_…`.
    pub task_id: String,
    /// `active`, `pending_approval`, `completed`, `revoked`, `expired`, `denied`.
    pub state: String,
    /// The task token (only for its owner, once active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// End of the window (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The approval to wait for, when pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Calls admitted so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
}

/// `202` of a call that waits for a per-call approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingApproval {
    /// Repeat the call with this id in `Leash-Approval` once approved.
    pub approval_id: String,
    /// Always `pending_approval`.
    pub state: String,
}

/// `200` of a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallResult {
    /// The upstream's JSON answer.
    pub result: Value,
}

/// One root public key (`GET /.well-known/leash/keys`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishedKey {
    /// Root key id.
    pub kid: u32,
    /// `ed25519`.
    pub algorithm: String,
    /// Biscuit's textual form, `ed25519/<hex>`.
    pub public_key: String,
}

/// `GET /.well-known/leash/keys`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySet {
    /// Every key that verifies.
    pub keys: Vec<PublishedKey>,
    /// The key (`ed25519/<hex>`) the broker signs the third-party block of every
    /// forwarded `Leash-Capability` with: a tool server trusts `forwarded` facts only
    /// from blocks signed by it. Absent from brokers that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_key: Option<String>,
}

/// One entry of the revocation feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationEntry {
    /// Position in the feed.
    pub seq: i64,
    /// Hex revocation id: every token with a block of this id is dead.
    pub revocation_id: String,
    /// The task it belonged to.
    #[serde(default)]
    pub task_id: Option<String>,
    /// When every token with this id is past its own window (RFC 3339); a verifier may
    /// forget the id a margin after that, since such a token fails its expiry check.
    /// Absent: keep it for ever.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `GET /v1/revocations?after=SEQ`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationPage {
    /// Entries after the asked position.
    pub revocations: Vec<RevocationEntry>,
    /// The position to ask after next time.
    pub next: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_tolerated() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"token_revoked","message":"m"}}"#).unwrap();
        assert_eq!(body.error.code, ErrorCode::TokenRevoked);
        assert_eq!(
            serde_json::to_value(ErrorCode::BudgetExhausted).unwrap(),
            "budget_exhausted"
        );
        let newer: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"from_the_future","message":"m"}}"#).unwrap();
        assert_eq!(newer.error.code, ErrorCode::Unknown);
    }
}
