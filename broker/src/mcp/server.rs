//! Leash as an MCP server (`rmcp`, Streamable HTTP): every request carries its task
//! token, checked by [`super::guard`] and re-read here from the request parts. A client
//! that initializes gets a session, bound to its task, on which upstream servers'
//! requests and notifications are relayed to it ([`crate::upstream::relay`]).
//!
//! `tools/list` lists what the token may call; `tools/call` runs the checked call of
//! [`crate::tasks::calls`] (caveats, schema, budgets, per-call approval). Refusals the agent can
//! act on are `isError` results that say why; an unknown tool is `invalid_params`.
//!
//! Prompts and resources of upstream MCP servers go the same way: `prompts/get` and
//! `resources/read` are checked calls (with `prompt($name)` / `resource($uri)` facts),
//! audited and counted, refused before anything reaches the upstream; the lists show
//! only what the token may use. Their refusals are JSON-RPC errors (these results have
//! no `isError`): the API's code in `data.code`, and in the message.
//!
//! A stateless (2026-07-28) client's call, prompt or read may be answered with the
//! upstream's questions for it (`input_required`); the client answers in another round
//! of the same request, with Leash's sealed state ([`super::rounds`]).

// Logging and `resources/subscribe` are deprecated by the 2026-07-28 revision
// (SEP-2577) but are the 2025-11-25 protocol, which Leash serves as it is.
#![allow(deprecated)]

use std::sync::Arc;

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams,
    CompleteResult, ContentBlock, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    Implementation, InputResponses, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, Prompt,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference, Resource,
    ResourceTemplate, ServerCapabilities, ServerConfig, SetLevelRequestParams,
    SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use super::rounds::{CallId, Rounds};
use super::sessions::{SESSION_HEADER, SessionEnd, SessionOwners};
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::policy::{McpKind, ToolDef};
use crate::tasks::calls::{CallOutcome, Calls, Delivery, TaskContext, Use};
use crate::tokens::verify::{Principal, VerifiedToken};
use crate::upstream::dispatch::Upstream;
use crate::upstream::mcp::{Operation, Reply};
use crate::upstream::relay::{Origin, Relay, relayable};

/// The MCP handler of one client session (or, for a client without a session, of one
/// request).
#[derive(Clone)]
pub struct LeashMcp {
    calls: Arc<Calls>,
    config: Arc<ServeConfig>,
    /// Seals and opens the state of calls in rounds.
    rounds: Arc<Rounds>,
    /// The session's task, fixed by its first request: a session is never used with
    /// another task's token, so what an upstream relays reaches that task's client only.
    task: Arc<std::sync::OnceLock<String>>,
    /// Where upstream messages for this session's client go (set by its first request).
    relay: Arc<std::sync::OnceLock<Relay>>,
    /// Set once the session's client is told of catalog changes.
    watching: Arc<std::sync::OnceLock<()>>,
    /// Forgets the session's owner when rmcp drops the session (the last clone of this).
    end: Arc<SessionEnd>,
}

impl LeashMcp {
    /// The task token of this request. On a session, the token must name the session's
    /// task (the first request's): another task's token is refused.
    fn token(&self, context: &RequestContext<RoleServer>) -> Result<Arc<VerifiedToken>, ErrorData> {
        let token = token_of(context)?;
        if on_session(context)
            && let crate::tokens::verify::Principal::Task { task_id, .. } = &token.principal
            && self.task.get_or_init(|| task_id.clone()) != task_id
        {
            return Err(ErrorData::invalid_request(
                "this MCP session belongs to another task: open a new session with this token",
                None,
            ));
        }
        if let Some(session) = session_of(context) {
            self.end.serves(&session);
        }
        self.watch_catalog(context, &token);
        Ok(token)
    }

