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
use crate::upstream::catalog::Catalog;

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

/// Refuses a request whose Host is not this broker's; the Host otherwise.
pub fn check_host(config: &ServeConfig, headers: &HeaderMap) -> Result<String, ApiError> {
    let forbidden = |why: &str| ApiError::Forbidden(why.to_string());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| forbidden("a Host header is required"))?;
    if !allowed_hosts(config).contains(&host_only(host)) {
        return Err(forbidden("the Host header does not name this broker"));
    }
    Ok(host.to_string())
}

/// Refuses a request whose Host or Origin is not this broker's.
pub fn check_host_and_origin(
    config: &ServeConfig,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let forbidden = |why: &str| ApiError::Forbidden(why.to_string());
    let host = check_host(config, headers)?;
    let allowed = allowed_hosts(config);
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

/// The URL clients reach this broker at: `LEASH_PUBLIC_URL`, or the scheme and the
/// (allowed) Host of this request. The OAuth issuer; `<it>/mcp` is the resource.
///
/// Only the Host is checked here, not the Origin: browsers send `Origin: null` with a
/// form posted from a page served with `Referrer-Policy: no-referrer` (Leash's sign-in
/// and consent pages), and those forms are protected by their CSRF tokens and
/// SameSite cookies. `/mcp` itself checks the Origin too ([`check_host_and_origin`]).
pub fn public_url(config: &ServeConfig, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(url) = &config.public_url {
        return Ok(url.clone());
    }
    let host = check_host(config, headers)?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{host}"))
}

/// The 401 of `/mcp`: RFC 6750's challenge with RFC 9728's `resource_metadata` and the
/// scopes a client may ask for; `error="invalid_token"` when a token was sent.
fn unauthorized(base: &str, catalog: &Catalog, sent_token: bool, err: ApiError) -> Response {
    let scope = catalog.names().join(" ");
    let mut response = err.into_response();
    let error = if sent_token {
        ", error=\"invalid_token\""
    } else {
        ""
    };
    // Every tool name is a scope; a very large catalog is left to the metadata document.
    let scope = if scope.is_empty() || scope.len() > 2048 {
        String::new()
    } else {
        format!(", scope=\"{scope}\"")
    };
    let challenge = format!(
        "Bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\"{scope}{error}"
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
    State(catalog): State<Arc<Catalog>>,
    mut request: Request,
    next: Next,
) -> Response {
    let base = match check_host_and_origin(&config, request.headers())
        .and_then(|_| public_url(&config, request.headers()))
    {
        Ok(base) => base,
        Err(refused) => return refused.into_response(),
    };
    let resource = format!("{base}/mcp");
    let sent_token = request.headers().contains_key(header::AUTHORIZATION);
    let token = match auth.task_token_at(request.headers(), Some(&resource)) {
        Ok(token) => token,
        Err(err) => return unauthorized(&base, &catalog, sent_token, err),
    };
    if let Err(err) = calls.active_task(token.clone()).await {
        let (status, _) = err.status_and_code();
        return if status == StatusCode::UNAUTHORIZED {
            unauthorized(&base, &catalog, sent_token, err)
        } else {
            err.into_response()
        };
    }
    request.extensions_mut().insert(token);
    next.run(request).await
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: RFC 9728 metadata. Leash is the
/// authorization server of its own `/mcp`: an MCP client discovers it here.
pub async fn resource_metadata(
    State(config): State<Arc<ServeConfig>>,
    State(catalog): State<Arc<Catalog>>,
    headers: HeaderMap,
) -> Response {
    let base = match public_url(&config, &headers) {
        Ok(base) => base,
        Err(refused) => return refused.into_response(),
    };
    Json(ResourceMetadata {
        resource: format!("{base}/mcp"),
        resource_name: "Leash".into(),
        authorization_servers: vec![base.clone()],
        bearer_methods_supported: vec!["header".into()],
        scopes_supported: catalog.names(),
        resource_documentation: format!("{base}/ui"),
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
