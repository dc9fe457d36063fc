//! The store's transactions of several statements (the one-statement operations are in
//! `sql`), written once for every database. Each runs in one write transaction and
//! takes the `Dialect`'s locks and notifications where replicas need them.

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type,
};

use super::api::{
    Activation, ApprovalKind, ApprovalState, Decided, NewAuditEvent, NewTask, PruneRecord, Pruned,
    Revocation, StoreError, StoreResult, TaskState, UsageBatch,
};
use super::chain::{chain_after, verify_chain};
use super::dialect::{Dialect, Lock};
use super::multirow;
use super::rows::{audit_row_from_row, revocation_from_row, to_i64};
use super::sql::{AUDIT_HEAD, SqlStore};

/// Task ids per `timeline:` notification: PostgreSQL's payload limit is 8000 bytes, and
/// a task id with its comma is 37.
const TIMELINE_IDS_PER_NOTICE: usize = 150;

/// Audit rows a retention cut reads at a time to check the chain it is about to delete.
const CUT_VERIFY_PAGE: i64 = 5_000;

/// Joined to `audit_checkpoints c`: the checkpoint names its row as stored (a rewritten
/// row is no anchor).
const USABLE: &str = "JOIN audit r ON r.seq = c.seq AND r.hash = c.hash";

/// True of an audit row `a` at or before the cut `$1` whose task has rows after it.
const STRADDLES: &str = "a.task_id IS NOT NULL
    AND EXISTS (SELECT 1 FROM audit b WHERE b.task_id = a.task_id AND b.seq > $1)";

/// The last row of any task with a row from `$1` (exclusive) to `$2`: each task's last
/// row is looked up by the `audit_by_task` index, row by row (a set form, `task_id IN
/// (...)`, may scan the whole log on PostgreSQL).
const REACH: &str =
    "SELECT MAX((SELECT MAX(b.seq) FROM audit b WHERE b.task_id = a.task_id)) AS reach
    FROM audit a WHERE a.seq > $1 AND a.seq <= $2 AND a.task_id IS NOT NULL";

/// Records a token issued for a task, so that ending the task revokes it.
const INSERT_TASK_TOKEN: &str =
    "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES ($1, $2, $3)";

/// SQL that is true when the revocation id `id` (an SQL expression) is in the feed.
///
/// The feed is indexed by each id's first 16 hex digits (`revocations_by_key`), not by
/// the whole 128-digit ids: a unique index on those took about 140 bytes an entry, and an
/// agent revoke's 100,000 ids (random, as signatures are) rewrote most of its pages. The
/// rest of the id is compared as well, so ids that share a prefix stay apart. (Written as
/// two halves, not `revocation_id = {id}`: given a column equal to a parameter, SQLite
/// puts the parameter in place of the column everywhere, the indexed expression
/// included, and then scans the table.) Every insert into the feed asks this first,
/// under `Lock::Revocations` (SQLite: its one writer), which keeps each id in the feed
/// once.
fn in_feed(id: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM revocations r
                  WHERE substr(r.revocation_id, 1, 16) = substr({id}, 1, 16)
                    AND substr(r.revocation_id, 17) = substr({id}, 17))"
    )
}

