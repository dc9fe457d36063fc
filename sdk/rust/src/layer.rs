//! Protecting a tool server's route in one line:
//!
//! ```no_run
//! # async fn run() {
//! use axum::{Router, routing::post};
//! use leash_sdk::{RequireCapability, Verifier};
//! let verifier = Verifier::connect("http://127.0.0.1:7070").await.unwrap();
//! let app: Router = Router::new()
//!     .route("/search", post(|| async { "ok" }).layer(RequireCapability::new(verifier.clone(), "notes.search")));
//! # }
//! ```
//!
//! The layer reads the `Leash-Capability` header (or `Authorization: Bearer`), buffers the
//! JSON body (at most 1 MiB) to verify the call's arguments, and answers 401/403/503 with
//! `{"error":{"code","message"}}` when the capability does not hold. On success the
//! handler sees the body unchanged and a [`VerifiedCapability`] in the request extensions.
//!
//! Only the capability Leash forwarded with a call it checked passes (see
//! [`crate::verifier`]); a task token an agent sends directly is refused with 403
//! `capability_denied`, unless the route opts in with
//! [`RequireCapability::accept_raw_task_tokens`] (or the verifier's configuration does).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::{Layer, Service};

use crate::protocol::CAPABILITY_HEADER;
use crate::verifier::{VerifiedCapability, Verifier, VerifyError};

/// Largest body the layer buffers.
const MAX_BODY: usize = 1024 * 1024;

/// A layer that admits only calls carrying a valid capability for one tool.
#[derive(Clone)]
pub struct RequireCapability {
    verifier: Verifier,
    tool: String,
    accept_raw: bool,
}

impl RequireCapability {
    /// Requires a capability for `tool`, verified by `verifier`, forwarded by Leash.
    pub fn new(verifier: Verifier, tool: impl Into<String>) -> Self {
        RequireCapability {
            verifier,
            tool: tool.into(),
            accept_raw: false,
        }
    }

    /// Also admits task tokens sent directly, not through Leash. Such calls skip the
    /// broker's approvals, schema checks, budgets and audit: opt in only for a route
    /// agents may call directly on purpose.
    pub fn accept_raw_task_tokens(mut self) -> Self {
        self.accept_raw = true;
        self
    }
}

impl<S> Layer<S> for RequireCapability {
    type Service = RequireCapabilityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireCapabilityService {
            inner,
            verifier: self.verifier.clone(),
            tool: self.tool.clone(),
            accept_raw: self.accept_raw,
        }
    }
}

/// The service of [`RequireCapability`].
#[derive(Clone)]
pub struct RequireCapabilityService<S> {
    inner: S,
    verifier: Verifier,
    tool: String,
    accept_raw: bool,
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn refusal(err: &VerifyError) -> Response {
    let (status, code) = match err {
        VerifyError::Missing => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        VerifyError::Invalid(_) => (StatusCode::UNAUTHORIZED, "token_invalid"),
        VerifyError::Revoked => (StatusCode::UNAUTHORIZED, "token_revoked"),
        VerifyError::Denied(_) => (StatusCode::FORBIDDEN, "capability_denied"),
        VerifyError::BadArguments(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        VerifyError::Stale { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    refuse(status, code, err.to_string())
}

impl<S> Service<Request<Body>> for RequireCapabilityService<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let tool = self.tool.clone();
        let accept_raw = self.accept_raw || verifier.accepts_raw_task_tokens();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let token = parts
                .headers
                .get(CAPABILITY_HEADER)
                .or_else(|| parts.headers.get(header::AUTHORIZATION))
                .and_then(|v| v.to_str().ok())
                .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_string())
                .unwrap_or_default();
            let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
                Ok(bytes) => bytes,
                Err(_) => {
                    return Ok(refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "body too large".into(),
                    ));
                }
            };
            let args: Value = if bytes.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(args) => args,
                    Err(e) => {
                        return Ok(refuse(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("invalid JSON: {e}"),
                        ));
                    }
                }
            };
            let verified: VerifiedCapability = match verifier
                .verify_accepting(&token, &tool, &args, accept_raw)
                .await
            {
                Ok(verified) => verified,
                Err(err) => return Ok(refusal(&err)),
            };
            parts.extensions.insert(verified);
            inner
                .call(Request::from_parts(parts, Body::from(bytes)))
                .await
        })
    }
}
