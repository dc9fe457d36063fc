//! Leash as an MCP client: one connection per `[mcp_servers.NAME]`, kept alive with
//! backoff. Each server's tools are discovered (on connect, on
//! `notifications/tools/list_changed`, and every `mcp_refresh`), pinned, and published in
//! the [`crate::upstream::catalog::Catalog`] as `NAME.tool` (under the server's own names
//! with `prefix = false`). A server that is down only loses its own tools; the others
//! are unaffected.
//!
//! The connections use the broker's one upstream client ([`crate::upstream::client::Proxy::client`]),
//! handed to rmcp's streamable-HTTP transport: rmcp's own default client would follow
//! redirects and honour `HTTP_PROXY`, sending the server's configured credential headers
//! wherever they point.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
    SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{RwLock, mpsc};

use crate::ids::is_tool_name;
use crate::policy::{McpServerDef, ToolApproval, ToolDef};
use crate::store::Store;
use crate::upstream::catalog::Catalog;
use crate::upstream::client::UpstreamFailure;
use crate::upstream::pins::DefinitionReview;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Receives the upstream's notifications.
#[derive(Clone)]
struct Listener {
    changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Listener {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("leash", env!("CARGO_PKG_VERSION")),
        )
    }
}

type Client = Arc<RunningService<RoleClient, Listener>>;

/// One upstream server and its live connection, if any.
struct Upstream {
    def: Arc<McpServerDef>,
    client: RwLock<Option<Client>>,
}

/// What discovery needs: where pins live, where tools are published, who reviews a
/// changed definition, and how often lists are re-read besides on `list_changed`.
#[derive(Clone)]
pub struct Discovery {
    /// Where pins are kept.
    pub store: Arc<dyn Store>,
    /// Where discovered tools are published.
    pub catalog: Arc<Catalog>,
    /// Files a review of a changed definition.
    pub review: Arc<dyn DefinitionReview>,
    /// How often each server's tool list is re-read.
    pub refresh_every: Duration,
}

/// Every upstream MCP server.
pub struct McpServers {
    servers: BTreeMap<String, Arc<Upstream>>,
    http: reqwest::Client,
    /// Sessions of servers with `upstream_auth`, one per server and credential (keyed by
    /// its digest): a call is never sent on a session opened with another person's token.
    sessions: moka::future::Cache<(String, [u8; 32]), Client>,
}

/// How many per-credential sessions are kept open, and for how long unused.
const MAX_SESSIONS: u64 = 1_000;
const SESSION_IDLE: Duration = Duration::from_secs(300);

impl McpServers {
    /// The configured servers, not connected yet (see [`McpServers::start`]), reached with
    /// `http` (the broker's upstream client).
    pub fn new(servers: &BTreeMap<String, Arc<McpServerDef>>, http: reqwest::Client) -> Arc<Self> {
        Arc::new(McpServers {
            http,
            sessions: moka::future::Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .time_to_idle(SESSION_IDLE)
                .build(),
            servers: servers
                .iter()
                .map(|(name, def)| {
                    (
                        name.clone(),
                        Arc::new(Upstream {
                            def: def.clone(),
                            client: RwLock::new(None),
                        }),
                    )
                })
                .collect(),
        })
    }

    /// Connects to every server in the background and keeps the catalog current.
    pub fn start(&self, discovery: &Discovery) {
        for upstream in self.servers.values() {
            tokio::spawn(maintain(
                upstream.clone(),
                self.http.clone(),
                discovery.clone(),
            ));
        }
    }

