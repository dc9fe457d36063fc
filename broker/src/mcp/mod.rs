//! The MCP gateway: Leash speaks the Model Context Protocol on both sides.
//!
//! - [`server`]: Leash as an MCP server at `POST /mcp` (Streamable HTTP, via `rmcp`),
//!   stateless, with the task token as bearer; `tools/list` shows only what the token may
//!   call and `tools/call` goes through the very same checked path as `/v1/tools/…/call`.
//! - Leash as an MCP client of each `[mcp_servers.NAME]` lives below, in
//!   [`crate::upstream::mcp`] (definitions pinned by [`crate::upstream::pins`]).
//! - [`guard`]: the HTTP edge of `/mcp` — Host/Origin validation (DNS rebinding) and the
//!   bearer check, answering 401 with RFC 9728 discovery before rmcp sees the request.

pub mod guard;
pub mod server;

use axum::Router;
use axum::routing::get;

use crate::app::state::AppState;

/// The routes of the gateway: `/mcp` and the protected-resource metadata.
pub fn routes(state: AppState) -> Router {
    let service = server::service(state.calls.clone(), &state.config);
    Router::new()
        .route_service("/mcp", service)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::require_task_token,
        ))
        .route(
            "/.well-known/oauth-protected-resource",
            get(guard::resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(guard::resource_metadata),
        )
        .with_state(state)
}
