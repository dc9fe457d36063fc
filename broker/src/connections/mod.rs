//! People's accounts at upstream OAuth providers (`[providers]`) and the access tokens
//! calls carry to tools with `upstream_auth`:
//! - `provider`: Leash as the OAuth client of one provider (code + PKCE, refresh,
//!   RFC 7009, RFC 8693, client credentials, discovery);
//! - `service`: [`Connections`] — connect, disconnect, the token of each call (single
//!   refresh in flight, per-task narrowed tokens) and their revocation when tasks end.

pub mod provider;
pub mod service;

pub use service::Connections;
