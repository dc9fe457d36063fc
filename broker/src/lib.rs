#![deny(missing_docs)]
//! Leash: a tool-access broker for AI agents.
//!
//! Agents get task-bound Biscuit capabilities; every tool call crosses the broker, which
//! checks the token, validates the arguments, injects upstream credentials and forwards
//! the call; ending a task revokes every token of it at once.
//!
//! Map of the crate (see also ARCHITECTURE.md):
//! - [`config`] the command line; [`server`] assembles and runs a broker; [`edge`] accepts
//!   connections (cap, TLS handshake, header limits, slow-client timeouts); [`tls`] reads
//!   the server certificate and the CA bundle;
//! - [`policy`] loads and checks policy files; [`schema`] compiles input schemas;
//! - [`keys`] and [`datadir`] own root keys and the data folder;
//! - [`mint`] is the only place that writes issuance Datalog; [`verify`] reads tokens;
//!   [`authorize`] is the pure call decision (over `leash_sdk::capability`);
//! - [`tasks`] holds live task state and counters; [`revocation`] the revoked-id set;
//! - [`catalog`] every callable tool (policy HTTP tools + discovered MCP tools); [`mcp`] the MCP gateway;
//! - [`calls`] is the checked call path; [`proxy`] the only code that talks upstream;
//! - [`approvals`] human decisions; [`events`] the event hub; [`webhook`] notifications;
//! - [`issue`] mints a task's token; [`store`] is durable state (SQLite or PostgreSQL);
//!   [`seal`] seals the secrets it keeps; [`audit`] the hash-chained log;
//!   [`checkpoint`] its signed checkpoints (truncation shows);
//! - [`slots`] per-address caps (connections, long-polls); [`ratelimit`] token buckets;
//!   [`logging`] scrubs secrets from every log line;
//! - [`metrics`] the `/metrics` registry; [`routes`] every HTTP path; [`caller`] who is calling; [`error`] the one error type.

pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datadir;
pub mod error;
pub mod events;
pub mod http;
pub mod ids;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod replica;
pub mod store;
pub mod tasks;
pub mod tls;
pub mod tokens;
pub mod upstream;

pub use app::{AppState, ServeConfig, prepare, run};
