//! [`super::connections_api::ConnectionStore`] for every database: people's upstream
//! connections and the per-task tokens exchanged from them. Tokens arrive here already
//! sealed (`tokens::seal`), so a dump of the database holds no usable provider token.
//!
//! The steps replicas race on are single conditional statements: taking the right to
//! refresh a connection (so one refresh is in flight per connection across replicas —
//! a provider that rotates refresh tokens would otherwise see a replay and end the
//! grant), storing a task's token once, and claiming its revocation once.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::api::StoreResult;
use super::connections_api::{ConnectionRecord, ConnectionStore, Refreshed, TaskUpstreamToken};
use super::dialect::Dialect;
use super::sql::SqlStore;

fn connection_from_row<'r, R>(row: &'r R) -> StoreResult<ConnectionRecord>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ConnectionRecord {
        connection_id: row.try_get("connection_id")?,
        user: row.try_get("user_name")?,
        provider: row.try_get("provider")?,
        state: row.try_get("state")?,
        broken_reason: row.try_get("broken_reason")?,
        scopes: row.try_get("scopes")?,
        refresh_token: row.try_get("refresh_token")?,
        access_token: row.try_get("access_token")?,
        access_expires_at_ms: row.try_get("access_expires_at_ms")?,
        refreshing_until_ms: row.try_get("refreshing_until_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        version: row.try_get("version")?,
    })
}

