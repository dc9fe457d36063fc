//! Durable state behind one trait: tasks, issued token ids, the revocation feed,
//! credentials, call counters and the audit chain.
//!
//! This file only declares the modules and re-exports what callers use, so the files
//! inside the folder import each other directly and never through here:
//! - `api`: the [`Store`] trait and its records;
//! - `sql` (and `sql_writes`): its one implementation, every statement written once,
//!   over a `dialect` that says what SQLite (`sqlite`) and PostgreSQL (`postgres`) do
//!   differently: transactions, locks, notifications, schema;
//! - `identity_api` and `identity`: people, web sessions, OAuth clients and grants
//!   ([`IdentityStore`]) and their SQL;
//! - `connections_api` and `connections`: people's upstream connections and the tokens
//!   tasks got from them ([`ConnectionStore`]);
//! - [`chain`]: the audit hash chain;
//! - `rows`: reading rows into records.

mod api;
pub mod chain;
mod connections;
mod connections_api;
mod dialect;
mod failure;
mod identity;
mod identity_api;
mod multirow;
mod postgres;
mod rows;
mod sql;
mod sql_writes;
mod sqlite;
#[cfg(test)]
mod suite;

pub use api::{
    Activation, ApprovalKind, ApprovalRecord, ApprovalState, AuditCheckpoint, AuditRow, Decided,
    NewAuditEvent, NewTask, PruneRecord, Pruned, Revocation, Store, StoreError, StoreResult,
    TaskQuery, TaskRecord, TaskState, ToolPin, UsageBatch,
};
pub use connections_api::{ConnectionRecord, ConnectionStore, Refreshed, TaskUpstreamToken};
pub use identity_api::{
    IdentityStore, OAuthClient, OAuthGrant, Redeemed, Rotated, UserRecord, WebSession,
};
pub use postgres::{PgStore, is_schema_name};
pub use sql::SqlStore;
pub use sqlite::SqliteStore;
