//! The store, written once for every database: each statement appears here (or, for the
//! transactions of several statements, in `sql_writes`) a single time, with `$N`
//! placeholders, which PostgreSQL and SQLite both read (SQLite takes `$N` as the N-th
//! argument, repeats included). What the databases do differently is the `Dialect`.
//!
//! Portable SQL only: no `max(a, b)` (SQLite) or `GREATEST` (PostgreSQL) but `CASE`;
//! upserts name the table (`token_usage.calls`), which both accept.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::api::{
    Activation, ApprovalRecord, ApprovalState, AuditCheckpoint, AuditRow, Decided, NewAuditEvent,
    NewTask, PruneRecord, Pruned, Revocation, Store, StoreResult, TaskQuery, TaskRecord, TaskState,
    ToolPin, UsageBatch,
};
use super::dialect::Dialect;
use super::rows::{
    approval_from_row, audit_row_from_row, checkpoint_from_row, pin_from_row, revocation_from_row,
    task_from_row,
};

/// A store on one database pool; `SqliteStore` and `PgStore` name its two dialects.
pub struct SqlStore<D: Dialect> {
    pub(super) pool: Pool<D::Db>,
    pub(super) dialect: D,
}

// Not derived: that would ask the database type to be `Clone` too.
impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
            dialect: self.dialect.clone(),
        }
    }
}

