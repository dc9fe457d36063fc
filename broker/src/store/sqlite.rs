//! The embedded store: one SQLite file (WAL, synchronous=FULL) in the data folder.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

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
    "CREATE TABLE IF NOT EXISTS revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        revocation_id TEXT NOT NULL UNIQUE,
        task_id TEXT,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER)",
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
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        kid INTEGER NOT NULL,
        signature TEXT NOT NULL)",
];

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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

    async fn connect(options: SqliteConnectOptions) -> StoreResult<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
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
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        // Columns added since the first release, for databases created before them.
        for (table, column) in [
            ("credentials", "expires_at_ms INTEGER"),
            ("revocations", "expires_at_ms INTEGER"),
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
        sqlx::query(
            "CREATE INDEX IF NOT EXISTS revocations_by_expiry ON revocations(expires_at_ms)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS revocations_by_task ON revocations(task_id)")
            .execute(&pool)
            .await?;
        Ok(SqliteStore { pool })
    }
}

/// Inserts feed entries for ids not yet revoked, inside `tx`; returns the new entries.
async fn publish(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ids: &[String],
    task_id: Option<&str>,
    reason: &str,
    at_ms: i64,
) -> StoreResult<Vec<Revocation>> {
    let mut out = Vec::new();
    for id in ids {
        let row = sqlx::query(
            "INSERT INTO revocations (revocation_id, task_id, reason, at_ms, expires_at_ms)
             VALUES (?, ?, ?, ?, (SELECT expires_at_ms FROM tasks WHERE task_id = ?))
             ON CONFLICT(revocation_id) DO NOTHING
             RETURNING seq, revocation_id, task_id, reason, at_ms, expires_at_ms",
        )
        .bind(id)
        .bind(task_id)
        .bind(reason)
        .bind(at_ms)
        .bind(task_id)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            out.push(revocation_from_row(&row)?);
        }
    }
    Ok(out)
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_task(
        &self,
        task: &TaskRecord,
        revocation_id: Option<&str>,
        credential: Option<&str>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(credential) = credential {
            let revoked: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM revocations WHERE revocation_id = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            sqlx::query(
                "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES (?, ?, ?)",
            )
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
        let row = sqlx::query("SELECT * FROM tasks WHERE task_id = ?")
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
                    "SELECT * FROM tasks WHERE state = ? ORDER BY created_at_ms DESC LIMIT ?",
                )
                .bind(state.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT * FROM tasks ORDER BY created_at_ms DESC LIMIT ?")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(task_from_row).collect()
    }

    async fn live_tasks_of(&self, agent: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT task_id FROM tasks WHERE agent = ? AND state IN ('active', 'pending_approval')",
        )
        .bind(agent)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("task_id")?)).collect()
    }

    async fn due_tasks(&self, now_ms: i64) -> StoreResult<Vec<TaskRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE state = 'active' AND (expires_at_ms <= ?1
                OR (idle_timeout_ms IS NOT NULL AND last_activity_ms + idle_timeout_ms <= ?1))",
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
        sqlx::query("UPDATE tasks SET token = ? WHERE task_id = ? AND token = ?")
            .bind(new)
            .bind(task_id)
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn purge_freed(&self) -> StoreResult<()> {
        sqlx::query("VACUUM").execute(&self.pool).await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let changed = sqlx::query(
            "UPDATE tasks SET expires_at_ms = ?, token = ?, tools = ?, last_activity_ms = max(last_activity_ms, ?)
             WHERE task_id = ? AND state = 'active'",
        )
        .bind(expires_at_ms)
        .bind(token)
        .bind(serde_json::to_string(tools).unwrap_or_default())
        .bind(now_ms)
        .bind(task_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES (?, ?, ?)",
        )
        .bind(revocation_id)
        .bind(task_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let changed = sqlx::query(
            "UPDATE tasks SET state = ?, ended_at_ms = ?, end_reason = ?
             WHERE task_id = ? AND state IN ('active', 'pending_approval')",
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
            sqlx::query("SELECT revocation_id FROM task_tokens WHERE task_id = ?")
                .bind(task_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("revocation_id"))
                .collect::<Result<_, _>>()?;
        let published = publish(&mut tx, &ids, Some(task_id), state.as_str(), at_ms).await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let published = publish(&mut tx, ids, task_id, reason, at_ms).await?;
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
        sqlx::query("INSERT INTO credentials (revocation_id, role, subject, issued_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?)")
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let ids: Vec<String> =
            sqlx::query("SELECT revocation_id FROM credentials WHERE role = ? AND subject = ?")
                .bind(role)
                .bind(subject)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("revocation_id"))
                .collect::<Result<_, _>>()?;
        let published = publish(&mut tx, &ids, None, "credential", at_ms).await?;
        tx.commit().await?;
        Ok(published)
    }

    async fn prune_revocations(&self, before_ms: i64) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM revocations WHERE expires_at_ms < ?")
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn revoked_tokens_of(&self, task_id: &str) -> StoreResult<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM revocations WHERE task_id = ? AND reason = 'token'",
        )
        .bind(task_id)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?)
    }

    async fn revocations_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<Revocation>> {
        let rows = sqlx::query("SELECT * FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?")
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
            "SELECT * FROM revocations WHERE seq > ? AND (expires_at_ms IS NULL OR expires_at_ms >= ?) ORDER BY seq LIMIT ?",
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
                  + (SELECT COUNT(*) FROM revocations WHERE expires_at_ms >= ?) AS n",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (task_id, calls, last) in &batch.tasks {
            sqlx::query(
                "UPDATE tasks SET calls = max(calls, ?), last_activity_ms = max(last_activity_ms, ?) WHERE task_id = ?",
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
                "INSERT INTO token_usage (revocation_id, calls) VALUES (?, ?)
                 ON CONFLICT(revocation_id) DO UPDATE SET calls = calls + excluded.calls
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
        let row = sqlx::query("SELECT calls FROM token_usage WHERE revocation_id = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row = sqlx::query("SELECT * FROM approvals WHERE approval_id = ?")
            .bind(approval_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn pending_approvals_of(&self, agent: &str) -> StoreResult<i64> {
        Ok(
            sqlx::query(
                "SELECT COUNT(*) AS n FROM approvals WHERE agent = ? AND state = 'pending'",
            )
            .bind(agent)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?,
        )
    }

    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
        limit: i64,
    ) -> StoreResult<Vec<ApprovalRecord>> {
        let rows = match state {
            Some(state) => {
                sqlx::query(
                    "SELECT * FROM approvals WHERE state = ? ORDER BY requested_at_ms LIMIT ?",
                )
                .bind(state.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT * FROM approvals ORDER BY requested_at_ms DESC LIMIT ?")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(approval_from_row).collect()
    }

    async fn due_approvals(&self, now_ms: i64) -> StoreResult<Vec<ApprovalRecord>> {
        let rows =
            sqlx::query("SELECT * FROM approvals WHERE state = 'pending' AND expires_at_ms <= ?")
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<String> =
            sqlx::query("SELECT state FROM approvals WHERE approval_id = ?")
                .bind(approval_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("state"))
                .transpose()?;
        let Some(current) = current else {
            return Err(StoreError::Corrupt(format!("no approval {approval_id}")));
        };
        if current != "pending" {
            let state = ApprovalState::parse(&current)
                .ok_or_else(|| StoreError::Corrupt(current.clone()))?;
            return Ok(Decided::AlreadyDecided(state));
        }
        if let Some(a) = activation {
            let changed = sqlx::query(
                "UPDATE tasks SET state = 'active', expires_at_ms = ?, token = ?, tools = ?, last_activity_ms = max(last_activity_ms, ?)
                 WHERE task_id = ? AND state IN ('pending_approval', 'active')
                   AND (state = 'active') = (SELECT kind = 'renewal' FROM approvals WHERE approval_id = ?)",
            )
            .bind(a.expires_at_ms)
            .bind(&a.token)
            .bind(serde_json::to_string(&a.tools).unwrap_or_default())
            .bind(at_ms)
            .bind(&a.task_id)
            .bind(approval_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(Decided::TaskNotPending);
            }
            sqlx::query(
                "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES (?, ?, ?)",
            )
            .bind(&a.revocation_id)
            .bind(&a.task_id)
            .bind(at_ms)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE approvals SET state = ?, decided_at_ms = ?, decided_by = ?, note = ? WHERE approval_id = ?",
        )
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
            "UPDATE approvals SET state = 'used', decided_at_ms = coalesce(decided_at_ms, ?)
             WHERE approval_id = ? AND state = 'approved' AND kind = 'call'",
        )
        .bind(at_ms)
        .bind(approval_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn get_pin(&self, name: &str) -> StoreResult<Option<ToolPin>> {
        let row = sqlx::query("SELECT * FROM tool_pins WHERE name = ?")
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
        sqlx::query(
            "INSERT INTO tool_pins (name, hash, pending_hash, approval_id) VALUES (?, ?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET hash = excluded.hash, pending_hash = excluded.pending_hash,
                approval_id = excluded.approval_id",
        )
        .bind(&pin.name)
        .bind(&pin.hash)
        .bind(&pin.pending_hash)
        .bind(&pin.approval_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append_audit(&self, events: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()?;
        for row in crate::audit::chain_after(head, events) {
            sqlx::query(
                "INSERT INTO audit (seq, at_ms, kind, actor, task_id, detail, prev_hash, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?")
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
            "INSERT INTO audit_checkpoints (seq, hash, at_ms, kid, signature) VALUES (?, ?, ?, ?, ?)
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
            sqlx::query("SELECT * FROM audit_checkpoints WHERE seq > ? ORDER BY seq LIMIT ?")
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
