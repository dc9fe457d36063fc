//! Leash as the OAuth 2.1 authorization server of its own `/mcp` (MCP authorization):
//! an OAuth grant *is* a task. A person signs in, the consent page asks for the task
//! (purpose, tools within their grant, window), and the access token is the task token
//! bound to the `/mcp` resource — so revoking the task ends the client's access.
//!
//! - [`error`]: OAuth's error format (RFC 6749 §5.2), kept apart from the API's;
//! - [`clients`]: client registration (RFC 7591) and redirect URI rules (RFC 8252);
//! - [`documents`]: client ID metadata documents (URL client ids), fetched SSRF-fenced;
//! - [`server`]: authorization requests, consent, codes with PKCE, the token endpoint
//!   with refresh rotation, and revocation (RFC 7009).

pub mod clients;
pub mod documents;
pub mod error;
pub mod server;
