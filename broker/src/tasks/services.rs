//! The task domain's services, assembled once from their parts: the broker
//! (`app/start.rs`) and the unit tests (`tasks/testkit.rs`) build exactly the same
//! services, so a test exercises what the broker runs.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::log::Audit;
use crate::clock::Clock;
use crate::connections::Connections;
use crate::events::hub::Events;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::ratelimit::RateLimiter;
use crate::replica::health::FeedHealth;
use crate::store::Store;
use crate::tasks::approvals::{Approvals, ApprovalsParts};
use crate::tasks::calls::Calls;
use crate::tasks::credentials::Credentials;
use crate::tasks::history::History;
use crate::tasks::issue::Issuer;
use crate::tasks::lifecycle::Lifecycle;
use crate::tasks::runtime::Tasks;
use crate::tokens::keys::{ForwardingKey, RootKeys};
use crate::tokens::revocation::RevocationSet;
use crate::tokens::seal::Sealer;
use crate::tokens::verify::TokenVerifier;
use crate::upstream::catalog::Catalog;
use crate::upstream::dispatch::Upstreams;

/// What the services are built from: shared handles and the limits of the configuration.
pub struct ServiceParts {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The audit writer.
    pub audit: Audit,
    /// Where approvers hear of requests and decisions.
    pub events: Events,
    /// The clock.
    pub clock: Clock,
    /// Live tasks and counters.
    pub tasks: Arc<Tasks>,
    /// The root keys (minting and verification).
    pub keys: Arc<RootKeys>,
    /// The forwarding key (per-call capabilities; refused as a task token).
    pub forwarding: Arc<ForwardingKey>,
    /// Seals task tokens for the store.
    pub sealer: Arc<Sealer>,
    /// The policy.
    pub policy: Arc<Policy>,
    /// Every callable tool.
    pub catalog: Arc<Catalog>,
    /// HTTP tools and MCP servers.
    pub upstreams: Arc<Upstreams>,
    /// Revoked ids.
    pub revoked: Arc<RevocationSet>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Whether this replica may still admit calls.
    pub health: Arc<FeedHealth>,
    /// The per-agent rate limit.
    pub rate_limiter: Arc<RateLimiter>,
    /// Undecided approvals one agent may have waiting.
    pub max_pending_approvals_per_agent: i64,
    /// Tokens of one task that may be revoked one at a time.
    pub max_revoked_tokens_per_task: i64,
    /// Window of the per-call capability sent upstream.
    pub capability_ttl: Duration,
    /// Longest life of an OAuth access token (a task token bound to `/mcp`).
    pub access_token_ttl: Duration,
    /// People's upstream connections (provider tokens for `upstream_auth` tools).
    pub connections: Arc<Connections>,
}

/// The task domain's services.
pub struct Services {
    /// Mints task tokens.
    pub issuer: Issuer,
    /// Verifies bearer tokens (refusing the forwarding key's capabilities as task tokens).
    pub verifier: Arc<TokenVerifier>,
    /// Human decisions.
    pub approvals: Arc<Approvals>,
    /// Opening, renewing and ending tasks.
    pub lifecycle: Arc<Lifecycle>,
    /// Credentials and single-token revocation.
    pub credentials: Arc<Credentials>,
    /// The checked call.
    pub calls: Arc<Calls>,
    /// Tasks' timelines and signed evidence.
    pub history: Arc<History>,
}

impl Services {
    /// Builds every service from `parts`.
    pub fn build(parts: ServiceParts) -> Services {
        let issuer = Issuer::new(
            parts.keys.clone(),
            parts.clock.clone(),
            parts.access_token_ttl,
        );
        let approvals = Arc::new(Approvals::new(ApprovalsParts {
            store: parts.store.clone(),
            audit: parts.audit.clone(),
            events: parts.events,
            clock: parts.clock.clone(),
            tasks: parts.tasks.clone(),
            issuer: issuer.clone(),
            sealer: parts.sealer.clone(),
            policy: parts.policy.clone(),
            catalog: parts.catalog.clone(),
            max_pending_per_agent: parts.max_pending_approvals_per_agent,
        }));
        let lifecycle = Arc::new(Lifecycle {
            tasks: parts.tasks.clone(),
            store: parts.store.clone(),
            policy: parts.policy.clone(),
            catalog: parts.catalog.clone(),
            issuer: issuer.clone(),
            sealer: parts.sealer,
            approvals: approvals.clone(),
            audit: parts.audit.clone(),
            clock: parts.clock.clone(),
        });
        let verifier = Arc::new(
            TokenVerifier::new(parts.keys.clone())
                .refusing_forwarded(parts.forwarding.pair().public()),
        );
        let history = Arc::new(History {
            store: parts.store.clone(),
            keys: parts.keys.clone(),
            policy_hash: parts.policy.source_hash.clone(),
        });
        let credentials = Arc::new(Credentials {
            keys: parts.keys,
            store: parts.store.clone(),
            audit: parts.audit.clone(),
            clock: parts.clock.clone(),
            revoked: parts.revoked,
            verifier: verifier.clone(),
            tasks: parts.tasks.clone(),
            max_revoked_tokens_per_task: parts.max_revoked_tokens_per_task,
        });
        let calls = Arc::new(Calls {
            tasks: parts.tasks,
            catalog: parts.catalog,
            upstreams: parts.upstreams,
            approvals: approvals.clone(),
            store: parts.store,
            audit: parts.audit,
            metrics: parts.metrics,
            clock: parts.clock,
            health: parts.health,
            rate_limiter: parts.rate_limiter,
            capabilities: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(parts.capability_ttl)
                .build(),
            forwarding: parts.forwarding,
            capability_ttl: parts.capability_ttl,
            connections: parts.connections,
        });
        Services {
            issuer,
            verifier,
            approvals,
            lifecycle,
            credentials,
            calls,
            history,
        }
    }
}
