#![deny(missing_docs)]
//! Leash: a tool-access broker for AI agents.
//!
//! Agents get task-bound Biscuit capabilities; every tool call crosses the broker, which
//! checks the token, validates the arguments, injects upstream credentials and forwards
//! the call; ending a task revokes every token of it at once.
//!
//! Map of the crate, top to bottom (calls go down; see ARCHITECTURE.md):
//! - [`cli`] the command line; [`app`] assembles a broker ([`prepare`]) and runs it
//!   ([`run()`]) with a [`config::ServeConfig`];
//! - [`http`] every path and layer (edge, limits, authentication extractors, handlers,
//!   OpenAPI, the approver page); [`mcp`] the inbound MCP gateway;
//! - [`tasks`] the domain: the checked call, task lifecycle, issuance, approvals;
//!   [`oauth`] the authorization server of `/mcp` (an OAuth grant is a task);
//!   [`accounts`] local accounts and web sessions;
//! - [`tokens`] mint, verify, authorize, keys, revoked ids, sealing;
//! - [`upstream`] the one outbound client, HTTP tools and MCP servers, pins, the catalog;
//! - [`audit`] the hash-chained log and its signed checkpoints; [`events`] the event hub
//!   and webhook; [`replica`] the PostgreSQL change feed and health;
//! - [`store`] durable state, SQLite or PostgreSQL, one SQL text per operation;
//!   [`policy`] policy files;
//! - leaves: [`clock`], [`error`] (the one error type), [`ids`], [`text`], [`datadir`], [`tls`],
//!   [`metrics`], [`ratelimit`], [`logging`].

pub mod accounts;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod datadir;
pub mod error;
pub mod events;
pub mod http;
pub mod ids;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod ratelimit;
pub mod replica;
pub mod store;
pub mod tasks;
pub mod text;
pub mod tls;
pub mod tokens;
pub mod upstream;

pub use app::{AppState, ServeConfig, prepare, run};
