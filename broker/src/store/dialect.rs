//! What SQLite and PostgreSQL do differently, as a few hooks: every statement of the
//! store is written once (`sql`), and only how writers are serialised, how replicas are
//! told about changes and how storage is compacted differ.
//!
//! SQLite serialises writers itself: a write transaction starts with `BEGIN IMMEDIATE`,
//! so locks are no-ops there. PostgreSQL runs several replicas against one database:
//! it takes advisory and row locks and announces changes with `pg_notify`.

use std::future::Future;

use sqlx::{Database, Pool, Transaction};

use super::api::StoreResult;

/// What a writer serialises with, across replicas.
#[derive(Debug, Clone, Copy)]
pub enum Lock<'a> {
    /// One subject's credentials and the tasks it creates: an agent revoke must not
    /// miss a task created meanwhile on another replica.
    Subject {
        /// `agent`, `approver`.
        role: &'a str,
        /// Its id.
        subject: &'a str,
    },
    /// Publishing revocations: feed seqs must become visible in order.
    Revocations,
    /// Appending to the audit chain: one chain for every replica.
    Audit,
}

/// The database-specific parts of [`super::sql::SqlStore`].
pub trait Dialect: Clone + Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database;

    /// Appended to a `SELECT` that reads a row a transaction will change, where the
    /// database can lock rows (`" FOR UPDATE"`); empty where the transaction already
    /// holds the write lock.
    const FOR_UPDATE: &'static str;

    /// Whether statements may use anonymous placeholders (`?`, bound in order) rather
    /// than numbered ones (`$N`): SQLite binds them faster; PostgreSQL knows only `$N`.
    const ANONYMOUS_PARAMETERS: bool;

    /// The statements that rewrite storage so that replaced values do not linger in
    /// freed pages.
    const PURGE: &'static [&'static str];

    /// How many rows a statement changed.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// Where a statement that writes runs: `pool` (the store's pool), or a connection the
    /// dialect keeps for writes.
    fn writer<'a>(&'a self, pool: &'a Pool<Self::Db>) -> &'a Pool<Self::Db> {
        pool
    }

    /// Starts a transaction that will write (`pool` is the store's pool; a dialect may
    /// write on a connection of its own).
    fn begin_write(
        &self,
        pool: &Pool<Self::Db>,
    ) -> impl Future<Output = sqlx::Result<Transaction<'static, Self::Db>>> + Send;

    /// Serialises the rest of `tx` with every other holder of `lock` (released at its
    /// end).
    fn lock(
        &self,
        tx: &mut Transaction<'_, Self::Db>,
        lock: Lock<'_>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Tells other replicas about a change of `tx`, delivered if and when it commits.
    fn notify(
        &self,
        tx: &mut Transaction<'_, Self::Db>,
        payload: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}
