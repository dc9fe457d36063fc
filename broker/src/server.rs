//! Assembling a broker: configuration → policy, keys, store, caches → a running server.
//!
//! The server is handed its listener and a shutdown future (as in mini-redis), so tests
//! bind `127.0.0.1:0` and run the real thing in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::audit::Audit;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::datadir;
use crate::events::Events;
use crate::keys::RootKeys;
use crate::mcp::upstream::Upstreams;
use crate::policy::{self, Policy};
use crate::proxy::Proxy;
use crate::revocation::RevocationSet;
use crate::store::{SqliteStore, Store};
use crate::tasks::Tasks;
use crate::verify::TokenVerifier;

/// Everything `leash serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The policy folder.
    pub policies: PathBuf,
    /// The data folder (root keys, SQLite database, generated admin token).
    pub data: PathBuf,
    /// A database URL instead of the embedded SQLite file.
    pub database_url: Option<String>,
    /// The admin token; generated into the data folder when absent.
    pub admin_token: Option<String>,
    /// How often expired and idle tasks are swept.
    pub sweep_interval: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// First backoff step of webhook retries (doubles each time).
    pub webhook_first_retry: Duration,
    /// Window of the per-call capability sent upstream in `Leash-Capability`.
    pub capability_ttl: Duration,
    /// Extra host names `/mcp` answers to (besides loopback and the listen address).
    pub mcp_allowed_hosts: Vec<String>,
    /// How often upstream MCP servers' tool lists are re-read (besides on list_changed).
    pub mcp_refresh: Duration,
}

impl ServeConfig {
    /// Defaults of DESIGN.md for the given folders.
    pub fn new(policies: PathBuf, data: PathBuf) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            policies,
            data,
            database_url: None,
            admin_token: None,
            sweep_interval: Duration::from_secs(1),
            body_limit: 1024 * 1024,
            webhook_first_retry: Duration::from_millis(500),
            capability_ttl: Duration::from_secs(30),
            mcp_allowed_hosts: Vec::new(),
            mcp_refresh: Duration::from_secs(30),
        }
    }
}

/// The shared state of every request. Cloning is cheap (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// The loaded policy.
    pub policy: Arc<Policy>,
    /// Root keys.
    pub keys: Arc<RootKeys>,
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
    /// The upstream client.
    pub proxy: Proxy,
    /// Approval and task events (event stream, webhook, long-polls).
    pub events: Events,
    /// Every callable tool.
    pub catalog: Arc<Catalog>,
    /// Upstream MCP servers.
    pub upstreams: Arc<Upstreams>,
    /// The clock.
    pub clock: Clock,
    /// SHA-256 of the admin token (compared in constant time).
    pub admin_digest: [u8; 32],
    /// Configuration.
    pub config: Arc<ServeConfig>,
}

/// Loads policy (refusing an invalid one), opens the data folder and the store, and
/// builds the state. `env` resolves `${NAME}` in policies.
pub async fn prepare(
    config: ServeConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<AppState> {
    let policy = policy::load_dir(&config.policies, env)
        .map_err(|errors| anyhow::anyhow!("invalid policy:\n{errors}"))?;
    datadir::ensure_dir(&config.data)?;
    let keys = Arc::new(datadir::load_or_create_keys(&config.data)?);
    let admin_token =
        datadir::load_or_create_admin_token(&config.data, config.admin_token.as_deref())?;
    let store: Arc<dyn Store> = match config.database_url.as_deref() {
        None => Arc::new(
            SqliteStore::open(&config.data.join(datadir::DATABASE_FILE))
                .await
                .context("cannot open the SQLite database")?,
        ),
        Some(url) if url.starts_with("sqlite:") => Arc::new(
            SqliteStore::open_url(url)
                .await
                .context("cannot open the SQLite database")?,
        ),
        Some(url) if url.starts_with("postgres") => {
            bail!(
                "PostgreSQL (--database-url postgres://…) is not supported by this version of Leash yet"
            )
        }
        Some(_) => {
            bail!("--database-url must start with sqlite: (postgres:// is not supported yet)")
        }
    };
    let clock = Clock::default();
    let revoked = Arc::new(RevocationSet::default());
    revoked.extend(
        store
            .all_revoked_ids()
            .await?
            .iter()
            .map(|(id, reason)| (id.as_str(), reason.as_str())),
    );
    let audit = Audit::start(store.clone(), clock.clone()).await?;
    let events = Events::default();
    if let Some(url) = policy.approvals.webhook.clone() {
        crate::webhook::start(
            &events,
            clock.clone(),
            url,
            policy.approvals.webhook_secret.clone(),
            config.webhook_first_retry,
        );
    }
    let tasks = Tasks::start(
        store.clone(),
        clock.clone(),
        audit.clone(),
        events.clone(),
        revoked.clone(),
        policy.longest_ttl(),
    );
    let catalog = Arc::new(Catalog::new(&policy));
    let upstreams = Upstreams::new(&policy.mcp_servers);
    Ok(AppState {
        policy: Arc::new(policy),
        verifier: Arc::new(TokenVerifier::new(keys.clone())),
        keys,
        revoked,
        tasks,
        store,
        audit,
        proxy: Proxy::new()?,
        events,
        catalog,
        upstreams,
        clock,
        admin_digest: Sha256::digest(admin_token.as_bytes()).into(),
        config: Arc::new(config),
    })
}

/// Serves until `shutdown` resolves, then drains requests and flushes counters and audit.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_forever(state.clone()));
    state.upstreams.start(&state);
    let app = crate::routes::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("server failed")?;
    sweeper.abort();
    state.tasks.flush().await;
    state.audit.flush().await;
    Ok(())
}

/// Ends expired and idle tasks, every `sweep_interval`.
async fn sweep_forever(state: AppState) {
    let mut ticker = tokio::time::interval(state.config.sweep_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match state.tasks.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "swept expired tasks"),
            Err(err) => tracing::warn!(error = %err, "sweep failed; will retry"),
        }
        match crate::approvals::expire_due(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired undecided approvals"),
            Err(err) => tracing::warn!(error = %err, "approval sweep failed; will retry"),
        }
    }
}
