//! The HTTP edge of `/mcp`: Host and Origin must name this broker (a DNS-rebinding page
//! cannot reach it from a browser), and the bearer must be an active task token.
//! Refusals are plain HTTP: 401 carries `WWW-Authenticate` pointing at the RFC 9728
//! metadata, so MCP clients can discover how to authenticate.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use leash_sdk::protocol::ResourceMetadata;

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::http::auth::Authenticator;
use crate::tasks::calls::Calls;

/// The host names `/mcp` answers to: loopback names, the listen address, and
/// `LEASH_MCP_ALLOWED_HOSTS`.
pub fn allowed_hosts(config: &ServeConfig) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let listen = config.listen.ip().to_string();
    if !config.listen.ip().is_unspecified() && !hosts.contains(&listen) {
        hosts.push(listen);
    }
    hosts.extend(config.mcp_allowed_hosts.iter().cloned());
    hosts
}

/// The host of a `Host` header value, without port or IPv6 brackets, lowercased.
pub fn host_only(value: &str) -> String {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        value.rsplit_once(':').map_or(value, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                value
            }
        })
    };
    host.to_ascii_lowercase()
}

/// Refuses a request whose Host or Origin is not this broker's.
pub fn check_host_and_origin(
    config: &ServeConfig,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let forbidden = |why: &str| ApiError::Forbidden(why.to_string());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| forbidden("a Host header is required"))?;
    let allowed = allowed_hosts(config);
    if !allowed.contains(&host_only(host)) {
        return Err(forbidden("the Host header does not name this broker"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .map(host_only);
        if !origin_host.is_some_and(|h| allowed.contains(&h)) {
            return Err(forbidden("the Origin is not allowed to call this broker"));
        }
    }
    Ok(host.to_string())
}

fn unauthorized(host: &str, err: ApiError) -> Response {
    let mut response = err.into_response();
    let challenge = format!(
        "Bearer resource_metadata=\"http://{host}/.well-known/oauth-protected-resource\", error=\"invalid_token\""
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Middleware of `/mcp`: Host/Origin, then an *active* task token; the verified token is
/// put in the request extensions for the MCP handler. A revoked or completed task ends
/// the MCP session: every later request is 401.
pub async fn require_task_token(
    State(config): State<Arc<ServeConfig>>,
    State(calls): State<Arc<Calls>>,
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    let host = match check_host_and_origin(&config, request.headers()) {
        Ok(host) => host,
        Err(refused) => return refused.into_response(),
    };
    let token = match auth.task_token(request.headers()) {
        Ok(token) => token,
        Err(err) => return unauthorized(&host, err),
    };
    if let Err(err) = calls.active_task(token.clone()).await {
        let (status, _) = err.status_and_code();
        return if status == StatusCode::UNAUTHORIZED {
            unauthorized(&host, err)
        } else {
            err.into_response()
        };
    }
    request.extensions_mut().insert(token);
    next.run(request).await
}

/// `GET /.well-known/oauth-protected-resource`: RFC 9728 metadata naming Leash. Task
/// tokens come from Leash's own task API (`POST /v1/tasks`), not from an OAuth server.
pub async fn resource_metadata(
    State(config): State<Arc<ServeConfig>>,
    headers: HeaderMap,
) -> Response {
    let host = match check_host_and_origin(&config, &headers) {
        Ok(host) => host,
        Err(refused) => return refused.into_response(),
    };
    Json(ResourceMetadata {
        resource: format!("http://{host}/mcp"),
        resource_name: "Leash".into(),
        authorization_servers: Vec::new(),
        bearer_methods_supported: vec!["header".into()],
        resource_documentation: format!("http://{host}/ui"),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::host_only;

    #[test]
    fn hosts_are_compared_without_ports() {
        assert_eq!(host_only("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_only("[::1]:7070"), "::1");
        assert_eq!(host_only("LocalHost"), "localhost");
        assert_eq!(host_only("evil.example:80"), "evil.example");
    }
}
