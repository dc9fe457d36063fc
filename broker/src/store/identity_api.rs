//! The records and the trait of people's and MCP clients' durable state: local accounts,
//! web sessions, registered OAuth clients and the OAuth grant behind each client's task.
//! Implemented once, for both databases, in `identity`.

use async_trait::async_trait;

use super::failure::StoreResult;

/// A local account (`leash users add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user name (also the key of its `[users]` grant).
    pub name: String,
    /// Argon2id hash in PHC string form.
    pub password_hash: String,
    /// Whether the person may decide approvals.
    pub approver: bool,
    /// When it was created (ms since epoch).
    pub created_at_ms: i64,
}

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// SHA-256 (hex) of the cookie's value.
    pub id_hash: String,
    /// Who signed in.
    pub user: String,
    /// Whether they may decide approvals (read at sign-in).
    pub approver: bool,
    /// Their OpenID Connect groups (read at sign-in; none for local accounts).
    pub groups: Vec<String>,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// Sign-in time (ms since epoch).
    pub created_at_ms: i64,
    /// When the session ends by itself (ms since epoch).
    pub expires_at_ms: i64,
}

/// An OAuth client registered with RFC 7591 (or known from its metadata document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// The client id Leash issued (or the metadata document's URL).
    pub client_id: String,
    /// The name shown on the consent page.
    pub client_name: String,
    /// Its redirect URIs, exactly as registered.
    pub redirect_uris: Vec<String>,
    /// Registration time (ms since epoch).
    pub created_at_ms: i64,
}

/// What an authorization bound a client's task to: the code's PKCE challenge, the
/// redirect URI and the resource, checked again when the code is redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthGrant {
    /// The task the consent opened.
    pub task_id: String,
    /// The client.
    pub client_id: String,
    /// The person who consented.
    pub user: String,
    /// The redirect URI of the authorization request.
    pub redirect_uri: String,
    /// PKCE S256 challenge (base64url of SHA-256 of the verifier).
    pub code_challenge: String,
    /// RFC 8707 resource: the audience of the tokens.
    pub resource: String,
    /// The client's `state`, returned with the code.
    pub state: Option<String>,
    /// The tools consented to, space-separated (the token response's `scope`).
    pub scope: String,
    /// When the authorization was given (ms since epoch).
    pub created_at_ms: i64,
    /// When the code (once issued) stops being redeemable.
    pub code_expires_at_ms: Option<i64>,
    /// Whether a code was issued.
    pub code_issued: bool,
}

/// What redeeming a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// First use: the grant it belongs to.
    First(OAuthGrant),
    /// The code was redeemed before: a replay (its task must end).
    Replayed(OAuthGrant),
    /// The code expired unredeemed (its task was ended then).
    Expired(OAuthGrant),
    /// No such code.
    Unknown,
}

/// What rotating a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// The token was current; the new one replaces it. The task it belongs to.
    Current(String),
    /// The token was already rotated away: a replay (its task must end).
    Replayed(String),
    /// No such token.
    Unknown,
}

/// People, sessions, clients and OAuth grants.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Creates a local account; `false` if the name is taken.
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<bool>;
    /// A local account.
    async fn get_user(&self, name: &str) -> StoreResult<Option<UserRecord>>;
    /// Starts a web session.
    async fn insert_session(&self, session: &WebSession) -> StoreResult<()>;
    /// A live session by the digest of its id (expired ones are not returned).
    async fn get_session(&self, id_hash: &str, now_ms: i64) -> StoreResult<Option<WebSession>>;
    /// Ends a session (sign-out), and forgets every expired one.
    async fn delete_session(&self, id_hash: &str, now_ms: i64) -> StoreResult<()>;
    /// Registers a client.
    async fn insert_client(&self, client: &OAuthClient) -> StoreResult<()>;
    /// A registered client.
    async fn get_client(&self, client_id: &str) -> StoreResult<Option<OAuthClient>>;
    /// Records the authorization behind a client's task.
    async fn insert_grant(&self, grant: &OAuthGrant) -> StoreResult<()>;
    /// The authorization behind a task.
    async fn get_grant(&self, task_id: &str) -> StoreResult<Option<OAuthGrant>>;
    /// Attaches the one code of a grant; `false` if it already has one.
    async fn set_code(
        &self,
        task_id: &str,
        code_hash: &str,
        expires_at_ms: i64,
    ) -> StoreResult<bool>;
    /// Redeems a code by its digest, once.
    async fn redeem_code(&self, code_hash: &str) -> StoreResult<Redeemed>;
    /// Marks, once, every code that expired unredeemed by `now_ms`, and every grant still
    /// without a code that was given before `unclaimed_before_ms`; the tasks they were
    /// for.
    async fn expire_codes(&self, now_ms: i64, unclaimed_before_ms: i64)
    -> StoreResult<Vec<String>>;
    /// How many clients are registered.
    async fn count_clients(&self) -> StoreResult<i64>;
    /// Forgets registered clients created before `before_ms` that never got a grant; how
    /// many.
    async fn prune_clients(&self, before_ms: i64) -> StoreResult<u64>;
    /// Records the first refresh token of a task.
    async fn insert_refresh(&self, token_hash: &str, task_id: &str, now_ms: i64)
    -> StoreResult<()>;
    /// Replaces a current refresh token by a new one, once.
    async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        now_ms: i64,
    ) -> StoreResult<Rotated>;
    /// The task a refresh token (current or rotated) belongs to.
    async fn refresh_task(&self, token_hash: &str) -> StoreResult<Option<String>>;
}
