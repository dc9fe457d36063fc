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

use crate::audit::log::Audit;
use crate::clock::Clock;
use crate::datadir;
use crate::events::hub::Events;
use crate::policy::{self, Policy};
use crate::replica::feed::FeedHealth;
use crate::replica::sealed_keys::MasterKey;
use crate::store::{PgStore, SqliteStore, Store};
use crate::tasks::runtime::Tasks;
use crate::tokens::keys::{ForwardingKey, RootKeys};
use crate::tokens::revocation::RevocationSet;
use crate::tokens::verify::TokenVerifier;
use crate::upstream::catalog::Catalog;
use crate::upstream::client::Proxy;
use crate::upstream::mcp::Upstreams;

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
    /// Requests per second each agent may make (tool calls, task opening); 0 = no limit.
    pub rate_limit: u32,
    /// Burst size of the per-agent rate limit.
    pub rate_burst: u32,
    /// Tokens of one task that may be revoked one at a time.
    pub max_revoked_tokens_per_task: i64,
    /// Undecided approvals one agent may have waiting.
    pub max_pending_approvals_per_agent: i64,
    /// Extra host names `/mcp` answers to (besides loopback and the listen address).
    pub mcp_allowed_hosts: Vec<String>,
    /// How often upstream MCP servers' tool lists are re-read (besides on list_changed).
    pub mcp_refresh: Duration,
    /// PostgreSQL schema of this deployment (replicas of one deployment share it).
    pub database_schema: String,
    /// Key-encryption key of the root keys in PostgreSQL (`LEASH_MASTER_KEY`, 64 hex).
    pub master_key: Option<String>,
    /// A replica that has not heard from the others for longer refuses checked calls.
    pub feed_staleness: Duration,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Most connections one client address may hold (0: no per-address cap).
    pub max_connections_per_address: usize,
    /// Most long-polls and event streams one client address may hold (0: no cap); all
    /// together hold at most three quarters of `max_connections`.
    pub max_long_polls_per_address: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers, and then its body.
    pub client_timeout: Duration,
    /// Failed authentications per second allowed from one client address (0 = no limit).
    pub auth_failure_limit: u32,
    /// A scrape-only token for `GET /metrics` (`LEASH_METRICS_TOKEN`); the admin token
    /// works too.
    pub metrics_token: Option<String>,
    /// Sign an audit checkpoint after this many events (0: not by count).
    pub audit_checkpoint_events: u64,
    /// Sign an audit checkpoint this often when there are new events (0: not by time).
    pub audit_checkpoint_interval: Duration,
    /// Also append every checkpoint this broker signs to this file (JSON lines, fsynced),
    /// outside the database.
    pub audit_checkpoint_file: Option<PathBuf>,
    /// PEM file of extra CA certificates every outbound connection trusts, besides the
    /// platform's roots (`LEASH_CA_BUNDLE`).
    pub ca_bundle: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with `tls_key`; both or neither).
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
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
            rate_limit: 1000,
            rate_burst: 2000,
            max_revoked_tokens_per_task: 1000,
            max_pending_approvals_per_agent: 20,
            mcp_allowed_hosts: Vec::new(),
            mcp_refresh: Duration::from_secs(30),
            database_schema: "leash".into(),
            master_key: None,
            feed_staleness: Duration::from_secs(2),
            max_connections: 2048,
            max_connections_per_address: 512,
            max_long_polls_per_address: 64,
            max_header_bytes: 96 * 1024,
            client_timeout: Duration::from_secs(10),
            auth_failure_limit: 20,
            metrics_token: None,
            audit_checkpoint_events: 100,
            audit_checkpoint_interval: Duration::from_secs(5),
            audit_checkpoint_file: None,
            ca_bundle: None,
            tls_cert: None,
            tls_key: None,
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
    /// Upstream MCP servers.
    pub upstreams: Arc<Upstreams>,
    /// Whether this replica's view of other replicas' changes is fresh.
    pub health: Arc<FeedHealth>,
    /// The PostgreSQL store, when replicated.
    pub pg: Option<PgStore>,
    /// Seals the secrets the store keeps (task tokens).
    pub sealer: Arc<crate::tokens::seal::Sealer>,
    /// The key-encryption key of the root keys (PostgreSQL only).
    pub master_key: Option<Arc<MasterKey>>,
    /// The per-agent rate limit.
    pub rate_limiter: Arc<crate::ratelimit::RateLimiter>,
    /// Long-polls and event streams held, per address and overall.
    pub long_polls: Arc<crate::http::slots::Slots>,
    /// Failed authentications per client address.
    pub auth_failures: Arc<crate::ratelimit::AuthFailureLimiter>,
    /// The `/metrics` registry.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// SHA-256 of the scrape-only metrics token, if one is configured.
    pub metrics_digest: Option<[u8; 32]>,
    /// The revocation feed position read at start; replica fan-out continues from here.
    pub revocations_loaded_to: i64,
    /// Recently minted per-call capabilities: (token id, tool) → (text, end of window).
    pub capabilities: moka::sync::Cache<(String, String), (String, i64)>,
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
    crate::logging::register_secrets(policy.secrets.0.iter().map(String::as_str));
    // TLS first: a bad certificate, key or CA bundle stops the start before anything
    // is opened, and nothing is ever served or fetched with weaker settings instead.
    let server_tls =
        match crate::tls::server_pair(config.tls_cert.as_deref(), config.tls_key.as_deref())? {
            Some((cert, key)) => Some(crate::tls::server_config(&cert, &key)?),
            None => None,
        };
    let extra_roots = crate::tls::ca_bundle(config.ca_bundle.as_deref())?;
    let proxy = Proxy::new(&extra_roots)?;
    datadir::ensure_dir(&config.data)?;
    let on_postgres = config
        .database_url
        .as_deref()
        .is_some_and(|url| url.starts_with("postgres"));
    if !on_postgres {
        datadir::check_writable(&config.data)?;
    }
    let clock = Clock::default();
    let (store, pg, (keys, forwarding), master_key) = open_store(&config, &clock).await?;
    let keys = Arc::new(keys);
    let sealer = Arc::new(match &master_key {
        Some(master) => master.sealer(),
        None => crate::tokens::seal::Sealer::new(datadir::load_or_create_seal_key(&config.data)?),
    });
    seal_stored_tokens(store.as_ref(), &sealer).await?;
    let admin_token =
        datadir::load_or_create_admin_token(&config.data, config.admin_token.as_deref())?;
    // The deployment's own secrets are scrubbed from the log like the policy's.
    crate::logging::register_secrets(
        [
            Some(admin_token.as_str()),
            config.metrics_token.as_deref(),
            config.master_key.as_deref(),
        ]
        .into_iter()
        .flatten(),
    );
    // Ids past their windows are not worth a byte of memory: forget them before loading.
    store
        .prune_revocations(clock.now_ms() - crate::tokens::revocation::FEED_RETENTION_MS)
        .await?;
    let revoked = Arc::new(RevocationSet::default());
    // Paged, so a million revoked ids never sit in memory as rows at once; the set is
    // sized once up front, so it never holds two tables while growing.
    // Ids already past their window and the margin stay on the feed a while, but are
    // not worth memory.
    let still_matters = clock.now_ms() - crate::tokens::revocation::PRUNE_MARGIN_MS;
    revoked.reserve(store.live_revocation_count(still_matters).await? as usize);
    let mut after = 0;
    loop {
        let page = store
            .live_revocations_after(after, still_matters, 10_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        revoked.extend(&page);
    }
    if let Some(path) = &config.audit_checkpoint_file {
        crate::audit::checkpoint::open_for_append(path).with_context(|| {
            format!(
                "cannot open the audit checkpoint file {} for appending",
                path.display()
            )
        })?;
    }
    let audit = Audit::start(store.clone(), clock.clone(), config.audit_checkpoint_events).await?;
    let events = Events::default();
    if let Some(url) = policy.approvals.webhook.clone() {
        crate::events::webhook::start(
            &events,
            proxy.client(),
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
        pg.is_some(),
    );
    let health = Arc::new(if pg.is_some() {
        FeedHealth::replicated(clock.clone(), config.feed_staleness)
    } else {
        FeedHealth::single(clock.clone())
    });
    let catalog = Arc::new(Catalog::new(&policy));
    let upstreams = Upstreams::new(&policy.mcp_servers, proxy.client());
    Ok(AppState {
        policy: Arc::new(policy),
        verifier: Arc::new(
            TokenVerifier::new(keys.clone()).refusing_forwarded(forwarding.pair().public()),
        ),
        keys,
        forwarding: Arc::new(forwarding),
        revoked,
        tasks,
        store,
        audit,
        proxy,
        server_tls,
        events,
        catalog,
        upstreams,
        health,
        pg,
        master_key,
        sealer,
        rate_limiter: Arc::new(crate::ratelimit::RateLimiter::new(
            config.rate_limit,
            config.rate_burst,
            clock.clone(),
        )),
        metrics: Arc::new(crate::metrics::Metrics::new()),
        metrics_digest: config
            .metrics_token
            .as_deref()
            .map(|token| Sha256::digest(token.as_bytes()).into()),
        long_polls: crate::http::slots::Slots::new(
            config.max_long_polls_per_address,
            (config.max_connections * 3 / 4).max(1),
        ),
        auth_failures: Arc::new(crate::ratelimit::AuthFailureLimiter::new(
            config.auth_failure_limit,
            clock.clone(),
        )),
        revocations_loaded_to: after,
        capabilities: moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.capability_ttl)
            .build(),
        clock,
        admin_digest: Sha256::digest(admin_token.as_bytes()).into(),
        config: Arc::new(config),
    })
}