// The `where` clause below (repeated in `sql_writes`: Rust does not carry such bounds
// over from a trait) is what the shared code needs of a database: an executor for its
// connections, and text and 64-bit integers to bind and read by column name.
#[async_trait]
impl<D: Dialect> Store for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> String: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<&'q str>: Encode<'q, D::Db>,
    for<'q> Option<String>: Encode<'q, D::Db>,
    for<'q> Option<i64>: Encode<'q, D::Db>,
    for<'a> &'a str: ColumnIndex<<D::Db as Database>::Row>,
{
    async fn insert_tasks(&self, tasks: &[NewTask]) -> StoreResult<Vec<bool>> {
        self.insert_tasks_tx(tasks).await
    }

    async fn get_task(&self, task_id: &str) -> StoreResult<Option<TaskRecord>> {
        let row = sqlx::query("SELECT * FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks(&self, query: &TaskQuery) -> StoreResult<Vec<TaskRecord>> {
        // A tool is found in the stored JSON array by its quoted name, LIKE's wildcards
        // escaped (names may hold `_`).
        let tool = query.tool.as_ref().map(|tool| {
            let quoted = serde_json::Value::from(tool.as_str()).to_string();
            let escaped = quoted
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let (after_ms, after_id) = match &query.after {
            Some((ms, id)) => (Some(*ms), Some(id.as_str())),
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT * FROM tasks
             WHERE ($1 IS NULL OR state = $1)
               AND ($2 IS NULL OR agent = $2)
               AND ($3 IS NULL OR user_name = $3)
               AND ($4 IS NULL OR tools LIKE $4 ESCAPE '\\')
               AND ($5 IS NULL OR created_at_ms >= $5)
               AND ($6 IS NULL OR created_at_ms < $6)
               AND ($7 IS NULL OR created_at_ms < $7 OR (created_at_ms = $7 AND task_id < $8))
             ORDER BY created_at_ms DESC, task_id DESC LIMIT $9",
        )
        .bind(query.state.map(TaskState::as_str))
        .bind(query.agent.as_deref())
        .bind(query.user.as_deref())
        .bind(tool)
        .bind(query.since_ms)
        .bind(query.until_ms)
        .bind(after_ms)
        .bind(after_id)
        .bind(query.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
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
            .execute(self.dialect.writer(&self.pool))
            .await?;
        Ok(())
    }

    async fn purge_freed(&self) -> StoreResult<()> {
        for statement in D::PURGE {
            sqlx::query(statement)
                .execute(self.dialect.writer(&self.pool))
                .await?;
        }
        Ok(())
    }

    async fn renew_task(&self, renewal: &Activation, now_ms: i64) -> StoreResult<bool> {
        self.renew_task_tx(renewal, now_ms).await
    }

    async fn end_task(
        &self,
        task_id: &str,
        state: TaskState,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Option<Vec<Revocation>>> {
        self.end_task_tx(task_id, state, reason, at_ms).await
    }

    async fn end_agent_tasks(
        &self,
        agent: &str,
        state: TaskState,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<(Vec<String>, Vec<Revocation>)> {
        self.end_agent_tasks_tx(agent, state, reason, at_ms).await
    }

    async fn revoke_ids(
        &self,
        ids: &[String],
        task_id: Option<&str>,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let published = self.publish(&mut tx, ids, task_id, reason, at_ms).await?;
        self.dialect.notify(&mut tx, "rev").await?;
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
        sqlx::query(
            "INSERT INTO credentials (revocation_id, role, subject, issued_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(revocation_id)
        .bind(role)
        .bind(subject)
        .bind(at_ms)
        .bind(expires_at_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn prune_revocations(&self, before_ms: i64) -> StoreResult<u64> {
        let deleted = sqlx::query("DELETE FROM revocations WHERE expires_at_ms < $1")
            .bind(before_ms)
            .execute(self.dialect.writer(&self.pool))
            .await?;
        Ok(D::rows_affected(&deleted))
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

    async fn revoke_credentials(
        &self,
        role: &str,
        subject: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>> {
        self.revoke_credentials_tx(role, subject, at_ms).await
    }

    async fn revocations_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<Revocation>> {
        let rows = sqlx::query("SELECT * FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(revocation_from_row).collect()
    }

    async fn revocation_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM revocations")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn live_revocations_after(
        &self,
        seq: i64,
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Revocation>> {
        let rows = sqlx::query(
            "SELECT * FROM revocations WHERE seq > $1 AND (expires_at_ms IS NULL OR expires_at_ms >= $2)
             ORDER BY seq LIMIT $3",
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

    async fn all_revoked_ids(&self) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT revocation_id, reason FROM revocations")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("revocation_id")?, r.try_get("reason")?)))
            .collect()
    }

    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<Vec<u64>> {
        self.record_usage_tx(batch).await
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
            "INSERT INTO approvals (approval_id, kind, task_id, agent, purpose, tools, call_tool,
                call_args, args_hash, ttl_ms, state, requested_at_ms, expires_at_ms, decided_at_ms,
                decided_by, note, user_name)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
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
        .bind(&a.user)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
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

    async fn get_approval(&self, approval_id: &str) -> StoreResult<Option<ApprovalRecord>> {
        let row = sqlx::query("SELECT * FROM approvals WHERE approval_id = $1")
            .bind(approval_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
        limit: i64,
    ) -> StoreResult<Vec<ApprovalRecord>> {
        let query = match state {
            Some(state) => sqlx::query(
                "SELECT * FROM approvals WHERE state = $1 ORDER BY requested_at_ms LIMIT $2",
            )
            .bind(state.as_str()),
            None => sqlx::query("SELECT * FROM approvals ORDER BY requested_at_ms DESC LIMIT $1"),
        };
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
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
        self.decide_approval_tx(approval_id, state, decided_by, note, at_ms, activation)
            .await
    }

    async fn use_approval(&self, approval_id: &str, at_ms: i64) -> StoreResult<bool> {
        let used = sqlx::query(
            "UPDATE approvals SET state = 'used', decided_at_ms = COALESCE(decided_at_ms, $1)
             WHERE approval_id = $2 AND state = 'approved' AND kind = 'call'",
        )
        .bind(at_ms)
        .bind(approval_id)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&used) == 1)
    }

    async fn get_pin(&self, name: &str) -> StoreResult<Option<ToolPin>> {
        let row = sqlx::query("SELECT * FROM tool_pins WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pin_from_row).transpose()
    }

    async fn put_pin(&self, pin: &ToolPin) -> StoreResult<()> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        sqlx::query(
            "INSERT INTO tool_pins (name, hash, pending_hash, approval_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET hash = excluded.hash,
                pending_hash = excluded.pending_hash, approval_id = excluded.approval_id",
        )
        .bind(&pin.name)
        .bind(&pin.hash)
        .bind(&pin.pending_hash)
        .bind(&pin.approval_id)
        .execute(&mut *tx)
        .await?;
        self.dialect
            .notify(&mut tx, &format!("pin:{}", pin.name))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, events: &[NewAuditEvent]) -> StoreResult<()> {
        self.append_audit_tx(events).await
    }

    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>> {
        let row = sqlx::query(AUDIT_HEAD).fetch_optional(&self.pool).await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()
    }

    async fn audit_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_row_from_row).collect()
    }

    async fn audit_of_task(
        &self,
        task_id: &str,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT * FROM audit WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(task_id)
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_row_from_row).collect()
    }

    async fn prune_history(
        &self,
        before_ms: i64,
        max_rows: i64,
        record: &PruneRecord<'_>,
    ) -> StoreResult<Pruned> {
        self.prune_history_tx(before_ms, max_rows, record).await
    }

    async fn insert_checkpoint(&self, c: &AuditCheckpoint) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at_ms, kid, signature)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(c.seq)
        .bind(&c.hash)
        .bind(c.at_ms)
        .bind(i64::from(c.kid))
        .bind(&c.signature)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&inserted) == 1)
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

/// The newest audit row's seq and hash (also read inside `append_audit`).
pub(super) const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1";

#[cfg(test)]
mod tests {
    use sqlx::Row;

    /// The statements use `$N` for SQLite too: check that it binds the N-th argument,
    /// in any order and repeated.
    #[tokio::test]
    async fn sqlite_reads_numbered_placeholders() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let row = sqlx::query("SELECT $2 AS a, $1 AS b, $2 || $1 AS c")
            .bind("one")
            .bind("two")
            .fetch_one(&pool)
            .await
            .unwrap();
        let got: (String, String, String) = (
            row.try_get("a").unwrap(),
            row.try_get("b").unwrap(),
            row.try_get("c").unwrap(),
        );
        assert_eq!(got, ("two".into(), "one".into(), "twoone".into()));
    }
}
