#![deny(missing_docs)]
//! The Leash SDK: everything agents and tool servers need to work with Leash.
//!
//! - **Agents** use [`Broker`] to open a [`Task`], call tools through the broker
//!   ([`Task::call`], per-call approvals handled), renew and complete it, and hand
//!   narrower tokens to sub-agents offline ([`Task::attenuate`], [`Task::from_token`]).
//! - **Tool servers** use a [`Verifier`] (broker keys + revocation feed, fail closed
//!   when stale) and protect a route in one line with [`RequireCapability`]; both accept
//!   only capabilities the broker forwarded (signed by its forwarding key) unless the
//!   tool server opts in to raw task tokens.
//! - [`protocol`] holds the wire types the broker itself uses; [`capability`] the
//!   vocabulary (facts, policy, limits) evaluated identically on both sides.
//! - [`tls`] is the one TLS and client hardening rule (rustls + ring, platform roots plus
//!   extra CA certificates, no redirects, no environment proxies) of every client.
//!
//! Narrowing a token needs nothing but the token:
//!
//! ```
//! # use biscuit_auth::{KeyPair, Biscuit, builder::AuthorizerBuilder};
//! # let root = KeyPair::new();
//! # let token = Biscuit::builder()
//! #     .fact("task(\"tsk_1\")").unwrap().fact("agent(\"bot\")").unwrap()
//! #     .fact("tool(\"fs.read\")").unwrap().fact("tool(\"web.search\")").unwrap()
//! #     .build(&root).unwrap().to_base64().unwrap();
//! use leash_sdk::capability::{CallFacts, evaluate};
//! let child = leash_sdk::attenuate(&token, &[r#"check if arg("path", $p), $p.starts_with("/data/")"#]).unwrap();
//! let child = Biscuit::from_base64(&child, root.public()).unwrap();
//! let args = |path: &str| serde_json::json!({ "path": path }).as_object().unwrap().clone();
//! let call = |a: &serde_json::Map<String, serde_json::Value>| {
//!     evaluate(&child, &CallFacts { tool: "fs.read", args: a, now_secs: 0, counters: None, subject: leash_sdk::capability::Subject::Tool })
//! };
//! assert!(call(&args("/data/report.csv")).is_ok());
//! assert!(call(&args("/etc/passwd")).is_err());
//! ```

pub mod agent;
pub mod capability;
pub mod error;
pub mod facts;
pub mod layer;
pub mod protocol;
pub mod tls;
pub mod verifier;

pub use agent::{Broker, Task, TaskGuard};
pub use capability::attenuate;
pub use error::{Error, Result};
pub use layer::RequireCapability;
pub use protocol::TaskRequest;
pub use verifier::{VerifiedCapability, Verifier, VerifierConfig, VerifyError};
