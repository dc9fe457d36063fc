//! The MCP gateway: Leash speaks the Model Context Protocol on both sides.
//!
//! - [`server`]: Leash as an MCP server at `/mcp` (Streamable HTTP, via `rmcp`), with the
//!   task token as bearer on every request (sessions for clients that initialize);
//!   `tools/list` shows only what the token may call and `tools/call` goes through the
//!   very same checked path as `/v1/tools/…/call`.
//! - Leash as an MCP client of each `[mcp_servers.NAME]` lives below, in
//!   [`crate::upstream::mcp`] (definitions pinned by [`crate::upstream::pins`]).
//! - [`guard`]: the HTTP edge of `/mcp` — Host/Origin validation (DNS rebinding) and the
//!   bearer check, answering 401 with RFC 9728 discovery before rmcp sees the request.
//! - [`sessions`]: after the guard, a session is used only with its own task's token.
//! - [`rounds`]: a stateless client's call the upstream answers with questions goes on in
//!   rounds, with Leash's sealed state in place of the upstream's.

pub mod guard;
pub mod rounds;
pub mod server;
pub mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::app::state::AppState;

/// The routes of the gateway: `/mcp` and the protected-resource metadata.
pub fn routes(state: AppState) -> Router {
    let owners = sessions::SessionOwners::new(state.policy.longest_ttl(), state.config.body_limit);
    let rounds = Arc::new(rounds::Rounds::new(
        state.sealer.clone(),
        state.calls.clock.clone(),
    ));
    let service = server::service(state.calls.clone(), &state.config, owners.clone(), rounds);
    Router::new()
        .route_service("/mcp", service)
        // Inner: a session is used only with its own task's token (after the guard).
        .route_layer(axum::middleware::from_fn(move |request, next| {
            owners.clone().check(request, next)
        }))
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
