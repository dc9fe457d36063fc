//! The replicated store: PostgreSQL, shared by several `leash serve` processes.
//!
//! Only what is PostgreSQL's own lives here: the schema, connecting, and the dialect
//! hooks; the statements are shared with SQLite (`sql`), and one behavioural suite runs
//! against both. Several replicas write at once, so writers that must not interleave
//! take advisory locks (per agent, the revocation feed, the audit chain) and a decided
//! approval's row is read `FOR UPDATE`. Every change other replicas must see is announced
//! with `pg_notify` *inside* the transaction that makes it, so the notification is
//! delivered exactly when (and only if) the change commits: `task:<id>`, `rev` (new revocations), `pin:<tool>`, `keys`.
//! The tables stay the truth; [`crate::fanout`] re-reads them after any gap.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::{PgPool, Pool, Postgres, Transaction};

use super::api::{StoreError, StoreResult};
use super::dialect::{Dialect, Lock};
use super::sql::SqlStore;

/// The schema; every statement is idempotent.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY, agent TEXT NOT NULL, purpose TEXT NOT NULL, tools TEXT NOT NULL,
        checks TEXT NOT NULL, state TEXT NOT NULL, created_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL,
        idle_timeout_ms BIGINT, max_calls BIGINT, calls BIGINT NOT NULL DEFAULT 0, last_activity_ms BIGINT NOT NULL,
        ended_at_ms BIGINT, end_reason TEXT, token TEXT)",
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS user_name TEXT",
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS audience TEXT",
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS user_group TEXT",
    "CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, created_at_ms)",
    "CREATE INDEX IF NOT EXISTS tasks_by_agent ON tasks(agent, state)",
    "CREATE TABLE IF NOT EXISTS task_tokens (
        revocation_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, issued_at_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS task_tokens_by_task ON task_tokens(task_id)",
    "CREATE TABLE IF NOT EXISTS credentials (
        revocation_id TEXT PRIMARY KEY, role TEXT NOT NULL, subject TEXT NOT NULL, issued_at_ms BIGINT NOT NULL)",
    "ALTER TABLE credentials ADD COLUMN IF NOT EXISTS expires_at_ms BIGINT",
    "CREATE INDEX IF NOT EXISTS credentials_by_subject ON credentials(role, subject)",
    // Ids are unique by the revoking statements (under REVOCATION_LOCK), and found by
    // their first 16 digits: see `sql_writes::in_feed`.
    "CREATE TABLE IF NOT EXISTS revocations (
        seq BIGSERIAL PRIMARY KEY, revocation_id TEXT NOT NULL, task_id TEXT, reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL)",
    // Schemas from before: their UNIQUE on the whole id, whatever it is named.
    "DO $$ DECLARE unique_id TEXT; BEGIN
        FOR unique_id IN SELECT conname FROM pg_constraint
                          WHERE conrelid = 'revocations'::regclass AND contype = 'u' LOOP
            EXECUTE format('ALTER TABLE revocations DROP CONSTRAINT IF EXISTS %I', unique_id);
        END LOOP;
     END $$",
    "CREATE INDEX IF NOT EXISTS revocations_by_key ON revocations((substr(revocation_id, 1, 16)))",
    "ALTER TABLE revocations ADD COLUMN IF NOT EXISTS expires_at_ms BIGINT",
    "CREATE INDEX IF NOT EXISTS revocations_by_expiry ON revocations(expires_at_ms)",
    "DROP INDEX IF EXISTS revocations_by_task",
    "CREATE INDEX IF NOT EXISTS revoked_tokens_by_task ON revocations(task_id) WHERE reason = 'token'",
    "CREATE TABLE IF NOT EXISTS approvals (
        approval_id TEXT PRIMARY KEY, kind TEXT NOT NULL, task_id TEXT NOT NULL, agent TEXT NOT NULL,
        purpose TEXT NOT NULL, tools TEXT NOT NULL, call_tool TEXT, call_args TEXT, args_hash TEXT, ttl_ms BIGINT,
        state TEXT NOT NULL, requested_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL,
        decided_at_ms BIGINT, decided_by TEXT, note TEXT)",
    "ALTER TABLE approvals ADD COLUMN IF NOT EXISTS user_name TEXT",
    "CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals(state, requested_at_ms)",
    "CREATE TABLE IF NOT EXISTS tool_pins (name TEXT PRIMARY KEY, hash TEXT NOT NULL, pending_hash TEXT, approval_id TEXT)",
    "CREATE TABLE IF NOT EXISTS token_usage (revocation_id TEXT PRIMARY KEY, calls BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL, task_id TEXT,
        detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_by_task ON audit(task_id, seq) WHERE task_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_by_creation ON tasks(created_at_ms, task_id)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq BIGINT PRIMARY KEY, hash TEXT NOT NULL, at_ms BIGINT NOT NULL, kid BIGINT NOT NULL,
        signature TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, approver BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS web_sessions (
        id_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, approver BIGINT NOT NULL, csrf TEXT NOT NULL,
        groups TEXT NOT NULL DEFAULT '[]',
        created_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_clients (
        client_id TEXT PRIMARY KEY, client_name TEXT NOT NULL, redirect_uris TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_grants (
        task_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, user_name TEXT NOT NULL,
        redirect_uri TEXT NOT NULL, code_challenge TEXT NOT NULL, resource TEXT NOT NULL, state TEXT,
        scope TEXT NOT NULL, created_at_ms BIGINT NOT NULL, code_hash TEXT UNIQUE, code_expires_at_ms BIGINT,
        code_used BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS oauth_refresh (
        token_hash TEXT PRIMARY KEY, task_id TEXT NOT NULL, used BIGINT NOT NULL DEFAULT 0,
        created_at_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS oauth_refresh_by_task ON oauth_refresh(task_id)",
    "CREATE TABLE IF NOT EXISTS upstream_connections (
        connection_id TEXT PRIMARY KEY, user_name TEXT NOT NULL, provider TEXT NOT NULL,
        state TEXT NOT NULL, broken_reason TEXT, scopes TEXT NOT NULL, refresh_token TEXT,
        access_token TEXT, access_expires_at_ms BIGINT, refreshing_until_ms BIGINT,
        created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 0)",
    "CREATE UNIQUE INDEX IF NOT EXISTS upstream_connections_one_per_provider
        ON upstream_connections(user_name, provider) WHERE state <> 'disconnected'",
    "CREATE TABLE IF NOT EXISTS task_upstream_tokens (
        task_id TEXT NOT NULL, provider TEXT NOT NULL, connection_id TEXT NOT NULL,
        access_token TEXT NOT NULL, expires_at_ms BIGINT, revoked_at_ms BIGINT, retry_at_ms BIGINT,
        created_at_ms BIGINT NOT NULL, PRIMARY KEY (task_id, provider))",
    "CREATE INDEX IF NOT EXISTS task_upstream_tokens_unrevoked ON task_upstream_tokens(revoked_at_ms)",
    "CREATE TABLE IF NOT EXISTS root_keys (
        kid BIGINT PRIMARY KEY, sealed TEXT NOT NULL, created_at_ms BIGINT NOT NULL, retired_at_ms BIGINT)",
    "CREATE TABLE IF NOT EXISTS forwarding_key (
        id SMALLINT PRIMARY KEY CHECK (id = 1), sealed TEXT NOT NULL, created_at_ms BIGINT NOT NULL)",
];

