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
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest,
    CompleteRequest, CompleteRequestParams, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, GetPromptRequest, GetPromptRequestParams, Implementation,
    InputRequest, InputRequiredResult, InputResponses, ListRootsResult,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProtocolVersion,
    ReadResourceRequest, ReadResourceRequestParams, RequestMetaObject,
    ResourceUpdatedNotificationParam, ServerResult, SetLevelRequest, SetLevelRequestParams,
    SubscribeRequest, SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequest,
    UnsubscribeRequestParams,
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
        /// A stateless client's part in it, if it can be asked for input.
        round: Option<&'a InputRound>,
    },
    /// `prompts/get`.
    GetPrompt {
        /// The prompt's name on the server.
        prompt: &'a str,
        /// Its arguments (strings).
        args: &'a Value,
        /// A stateless client's part in it, if it can be asked for input.
        round: Option<&'a InputRound>,
    },
    /// `resources/read`.
    ReadResource {
        /// The URI, as the client asked for it.
        uri: &'a str,
        /// A stateless client's part in it, if it can be asked for input.
        round: Option<&'a InputRound>,
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

/// A stateless (2026-07-28) client's part in a call that may ask it for input: what it
/// can answer (its sampling, elicitation and roots capabilities, nothing Leash adds), and
/// its answers to the upstream's questions of the round before, with the upstream's own
/// `requestState` of that round (unsealed by [`crate::mcp::rounds`]).
#[derive(Debug, Clone, Default)]
pub struct InputRound {
    /// Which round of the call this is (the first is 1).
    pub number: u32,
    /// What the client can be asked.
    pub capabilities: ClientCapabilities,
    /// The client's answers, keyed as the upstream asked.
    pub responses: Option<InputResponses>,
    /// The upstream's `requestState` of the round before, as it gave it.
    pub state: Option<String>,
    /// The `Leash-Approval` spent on the round before (under `per_call`): presented
    /// again, it is not an approval of this round, which asks for its own.
    pub spent_approval: Option<String>,
}

impl InputRound {
    /// The client's answers and the upstream's state, as request parameters.
    fn add_to(round: Option<&InputRound>, params: &mut Value) {
        if let (Some(round), Some(params)) = (round, params.as_object_mut()) {
            if let Some(responses) = &round.responses {
                params.insert("inputResponses".into(), serde_json::json!(responses));
            }
            if let Some(state) = &round.state {
                params.insert("requestState".into(), Value::String(state.clone()));
            }
        }
    }
}

/// What an MCP upstream answered.
#[derive(Debug)]
pub enum Reply {
    /// Its result, as JSON.
    Done(Value),
    /// It needs its client's input first (2026-07-28): these questions, checked to be
    /// ones Leash lets an upstream ask, and its state for the next round.
    Asks(Box<InputRequiredResult>),
}

/// Most questions one round may ask, and the longest `requestState` an upstream may give.
const MAX_INPUT_REQUESTS: usize = 16;
const MAX_REQUEST_STATE: usize = 64 * 1024;

impl Operation<'_> {
    /// The capabilities the request declares for its client: on a call a stateless
    /// client makes, the client's own; else rmcp's (none).
    fn client_capabilities(&self) -> Option<ClientCapabilities> {
        match self {
            Operation::CallTool { round, .. }
            | Operation::GetPrompt { round, .. }
            | Operation::ReadResource { round, .. } => round.map(|r| r.capabilities.clone()),
            _ => None,
        }
    }

    /// The request as rmcp sends it.
    fn request(self) -> Result<ClientRequest, serde_json::Error> {
        Ok(match self {
            Operation::CallTool { tool, args, round } => {
                let mut params = serde_json::json!({
                    "name": tool,
                    "arguments": args.as_object().cloned().unwrap_or_default(),
                });
                InputRound::add_to(round, &mut params);
                ClientRequest::CallToolRequest(CallToolRequest::new(serde_json::from_value::<
                    CallToolRequestParams,
                >(params)?))
            }
            Operation::GetPrompt {
                prompt,
                args,
                round,
            } => {
                let mut params = serde_json::json!({ "name": prompt, "arguments": args });
                InputRound::add_to(round, &mut params);
                ClientRequest::GetPromptRequest(GetPromptRequest::new(serde_json::from_value::<
                    GetPromptRequestParams,
                >(params)?))
            }
            Operation::ReadResource { uri, round } => {
                let mut params = serde_json::json!({ "uri": uri });
                InputRound::add_to(round, &mut params);
                ClientRequest::ReadResourceRequest(ReadResourceRequest::new(
                    serde_json::from_value::<ReadResourceRequestParams>(params)?,
                ))
            }
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
    /// upstream's result as JSON, or its questions for a stateless client. With
    /// `authorization` (the provider token of `upstream_auth`), on a session opened with
    /// that credential; with `via`, on the client session's own; else on the server's
    /// shared session.
    pub async fn request(
        &self,
        server: &str,
        label: &str,
        operation: Operation<'_>,
        authorization: Option<HeaderValue>,
        via: Option<(&Relay, &Origin)>,
    ) -> Result<Reply, UpstreamFailure> {
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
        let secret = secret_of(Some(&authorization));
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
                .map_err(|e| redacted(&secret, e))
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
        let secret = secret_of(authorization.as_ref());
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
            let error = redacted(&secret, e);
            tracing::warn!(server = %name, %error, "cannot open an MCP session for a client session");
            UpstreamFailure::Unreachable { tool: name.clone() }
        })?;
        if let Some(level) = relay.level() {
            send_level(&client, level, upstream.def.timeout).await;
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
            send_level(&client, level, timeout).await;
        }
    }
}

/// Sets the logging level on one upstream session, waiting at most `timeout` (a server
/// that does not answer only misses the level).
async fn send_level(client: &Client, level: rmcp::model::LoggingLevel, timeout: Duration) {
    let request =
        ClientRequest::SetLevelRequest(SetLevelRequest::new(SetLevelRequestParams::new(level)));
    let _ = tokio::time::timeout(timeout, client.send_request(request)).await;
}

/// The secret part of an `Authorization` value (its last word), to be kept out of errors.
fn secret_of(authorization: Option<&HeaderValue>) -> String {
    authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_whitespace().last())
        .unwrap_or_default()
        .to_string()
}

