//! [`super::identity_api::IdentityStore`] for every database: local accounts, web
//! sessions, registered OAuth clients, and the OAuth grant behind each client's task (its
//! one authorization code and its chain of refresh tokens). Every secret is kept as a SHA-256 digest only
//! (session ids, codes, refresh tokens) or an Argon2id hash (passwords): a dump of the
//! database signs nobody in and redeems nothing.
//!
//! Written once for both databases, like the rest of the store; the single-use steps
//! (redeeming a code, rotating a refresh token) are one conditional `UPDATE` each, so two
//! replicas racing on the same code cannot both win.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::api::{StoreError, StoreResult};
use super::dialect::Dialect;
use super::identity_api::{
    IdentityStore, OAuthClient, OAuthGrant, Redeemed, Rotated, UserRecord, WebSession,
};
use super::sql::SqlStore;

fn grant_from_row<'r, R>(row: &'r R) -> StoreResult<OAuthGrant>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let code_hash: Option<String> = row.try_get("code_hash")?;
    Ok(OAuthGrant {
        task_id: row.try_get("task_id")?,
        client_id: row.try_get("client_id")?,
        user: row.try_get("user_name")?,
        redirect_uri: row.try_get("redirect_uri")?,
        code_challenge: row.try_get("code_challenge")?,
        resource: row.try_get("resource")?,
        state: row.try_get("state")?,
        scope: row.try_get("scope")?,
        created_at_ms: row.try_get("created_at_ms")?,
        code_expires_at_ms: row.try_get("code_expires_at_ms")?,
        code_issued: code_hash.is_some(),
    })
}