/// Seals the task tokens that databases written before sealing still hold in clear.
async fn seal_stored_tokens(
    store: &dyn Store,
    sealer: &crate::tokens::seal::Sealer,
) -> anyhow::Result<()> {
    let plain = store.plain_tokens().await?;
    if plain.is_empty() {
        return Ok(());
    }
    tracing::info!(tokens = plain.len(), "sealing task tokens stored in clear");
    for (task_id, token) in plain {
        let sealed = sealer.seal(crate::tokens::seal::TASK_TOKEN, &task_id, &token);
        store.replace_token(&task_id, &token, &sealed).await?;
    }
    // The clear text would otherwise stay in freed pages of the database file.
    store.purge_freed().await?;
    Ok(())
}

/// The store, and the root and forwarding keys where that store keeps them: the data
/// folder's files for SQLite; sealed in the database for PostgreSQL (which needs
/// `LEASH_MASTER_KEY`).
async fn open_store(
    config: &ServeConfig,
    clock: &Clock,
) -> anyhow::Result<(
    Arc<dyn Store>,
    Option<PgStore>,
    (RootKeys, ForwardingKey),
    Option<Arc<MasterKey>>,
)> {
    match config.database_url.as_deref() {
        None => {
            let store = SqliteStore::open(&config.data.join(datadir::DATABASE_FILE))
                .await
                .context("cannot open the SQLite database")?;
            Ok((
                Arc::new(store),
                None,
                (
                    datadir::load_or_create_keys(&config.data)?,
                    datadir::load_or_create_forwarding_key(&config.data)?,
                ),
                None,
            ))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let store = SqliteStore::open_url(url)
                .await
                .context("cannot open the SQLite database")?;
            Ok((
                Arc::new(store),
                None,
                (
                    datadir::load_or_create_keys(&config.data)?,
                    datadir::load_or_create_forwarding_key(&config.data)?,
                ),
                None,
            ))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let Some(master) = config.master_key.as_deref() else {
                bail!(
                    "LEASH_MASTER_KEY is required with PostgreSQL: the root keys live there, sealed with it"
                );
            };
            if config.admin_token.is_none() {
                bail!("LEASH_ADMIN_TOKEN is required with PostgreSQL: every replica must share it");
            }
            let master = Arc::new(MasterKey::parse(master)?);
            let store =
                PgStore::open_with_ca(url, &config.database_schema, config.ca_bundle.as_deref())
                    .await
                    .context("cannot open the PostgreSQL database")?;
            let keys =
                crate::replica::sealed_keys::load_or_create(store.pool(), &master, clock.now_ms())
                    .await?;
            let forwarding = crate::replica::sealed_keys::load_or_create_forwarding(
                store.pool(),
                &master,
                clock.now_ms(),
            )
            .await?;
            Ok((
                Arc::new(store.clone()),
                Some(store),
                (keys, forwarding),
                Some(master),
            ))
        }
        Some(_) => bail!("--database-url must start with sqlite: or postgres://"),
    }
}

