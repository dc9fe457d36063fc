//! The HTTP layer: every path and layer of the API in one place (this file), the
//! connection edge, request limits, who is calling, typed bodies, OpenAPI and the
//! approver page. Nothing below this layer imports it.

mod admin;
mod approvals;
pub mod auth;
mod connections;
pub mod edge;
mod extract;
mod feeds;
pub mod limits;
mod oauth;
pub mod openapi;
pub mod pages;
mod signin;
pub mod slots;
mod tasks;
mod tools;
mod ui;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};

use crate::app::state::AppState;
use crate::error::ApiError;

/// The router of the whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    Router::new()
        .route("/healthz", get(feeds::healthz))
        .route("/.well-known/leash/keys", get(feeds::keys))
        .route("/v1/revocations", get(feeds::revocations))
        .route("/v1/audit", get(feeds::audit))
        .route("/v1/audit/checkpoints", get(feeds::audit_checkpoints))
        .route("/metrics", get(feeds::metrics))
        .route(
            "/v1/agents/{agent}/credentials",
            post(admin::agent_credential),
        )
        .route(
            "/v1/approvers/{approver}/credentials",
            post(admin::approver_credential),
        )
        .route("/v1/agents/{agent}/revoke", post(admin::revoke_agent))
        .route(
            "/v1/approvers/{approver}/revoke",
            post(admin::revoke_approver),
        )
        .route("/v1/credentials/revoke", post(admin::revoke_credential))
        .route("/v1/tokens/revoke", post(admin::revoke_token))
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/{id}/renew", post(tasks::renew))
        .route("/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/v1/tasks/{id}/revoke", post(tasks::revoke))
        .route("/v1/tasks/{id}/timeline", get(tasks::timeline))
        .route("/v1/tasks/{id}/evidence", get(tasks::evidence))
        .route("/v1/tools", get(tools::list))
        .route("/v1/tools/{tool}/call", post(tools::call))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/deny", post(approvals::deny))
        .route("/v1/events", get(approvals::events))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/signin", get(signin::form).post(signin::submit))
        .route("/signout", post(signin::sign_out))
        .route("/signin/oidc", get(signin::oidc_start))
        .route("/signin/oidc/callback", get(signin::oidc_callback))
        .route("/v1/session", get(signin::current))
        .route("/connections", get(connections::page))
        .route("/connections/callback", get(connections::callback))
        .route(
            "/connections/{provider}/connect",
            post(connections::connect),
        )
        .route(
            "/connections/{id}/disconnect",
            post(connections::disconnect),
        )
        .route("/v1/connections", get(connections::list))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .route("/oauth/register", post(oauth::register))
        .route(
            "/oauth/authorize",
            get(oauth::authorize).post(oauth::decide),
        )
        .route("/oauth/authorize/pending", get(oauth::pending))
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/revoke", post(oauth::revoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost: bodies above the limit are refused (`RawBody` by `BodyLimit`, having
        // read on, within bounds, so the client reads its 413; axum's extractors by
        // `DefaultBodyLimit`).
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(extract::BodyLimit(body_limit)))
        .with_state(state.clone())
        // The MCP gateway has its own edge (Host/Origin, bearer) and body limit.
        .merge(crate::mcp::routes(state.clone()))
        // Long-polls and event streams hold a slot of their address's share.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::long_poll_slots,
        ))
        // Outermost of all: head size, body deadline, failed-authentication throttle.
        .layer(axum::middleware::from_fn_with_state(state, limits::guard))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such path: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