    /// On a session, tells its client `notifications/tools/list_changed` (and prompts',
    /// resources') whenever what it may see changes: a server's lists, or a withheld
    /// definition an approver accepted. Stops when the session closes or its task ends.
    fn watch_catalog(&self, context: &RequestContext<RoleServer>, token: &Arc<VerifiedToken>) {
        if !on_session(context) || self.watching.set(()).is_err() {
            return;
        }
        let peer = context.peer.clone();
        let calls = self.calls.clone();
        let token = token.clone();
        let mut changes = calls.catalog.changes();
        changes.mark_unchanged();
        tokio::spawn(async move {
            let Ok(task) = calls.active_task(token).await else {
                return;
            };
            let mut check = tokio::time::interval(WATCH_CHECK);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() || calls.tasks.check_active(&task.runtime).await.is_err() {
                            return;
                        }
                        if peer.notify_tool_list_changed().await.is_err()
                            || peer.notify_prompt_list_changed().await.is_err()
                            || peer.notify_resource_list_changed().await.is_err()
                        {
                            return;
                        }
                    }
                    // A closed session, or an ended task, ends the watch.
                    _ = check.tick() => {
                        if peer.is_transport_closed()
                            || calls.tasks.check_active(&task.runtime).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Where this request's upstream messages are relayed: on a session, to its client
    /// (the request's id and progress token), while the session's task is active;
    /// without one, nowhere.
    async fn via(
        &self,
        context: &RequestContext<RoleServer>,
        token: &Arc<VerifiedToken>,
    ) -> Option<(Relay, Origin)> {
        if !on_session(context) {
            return None;
        }
        let relay = match self.relay.get() {
            Some(relay) => relay.clone(),
            None => {
                let task = self.calls.active_task(token.clone()).await.ok()?;
                let runtime = task.runtime.clone();
                let clock = self.calls.clock.clone();
                let alive: crate::upstream::relay::Alive = Arc::new(move || {
                    runtime.state() == crate::store::TaskState::Active
                        && clock.now_ms() < runtime.expires_at_ms()
                });
                self.relay
                    .get_or_init(|| Relay::new(context.peer.clone(), alive))
                    .clone()
            }
        };
        let origin = Origin {
            request: context.id.clone(),
            progress: context.meta.get_progress_token(),
            cancelled: context.ct.clone(),
        };
        Some((relay, origin))
    }

    /// One checked use (a call, a prompt, a read) by this request's client, with the
    /// `Leash-Approval` it presents. On a session, what the upstream sends during it is
    /// relayed to the client. Without one (2026-07-28), it is a round of the use: the
    /// first, or the one `answers` (`requestState`, `inputResponses`) go on with; an
    /// upstream that asks gives [`CallOutcome::InputRequired`] with Leash's sealed state.
    async fn checked_use(
        &self,
        context: &RequestContext<RoleServer>,
        token: Arc<VerifiedToken>,
        name: &str,
        what: Use,
        args: Value,
        answers: (Option<String>, Option<InputResponses>),
    ) -> Result<CallOutcome, ApiError> {
        let (state, responses) = answers;
        let kind = what.noun();
        let call = call_id(&token, kind, name, &args);
        let round = if on_session(context) {
            if state.is_some() || responses.is_some() {
                return Err(ApiError::BadRequest(
                    "requestState and inputResponses belong to requests without a session (2026-07-28); on a session the upstream asks its client on the session".into(),
                ));
            }
            None
        } else {
            let capabilities = context
                .client_capabilities()
                .map(|c| relayable(&c))
                .unwrap_or_default();
            Some(
                self.rounds
                    .round(&call, capabilities, state.as_deref(), responses)?,
            )
        };
        let presented = approval_of(context);
        // The approval spent on the round before is no approval of this one: the round
        // asks for its own (each round is a call).
        let approval = presented
            .as_deref()
            .filter(|id| round.as_ref().and_then(|r| r.spent_approval.as_deref()) != Some(*id));
        let via = self.via(context, &token).await;
        let delivery = Delivery {
            approval,
            via: via.as_ref().map(|(relay, origin)| (relay, origin)),
            round: round.as_ref(),
        };
        let outcome = self
            .calls
            .call(token.clone(), name, what, args.clone(), delivery)
            .await?;
        let CallOutcome::InputRequired(asks) = outcome else {
            return Ok(outcome);
        };
        // Not asked without a round (calls refuses it): a session's upstream asks there.
        let round = round.ok_or_else(|| {
            ApiError::UpstreamError(format!("{kind} {name:?} asked for input out of turn"))
        })?;
        let sealed = self.rounds.ask(&call, &round, *asks, approval)?;
        Ok(CallOutcome::InputRequired(Box::new(sealed)))
    }

    /// The broker's public URL as this request reached it (links in errors).
    fn base_of(&self, context: &RequestContext<RoleServer>) -> String {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| super::guard::public_url(&self.config, &parts.headers).ok())
            .unwrap_or_default()
    }
}

/// The `/mcp` service: Streamable HTTP with the broker's Host allow-list. A client that
/// initializes (up to 2025-11-25) gets a session (`Mcp-Session-Id`), on which an upstream
/// server's requests and notifications are relayed to it; a 2026-07-28 client is served
/// statelessly. Sessions live in this process (a client must stay on one replica) and
/// close after `SESSION_IDLE` without a request.
pub fn service(
    calls: Arc<Calls>,
    config: &Arc<ServeConfig>,
    owners: Arc<SessionOwners>,
    rounds: Arc<Rounds>,
) -> StreamableHttpService<LeashMcp, LocalSessionManager> {
    let shared = config.clone();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        .with_json_response(true)
        .with_allowed_hosts(super::guard::allowed_hosts(config))
        .with_max_request_body_bytes(config.body_limit);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE);
    StreamableHttpService::new(
        move || {
            Ok(LeashMcp {
                calls: calls.clone(),
                config: shared.clone(),
                rounds: rounds.clone(),
                task: Arc::default(),
                relay: Arc::default(),
                watching: Arc::default(),
                end: Arc::new(SessionEnd::new(owners.clone())),
            })
        },
        Arc::new(sessions),
        config,
    )
}

/// How often a session's catalog watch looks whether its session or task ended.
const WATCH_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a client session of `/mcp` lives without a request.
pub const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether this request belongs to a client session (it names one).
fn on_session(context: &RequestContext<RoleServer>) -> bool {
    session_of(context).is_some()
}

/// The session this request names, if any.
fn session_of(context: &RequestContext<RoleServer>) -> Option<String> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.headers.get(SESSION_HEADER))
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

