//! Starting a broker: configuration → policy, TLS, keys, store, caches → [`AppState`].

use std::sync::Arc;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::app::state::{AppState, Handles};
use crate::audit::log::Audit;
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::datadir;
use crate::events::hub::Events;
use crate::policy;
use crate::replica::health::FeedHealth;
use crate::replica::sealed_keys::MasterKey;
use crate::store::{PgStore, SqliteStore, Store};
use crate::tasks::runtime::Tasks;
use crate::tasks::services::{ServiceParts, Services};
use crate::tokens::keys::{ForwardingKey, RootKeys};
use crate::tokens::revocation::RevocationSet;
use crate::upstream::catalog::Catalog;
use crate::upstream::client::Proxy;
use crate::upstream::dispatch::Upstreams;
use crate::upstream::mcp::McpServers;

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
    // With PostgreSQL every replica (this one too) hears of committed rows through its
    // feed (`timeline:` notifications); a lone SQLite broker announces its own.
    if pg.is_none() {
        audit.announce_on(events.clone());
    }
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
    let upstreams = Arc::new(Upstreams::new(
        proxy.clone(),
        McpServers::new(&policy.mcp_servers, proxy.client()),
    ));
    let policy = Arc::new(policy);
    let forwarding = Arc::new(forwarding);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let rate_limiter = Arc::new(crate::ratelimit::RateLimiter::new(
        config.rate_limit,
        config.rate_burst,
        clock.clone(),
    ));
    let connections = Arc::new(crate::connections::Connections::new(
        policy.clone(),
        proxy.client(),
        store.clone(),
        sealer.clone(),
        audit.clone(),
        clock.clone(),
    ));
    let Services {
        issuer,
        verifier,
        approvals,
        lifecycle,
        credentials,
        calls,
        history,
    } = Services::build(ServiceParts {
        store: store.clone(),
        audit: audit.clone(),
        events: events.clone(),
        clock: clock.clone(),
        tasks: tasks.clone(),
        keys: keys.clone(),
        forwarding: forwarding.clone(),
        sealer: sealer.clone(),
        policy: policy.clone(),
        catalog: catalog.clone(),
        upstreams: upstreams.clone(),
        revoked: revoked.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        rate_limiter: rate_limiter.clone(),
        max_pending_approvals_per_agent: config.max_pending_approvals_per_agent,
        max_revoked_tokens_per_task: config.max_revoked_tokens_per_task,
        capability_ttl: config.capability_ttl,
        access_token_ttl: config.access_token_ttl,
        connections: connections.clone(),
    });
    let accounts = Arc::new(crate::accounts::passwords::Accounts::new(
        store.clone(),
        audit.clone(),
        clock.clone(),
    ));
    let secure_cookies = server_tls.is_some()
        || config
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
    let sessions = Arc::new(crate::accounts::sessions::Sessions::new(
        store.clone(),
        audit.clone(),
        clock.clone(),
        secure_cookies,
    ));
    let oauth = Arc::new(crate::oauth::server::OAuthServer::new(
        crate::oauth::documents::ClientDocuments::new(
            &extra_roots,
            &config.client_metadata_private_hosts,
        )?,
        store.clone(),
        lifecycle.clone(),
        policy.clone(),
        catalog.clone(),
        verifier.clone(),
        clock.clone(),
    ));
    let oidc = policy.oidc.clone().map(|settings| {
        Arc::new(crate::accounts::oidc::OidcSignIn::new(
            settings,
            proxy.client(),
            sealer.clone(),
            audit.clone(),
            clock.clone(),
        ))
    });
    Ok(AppState::new(Handles {
        connections,
        accounts,
        oidc,
        sessions,
        oauth,
        policy,
        verifier,
        keys,
        forwarding,
        calls,
        approvals,
        lifecycle,
        credentials,
        history,
        issuer,
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
        rate_limiter,
        metrics,
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
        clock,
        admin_digest: Sha256::digest(admin_token.as_bytes()).into(),
        config: Arc::new(config),
    }))
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
