//! The embedded store: one SQLite file (WAL, synchronous=FULL) in the data folder.
//!
//! Only what is SQLite's own lives here: the schema, opening the file, and the dialect
//! hooks; the statements are shared with PostgreSQL (`sql`). SQLite has one writer at a
//! time: every write transaction starts with `BEGIN IMMEDIATE`, so it needs no other
//! lock, and with one process there is nobody to notify.
//!
//! Every write (each transaction and each single statement that writes) takes its turn
//! on one connection of its own. Writers then wait in the pool's queue (woken the moment
//! the last one commits) rather than in SQLite's busy handler (which sleeps up to 100 ms
//! between tries), and that connection's page cache stays valid from one transaction to
//! the next: SQLite drops a connection's cache whenever another connection has written,
//! and re-reading the pages was a tenth of a task mint's profile.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{Pool, Sqlite, Transaction};

use super::api::StoreResult;
use super::dialect::{Dialect, Lock};
use super::sql::SqlStore;

/// The revocation feed's columns: the schema's, and those of the one-time rebuild
/// (`drop_unique_revocation_ids`).
macro_rules! revocations_columns {
    () => {
        "(seq INTEGER PRIMARY KEY AUTOINCREMENT,
          revocation_id TEXT NOT NULL,
          task_id TEXT,
          reason TEXT NOT NULL,
          at_ms INTEGER NOT NULL,
          expires_at_ms INTEGER)"
    };
}

/// The schema; every statement is idempotent.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        purpose TEXT NOT NULL,
        tools TEXT NOT NULL,
        checks TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        idle_timeout_ms INTEGER,
        max_calls INTEGER,
        calls INTEGER NOT NULL DEFAULT 0,
        last_activity_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        end_reason TEXT,
        token TEXT)",
    "CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, created_at_ms)",
    "CREATE INDEX IF NOT EXISTS tasks_by_agent ON tasks(agent, state)",
    "CREATE TABLE IF NOT EXISTS task_tokens (
        revocation_id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS task_tokens_by_task ON task_tokens(task_id)",
    "CREATE TABLE IF NOT EXISTS credentials (
        revocation_id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        subject TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER)",
    "CREATE INDEX IF NOT EXISTS credentials_by_subject ON credentials(role, subject)",
    // Ids are unique by the revoking statements, and found by their first 16 digits:
    // see `sql_writes::in_feed` (indexes in `with_schema`, after any rebuild).
    concat!("CREATE TABLE IF NOT EXISTS revocations ", revocations_columns!()),
    "CREATE TABLE IF NOT EXISTS approvals (
        approval_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        task_id TEXT NOT NULL,
        agent TEXT NOT NULL,
        purpose TEXT NOT NULL,
        tools TEXT NOT NULL,
        call_tool TEXT,
        call_args TEXT,
        args_hash TEXT,
        ttl_ms INTEGER,
        state TEXT NOT NULL,
        requested_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        decided_at_ms INTEGER,
        decided_by TEXT,
        note TEXT)",
    "CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals(state, requested_at_ms)",
    "CREATE TABLE IF NOT EXISTS tool_pins (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        pending_hash TEXT,
        approval_id TEXT)",
    "CREATE TABLE IF NOT EXISTS token_usage (
        revocation_id TEXT PRIMARY KEY,
        calls INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        task_id TEXT,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, approver INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS web_sessions (
        id_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, approver INTEGER NOT NULL, csrf TEXT NOT NULL,
        groups TEXT NOT NULL DEFAULT '[]',
        created_at_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_clients (
        client_id TEXT PRIMARY KEY, client_name TEXT NOT NULL, redirect_uris TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_grants (
        task_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, user_name TEXT NOT NULL,
        redirect_uri TEXT NOT NULL, code_challenge TEXT NOT NULL, resource TEXT NOT NULL, state TEXT,
        scope TEXT NOT NULL, created_at_ms INTEGER NOT NULL, code_hash TEXT UNIQUE, code_expires_at_ms INTEGER,
        code_used INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS oauth_refresh (
        token_hash TEXT PRIMARY KEY, task_id TEXT NOT NULL, used INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS oauth_refresh_by_task ON oauth_refresh(task_id)",
    "CREATE TABLE IF NOT EXISTS upstream_connections (
        connection_id TEXT PRIMARY KEY, user_name TEXT NOT NULL, provider TEXT NOT NULL,
        state TEXT NOT NULL, broken_reason TEXT, scopes TEXT NOT NULL, refresh_token TEXT,
        access_token TEXT, access_expires_at_ms INTEGER, refreshing_until_ms INTEGER,
        created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0)",
    "CREATE UNIQUE INDEX IF NOT EXISTS upstream_connections_one_per_provider
        ON upstream_connections(user_name, provider) WHERE state <> 'disconnected'",
    "CREATE TABLE IF NOT EXISTS task_upstream_tokens (
        task_id TEXT NOT NULL, provider TEXT NOT NULL, connection_id TEXT NOT NULL,
        access_token TEXT NOT NULL, expires_at_ms INTEGER, revoked_at_ms INTEGER, retry_at_ms INTEGER,
        created_at_ms INTEGER NOT NULL, PRIMARY KEY (task_id, provider))",
    "CREATE INDEX IF NOT EXISTS task_upstream_tokens_unrevoked ON task_upstream_tokens(revoked_at_ms)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        kid INTEGER NOT NULL,
        signature TEXT NOT NULL)",
];