fn token_of(context: &RequestContext<RoleServer>) -> Result<Arc<VerifiedToken>, ErrorData> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Arc<VerifiedToken>>().cloned())
        .ok_or_else(|| ErrorData::invalid_request("no task token reached the MCP handler", None))
}

fn approval_of(context: &RequestContext<RoleServer>) -> Option<String> {
    let parts = context.extensions.get::<axum::http::request::Parts>()?;
    let value = parts.headers.get(leash_sdk::protocol::APPROVAL_HEADER)?;
    value.to_str().ok().map(|v| v.trim().to_string())
}

/// MCP's URL-mode elicitation error (`-32042`, 2025-11-25): the person behind the client
/// must visit `connect_url` to connect an account before the call can succeed. Stateless
/// `/mcp` cannot know the client's declared capabilities, so every client gets it; one
/// that does not know the code still reads the URL in the message.
fn url_elicitation(err: ApiError) -> ErrorData {
    let message = err.to_string();
    let ApiError::ConnectionRequired {
        provider,
        connect_url,
        ..
    } = err
    else {
        return ErrorData::internal_error(message, None);
    };
    let text = format!("{message} ({connect_url})");
    ErrorData::new(
        rmcp::model::ErrorCode(URL_ELICITATION_REQUIRED),
        text.clone(),
        Some(serde_json::json!({
            "elicitations": [{
                "mode": "url",
                "elicitationId": format!("connect-{provider}-{}", crate::ids::random_hex(8)),
                "url": connect_url,
                "message": text,
            }]
        })),
    )
}

/// JSON-RPC error code of `URLElicitationRequiredError`.
const URL_ELICITATION_REQUIRED: i32 = -32042;

