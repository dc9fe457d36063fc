//! `/connections`: a signed-in person connects, sees and disconnects their accounts at
//! the upstream providers (`[providers]`); `GET /v1/connections` is the same list as
//! JSON. Every change is a POST carrying the session's CSRF token; the provider's answer
//! comes back to `/connections/callback`, which only the browser and person that started
//! the connect can finish.

use std::sync::Arc;

use axum::Form;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::accounts::sessions::{Sessions, same_token};
use crate::config::ServeConfig;
use crate::connections::Connections;
use crate::connections::service::{
    CALLBACK_PATH, CONNECT_COOKIE, CONNECT_MS, Callback, ConnectFailure,
};
use crate::error::ApiError;
use crate::http::pages;
use crate::http::signin::see_other;
use crate::mcp::guard::public_url;
use crate::store::WebSession;

/// `?connect=PROVIDER`: the provider a refused call pointed the person to.
#[derive(Deserialize)]
pub struct ListQuery {
    connect: Option<String>,
}

/// A form's CSRF field.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The signed-in session, or the sign-in page that comes back to `next`.
async fn signed_in(
    sessions: &Sessions,
    headers: &HeaderMap,
    next: &str,
) -> Result<WebSession, Response> {
    match sessions.current(headers).await {
        Some(session) => Ok(session),
        None => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("next", next);
            Err(see_other(&format!("/signin?{}", query.finish()), &[]))
        }
    }
}

/// The signed-in session of a form that changes something: its CSRF token must be the
/// session's, else the change is refused (or, signed out, the sign-in page).
async fn changing(
    sessions: &Sessions,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<WebSession, Response> {
    let session = signed_in(sessions, headers, "/connections").await?;
    if !same_token(&form.csrf, &session.csrf) {
        return Err(pages::error(
            StatusCode::FORBIDDEN,
            "The form expired or came from another site.",
        ));
    }
    Ok(session)
}

/// `GET /connections`: the person's accounts (sign in first).
pub async fn page(
    State(sessions): State<Arc<Sessions>>,
    State(connections): State<Arc<Connections>>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(query)) = query else {
        return pages::error(StatusCode::BAD_REQUEST, "That is not a valid address.");
    };
    let next = match &query.connect {
        Some(provider) => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("connect", provider);
            format!("/connections?{}", q.finish())
        }
        None => "/connections".to_string(),
    };
    let session = match signed_in(&sessions, &headers, &next).await {
        Ok(session) => session,
        Err(to_sign_in) => return to_sign_in,
    };
    match connections.list(&session.user).await {
        Ok(list) => pages::connections(
            &session.user,
            &session.csrf,
            &list,
            query.connect.as_deref(),
            &connections.form_origins().await,
        ),
        Err(err) => unavailable(&err),
    }
}

fn unavailable(err: &ApiError) -> Response {
    tracing::error!(error = %err, "listing connections");
    pages::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The broker cannot show your connections right now; try again.",
    )
}

/// `GET /v1/connections`: the same list as JSON, for the signed-in person.
pub async fn list(
    State(sessions): State<Arc<Sessions>>,
    State(connections): State<Arc<Connections>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = sessions
        .current(&headers)
        .await
        .ok_or_else(|| ApiError::Unauthenticated("nobody is signed in to this browser".into()))?;
    let list = connections.list(&session.user).await?;
    let mut answer =
        Json(serde_json::json!({ "user": session.user, "providers": list })).into_response();
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// `POST /connections/{provider}/connect`: off to the provider.
pub async fn connect(
    State(config): State<Arc<ServeConfig>>,
    State(sessions): State<Arc<Sessions>>,
    State(connections): State<Arc<Connections>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match changing(&sessions, &headers, &form).await {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    let base = match public_url(&config, &headers) {
        Ok(base) => base,
        Err(err) => return pages::error(StatusCode::FORBIDDEN, &err.to_string()),
    };
    match connections
        .start(&session.user, &provider, &format!("{base}{CALLBACK_PATH}"))
        .await
    {
        Ok(started) => see_other(
            &started.location,
            &[sessions.set_cookie(CONNECT_COOKIE, &started.cookie_value, CONNECT_MS / 1000)],
        ),
        Err(failure) => failed(&failure),
    }
}

fn failed(failure: &ConnectFailure) -> Response {
    let status = match failure {
        ConnectFailure::UnknownProvider(_) => StatusCode::NOT_FOUND,
        ConnectFailure::Unreachable(_) => StatusCode::BAD_GATEWAY,
        ConnectFailure::Declined(_) => StatusCode::FORBIDDEN,
        ConnectFailure::Refused(_) => StatusCode::BAD_REQUEST,
        ConnectFailure::Store(err) => {
            tracing::error!(error = %format!("{err:#}"), "storing a connection");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    pages::error(status, &failure.to_string())
}

/// `GET /connections/callback`: back from the provider.
pub async fn callback(
    State(sessions): State<Arc<Sessions>>,
    State(connections): State<Arc<Connections>>,
    callback: Result<Query<Callback>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(callback)) = callback else {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "The provider's answer is not a valid callback (a parameter is missing or repeated).",
        );
    };
    // The connect in progress is used up either way.
    let forget = sessions.set_cookie(CONNECT_COOKIE, "", 0);
    let Some(session) = sessions.current(&headers).await else {
        let mut page = pages::error(
            StatusCode::UNAUTHORIZED,
            "You are not signed in to Leash in this browser; sign in and connect again from /connections.",
        );
        if let Ok(value) = HeaderValue::from_str(&forget) {
            page.headers_mut().append(header::SET_COOKIE, value);
        }
        return page;
    };
    let outcome = connections
        .finish(
            &session.user,
            &callback,
            sessions.cookie(&headers, CONNECT_COOKIE),
        )
        .await;
    let mut response = match outcome {
        Ok(_) => see_other("/connections", &[]),
        Err(failure) => failed(&failure),
    };
    if let Ok(value) = HeaderValue::from_str(&forget) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `POST /connections/{id}/disconnect`: forget it, and revoke it at the provider.
pub async fn disconnect(
    State(sessions): State<Arc<Sessions>>,
    State(connections): State<Arc<Connections>>,
    Path(connection_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match changing(&sessions, &headers, &form).await {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    match connections.disconnect(&session.user, &connection_id).await {
        Ok(true) => see_other("/connections", &[]),
        Ok(false) => pages::error(StatusCode::NOT_FOUND, "You have no such connection."),
        Err(err) => unavailable(&err),
    }
}
