//! A broker's domain without HTTP, for unit tests: the real services on an in-memory
//! SQLite store and a clock that stands still, with a policy written in the test and,
//! where a test forwards calls, a real upstream on 127.0.0.1 that records what it got.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::audit::log::Audit;
use crate::clock::Clock;
use crate::events::hub::Events;
use crate::policy::Policy;
use crate::replica::health::FeedHealth;
use crate::store::{SqliteStore, Store, TaskRecord, TaskState};
use crate::tasks::approvals::Approvals;
use crate::tasks::calls::Calls;
use crate::tasks::credentials::Credentials;
use crate::tasks::issue::Issuer;
use crate::tasks::lifecycle::Lifecycle;
use crate::tasks::runtime::Tasks;
use crate::tasks::services::{ServiceParts, Services};
use crate::tokens::keys::{ForwardingKey, RootKeys};
use crate::tokens::revocation::RevocationSet;
use crate::tokens::seal::{Sealer, TASK_TOKEN};
use crate::tokens::verify::{TokenVerifier, VerifiedToken};
use crate::upstream::catalog::Catalog;
use crate::upstream::client::Proxy;
use crate::upstream::dispatch::Upstreams;
use crate::upstream::mcp::McpServers;

/// 2027-01-15T08:00:00Z: every test starts at the same instant.
pub const T0_MS: i64 = 1_800_000_000_000;

/// The domain services of one broker.
pub struct Kit {
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    pub policy: Arc<Policy>,
    pub tasks: Arc<Tasks>,
    pub issuer: Issuer,
    pub sealer: Arc<Sealer>,
    pub approvals: Arc<Approvals>,
    pub calls: Arc<Calls>,
    pub lifecycle: Arc<Lifecycle>,
    pub credentials: Arc<Credentials>,
    pub verifier: Arc<TokenVerifier>,
    pub revoked: Arc<RevocationSet>,
}

/// A policy from TOML text (one file), failing the test on any mistake.
pub fn policy(toml: &str) -> Policy {
    crate::policy::load_sources(&[(PathBuf::from("test.toml"), toml.to_string())], &|_| None)
        .unwrap_or_else(|errors| panic!("test policy: {errors}"))
}

