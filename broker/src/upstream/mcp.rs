//! Leash as an MCP client: one connection per `[mcp_servers.NAME]`, kept alive with
//! backoff. Each server's tools, prompts, resources and resource templates are
//! discovered (on connect, on a `list_changed` notification, and every `mcp_refresh`),
//! pinned (tools, prompts, templates), and published in the
//! [`crate::upstream::catalog::Catalog`] as `NAME.tool`, `NAME.prompt` and
//! `NAME.resources` (under the server's own names with `prefix = false`). A server that
//! is down only loses its own names; the others are unaffected.
//!
//! The connections use the broker's one upstream client ([`crate::upstream::client::Proxy::client`]),
//! handed to rmcp's streamable-HTTP transport: rmcp's own default client would follow
//! redirects and honour `HTTP_PROXY`, sending the server's configured credential headers
//! wherever they point.

// Sampling, roots, logging and `resources/subscribe` are deprecated by the 2026-07-28
// revision (SEP-2577) but are the 2025-11-25 protocol, which Leash relays as it is.
#![allow(deprecated)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientConfig, ClientRequest, CompleteRequest,
    CompleteRequestParams, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
    ElicitResult, GetPromptRequest, GetPromptRequestParams, Implementation, ListRootsResult,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProtocolVersion,
    ReadResourceRequest, ReadResourceRequestParams, ResourceUpdatedNotificationParam, ServerResult,
    SetLevelRequest, SetLevelRequestParams, SubscribeRequest, SubscribeRequestParams,
    SubscriptionFilter, UnsubscribeRequest, UnsubscribeRequestParams,
};
use rmcp::service::{
    NotificationContext, PeerRequestOptions, RequestContext, RoleClient, RunningService,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{RwLock, mpsc};

use crate::ids::is_tool_name;
use crate::policy::{McpKind, McpServerDef, McpTarget, RESOURCES, StdioCommand, ToolDef};
use crate::store::Store;
use crate::upstream::catalog::{Catalog, Surface};
use crate::upstream::client::UpstreamFailure;
use crate::upstream::pins::DefinitionReview;
use crate::upstream::relay::{Origin, Pending, Relay, RelayTo};

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a connection must last for the next failure to start backing off afresh.
const HEALTHY: Duration = Duration::from_secs(30);

/// How often a connection is looked at between refreshes (a stdio process may exit).
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// Shortest time between two refreshes of one server, however often it announces
/// changes.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// How long a cancelled request's answer is waited for.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Why a connected server's maintenance woke up.
enum Wake {
    /// It announced that a list changed.
    Announced,
    /// Its refresh is due.
    Due,
    /// Its connection (or process) is gone.
    Lost,
}

/// Receives the upstream's notifications and requests: on the server's own session, its
/// list changes; on a client's session ([`RelayTo`]), everything meant for that client.
#[derive(Clone)]
pub(crate) struct Listener {
    changed: mpsc::UnboundedSender<()>,
    relay: Option<RelayTo>,
}

impl ClientHandler for Listener {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.relay()?.create_message(params, &context).await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.relay()?.create_elicitation(params, &context).await
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.relay()?.list_roots(&context).await
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(relay) = &self.relay {
            relay.progress(params);
        }
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(relay) = &self.relay {
            relay.log(params);
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(relay) = &self.relay {
            relay.resource_updated(params);
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }

    fn get_info(&self) -> ClientConfig {
        let capabilities = self
            .relay
            .as_ref()
            .map(|relay| relay.capabilities.clone())
            .unwrap_or_default();
        ClientConfig::new(
            capabilities,
            Implementation::new("leash", env!("CARGO_PKG_VERSION")),
        )
    }
}

impl Listener {
    /// Where the server's requests go: the client of this session, if there is one.
    fn relay(&self) -> Result<&RelayTo, ErrorData> {
        self.relay.as_ref().ok_or_else(not_relayed)
    }
}

/// What a server asks of the client on a session no client is behind (discovery, a
/// stateless client's call).
fn not_relayed() -> ErrorData {
    ErrorData::new(
        rmcp::model::ErrorCode::METHOD_NOT_FOUND,
        "Leash relays requests to the client only on a client's MCP session",
        None,
    )
}

/// An open session with an upstream server.
pub(crate) type Client = Arc<RunningService<RoleClient, Listener>>;

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

/// One request to an upstream MCP server, by the server's own names.
pub enum Operation<'a> {
    /// `tools/call`.
    CallTool {
        /// The tool's name on the server.
        tool: &'a str,
        /// Its arguments object.
        args: &'a Value,
    },
    /// `prompts/get`.
    GetPrompt {
        /// The prompt's name on the server.
        prompt: &'a str,
        /// Its arguments (strings).
        args: &'a Value,
    },
    /// `resources/read`.
    ReadResource {
        /// The URI, as the client asked for it.
        uri: &'a str,
    },
    /// `completion/complete`, its reference already in the server's own names.
    Complete(CompleteRequestParams),
    /// `resources/subscribe` (on a client's session only).
    Subscribe {
        /// The URI, as the client asked for it.
        uri: &'a str,
    },
    /// `resources/unsubscribe` (on a client's session only).
    Unsubscribe {
        /// The URI, as the client asked for it.
        uri: &'a str,
    },
}

impl Operation<'_> {
    /// The request as rmcp sends it.
    fn request(self) -> Result<ClientRequest, serde_json::Error> {
        Ok(match self {
            Operation::CallTool { tool, args } => {
                ClientRequest::CallToolRequest(CallToolRequest::new(
                    CallToolRequestParams::new(tool.to_string())
                        .with_arguments(args.as_object().cloned().unwrap_or_default()),
                ))
            }
            Operation::GetPrompt { prompt, args } => {
                ClientRequest::GetPromptRequest(GetPromptRequest::new(serde_json::from_value::<
                    GetPromptRequestParams,
                >(
                    serde_json::json!({ "name": prompt, "arguments": args }),
                )?))
            }
            Operation::ReadResource { uri } => ClientRequest::ReadResourceRequest(
                ReadResourceRequest::new(serde_json::from_value::<ReadResourceRequestParams>(
                    serde_json::json!({ "uri": uri }),
                )?),
            ),
            Operation::Complete(params) => {
                ClientRequest::CompleteRequest(CompleteRequest::new(params))
            }
            Operation::Subscribe { uri } => {
                ClientRequest::SubscribeRequest(SubscribeRequest::new(serde_json::from_value::<
                    SubscribeRequestParams,
                >(
                    serde_json::json!({ "uri": uri }),
                )?))
            }
            Operation::Unsubscribe { uri } => ClientRequest::UnsubscribeRequest(
                UnsubscribeRequest::new(serde_json::from_value::<UnsubscribeRequestParams>(
                    serde_json::json!({ "uri": uri }),
                )?),
            ),
        })
    }
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

    /// Sends `operation` to `server` (`label` names it in errors); the answer is the
    /// upstream's result as JSON. With `authorization` (the provider token of
    /// `upstream_auth`), on a session opened with that credential; else on the server's
    /// shared session.
    pub async fn request(
        &self,
        server: &str,
        label: &str,
        operation: Operation<'_>,
        authorization: Option<HeaderValue>,
        via: Option<(&Relay, &Origin)>,
    ) -> Result<Value, UpstreamFailure> {
        let name = label.to_string();
        let upstream = self
            .servers
            .get(server)
            .ok_or_else(|| UpstreamFailure::Unreachable { tool: name.clone() })?;
        // A stdio server is one process for everybody: nothing of it is relayed.
        if let Some((relay, origin)) = via.filter(|_| upstream.def.command.is_none()) {
            let (client, relay_to) = self.relayed(upstream, relay, authorization).await?;
            return send_relayed(upstream, &client, &relay_to, name, operation, origin).await;
        }
        let Some(authorization) = authorization else {
            let client = upstream
                .client
                .read()
                .await
                .clone()
                .ok_or(UpstreamFailure::Unreachable { tool: name.clone() })?;
            return send(upstream, &client, name, operation).await;
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
                    Listener {
                        changed,
                        relay: None,
                    },
                    Some(authorization),
                    preferred(),
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
        let outcome = send(upstream, &client, name, operation).await;
        if matches!(outcome, Err(UpstreamFailure::Unreachable { .. })) {
            // A broken session is opened again on the next call.
            self.sessions.invalidate(&key).await;
        }
        outcome
    }
}

impl McpServers {
    /// The client session's own upstream session with `upstream` (and this credential),
    /// opened on first use with the client's capabilities and its logging level.
    async fn relayed(
        &self,
        upstream: &Upstream,
        relay: &Relay,
        authorization: Option<HeaderValue>,
    ) -> Result<(Client, RelayTo), UpstreamFailure> {
        let name = upstream.def.name.clone();
        let key = (
            name.clone(),
            authorization
                .as_ref()
                .map(|a| <[u8; 32]>::from(Sha256::digest(a.as_bytes()))),
        );
        let mut open = relay.upstreams.lock().await;
        if let Some((client, relay_to)) = open.get(&key)
            && !client.is_closed()
        {
            return Ok((client.clone(), relay_to.clone()));
        }
        let pending = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (changed, _) = mpsc::unbounded_channel();
        let relay_to = RelayTo::new(relay, pending.clone());
        let listener = Listener {
            changed,
            relay: Some(relay_to.clone()),
        };
        let secret = authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_whitespace().last())
            .unwrap_or_default()
            .to_string();
        let client = connect(
            &upstream.def,
            &self.http,
            listener,
            authorization,
            ClientLifecycleMode::Initialize,
        )
        .await
        .map(Arc::new)
        .map_err(|e| {
            let error = if secret.len() >= 4 { e.replace(&secret, "[redacted]") } else { e };
            tracing::warn!(server = %name, %error, "cannot open an MCP session for a client session");
            UpstreamFailure::Unreachable { tool: name.clone() }
        })?;
        if let Some(level) = relay.level() {
            let _ = tokio::time::timeout(
                upstream.def.timeout,
                client.send_request(ClientRequest::SetLevelRequest(SetLevelRequest::new(
                    SetLevelRequestParams::new(level),
                ))),
            )
            .await;
        }
        open.insert(key, (client.clone(), relay_to.clone()));
        Ok((client, relay_to))
    }

    /// Sends the client's logging level to its open upstream sessions (those opened later
    /// get it as they open).
    pub async fn set_level(&self, relay: &Relay, level: rmcp::model::LoggingLevel) {
        relay.set_level(level);
        let open: Vec<(String, Client)> = relay
            .upstreams
            .lock()
            .await
            .iter()
            .map(|((server, _), (client, _))| (server.clone(), client.clone()))
            .collect();
        for (server, client) in open {
            let timeout = self
                .servers
                .get(&server)
                .map_or(MAX_BACKOFF, |u| u.def.timeout);
            let _ = tokio::time::timeout(
                timeout,
                client.send_request(ClientRequest::SetLevelRequest(SetLevelRequest::new(
                    SetLevelRequestParams::new(level),
                ))),
            )
            .await;
        }
    }
}