/// A refusal as a tool result the agent can read: the API's code and message.
fn refused(err: &ApiError) -> CallToolResult {
    let (_, code) = err.status_and_code();
    let mut text = format!("{code}: {err}");
    if let ApiError::InvalidArguments { violations, .. } = err {
        for v in violations {
            text.push_str(&format!(
                "\n{} {}",
                v["pointer"].as_str().unwrap_or(""),
                v["message"].as_str().unwrap_or("")
            ));
        }
    }
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// A list result that may be cached by this client only, and is not fresh for later: it
/// is this token's list (its grants, its checks), and the catalog changes.
trait PrivateList {
    fn private(self) -> Self;
}

macro_rules! private_lists {
    ($($list:ty),*) => {$(
        impl PrivateList for $list {
            fn private(self) -> Self {
                self.with_cache_scope(CacheScope::Private).with_ttl_ms(0)
            }
        }
    )*};
}

private_lists!(
    ListToolsResult,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult
);

fn private<T: PrivateList>(list: T) -> T {
    list.private()
}

/// A refusal of a prompt, a resource or a completion as a JSON-RPC error: an unknown
/// name is `not_found` (`-32002` for a resource, `invalid_params` for a prompt, as the
/// specification says), anything else `invalid_request` with the API's code in `data`.
fn refusal(err: ApiError, resource: bool) -> ErrorData {
    let (status, code) = err.status_and_code();
    let message = format!("{code}: {err}");
    let data = Some(serde_json::json!({ "code": code, "status": status.as_u16() }));
    match err {
        ApiError::UnknownTool(_) if resource => ErrorData::resource_not_found(message, data),
        ApiError::UnknownTool(_) | ApiError::BadRequest(_) | ApiError::InvalidArguments { .. } => {
            ErrorData::invalid_params(message, data)
        }
        _ => ErrorData::invalid_request(message, data),
    }
}

/// Which call a round belongs to: the token's task and own id, and what it uses.
fn call_id<'a>(
    token: &'a VerifiedToken,
    kind: &'static str,
    name: &'a str,
    args: &'a Value,
) -> CallId<'a> {
    let task = match &token.principal {
        Principal::Task { task_id, .. } => task_id.as_str(),
        // Not a task token: the call itself is refused.
        _ => "",
    };
    CallId {
        task,
        token: token.own_id(),
        kind,
        name,
        args,
    }
}

/// A use held for a human approval, as a JSON-RPC error that says how to go on.
fn held(what: &str, id: &str) -> ErrorData {
    ErrorData::invalid_request(
        format!(
            "pending_approval: {what} needs a human approval; approval_id {id}. \
             Once approved, repeat this request with the HTTP header Leash-Approval: {id}"
        ),
        Some(serde_json::json!({ "code": "pending_approval", "approval_id": id })),
    )
}

impl LeashMcp {
    /// The upstream's answer to a prompt or a read, as the result type it must be; a
    /// refusal as its JSON-RPC error.
    fn answer_as<T: serde::de::DeserializeOwned>(
        &self,
        outcome: Result<CallOutcome, ApiError>,
        context: &RequestContext<RoleServer>,
        what: &str,
        resource: bool,
    ) -> Result<T, ErrorData> {
        match outcome {
            Ok(CallOutcome::Done(answer)) => answer
                .into_value()
                .ok()
                .and_then(|value| serde_json::from_value(value).ok())
                .ok_or_else(|| {
                    refusal(
                        ApiError::UpstreamError(format!(
                            "{what} was answered with something unreadable"
                        )),
                        resource,
                    )
                }),
            Ok(CallOutcome::PendingApproval(id)) => Err(held(what, &id)),
            Ok(CallOutcome::InputRequired(_)) => Err(refusal(
                ApiError::UpstreamError(format!("{what} asked for input out of turn")),
                resource,
            )),
            Err(err @ ApiError::ConnectionRequired { .. }) => {
                Err(url_elicitation(err.with_base(&self.base_of(context))))
            }
            Err(err) => Err(refusal(err, resource)),
        }
    }