// The same bounds as the `Store` impl in `sql` (see there).
#[async_trait]
impl<D: Dialect> IdentityStore for SqlStore<D>
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
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, approver, created_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(i64::from(user.approver))
        .bind(user.created_at_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done) == 1)
    }

    async fn get_user(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(UserRecord {
                name: row.try_get("name")?,
                password_hash: row.try_get("password_hash")?,
                approver: row.try_get::<i64, _>("approver")? != 0,
                created_at_ms: row.try_get("created_at_ms")?,
            })
        })
        .transpose()
    }

    async fn insert_session(&self, session: &WebSession) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_name, approver, groups, csrf, created_at_ms,
                expires_at_ms)
             VALUES ($1, $2, $3, $7, $4, $5, $6)",
        )
        .bind(&session.id_hash)
        .bind(&session.user)
        .bind(i64::from(session.approver))
        .bind(&session.csrf)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .bind(serde_json::to_string(&session.groups).unwrap_or_else(|_| "[]".into()))
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn get_session(&self, id_hash: &str, now_ms: i64) -> StoreResult<Option<WebSession>> {
        let row =
            sqlx::query("SELECT * FROM web_sessions WHERE id_hash = $1 AND expires_at_ms > $2")
                .bind(id_hash)
                .bind(now_ms)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            let groups: String = row.try_get("groups")?;
            Ok(WebSession {
                id_hash: row.try_get("id_hash")?,
                user: row.try_get("user_name")?,
                approver: row.try_get::<i64, _>("approver")? != 0,
                groups: serde_json::from_str(&groups)
                    .map_err(|e| StoreError::Corrupt(format!("session groups: {e}")))?,
                csrf: row.try_get("csrf")?,
                created_at_ms: row.try_get("created_at_ms")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, id_hash: &str, now_ms: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1 OR expires_at_ms <= $2")
            .bind(id_hash)
            .bind(now_ms)
            .execute(self.dialect.writer(&self.pool))
            .await?;
        Ok(())
    }

    async fn insert_client(&self, client: &OAuthClient) -> StoreResult<()> {
        let uris = serde_json::to_string(&client.redirect_uris)
            .map_err(|e| StoreError::Corrupt(format!("redirect uris: {e}")))?;
        sqlx::query(
            "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, created_at_ms)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&client.client_id)
        .bind(&client.client_name)
        .bind(uris)
        .bind(client.created_at_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn get_client(&self, client_id: &str) -> StoreResult<Option<OAuthClient>> {
        let row = sqlx::query("SELECT * FROM oauth_clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let uris: String = row.try_get("redirect_uris")?;
            Ok(OAuthClient {
                client_id: row.try_get("client_id")?,
                client_name: row.try_get("client_name")?,
                redirect_uris: serde_json::from_str(&uris)
                    .map_err(|e| StoreError::Corrupt(format!("redirect uris: {e}")))?,
                created_at_ms: row.try_get("created_at_ms")?,
            })
        })
        .transpose()
    }

    async fn insert_grant(&self, grant: &OAuthGrant) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO oauth_grants (task_id, client_id, user_name, redirect_uri, code_challenge,
                resource, state, scope, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&grant.task_id)
        .bind(&grant.client_id)
        .bind(&grant.user)
        .bind(&grant.redirect_uri)
        .bind(&grant.code_challenge)
        .bind(&grant.resource)
        .bind(&grant.state)
        .bind(&grant.scope)
        .bind(grant.created_at_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn get_grant(&self, task_id: &str) -> StoreResult<Option<OAuthGrant>> {
        let row = sqlx::query("SELECT * FROM oauth_grants WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(grant_from_row).transpose()
    }

    async fn set_code(
        &self,
        task_id: &str,
        code_hash: &str,
        expires_at_ms: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE oauth_grants SET code_hash = $1, code_expires_at_ms = $2
             WHERE task_id = $3 AND code_hash IS NULL AND code_used = 0",
        )
        .bind(code_hash)
        .bind(expires_at_ms)
        .bind(task_id)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done) == 1)
    }

    async fn redeem_code(&self, code_hash: &str) -> StoreResult<Redeemed> {
        let first = sqlx::query(
            "UPDATE oauth_grants SET code_used = 1 WHERE code_hash = $1 AND code_used = 0",
        )
        .bind(code_hash)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        let row = sqlx::query("SELECT * FROM oauth_grants WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(Redeemed::Unknown);
        };
        let used: i64 = row.try_get("code_used")?;
        let grant = grant_from_row(&row)?;
        Ok(match (D::rows_affected(&first), used) {
            (1, _) => Redeemed::First(grant),
            (_, 2) => Redeemed::Expired(grant),
            _ => Redeemed::Replayed(grant),
        })
    }

    async fn expire_codes(
        &self,
        now_ms: i64,
        unclaimed_before_ms: i64,
    ) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE oauth_grants SET code_used = 2
             WHERE code_used = 0
               AND ((code_hash IS NOT NULL AND code_expires_at_ms <= $1)
                 OR (code_hash IS NULL AND created_at_ms <= $2))
             RETURNING task_id",
        )
        .bind(now_ms)
        .bind(unclaimed_before_ms)
        .fetch_all(self.dialect.writer(&self.pool))
        .await?;
        rows.iter()
            .map(|row| row.try_get("task_id").map_err(Into::into))
            .collect()
    }

    async fn insert_refresh(
        &self,
        token_hash: &str,
        task_id: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO oauth_refresh (token_hash, task_id, used, created_at_ms) VALUES ($1, $2, 0, $3)",
        )
        .bind(token_hash)
        .bind(task_id)
        .bind(now_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        now_ms: i64,
    ) -> StoreResult<Rotated> {
        let mut tx = self.dialect.begin_write(&self.pool).await?;
        let used =
            sqlx::query("UPDATE oauth_refresh SET used = 1 WHERE token_hash = $1 AND used = 0")
                .bind(old_hash)
                .execute(&mut *tx)
                .await?;
        let task: Option<String> =
            sqlx::query("SELECT task_id FROM oauth_refresh WHERE token_hash = $1")
                .bind(old_hash)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("task_id"))
                .transpose()?;
        let Some(task) = task else {
            return Ok(Rotated::Unknown);
        };
        if D::rows_affected(&used) == 0 {
            tx.commit().await?;
            return Ok(Rotated::Replayed(task));
        }
        sqlx::query(
            "INSERT INTO oauth_refresh (token_hash, task_id, used, created_at_ms) VALUES ($1, $2, 0, $3)",
        )
        .bind(new_hash)
        .bind(&task)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Rotated::Current(task))
    }

    async fn count_clients(&self) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM oauth_clients")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn prune_clients(&self, before_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM oauth_clients WHERE created_at_ms < $1
               AND NOT EXISTS (SELECT 1 FROM oauth_grants g WHERE g.client_id = oauth_clients.client_id)",
        )
        .bind(before_ms)
        .execute(self.dialect.writer(&self.pool))
        .await?;
        Ok(D::rows_affected(&done))
    }

    async fn refresh_task(&self, token_hash: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query("SELECT task_id FROM oauth_refresh WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get("task_id"))
                .transpose()?,
        )
    }
}
