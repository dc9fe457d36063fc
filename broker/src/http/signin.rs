//! `GET/POST /signin` and `POST /signout`: people sign in with a local account and get a
//! session cookie; every form carries a CSRF token. After sign-in the browser goes back
//! to `next` — only ever a path on this broker, so the sign-in page cannot be used to
//! bounce a person to another site.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use leash_sdk::protocol::PageSession;
use serde::Deserialize;

use crate::accounts::oidc::{Callback, LOGIN_MS, OIDC_COOKIE, OidcFailure, OidcSignIn};
use crate::accounts::passwords::{Accounts, SignInFailure};
use crate::accounts::sessions::{CSRF_COOKIE, Sessions, same_token};
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::http::pages;
use crate::mcp::guard::public_url;

/// The client's address (for throttling and the audit), or `unknown`.
pub struct ClientAddress(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string()),
        ))
    }
}

/// Where to go after signing in: a path on this broker, else `/ui`. Browsers drop tabs
/// and newlines from URLs and read `\\` as `/`, so a path holding any control character
/// or backslash is refused outright, and what is left must resolve to this origin.
pub fn safe_next(next: Option<&str>) -> String {
    let local = |path: &str| {
        path.starts_with('/')
            && !path.starts_with("//")
            && path.len() <= 4096
            && !path.chars().any(|c| c.is_control() || c == '\\')
            && reqwest::Url::parse("http://leash.invalid/")
                .and_then(|base| base.join(path))
                .is_ok_and(|url| url.host_str() == Some("leash.invalid"))
    };
    match next {
        Some(path) if local(path) => path.to_string(),
        _ => "/ui".to_string(),
    }
}