    /// What a list shows of `candidates` (`(name, use, item)`): those the token may use,
    /// as `T`.
    async fn listed<T: serde::de::DeserializeOwned>(
        &self,
        task: &TaskContext,
        candidates: Vec<(String, Use, Value)>,
    ) -> Result<Vec<T>, ErrorData> {
        Ok(self
            .calls
            .listable(task, candidates)
            .await
            .map_err(|e| refusal(e, true))?
            .into_iter()
            .filter_map(|value| serde_json::from_value(value).ok())
            .collect())
    }

    /// The listed resources or templates (`items` of a server) of every server whose
    /// resources the token holds, each to be checked with its `uri_key` as the URI.
    fn resource_candidates(
        &self,
        task: &TaskContext,
        items: impl Fn(&str) -> Vec<Value>,
        uri_key: &str,
    ) -> Vec<(String, Use, Value)> {
        let mut candidates = Vec::new();
        for (tool, server) in self.resources_held(task) {
            for item in items(&server) {
                let uri = item[uri_key].as_str().unwrap_or_default().to_string();
                candidates.push((tool.name.clone(), Use::Resource(uri), item));
            }
        }
        candidates
    }

    /// `resources/subscribe` (or `unsubscribe`) of `uri`, on the client's own upstream
    /// session: `resources/updated` for it then reaches this client only. Subscribing
    /// needs the token's leave to read the URI.
    async fn subscription(
        &self,
        uri: &str,
        subscribe: bool,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let task = self.task(context).await?;
        let (tool, server) = self.resources_for(&task, uri)?;
        if subscribe {
            self.calls
                .may_use(
                    &task,
                    &tool.name,
                    Use::Resource(uri.to_string()),
                    "mcp.subscription",
                )
                .await
                .map_err(|e| refusal(e, true))?;
        }
        let Some(via) = self.via(context, &task.token).await else {
            return Err(refusal(
                ApiError::BadRequest(
                    "resource subscriptions need an MCP session (initialize first)".into(),
                ),
                true,
            ));
        };
        if tool.upstream_auth.is_some() {
            return Err(refusal(
                ApiError::BadRequest(format!(
                    "the resources of {server:?} are read with each person's credential: subscriptions are not relayed for them"
                )),
                true,
            ));
        }
        let operation = if subscribe {
            Operation::Subscribe { uri }
        } else {
            Operation::Unsubscribe { uri }
        };
        self.calls
            .upstreams
            .mcp()
            .request(&server, uri, operation, None, Some((&via.0, &via.1)))
            .await
            .map_err(|failure| refusal(ApiError::UpstreamError(failure.to_string()), true))?;
        // Only URIs the client subscribed to have their updates relayed.
        via.0.subscribe(uri, subscribe);
        Ok(())
    }

    /// The task of this request, or the JSON-RPC error that says why not.
    async fn task(&self, context: &RequestContext<RoleServer>) -> Result<TaskContext, ErrorData> {
        let token = self.token(context)?;
        self.calls
            .active_task(token)
            .await
            .map_err(|e| ErrorData::invalid_request(e.to_string(), None))
    }

    /// The resources names (`NAME.resources`) this token holds, with their servers.
    fn resources_held(&self, task: &TaskContext) -> Vec<(Arc<ToolDef>, String)> {
        task.token
            .tools
            .iter()
            .filter_map(|name| self.calls.catalog.get(name))
            .filter_map(|tool| match &tool.mcp {
                Some(target) if target.kind == McpKind::Resources => {
                    let server = target.server.clone();
                    Some((tool, server))
                }
                _ => None,
            })
            .collect()
    }