    /// Calls `tool` on `server`; the answer is the upstream's `CallToolResult` as JSON.
    /// With `authorization` (the provider token of `upstream_auth`), on a session opened
    /// with that credential; else on the server's shared session.
    pub async fn call(
        &self,
        server: &str,
        tool: &str,
        args: &Value,
        authorization: Option<HeaderValue>,
    ) -> Result<Value, UpstreamFailure> {
        let upstream = self
            .servers
            .get(server)
            .ok_or_else(|| UpstreamFailure::Unreachable {
                tool: format!("{server}.{tool}"),
            })?;
        let name = upstream
            .def
            .exposed_name(tool)
            .unwrap_or_else(|| format!("{server}.{tool}"));
        let Some(authorization) = authorization else {
            let client = upstream
                .client
                .read()
                .await
                .clone()
                .ok_or(UpstreamFailure::Unreachable { tool: name.clone() })?;
            return call_on(upstream, &client, name, tool, args).await;
        };
        let key = (
            server.to_string(),
            <[u8; 32]>::from(Sha256::digest(authorization.as_bytes())),
        );
        // The credential must not reach a log line through an error that quotes headers.
        let secret = authorization
            .to_str()
            .ok()
            .and_then(|v| v.split_whitespace().last())
            .unwrap_or_default()
            .to_string();
        let client = self
            .sessions
            .try_get_with(key.clone(), async {
                let (changed, _) = mpsc::unbounded_channel();
                connect(
                    &upstream.def,
                    &self.http,
                    Listener { changed },
                    Some(authorization),
                )
                .await
                .map(Arc::new)
                .map_err(|e| {
                    if secret.len() >= 4 {
                        e.replace(&secret, "[redacted]")
                    } else {
                        e
                    }
                })
            })
            .await
            .map_err(|error| {
                tracing::warn!(tool = %name, %error, "cannot open an MCP session with the call's credential");
                UpstreamFailure::Unreachable { tool: name.clone() }
            })?;
        let outcome = call_on(upstream, &client, name, tool, args).await;
        if matches!(outcome, Err(UpstreamFailure::Unreachable { .. })) {
            // A broken session is opened again on the next call.
            self.sessions.invalidate(&key).await;
        }
        outcome
    }
}

/// One `tools/call` on an open session.
async fn call_on(
    upstream: &Upstream,
    client: &Client,
    name: String,
    tool: &str,
    args: &Value,
) -> Result<Value, UpstreamFailure> {
    {
        let params = CallToolRequestParams::new(tool.to_string())
            .with_arguments(args.as_object().cloned().unwrap_or_default());
        let timeout = upstream.def.timeout;
        match tokio::time::timeout(timeout, client.call_tool(params)).await {
            Err(_) => Err(UpstreamFailure::Timeout {
                tool: name,
                timeout_ms: timeout.as_millis(),
            }),
            Ok(Err(rmcp::ServiceError::McpError(err))) => Err(UpstreamFailure::BadAnswer {
                tool: name,
                problem: format!("answered an MCP error: {}", err.message),
            }),
            Ok(Err(err)) => {
                let error = upstream.def.scrub(&err.to_string());
                tracing::warn!(tool = %name, %error, "MCP upstream call failed");
                Err(UpstreamFailure::Unreachable { tool: name })
            }
            Ok(Ok(result)) => {
                serde_json::to_value(result).map_err(|e| UpstreamFailure::BadAnswer {
                    tool: name,
                    problem: e.to_string(),
                })
            }
        }
    }
}

