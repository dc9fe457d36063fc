//! The one error type of the HTTP API and its single mapping to status codes.
//!
//! Every handler returns `Result<_, ApiError>`; `IntoResponse` renders
//! `{"error":{"code","message"}}` as DESIGN.md specifies. Messages are written
//! for the caller and never contain secrets (tokens are named by revocation id).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use leash_sdk::protocol::ErrorCode;
use serde_json::json;

/// An API error: its variant decides the status and `code`, its text the message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong content type, bad path or query.
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or one that is not understood as any kind of caller.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token does not parse, has a bad signature, an unknown key, or is the wrong kind.
    #[error("{0}")]
    TokenInvalid(String),
    /// The token's window has passed (or its task expired).
    #[error("{0}")]
    TokenExpired(String),
    /// The token, or the task it belongs to, was revoked.
    #[error("{0}")]
    TokenRevoked(String),
    /// The task is not active (completed, pending, denied).
    #[error("{0}")]
    TaskInactive(String),
    /// The caller is authenticated but its role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Policy refuses the request (tool not granted, ttl too long, ...).
    #[error("{0}")]
    PolicyDenied(String),
    /// A Biscuit check of the capability failed; the message names it.
    #[error("{0}")]
    CapabilityDenied(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// No such tool.
    #[error("{0}")]
    UnknownTool(String),
    /// Wrong HTTP method on a known path.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The request body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request line and headers are larger than allowed (431).
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The client did not send its body in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// The arguments do not satisfy the tool's input schema.
    #[error("{message}")]
    InvalidArguments {
        /// Summary for humans.
        message: String,
        /// One entry per violation, with its JSON pointer.
        violations: Vec<serde_json::Value>,
    },
    /// The agent is over its rate limit (429 `budget_exhausted` with `Retry-After`).
    #[error("{message}")]
    RateLimited {
        /// What the limit is.
        message: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The tool acts as the task's person at a provider where they have no working
    /// connection (403 `connection_required`, with the URL to connect).
    #[error("{message}")]
    ConnectionRequired {
        /// What is missing, for people.
        message: String,
        /// The `[providers]` entry.
        provider: String,
        /// Where the person connects (a path until [`ApiError::with_base`] makes it
        /// absolute).
        connect_url: String,
    },
    /// A call budget (the grant's, the task's or a token's) is used up.
    #[error("{0}")]
    BudgetExhausted(String),
    /// The upstream failed or answered something unusable.
    #[error("{0}")]
    UpstreamError(String),
    /// The upstream did not answer in time.
    #[error("{0}")]
    UpstreamTimeout(String),
    /// This replica cannot vouch for its view of revocations right now. Fails closed.
    #[error("{0}")]
    Unavailable(String),
    /// The broker could not do its part (store unreachable, ...). Fails closed.
    /// Details are logged; the caller sees a generic message.
    #[error(
        "the broker's store failed, so the request was refused (Leash fails closed); try again"
    )]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The HTTP status and the stable code of this error (the SDK's shared enum).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let (status, code) = self.status_and_error_code();
        (status, code.as_str())
    }

    /// The HTTP status and the code as the protocol's enum.
    pub fn status_and_error_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated),
            ApiError::TokenInvalid(_) => (StatusCode::UNAUTHORIZED, ErrorCode::TokenInvalid),
            ApiError::TokenExpired(_) => (StatusCode::UNAUTHORIZED, ErrorCode::TokenExpired),
            ApiError::TokenRevoked(_) => (StatusCode::UNAUTHORIZED, ErrorCode::TokenRevoked),
            ApiError::TaskInactive(_) => (StatusCode::UNAUTHORIZED, ErrorCode::TaskInactive),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::PolicyDenied(_) => (StatusCode::FORBIDDEN, ErrorCode::PolicyDenied),
            ApiError::CapabilityDenied(_) => (StatusCode::FORBIDDEN, ErrorCode::CapabilityDenied),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::UnknownTool(_) => (StatusCode::NOT_FOUND, ErrorCode::UnknownTool),
            ApiError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest)
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
            ),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::BadRequest),
            ApiError::InvalidArguments { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidArguments,
            ),
            ApiError::BudgetExhausted(_) | ApiError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::BudgetExhausted)
            }
            ApiError::ConnectionRequired { .. } => {
                (StatusCode::FORBIDDEN, ErrorCode::ConnectionRequired)
            }
            ApiError::UpstreamError(_) => (StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError),
            ApiError::UpstreamTimeout(_) => {
                (StatusCode::GATEWAY_TIMEOUT, ErrorCode::UpstreamTimeout)
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::Internal(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        }
    }

    /// This error with a relative `connect_url` made absolute under `base` (the broker's
    /// public URL).
    pub fn with_base(self, base: &str) -> Self {
        match self {
            ApiError::ConnectionRequired {
                message,
                provider,
                connect_url,
            } if connect_url.starts_with('/') => ApiError::ConnectionRequired {
                message,
                provider,
                connect_url: format!("{}{connect_url}", base.trim_end_matches('/')),
            },
            other => other,
        }
    }

    /// Shorthand for an internal failure from any error.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = %format!("{err:#}"), "request failed inside the broker");
        }
        let mut error = json!({ "code": code, "message": self.to_string() });
        if let ApiError::InvalidArguments { violations, .. } = &self {
            error["violations"] = json!(violations);
        }
        if let ApiError::ConnectionRequired {
            provider,
            connect_url,
            ..
        } = &self
        {
            error["provider"] = json!(provider);
            error["connect_url"] = json!(connect_url);
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // For the edge's logging (routes::limits), which does not read bodies.
        response
            .extensions_mut()
            .insert(self.status_and_error_code().1);
        response
    }
}

/// Result type of every handler.
pub type ApiResult<T> = Result<T, ApiError>;
