//! `Connections`: people's accounts at upstream providers, and the access token each call
//! carries.
//!
//! - **Connect** (`/connections`, signed in): the provider's code flow with PKCE and
//!   `state`; what the flow must remember travels in a cookie sealed with the at-rest key
//!   and bound to the person, so any replica can finish it and no other browser can.
//! - **Per call**: a tool with `upstream_auth` gets `Authorization: Bearer` of *the
//!   task's user* — the connection's access token, refreshed ahead of expiry with one
//!   refresh in flight per connection (a lock in this process, a lease row across
//!   replicas) — or, where the provider does RFC 8693, the task's own token narrowed to
//!   the scopes of the task's tools, obtained at its first call. `grant =
//!   "client_credentials"` tools get the deployment's token instead.
//! - **Task end**: the task's own tokens are revoked at the provider (RFC 7009) by
//!   [`Connections::revoke_ended`], woken by the task's end and swept every few seconds.
//! - **Disconnect** forgets the connection and revokes its tokens at the provider.
//!
//! Tokens are sealed at rest (kind and owner and key id bound), never logged, audited
//! or shown; the audit names the connection id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

use crate::accounts::sessions::same_token;
use crate::audit::log::{Audit, AuditEvent};
use crate::clock::Clock;
use crate::connections::provider::{ProviderClient, ProviderFailure, Tokens};
use crate::error::ApiError;
use crate::ids::random_hex;
use crate::policy::{Policy, ToolDef, UpstreamGrant};
use crate::store::{ConnectionRecord, Refreshed, Store, TaskUpstreamToken};
use crate::text::shown;
use crate::tokens::seal::Sealer;

/// The cookie holding a connect flow in progress.
pub const CONNECT_COOKIE: &str = "leash_connect";
/// How long a person may take at the provider.
pub const CONNECT_MS: i64 = 10 * 60 * 1000;
/// The path providers send people back to.
pub const CALLBACK_PATH: &str = "/connections/callback";
/// Sealed kinds (the associated data of each sealed value).
const CONNECT_KIND: &str = "upstream connect";
const REFRESH_KIND: &str = "upstream refresh token";
const ACCESS_KIND: &str = "upstream access token";
const TASK_KIND: &str = "task upstream token";
/// Refresh at most this long before expiry (less for short-lived tokens: a quarter of
/// their life).
const REFRESH_AHEAD_MS: i64 = 30_000;
/// How long one replica holds the right to refresh a connection.
const REFRESH_LEASE_MS: i64 = 15_000;
/// How often a token source may be dropped because an upstream refused its token.
const DROP_AT_MOST_EVERY: Duration = Duration::from_secs(30);
/// How long a failed refresh or exchange answers the calls queued behind it.
const RECENT_FAILURE: Duration = Duration::from_secs(3);
/// How often a call waiting on another replica's refresh looks again.
const REFRESH_POLL: Duration = Duration::from_millis(25);
/// How many task tokens of one provider a sweep takes (a backlog drains over several).
const REVOKE_BATCH: i64 = 100;
/// How many revocations run at once at one provider.
const REVOKE_CONCURRENCY: usize = 4;
/// How long a revocation the provider did not answer waits before it is tried again.
const REVOKE_RETRY_MS: i64 = 5_000;

/// Why a connect did not happen (the page says it; no token or secret in it).
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// No such provider.
    #[error("no provider named {:?}", shown(.0, 64))]
    UnknownProvider(String),
    /// The provider could not be reached or answered nonsense (502).
    #[error("the provider cannot be reached: {0}")]
    Unreachable(String),
    /// The person declined at the provider, or it refused the code (403).
    #[error("the provider did not connect the account: {0}")]
    Declined(String),
    /// The callback is not one this browser and person are waiting for (400).
    #[error("{0}")]
    Refused(String),
    /// The store failed (503).
    #[error("the broker could not keep the connection; try again")]
    Store(#[source] anyhow::Error),
}

/// What the connect cookie remembers.
#[derive(Serialize, Deserialize)]
struct Pending {
    provider: String,
    state: String,
    verifier: String,
    redirect_uri: String,
    expires_at_ms: i64,
}

/// The provider's callback query.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    /// The code.
    pub code: Option<String>,
    /// The state sent.
    pub state: Option<String>,
    /// An error instead of a code.
    pub error: Option<String>,
    /// Its description.
    pub error_description: Option<String>,
}

/// Where the person goes to connect, and the cookie to set.
pub struct Started {
    /// The provider's authorization URL.
    pub location: String,
    /// The sealed `leash_connect` cookie value.
    pub cookie_value: String,
}

/// A connection as its person sees it (no token).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    /// `con_…`.
    pub connection_id: String,
    /// The provider.
    pub provider: String,
    /// `active` or `broken`.
    pub state: String,
    /// Why it broke.
    pub broken_reason: Option<String>,
    /// Scopes granted.
    pub scopes: String,
    /// When it was connected (ms since epoch).
    pub created_at_ms: i64,
}

/// One provider as `/connections` lists it for a person.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    /// The `[providers]` name.
    pub provider: String,
    /// Its display name.
    pub display_name: String,
    /// Whether each task gets its own narrowed token, revoked when the task ends.
    pub per_task_tokens: bool,
    /// The person's connection, if any.
    pub connection: Option<ConnectionView>,
}

/// The credential a call carries upstream, and the connection it came from.
pub struct Injection {
    /// The `Authorization` header value (marked sensitive).
    pub authorization: HeaderValue,
    /// The connection that served it (none: the deployment's own token).
    pub connection_id: Option<String>,
    /// Which stored token it is, to drop if the upstream refuses it.
    source: Source,
}

