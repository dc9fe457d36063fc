//! OAuth clients: dynamic registration (RFC 7591) of public clients, and the rules for
//! their redirect URIs. Only public clients exist (MCP clients run on people's machines
//! and hold no secret), so PKCE is what binds a code to the client that asked for it.
//!
//! A redirect URI is accepted at registration if it is `https://…`, `http://` on a
//! loopback host (RFC 8252 §7.3), or a private-use scheme (`com.example.app:/cb`,
//! RFC 8252 §7.1); never with a fragment or user info, never `javascript:`, `data:`,
//! `file:` or plain `http://` elsewhere. An authorization request's URI must equal a
//! registered one exactly — except that a loopback URI's port may differ (clients pick a
//! free port per run).

use std::sync::Arc;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::ids::random_hex;
use crate::oauth::error::OAuthError;
use crate::store::{OAuthClient, Store};

/// Most redirect URIs one client may register.
pub const MAX_REDIRECT_URIS: usize = 10;
/// Longest redirect URI.
pub const MAX_URI_BYTES: usize = 2000;
/// Longest client name (longer names are cut).
pub const MAX_NAME_CHARS: usize = 100;

/// `POST /oauth/register` (RFC 7591 §2). Fields Leash does not use are ignored.
#[derive(Debug, Deserialize)]
pub struct RegistrationRequest {
    /// Where codes may be sent.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Shown on the consent page.
    #[serde(default)]
    pub client_name: Option<String>,
    /// Must be `none` if given: only public clients.
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    /// Must be within `authorization_code` and `refresh_token` if given.
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    /// Must be `code` if given.
    #[serde(default)]
    pub response_types: Option<Vec<String>>,
}

