//! Leash as an MCP server (`rmcp`, Streamable HTTP, stateless): every request carries
//! its task token, checked by [`super::guard`] and re-read here from the request parts.
//!
//! `tools/list` lists what the token may call; `tools/call` runs the checked call of
//! [`crate::tasks::calls`] (caveats, schema, budgets, per-call approval). Refusals the agent can
//! act on are `isError` results that say why; an unknown tool is `invalid_params`.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::tasks::calls::{CallOutcome, Calls};
use crate::tokens::verify::VerifiedToken;
use crate::upstream::dispatch::Upstream;

/// The MCP handler of one request.
#[derive(Clone)]
pub struct LeashMcp {
    calls: Arc<Calls>,
    config: Arc<ServeConfig>,
}

impl LeashMcp {
    /// The broker's public URL as this request reached it (links in errors).
    fn base_of(&self, context: &RequestContext<RoleServer>) -> String {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| super::guard::public_url(&self.config, &parts.headers).ok())
            .unwrap_or_default()
    }
}

/// The `/mcp` service: stateless Streamable HTTP, with the broker's Host allow-list.
pub fn service(
    calls: Arc<Calls>,
    config: &Arc<ServeConfig>,
) -> StreamableHttpService<LeashMcp, NeverSessionManager> {
    let shared = config.clone();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(super::guard::allowed_hosts(config))
        .with_max_request_body_bytes(config.body_limit);
    StreamableHttpService::new(
        move || {
            Ok(LeashMcp {
                calls: calls.clone(),
                config: shared.clone(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    )
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

impl ServerHandler for LeashMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("leash", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let token = token_of(&context)?;
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
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let token = token_of(&context)?;
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let approval = approval_of(&context);
        let name = request.name.to_string();
        // An MCP upstream's answer is already a `CallToolResult`: passed on as it is.
        let is_mcp_tool = self
            .calls
            .catalog
            .get(&name)
            .is_some_and(|t| matches!(Upstream::of(&t), Upstream::Mcp { .. }));
        match self
            .calls
            .call_tool(token, &name, args, approval.as_deref())
            .await
        {
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
}