fn task_token_from_row<'r, R>(row: &'r R) -> StoreResult<TaskUpstreamToken>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(TaskUpstreamToken {
        task_id: row.try_get("task_id")?,
        provider: row.try_get("provider")?,
        connection_id: row.try_get("connection_id")?,
        access_token: row.try_get("access_token")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// The task states after which a task's upstream tokens are revoked.
const ENDED: &str = "('completed', 'revoked', 'expired', 'denied')";

// The same bounds as the `Store` impl in `sql` (see there).
#[async_trait]
impl<D: Dialect> ConnectionStore for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> String: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<&'q str>: Encode<'q, D::Db>,
    for<'q> Option<String>: Encode<'q, D::Db> + Decode<'q, D::Db>,
    for<'q> Option<i64>: Encode<'q, D::Db> + Decode<'q, D::Db>,
    for<'a> &'a str: ColumnIndex<<D::Db as Database>::Row>,
{
    async fn put_connection(
        &self,
        connection: &ConnectionRecord,
    ) -> StoreResult<Option<ConnectionRecord>> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let select = format!(
            "SELECT * FROM upstream_connections
             WHERE user_name = $1 AND provider = $2 AND state <> 'disconnected'{}",
            D::FOR_UPDATE
        );
        let replaced = sqlx::query(&select)
            .bind(&connection.user)
            .bind(&connection.provider)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(connection_from_row)
            .transpose()?;
        // The replaced one is not forgotten: its tokens wait to be revoked, like a
        // disconnected connection's.
        sqlx::query(
            "UPDATE upstream_connections SET state = 'disconnected', refreshing_until_ms = NULL,
                version = version + 1
             WHERE user_name = $1 AND provider = $2 AND state <> 'disconnected'",
        )
        .bind(&connection.user)
        .bind(&connection.provider)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO upstream_connections (connection_id, user_name, provider, state,
                broken_reason, scopes, refresh_token, access_token, access_expires_at_ms,
                refreshing_until_ms, created_at_ms, updated_at_ms, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0)",
        )
        .bind(&connection.connection_id)
        .bind(&connection.user)
        .bind(&connection.provider)
        .bind(&connection.state)
        .bind(&connection.broken_reason)
        .bind(&connection.scopes)
        .bind(&connection.refresh_token)
        .bind(&connection.access_token)
        .bind(connection.access_expires_at_ms)
        .bind(connection.refreshing_until_ms)
        .bind(connection.created_at_ms)
        .bind(connection.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaced)
    }

    async fn get_connection(
        &self,
        user: &str,
        provider: &str,
    ) -> StoreResult<Option<ConnectionRecord>> {
        let row = sqlx::query(
            "SELECT * FROM upstream_connections
             WHERE user_name = $1 AND provider = $2 AND state <> 'disconnected'",
        )
        .bind(user)
        .bind(provider)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(connection_from_row).transpose()
    }

    async fn list_connections(&self, user: &str) -> StoreResult<Vec<ConnectionRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM upstream_connections WHERE user_name = $1 AND state <> 'disconnected'
             ORDER BY provider",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn disconnect(&self, user: &str, connection_id: &str, now_ms: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE upstream_connections SET state = 'disconnected', refreshing_until_ms = NULL,
                updated_at_ms = $3, version = version + 1
             WHERE user_name = $1 AND connection_id = $2 AND state <> 'disconnected'",
        )
        .bind(user)
        .bind(connection_id)
        .bind(now_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done) == 1)
    }

    async fn disconnected(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<ConnectionRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM upstream_connections WHERE state = 'disconnected'
               AND (refreshing_until_ms IS NULL OR refreshing_until_ms <= $1)
             ORDER BY updated_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn disconnected_of(
        &self,
        user: &str,
        provider: &str,
    ) -> StoreResult<Vec<ConnectionRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM upstream_connections
             WHERE user_name = $1 AND provider = $2 AND state = 'disconnected'",
        )
        .bind(user)
        .bind(provider)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn claim_disconnected(
        &self,
        connection_id: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE upstream_connections SET refreshing_until_ms = $3
             WHERE connection_id = $1 AND state = 'disconnected'
               AND (refreshing_until_ms IS NULL OR refreshing_until_ms <= $2)",
        )
        .bind(connection_id)
        .bind(now_ms)
        .bind(until_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done) == 1)
    }

    async fn forget_connection(&self, connection_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM upstream_connections WHERE connection_id = $1")
            .bind(connection_id)
            .execute(self.dialect.writer(&self.pool))
            .await?;
        Ok(())
    }

    async fn claim_refresh(
        &self,
        connection_id: &str,
        version: i64,
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE upstream_connections SET refreshing_until_ms = $3
             WHERE connection_id = $1 AND state = 'active' AND version = $4
               AND (refreshing_until_ms IS NULL OR refreshing_until_ms <= $2)",
        )
        .bind(connection_id)
        .bind(now_ms)
        .bind(until_ms)
        .bind(version)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done) == 1)
    }

    async fn store_refreshed(
        &self,
        connection_id: &str,
        refreshed: &Refreshed,
        now_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE upstream_connections SET access_token = $2, access_expires_at_ms = $3,
                refresh_token = COALESCE($4, refresh_token), scopes = COALESCE($5, scopes),
                refreshing_until_ms = NULL, updated_at_ms = $6, version = version + 1
             WHERE connection_id = $1 AND state = 'active'",
        )
        .bind(connection_id)
        .bind(&refreshed.access_token)
        .bind(refreshed.access_expires_at_ms)
        .bind(&refreshed.refresh_token)
        .bind(&refreshed.scopes)
        .bind(now_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn release_refresh(&self, connection_id: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE upstream_connections SET refreshing_until_ms = NULL WHERE connection_id = $1",
        )
        .bind(connection_id)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn expire_access(&self, connection_id: &str, version: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE upstream_connections SET access_expires_at_ms = updated_at_ms
             WHERE connection_id = $1 AND version = $2",
        )
        .bind(connection_id)
        .bind(version)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn expire_task_token(
        &self,
        task_id: &str,
        provider: &str,
        token: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE task_upstream_tokens SET expires_at_ms = created_at_ms
             WHERE task_id = $1 AND provider = $2 AND access_token = $3
               AND revoked_at_ms IS NULL",
        )
        .bind(task_id)
        .bind(provider)
        .bind(token)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn mark_broken(&self, connection_id: &str, reason: &str, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE upstream_connections SET state = 'broken', broken_reason = $2,
                refresh_token = NULL, access_token = NULL, access_expires_at_ms = NULL,
                refreshing_until_ms = NULL, updated_at_ms = $3, version = version + 1
             WHERE connection_id = $1",
        )
        .bind(connection_id)
        .bind(reason)
        .bind(now_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn put_task_token(
        &self,
        token: &TaskUpstreamToken,
        stale_before_ms: i64,
    ) -> StoreResult<bool> {
        // An unrevoked token that is about to expire is replaced; a revoked one never
        // (its task ended), nor a fresh one (another replica's, which wins).
        let done = sqlx::query(
            "INSERT INTO task_upstream_tokens (task_id, provider, connection_id, access_token,
                expires_at_ms, revoked_at_ms, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, NULL, $6)
             ON CONFLICT (task_id, provider) DO UPDATE SET
                connection_id = excluded.connection_id, access_token = excluded.access_token,
                expires_at_ms = excluded.expires_at_ms, created_at_ms = excluded.created_at_ms
             WHERE task_upstream_tokens.revoked_at_ms IS NULL
               AND task_upstream_tokens.expires_at_ms IS NOT NULL
               AND task_upstream_tokens.expires_at_ms <= $7",
        )
        .bind(&token.task_id)
        .bind(&token.provider)
        .bind(&token.connection_id)
        .bind(&token.access_token)
        .bind(token.expires_at_ms)
        .bind(token.created_at_ms)
        .bind(stale_before_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done) == 1)
    }

    async fn get_task_token(
        &self,
        task_id: &str,
        provider: &str,
    ) -> StoreResult<Option<TaskUpstreamToken>> {
        let row =
            sqlx::query("SELECT * FROM task_upstream_tokens WHERE task_id = $1 AND provider = $2")
                .bind(task_id)
                .bind(provider)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(task_token_from_row).transpose()
    }

    async fn task_tokens_to_revoke(
        &self,
        provider: &str,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<TaskUpstreamToken>> {
        let query = format!(
            "SELECT t.* FROM task_upstream_tokens t JOIN tasks k ON k.task_id = t.task_id
             WHERE t.provider = $3 AND t.revoked_at_ms IS NULL
               AND (t.retry_at_ms IS NULL OR t.retry_at_ms <= $1)
               AND (k.state IN {ENDED} OR NOT EXISTS (
                    SELECT 1 FROM upstream_connections c
                    WHERE c.connection_id = t.connection_id AND c.state = 'active'))
             ORDER BY t.created_at_ms LIMIT $2"
        );
        let rows = sqlx::query(&query)
            .bind(now_ms)
            .bind(limit)
            .bind(provider)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_token_from_row).collect()
    }

    async fn forget_task_token(
        &self,
        task_id: &str,
        provider: &str,
        connection_id: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM task_upstream_tokens WHERE task_id = $1 AND provider = $2
               AND connection_id = $3 AND revoked_at_ms IS NOT NULL",
        )
        .bind(task_id)
        .bind(provider)
        .bind(connection_id)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn claim_task_token_revocation(
        &self,
        task_id: &str,
        provider: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE task_upstream_tokens SET revoked_at_ms = $3
             WHERE task_id = $1 AND provider = $2 AND revoked_at_ms IS NULL",
        )
        .bind(task_id)
        .bind(provider)
        .bind(now_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done) == 1)
    }

    async fn unclaim_task_token_revocation(
        &self,
        task_id: &str,
        provider: &str,
        retry_at_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE task_upstream_tokens SET revoked_at_ms = NULL, retry_at_ms = $3
             WHERE task_id = $1 AND provider = $2",
        )
        .bind(task_id)
        .bind(provider)
        .bind(retry_at_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }
}