async fn connect(
    def: &McpServerDef,
    http: &reqwest::Client,
    listener: Listener,
    authorization: Option<HeaderValue>,
) -> Result<RunningService<RoleClient, Listener>, String> {
    let mut headers: std::collections::HashMap<HeaderName, HeaderValue> =
        def.headers.iter().cloned().collect();
    if let Some(authorization) = authorization {
        headers.insert(axum::http::header::AUTHORIZATION, authorization);
    }
    // Answers bounded like HTTP tools' (rmcp enforces these for a reqwest client).
    let config = StreamableHttpClientTransportConfig::with_uri(def.url.as_str())
        .custom_headers(headers)
        .max_json_response_size(crate::upstream::client::MAX_RESPONSE_BYTES)
        .max_sse_event_size(crate::upstream::client::MAX_RESPONSE_BYTES);
    let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
    let lifecycle = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    tokio::time::timeout(
        def.timeout,
        listener.serve_with_lifecycle(transport, lifecycle),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    // The client's errors may quote the URL or headers: never log their secrets.
    .map_err(|e| def.scrub(&e.to_string()))
}

/// Keeps one server connected and its tools published, forever.
async fn maintain(upstream: Arc<Upstream>, http: reqwest::Client, discovery: Discovery) {
    let name = upstream.def.name.clone();
    let mut backoff = Duration::from_millis(250);
    loop {
        let (changed_tx, mut changed_rx) = mpsc::unbounded_channel();
        match connect(
            &upstream.def,
            &http,
            Listener {
                changed: changed_tx.clone(),
            },
            None,
        )
        .await
        {
            Ok(service) => {
                let client: Client = Arc::new(service);
                *upstream.client.write().await = Some(client.clone());
                backoff = Duration::from_millis(250);
                tracing::info!(server = %name, "connected to MCP upstream");
                // Servers on 2026-07-28 send list_changed on a subscription stream.
                if let Ok(mut subscription) = client
                    .listen(SubscriptionFilter::builder().tools_list_changed().build())
                    .await
                {
                    let tx = changed_tx.clone();
                    tokio::spawn(async move {
                        while let Ok(Some(_)) = subscription.next().await {
                            if tx.send(()).is_err() {
                                break;
                            }
                        }
                    });
                }
                loop {
                    if let Err(err) = refresh(&discovery, &upstream, &client).await {
                        let error = upstream.def.scrub(&err.to_string());
                        tracing::warn!(server = %name, %error, "MCP upstream lost; reconnecting");
                        break;
                    }
                    tokio::select! {
                        _ = changed_rx.recv() => {}
                        _ = tokio::time::sleep(discovery.refresh_every) => {}
                    }
                }
                *upstream.client.write().await = None;
                discovery.catalog.set_server_tools(&name, Vec::new());
            }
            Err(err) => {
                tracing::warn!(server = %name, error = %err, "cannot connect to MCP upstream; will retry")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lists the server's tools and publishes them (pinned) in the catalog.
async fn refresh(
    discovery: &Discovery,
    upstream: &Upstream,
    client: &Client,
) -> Result<(), String> {
    let def = &upstream.def;
    let tools = tokio::time::timeout(def.timeout, client.list_all_tools())
        .await
        .map_err(|_| "tools/list timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut published = Vec::new();
    for tool in tools {
        let Some(name) = def.exposed_name(&tool.name) else {
            tracing::warn!(server = %def.name, tool = %tool.name, "skipping a dotted tool name of a server without a prefix (a wildcard grant would cover it)");
            continue;
        };
        if !is_tool_name(&name) {
            tracing::warn!(server = %def.name, tool = %tool.name, "skipping an upstream tool whose name Leash cannot expose");
            continue;
        }
        let schema = Value::Object((*tool.input_schema).clone());
        let description = tool.description.as_deref().unwrap_or("").to_string();
        let validator = match crate::policy::input_schema::compile(&schema) {
            Ok(validator) => validator,
            Err(err) => {
                tracing::warn!(tool = %name, error = %err, "skipping an upstream tool with an invalid input schema");
                continue;
            }
        };
        let (definition, hash) = crate::upstream::pins::definition(&name, &description, &schema);
        let withheld = crate::upstream::pins::withheld(
            discovery.store.as_ref(),
            discovery.review.as_ref(),
            &def.name,
            &name,
            &definition,
            &hash,
        )
        .await
        .map_err(|e| e.to_string())?;
        published.push((
            Arc::new(ToolDef {
                name,
                description,
                upstream: def.url.clone(),
                timeout: def.timeout,
                approval: ToolApproval::None,
                input_schema: schema,
                validator,
                upstream_headers: Vec::new(),
                mcp: Some((def.name.clone(), tool.name.to_string())),
                upstream_auth: def.upstream_auth.clone(),
            }),
            withheld,
            hash,
        ));
    }
    discovery.catalog.set_server_tools(&def.name, published);
    Ok(())
}