/// The registration answer (RFC 7591 §3.2.1).
#[derive(Debug, Serialize)]
pub struct Registered {
    /// The new client id.
    pub client_id: String,
    /// When it was issued (seconds since the epoch).
    pub client_id_issued_at: i64,
    /// The name shown on consent.
    pub client_name: String,
    /// The registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Always `none`.
    pub token_endpoint_auth_method: &'static str,
    /// Always the code and refresh grants.
    pub grant_types: [&'static str; 2],
    /// Always `code`.
    pub response_types: [&'static str; 1],
}

/// A client-supplied name as shown on the consent page: trimmed, without control or
/// format characters (bidirectional overrides and isolates, zero-width characters: they
/// could make the name rewrite the text around it), at most 100 characters; `fallback`
/// when nothing is left.
pub fn display_name(name: Option<&str>, fallback: &str) -> String {
    let cleaned = crate::text::shown(name.unwrap_or(""), MAX_NAME_CHARS);
    if cleaned.is_empty() {
        fallback.to_string()
    } else {
        cleaned
    }
}

/// Why a redirect URI is refused, or `Ok` with the parsed URI.
pub fn check_redirect_uri(text: &str) -> Result<Url, String> {
    if text.len() > MAX_URI_BYTES {
        return Err("a redirect URI is longer than 2000 bytes".into());
    }
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not an absolute URI: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("{text:?} has a fragment; redirect URIs must not"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} carries user information"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{text:?} is plain http to a non-loopback host; use https, or http://127.0.0.1"
        )),
        "javascript" | "data" | "file" | "vbscript" | "about" | "blob" | "ftp" | "ws" | "wss" => {
            Err(format!("{text:?} uses a scheme that cannot be a redirect"))
        }
        // A private-use scheme (RFC 8252 §7.1): reverse domain name style.
        scheme if scheme.contains('.') => Ok(url),
        _ => Err(format!(
            "{text:?}: a private-use scheme must be a reverse domain name (com.example.app:/cb)"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Whether `asked` is one of `registered`: exactly, or a loopback `http` URI that differs
/// only in its port.
pub fn redirect_matches(registered: &[String], asked: &str) -> bool {
    if registered.iter().any(|uri| uri == asked) {
        return true;
    }
    let Ok(asked) = Url::parse(asked) else {
        return false;
    };
    if asked.scheme() != "http" || !is_loopback(&asked) {
        return false;
    }
    registered.iter().any(|uri| {
        Url::parse(uri).is_ok_and(|mut uri| {
            uri.scheme() == "http"
                && is_loopback(&uri)
                && uri.set_port(asked.port()).is_ok()
                && uri == asked
        })
    })
}

/// Registers a public client.
pub async fn register(
    store: &Arc<dyn Store>,
    clock: &Clock,
    request: RegistrationRequest,
) -> Result<Registered, OAuthError> {
    let metadata = |why: String| OAuthError::new("invalid_client_metadata", why);
    if request.redirect_uris.is_empty() || request.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::new(
            "invalid_redirect_uri",
            "redirect_uris must list 1 to 10 URIs",
        ));
    }
    for uri in &request.redirect_uris {
        check_redirect_uri(uri).map_err(|why| OAuthError::new("invalid_redirect_uri", why))?;
    }
    if let Some(method) = &request.token_endpoint_auth_method
        && method != "none"
    {
        return Err(metadata(format!(
            "token_endpoint_auth_method {method:?} is not supported: Leash registers public clients (\"none\") and binds codes with PKCE"
        )));
    }
    if let Some(grants) = &request.grant_types
        && let Some(other) = grants
            .iter()
            .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(metadata(format!("grant type {other:?} is not supported")));
    }
    if let Some(types) = &request.response_types
        && let Some(other) = types.iter().find(|t| t.as_str() != "code")
    {
        return Err(metadata(format!(
            "response type {other:?} is not supported"
        )));
    }
    let name = display_name(request.client_name.as_deref(), "an unnamed MCP client");
    let now = clock.now_ms();
    let client = OAuthClient {
        client_id: format!("lc_{}", random_hex(16)),
        client_name: name,
        redirect_uris: request.redirect_uris,
        created_at_ms: now,
    };
    store
        .insert_client(&client)
        .await
        .map_err(OAuthError::server_error)?;
    Ok(Registered {
        client_id: client.client_id,
        client_id_issued_at: now.div_euclid(1000),
        client_name: client.client_name,
        redirect_uris: client.redirect_uris,
        token_endpoint_auth_method: "none",
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_that_can_leak_a_code_are_refused() {
        for good in [
            "https://app.example.com/cb",
            "http://127.0.0.1:3000/callback",
            "http://localhost/cb",
            "http://[::1]:9/cb",
            "com.example.app:/oauth",
        ] {
            assert!(check_redirect_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "http://evil.example/cb",
            "javascript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "https://app.example.com/cb#frag",
            "https://user:pw@app.example.com/cb",
            "/relative",
            "myapp:/cb",
            "http://127.0.0.1.evil.example/cb",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_client_name_cannot_reorder_the_text_around_it() {
        assert_eq!(display_name(Some("Bank\u{202e}"), "x"), "Bank");
        assert_eq!(
            display_name(Some(" \u{2066}Ev\u{200b}il\u{2069} "), "x"),
            "Evil"
        );
        assert_eq!(display_name(Some("\u{202e}\n"), "unnamed"), "unnamed");
        assert_eq!(display_name(None, "unnamed"), "unnamed");
        assert_eq!(display_name(Some(&"a".repeat(500)), "x").len(), 100);
    }

    #[test]
    fn only_a_loopback_port_may_differ() {
        let registered = vec![
            "http://127.0.0.1:3000/callback".to_string(),
            "https://app.example.com/cb".to_string(),
        ];
        assert!(redirect_matches(
            &registered,
            "http://127.0.0.1:3000/callback"
        ));
        assert!(redirect_matches(
            &registered,
            "http://127.0.0.1:49152/callback"
        ));
        assert!(!redirect_matches(
            &registered,
            "http://127.0.0.1:49152/other"
        ));
        assert!(!redirect_matches(
            &registered,
            "http://localhost:3000/callback"
        ));
        assert!(redirect_matches(&registered, "https://app.example.com/cb"));
        assert!(!redirect_matches(
            &registered,
            "https://app.example.com:8443/cb"
        ));
        assert!(!redirect_matches(
            &registered,
            "https://app.example.com/cb?x=1"
        ));
        assert!(!redirect_matches(&registered, "https://evil.example/cb"));
    }
}