/// One request on a client's own upstream session: messages the upstream sends while it
/// runs are relayed to the client request `origin`; when the client cancels it, so is the
/// upstream's request (its answer is still awaited, within the timeout, so a call the
/// upstream performed is counted).
async fn send_relayed(
    upstream: &Upstream,
    client: &Client,
    relay_to: &RelayTo,
    name: String,
    operation: Operation<'_>,
    origin: &Origin,
) -> Result<Value, UpstreamFailure> {
    let bad = |problem: String| UpstreamFailure::BadAnswer {
        tool: name.clone(),
        problem,
    };
    let request = operation.request().map_err(|e| bad(e.to_string()))?;
    let handle = client
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await
        .map_err(|err| {
            let error = upstream.def.scrub(&err.to_string());
            tracing::warn!(tool = %name, %error, "MCP upstream request failed");
            UpstreamFailure::Unreachable { tool: name.clone() }
        })?;
    let id = handle.id.clone();
    let pending = &relay_to.pending;
    if let Ok(mut pending) = pending.lock() {
        pending.insert(
            id.clone(),
            Pending {
                origin: origin.clone(),
                upstream_progress: handle.progress_token.clone(),
            },
        );
    }
    // Forgets the request however this ends, and cancels it upstream unless answered.
    let mut guard = InFlight {
        pending,
        id,
        client: Some(client.clone()),
    };
    let timeout = upstream.def.timeout;
    let response = handle.await_response();
    tokio::pin!(response);
    let answer = tokio::time::timeout(timeout, async {
        tokio::select! {
            answer = &mut response => answer,
            // The client cancelled: so is the upstream's work; its answer still counts.
            _ = origin.cancelled.cancelled() => {
                let _ = client
                    .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                        Some(guard.id.clone()),
                        Some("the client cancelled its request".into()),
                    ))
                    .await;
                guard.client = None;
                // A server need not answer a cancelled request: a short wait, then the
                // call ends (counted: the upstream may have done it).
                match tokio::time::timeout(CANCEL_GRACE, &mut response).await {
                    Ok(answer) => answer,
                    Err(_) => Err(rmcp::ServiceError::Cancelled { reason: Some("cancelled by the client".into()) }),
                }
            }
        }
    })
    .await;
    if answer.is_ok() {
        guard.client = None;
        // What the upstream sent before its answer reaches the client before it.
        relay_to.flush().await;
    }
    drop(guard);
    match answer {
        Err(_) => Err(UpstreamFailure::Timeout {
            tool: name,
            timeout_ms: timeout.as_millis(),
        }),
        // Cancelled by the client and not answered in the grace: it may have run, so it
        // counts as a call (a cancel must not be a way around a budget).
        Ok(Err(rmcp::ServiceError::Cancelled { .. })) => Err(bad(
            "the client cancelled it; the upstream did not answer".into(),
        )),
        Ok(Err(rmcp::ServiceError::McpError(err))) => {
            Err(bad(format!("answered an MCP error: {}", err.message)))
        }
        Ok(Err(err)) => {
            let error = upstream.def.scrub(&err.to_string());
            tracing::warn!(tool = %name, %error, "MCP upstream request failed");
            Err(UpstreamFailure::Unreachable { tool: name })
        }
        Ok(Ok(ServerResult::InputRequiredResult(_))) => Err(bad(
            "asked for input in a way Leash does not relay (2026-07-28 input_required)".into(),
        )),
        Ok(Ok(result)) => serde_json::to_value(result).map_err(|e| bad(e.to_string())),
    }
}