/// A 303 to `location`, setting `cookies`.
pub fn see_other(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `GET /v1/session`: the signed-in person of this browser (401 when nobody is), with
/// the CSRF token the approver page sends back on every change.
pub async fn current(
    State(sessions): State<Arc<Sessions>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = sessions
        .current(&headers)
        .await
        .ok_or_else(|| ApiError::Unauthenticated("nobody is signed in to this browser".into()))?;
    // Only this origin's scripts can read it (Leash sends no CORS headers); never cached.
    let mut answer = Json(PageSession {
        user: session.user,
        approver: session.approver,
        csrf: session.csrf,
    })
    .into_response();
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// `?next=`.
#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn provider_name(oidc: &Option<Arc<OidcSignIn>>) -> Option<String> {
    oidc.as_ref().map(|o| o.provider_name())
}

/// `GET /signin`: the form (or, already signed in, straight on).
pub async fn form(
    State(sessions): State<Arc<Sessions>>,
    State(oidc): State<Option<Arc<OidcSignIn>>>,
    Query(query): Query<NextQuery>,
    headers: HeaderMap,
) -> Response {
    let next = safe_next(query.next.as_deref());
    if let Some(session) = sessions.current(&headers).await {
        return if query.next.is_some() {
            see_other(&next, &[])
        } else {
            pages::signed_in(&session.user, &session.csrf)
        };
    }
    let (csrf, csrf_cookie) = sessions.login_csrf();
    let provider = provider_name(&oidc);
    with_cookie(
        pages::sign_in(StatusCode::OK, &next, &csrf, None, provider.as_deref()),
        &csrf_cookie,
    )
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    csrf: String,
}

/// `POST /signin`.
pub async fn submit(
    State(accounts): State<Arc<Accounts>>,
    State(sessions): State<Arc<Sessions>>,
    State(oidc): State<Option<Arc<OidcSignIn>>>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let provider = provider_name(&oidc);
    let again = |status: StatusCode, message: &str| {
        let (csrf, csrf_cookie) = sessions.login_csrf();
        with_cookie(
            pages::sign_in(status, &next, &csrf, Some(message), provider.as_deref()),
            &csrf_cookie,
        )
    };
    if !sessions
        .cookie(&headers, CSRF_COOKIE)
        .is_some_and(|expected| same_token(&form.csrf, expected))
    {
        return again(
            StatusCode::FORBIDDEN,
            "The form expired or came from another site; please sign in again.",
        );
    }
    match accounts
        .check(form.username.trim(), &form.password, &address)
        .await
    {
        Ok(signed) => match sessions
            .start(&signed.user, signed.approver, &signed.groups)
            .await
        {
            Ok(started) => see_other(
                &next,
                &[started.cookie, sessions.set_cookie(CSRF_COOKIE, "", 0)],
            ),
            Err(err) => {
                tracing::error!("starting a session: {err}");
                again(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The broker cannot sign you in right now; try again.",
                )
            }
        },
        Err(SignInFailure::Wrong) => {
            again(StatusCode::UNAUTHORIZED, "Wrong user name or password.")
        }
        Err(SignInFailure::Throttled(wait)) => {
            let mut response = again(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed attempts; try again in {wait} seconds."),
            );
            if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Err(SignInFailure::Unavailable) => again(
            StatusCode::SERVICE_UNAVAILABLE,
            "The broker cannot sign you in right now; try again.",
        ),
    }
}

/// `GET /signin/oidc?next=…`: off to the OpenID provider.
pub async fn oidc_start(
    State(config): State<Arc<ServeConfig>>,
    State(sessions): State<Arc<Sessions>>,
    State(oidc): State<Option<Arc<OidcSignIn>>>,
    Query(query): Query<NextQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(oidc) = oidc else {
        return no_provider();
    };
    let base = match public_url(&config, &headers) {
        Ok(base) => base,
        Err(err) => return pages::error(StatusCode::FORBIDDEN, &err.to_string()),
    };
    let next = safe_next(query.next.as_deref());
    match oidc
        .start(&next, &format!("{base}/signin/oidc/callback"))
        .await
    {
        Ok(started) => see_other(
            &started.location,
            &[sessions.set_cookie(OIDC_COOKIE, &started.cookie_value, LOGIN_MS / 1000)],
        ),
        Err(failure) => oidc_failure(&failure),
    }
}

fn no_provider() -> Response {
    pages::error(
        StatusCode::NOT_FOUND,
        "this broker has no OpenID provider configured ([sign_in.oidc])",
    )
}

fn oidc_failure(failure: &OidcFailure) -> Response {
    let status = match failure {
        OidcFailure::Unreachable(_) => StatusCode::BAD_GATEWAY,
        OidcFailure::Declined(_) => StatusCode::FORBIDDEN,
        OidcFailure::Refused(_) => StatusCode::BAD_REQUEST,
    };
    pages::error(status, &failure.to_string())
}

/// `GET /signin/oidc/callback`: back from the provider.
pub async fn oidc_callback(
    State(sessions): State<Arc<Sessions>>,
    State(oidc): State<Option<Arc<OidcSignIn>>>,
    ClientAddress(address): ClientAddress,
    Query(callback): Query<Callback>,
    headers: HeaderMap,
) -> Response {
    let Some(oidc) = oidc else {
        return no_provider();
    };
    // The sign-in in progress is used up either way.
    let forget = sessions.set_cookie(OIDC_COOKIE, "", 0);
    let outcome = oidc
        .finish_audited(&callback, sessions.cookie(&headers, OIDC_COOKIE), &address)
        .await;
    match outcome {
        Ok((signed, next)) => match sessions
            .start(&signed.user, signed.approver, &signed.groups)
            .await
        {
            Ok(started) => see_other(&safe_next(Some(&next)), &[started.cookie, forget]),
            Err(err) => {
                tracing::error!("starting a session: {err}");
                with_cookie(
                    pages::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The broker cannot sign you in right now; try again.",
                    ),
                    &forget,
                )
            }
        },
        Err(failure) => with_cookie(oidc_failure(&failure), &forget),
    }
}

/// The sign-out form's field.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /signout`.
pub async fn sign_out(
    State(sessions): State<Arc<Sessions>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(session) = sessions.current(&headers).await else {
        return see_other("/signin", &[]);
    };
    if !same_token(&form.csrf, &session.csrf) {
        return pages::error(
            StatusCode::FORBIDDEN,
            "The form expired or came from another site.",
        );
    }
    match sessions.end(&session).await {
        Ok(cookie) => see_other("/signin", &[cookie]),
        Err(err) => {
            tracing::error!(error = %err, "cannot end a web session");
            pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "You are still signed in: the broker could not end your session. Try again.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_broker() {
        assert_eq!(
            safe_next(Some("/oauth/authorize?x=1")),
            "/oauth/authorize?x=1"
        );
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "evil",
            "/a\r\nSet-Cookie: x=1",
            "/\t/evil.example/x",
            "/\t\\evil.example",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        // Percent-escapes stay escapes: a browser does not decode them before parsing.
        assert_eq!(safe_next(Some("/%09/x")), "/%09/x");
        assert_eq!(safe_next(None), "/ui");
    }
}