    /// Which server's resources a URI is read from: the only one the token holds, or
    /// the only one of those that lists it or has a template it starts like.
    fn resources_for(
        &self,
        task: &TaskContext,
        uri: &str,
    ) -> Result<(Arc<ToolDef>, String), ErrorData> {
        let mut held = self.resources_held(task);
        if held.len() > 1 {
            held.retain(|(_, server)| self.calls.catalog.claims(server, uri));
        }
        match held.len() {
            1 => Ok(held.remove(0)),
            0 => Err(refusal(
                ApiError::UnknownTool(format!(
                    "no resource {uri:?} among the resources this token may read"
                )),
                true,
            )),
            _ => Err(refusal(
                ApiError::BadRequest(format!(
                    "{uri:?} may be a resource of several servers this token reads: start a task for one of them"
                )),
                true,
            )),
        }
    }
}

impl ServerHandler for LeashMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .enable_completions()
                .enable_logging()
                .enable_resources_subscribe()
                .enable_tool_list_changed()
                .enable_prompts_list_changed()
                .enable_resources_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("leash", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let token = self.token(&context)?;
        let task = self
            .calls
            .active_task(token)
            .await
            .map_err(|e| ErrorData::invalid_request(e.to_string(), None))?;
        let tools = self
            .calls
            .callable_tools(&task)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            .into_iter()
            .map(|tool| {
                let schema = match &tool.input_schema {
                    Value::Object(map) => map.clone(),
                    _ => serde_json::Map::new(),
                };
                Tool::new(
                    tool.name.clone(),
                    tool.description.clone(),
                    Arc::new(schema),
                )
            })
            .collect();
        Ok(private(ListToolsResult::with_all_items(tools)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let token = self.token(&context)?;
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let name = request.name.to_string();
        let answers = (request.request_state, request.input_responses);
        // An MCP upstream's answer is already a `CallToolResult`: passed on as it is.
        let is_mcp_tool = self
            .calls
            .catalog
            .get(&name)
            .is_some_and(|t| matches!(Upstream::of(&t), Upstream::Mcp { .. }));
        match self
            .checked_use(&context, token, &name, Use::Tool, args, answers)
            .await
        {
            Ok(CallOutcome::InputRequired(asks)) => Ok((*asks).into()),
            Ok(CallOutcome::Done(answer)) => {
                let Ok(value) = answer.into_value() else {
                    let err = ApiError::UpstreamError(format!(
                        "tool {name:?} answered JSON that could not be read"
                    ));
                    return Ok(refused(&err).into());
                };
                if is_mcp_tool
                    && let Ok(result) = serde_json::from_value::<CallToolResult>(value.clone())
                {
                    return Ok(result.into());
                }
                Ok(CallToolResult::structured(value).into())
            }
            Ok(CallOutcome::PendingApproval(id)) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "pending_approval: tool {name:?} needs a human approval; approval_id {id}. \
                 Once approved, repeat this call with the HTTP header Leash-Approval: {id}"
                ))])
                .into())
            }
            Err(err @ (ApiError::UnknownTool(_) | ApiError::BadRequest(_))) => {
                Err(ErrorData::invalid_params(err.to_string(), None))
            }
            Err(err @ ApiError::ConnectionRequired { .. }) => {
                Err(url_elicitation(err.with_base(&self.base_of(&context))))
            }
            Err(err) => Ok(refused(&err).into()),
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let task = self.task(&context).await?;
        let candidates = task
            .token
            .tools
            .iter()
            .filter_map(|name| self.calls.catalog.prompt(name))
            .map(|(tool, listing)| (tool.name.clone(), Use::Prompt, listing))
            .collect();
        let prompts = self.listed::<Prompt>(&task, candidates).await?;
        Ok(private(ListPromptsResult::with_all_items(prompts)))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let token = self.token(&context)?;
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let answers = (request.request_state, request.input_responses);
        let outcome = self
            .checked_use(&context, token, &request.name, Use::Prompt, args, answers)
            .await;
        if let Ok(CallOutcome::InputRequired(asks)) = outcome {
            return Ok((*asks).into());
        }
        let what = format!("prompt {:?}", request.name);
        self.answer_as::<GetPromptResult>(outcome, &context, &what, false)
            .map(Into::into)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let task = self.task(&context).await?;
        let candidates = self.resource_candidates(
            &task,
            |server| self.calls.catalog.resources_of(server),
            "uri",
        );
        let resources = self.listed::<Resource>(&task, candidates).await?;
        Ok(private(ListResourcesResult::with_all_items(resources)))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let task = self.task(&context).await?;
        let candidates = self.resource_candidates(
            &task,
            |server| self.calls.catalog.templates_of(server),
            "uriTemplate",
        );
        let templates = self.listed::<ResourceTemplate>(&task, candidates).await?;
        Ok(private(ListResourceTemplatesResult::with_all_items(
            templates,
        )))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let task = self.task(&context).await?;
        let (tool, _) = self.resources_for(&task, &request.uri)?;
        let args = serde_json::json!({ "uri": request.uri });
        let answers = (request.request_state, request.input_responses);
        let outcome = self
            .checked_use(
                &context,
                task.token.clone(),
                &tool.name,
                Use::Resource(request.uri.clone()),
                args,
                answers,
            )
            .await;
        if let Ok(CallOutcome::InputRequired(asks)) = outcome {
            return Ok((*asks).into());
        }
        let what = format!("resource {:?}", request.uri);
        self.answer_as::<ReadResourceResult>(outcome, &context, &what, true)
            .map(Into::into)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let task = self.task(&context).await?;
        let mut request = request;
        // The reference in the server's own names, after the token's leave to use it.
        let (tool, label) = match &mut request.r#ref {
            Reference::Prompt(prompt) => {
                let name = prompt.name.clone();
                let tool = self
                    .calls
                    .may_use(&task, &name, Use::Prompt, "mcp.completion")
                    .await
                    .map_err(|e| refusal(e, false))?;
                if let Some(McpKind::Prompt(own)) = tool.mcp.as_ref().map(|t| &t.kind) {
                    prompt.name = own.clone();
                }
                (tool, name)
            }
            Reference::Resource(template) => {
                let uri = template.uri.clone();
                let (tool, server) = self.resources_for(&task, &uri)?;
                // Only a template the server listed and that is not withheld.
                let listed = self
                    .calls
                    .catalog
                    .templates_of(&server)
                    .iter()
                    .any(|t| t["uriTemplate"].as_str() == Some(uri.as_str()));
                if !listed {
                    return Err(refusal(
                        ApiError::UnknownTool(format!("no resource template {uri:?}")),
                        true,
                    ));
                }
                let tool = self
                    .calls
                    .may_use(
                        &task,
                        &tool.name,
                        Use::Resource(uri.clone()),
                        "mcp.completion",
                    )
                    .await
                    .map_err(|e| refusal(e, true))?;
                (tool, uri)
            }
            _ => {
                return Err(ErrorData::invalid_params(
                    "a completion refers to a prompt or a resource template",
                    None,
                ));
            }
        };
        // A server reached with each person's token answers completions on that
        // person's session only, which a completion does not open: no suggestions.
        let Some(target) = tool.mcp.as_ref().filter(|_| tool.upstream_auth.is_none()) else {
            return Ok(CompleteResult::default());
        };
        let via = self.via(&context, &task.token).await;
        let answer = self
            .calls
            .upstreams
            .mcp()
            .request(
                &target.server,
                &label,
                Operation::Complete(request),
                None,
                via.as_ref().map(|(relay, origin)| (relay, origin)),
            )
            .await
            .map_err(|failure| refusal(ApiError::UpstreamError(failure.to_string()), false))?;
        let unreadable = || {
            refusal(
                ApiError::UpstreamError(format!("the completion for {label:?} was unreadable")),
                false,
            )
        };
        // A completion cannot ask for input: only calls, prompts and reads can.
        let Reply::Done(answer) = answer else {
            return Err(unreadable());
        };
        serde_json::from_value(answer).map_err(|_| unreadable())
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let task = self.task(&context).await?;
        // Without a session there is nothing to send log messages on: accepted, and moot.
        if let Some((relay, _)) = self.via(&context, &task.token).await {
            self.calls
                .upstreams
                .mcp()
                .set_level(&relay, request.level)
                .await;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscription(&request.uri, true, &context).await
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscription(&request.uri, false, &context).await
    }
}
