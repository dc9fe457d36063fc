//! The broker's handles, assembled once: each domain service holds only the handles it
//! uses, and this struct exists only where the router is built. Handlers take the one
//! sub-state they need through axum's `FromRef`.
//!
//! axum clones the router's state for every request (and every `from_fn_with_state`
//! middleware clones its own), so the handles sit behind one `Arc`: a clone is one atomic
//! increment, not one per handle (cloning them all was 3–5% of a checked call's profile).

use std::sync::Arc;

use axum::extract::FromRef;

use crate::audit::log::Audit;
use crate::config::ServeConfig;
use crate::events::hub::Events;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::ratelimit::{AuthFailureLimiter, RateLimiter};
use crate::replica::health::FeedHealth;
use crate::replica::sealed_keys::MasterKey;
use crate::store::{PgStore, Store};
use crate::tasks::approvals::Approvals;
use crate::tasks::calls::Calls;
use crate::tasks::credentials::Credentials;
use crate::tasks::issue::Issuer;
use crate::tasks::lifecycle::Lifecycle;
use crate::tasks::runtime::Tasks;
use crate::tokens::keys::{ForwardingKey, RootKeys};
use crate::tokens::revocation::RevocationSet;
use crate::tokens::verify::TokenVerifier;
use crate::upstream::catalog::Catalog;
use crate::upstream::client::Proxy;
use crate::upstream::dispatch::Upstreams;

/// The shared state of every request: the [`Handles`] behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    /// The state of a broker with these handles.
    pub fn new(handles: Handles) -> Self {
        AppState(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// Each handle a handler can extract with `State<…>`, cloned out of the one `Arc`.
macro_rules! sub_states {
    ($($field:ident: $handle:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $handle {
            fn from_ref(state: &AppState) -> Self {
                state.0.$field.clone()
            }
        })*
    };
}

sub_states! {
    policy: Arc<Policy>,
    keys: Arc<RootKeys>,
    forwarding: Arc<ForwardingKey>,
    verifier: Arc<TokenVerifier>,
    revoked: Arc<RevocationSet>,
    tasks: Arc<Tasks>,
    store: Arc<dyn Store>,
    audit: Audit,
    proxy: Proxy,
    events: Events,
    catalog: Arc<Catalog>,
    upstreams: Arc<Upstreams>,
    calls: Arc<Calls>,
    approvals: Arc<Approvals>,
    lifecycle: Arc<Lifecycle>,
    credentials: Arc<Credentials>,
    history: Arc<crate::tasks::history::History>,
    issuer: Issuer,
    health: Arc<FeedHealth>,
    sealer: Arc<crate::tokens::seal::Sealer>,
    rate_limiter: Arc<RateLimiter>,
    long_polls: Arc<crate::http::slots::Slots>,
    auth_failures: Arc<AuthFailureLimiter>,
    metrics: Arc<Metrics>,
    clock: crate::clock::Clock,
    connections: Arc<crate::connections::Connections>,
    accounts: Arc<crate::accounts::passwords::Accounts>,
    oidc: Option<Arc<crate::accounts::oidc::OidcSignIn>>,
    sessions: Arc<crate::accounts::sessions::Sessions>,
    oauth: Arc<crate::oauth::server::OAuthServer>,
    config: Arc<ServeConfig>,
}

/// Every handle of a running broker.
pub struct Handles {
    /// The loaded policy.
    pub policy: Arc<Policy>,
    /// Root keys.
    pub keys: Arc<RootKeys>,
    /// The key forwarded capabilities are signed with (third-party block).
    pub forwarding: Arc<ForwardingKey>,
    /// Token verification and its cache.
    pub verifier: Arc<TokenVerifier>,
    /// Every revoked id.
    pub revoked: Arc<RevocationSet>,
    /// Task runtimes and lifecycle.
    pub tasks: Arc<Tasks>,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The audit writer.
    pub audit: Audit,
    /// The upstream client: HTTP tools, MCP upstreams and the webhook all use its one
    /// hardened connection pool.
    pub proxy: Proxy,
    /// The HTTPS configuration when `leash serve` terminates TLS itself.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Approval and task events (event stream, webhook, long-polls).
    pub events: Events,
    /// Every callable tool.
    pub catalog: Arc<Catalog>,
    /// Every upstream (HTTP tools, MCP servers).
    pub upstreams: Arc<Upstreams>,
    /// The checked call path.
    pub calls: Arc<Calls>,
    /// Human approvals.
    pub approvals: Arc<Approvals>,
    /// Opening, renewing and ending tasks.
    pub lifecycle: Arc<Lifecycle>,
    /// Minting and revoking credentials; revoking tokens.
    pub credentials: Arc<Credentials>,
    /// Tasks' timelines and signed evidence.
    pub history: Arc<crate::tasks::history::History>,
    /// Mints task tokens.
    pub issuer: Issuer,
    /// Whether this replica's view of other replicas' changes is fresh.
    pub health: Arc<FeedHealth>,
    /// The PostgreSQL store, when replicated.
    pub pg: Option<PgStore>,
    /// Seals the secrets the store keeps (task tokens).
    pub sealer: Arc<crate::tokens::seal::Sealer>,
    /// The key-encryption key of the root keys (PostgreSQL only).
    pub master_key: Option<Arc<MasterKey>>,
    /// The per-agent rate limit.
    pub rate_limiter: Arc<RateLimiter>,
    /// Long-polls and event streams held, per address and overall.
    pub long_polls: Arc<crate::http::slots::Slots>,
    /// Failed authentications per client address.
    pub auth_failures: Arc<AuthFailureLimiter>,
    /// The `/metrics` registry.
    pub metrics: Arc<Metrics>,
    /// SHA-256 of the scrape-only metrics token, if one is configured.
    pub metrics_digest: Option<[u8; 32]>,
    /// The revocation feed position read at start; replica fan-out continues from here.
    pub revocations_loaded_to: i64,
    /// The clock.
    pub clock: crate::clock::Clock,
    /// SHA-256 of the admin token (compared in constant time).
    pub admin_digest: [u8; 32],
    /// People's upstream connections (`/connections`, provider tokens per call).
    pub connections: Arc<crate::connections::Connections>,
    /// Local accounts and sign-in.
    pub accounts: Arc<crate::accounts::passwords::Accounts>,
    /// Sign-in through the OpenID provider, when `[sign_in.oidc]` names one.
    pub oidc: Option<Arc<crate::accounts::oidc::OidcSignIn>>,
    /// Web sessions of signed-in people.
    pub sessions: Arc<crate::accounts::sessions::Sessions>,
    /// The OAuth authorization server of `/mcp`.
    pub oauth: Arc<crate::oauth::server::OAuthServer>,
    /// Configuration.
    pub config: Arc<ServeConfig>,
}