/// Serialises audit appends across replicas (any constant will do; it is per database).
const AUDIT_LOCK: i64 = 0x4c45_4153_4841_5544;
/// Serialises revocation publishing: a BIGSERIAL is taken at insert, not at commit, so
/// without this a transaction could commit seq 101 before another commits seq 100, and
/// feed readers that already moved past 101 would never see 100.
const REVOCATION_LOCK: i64 = 0x4c45_4153_4852_4556;

/// The PostgreSQL store of one schema.
pub type PgStore = SqlStore<PgDialect>;

/// PostgreSQL's hooks, for one schema.
#[derive(Debug, Clone)]
pub struct PgDialect {
    /// The NOTIFY channel of the schema.
    channel: String,
}

impl Dialect for PgDialect {
    type Db = Postgres;
    const ANONYMOUS_PARAMETERS: bool = false;
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const PURGE: &'static [&'static str] = &["VACUUM FULL tasks"];

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn begin_write(
        &self,
        pool: &Pool<Postgres>,
    ) -> sqlx::Result<Transaction<'static, Postgres>> {
        // Stated, not left to the server's default: each statement must see what the
        // holder of a lock taken just before it committed (a feed insert asks whether
        // the id is there; `FOR UPDATE` rows are re-read), which REPEATABLE READ, set
        // as a database default, would not give.
        pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
    }

    async fn lock(&self, tx: &mut Transaction<'_, Postgres>, lock: Lock<'_>) -> StoreResult<()> {
        let query = match lock {
            Lock::Subject { role, subject } => {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(format!("{role}:{subject}"))
            }
            Lock::Revocations => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(REVOCATION_LOCK)
            }
            Lock::Audit => sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AUDIT_LOCK),
        };
        query.execute(&mut **tx).await?;
        Ok(())
    }

    async fn notify(&self, tx: &mut Transaction<'_, Postgres>, payload: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Whether `schema` is a plain identifier we can use unquoted.
pub fn is_schema_name(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 48
        && schema.as_bytes()[0].is_ascii_lowercase()
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PgStore {
    /// Connects to `url`, creates `schema` and its tables if needed.
    pub async fn open(url: &str, schema: &str) -> StoreResult<Self> {
        Self::open_with_ca(url, schema, None).await
    }

    /// [`PgStore::open`], trusting the CA certificates in `ca_bundle` (PEM) too when the
    /// URL names no `sslrootcert` of its own. TLS follows the URL's `sslmode` (as libpq:
    /// `require` encrypts, `verify-ca`/`verify-full` also check the server's certificate
    /// against the system's roots plus this bundle); `require` and stricter never fall
    /// back to plain text.
    pub async fn open_with_ca(
        url: &str,
        schema: &str,
        ca_bundle: Option<&std::path::Path>,
    ) -> StoreResult<Self> {
        if !is_schema_name(schema) {
            return Err(StoreError::Corrupt(format!(
                "{schema:?} is not a valid schema name (a-z, 0-9, _)"
            )));
        }
        let mut base = PgConnectOptions::from_str(url)?;
        if let Some(bundle) = ca_bundle
            && !url.contains("sslrootcert=")
        {
            base = base.ssl_root_cert(bundle);
        }
        let bootstrap = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&bootstrap)
            .await?;
        bootstrap.close().await;
        let options = base.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(SqlStore {
            pool,
            dialect: PgDialect {
                channel: format!("leash_{schema}"),
            },
        })
    }

    /// Connects to an existing deployment's `schema` (for tools such as `leash audit
    /// verify`, which must not create an empty schema for a mistyped name).
    pub async fn open_existing(url: &str, schema: &str) -> StoreResult<Self> {
        let probe = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(PgConnectOptions::from_str(url)?)
            .await?;
        let exists =
            sqlx::query("SELECT 1 FROM information_schema.schemata WHERE schema_name = $1")
                .bind(schema)
                .fetch_optional(&probe)
                .await?
                .is_some();
        probe.close().await;
        if !exists {
            return Err(StoreError::Corrupt(format!(
                "there is no schema {schema:?} in this database (LEASH_DATABASE_SCHEMA?)"
            )));
        }
        Self::open(url, schema).await
    }

    /// The NOTIFY channel of this schema.
    pub fn channel(&self) -> &str {
        &self.dialect.channel
    }

    /// The pool (for the fan-out listener and key storage).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::api::Store;

    /// A schema written before the feed was indexed by id prefix (a UNIQUE on the whole
    /// id, under a name of its own): opening it drops that constraint and the old task
    /// index, keeps every entry, and the feed goes on from the next seq.
    #[tokio::test]
    async fn a_feed_with_unique_ids_loses_the_constraint_and_nothing_else() {
        let url = std::env::var("LEASH_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("old_{}", crate::ids::random_hex(6));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (database test)");
        for statement in [
            format!("CREATE SCHEMA {schema}"),
            format!(
                "CREATE TABLE {schema}.revocations (seq BIGSERIAL PRIMARY KEY,
                    revocation_id TEXT NOT NULL, task_id TEXT, reason TEXT NOT NULL,
                    at_ms BIGINT NOT NULL,
                    CONSTRAINT ids_once UNIQUE (revocation_id))"
            ),
            format!("CREATE INDEX revocations_by_task ON {schema}.revocations(task_id)"),
            format!(
                "INSERT INTO {schema}.revocations (revocation_id, task_id, reason, at_ms)
                 VALUES ('aa01', 'tsk_1', 'token', 1), ('aa02', NULL, 'credential', 2)"
            ),
        ] {
            sqlx::query(&statement).execute(&admin).await.unwrap();
        }

        let store = PgStore::open(&url, &schema).await.unwrap();
        let unique: Vec<(String,)> = sqlx::query_as(
            "SELECT conname::TEXT FROM pg_constraint
              WHERE conrelid = 'revocations'::regclass AND contype = 'u'",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert!(unique.is_empty(), "{unique:?}");
        let mut indexes: Vec<(String,)> = sqlx::query_as(
            "SELECT indexname::TEXT FROM pg_indexes WHERE schemaname = $1 AND tablename = 'revocations'",
        )
        .bind(&schema)
        .fetch_all(&store.pool)
        .await
        .unwrap();
        indexes.sort();
        let indexes: Vec<&str> = indexes.iter().map(|(name,)| name.as_str()).collect();
        assert_eq!(
            indexes,
            [
                "revocations_by_expiry",
                "revocations_by_key",
                "revocations_pkey",
                "revoked_tokens_by_task"
            ]
        );
        assert_eq!(
            crate::store::suite::upgraded_feed_goes_on(&store).await,
            [3]
        );
        // Opened again (another replica starting): nothing changes.
        drop(store);
        let again = PgStore::open(&url, &schema).await.unwrap();
        assert_eq!(again.revocation_count().await.unwrap(), 3);
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
    }
}
