//! End-to-end tests: the real broker (in-process on an ephemeral port, or the built
//! binary) and real upstream HTTP servers on 127.0.0.1, spoken to over HTTP.

mod common;

mod approvals;
mod attenuation;
mod audit;
mod bad_input;
mod browser;
mod conformance_auth;
mod conformance_server;
mod connections;
mod evidence;
mod faults;
mod interop;
mod lifecycle;
mod limits;
mod mcp;
mod metrics;
mod oauth;
mod oauth_documents;
mod oauth_node;
mod oidc;
mod openapi;
mod process;
mod python_sdk;
mod replicas;
mod revocation;
mod sdk;
mod security;
mod tls;