/// `text` without `secret` (one of at least 4 characters: a shorter one would redact
/// ordinary words and hide nothing).
fn redacted(secret: &str, text: String) -> String {
    if secret.len() >= 4 {
        text.replace(secret, "[redacted]")
    } else {
        text
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
) -> Result<Reply, UpstreamFailure> {
    let bad = |problem: String| UpstreamFailure::BadAnswer {
        tool: name.clone(),
        problem,
    };
    let capabilities = operation.client_capabilities();
    let request = operation.request().map_err(|e| bad(e.to_string()))?;
    let handle = client
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await
        .map_err(|err| unreachable(upstream, &name, &err))?;
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
        pending: Some(pending),
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
    reply_of(upstream, name, timeout, answer, capabilities.as_ref())
}

/// A relayed request in flight: removed from the pending map (if any) when dropped, and
/// cancelled upstream if it was not answered.
struct InFlight<'a> {
    pending: Option<&'a std::sync::Mutex<HashMap<rmcp::model::RequestId, Pending>>>,
    id: rmcp::model::RequestId,
    client: Option<Client>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(Ok(mut pending)) = self.pending.map(|p| p.lock()) {
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

/// One request on a session no client is behind (the server's shared one, or the one of
/// a call's credential). A stateless client's capabilities go with it, so the upstream
/// may ask that client for input ([`Reply::Asks`]); it is cancelled upstream if Leash
/// stops waiting.
async fn send(
    upstream: &Upstream,
    client: &Client,
    name: String,
    operation: Operation<'_>,
) -> Result<Reply, UpstreamFailure> {
    if matches!(
        operation,
        Operation::Subscribe { .. } | Operation::Unsubscribe { .. }
    ) {
        return Err(UpstreamFailure::BadAnswer {
            tool: name,
            problem: "resource subscriptions need a client's MCP session, and are not relayed for a stateless client or a stdio server".into(),
        });
    }
    let mut options = PeerRequestOptions::no_options();
    let capabilities = operation.client_capabilities();
    if let Some(capabilities) = capabilities.clone() {
        let mut meta = RequestMetaObject::new();
        meta.set_client_capabilities(capabilities);
        options.meta = Some(meta);
    }
    let request = operation
        .request()
        .map_err(|e| UpstreamFailure::BadAnswer {
            tool: name.clone(),
            problem: e.to_string(),
        })?;
    let timeout = upstream.def.timeout;
    let answer = tokio::time::timeout(timeout, async {
        let handle = client.send_request_with_option(request, options).await?;
        let mut guard = InFlight {
            pending: None,
            id: handle.id.clone(),
            client: Some(client.clone()),
        };
        let answer = handle.await_response().await;
        guard.client = None;
        answer
    })
    .await;
    reply_of(upstream, name, timeout, answer, capabilities.as_ref())
}

/// The upstream's answer to one request (within `timeout`, or not), as Leash passes it on.
fn reply_of(
    upstream: &Upstream,
    name: String,
    timeout: Duration,
    answer: Result<Result<ServerResult, rmcp::ServiceError>, tokio::time::error::Elapsed>,
    client: Option<&ClientCapabilities>,
) -> Result<Reply, UpstreamFailure> {
    let bad = |problem: String| UpstreamFailure::BadAnswer {
        tool: name.clone(),
        problem,
    };
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
        Ok(Err(err)) => Err(unreachable(upstream, &name, &err)),
        Ok(Ok(ServerResult::InputRequiredResult(asks))) => {
            asked_fairly(&asks, client).map_err(bad)?;
            Ok(Reply::Asks(Box::new(asks)))
        }
        Ok(Ok(result)) => serde_json::to_value(result)
            .map(Reply::Done)
            .map_err(|e| bad(e.to_string())),
    }
}

/// A request that did not reach the upstream or got no answer, logged without secrets.
fn unreachable(upstream: &Upstream, name: &str, err: &rmcp::ServiceError) -> UpstreamFailure {
    let error = upstream.def.scrub(&err.to_string());
    tracing::warn!(tool = %name, %error, "MCP upstream request failed");
    UpstreamFailure::Unreachable {
        tool: name.to_string(),
    }
}

/// Whether an upstream's questions (2026-07-28 `inputRequests`) may go to its client, as
/// on a session ([`RelayTo::create_elicitation`]): a form never asks for a secret, a
/// URL-mode elicitation sends the person to `https`, and a round asks at least one and a
/// bounded number of questions with a bounded state, each of a kind (sampling,
/// elicitation, roots) the client in rounds declared in `client`. Why not, if not.
fn asked_fairly(
    asks: &InputRequiredResult,
    client: Option<&ClientCapabilities>,
) -> Result<(), String> {
    let questions = asks.input_requests.as_ref().map_or(0, |q| q.len());
    // A round that asks nothing only makes the client call again (each round counted).
    if questions == 0 && client.is_some() {
        return Err("asked its client for input without asking anything".into());
    }
    if questions > MAX_INPUT_REQUESTS {
        return Err(format!(
            "asked {questions} questions in one round (Leash relays at most {MAX_INPUT_REQUESTS})"
        ));
    }
    if asks
        .request_state
        .as_ref()
        .is_some_and(|s| s.len() > MAX_REQUEST_STATE)
    {
        return Err(format!(
            "gave a requestState longer than {MAX_REQUEST_STATE} bytes"
        ));
    }
    for (key, request) in asks.input_requests.iter().flatten() {
        // A client in rounds is asked only what it said it can answer. (Without a
        // round there is no client to ask: the caller refuses the whole answer.)
        if let Some(client) = client {
            let (what, declared) = match request {
                InputRequest::CreateMessage(_) => ("sampling", client.sampling.is_some()),
                InputRequest::Elicitation(_) => ("elicitation", client.elicitation.is_some()),
                InputRequest::ListRoots(_) => ("roots", client.roots.is_some()),
                _ => ("a kind of request Leash does not know", false),
            };
            if !declared {
                return Err(format!(
                    "asked question {key:?} by {what}, which its client did not declare it can answer"
                ));
            }
        }
        if let InputRequest::Elicitation(elicit) = request {
            if !crate::upstream::relay::url_allowed(&elicit.params) {
                return Err(format!(
                    "asked question {key:?} by a URL elicitation that does not send the person to an https URL; Leash refused it"
                ));
            }
            if let Some(field) = crate::upstream::relay::secret_field(&elicit.params) {
                tracing::warn!(
                    field,
                    "refused an upstream's input request that asks for a secret-looking field"
                );
                return Err(format!(
                    "asked question {key:?} by a form whose field {field:?} looks like a secret; servers must not ask for secrets in a form, and Leash refused it"
                ));
            }
        }
    }
    Ok(())
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
    // Changed definitions are put before an approver only once they are withheld.
    let mut reviews = Vec::new();
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
        publish(discovery, def, &mut surface, found, &mut reviews).await?;
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
            publish(discovery, def, &mut surface, found, &mut reviews).await?;
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
            let (withheld, review) = crate::upstream::pins::judge(
                discovery.store.as_ref(),
                &def.name,
                (&pin, None),
                &value,
                &hash,
            )
            .await
            .map_err(|e| e.to_string())?;
            reviews.extend(review);
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
    for review in reviews {
        crate::upstream::pins::file(discovery.store.as_ref(), discovery.review.as_ref(), review)
            .await
            .map_err(|e| e.to_string())?;
    }
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
    reviews: &mut Vec<crate::upstream::pins::Review>,
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
    let (withheld, review) = crate::upstream::pins::judge(
        discovery.store.as_ref(),
        &def.name,
        (&pin, legacy_pin.as_deref()),
        &definition,
        &hash,
    )
    .await
    .map_err(|e| e.to_string())?;
    reviews.extend(review);
    surface.add(Arc::new(tool), pin, withheld, hash, listing);
    Ok(())
}

#[cfg(test)]
mod tests {
    use rmcp::model::{ClientCapabilities, InputRequiredResult};
    use serde_json::json;

    use super::asked_fairly;

    fn asking(questions: serde_json::Value) -> InputRequiredResult {
        serde_json::from_value(json!({
            "resultType": "input_required",
            "inputRequests": questions,
            "requestState": "s"
        }))
        .unwrap()
    }

    fn roots() -> serde_json::Value {
        json!({"where": {"method": "roots/list", "params": {}}})
    }

    #[test]
    fn a_client_in_rounds_is_asked_only_what_it_declared() {
        let nothing = ClientCapabilities::default();
        let with_roots: ClientCapabilities = serde_json::from_value(json!({"roots": {}})).unwrap();
        let refused = asked_fairly(&asking(roots()), Some(&nothing)).unwrap_err();
        assert!(refused.contains("roots"), "{refused}");
        assert!(asked_fairly(&asking(roots()), Some(&with_roots)).is_ok());
        let sampling = json!({"m": {"method": "sampling/createMessage", "params": {
            "messages": [], "maxTokens": 1}}});
        let refused = asked_fairly(&asking(sampling), Some(&with_roots)).unwrap_err();
        assert!(refused.contains("sampling"), "{refused}");
    }

    #[test]
    fn a_round_that_asks_nothing_is_refused() {
        let with_roots: ClientCapabilities = serde_json::from_value(json!({"roots": {}})).unwrap();
        let refused = asked_fairly(&asking(json!({})), Some(&with_roots)).unwrap_err();
        assert!(refused.contains("without asking anything"), "{refused}");
    }
}
