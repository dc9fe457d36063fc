//! The OAuth endpoints of Leash's authorization server: metadata (RFC 8414), dynamic
//! registration (RFC 7591), the authorization endpoint with its sign-in redirect and
//! consent form, the token endpoint and revocation (RFC 7009). Bodies are parsed here by
//! hand (not with axum's extractors) so that every malformed request gets OAuth's error
//! format, and a parameter sent twice is refused (RFC 6749 §3.1).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::accounts::sessions::{Sessions, same_token};
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::http::pages;
use crate::http::signin::{ClientAddress, see_other};
use crate::mcp::guard::public_url;
use crate::oauth::clients::{RegistrationRequest, register as register_client};
use crate::oauth::error::OAuthError;
use crate::oauth::server::{
    Allowed, Authorization, AuthorizeParams, Consent, OAuthServer, Refusal, TokenForm,
    error_redirect,
};
use crate::store::{Store, WebSession};

/// Largest body an OAuth endpoint reads.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// RFC 8414 metadata.
#[derive(Serialize)]
pub struct ServerMetadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    registration_endpoint: String,
    revocation_endpoint: String,
    response_types_supported: [&'static str; 1],
    response_modes_supported: [&'static str; 1],
    grant_types_supported: [&'static str; 2],
    code_challenge_methods_supported: [&'static str; 1],
    token_endpoint_auth_methods_supported: [&'static str; 1],
    revocation_endpoint_auth_methods_supported: [&'static str; 1],
    scopes_supported: Vec<String>,
    authorization_response_iss_parameter_supported: bool,
    client_id_metadata_document_supported: bool,
    service_documentation: String,
}

fn page_refusal(err: ApiError) -> Response {
    let (status, _) = err.status_and_code();
    pages::error(status, &err.to_string())
}

/// `GET /.well-known/oauth-authorization-server`.
pub async fn metadata(
    State(config): State<Arc<ServeConfig>>,
    State(oauth): State<Arc<OAuthServer>>,
    headers: HeaderMap,
) -> Response {
    let base = match public_url(&config, &headers) {
        Ok(base) => base,
        Err(err) => return err.into_response(),
    };
    Json(ServerMetadata {
        authorization_endpoint: format!("{base}/oauth/authorize"),
        token_endpoint: format!("{base}/oauth/token"),
        registration_endpoint: format!("{base}/oauth/register"),
        revocation_endpoint: format!("{base}/oauth/revoke"),
        response_types_supported: ["code"],
        response_modes_supported: ["query"],
        grant_types_supported: ["authorization_code", "refresh_token"],
        code_challenge_methods_supported: ["S256"],
        token_endpoint_auth_methods_supported: ["none"],
        revocation_endpoint_auth_methods_supported: ["none"],
        scopes_supported: oauth.all_tools(),
        authorization_response_iss_parameter_supported: true,
        client_id_metadata_document_supported: true,
        service_documentation: format!("{base}/ui"),
        issuer: base,
    })
    .into_response()
}

/// `POST /oauth/register`.
pub async fn register(
    State(store): State<Arc<dyn Store>>,
    State(clock): State<Clock>,
    State(oauth): State<Arc<OAuthServer>>,
    ClientAddress(address): ClientAddress,
    body: Bytes,
) -> Response {
    if let Err(refusal) = oauth.admit_registration(&address).await {
        return refusal.into_response();
    }
    let request: RegistrationRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return OAuthError::new(
                "invalid_client_metadata",
                format!("the body is not a client metadata JSON object: {err}"),
            )
            .into_response();
        }
    };
    match register_client(&store, &clock, request).await {
        Ok(registered) => (StatusCode::CREATED, Json(registered)).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Parses a form body (or query): each name once. `Err` names the problem.
fn parse_pairs(bytes: &[u8]) -> Result<BTreeMap<String, Vec<String>>, String> {
    if bytes.len() > MAX_FORM_BYTES {
        return Err("the request is larger than 64 KiB".into());
    }
    let mut pairs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(bytes) {
        pairs
            .entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    Ok(pairs)
}

/// One value per name, except the names in `repeatable`.
fn single(
    pairs: &BTreeMap<String, Vec<String>>,
    repeatable: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, values) in pairs {
        if repeatable.contains(&name.as_str()) {
            continue;
        }
        if values.len() > 1 {
            return Err(format!("parameter {name:?} is sent more than once"));
        }
        out.insert(name.clone(), values[0].clone());
    }
    Ok(out)
}

fn authorize_params(values: &BTreeMap<String, String>) -> AuthorizeParams {
    let get = |name: &str| values.get(name).cloned();
    AuthorizeParams {
        response_type: get("response_type"),
        client_id: get("client_id"),
        redirect_uri: get("redirect_uri"),
        code_challenge: get("code_challenge"),
        code_challenge_method: get("code_challenge_method"),
        state: get("state"),
        resource: get("resource"),
        scope: get("scope"),
    }
}

/// The `form-action` source a consent answer may redirect to: the redirect URI's origin.
fn redirect_origin(redirect_uri: &str) -> Option<String> {
    let url = reqwest::Url::parse(redirect_uri).ok()?;
    match url.scheme() {
        "http" | "https" => Some(url.origin().ascii_serialization()),
        scheme => Some(format!("{scheme}:")),
    }
}

/// The refusal of an authorization request, as a page or a redirect.
fn refused(refusal: Refusal, issuer: &str) -> Response {
    match refusal {
        Refusal::Page(message) => pages::error(StatusCode::BAD_REQUEST, &message),
        Refusal::Redirect {
            redirect_uri,
            error,
            description,
            state,
        } => see_other(
            &error_redirect(&redirect_uri, error, &description, state.as_deref(), issuer),
            &[],
        ),
    }
}

/// `GET /oauth/authorize`: checks the request, sends a stranger to sign in, shows a
/// signed-in person the consent page.
pub async fn authorize(
    State(config): State<Arc<ServeConfig>>,
    State(oauth): State<Arc<OAuthServer>>,
    State(sessions): State<Arc<Sessions>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let issuer = match public_url(&config, &headers) {
        Ok(base) => base,
        Err(err) => return page_refusal(err),
    };
    let query = query.unwrap_or_default();
    let values = match parse_pairs(query.as_bytes()).and_then(|pairs| single(&pairs, &[])) {
        Ok(values) => values,
        Err(why) => return pages::error(StatusCode::BAD_REQUEST, &why),
    };
    let params = authorize_params(&values);
    let session = sessions.current(&headers).await;
    let resource = format!("{issuer}/mcp");
    let request = match oauth.check(&params, &resource).await {
        Ok(request) => request,
        Err(refusal) => return refused(refusal, &issuer),
    };
    let Some(session) = session else {
        let next = format!("/oauth/authorize?{query}");
        let mut target = reqwest::Url::parse("http://leash.invalid/signin").expect("fixed URL");
        target.query_pairs_mut().append_pair("next", &next);
        let location = format!("/signin?{}", target.query().unwrap_or(""));
        return see_other(&location, &[]);
    };
    consent_page(&oauth, &session, &request, &issuer)
}

fn consent_page(
    oauth: &OAuthServer,
    session: &WebSession,
    request: &Authorization,
    issuer: &str,
) -> Response {
    match oauth.choices(&session.user, &session.groups, request) {
        Some(choices) => pages::consent(
            &session.user,
            request,
            &choices,
            &session.csrf,
            redirect_origin(&request.redirect_uri).as_deref(),
        ),
        None => see_other(
            &error_redirect(
                &request.redirect_uri,
                "access_denied",
                "your account is granted no tools",
                request.state.as_deref(),
                issuer,
            ),
            &[],
        ),
    }
}

/// `POST /oauth/authorize`: the consent form's answer.
pub async fn decide(
    State(config): State<Arc<ServeConfig>>,
    State(oauth): State<Arc<OAuthServer>>,
    State(sessions): State<Arc<Sessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let issuer = match public_url(&config, &headers) {
        Ok(base) => base,
        Err(err) => return page_refusal(err),
    };
    let pairs = match parse_pairs(&body) {
        Ok(pairs) => pairs,
        Err(why) => return pages::error(StatusCode::BAD_REQUEST, &why),
    };
    let values = match single(&pairs, &["tools"]) {
        Ok(values) => values,
        Err(why) => return pages::error(StatusCode::BAD_REQUEST, &why),
    };
    let Some(session) = sessions.current(&headers).await else {
        return not_signed_in();
    };
    if !values
        .get("csrf")
        .is_some_and(|csrf| same_token(csrf, &session.csrf))
    {
        return pages::error(
            StatusCode::FORBIDDEN,
            "The form expired or came from another site; start again from the client.",
        );
    }
    let resource = format!("{issuer}/mcp");
    let request = match oauth.check(&authorize_params(&values), &resource).await {
        Ok(request) => request,
        Err(refusal) => return refused(refusal, &issuer),
    };
    match values.get("decision").map(String::as_str) {
        Some("deny") => return see_other(&oauth.deny(&request, &issuer), &[]),
        Some("allow") => {}
        _ => {
            return pages::error(StatusCode::BAD_REQUEST, "decision must be allow or deny");
        }
    }
    let tools = pairs.get("tools").cloned().unwrap_or_default();
    if tools.is_empty() {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Tick at least one tool, or deny the request.",
        );
    }
    let Some(ttl_seconds) = values
        .get("ttl_seconds")
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return pages::error(StatusCode::BAD_REQUEST, "choose a window");
    };
    let purpose = values.get("purpose").map(String::as_str).unwrap_or("");
    let consent = Consent {
        purpose,
        tools: &tools,
        ttl_seconds,
    };
    match oauth
        .allow(&session.user, &session.groups, &request, consent, &issuer)
        .await
    {
        Ok(Allowed::Redirect(location)) => see_other(&location, &[]),
        Ok(Allowed::Pending(task_id)) => pages::waiting(&task_id),
        Err(err) => page_refusal(err),
    }
}

/// `?task=`.
#[derive(Deserialize)]
pub struct TaskQuery {
    #[serde(default)]
    task: String,
}

/// The page for a consent step whose session is gone.
fn not_signed_in() -> Response {
    pages::error(
        StatusCode::UNAUTHORIZED,
        "You are not signed in (or your session ended); start again from the client.",
    )
}

/// `GET /oauth/authorize/pending?task=…`: after an approval wait.
pub async fn pending(
    State(config): State<Arc<ServeConfig>>,
    State(oauth): State<Arc<OAuthServer>>,
    State(sessions): State<Arc<Sessions>>,
    axum::extract::Query(query): axum::extract::Query<TaskQuery>,
    headers: HeaderMap,
) -> Response {
    let issuer = match public_url(&config, &headers) {
        Ok(base) => base,
        Err(err) => return page_refusal(err),
    };
    let Some(session) = sessions.current(&headers).await else {
        return not_signed_in();
    };
    if !crate::ids::is_task_id(&query.task) {
        return pages::error(StatusCode::BAD_REQUEST, "task must be a task id");
    }
    match oauth.resume(&session.user, &query.task, &issuer).await {
        Ok(Some(location)) => see_other(&location, &[]),
        Ok(None) => pages::waiting(&query.task),
        Err(err) => page_refusal(err),
    }
}

/// Whether the request's body is a form (the token and revocation endpoints take only
/// `application/x-www-form-urlencoded`).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn form_values(headers: &HeaderMap, body: &[u8]) -> Result<BTreeMap<String, String>, OAuthError> {
    if !is_form(headers) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    parse_pairs(body)
        .and_then(|pairs| single(&pairs, &[]))
        .map_err(OAuthError::invalid_request)
}

/// `POST /oauth/token`.
pub async fn token(
    State(oauth): State<Arc<OAuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let values = match form_values(&headers, &body) {
        Ok(values) => values,
        Err(err) => return err.into_response(),
    };
    let get = |name: &str| values.get(name).cloned();
    let form = TokenForm {
        grant_type: get("grant_type"),
        code: get("code"),
        redirect_uri: get("redirect_uri"),
        client_id: get("client_id"),
        code_verifier: get("code_verifier"),
        refresh_token: get("refresh_token"),
        resource: get("resource"),
        scope: get("scope"),
    };
    match oauth.token(&form).await {
        Ok(answer) => {
            let mut response = Json(answer).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            headers.insert(
                header::PRAGMA,
                axum::http::HeaderValue::from_static("no-cache"),
            );
            response
        }
        Err(err) => err.into_response(),
    }
}

/// `POST /oauth/revoke` (RFC 7009): 200 whether or not the token was known.
pub async fn revoke(
    State(oauth): State<Arc<OAuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let values = match form_values(&headers, &body) {
        Ok(values) => values,
        Err(err) => return err.into_response(),
    };
    let Some(token) = values.get("token").filter(|t| !t.is_empty()) else {
        return OAuthError::invalid_request("token is required").into_response();
    };
    match oauth.revoke(token).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(),
    }
}