/// Serves until `shutdown` resolves, then drains requests, flushes counters and audit,
/// and signs a last audit checkpoint.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_forever(state.clone()));
    let checkpoints = tokio::spawn(crate::audit::checkpoint::run_forever(state.clone()));
    state.upstreams.start(&state);
    if let Some(pg) = state.pg.clone() {
        crate::replica::feed::start(state.clone(), pg, state.revocations_loaded_to);
    }
    let app = crate::http::router(state.clone());
    crate::http::edge::serve(
        listener,
        app,
        &state.config,
        state.server_tls.clone(),
        shutdown,
    )
    .await;
    sweeper.abort();
    checkpoints.abort();
    state.tasks.flush().await;
    state.audit.flush().await;
    // A clean stop leaves the head covered: nothing after it can vanish unnoticed.
    if let Err(err) = crate::audit::checkpoint::checkpoint_head(&state).await {
        tracing::warn!(error = %err, "cannot sign the final audit checkpoint");
    }
    Ok(())
}

/// How often revoked ids past their window are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Forgets revoked ids whose tokens are past their windows (plus the clock margin), in
/// the feed and in memory. Such a token is refused by its own expiry check, so nothing
/// it could do comes back; the set stops growing with old revocations.
pub async fn prune_revocations(state: &AppState) -> anyhow::Result<(u64, usize)> {
    let now = state.clock.now_ms();
    let from_feed = state
        .store
        .prune_revocations(now - crate::tokens::revocation::FEED_RETENTION_MS)
        .await?;
    let from_memory = state.revoked.prune(now);
    Ok((from_feed, from_memory))
}

/// Ends expired and idle tasks, every `sweep_interval`; prunes revoked ids every
/// [`PRUNE_EVERY`].
async fn sweep_forever(state: AppState) {
    let mut ticker = tokio::time::interval(state.config.sweep_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            match prune_revocations(&state).await {
                Ok((0, 0)) => {}
                Ok((feed, memory)) => {
                    tracing::info!(feed, memory, "forgot revoked ids past their windows")
                }
                Err(err) => tracing::warn!(error = %err, "pruning revoked ids failed; will retry"),
            }
        }
        match state.tasks.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "swept expired tasks"),
            Err(err) => tracing::warn!(error = %err, "sweep failed; will retry"),
        }
        match crate::tasks::approvals::expire_due(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired undecided approvals"),
            Err(err) => tracing::warn!(error = %err, "approval sweep failed; will retry"),
        }
    }
}