/// How many pages the write-ahead log collects before the writer copies them back into
/// the database (SQLite's default: 1,000). Task ids and token ids are random, so every
/// mint dirties pages all over the indexes; a longer log lets a page changed by many
/// commits be copied back once (mints 1.17× per second, side by side; the log file grows
/// to about 32 MiB).
const WAL_PAGES_BEFORE_CHECKPOINT: &str = "8000";

/// The SQLite store.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// SQLite's hooks, and the connection write transactions take turns on.
#[derive(Debug, Clone)]
pub struct SqliteDialect {
    /// A pool of one connection for write transactions; `None` where the store's own pool
    /// has a single connection (in memory).
    writer: Option<Pool<Sqlite>>,
}

impl Dialect for SqliteDialect {
    type Db = Sqlite;
    const ANONYMOUS_PARAMETERS: bool = true;
    const FOR_UPDATE: &'static str = "";
    const PURGE: &'static [&'static str] = &["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"];

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn writer<'a>(&'a self, pool: &'a Pool<Sqlite>) -> &'a Pool<Sqlite> {
        self.writer.as_ref().unwrap_or(pool)
    }

    async fn begin_write(&self, pool: &Pool<Sqlite>) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.writer(pool).begin_with("BEGIN IMMEDIATE").await
    }

    async fn lock(&self, _: &mut Transaction<'_, Sqlite>, _: Lock<'_>) -> StoreResult<()> {
        Ok(())
    }

    async fn notify(&self, _: &mut Transaction<'_, Sqlite>, _: &str) -> StoreResult<()> {
        Ok(())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies the schema.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        Self::connect(options).await
    }

    /// Opens a database by URL (`sqlite://…`), for tools such as `leash audit verify`.
    pub async fn open_url(url: &str) -> StoreResult<Self> {
        Self::connect(SqliteConnectOptions::from_str(url)?.busy_timeout(Duration::from_secs(5)))
            .await
    }

    /// A private database in memory, gone when the store is dropped: unit tests of
    /// domain rules run against the real SQL without touching the disk. One connection
    /// (each SQLite connection to `:memory:` is its own database), never closed.
    pub async fn in_memory() -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = Self::pool(options, Self::one_connection()).await?;
        Self::with_schema(pool).await
    }

    async fn connect(options: SqliteConnectOptions) -> StoreResult<Self> {
        let pool = Self::pool(options.clone(), SqlitePoolOptions::new().max_connections(4)).await?;
        let store = Self::with_schema(pool).await?;
        // Opened once the schema exists.
        let writer = Self::pool(
            options.pragma("wal_autocheckpoint", WAL_PAGES_BEFORE_CHECKPOINT),
            Self::one_connection(),
        )
        .await?;
        Ok(SqlStore {
            pool: store.pool,
            dialect: SqliteDialect {
                writer: Some(writer),
            },
        })
    }

    /// Databases created before the feed was indexed by id prefix hold `revocations` with
    /// a UNIQUE index on the whole 128-digit ids (SQLite cannot drop a column's UNIQUE):
    /// the table is copied, once, into one without it. Seqs are kept, and so is the
    /// highest seq ever handed out: the newest entries may have been pruned, and feed
    /// readers already past them must not miss entries that reuse their seqs.
    async fn drop_unique_revocation_ids(pool: &Pool<Sqlite>) -> StoreResult<()> {
        let unique: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'revocations'
               AND name LIKE 'sqlite_autoindex_revocations_%'",
        )
        .fetch_optional(pool)
        .await?;
        if unique.is_none() {
            return Ok(());
        }
        tracing::info!("rebuilding the revocations table without its unique index (once)");
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let handed_out: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM sqlite_sequence WHERE name = 'revocations'")
                .fetch_optional(&mut *tx)
                .await?;
        for statement in [
            concat!("CREATE TABLE revocations_rebuilt ", revocations_columns!()),
            "INSERT INTO revocations_rebuilt (seq, revocation_id, task_id, reason, at_ms, expires_at_ms)
               SELECT seq, revocation_id, task_id, reason, at_ms, expires_at_ms FROM revocations",
            "DROP TABLE revocations",
            "ALTER TABLE revocations_rebuilt RENAME TO revocations",
            "DELETE FROM sqlite_sequence WHERE name = 'revocations'",
        ] {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO sqlite_sequence (name, seq)
             SELECT 'revocations', MAX($1, COALESCE((SELECT MAX(seq) FROM revocations), 0))",
        )
        .bind(handed_out.map_or(0, |(seq,)| seq))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A pool that keeps its one connection open for good.
    fn one_connection() -> SqlitePoolOptions {
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    }

    async fn pool(
        options: SqliteConnectOptions,
        pool: SqlitePoolOptions,
    ) -> StoreResult<Pool<Sqlite>> {
        Ok(pool
            .acquire_timeout(Duration::from_secs(5))
            // After SQLITE_FULL (disk full) SQLite rolls the transaction back itself; the
            // ROLLBACK sqlx then sends fails, and sqlx keeps counting the connection as
            // inside a transaction, so every later BEGIN on it fails ("non-zero
            // transaction depth") even once there is room again. Such a connection is
            // closed instead of reused.
            .before_acquire(|connection, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(connection)) })
            })
            .connect_with(options)
            .await?)
    }

    /// The store on `pool` (writing on it too), its schema applied.
    async fn with_schema(pool: Pool<Sqlite>) -> StoreResult<Self> {
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        // Columns added since the first release, for databases created before them.
        for (table, column) in [
            ("credentials", "expires_at_ms INTEGER"),
            ("revocations", "expires_at_ms INTEGER"),
            ("tasks", "user_name TEXT"),
            ("tasks", "audience TEXT"),
            ("tasks", "user_group TEXT"),
            ("approvals", "user_name TEXT"),
        ] {
            let added = sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column}"))
                .execute(&pool)
                .await;
            match added {
                Err(sqlx::Error::Database(e)) if e.message().contains("duplicate column") => {}
                other => {
                    other?;
                }
            }
        }
        Self::drop_unique_revocation_ids(&pool).await?;
        for statement in [
            "CREATE INDEX IF NOT EXISTS revocations_by_key ON revocations(substr(revocation_id, 1, 16))",
            "CREATE INDEX IF NOT EXISTS revocations_by_expiry ON revocations(expires_at_ms)",
            "DROP INDEX IF EXISTS revocations_by_task",
            "CREATE INDEX IF NOT EXISTS revoked_tokens_by_task ON revocations(task_id) WHERE reason = 'token'",
            "CREATE INDEX IF NOT EXISTS audit_by_task ON audit(task_id, seq) WHERE task_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS tasks_by_creation ON tasks(created_at_ms, task_id)",
        ] {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(SqlStore {
            pool,
            dialect: SqliteDialect { writer: None },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::api::{Store, StoreError};

    /// A database written before the feed was indexed by id prefix, whose newest entry
    /// was pruned since: opening it drops the unique index, keeps every entry and seq,
    /// and never hands out a seq twice.
    #[tokio::test]
    async fn a_feed_with_unique_ids_is_rebuilt_keeping_its_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        for statement in [
            "CREATE TABLE revocations (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                revocation_id TEXT NOT NULL UNIQUE, task_id TEXT, reason TEXT NOT NULL,
                at_ms INTEGER NOT NULL)",
            "CREATE INDEX revocations_by_task ON revocations(task_id)",
            "INSERT INTO revocations (revocation_id, task_id, reason, at_ms)
             VALUES ('aa01', 'tsk_1', 'token', 1), ('aa02', NULL, 'credential', 2),
                    ('aa03', NULL, 'token', 3)",
            "DELETE FROM revocations WHERE seq = 3",
        ] {
            sqlx::query(statement).execute(&old).await.unwrap();
        }
        old.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let indexes: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master
              WHERE type = 'index' AND tbl_name = 'revocations' ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let indexes: Vec<&str> = indexes.iter().map(|(name,)| name.as_str()).collect();
        assert_eq!(
            indexes,
            [
                "revocations_by_expiry",
                "revocations_by_key",
                "revoked_tokens_by_task"
            ]
        );
        let feed: Vec<(i64, String)> = store
            .revocations_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.revocation_id))
            .collect();
        assert_eq!(feed, [(1, "aa01".to_string()), (2, "aa02".to_string())]);
        assert_eq!(
            crate::store::suite::upgraded_feed_goes_on(&store).await,
            [4],
            "seq 3 was handed out before the rebuild"
        );
        drop(store);

        let reopened = SqliteStore::open(&path).await.unwrap();
        let next = reopened
            .revoke_ids(&["aa04".into()], None, "token", 5)
            .await
            .unwrap();
        assert_eq!(next[0].seq, 5);
        assert_eq!(reopened.revocation_count().await.unwrap(), 4);
    }

    /// A retention cut checks the chain of the rows it deletes: an old row rewritten in
    /// the database stops retention with the seq named (it used to vanish with the
    /// evidence of it), and so does a log whose front was deleted without a checkpoint
    /// to anchor what is left.
    #[tokio::test]
    async fn a_cut_refuses_rows_that_do_not_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("leash.db"))
            .await
            .unwrap();
        let events: Vec<crate::store::NewAuditEvent> = (1..=5)
            .map(|n| crate::store::NewAuditEvent {
                at_ms: if n == 5 { 5_000 } else { n },
                kind: "k".into(),
                actor: "a".into(),
                task_id: None,
                detail: serde_json::json!({}),
            })
            .collect();
        store.append_audit(&events).await.unwrap();
        let row = store.audit_after(2, 1).await.unwrap().remove(0);
        store
            .insert_checkpoint(&crate::store::AuditCheckpoint {
                seq: 3,
                hash: row.hash,
                at_ms: 1,
                kid: 1,
                signature: "s".into(),
            })
            .await
            .unwrap();
        let record = |pruned: &crate::store::Pruned| crate::store::NewAuditEvent {
            at_ms: 9_000,
            kind: "audit.pruned".into(),
            actor: "broker".into(),
            task_id: None,
            detail: serde_json::json!({ "through_seq": pruned.through_seq }),
        };
        let rows = || async {
            let all: Vec<(i64,)> = sqlx::query_as("SELECT seq FROM audit ORDER BY seq")
                .fetch_all(&store.pool)
                .await
                .unwrap();
            all.into_iter().map(|(seq,)| seq).collect::<Vec<_>>()
        };

        sqlx::query("UPDATE audit SET actor = 'someone else' WHERE seq = 2")
            .execute(&store.pool)
            .await
            .unwrap();
        let refused = store.prune_history(1_000, 100, &record).await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Corrupt(why)
                if why.contains("audit chain broken at seq 2") && why.contains("cannot vouch")),
            "{refused}"
        );
        assert_eq!(
            rows().await,
            [1, 2, 3, 4, 5],
            "nothing deleted, nothing recorded"
        );

        sqlx::query("UPDATE audit SET actor = 'a' WHERE seq = 2")
            .execute(&store.pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM audit WHERE seq = 1")
            .execute(&store.pool)
            .await
            .unwrap();
        let refused = store.prune_history(1_000, 100, &record).await.unwrap_err();
        assert!(
            refused.to_string().contains("rows 1 to 1 are missing"),
            "{refused}"
        );
        assert_eq!(rows().await, [2, 3, 4, 5]);
    }
}