// The same bounds as the `Store` impl in `sql` (see there).
impl<D: Dialect> SqlStore<D>
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
    /// [`super::api::Store::insert_task`].
    pub(super) async fn insert_tasks_tx(&self, tasks: &[NewTask]) -> StoreResult<Vec<bool>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        // Serialised with revoke_credentials of the same agents; taken in one order, so
        // two batches never wait for each other in a circle.
        let agents: std::collections::BTreeSet<&str> =
            tasks.iter().map(|t| t.task.agent.as_str()).collect();
        for agent in agents {
            let lock = Lock::Subject {
                role: "agent",
                subject: agent,
            };
            self.dialect.lock(&mut tx, lock).await?;
        }
        // Tasks minted with a credential revoked meanwhile are refused (`false`).
        let credentials: Vec<&str> = tasks
            .iter()
            .filter_map(|t| t.credential.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut revoked: std::collections::HashSet<String> = std::collections::HashSet::new();
        for chunk in multirow::chunks(&credentials, 1) {
            let sql = format!(
                "WITH wanted (id) AS (VALUES {})
                 SELECT wanted.id AS revocation_id FROM wanted WHERE {}",
                multirow::placeholders(1, chunk.len(), D::ANONYMOUS_PARAMETERS),
                in_feed("wanted.id")
            );
            let mut query = sqlx::query(&sql);
            for credential in chunk {
                query = query.bind(*credential);
            }
            for row in query.fetch_all(&mut *tx).await? {
                revoked.insert(row.try_get("revocation_id")?);
            }
        }
        let answers: Vec<bool> = tasks
            .iter()
            .map(|t| t.credential.as_ref().is_none_or(|c| !revoked.contains(c)))
            .collect();
        let minted: Vec<&NewTask> = tasks
            .iter()
            .zip(&answers)
            .filter(|(_, minted)| **minted)
            .map(|(t, _)| t)
            .collect();
        for chunk in multirow::chunks(&minted, 18) {
            let sql = format!(
                "INSERT INTO tasks (task_id, agent, purpose, tools, checks, state, created_at_ms,
                    expires_at_ms, idle_timeout_ms, max_calls, calls, last_activity_ms, ended_at_ms,
                    end_reason, token, user_name, audience, user_group)
                 VALUES {}",
                multirow::placeholders(18, chunk.len(), D::ANONYMOUS_PARAMETERS)
            );
            let mut query = sqlx::query(&sql);
            for new in chunk {
                let task = &new.task;
                query = query
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
                    .bind(&task.user)
                    .bind(&task.audience)
                    .bind(&task.user_group);
            }
            query.execute(&mut *tx).await?;
        }
        let tokens: Vec<(&str, &NewTask)> = minted
            .iter()
            .filter_map(|t| t.revocation_id.as_deref().map(|id| (id, *t)))
            .collect();
        for chunk in multirow::chunks(&tokens, 3) {
            let sql = format!(
                "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES {}",
                multirow::placeholders(3, chunk.len(), D::ANONYMOUS_PARAMETERS)
            );
            let mut query = sqlx::query(&sql);
            for (id, new) in chunk {
                query = query
                    .bind(*id)
                    .bind(&new.task.task_id)
                    .bind(new.task.created_at_ms);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(answers)
    }

    /// [`super::api::Store::renew_task`].
    pub(super) async fn renew_task_tx(
        &self,
        renewal: &Activation,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let changed = sqlx::query(
            "UPDATE tasks SET expires_at_ms = $1, token = $2, tools = $3,
                last_activity_ms = CASE WHEN last_activity_ms > $4 THEN last_activity_ms ELSE $4 END
             WHERE task_id = $5 AND state = 'active'",
        )
        .bind(renewal.expires_at_ms)
        .bind(&renewal.token)
        .bind(serde_json::to_string(&renewal.tools).unwrap_or_default())
        .bind(now_ms)
        .bind(&renewal.task_id)
        .execute(&mut *tx)
        .await?;
        if D::rows_affected(&changed) == 0 {
            return Ok(false);
        }
        sqlx::query(INSERT_TASK_TOKEN)
            .bind(&renewal.revocation_id)
            .bind(&renewal.task_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let task = format!("task:{}", renewal.task_id);
        self.dialect.notify(&mut tx, &task).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// [`super::api::Store::end_task`].
    pub(super) async fn end_task_tx(
        &self,
        task_id: &str,
        state: TaskState,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Option<Vec<Revocation>>> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let changed = sqlx::query(
            "UPDATE tasks SET state = $1, ended_at_ms = $2, end_reason = $3
             WHERE task_id = $4 AND state IN ('active', 'pending_approval')",
        )
        .bind(state.as_str())
        .bind(at_ms)
        .bind(reason)
        .bind(task_id)
        .execute(&mut *tx)
        .await?;
        if D::rows_affected(&changed) == 0 {
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
        let published = self
            .publish(&mut tx, &ids, Some(task_id), state.as_str(), at_ms)
            .await?;
        self.dialect
            .notify(&mut tx, &format!("task:{task_id}"))
            .await?;
        self.dialect.notify(&mut tx, "rev").await?;
        tx.commit().await?;
        Ok(Some(published))
    }

    /// [`super::api::Store::end_agent_tasks`]: set-based, so 100,000 tasks are a few
    /// statements, not a few hundred thousand.
    pub(super) async fn end_agent_tasks_tx(
        &self,
        agent: &str,
        state: TaskState,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<(Vec<String>, Vec<Revocation>)> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        // Serialised with insert_tasks of the same agent: no task slips in between.
        self.dialect
            .lock(
                &mut tx,
                Lock::Subject {
                    role: "agent",
                    subject: agent,
                },
            )
            .await?;
        // The rows first, locked in id order (as record_usage takes them); the UPDATE
        // below then waits for nothing another writer could be holding in reverse. With
        // the agent's lock and these rows held (SQLite: the whole write), the UPDATE ends
        // exactly these tasks.
        let ended: Vec<String> = sqlx::query(&format!(
            "SELECT task_id FROM tasks WHERE agent = $1 AND state IN ('active', 'pending_approval')
             ORDER BY task_id{}",
            D::FOR_UPDATE
        ))
        .bind(agent)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("task_id"))
        .collect::<Result<_, _>>()?;
        if ended.is_empty() {
            return Ok((ended, Vec::new()));
        }
        sqlx::query(
            "UPDATE tasks SET state = $1, ended_at_ms = $2, end_reason = $3
             WHERE agent = $4 AND state IN ('active', 'pending_approval')",
        )
        .bind(state.as_str())
        .bind(at_ms)
        .bind(reason)
        .bind(agent)
        .execute(&mut *tx)
        .await?;
        // Taken after the task rows, in the order end_task takes them (rows, then the
        // feed): the other order could deadlock with a task ending on its own.
        self.dialect.lock(&mut tx, Lock::Revocations).await?;
        // The tokens of exactly the tasks this statement ended: same agent, state, end
        // time and reason (another task ended so in the same millisecond has its tokens
        // revoked already; those are skipped).
        // In id order, which is the index's: its pages are visited once each, in turn.
        let published = sqlx::query(&format!(
            "INSERT INTO revocations (revocation_id, task_id, reason, at_ms, expires_at_ms)
             SELECT tt.revocation_id, t.task_id, $1, $2, t.expires_at_ms
               FROM task_tokens tt JOIN tasks t ON t.task_id = tt.task_id
              WHERE t.agent = $3 AND t.state = $1 AND t.ended_at_ms = $2 AND t.end_reason = $4
                AND NOT {}
              ORDER BY tt.revocation_id
             RETURNING seq, revocation_id, task_id, reason, at_ms, expires_at_ms",
            in_feed("tt.revocation_id")
        ))
        .bind(state.as_str())
        .bind(at_ms)
        .bind(agent)
        .bind(reason)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(revocation_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        // Revocations first: other replicas refuse the tokens before reloading tasks.
        self.dialect.notify(&mut tx, "rev").await?;
        self.dialect
            .notify(&mut tx, &format!("agent:{agent}"))
            .await?;
        tx.commit().await?;
        Ok((ended, published))
    }

    /// [`super::api::Store::revoke_credentials`].
    pub(super) async fn revoke_credentials_tx(
        &self,
        role: &str,
        subject: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        // Serialised with insert_task of the same agent.
        self.dialect
            .lock(&mut tx, Lock::Subject { role, subject })
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
        let published = self
            .publish(&mut tx, &ids, None, "credential", at_ms)
            .await?;
        self.dialect.notify(&mut tx, "rev").await?;
        tx.commit().await?;
        Ok(published)
    }

    /// Inserts feed entries for ids not yet revoked, inside `tx`; returns the new
    /// entries. A task's ids carry the task's window as their own.
    pub(super) async fn publish(
        &self,
        tx: &mut Transaction<'static, D::Db>,
        ids: &[String],
        task_id: Option<&str>,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>> {
        // Seqs are taken at insert, not at commit: without this a transaction could commit
        // seq 101 before another commits seq 100, and feed readers that already moved past
        // 101 would never see 100.
        self.dialect.lock(tx, Lock::Revocations).await?;
        let mut out = Vec::new();
        let sql = format!(
            "INSERT INTO revocations (revocation_id, task_id, reason, at_ms, expires_at_ms)
             SELECT $1, $2, $3, $4, (SELECT expires_at_ms FROM tasks WHERE task_id = $2)
              WHERE NOT {}
             RETURNING seq, revocation_id, task_id, reason, at_ms, expires_at_ms",
            in_feed("$1")
        );
        for id in ids {
            let row = sqlx::query(&sql)
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

    /// [`super::api::Store::record_usage`].
    pub(super) async fn record_usage_tx(&self, batch: &UsageBatch) -> StoreResult<Vec<u64>> {
        if batch.tasks.is_empty() && batch.tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        // Task rows in id order, as an agent revoke locks them: two writers taking the
        // same rows in different orders could deadlock (PostgreSQL).
        let mut tasks: Vec<&(String, u64, i64)> = batch.tasks.iter().collect();
        tasks.sort_by(|a, b| a.0.cmp(&b.0));
        for (task_id, calls, last) in tasks {
            sqlx::query(
                "UPDATE tasks SET calls = CASE WHEN calls > $1 THEN calls ELSE $1 END,
                    last_activity_ms = CASE WHEN last_activity_ms > $2 THEN last_activity_ms ELSE $2 END
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

    /// [`super::api::Store::decide_approval`].
    pub(super) async fn decide_approval_tx(
        &self,
        approval_id: &str,
        state: ApprovalState,
        decided_by: &str,
        note: Option<&str>,
        at_ms: i64,
        activation: Option<&Activation>,
    ) -> StoreResult<Decided> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        // Locked (where rows can be) so that two replicas cannot both decide it.
        let read = format!(
            "SELECT state, kind FROM approvals WHERE approval_id = $1{}",
            D::FOR_UPDATE
        );
        let row = sqlx::query(&read)
            .bind(approval_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::Corrupt(format!("no approval {approval_id}")));
        };
        let current: String = row.try_get("state")?;
        let kind: String = row.try_get("kind")?;
        if current != ApprovalState::Pending.as_str() {
            let state = ApprovalState::parse(&current)
                .ok_or_else(|| StoreError::Corrupt(current.clone()))?;
            return Ok(Decided::AlreadyDecided(state));
        }
        if let Some(a) = activation {
            // The renewal guard: a renewal gives a new window to a task that is still
            // active; an issuance activates a task still waiting for it. So an ended task
            // is never revived, a renewal never activates a task that was not yet issued,
            // and an issuance never replaces the token of a running task.
            let from = if kind == ApprovalKind::Renewal.as_str() {
                TaskState::Active
            } else {
                TaskState::PendingApproval
            };
            let changed = sqlx::query(
                "UPDATE tasks SET state = 'active', expires_at_ms = $1, token = $2, tools = $3,
                    last_activity_ms = CASE WHEN last_activity_ms > $4 THEN last_activity_ms ELSE $4 END
                 WHERE task_id = $5 AND state = $6",
            )
            .bind(a.expires_at_ms)
            .bind(&a.token)
            .bind(serde_json::to_string(&a.tools).unwrap_or_default())
            .bind(at_ms)
            .bind(&a.task_id)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await?;
            if D::rows_affected(&changed) == 0 {
                return Ok(Decided::TaskNotPending);
            }
            sqlx::query(INSERT_TASK_TOKEN)
                .bind(&a.revocation_id)
                .bind(&a.task_id)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
            self.dialect
                .notify(&mut tx, &format!("task:{}", a.task_id))
                .await?;
        }
        sqlx::query(
            "UPDATE approvals SET state = $1, decided_at_ms = $2, decided_by = $3, note = $4
             WHERE approval_id = $5",
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

    /// [`super::api::Store::prune_history`]: the cut, its deletions and its
    /// `record` row in one transaction under the audit lock, so a crash leaves either
    /// the whole log or a pruned log that says so.
    pub(super) async fn prune_history_tx(
        &self,
        before_ms: i64,
        max_rows: i64,
        record: &PruneRecord<'_>,
    ) -> StoreResult<Pruned> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        // Under the chain's lock: the head cannot move while the cut is chosen.
        self.dialect.lock(&mut tx, Lock::Audit).await?;
        let bounds = sqlx::query("SELECT MIN(seq) AS first, MAX(seq) AS head FROM audit")
            .fetch_one(&mut *tx)
            .await?;
        let (Some(first), Some(head)) = (
            bounds.try_get::<Option<i64>, _>("first")?,
            bounds.try_get::<Option<i64>, _>("head")?,
        ) else {
            return Ok(Pruned::default());
        };
        let Some(anchor) = self
            .choose_cut(&mut tx, before_ms, first, head, max_rows)
            .await?
        else {
            if self
                .kept_between(&mut tx, before_ms, first, first)
                .await?
                .is_none()
            {
                tracing::info!(
                    oldest_seq = first,
                    "audit rows past retention wait: no signed checkpoint yet after them that \
                     no task still in retention reaches across"
                );
            }
            return Ok(Pruned::default());
        };
        self.verify_doomed_rows(&mut tx, first, anchor).await?;
        let rows = sqlx::query("DELETE FROM audit WHERE seq <= $1")
            .bind(anchor)
            .execute(&mut *tx)
            .await?;
        let tasks = sqlx::query(
            "DELETE FROM tasks WHERE ended_at_ms IS NOT NULL AND ended_at_ms < $1
               AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.task_id = tasks.task_id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM approvals WHERE state <> 'pending' AND task_id <> '' AND requested_at_ms < $1
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = approvals.task_id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM task_tokens WHERE issued_at_ms < $1
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = task_tokens.task_id)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        let pruned = Pruned {
            through_seq: Some(anchor),
            rows: D::rows_affected(&rows),
            tasks: D::rows_affected(&tasks),
        };
        self.append_chained(&mut tx, &[record(&pruned)]).await?;
        tx.commit().await?;
        Ok(pruned)
    }

    /// Where [`Self::prune_history_tx`] may cut: a checkpoint naming its row as stored,
    /// below the head and every row that must stay (young, or of a task not ended before
    /// `before_ms`), with no task on both sides of it. The newest such checkpoint within
    /// `max_rows` of the oldest row; with none there, the oldest one past them. Each
    /// query reads only the rows up to the checkpoint it considers (and, by the
    /// `audit_by_task` index, the rows of tasks that reach past it), not the whole log.
    async fn choose_cut(
        &self,
        tx: &mut Transaction<'static, D::Db>,
        before_ms: i64,
        first: i64,
        head: i64,
        max_rows: i64,
    ) -> StoreResult<Option<i64>> {
        let window = first.saturating_add(max_rows.max(1) - 1).min(head - 1);
        let kept = self.kept_between(tx, before_ms, first, window).await?;
        // Backwards from the window's end: a task that straddles a checkpoint straddles
        // every checkpoint from its first row on, so the next try is before that row.
        // Each try ends below the last, and the search stops below `first`.
        let mut limit = kept.map_or(window, |kept| kept - 1);
        loop {
            let anchor: Option<i64> = sqlx::query(&format!(
                "SELECT MAX(c.seq) AS anchor FROM audit_checkpoints c {USABLE}
                  WHERE c.seq <= $1 AND c.seq >= $2"
            ))
            .bind(limit)
            .bind(first)
            .fetch_one(&mut **tx)
            .await?
            .try_get("anchor")?;
            let Some(anchor) = anchor else { break };
            let straddling: Option<i64> = sqlx::query(&format!(
                "SELECT MIN(a.seq) AS s FROM audit a WHERE a.seq <= $1 AND a.seq >= $2 AND {STRADDLES}"
            ))
            .bind(anchor)
            .bind(first)
            .fetch_one(&mut **tx)
            .await?
            .try_get("s")?;
            match straddling {
                None => return Ok(Some(anchor)),
                Some(first_of_task) => limit = first_of_task - 1,
            }
        }
        if kept.is_some() {
            return Ok(None);
        }
        // Forwards past the window: the oldest usable checkpoint, stepping past the last
        // row of each task that straddles one (a long task at the log's front would
        // otherwise stop every cut). A task that straddles a later checkpoint has no row
        // at or before the one tried last (it would have straddled that one too, and the
        // later one is past its last row), so each try reads only the rows after the one
        // before; each tries a later checkpoint, and the search ends at the head. The
        // cut this finds may hold more than `max_rows` rows: as many as the long task spans.
        let mut checked = window;
        let mut scanned = first - 1;
        let mut after = window;
        loop {
            let anchor: Option<i64> = sqlx::query(&format!(
                "SELECT MIN(c.seq) AS anchor FROM audit_checkpoints c {USABLE}
                  WHERE c.seq > $1 AND c.seq < $2"
            ))
            .bind(after)
            .bind(head)
            .fetch_one(&mut **tx)
            .await?
            .try_get("anchor")?;
            let Some(anchor) = anchor else {
                return Ok(None);
            };
            if self
                .kept_between(tx, before_ms, checked + 1, anchor)
                .await?
                .is_some()
            {
                return Ok(None);
            }
            checked = anchor;
            let reach: Option<i64> = sqlx::query(REACH)
                .bind(scanned)
                .bind(anchor)
                .fetch_one(&mut **tx)
                .await?
                .try_get("reach")?;
            scanned = anchor;
            match reach {
                // A checkpoint at that row or after it.
                Some(last) if last > anchor => after = last - 1,
                _ => return Ok(Some(anchor)),
            }
        }
    }

    /// Checks, before a cut deletes them, that the rows up to `anchor` still chain from
    /// the previous cut's checkpoint (or the log's start) to the checkpoint at `anchor`:
    /// a row rewritten in the database would otherwise vanish with the evidence of it.
    /// A broken chain stops retention (the error says where) until someone looks.
    async fn verify_doomed_rows(
        &self,
        tx: &mut Transaction<'static, D::Db>,
        first: i64,
        anchor: i64,
    ) -> StoreResult<()> {
        let refuse = |why: String| {
            StoreError::Corrupt(format!(
                "{why}; retention deletes no audit rows it cannot vouch for"
            ))
        };
        let mut head = if first == 1 {
            (0, String::new())
        } else {
            let hash: Option<String> =
                sqlx::query("SELECT hash FROM audit_checkpoints WHERE seq = $1")
                    .bind(first - 1)
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|row| row.try_get("hash"))
                    .transpose()?;
            let Some(hash) = hash else {
                return Err(refuse(format!(
                    "audit rows 1 to {} are missing and no checkpoint anchors row {first}",
                    first - 1
                )));
            };
            (first - 1, hash)
        };
        while head.0 < anchor {
            let page = sqlx::query(
                "SELECT * FROM audit WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            )
            .bind(head.0)
            .bind(anchor)
            .bind(CUT_VERIFY_PAGE)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(audit_row_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
            if page.is_empty() {
                return Err(refuse(format!("audit row {} is missing", head.0 + 1)));
            }
            head = verify_chain((head.0, &head.1), &page)
                .map_err(|broken| refuse(broken.to_string()))?;
        }
        Ok(())
    }

    /// The oldest row from `from` to `to` that must stay: younger than `before_ms`, or of
    /// a task still running or ended since.
    async fn kept_between(
        &self,
        tx: &mut Transaction<'static, D::Db>,
        before_ms: i64,
        from: i64,
        to: i64,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query(
            "SELECT MIN(seq) AS kept FROM audit WHERE seq >= $2 AND seq <= $3 AND (at_ms >= $1
               OR (task_id IS NOT NULL AND EXISTS (SELECT 1 FROM tasks t
                   WHERE t.task_id = audit.task_id AND (t.ended_at_ms IS NULL OR t.ended_at_ms >= $1))))",
        )
        .bind(before_ms)
        .bind(from)
        .bind(to)
        .fetch_one(&mut **tx)
        .await?
        .try_get("kept")?)
    }

    /// [`super::api::Store::append_audit`]: chained after the head read under the audit
    /// lock, so every replica extends one chain.
    pub(super) async fn append_audit_tx(&self, events: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        self.dialect.lock(&mut tx, Lock::Audit).await?;
        self.append_chained(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends `events` after the chain's head inside `tx`, which holds the audit lock,
    /// and tells replicas which timelines grew (with the rows' commit, never before it).
    async fn append_chained(
        &self,
        tx: &mut Transaction<'static, D::Db>,
        events: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let head = sqlx::query(AUDIT_HEAD)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()?;
        let rows = chain_after(head, events);
        for chunk in multirow::chunks(&rows, 8) {
            let sql = format!(
                "INSERT INTO audit (seq, at_ms, kind, actor, task_id, detail, prev_hash, hash)
                 VALUES {}",
                multirow::placeholders(8, chunk.len(), D::ANONYMOUS_PARAMETERS)
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(row.seq)
                    .bind(row.at_ms)
                    .bind(&row.kind)
                    .bind(&row.actor)
                    .bind(&row.task_id)
                    .bind(row.detail.to_string())
                    .bind(&row.prev_hash)
                    .bind(&row.hash);
            }
            query.execute(&mut **tx).await?;
        }
        let mut tasks: Vec<&str> = events.iter().filter_map(|e| e.task_id.as_deref()).collect();
        tasks.sort_unstable();
        tasks.dedup();
        for ids in tasks.chunks(TIMELINE_IDS_PER_NOTICE) {
            let payload = format!("timeline:{}", ids.join(","));
            self.dialect.notify(tx, &payload).await?;
        }
        Ok(())
    }
}
