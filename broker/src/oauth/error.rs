//! OAuth's own error format: `{"error": "<code>", "error_description": "…"}` with 400 (401
//! for `invalid_client`) and `Cache-Control: no-store` (RFC 6749 §5.2, RFC 7591 §3.2.2).
//! The API's `{"error": {"code", "message"}}` is never used on OAuth endpoints.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An OAuth error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The registered error code (`invalid_request`, `invalid_grant`, …).
    pub error: &'static str,
    /// What was wrong, for the developer of the client.
    pub description: String,
}

impl OAuthError {
    /// An error with `code` and `description`.
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            error,
            description: description.into(),
        }
    }

    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    /// `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }

    /// `server_error` (the store failed); the details stay in the log.
    pub fn server_error(err: impl std::fmt::Display) -> Self {
        tracing::error!("oauth: {err}");
        Self::new(
            "server_error",
            "the broker could not complete the request; try again",
        )
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = match self.error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "temporarily_unavailable" => StatusCode::TOO_MANY_REQUESTS,
            "server_error" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response = (
            status,
            Json(Body {
                error: self.error,
                error_description: &self.description,
            }),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
