//! The records and the trait of people's upstream connections: the account a person
//! connected at a `[providers]` entry (its tokens sealed), and the narrowed token each
//! task got from it. Implemented once, for both databases, in `connections`.

use async_trait::async_trait;

use super::failure::StoreResult;

/// A person's connected account at a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// `con_…`: named in the audit log instead of any token.
    pub connection_id: String,
    /// The person.
    pub user: String,
    /// The `[providers]` entry.
    pub provider: String,
    /// `active`; `broken` once the provider refused its refresh token; `disconnected`
    /// while its tokens wait to be revoked at the provider (it serves nothing then).
    pub state: String,
    /// Why it broke (shown to its person; never a token).
    pub broken_reason: Option<String>,
    /// The scopes the provider granted, space-separated.
    pub scopes: String,
    /// The refresh token, sealed (none if the provider gave none).
    pub refresh_token: Option<String>,
    /// The current access token, sealed.
    pub access_token: Option<String>,
    /// When that access token expires (ms since epoch; none: the provider did not say).
    pub access_expires_at_ms: Option<i64>,
    /// Until when one replica holds the right to refresh (ms since epoch).
    pub refreshing_until_ms: Option<i64>,
    /// When it was connected (ms since epoch).
    pub created_at_ms: i64,
    /// When its tokens last changed (ms since epoch).
    pub updated_at_ms: i64,
    /// Counts every change of its tokens or state: a refresh is claimed only for the
    /// version its refresh token was read at.
    pub version: i64,
}

/// The token a task got for one provider (RFC 8693 token exchange), revoked at the
/// provider when the task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUpstreamToken {
    /// The task.
    pub task_id: String,
    /// The `[providers]` entry.
    pub provider: String,
    /// The connection it was exchanged from.
    pub connection_id: String,
    /// The token, sealed.
    pub access_token: String,
    /// When it expires (ms since epoch), if the provider said.
    pub expires_at_ms: Option<i64>,
    /// When Leash revoked it at the provider (or claimed the revocation).
    pub revoked_at_ms: Option<i64>,
    /// When it was obtained (ms since epoch).
    pub created_at_ms: i64,
}

/// Fresh tokens from a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// The new access token, sealed.
    pub access_token: String,
    /// Its expiry (ms since epoch), if the provider said.
    pub access_expires_at_ms: Option<i64>,
    /// A rotated refresh token, sealed (none: keep the old one).
    pub refresh_token: Option<String>,
    /// The scopes, if the provider said.
    pub scopes: Option<String>,
}

/// Connections and per-task upstream tokens.
#[async_trait]
pub trait ConnectionStore: Send + Sync + 'static {
    /// Stores a new connection, replacing the person's earlier one at that provider (which
    /// turns `disconnected`: its tokens wait to be revoked); returns the replaced one.
    async fn put_connection(
        &self,
        connection: &ConnectionRecord,
    ) -> StoreResult<Option<ConnectionRecord>>;
    /// A person's connection at a provider (not a disconnected one).
    async fn get_connection(
        &self,
        user: &str,
        provider: &str,
    ) -> StoreResult<Option<ConnectionRecord>>;
    /// Every connection of a person (not the disconnected ones).
    async fn list_connections(&self, user: &str) -> StoreResult<Vec<ConnectionRecord>>;
    /// Disconnects a person's connection: from now on it serves nothing, and its tokens
    /// wait for [`ConnectionStore::claim_disconnected`]. `false`: no such connection of
    /// that person.
    async fn disconnect(&self, user: &str, connection_id: &str, now_ms: i64) -> StoreResult<bool>;
    /// Disconnected connections whose tokens are due to be revoked (at most `limit`).
    async fn disconnected(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<ConnectionRecord>>;
    /// A person's disconnected connections at a provider whose tokens still wait.
    async fn disconnected_of(
        &self,
        user: &str,
        provider: &str,
    ) -> StoreResult<Vec<ConnectionRecord>>;
    /// Claims revoking a disconnected connection's tokens until `until_ms`; `false` if
    /// another replica holds the claim.
    async fn claim_disconnected(
        &self,
        connection_id: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<bool>;
    /// Forgets a connection whose tokens were revoked.
    async fn forget_connection(&self, connection_id: &str) -> StoreResult<()>;
    /// Takes the right to refresh an active connection until `until_ms`, unless another
    /// holder's right is still running at `now_ms` or its tokens changed since `version`
    /// was read (another replica refreshed meanwhile: its refresh token is spent); whether
    /// it was taken.
    async fn claim_refresh(
        &self,
        connection_id: &str,
        version: i64,
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<bool>;
    /// Stores refreshed tokens and gives the right to refresh back.
    async fn store_refreshed(
        &self,
        connection_id: &str,
        refreshed: &Refreshed,
        now_ms: i64,
    ) -> StoreResult<()>;
    /// Gives the right to refresh back without new tokens (the provider could not be
    /// reached).
    async fn release_refresh(&self, connection_id: &str) -> StoreResult<()>;
    /// Marks the access token of `version` expired (its upstream refused it before its
    /// time), so the next call refreshes; a newer token is left alone.
    async fn expire_access(&self, connection_id: &str, version: i64) -> StoreResult<()>;
    /// Marks a task's unrevoked token expired (its upstream refused it), so the next call
    /// exchanges a new one.
    async fn expire_task_token(
        &self,
        task_id: &str,
        provider: &str,
        token: &str,
    ) -> StoreResult<()>;
    /// Marks a connection broken (its refresh token was refused) and forgets its tokens.
    async fn mark_broken(&self, connection_id: &str, reason: &str, now_ms: i64) -> StoreResult<()>;
    /// Stores a task's token for a provider. One already stored is replaced only if it is
    /// unrevoked and expires at or before `stale_before_ms` (the stale one the caller
    /// found); otherwise it stays and the answer is `false` (the caller revokes its own and
    /// uses the stored one).
    async fn put_task_token(
        &self,
        token: &TaskUpstreamToken,
        stale_before_ms: i64,
    ) -> StoreResult<bool>;
    /// A task's token for a provider.
    async fn get_task_token(
        &self,
        task_id: &str,
        provider: &str,
    ) -> StoreResult<Option<TaskUpstreamToken>>;
    /// Unrevoked tokens at `provider` of tasks that ended, or whose connection no longer
    /// serves (disconnected, broken, replaced), due at `now_ms` (at most `limit`).
    async fn task_tokens_to_revoke(
        &self,
        provider: &str,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<TaskUpstreamToken>>;
    /// Forgets a task's revoked token from connection `connection_id` (revoked because that
    /// connection went; the task may get a new one from a new connection). A newer token
    /// stored meanwhile is left alone.
    async fn forget_task_token(
        &self,
        task_id: &str,
        provider: &str,
        connection_id: &str,
    ) -> StoreResult<()>;
    /// Claims the revocation of one task token once (`false`: another replica did).
    async fn claim_task_token_revocation(
        &self,
        task_id: &str,
        provider: &str,
        now_ms: i64,
    ) -> StoreResult<bool>;
    /// Gives a claimed revocation back (the provider could not be reached): retried from
    /// `retry_at_ms` on.
    async fn unclaim_task_token_revocation(
        &self,
        task_id: &str,
        provider: &str,
        retry_at_ms: i64,
    ) -> StoreResult<()>;
}
