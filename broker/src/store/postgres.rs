//! The replicated store: PostgreSQL, shared by several `leash serve` processes.
//!
//! Same behaviour as [`super::SqliteStore`] (one behavioural suite runs against both).
//! Every change other replicas must see is announced with `pg_notify` *inside* the
//! transaction that makes it, so the notification is delivered exactly when (and only
//! if) the change commits: `task:<id>`, `rev` (new revocations), `pin:<tool>`, `keys`.
//! The tables stay the truth; [`crate::fanout`] re-reads them after any gap.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::rows::{
    approval_from_row, checkpoint_from_row, revocation_from_row, task_from_row, to_i64,
};
use super::{
    Activation, ApprovalRecord, ApprovalState, AuditCheckpoint, AuditRow, Decided, NewAuditEvent,
    Revocation, Store, StoreError, StoreResult, TaskRecord, TaskState, ToolPin, UsageBatch,
};

/// The schema; every statement is idempotent.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY, agent TEXT NOT NULL, purpose TEXT NOT NULL, tools TEXT NOT NULL,
        checks TEXT NOT NULL, state TEXT NOT NULL, created_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL,
        idle_timeout_ms BIGINT, max_calls BIGINT, calls BIGINT NOT NULL DEFAULT 0, last_activity_ms BIGINT NOT NULL,
        ended_at_ms BIGINT, end_reason TEXT, token TEXT)",
    "CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, created_at_ms)",
    "CREATE INDEX IF NOT EXISTS tasks_by_agent ON tasks(agent, state)",
    "CREATE TABLE IF NOT EXISTS task_tokens (
        revocation_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, issued_at_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS task_tokens_by_task ON task_tokens(task_id)",
    "CREATE TABLE IF NOT EXISTS credentials (
        revocation_id TEXT PRIMARY KEY, role TEXT NOT NULL, subject TEXT NOT NULL, issued_at_ms BIGINT NOT NULL)",
    "ALTER TABLE credentials ADD COLUMN IF NOT EXISTS expires_at_ms BIGINT",
    "CREATE INDEX IF NOT EXISTS credentials_by_subject ON credentials(role, subject)",
    "CREATE TABLE IF NOT EXISTS revocations (
        seq BIGSERIAL PRIMARY KEY, revocation_id TEXT NOT NULL UNIQUE, task_id TEXT, reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL)",
    "ALTER TABLE revocations ADD COLUMN IF NOT EXISTS expires_at_ms BIGINT",
    "CREATE INDEX IF NOT EXISTS revocations_by_expiry ON revocations(expires_at_ms)",
    "CREATE INDEX IF NOT EXISTS revocations_by_task ON revocations(task_id)",
    "CREATE TABLE IF NOT EXISTS approvals (
        approval_id TEXT PRIMARY KEY, kind TEXT NOT NULL, task_id TEXT NOT NULL, agent TEXT NOT NULL,
        purpose TEXT NOT NULL, tools TEXT NOT NULL, call_tool TEXT, call_args TEXT, args_hash TEXT, ttl_ms BIGINT,
        state TEXT NOT NULL, requested_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL,
        decided_at_ms BIGINT, decided_by TEXT, note TEXT)",
    "CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals(state, requested_at_ms)",
    "CREATE TABLE IF NOT EXISTS tool_pins (name TEXT PRIMARY KEY, hash TEXT NOT NULL, pending_hash TEXT, approval_id TEXT)",
    "CREATE TABLE IF NOT EXISTS token_usage (revocation_id TEXT PRIMARY KEY, calls BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL, task_id TEXT,
        detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq BIGINT PRIMARY KEY, hash TEXT NOT NULL, at_ms BIGINT NOT NULL, kid BIGINT NOT NULL,
        signature TEXT NOT NULL)",
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
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    channel: String,
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
        Ok(PgStore {
            pool,
            channel: format!("leash_{schema}"),
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
        &self.channel
    }

    /// The pool (for the fan-out listener and key storage).
    pub fn pool(&self) -> &PgPool {
        &self.pool
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

async fn publish(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
    task_id: Option<&str>,
    reason: &str,
    at_ms: i64,
) -> StoreResult<Vec<Revocation>> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REVOCATION_LOCK)
        .execute(&mut **tx)
        .await?;
    let mut out = Vec::new();
    for id in ids {
        let row = sqlx::query(
            "INSERT INTO revocations (revocation_id, task_id, reason, at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, (SELECT expires_at_ms FROM tasks WHERE task_id = $2))
             ON CONFLICT (revocation_id) DO NOTHING
             RETURNING seq, revocation_id, task_id, reason, at_ms, expires_at_ms",
        )
        .bind(id)
        .bind(task_id)
        .bind(reason)
        .bind(at_ms)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            out.push(revocation_from_row(&row)?);
        }
    }
    Ok(out)
}

