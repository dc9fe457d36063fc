//! End-to-end tests: the real broker (in-process on an ephemeral port, or the built
//! binary) and real upstream HTTP servers on 127.0.0.1, spoken to over HTTP.

mod common;

mod approvals;
mod attenuation;
mod audit;
mod bad_input;
mod browser;
mod interop;
mod lifecycle;
mod mcp;
mod openapi;
mod process;
mod replicas;
mod revocation;
mod sdk;
