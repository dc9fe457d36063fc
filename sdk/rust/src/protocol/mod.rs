//! The wire protocol of Leash's HTTP API v1 (DESIGN.md): every request and response
//! body, and the error codes. The broker's handlers answer with these types, its
//! `/openapi.json` is generated from them (feature `openapi`), and the SDK's clients
//! read them, so the three cannot drift. Grouped by topic; all re-exported here.

mod admin;
mod approvals;
mod feeds;
mod tasks;
mod tools;

pub use admin::*;
pub use approvals::*;
pub use feeds::*;
pub use tasks::*;
pub use tools::*;

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
    /// 403: the tool acts as the task's person at a provider where they have no working
    /// connection; `connect_url` says where to connect.
    ConnectionRequired,
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
            ErrorCode::ConnectionRequired => "connection_required",
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
    /// For `connection_required`: the `[providers]` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// For `connection_required`: where the task's person connects an account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_url: Option<String>,
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
