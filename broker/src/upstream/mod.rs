//! Everything on the far side of a call: the one hardened outbound client, HTTP tools,
//! upstream MCP servers (discovery, pinning), and the catalog of callable tools.
//! Nothing here knows about tasks, tokens or HTTP handlers.

pub mod catalog;
pub mod client;
pub mod dispatch;
pub mod mcp;
pub mod pins;
pub mod provider_http;
pub mod relay;