/// A relayed request in flight: removed from the pending map when dropped, and
/// cancelled upstream if it was not answered.
struct InFlight<'a> {
    pending: &'a std::sync::Mutex<HashMap<rmcp::model::RequestId, Pending>>,
    id: rmcp::model::RequestId,
    client: Option<Client>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&self.id);
        }
        if let Some(client) = self.client.take() {
            let id = self.id.clone();
            tokio::spawn(async move {
                let _ = client
                    .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                        Some(id),
                        Some("the client cancelled its request".into()),
                    ))
                    .await;
            });
        }
    }
}

/// One request on an open session, within the server's timeout.
async fn send(
    upstream: &Upstream,
    client: &Client,
    name: String,
    operation: Operation<'_>,
) -> Result<Value, UpstreamFailure> {
    let bad = |problem: String| UpstreamFailure::BadAnswer {
        tool: name.clone(),
        problem,
    };
    let answer = async {
        Ok(match operation {
            Operation::CallTool { tool, args } => {
                let params = CallToolRequestParams::new(tool.to_string())
                    .with_arguments(args.as_object().cloned().unwrap_or_default());
                serde_json::to_value(client.call_tool(params).await?)
            }
            Operation::GetPrompt { prompt, args } => {
                let params: GetPromptRequestParams = serde_json::from_value(
                    serde_json::json!({ "name": prompt, "arguments": args }),
                )
                .map_err(|e| {
                    rmcp::ServiceError::McpError(rmcp::ErrorData::invalid_params(
                        e.to_string(),
                        None,
                    ))
                })?;
                serde_json::to_value(client.get_prompt(params).await?)
            }
            Operation::ReadResource { uri } => {
                let params: ReadResourceRequestParams =
                    serde_json::from_value(serde_json::json!({ "uri": uri })).map_err(|e| {
                        rmcp::ServiceError::McpError(rmcp::ErrorData::invalid_params(
                            e.to_string(),
                            None,
                        ))
                    })?;
                serde_json::to_value(client.read_resource(params).await?)
            }
            Operation::Complete(params) => serde_json::to_value(client.complete(params).await?),
            Operation::Subscribe { .. } | Operation::Unsubscribe { .. } => {
                return Err(rmcp::ServiceError::McpError(ErrorData::invalid_request(
                    "resource subscriptions need a client's MCP session, and are not relayed for a stdio server",
                    None,
                )));
            }
        })
    };
    let timeout = upstream.def.timeout;
    match tokio::time::timeout(timeout, answer).await {
        Err(_) => Err(UpstreamFailure::Timeout {
            tool: name,
            timeout_ms: timeout.as_millis(),
        }),
        Ok(Err(rmcp::ServiceError::McpError(err))) => {
            Err(bad(format!("answered an MCP error: {}", err.message)))
        }
        Ok(Err(err)) => {
            let error = upstream.def.scrub(&err.to_string());
            tracing::warn!(tool = %name, %error, "MCP upstream request failed");
            Err(UpstreamFailure::Unreachable { tool: name })
        }
        Ok(Ok(value)) => value.map_err(|e| bad(e.to_string())),
    }
}