/// Where an injected token is kept.
enum Source {
    /// A connection's access token, as of `version`; `refreshable` if the connection has
    /// a refresh token to get another.
    Connection {
        id: String,
        version: i64,
        refreshable: bool,
    },
    /// A task's exchanged token (sealed, as stored).
    Task {
        task_id: String,
        provider: String,
        sealed: String,
    },
    /// The deployment's token for (provider, scopes).
    Deployment((String, String)),
}

/// A token for a call, where it came from.
struct Served {
    token: String,
    connection_id: String,
    source: Source,
}

/// A deployment token (client credentials) and when it stops being used.
struct DeploymentToken {
    token: String,
    use_until_ms: i64,
}

/// People's upstream connections.
pub struct Connections {
    providers: BTreeMap<String, Arc<ProviderClient>>,
    policy: Arc<Policy>,
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    audit: Audit,
    clock: Clock,
    /// One refresh (or token exchange) in flight per key in this process.
    in_flight: moka::sync::Cache<String, Arc<Mutex<()>>>,
    deployment: Mutex<HashMap<(String, String), DeploymentToken>>,
    /// Wakes the revocation sweep.
    wake: tokio::sync::Notify,
    /// Refreshes and exchanges that just failed (provider unreachable), by lock key, with
    /// when they failed: the calls that were queued behind one fail with its answer
    /// instead of each waiting its turn to fail again; calls arriving later try afresh.
    failures: moka::sync::Cache<String, (std::time::Instant, String)>,
    /// Token sources dropped after a 401 recently (see [`Connections::refused`]).
    dropped: moka::sync::Cache<String, ()>,
    /// Providers whose share of task-token revocations is under way.
    busy: Mutex<std::collections::HashSet<String>>,
}

fn view(record: &ConnectionRecord) -> ConnectionView {
    ConnectionView {
        connection_id: record.connection_id.clone(),
        provider: record.provider.clone(),
        state: record.state.clone(),
        broken_reason: record.broken_reason.clone(),
        scopes: record.scopes.clone(),
        created_at_ms: record.created_at_ms,
    }
}

/// The error of a call whose person must (re)connect an account.
fn connection_required(provider: &str, why: String) -> ApiError {
    ApiError::ConnectionRequired {
        message: why,
        provider: provider.to_string(),
        connect_url: format!("/connections?connect={provider}"),
    }
}

fn unreachable(provider: &str, failure: &ProviderFailure) -> ApiError {
    ApiError::UpstreamError(format!(
        "the provider {provider:?} could not give an access token: {failure}"
    ))
}

/// Whether a token obtained at `obtained_ms` and expiring at `expires_ms` is still good
/// at `now_ms` (refreshed ahead: 30 s before expiry, or a quarter of its life if shorter).
fn fresh(expires_ms: Option<i64>, obtained_ms: i64, now_ms: i64) -> bool {
    match expires_ms {
        None => true,
        Some(expires) => {
            let ahead = REFRESH_AHEAD_MS.min((expires - obtained_ms).max(0) / 4);
            expires - ahead > now_ms
        }
    }
}

fn bearer(token: &str) -> Result<HeaderValue, ApiError> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
        ApiError::UpstreamError(
            "the provider issued an access token that cannot be sent in a header".into(),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A token the provider issued is kept only if it can be sent as a bearer token (RFC 6750's
/// `b64token` characters, at most 8 KiB): anything else is a bad answer, not a token.
fn valid_token(token: &str) -> Result<(), ApiError> {
    let ok = !token.is_empty()
        && token.len() <= 8192
        && token.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::UpstreamError(
            "the provider issued an access token that is not a bearer token".into(),
        ))
    }
}

fn expiry(now_ms: i64, tokens: &Tokens) -> Option<i64> {
    tokens
        .expires_in_secs
        .map(|s| now_ms.saturating_add((s.min(10 * 365 * 86_400) as i64) * 1000))
}