#[async_trait]
impl Store for PgStore {
    async fn insert_task(
        &self,
        task: &TaskRecord,
        revocation_id: Option<&str>,
        credential: Option<&str>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        // Serialised with revoke_credentials of the same agent (same lock key).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("agent:{}", task.agent))
            .execute(&mut *tx)
            .await?;
        if let Some(credential) = credential {
            let revoked: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM revocations WHERE revocation_id = $1")
                    .bind(credential)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if revoked > 0 {
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO tasks (task_id, agent, purpose, tools, checks, state, created_at_ms, expires_at_ms,
                idle_timeout_ms, max_calls, calls, last_activity_ms, ended_at_ms, end_reason, token)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&task.task_id)
        .bind(&task.agent)
        .bind(&task.purpose)
        .bind(serde_json::to_string(&task.tools).unwrap_or_default())
        .bind(serde_json::to_string(&task.checks).unwrap_or_default())
        .bind(task.state.as_str())
        .bind(task.created_at_ms)
        .bind(task.expires_at_ms)
        .bind(task.idle_timeout_ms)
        .bind(task.max_calls.map(to_i64))
        .bind(to_i64(task.calls))
        .bind(task.last_activity_ms)
        .bind(task.ended_at_ms)
        .bind(&task.end_reason)
        .bind(&task.token)
        .execute(&mut *tx)
        .await?;
        if let Some(id) = revocation_id {
            sqlx::query("INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(&task.task_id)
                .bind(task.created_at_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn get_task(&self, task_id: &str) -> StoreResult<Option<TaskRecord>> {
        let row = sqlx::query("SELECT * FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks(
        &self,
        state: Option<TaskState>,
        limit: i64,
    ) -> StoreResult<Vec<TaskRecord>> {
        let rows = match state {
            Some(state) => {
                sqlx::query(
                    "SELECT * FROM tasks WHERE state = $1 ORDER BY created_at_ms DESC LIMIT $2",
                )
                .bind(state.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT * FROM tasks ORDER BY created_at_ms DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(task_from_row).collect()
    }

    async fn live_tasks_of(&self, agent: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT task_id FROM tasks WHERE agent = $1 AND state IN ('active', 'pending_approval')")
            .bind(agent)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("task_id")?)).collect()
    }

    async fn due_tasks(&self, now_ms: i64) -> StoreResult<Vec<TaskRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE state = 'active' AND (expires_at_ms <= $1
                OR (idle_timeout_ms IS NOT NULL AND last_activity_ms + idle_timeout_ms <= $1))",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn plain_tokens(&self) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT task_id, token FROM tasks WHERE token IS NOT NULL AND token NOT LIKE 'sealed:%'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("task_id")?, r.try_get("token")?)))
            .collect()
    }

    async fn replace_token(&self, task_id: &str, old: &str, new: &str) -> StoreResult<()> {
        sqlx::query("UPDATE tasks SET token = $1 WHERE task_id = $2 AND token = $3")
            .bind(new)
            .bind(task_id)
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn purge_freed(&self) -> StoreResult<()> {
        sqlx::query("VACUUM FULL tasks").execute(&self.pool).await?;
        Ok(())
    }

    async fn renew_task(&self, renewal: &Activation, now_ms: i64) -> StoreResult<bool> {
        let Activation {
            task_id,
            expires_at_ms,
            token,
            revocation_id,
            tools,
        } = renewal;
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE tasks SET expires_at_ms = $1, token = $2, last_activity_ms = GREATEST(last_activity_ms, $3),
                tools = $5
             WHERE task_id = $4 AND state = 'active'",
        )
        .bind(expires_at_ms)
        .bind(token)
        .bind(now_ms)
        .bind(task_id)
        .bind(serde_json::to_string(tools).unwrap_or_default())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(revocation_id)
        .bind(task_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        self.notify(&mut tx, &format!("task:{task_id}")).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn end_task(
        &self,
        task_id: &str,
        state: TaskState,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Option<Vec<Revocation>>> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE tasks SET state = $1, ended_at_ms = $2, end_reason = $3
             WHERE task_id = $4 AND state IN ('active', 'pending_approval')",
        )
        .bind(state.as_str())
        .bind(at_ms)
        .bind(reason)
        .bind(task_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        let ids: Vec<String> =
            sqlx::query("SELECT revocation_id FROM task_tokens WHERE task_id = $1")
                .bind(task_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("revocation_id"))
                .collect::<Result<_, _>>()?;
        let published = publish(&mut tx, &ids, Some(task_id), state.as_str(), at_ms).await?;
        self.notify(&mut tx, &format!("task:{task_id}")).await?;
        self.notify(&mut tx, "rev").await?;
        tx.commit().await?;
        Ok(Some(published))
    }

    async fn revoke_ids(
        &self,
        ids: &[String],
        task_id: Option<&str>,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>> {
        let mut tx = self.pool.begin().await?;
        let published = publish(&mut tx, ids, task_id, reason, at_ms).await?;
        self.notify(&mut tx, "rev").await?;
        tx.commit().await?;
        Ok(published)
    }

    async fn insert_credential(
        &self,
        revocation_id: &str,
        role: &str,
        subject: &str,
        at_ms: i64,
        expires_at_ms: Option<i64>,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO credentials (revocation_id, role, subject, issued_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(revocation_id)
            .bind(role)
            .bind(subject)
            .bind(at_ms)
            .bind(expires_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revoke_credentials(
        &self,
        role: &str,
        subject: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("{role}:{subject}"))
            .execute(&mut *tx)
            .await?;
        let ids: Vec<String> =
            sqlx::query("SELECT revocation_id FROM credentials WHERE role = $1 AND subject = $2")
                .bind(role)
                .bind(subject)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("revocation_id"))
                .collect::<Result<_, _>>()?;
        let published = publish(&mut tx, &ids, None, "credential", at_ms).await?;
        self.notify(&mut tx, "rev").await?;
        tx.commit().await?;
        Ok(published)
    }

    async fn prune_revocations(&self, before_ms: i64) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM revocations WHERE expires_at_ms < $1")
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn revoked_tokens_of(&self, task_id: &str) -> StoreResult<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM revocations WHERE task_id = $1 AND reason = 'token'",
        )
        .bind(task_id)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?)
    }

    async fn revocations_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<Revocation>> {
        let rows = sqlx::query("SELECT * FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(revocation_from_row).collect()
    }

    async fn live_revocations_after(
        &self,
        seq: i64,
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Revocation>> {
        let rows = sqlx::query(
            "SELECT * FROM revocations WHERE seq > $1 AND (expires_at_ms IS NULL OR expires_at_ms >= $2) ORDER BY seq LIMIT $3",
        )
        .bind(seq)
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revocation_from_row).collect()
    }

    async fn live_revocation_count(&self, since_ms: i64) -> StoreResult<i64> {
        Ok(sqlx::query(
            // Two index counts, not one OR: SQLite would collect every matching rowid.
            "SELECT (SELECT COUNT(*) FROM revocations WHERE expires_at_ms IS NULL)
                  + (SELECT COUNT(*) FROM revocations WHERE expires_at_ms >= $1) AS n",
        )
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?)
    }

    async fn revocation_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM revocations")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn all_revoked_ids(&self) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT revocation_id, reason FROM revocations")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("revocation_id")?, r.try_get("reason")?)))
            .collect()
    }

    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<Vec<u64>> {
        if batch.tasks.is_empty() && batch.tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        for (task_id, calls, last) in &batch.tasks {
            sqlx::query(
                "UPDATE tasks SET calls = GREATEST(calls, $1), last_activity_ms = GREATEST(last_activity_ms, $2)
                 WHERE task_id = $3",
            )
            .bind(to_i64(*calls))
            .bind(last)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        }
        let mut totals = Vec::with_capacity(batch.tokens.len());
        for (id, calls) in &batch.tokens {
            let row = sqlx::query(
                "INSERT INTO token_usage (revocation_id, calls) VALUES ($1, $2)
                 ON CONFLICT (revocation_id) DO UPDATE SET calls = token_usage.calls + excluded.calls
                 RETURNING calls",
            )
            .bind(id)
            .bind(to_i64(*calls))
            .fetch_one(&mut *tx)
            .await?;
            totals.push(row.try_get::<i64, _>("calls")?.max(0) as u64);
        }
        tx.commit().await?;
        Ok(totals)
    }

    async fn token_calls(&self, revocation_id: &str) -> StoreResult<u64> {
        let row = sqlx::query("SELECT calls FROM token_usage WHERE revocation_id = $1")
            .bind(revocation_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<i64, _>("calls")?.max(0) as u64,
            None => 0,
        })
    }

    async fn insert_approval(&self, a: &ApprovalRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO approvals (approval_id, kind, task_id, agent, purpose, tools, call_tool, call_args, args_hash,
                ttl_ms, state, requested_at_ms, expires_at_ms, decided_at_ms, decided_by, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&a.approval_id)
        .bind(a.kind.as_str())
        .bind(&a.task_id)
        .bind(&a.agent)
        .bind(&a.purpose)
        .bind(serde_json::to_string(&a.tools).unwrap_or_default())
        .bind(&a.call_tool)
        .bind(a.call_args.as_ref().map(|v| v.to_string()))
        .bind(&a.args_hash)
        .bind(a.ttl_ms)
        .bind(a.state.as_str())
        .bind(a.requested_at_ms)
        .bind(a.expires_at_ms)
        .bind(a.decided_at_ms)
        .bind(&a.decided_by)
        .bind(&a.note)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_approval(&self, approval_id: &str) -> StoreResult<Option<ApprovalRecord>> {
        let row = sqlx::query("SELECT * FROM approvals WHERE approval_id = $1")
            .bind(approval_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn pending_approvals_of(&self, agent: &str) -> StoreResult<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM approvals WHERE agent = $1 AND state = 'pending'",
        )
        .bind(agent)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?)
    }

    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
        limit: i64,
    ) -> StoreResult<Vec<ApprovalRecord>> {
        let rows =
            match state {
                Some(state) => sqlx::query(
                    "SELECT * FROM approvals WHERE state = $1 ORDER BY requested_at_ms LIMIT $2",
                )
                .bind(state.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM approvals ORDER BY requested_at_ms DESC LIMIT $1")
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        rows.iter().map(approval_from_row).collect()
    }

    async fn due_approvals(&self, now_ms: i64) -> StoreResult<Vec<ApprovalRecord>> {
        let rows =
            sqlx::query("SELECT * FROM approvals WHERE state = 'pending' AND expires_at_ms <= $1")
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(approval_from_row).collect()
    }

    async fn decide_approval(
        &self,
        approval_id: &str,
        state: ApprovalState,
        decided_by: &str,
        note: Option<&str>,
        at_ms: i64,
        activation: Option<&Activation>,
    ) -> StoreResult<Decided> {
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("SELECT state, kind FROM approvals WHERE approval_id = $1 FOR UPDATE")
                .bind(approval_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Err(StoreError::Corrupt(format!("no approval {approval_id}")));
        };
        let current: String = row.try_get("state")?;
        let kind: String = row.try_get("kind")?;
        if current != "pending" {
            let state = ApprovalState::parse(&current)
                .ok_or_else(|| StoreError::Corrupt(current.clone()))?;
            return Ok(Decided::AlreadyDecided(state));
        }
        if let Some(a) = activation {
            let from = if kind == "renewal" {
                "active"
            } else {
                "pending_approval"
            };
            let changed = sqlx::query(
                "UPDATE tasks SET state = 'active', expires_at_ms = $1, token = $2,
                    last_activity_ms = GREATEST(last_activity_ms, $3), tools = $6
                 WHERE task_id = $4 AND state = $5",
            )
            .bind(a.expires_at_ms)
            .bind(&a.token)
            .bind(at_ms)
            .bind(&a.task_id)
            .bind(from)
            .bind(serde_json::to_string(&a.tools).unwrap_or_default())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(Decided::TaskNotPending);
            }
            sqlx::query("INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES ($1, $2, $3)")
                .bind(&a.revocation_id)
                .bind(&a.task_id)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
            self.notify(&mut tx, &format!("task:{}", a.task_id)).await?;
        }
        sqlx::query("UPDATE approvals SET state = $1, decided_at_ms = $2, decided_by = $3, note = $4 WHERE approval_id = $5")
            .bind(state.as_str())
            .bind(at_ms)
            .bind(decided_by)
            .bind(note)
            .bind(approval_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Decided::Done)
    }

    async fn use_approval(&self, approval_id: &str, at_ms: i64) -> StoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE approvals SET state = 'used', decided_at_ms = COALESCE(decided_at_ms, $1)
             WHERE approval_id = $2 AND state = 'approved' AND kind = 'call'",
        )
        .bind(at_ms)
        .bind(approval_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn get_pin(&self, name: &str) -> StoreResult<Option<ToolPin>> {
        let row = sqlx::query("SELECT * FROM tool_pins WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(ToolPin {
                name: r.try_get("name")?,
                hash: r.try_get("hash")?,
                pending_hash: r.try_get("pending_hash")?,
                approval_id: r.try_get("approval_id")?,
            })
        })
        .transpose()
    }

    async fn put_pin(&self, pin: &ToolPin) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tool_pins (name, hash, pending_hash, approval_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, pending_hash = excluded.pending_hash,
                approval_id = excluded.approval_id",
        )
        .bind(&pin.name)
        .bind(&pin.hash)
        .bind(&pin.pending_hash)
        .bind(&pin.approval_id)
        .execute(&mut *tx)
        .await?;
        self.notify(&mut tx, &format!("pin:{}", pin.name)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, events: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await?;
        let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()?;
        for row in crate::audit::chain_after(head, events) {
            sqlx::query(
                "INSERT INTO audit (seq, at_ms, kind, actor, task_id, detail, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(row.seq)
            .bind(row.at_ms)
            .bind(&row.kind)
            .bind(&row.actor)
            .bind(&row.task_id)
            .bind(row.detail.to_string())
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()
    }

    async fn audit_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRow {
                    seq: r.try_get("seq")?,
                    at_ms: r.try_get("at_ms")?,
                    kind: r.try_get("kind")?,
                    actor: r.try_get("actor")?,
                    task_id: r.try_get("task_id")?,
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
    }

    async fn insert_checkpoint(&self, c: &AuditCheckpoint) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at_ms, kid, signature) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(c.seq)
        .bind(&c.hash)
        .bind(c.at_ms)
        .bind(i64::from(c.kid))
        .bind(&c.signature)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn checkpoints_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<AuditCheckpoint>> {
        let rows =
            sqlx::query("SELECT * FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    async fn latest_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>> {
        let row = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }
}