/// The protocol Leash prefers on sessions no client is behind: 2026-07-28, else the
/// newest with `initialize`. A client's own session uses `initialize`, whose sessions
/// carry the server's requests to the client.
fn preferred() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    }
}

async fn connect(
    def: &McpServerDef,
    http: &reqwest::Client,
    listener: Listener,
    authorization: Option<HeaderValue>,
    lifecycle: ClientLifecycleMode,
) -> Result<RunningService<RoleClient, Listener>, String> {
    if let Some(command) = &def.command {
        return start_process(def, command, listener).await;
    }
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
    tokio::time::timeout(
        def.timeout,
        listener.serve_with_lifecycle(transport, lifecycle),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    // The client's errors may quote the URL or headers: never log their secrets.
    .map_err(|e| def.scrub(&e.to_string()))
}

/// Starts a stdio server's process and opens the MCP session on its stdin and stdout.
/// The process gets `PATH` and the policy's `env`, nothing else of Leash's environment
/// (which holds the admin token and the master key); its stderr is logged; it is killed
/// when the session is dropped, and started again by [`maintain`] when it exits.
async fn start_process(
    def: &McpServerDef,
    command: &StdioCommand,
    listener: Listener,
) -> Result<RunningService<RoleClient, Listener>, String> {
    let mut process = tokio::process::Command::new(&command.program);
    process.args(&command.args).env_clear().kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        process.env("PATH", path);
    }
    process.envs(command.env.iter().map(|(name, value)| (name, value)));
    let (transport, stderr) = TokioChildProcess::builder(process)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| def.scrub(&format!("cannot start {:?}: {e}", command.program)))?;
    // What it writes on stderr is the operator's only view of why it fails: logged,
    // line by line, bounded, with the policy's secrets redacted.
    if let Some(stderr) = stderr {
        let def = def.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = crate::text::shown(&def.scrub(&line), 2_000);
                tracing::info!(server = %def.name, %line, "stdio MCP server");
            }
        });
    }
    tokio::time::timeout(
        def.timeout,
        listener.serve_with_lifecycle(transport, ClientLifecycleMode::Initialize),
    )
    .await
    .map_err(|_| "timed out".to_string())?
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
                relay: None,
            },
            None,
            preferred(),
        )
        .await
        {
            Ok(service) => {
                let client: Client = Arc::new(service);
                *upstream.client.write().await = Some(client.clone());
                let connected = tokio::time::Instant::now();
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
                    let next = tokio::time::Instant::now() + discovery.refresh_every;
                    let mut alive = tokio::time::interval(ALIVE_CHECK);
                    let woke = loop {
                        tokio::select! {
                            _ = changed_rx.recv() => break Wake::Announced,
                            _ = tokio::time::sleep_until(next) => break Wake::Due,
                            // A stdio process that exited, or a dropped connection, is
                            // noticed now, not at the next refresh.
                            _ = alive.tick() => if client.is_closed() { break Wake::Lost },
                        }
                    };
                    match woke {
                        Wake::Lost => {
                            tracing::warn!(server = %name, "MCP upstream lost; reconnecting");
                            break;
                        }
                        // However often it says its lists changed: at most one refresh per
                        // MIN_REFRESH, the notices of the wait folded into it.
                        Wake::Announced => {
                            tokio::time::sleep(MIN_REFRESH).await;
                            while changed_rx.try_recv().is_ok() {}
                        }
                        Wake::Due => {}
                    }
                }
                *upstream.client.write().await = None;
                discovery.catalog.set_server(&name, Surface::default());
                // A server that stayed up a while starts again from the shortest pause;
                // one that dies right after starting backs off like one that never starts.
                if connected.elapsed() >= HEALTHY {
                    backoff = Duration::from_millis(250);
                }
            }
            Err(err) => {
                tracing::warn!(server = %name, error = %err, "cannot connect to MCP upstream; will retry")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lists the server's tools, prompts, resources and resource templates, and publishes
/// them (pinned) in the catalog.
async fn refresh(
    discovery: &Discovery,
    upstream: &Upstream,
    client: &Client,
) -> Result<(), String> {
    let def = &upstream.def;
    let capabilities = client.peer_info().map(|info| info.capabilities.clone());
    let mut surface = Surface::default();
    let tools = within(def, "tools/list", client.list_all_tools()).await?;
    let reserved = def.exposed_name(RESOURCES);
    for tool in tools {
        let Some(name) = exposable(def, &tool.name, "tool", reserved.as_deref()) else {
            continue;
        };
        let schema = Value::Object((*tool.input_schema).clone());
        let description = tool.description.as_deref().unwrap_or("").to_string();
        let (definition, hash) = crate::upstream::pins::definition(&name, &description, &schema);
        let found = Found {
            pin: format!("{}/tool/{}", def.name, tool.name),
            legacy_pin: Some(name.clone()),
            kind: McpKind::Tool(tool.name.to_string()),
            name,
            description,
            schema,
            definition,
            hash,
            listing: None,
        };
        publish(discovery, def, &mut surface, found).await?;
    }
    if capabilities.as_ref().is_some_and(|c| c.prompts.is_some()) {
        let prompts = optional(
            def,
            within(def, "prompts/list", client.list_all_prompts()).await,
        );
        for prompt in prompts {
            let Some(name) = exposable(def, &prompt.name, "prompt", reserved.as_deref()) else {
                continue;
            };
            let mut listing = serde_json::to_value(&prompt).map_err(|e| e.to_string())?;
            listing["name"] = Value::String(name.clone());
            let description = prompt.description.clone().unwrap_or_default();
            let schema = prompt_schema(&listing["arguments"]);
            // Pinned: its name, description and argument list, as listed; the kind in the
            // hashed name (no tool name has a colon), so a tool never matches a prompt's pin.
            let (_, hash) = crate::upstream::pins::definition(
                &format!("prompt:{name}"),
                &description,
                &listing,
            );
            let found = Found {
                pin: format!("{}/prompt/{}", def.name, prompt.name),
                legacy_pin: None,
                kind: McpKind::Prompt(prompt.name.clone()),
                name,
                description,
                schema,
                definition: listing.clone(),
                hash,
                listing: Some(listing),
            };
            publish(discovery, def, &mut surface, found).await?;
        }
    }
    if capabilities.as_ref().is_some_and(|c| c.resources.is_some())
        && let Some(name) = exposable(def, RESOURCES, "resources", None)
    {
        let templates = optional(
            def,
            within(
                def,
                "resources/templates/list",
                client.list_all_resource_templates(),
            )
            .await,
        );
        for template in templates.into_iter().take(MAX_TEMPLATES) {
            let value = serde_json::to_value(&template).map_err(|e| e.to_string())?;
            if template.uri_template.len() > MAX_URI_BYTES || template.name.len() > 256 {
                tracing::warn!(server = %def.name, "skipping a resource template with an overlong name or URI template");
                continue;
            }
            // Pinned by its URI template (what reads are routed by), kind in the name.
            let pin = format!("{}/template/{}", def.name, template.uri_template);
            let description = template.description.clone().unwrap_or_default();
            let (_, hash) =
                crate::upstream::pins::definition(&format!("template:{pin}"), &description, &value);
            let withheld = crate::upstream::pins::withheld(
                discovery.store.as_ref(),
                discovery.review.as_ref(),
                &def.name,
                (&pin, None),
                &value,
                &hash,
            )
            .await
            .map_err(|e| e.to_string())?;
            surface.add_template(pin, value, withheld, hash);
        }
        let resources = optional(
            def,
            within(def, "resources/list", client.list_all_resources()).await,
        );
        for resource in resources.into_iter().take(MAX_LISTED_RESOURCES) {
            surface.add_resource(serde_json::to_value(&resource).map_err(|e| e.to_string())?);
        }
        // Not pinned: it stands for reads by URI, which tokens narrow with `resource($uri)`.
        let schema = serde_json::json!({
            "type": "object",
            "required": ["uri"],
            "additionalProperties": false,
            "properties": { "uri": { "type": "string", "maxLength": MAX_URI_BYTES } }
        });
        let description = format!("the resources of MCP server {:?}", def.name);
        let resources = name_of(def, name, description, schema, McpKind::Resources)?;
        surface.add(
            Arc::new(resources),
            String::new(),
            false,
            String::new(),
            None,
        );
    }
    discovery.catalog.set_server(&def.name, surface);
    Ok(())
}

/// Most resources of one server kept for `resources/list` (the rest are still readable).
const MAX_LISTED_RESOURCES: usize = 10_000;

/// Most resource templates of one server kept (the rest are neither listed nor routed by).
const MAX_TEMPLATES: usize = 1_000;

/// Longest resource URI read through Leash.
pub const MAX_URI_BYTES: usize = 8_192;

/// One list request within the server's timeout.
async fn within<T>(
    def: &McpServerDef,
    what: &str,
    request: impl std::future::Future<Output = Result<T, rmcp::ServiceError>>,
) -> Result<T, String> {
    tokio::time::timeout(def.timeout, request)
        .await
        .map_err(|_| format!("{what} timed out"))?
        .map_err(|e| e.to_string())
}

/// A list the server need not answer (prompts, resources, templates): a failure leaves
/// that list empty this time and keeps the server's tools.
fn optional<T>(def: &McpServerDef, listed: Result<Vec<T>, String>) -> Vec<T> {
    listed.unwrap_or_else(|error| {
        let error = def.scrub(&error);
        tracing::warn!(server = %def.name, %error, "an MCP upstream's list failed; left empty until the next refresh");
        Vec::new()
    })
}

/// The name Leash exposes for the server's `name` (a tool or prompt), if it can; never
/// `reserved` (the server's resources name: a tool called `resources` must not be what
/// a grant of the server's resources allows).
fn exposable(def: &McpServerDef, name: &str, kind: &str, reserved: Option<&str>) -> Option<String> {
    let Some(exposed) = def.exposed_name(name) else {
        tracing::warn!(server = %def.name, name, kind, "skipping a dotted name of a server without a prefix (a wildcard grant would cover it)");
        return None;
    };
    if !is_tool_name(&exposed) || reserved == Some(exposed.as_str()) {
        tracing::warn!(server = %def.name, name, kind, "skipping an upstream name Leash cannot expose (or the name of the server's resources)");
        return None;
    }
    Some(exposed)
}

/// The input schema of a prompt's arguments: each a string, the required ones required,
/// nothing else.
fn prompt_schema(arguments: &Value) -> Value {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for argument in arguments.as_array().into_iter().flatten() {
        let Some(name) = argument["name"].as_str() else {
            continue;
        };
        properties.insert(name.to_string(), serde_json::json!({ "type": "string" }));
        if argument["required"] == Value::Bool(true) {
            required.push(Value::String(name.to_string()));
        }
    }
    serde_json::json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// A discovered name of `def` as the catalog keeps it; an input schema that does not
/// compile is an error naming it.
fn name_of(
    def: &McpServerDef,
    name: String,
    description: String,
    schema: Value,
    kind: McpKind,
) -> Result<ToolDef, String> {
    let validator =
        crate::policy::input_schema::compile(&schema).map_err(|err| format!("{name}: {err}"))?;
    Ok(ToolDef {
        approval: def.approval_of(&name),
        name,
        description,
        upstream: def.url.clone(),
        timeout: def.timeout,
        input_schema: schema,
        validator,
        upstream_headers: Vec::new(),
        mcp: Some(McpTarget {
            server: def.name.clone(),
            kind,
        }),
        upstream_auth: def.upstream_auth.clone(),
    })
}

/// A tool or prompt as discovered, to be pinned and published.
struct Found {
    /// Its pin's key: server, kind and the server's own name, so the same tool keeps its
    /// pin whatever name Leash exposes it under (`prefix` flipped).
    pin: String,
    /// The key its pin had before pins were keyed so (its exposed name), adopted once.
    legacy_pin: Option<String>,
    name: String,
    description: String,
    schema: Value,
    kind: McpKind,
    /// What its pin hashes, and the hash.
    definition: Value,
    hash: String,
    /// What is listed for it besides name, description and schema (prompts).
    listing: Option<Value>,
}

/// Pins one tool or prompt and adds it to `surface` (withheld if its definition changed).
async fn publish(
    discovery: &Discovery,
    def: &McpServerDef,
    surface: &mut Surface,
    found: Found,
) -> Result<(), String> {
    let Found {
        pin,
        legacy_pin,
        name,
        description,
        schema,
        kind,
        definition,
        hash,
        listing,
    } = found;
    let tool = match name_of(def, name, description, schema, kind) {
        Ok(tool) => tool,
        Err(err) => {
            tracing::warn!(server = %def.name, error = %err, "skipping an upstream name with an invalid input schema");
            return Ok(());
        }
    };
    let withheld = crate::upstream::pins::withheld(
        discovery.store.as_ref(),
        discovery.review.as_ref(),
        &def.name,
        (&pin, legacy_pin.as_deref()),
        &definition,
        &hash,
    )
    .await
    .map_err(|e| e.to_string())?;
    surface.add(Arc::new(tool), pin, withheld, hash, listing);
    Ok(())
}
