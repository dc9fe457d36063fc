//! One call for every kind of upstream: a tool is either an HTTP endpoint or a tool on
//! an upstream MCP server, and this is the only place that tells them apart.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::policy::{McpKind, ToolDef};
use crate::upstream::client::{Answer, Proxy, UpstreamFailure};
use crate::upstream::mcp::{Discovery, InputRound, McpServers, Operation, Reply};
use crate::upstream::relay::{Origin, Relay};

/// Where a tool's calls go.
pub enum Upstream<'a> {
    /// An HTTP tool of the policy: its URL, headers and timeout.
    Http(&'a ToolDef),
    /// A name discovered on `[mcp_servers.server]`: a tool, a prompt, its resources.
    Mcp {
        /// The `[mcp_servers]` entry.
        server: &'a str,
        /// What the name stands for there.
        kind: &'a McpKind,
    },
}

impl<'a> Upstream<'a> {
    /// Where `tool`'s calls go.
    pub fn of(tool: &'a ToolDef) -> Self {
        match &tool.mcp {
            Some(target) => Upstream::Mcp {
                server: &target.server,
                kind: &target.kind,
            },
            None => Upstream::Http(tool),
        }
    }

    /// Whether calls carry a per-call `Leash-Capability` header: HTTP tools verify it;
    /// MCP servers are reached over one shared session that carries the server's own
    /// configured credentials.
    pub fn carries_capability(&self) -> bool {
        matches!(self, Upstream::Http(_))
    }
}

/// Every upstream: the hardened HTTP client for HTTP tools and the connections to
/// upstream MCP servers (which use that same client).
pub struct Upstreams {
    http: Proxy,
    mcp: Arc<McpServers>,
}

impl Upstreams {
    /// The upstreams reached through `http` (the broker's one outbound client).
    pub fn new(http: Proxy, mcp: Arc<McpServers>) -> Self {
        Upstreams { http, mcp }
    }

    /// Connects to the MCP servers in the background and keeps the catalog current.
    pub fn start(&self, discovery: &Discovery) {
        self.mcp.start(discovery);
    }

    /// The MCP servers (for requests that are not checked calls: completions).
    pub fn mcp(&self) -> &McpServers {
        &self.mcp
    }

    /// Forwards one checked call to wherever `tool` lives; `capability` is sent as
    /// `Leash-Capability` to HTTP tools ([`Upstream::carries_capability`]), and
    /// `authorization` (the provider token of `upstream_auth`) as `Authorization`. With
    /// `via` (an MCP client's session and its request), an MCP server's messages during
    /// the call are relayed to that client.
    pub async fn call(
        &self,
        tool: &ToolDef,
        args: &Value,
        capability: Option<String>,
        authorization: Option<HeaderValue>,
        via: Option<(&Relay, &Origin)>,
        round: Option<&InputRound>,
    ) -> Result<Answer, UpstreamFailure> {
        match Upstream::of(tool) {
            Upstream::Mcp { server, kind } => {
                let operation = match kind {
                    McpKind::Tool(tool) => Operation::CallTool { tool, args, round },
                    McpKind::Prompt(prompt) => Operation::GetPrompt {
                        prompt,
                        args,
                        round,
                    },
                    McpKind::Resources => Operation::ReadResource {
                        uri: args["uri"].as_str().unwrap_or_default(),
                        round,
                    },
                };
                let reply = self
                    .mcp
                    .request(server, &tool.name, operation, authorization, via)
                    .await?;
                Ok(match reply {
                    Reply::Done(value) => Answer::Parsed(value),
                    Reply::Asks(asks) => Answer::Asks(asks),
                })
            }
            Upstream::Http(tool) => {
                let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(2);
                if let Some(capability) = capability
                    && let Ok(value) = HeaderValue::try_from(capability)
                {
                    headers.push((
                        HeaderName::from_static(leash_sdk::protocol::CAPABILITY_HEADER),
                        value,
                    ));
                }
                if let Some(authorization) = authorization {
                    headers.push((axum::http::header::AUTHORIZATION, authorization));
                }
                self.http.forward(tool, args, &headers).await
            }
        }
    }
}