impl Kit {
    /// Every service over `toml`'s policy, a fresh in-memory store and a fixed clock.
    pub async fn new(toml: &str) -> Kit {
        let clock = Clock::fixed(T0_MS);
        let policy = Arc::new(policy(toml));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let keys = Arc::new(RootKeys::generate());
        let forwarding = Arc::new(ForwardingKey::generate());
        let sealer = Arc::new(Sealer::new([7; 32]));
        let audit = Audit::start(store.clone(), clock.clone(), 0).await.unwrap();
        let events = Events::default();
        let revoked = Arc::new(RevocationSet::default());
        let tasks = Tasks::start(
            store.clone(),
            clock.clone(),
            audit.clone(),
            events.clone(),
            revoked.clone(),
            policy.longest_ttl(),
            false,
        );
        let catalog = Arc::new(Catalog::new(&policy));
        let proxy = Proxy::new(&[]).unwrap();
        let upstreams = Arc::new(Upstreams::new(
            proxy.clone(),
            McpServers::new(&policy.mcp_servers, proxy.client()),
        ));
        let Services {
            issuer,
            verifier,
            approvals,
            lifecycle,
            credentials,
            calls,
            ..
        } = Services::build(ServiceParts {
            store: store.clone(),
            audit: audit.clone(),
            events,
            clock: clock.clone(),
            tasks: tasks.clone(),
            keys,
            forwarding,
            sealer: sealer.clone(),
            policy: policy.clone(),
            catalog,
            upstreams,
            revoked: revoked.clone(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            health: Arc::new(FeedHealth::single(clock.clone())),
            rate_limiter: Arc::new(crate::ratelimit::RateLimiter::new(0, 0, clock.clone())),
            max_pending_approvals_per_agent: 3,
            max_revoked_tokens_per_task: 2,
            capability_ttl: Duration::from_secs(30),
            access_token_ttl: Duration::from_secs(120),
            connections: Arc::new(crate::connections::Connections::new(
                policy.clone(),
                proxy.client(),
                store.clone(),
                sealer.clone(),
                audit.clone(),
                clock.clone(),
            )),
        });
        Kit {
            verifier,
            clock,
            store,
            policy,
            tasks,
            issuer,
            sealer,
            approvals,
            calls,
            lifecycle,
            credentials,
            revoked,
        }
    }

    /// Opens an active task of `agent` for `tools` with the grant's window; its token.
    pub async fn active_task(&self, agent: &str, tools: &[&str]) -> (String, String) {
        let grant = self.policy.grant(agent).cloned().expect("agent in policy");
        let task_id = crate::ids::new_task_id();
        let tools: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
        let ttl_ms = grant.max_ttl.as_millis() as i64;
        let issued = self
            .issuer
            .issue(
                &crate::tasks::issue::TaskIdentity {
                    task_id: &task_id,
                    agent,
                    user: None,
                    audience: None,
                },
                &grant,
                &tools,
                &[],
                ttl_ms,
                None,
            )
            .unwrap();
        let now = self.clock.now_ms();
        let record = TaskRecord {
            task_id: task_id.clone(),
            agent: agent.to_string(),
            purpose: "a unit test".into(),
            tools: issued.tools.clone(),
            checks: Vec::new(),
            state: TaskState::Active,
            created_at_ms: now,
            expires_at_ms: issued.expires_at_ms,
            idle_timeout_ms: grant.idle_timeout.map(|d| d.as_millis() as i64),
            max_calls: grant.max_calls,
            calls: 0,
            last_activity_ms: now,
            ended_at_ms: None,
            end_reason: None,
            token: Some(self.sealer.seal(TASK_TOKEN, &task_id, &issued.token)),
            user: None,
            user_group: None,
            audience: None,
        };
        assert!(
            self.tasks
                .create(&record, Some(&issued.revocation_id), None)
                .await
                .unwrap()
        );
        (task_id, issued.token)
    }

    /// A token as a request presents it: verified, and refused once revoked.
    pub fn present(&self, token: &str) -> Result<Arc<VerifiedToken>, crate::error::ApiError> {
        self.verifier.verify(token, |id| self.revoked.refusal(id))
    }
}

/// What a recording upstream received: each call's headers and JSON body.
pub type Received = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// A real HTTP upstream on 127.0.0.1 answering `{"echo": <body>}`; its base URL and
/// what it received.
pub async fn recording_upstream() -> (String, Received) {
    let received: Received = Arc::default();
    let log = received.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((headers, body.clone()));
                Json(serde_json::json!({ "echo": body }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// The policy most domain tests use, with its HTTP tools at `url`: `bot` may use every
/// `notes.*` tool (3 calls, 10 min, 60 s idle); `careful` needs issuance approval.
pub fn notes_policy(url: &str) -> String {
    format!(
        r#"
[tools."notes.search"]
description = "Search"
upstream = "{url}/search"
timeout_ms = 2000
input_schema = {{ type = "object", required = ["query"], additionalProperties = false, properties = {{ query = {{ type = "string", maxLength = 20 }} }} }}
upstream_headers = {{ Authorization = "Bearer upstream-secret" }}

[tools."notes.read"]
description = "Read"
upstream = "{url}/read"
timeout_ms = 2000
input_schema = {{ type = "object" }}

[tools."notes.delete"]
description = "Delete, with an approver's consent each time"
upstream = "{url}/delete"
timeout_ms = 2000
approval = "per_call"
input_schema = {{ type = "object" }}

[agents.bot]
tools = ["notes.*"]
max_ttl_seconds = 600
idle_timeout_seconds = 60
max_calls = 3

[agents.narrow]
tools = ["notes.read"]
max_ttl_seconds = 300

[agents.careful]
tools = ["notes.read"]
max_ttl_seconds = 600
approval = "issuance"
"#
    )
}