impl Connections {
    /// The connections of `policy`'s providers, reached with `http` (the one upstream
    /// client).
    pub fn new(
        policy: Arc<Policy>,
        http: reqwest::Client,
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        audit: Audit,
        clock: Clock,
    ) -> Self {
        let providers = policy
            .providers
            .iter()
            .map(|(name, def)| {
                (
                    name.clone(),
                    Arc::new(ProviderClient::new(def.clone(), http.clone())),
                )
            })
            .collect();
        Connections {
            providers,
            policy,
            store,
            sealer,
            audit,
            clock,
            in_flight: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(600))
                .build(),
            deployment: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            busy: Mutex::new(std::collections::HashSet::new()),
            dropped: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(DROP_AT_MOST_EVERY)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(RECENT_FAILURE)
                .build(),
        }
    }

    /// The origins a connect form leads to (each provider's authorization endpoint,
    /// discovered if needed, for at most 2 s), for the page's `form-action`.
    pub async fn form_origins(&self) -> String {
        let mut origins = BTreeSet::new();
        for provider in self.providers.values() {
            if let Ok(Some(origin)) =
                tokio::time::timeout(Duration::from_secs(2), provider.authorize_origin()).await
            {
                origins.insert(origin);
            }
        }
        origins.into_iter().collect::<Vec<_>>().join(" ")
    }

    fn provider(&self, name: &str) -> Option<&Arc<ProviderClient>> {
        self.providers.get(name)
    }

    /// The scopes a connection to `provider` asks for: the provider's own plus those of
    /// every tool that acts as a user there.
    fn connect_scopes(&self, provider: &ProviderClient) -> Vec<String> {
        let mut scopes: BTreeSet<String> = provider.def().scopes.iter().cloned().collect();
        for tool in self.policy.tools.values() {
            if let Some(auth) = &tool.upstream_auth
                && auth.provider == provider.def().name
                && auth.grant == UpstreamGrant::User
            {
                scopes.extend(auth.scopes.iter().cloned());
            }
        }
        scopes.into_iter().collect()
    }

    /// Every provider, with `user`'s connection to each.
    pub async fn list(&self, user: &str) -> Result<Vec<ProviderView>, ApiError> {
        let connections = self
            .store
            .list_connections(user)
            .await
            .map_err(ApiError::internal)?;
        Ok(self
            .providers
            .values()
            .map(|provider| {
                let def = provider.def();
                ProviderView {
                    provider: def.name.clone(),
                    display_name: def.display_name.clone(),
                    per_task_tokens: def.token_exchange,
                    connection: connections
                        .iter()
                        .find(|c| c.provider == def.name)
                        .map(view),
                }
            })
            .collect())
    }

    /// Starts connecting `user`'s account at `provider`; the provider sends the browser
    /// back to `redirect_uri` ([`CALLBACK_PATH`] under the public URL).
    pub async fn start(
        &self,
        user: &str,
        provider: &str,
        redirect_uri: &str,
    ) -> Result<Started, ConnectFailure> {
        let client = self
            .provider(provider)
            .ok_or_else(|| ConnectFailure::UnknownProvider(provider.to_string()))?;
        self.revoke_earlier(user, client).await?;
        let scopes = self.connect_scopes(client);
        let (location, state, verifier) = client
            .authorize_url(redirect_uri, &scopes)
            .await
            .map_err(|e| ConnectFailure::Unreachable(e.to_string()))?;
        let pending = Pending {
            provider: provider.to_string(),
            state,
            verifier,
            redirect_uri: redirect_uri.to_string(),
            expires_at_ms: self.clock.now_ms() + CONNECT_MS,
        };
        let text = serde_json::to_string(&pending)
            .map_err(|e| ConnectFailure::Refused(format!("cannot remember the connect: {e}")))?;
        Ok(Started {
            location,
            // Bound to the person: another person's browser cannot finish it.
            cookie_value: self.sealer.seal(CONNECT_KIND, user, &text),
        })
    }

    /// Revokes, before a new connect begins, the tokens of `user`'s earlier connections at
    /// `client`'s provider that still wait for it. Many providers revoke a whole grant at
    /// once and hand a returning person the same grant again: revoked later, the old
    /// tokens would take the new connection with them.
    async fn revoke_earlier(
        &self,
        user: &str,
        client: &ProviderClient,
    ) -> Result<(), ConnectFailure> {
        let waiting = self
            .store
            .disconnected_of(user, &client.def().name)
            .await
            .map_err(|e| ConnectFailure::Store(e.into()))?;
        let not_yet = || {
            ConnectFailure::Unreachable(
                "the provider has not yet confirmed that your earlier connection is revoked; try again shortly".into(),
            )
        };
        for record in waiting {
            let now = self.clock.now_ms();
            let claimed = self
                .store
                .claim_disconnected(&record.connection_id, now, now + REVOKE_RETRY_MS)
                .await
                .map_err(|e| ConnectFailure::Store(e.into()))?;
            if !claimed {
                return Err(not_yet());
            }
            self.revoke_connection_tokens(client, &record)
                .await
                .map_err(|()| not_yet())?;
            self.store
                .forget_connection(&record.connection_id)
                .await
                .map_err(|e| ConnectFailure::Store(e.into()))?;
        }
        Ok(())
    }

    /// Finishes a connect from the provider's callback, for the signed-in `user` whose
    /// browser holds `cookie`. Audited either way.
    pub async fn finish(
        &self,
        user: &str,
        callback: &Callback,
        cookie: Option<&str>,
    ) -> Result<ConnectionView, ConnectFailure> {
        let outcome = self.finish_unaudited(user, callback, cookie).await;
        let event = match &outcome {
            Ok(connection) => AuditEvent {
                kind: "connection.connected",
                actor: format!("user:{user}"),
                task_id: None,
                detail: json!({ "connection": connection.connection_id, "provider": connection.provider, "scopes": connection.scopes }),
            },
            Err(failure) => AuditEvent {
                kind: "connection.failed",
                actor: format!("user:{user}"),
                task_id: None,
                detail: json!({ "why": failure.to_string() }),
            },
        };
        self.audit.record(event).await;
        outcome
    }

    async fn finish_unaudited(
        &self,
        user: &str,
        callback: &Callback,
        cookie: Option<&str>,
    ) -> Result<ConnectionView, ConnectFailure> {
        let refused = |why: &str| ConnectFailure::Refused(why.to_string());
        let cookie = cookie.ok_or_else(|| {
            refused("this browser did not start connecting an account (or it took too long); start again from /connections")
        })?;
        let pending: Pending = self
            .sealer
            .open(CONNECT_KIND, user, cookie)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .ok_or_else(|| refused("this connect was not started by you in this browser; start again from /connections"))?;
        if pending.expires_at_ms <= self.clock.now_ms() {
            return Err(refused(
                "connecting took too long; start again from /connections",
            ));
        }
        if !callback
            .state
            .as_deref()
            .is_some_and(|state| same_token(state, &pending.state))
        {
            return Err(refused(
                "the provider's answer is not for the connect this browser started",
            ));
        }
        if let Some(error) = &callback.error {
            let description = shown(callback.error_description.as_deref().unwrap_or(""), 200);
            return Err(ConnectFailure::Declined(
                format!("{} {description}", shown(error, 64))
                    .trim()
                    .to_string(),
            ));
        }
        let code = callback
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| refused("the provider's answer carries no code"))?;
        let client = self
            .provider(&pending.provider)
            .ok_or_else(|| ConnectFailure::UnknownProvider(pending.provider.clone()))?;
        let tokens = client
            .redeem(code, &pending.verifier, &pending.redirect_uri)
            .await
            .map_err(|failure| match failure {
                ProviderFailure::Unreachable(why) => ConnectFailure::Unreachable(why),
                refusal => ConnectFailure::Declined(refusal.to_string()),
            })?;
        if valid_token(&tokens.access_token).is_err() {
            return Err(ConnectFailure::Unreachable(
                "the provider issued an access token that is not a bearer token".into(),
            ));
        }
        let now = self.clock.now_ms();
        let connection_id = format!("con_{}", random_hex(16));
        let record = ConnectionRecord {
            connection_id: connection_id.clone(),
            user: user.to_string(),
            provider: pending.provider.clone(),
            state: "active".into(),
            broken_reason: None,
            scopes: tokens
                .scopes
                .clone()
                .unwrap_or_else(|| self.connect_scopes(client))
                .join(" "),
            refresh_token: tokens
                .refresh_token
                .as_deref()
                .map(|t| self.sealer.seal(REFRESH_KIND, &connection_id, t)),
            access_token: Some(
                self.sealer
                    .seal(ACCESS_KIND, &connection_id, &tokens.access_token),
            ),
            access_expires_at_ms: expiry(now, &tokens),
            refreshing_until_ms: None,
            created_at_ms: now,
            updated_at_ms: now,
            version: 0,
        };
        let replaced = self
            .store
            .put_connection(&record)
            .await
            .map_err(|e| ConnectFailure::Store(e.into()))?;
        if replaced.is_some() {
            // The account was connected before: the sweep revokes its old tokens (and the
            // tasks' tokens from it) at the provider, retrying until it answers.
            self.wake.notify_one();
        }
        Ok(view(&record))
    }

    /// Disconnects `user`'s connection `connection_id`: from this moment it serves no
    /// call, and its refresh and access tokens and the live tokens of tasks exchanged from
    /// it are revoked at the provider — now, and if the provider cannot be reached, by the
    /// sweep until it can. `Ok(false)`: no such connection of that person.
    pub async fn disconnect(&self, user: &str, connection_id: &str) -> Result<bool, ApiError> {
        let now = self.clock.now_ms();
        let disconnected = self
            .store
            .disconnect(user, connection_id, now)
            .await
            .map_err(ApiError::internal)?;
        if !disconnected {
            return Ok(false);
        }
        // The connection's own tokens are tried at once, so the person's answer follows
        // their revocation; then the sweep revokes the tasks' tokens from it (woken only
        // now: woken first, it could claim this connection and make the answer say
        // "not revoked" for tokens it was revoking).
        let revoked_at_provider = self.revoke_disconnected(Some(connection_id)).await;
        self.wake.notify_one();
        self.audit
            .record(AuditEvent {
                kind: "connection.disconnected",
                actor: format!("user:{user}"),
                task_id: None,
                detail: json!({ "connection": connection_id, "revoked_at_provider": revoked_at_provider }),
            })
            .await;
        Ok(true)
    }

    /// Revokes the tokens of disconnected connections (only `only`, if given) and forgets
    /// them; a provider that cannot be reached is tried again by the sweep. Whether every
    /// one handled was confirmed by its provider.
    async fn revoke_disconnected(&self, only: Option<&str>) -> bool {
        let now = self.clock.now_ms();
        let due = match self.store.disconnected(now, REVOKE_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the disconnected connections");
                return false;
            }
        };
        let mut all_told = true;
        for record in due
            .iter()
            .filter(|r| only.is_none_or(|id| r.connection_id == id))
        {
            let id = &record.connection_id;
            match self
                .store
                .claim_disconnected(id, now, now + REVOKE_RETRY_MS)
                .await
            {
                Ok(true) => {}
                _ => {
                    all_told = false;
                    continue;
                }
            }
            let Some(client) = self.provider(&record.provider).cloned() else {
                // The provider left the policy: nothing can be told; forget the tokens.
                let _ = self.store.forget_connection(id).await;
                all_told = false;
                continue;
            };
            match self.revoke_connection_tokens(&client, record).await {
                // Confirmed, or no revocation endpoint to tell: forgotten.
                Ok(told) => {
                    all_told &= told;
                    if let Err(e) = self.store.forget_connection(id).await {
                        tracing::warn!(error = %e, "cannot forget a disconnected connection");
                    }
                }
                // The claim runs out and the sweep tries again.
                Err(()) => all_told = false,
            }
        }
        all_told
    }

    /// Revokes a connection's refresh and access tokens at the provider: `Ok(true)` when
    /// the provider confirmed, `Ok(false)` when it has no revocation endpoint, `Err` when
    /// it could not be reached.
    async fn revoke_connection_tokens(
        &self,
        client: &ProviderClient,
        record: &ConnectionRecord,
    ) -> Result<bool, ()> {
        let mut told = true;
        let mut failed = false;
        let owner = &record.connection_id;
        let sealed = [
            (record.refresh_token.as_deref(), REFRESH_KIND, true),
            (record.access_token.as_deref(), ACCESS_KIND, false),
        ];
        for (value, kind, refresh) in sealed {
            let Some(token) = value.and_then(|v| self.sealer.open(kind, owner, v).ok()) else {
                continue;
            };
            match client.revoke(&token, refresh).await {
                Ok(true) => {}
                Ok(false) => told = false,
                Err(failure) => {
                    failed = true;
                    tracing::warn!(connection = %owner, provider = %record.provider, error = %failure, "the provider could not revoke a token of a removed connection; trying again soon");
                }
            }
        }
        if failed { Err(()) } else { Ok(told) }
    }

    /// The credential a call of `tool` by task `task_id` (started by `user`, holding
    /// `task_tools`) carries; `None` for tools without `upstream_auth`.
    pub async fn for_call(
        &self,
        task_id: &str,
        user: Option<&str>,
        task_tools: &[String],
        tool: &ToolDef,
    ) -> Result<Option<Injection>, ApiError> {
        let Some(auth) = &tool.upstream_auth else {
            return Ok(None);
        };
        let client = self.provider(&auth.provider).ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "tool {} names provider {} that is not configured",
                tool.name,
                auth.provider
            ))
        })?;
        if auth.grant == UpstreamGrant::ClientCredentials {
            let token = self.deployment_token(client, &auth.scopes).await?;
            return Ok(Some(Injection {
                authorization: bearer(&token)?,
                connection_id: None,
                source: Source::Deployment((auth.provider.clone(), auth.scopes.join(" "))),
            }));
        }
        let Some(user) = user else {
            return Err(ApiError::PolicyDenied(format!(
                "tool {:?} acts as the person who started the task at {:?}, and this task was not started by a person (start it through the MCP client's sign-in)",
                tool.name, auth.provider
            )));
        };
        let served = if client.def().token_exchange {
            self.task_token(client, task_id, user, task_tools).await?
        } else {
            self.user_token(client, user).await?
        };
        Ok(Some(Injection {
            authorization: bearer(&served.token)?,
            connection_id: Some(served.connection_id),
            source: served.source,
        }))
    }

    /// The upstream refused `injection`'s token (HTTP 401) before its time — revoked at
    /// the provider, say: it is dropped, so the next call refreshes (or exchanges) a new
    /// one instead of failing until it would have expired. At most once per token source
    /// every [`DROP_AT_MOST_EVERY`]: an upstream that answers 401 to everything must not
    /// turn each call into a refresh at the provider.
    pub async fn refused(&self, injection: &Injection) {
        let key = match &injection.source {
            // Without a refresh token, dropping it would only break the connection: it
            // stays until it expires (the provider's 401s are the upstream's answer).
            Source::Connection {
                refreshable: false, ..
            } => return,
            Source::Connection { id, .. } => format!("con:{id}"),
            Source::Task {
                task_id, provider, ..
            } => format!("task:{task_id}/{provider}"),
            Source::Deployment((provider, scopes)) => format!("dep:{provider}/{scopes}"),
        };
        if self.dropped.contains_key(&key) {
            return;
        }
        self.dropped.insert(key, ());
        let outcome = match &injection.source {
            Source::Connection { id, version, .. } => self.store.expire_access(id, *version).await,
            Source::Task {
                task_id,
                provider,
                sealed,
            } => {
                self.store
                    .expire_task_token(task_id, provider, sealed)
                    .await
            }
            Source::Deployment(key) => {
                self.deployment.lock().await.remove(key);
                Ok(())
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "cannot drop a refused upstream token");
        }
    }

    /// The lock of one refresh or exchange in this process.
    fn lock_of(&self, key: String) -> Arc<Mutex<()>> {
        self.in_flight.get_with(key, || Arc::new(Mutex::new(())))
    }

    async fn connection(&self, provider: &str, user: &str) -> Result<ConnectionRecord, ApiError> {
        let record = self
            .store
            .get_connection(user, provider)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                connection_required(
                    provider,
                    format!("{user} has not connected an account at {provider:?}; connect one at /connections"),
                )
            })?;
        if record.state != "active" {
            return Err(connection_required(
                provider,
                format!(
                    "the connection of {user} at {provider:?} is broken ({}); connect it again at /connections",
                    record
                        .broken_reason
                        .as_deref()
                        .unwrap_or("the provider refused it")
                ),
            ));
        }
        Ok(record)
    }

    /// The open access token of `record` if it is still fresh.
    fn fresh_access(&self, record: &ConnectionRecord, now_ms: i64) -> Option<String> {
        let sealed = record.access_token.as_deref()?;
        if !fresh(record.access_expires_at_ms, record.updated_at_ms, now_ms) {
            return None;
        }
        self.sealer
            .open(ACCESS_KIND, &record.connection_id, sealed)
            .ok()
    }

    /// `user`'s access token at `client`'s provider, refreshed if it is about to
    /// expire; with the connection id.
    async fn user_token(&self, client: &ProviderClient, user: &str) -> Result<Served, ApiError> {
        let provider = client.def().name.as_str();
        let served = |token: String, record: ConnectionRecord| Served {
            token,
            source: Source::Connection {
                id: record.connection_id.clone(),
                version: record.version,
                refreshable: record.refresh_token.is_some(),
            },
            connection_id: record.connection_id,
        };
        let record = self.connection(provider, user).await?;
        if let Some(token) = self.fresh_access(&record, self.clock.now_ms()) {
            return Ok(served(token, record));
        }
        let key = format!("con:{}", record.connection_id);
        let lock = self.lock_of(key.clone());
        let queued = std::time::Instant::now();
        let _one_at_a_time = lock.lock().await;
        if let Some((at, why)) = self.failures.get(&key)
            && at >= queued
        {
            return Err(ApiError::UpstreamError(why));
        }
        let deadline = self.clock.now_ms() + REFRESH_LEASE_MS + 5_000;
        loop {
            // Someone may have refreshed while this call waited.
            let record = self.connection(provider, user).await?;
            let now = self.clock.now_ms();
            if let Some(token) = self.fresh_access(&record, now) {
                return Ok(served(token, record));
            }
            let claimed = self
                .store
                .claim_refresh(
                    &record.connection_id,
                    record.version,
                    now,
                    now + REFRESH_LEASE_MS,
                )
                .await
                .map_err(ApiError::internal)?;
            if claimed {
                return self.refresh(client, &record).await;
            }
            // Another replica is refreshing (or just did): wait for its tokens.
            if now > deadline {
                return Err(ApiError::UpstreamError(format!(
                    "the access token of {user} at {provider:?} is being refreshed elsewhere and did not arrive in time; try again"
                )));
            }
            tokio::time::sleep(REFRESH_POLL).await;
        }
    }

    /// Refreshes `record` (holding the right to); marks it broken when the provider
    /// refuses the refresh token.
    async fn refresh(
        &self,
        client: &ProviderClient,
        record: &ConnectionRecord,
    ) -> Result<Served, ApiError> {
        let provider = record.provider.as_str();
        let id = &record.connection_id;
        let refresh_token = record
            .refresh_token
            .as_deref()
            .and_then(|sealed| self.sealer.open(REFRESH_KIND, id, sealed).ok());
        let Some(refresh_token) = refresh_token else {
            let why = "its access token expired and the provider gave no refresh token";
            self.break_connection(record, why).await?;
            return Err(connection_required(
                provider,
                format!(
                    "the connection at {provider:?} expired ({why}); connect it again at /connections"
                ),
            ));
        };
        match client.refresh(&refresh_token).await {
            Ok(tokens) => {
                if let Err(error) = valid_token(&tokens.access_token) {
                    self.store
                        .release_refresh(id)
                        .await
                        .map_err(ApiError::internal)?;
                    return Err(error);
                }
                let now = self.clock.now_ms();
                let refreshed = Refreshed {
                    access_token: self.sealer.seal(ACCESS_KIND, id, &tokens.access_token),
                    access_expires_at_ms: expiry(now, &tokens),
                    refresh_token: tokens
                        .refresh_token
                        .as_deref()
                        .map(|t| self.sealer.seal(REFRESH_KIND, id, t)),
                    scopes: tokens.scopes.as_ref().map(|s| s.join(" ")),
                };
                self.store
                    .store_refreshed(id, &refreshed, now)
                    .await
                    .map_err(ApiError::internal)?;
                self.audit
                    .record(AuditEvent {
                        kind: "connection.refreshed",
                        actor: format!("user:{}", record.user),
                        task_id: None,
                        detail: json!({ "connection": id, "provider": provider }),
                    })
                    .await;
                Ok(Served {
                    token: tokens.access_token,
                    connection_id: id.clone(),
                    // Storing the refresh moved the row one version on.
                    source: Source::Connection {
                        id: id.clone(),
                        version: record.version + 1,
                        refreshable: true,
                    },
                })
            }
            Err(failure) if failure.is_invalid_grant() => {
                let why = format!("the provider refused its refresh token: {failure}");
                self.break_connection(record, &why).await?;
                Err(connection_required(
                    provider,
                    format!(
                        "the connection at {provider:?} is broken ({why}); connect it again at /connections"
                    ),
                ))
            }
            Err(failure) => {
                self.store
                    .release_refresh(id)
                    .await
                    .map_err(ApiError::internal)?;
                let error = unreachable(provider, &failure);
                self.failures.insert(
                    format!("con:{id}"),
                    (std::time::Instant::now(), error.to_string()),
                );
                Err(error)
            }
        }
    }

    async fn break_connection(&self, record: &ConnectionRecord, why: &str) -> Result<(), ApiError> {
        self.store
            .mark_broken(&record.connection_id, why, self.clock.now_ms())
            .await
            .map_err(ApiError::internal)?;
        self.audit
            .record(AuditEvent {
                kind: "connection.broken",
                actor: format!("user:{}", record.user),
                task_id: None,
                detail: json!({ "connection": record.connection_id, "provider": record.provider, "why": why }),
            })
            .await;
        Ok(())
    }

    /// The scopes task tokens at `provider` are narrowed to: those of the task's tools
    /// that act as the user there.
    fn task_scopes(&self, provider: &str, task_tools: &[String]) -> Vec<String> {
        let mut scopes = BTreeSet::new();
        for name in task_tools {
            if let Some(tool) = self.policy.tools.get(name)
                && let Some(auth) = &tool.upstream_auth
                && auth.provider == provider
                && auth.grant == UpstreamGrant::User
            {
                scopes.extend(auth.scopes.iter().cloned());
            }
        }
        scopes.into_iter().collect()
    }

    /// The task's own token at `client`'s provider (RFC 8693), obtained at its first call
    /// and again when it expires.
    async fn task_token(
        &self,
        client: &ProviderClient,
        task_id: &str,
        user: &str,
        task_tools: &[String],
    ) -> Result<Served, ApiError> {
        let provider = client.def().name.as_str();
        let owner = format!("{task_id}/{provider}");
        // Only while the person's connection it came from still serves: a disconnect, a
        // broken refresh or a new connection ends the tokens exchanged from the old one.
        let current = self.connection(provider, user).await?.connection_id;
        let stored = |this: &Self, token: Option<TaskUpstreamToken>| -> Option<Served> {
            let token = token?;
            if token.revoked_at_ms.is_some()
                || token.connection_id != current
                || !fresh(
                    token.expires_at_ms,
                    token.created_at_ms,
                    this.clock.now_ms(),
                )
            {
                return None;
            }
            let open = this
                .sealer
                .open(TASK_KIND, &owner, &token.access_token)
                .ok()?;
            Some(Served {
                token: open,
                connection_id: token.connection_id,
                source: Source::Task {
                    task_id: token.task_id,
                    provider: token.provider,
                    sealed: token.access_token,
                },
            })
        };
        let read = |this: &Self| {
            let store = this.store.clone();
            let (task_id, provider) = (task_id.to_string(), provider.to_string());
            async move { store.get_task_token(&task_id, &provider).await }
        };
        if let Some(found) = stored(self, read(self).await.map_err(ApiError::internal)?) {
            return Ok(found);
        }
        let lock = self.lock_of(format!("task:{owner}"));
        let queued = std::time::Instant::now();
        let _one_at_a_time = lock.lock().await;
        let existing = read(self).await.map_err(ApiError::internal)?;
        if let Some(found) = stored(self, existing.clone()) {
            return Ok(found);
        }
        if let Some(old) = &existing
            && old.revoked_at_ms.is_some()
        {
            if old.connection_id == current {
                return Err(ApiError::TaskInactive(format!(
                    "task {task_id} has ended: its token at {provider:?} was revoked"
                )));
            }
            // Revoked with the person's earlier connection: the new one gives a new token.
            self.store
                .forget_task_token(task_id, provider, &old.connection_id)
                .await
                .map_err(ApiError::internal)?;
        }
        let existing = existing.filter(|old| old.revoked_at_ms.is_none());
        let key = format!("task:{owner}");
        if let Some((at, why)) = self.failures.get(&key)
            && at >= queued
        {
            return Err(ApiError::UpstreamError(why));
        }
        let subject = match self.user_token(client, user).await {
            Ok(subject) => subject,
            Err(error @ ApiError::UpstreamError(_)) => {
                // The calls queued behind this one on the task share the failure too.
                self.failures
                    .insert(key, (std::time::Instant::now(), error.to_string()));
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let connection_id = subject.connection_id.clone();
        let scopes = self.task_scopes(provider, task_tools);
        let tokens = match client.exchange(&subject.token, &scopes).await {
            Ok(tokens) => tokens,
            Err(failure) => {
                let why = format!(
                    "the provider {provider:?} could not issue this task's token (token exchange): {failure}"
                );
                // Calls waiting on this one fail with it rather than each trying again.
                self.failures
                    .insert(key, (std::time::Instant::now(), why.clone()));
                return Err(ApiError::UpstreamError(why));
            }
        };
        valid_token(&tokens.access_token)?;
        let now = self.clock.now_ms();
        let record = TaskUpstreamToken {
            task_id: task_id.to_string(),
            provider: provider.to_string(),
            connection_id: connection_id.clone(),
            access_token: self.sealer.seal(TASK_KIND, &owner, &tokens.access_token),
            expires_at_ms: expiry(now, &tokens),
            revoked_at_ms: None,
            created_at_ms: now,
        };
        // Replace only the stale token this call found — or one from an earlier connection
        // — and nothing else: a token another replica stored meanwhile wins.
        let replaces = match &existing {
            Some(old) if old.connection_id != connection_id => i64::MAX,
            Some(old) => old.expires_at_ms.unwrap_or(i64::MIN),
            None => i64::MIN,
        };
        let kept = self
            .store
            .put_task_token(&record, replaces)
            .await
            .map_err(ApiError::internal)?;
        if kept
            && let Some(old) = existing
            && let Ok(open) = self.sealer.open(TASK_KIND, &owner, &old.access_token)
            && let Err(failure) = client.revoke(&open, false).await
        {
            // The replaced token was about to expire anyway.
            tracing::warn!(task_id, provider, error = %failure, "could not revoke a task's replaced token");
        }
        if !kept {
            // Another replica stored the task's token first: ours dies, theirs serves.
            if let Err(failure) = client.revoke(&tokens.access_token, false).await {
                tracing::warn!(task_id, provider, error = %failure, "could not revoke a surplus task token");
            }
            return stored(self, read(self).await.map_err(ApiError::internal)?).ok_or_else(|| {
                ApiError::TaskInactive(format!(
                    "task {task_id} has ended: its token at {provider:?} was revoked"
                ))
            });
        }
        // A disconnect that answered while this token was being exchanged must win: the
        // sweep revokes a token whose connection no longer serves.
        let still = self
            .store
            .get_connection(user, provider)
            .await
            .map_err(ApiError::internal)?;
        if !still.is_some_and(|c| c.connection_id == connection_id && c.state == "active") {
            self.wake.notify_one();
            return Err(connection_required(
                provider,
                format!(
                    "the connection of {user} at {provider:?} was disconnected; connect one at /connections"
                ),
            ));
        }
        self.audit
            .record(AuditEvent {
                kind: "connection.task_token",
                actor: format!("user:{user}"),
                task_id: Some(task_id.to_string()),
                detail: json!({ "connection": connection_id, "provider": provider, "scopes": scopes }),
            })
            .await;
        // A task that ended meanwhile is swept at once.
        self.wake.notify_one();
        Ok(Served {
            token: tokens.access_token,
            connection_id,
            source: Source::Task {
                task_id: task_id.to_string(),
                provider: provider.to_string(),
                sealed: record.access_token,
            },
        })
    }

    /// The deployment's own token for `scopes` (client credentials), kept until shortly
    /// before it expires; one request in flight per provider in this process.
    async fn deployment_token(
        &self,
        client: &ProviderClient,
        scopes: &[String],
    ) -> Result<String, ApiError> {
        let key = (client.def().name.clone(), scopes.join(" "));
        let mut cache = self.deployment.lock().await;
        let now = self.clock.now_ms();
        if let Some(token) = cache.get(&key)
            && token.use_until_ms > now
        {
            return Ok(token.token.clone());
        }
        let tokens = client
            .client_credentials(scopes)
            .await
            .map_err(|failure| unreachable(&key.0, &failure))?;
        valid_token(&tokens.access_token)?;
        let use_until_ms = match expiry(now, &tokens) {
            Some(expires) => expires - REFRESH_AHEAD_MS.min((expires - now) / 4),
            None => now + 300_000,
        };
        cache.insert(
            key,
            DeploymentToken {
                token: tokens.access_token.clone(),
                use_until_ms,
            },
        );
        Ok(tokens.access_token)
    }

    /// Revokes at the provider the tokens of tasks that ended, or whose connection was
    /// disconnected, broke or was replaced (each once, across replicas). Each provider's
    /// share runs on its own, a few at a time, and a provider still busy from the last
    /// sweep is skipped: one that hangs or fails holds up only its own tokens (retried
    /// after a pause), never another provider's. Wakes the sweep again when a provider's
    /// share is done, so a backlog drains.
    async fn revoke_task_tokens(self: &Arc<Self>) {
        for provider in self.providers.keys() {
            if !self.busy.lock().await.insert(provider.clone()) {
                continue;
            }
            let now = self.clock.now_ms();
            let tokens = match self
                .store
                .task_tokens_to_revoke(provider, now, REVOKE_BATCH)
                .await
            {
                Ok(tokens) if !tokens.is_empty() => tokens,
                outcome => {
                    if let Err(e) = outcome {
                        tracing::warn!(error = %e, "cannot read the task tokens to revoke");
                    }
                    self.busy.lock().await.remove(provider);
                    continue;
                }
            };
            let provider = provider.clone();
            let this = self.clone();
            tokio::spawn(async move {
                futures_util::stream::iter(tokens)
                    .for_each_concurrent(REVOKE_CONCURRENCY, |token| {
                        let this = &this;
                        async move {
                            this.revoke_task_token(&token).await;
                        }
                    })
                    .await;
                this.busy.lock().await.remove(&provider);
                this.wake.notify_one();
            });
        }
    }

    /// Claims and revokes one task token; whether this call revoked it. A token revoked
    /// because its connection went (the task lives on) is forgotten, so the task can get
    /// a new one from the person's next connection.
    async fn revoke_task_token(&self, token: &TaskUpstreamToken) -> bool {
        let now = self.clock.now_ms();
        match self
            .store
            .claim_task_token_revocation(&token.task_id, &token.provider, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a task token's revocation");
                return false;
            }
        }
        let owner = format!("{}/{}", token.task_id, token.provider);
        let Some(client) = self.provider(&token.provider) else {
            return false;
        };
        let outcome = match self.sealer.open(TASK_KIND, &owner, &token.access_token) {
            Ok(open) => client.revoke(&open, false).await,
            Err(e) => Err(ProviderFailure::Unreachable(e.to_string())),
        };
        let at_provider = match outcome {
            Ok(told) => told,
            Err(failure) => {
                tracing::warn!(task_id = %token.task_id, provider = %token.provider, error = %failure, "the provider could not revoke a task's token; trying again soon");
                if let Err(e) = self
                    .store
                    .unclaim_task_token_revocation(
                        &token.task_id,
                        &token.provider,
                        self.clock.now_ms() + REVOKE_RETRY_MS,
                    )
                    .await
                {
                    tracing::warn!(error = %e, "cannot give a task token's revocation back");
                }
                return false;
            }
        };
        let task_lives = matches!(
            self.store.get_task(&token.task_id).await,
            Ok(Some(task)) if !task.state.is_ended()
        );
        if task_lives
            && let Err(e) = self
                .store
                .forget_task_token(&token.task_id, &token.provider, &token.connection_id)
                .await
        {
            tracing::warn!(error = %e, "cannot forget a revoked task token");
        }
        let why = if task_lives {
            "its connection was disconnected, broke or was replaced"
        } else {
            "the task ended"
        };
        self.audit
            .record(AuditEvent {
                kind: "connection.task_token_revoked",
                actor: "leash".into(),
                task_id: Some(token.task_id.clone()),
                detail: json!({ "connection": token.connection_id, "provider": token.provider, "why": why, "at_provider": at_provider }),
            })
            .await;
        true
    }

    /// Wakes the revocation sweep (a task ended).
    pub fn task_ended(&self) {
        self.wake.notify_one();
    }

    /// Revokes ended tasks' tokens for as long as the broker runs: at once when a task
    /// ends here, and every `every` for tasks other replicas ended (and retries).
    pub async fn run_revocations(self: Arc<Self>, every: Duration) {
        if self.providers.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            self.revoke_task_tokens().await;
            self.revoke_disconnected(None).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_ahead_of_expiry() {
        // An hour-long token: refreshed 30 s before it expires.
        let hour = 3_600_000;
        assert!(fresh(Some(hour), 0, hour - 31_000));
        assert!(!fresh(Some(hour), 0, hour - 29_000));
        // A 4 s token: a quarter of its life ahead.
        assert!(fresh(Some(4_000), 0, 2_900));
        assert!(!fresh(Some(4_000), 0, 3_100));
        // No expiry given: used until the provider refuses it.
        assert!(fresh(None, 0, i64::MAX));
        // Already expired, or issued expired.
        assert!(!fresh(Some(1_000), 0, 1_000));
        assert!(!fresh(Some(0), 5, 5));
    }
}
