//! MCP JSON-RPC decoding, as the gateway (`broker/src/mcp`) does it.
//!
//! Input: optional header lines (`Name: value`) and an empty line, then a body; an input
//! starting with `{`, `[` or whitespace is all body. The body is decoded
//!
//! - as `rmcp::model::ClientJsonRpcMessage` (what agents send to `/mcp`), and for
//!   `tools/call` the gateway's own steps: tool-name shape, arguments object, depth,
//!   argument facts;
//! - as `ServerJsonRpcMessage` (what upstream MCP servers answer), and for `tools/list`
//!   results the discovery steps of `upstream::mcp::refresh`: `NAME.tool` name check,
//!   schema compilation, definition pin hash; and as the `CallToolResult` the gateway
//!   reads back from an upstream;
//! - through rmcp's `StreamableHttpService` configured as `mcp::server::service` does
//!   (stateless, JSON responses, the broker's host allow-list and body limit), so the
//!   HTTP checks run too: Accept/Content-Type, protocol version, the 2026-07-28
//!   `Mcp-Method`/`Mcp-Name` agreement with the body, batches. The handler stands in
//!   for `LeashMcp` (which needs a running broker) with the same pure steps.
//!
//! `Host`/`Origin` headers also go through the guard's `host_only`.

#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use leash_broker::ids::is_tool_name;
use leash_broker::mcp::guard;
use leash_broker::upstream::pins;
use leash_sdk::facts::{MAX_DEPTH, arg_facts, depth};
use libfuzzer_sys::fuzz_target;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientJsonRpcMessage, ClientRequest,
    ContentBlock, Implementation, JsonRpcMessage, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, ServerJsonRpcMessage, ServerResult, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

/// The gateway's checks of one `tools/call` that need no broker state
/// (`mcp::server::LeashMcp::call_tool` → `calls::checked_call`).
fn gateway_call(request: &CallToolRequestParams) -> Result<usize, ErrorData> {
    let name = request.name.to_string();
    if !is_tool_name(&name) {
        return Err(ErrorData::invalid_params("unknown tool", None));
    }
    let args = Value::Object(request.arguments.clone().unwrap_or_default());
    if depth(&args) > MAX_DEPTH {
        return Err(ErrorData::invalid_params("too deep", None));
    }
    Ok(arg_facts(args.as_object().expect("an object")).len())
}

/// Stands in for `LeashMcp`.
#[derive(Clone)]
struct Gateway;

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("leash", "fuzz"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = json!({"type": "object", "properties": {"path": {"type": "string"}}});
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "notes.read",
            "Read one note",
            Arc::new(schema.as_object().unwrap().clone()),
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let facts = gateway_call(&request)?;
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("{facts} facts"))]).into())
    }
}

struct Http {
    runtime: tokio::runtime::Runtime,
    service: StreamableHttpService<Gateway, NeverSessionManager>,
}

static HTTP: LazyLock<Http> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(["localhost", "127.0.0.1", "::1"])
        .with_max_request_body_bytes(1024 * 1024);
    let service = StreamableHttpService::new(
        || Ok(Gateway),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Http { runtime, service }
});

/// Splits the input into header lines and a body.
fn split(data: &[u8]) -> (Vec<(&[u8], &[u8])>, &[u8]) {
    if data.is_empty() || matches!(data[0], b'{' | b'[' | b' ' | b'\t' | b'\r' | b'\n') {
        return (Vec::new(), data);
    }
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let headers = head
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            Some((&line[..colon], value))
        })
        .collect();
    (headers, body)
}

fn decode_client(body: &[u8]) {
    let Ok(message) = serde_json::from_slice::<ClientJsonRpcMessage>(body) else {
        return;
    };
    let _ = serde_json::to_vec(&message);
    if let JsonRpcMessage::Request(request) = &message
        && let ClientRequest::CallToolRequest(call) = &request.request
    {
        let _ = gateway_call(&call.params);
    }
}

fn decode_server(body: &[u8]) {
    if let Ok(message) = serde_json::from_slice::<ServerJsonRpcMessage>(body) {
        let _ = serde_json::to_vec(&message);
        if let JsonRpcMessage::Response(response) = &message
            && let ServerResult::ListToolsResult(list) = &response.result
        {
            for tool in &list.tools {
                // mcp::upstream::refresh
                let name = format!("everything.{}", tool.name);
                if !is_tool_name(&name) {
                    continue;
                }
                let schema = Value::Object((*tool.input_schema).clone());
                let description = tool.description.as_deref().unwrap_or("");
                if leash_broker::policy::input_schema::compile(&schema).is_err() {
                    continue;
                }
                let (definition, hash) = pins::definition(&name, description, &schema);
                let again = pins::definition(&name, description, &schema);
                assert_eq!((definition, hash), again, "a pin hash is not stable");
            }
        }
    }
    // mcp::server::LeashMcp::call_tool reads an upstream MCP tool's answer back.
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let _ = serde_json::from_value::<CallToolResult>(value);
    }
}

fn http(headers: &[(&[u8], &[u8])], body: &[u8]) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/mcp")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let map = request.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    for (name, value) in [
        (header::HOST, "localhost:7070"),
        (header::ACCEPT, "application/json, text/event-stream"),
        (header::CONTENT_TYPE, "application/json"),
    ] {
        if !map.contains_key(&name) {
            map.insert(name, HeaderValue::from_static(value));
        }
    }
    for name in [header::HOST, header::ORIGIN] {
        for value in map.get_all(&name) {
            if let Ok(value) = value.to_str() {
                let host = guard::host_only(value);
                assert_eq!(host, host.to_ascii_lowercase());
            }
        }
    }
    let state = &*HTTP;
    state.runtime.block_on(async {
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let response = state.service.handle(request).await;
            let status = response.status();
            let bytes = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await;
            (status, bytes.map(|b| b.len()))
        })
        .await;
        if answer.is_err() {
            panic!("the MCP service did not answer within 10 s");
        }
    });
}

fuzz_target!(
    init: {
        leash_fuzz::write_seeds_if_asked(seeds);
        LazyLock::force(&HTTP);
    },
    |data: &[u8]| {
        let (headers, body) = split(data);
        decode_client(body);
        decode_server(body);
        http(&headers, body);
    }
);

fn seeds() -> Vec<Vec<u8>> {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"fuzz","version":"1"}}}"#;
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notes.read","arguments":{"path":"/notes/a-1","n":1.5}}}"#;
    let call_meta = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notes.read","arguments":{"path":"/notes/a"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let list = r#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#;
    let discover = r#"{"jsonrpc":"2.0","id":4,"method":"server/discover","params":{}}"#;
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let batch = format!("[{list},{note}]");
    let tools = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","description":"Echo","inputSchema":{"type":"object","properties":{"text":{"type":"string","x-mcp-header":"Text"}}}},{"name":"bad name","inputSchema":{"type":"object"}}]}}"#;
    let result = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"hi"}],"isError":false,"structuredContent":{"a":1}}}"#;
    let error = r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"bad"}}"#;
    let with_headers = |headers: &str, body: &str| format!("{headers}\n\n{body}");
    [
        init.to_string(),
        call.to_string(),
        list.to_string(),
        note.to_string(),
        batch,
        tools.to_string(),
        result.to_string(),
        error.to_string(),
        with_headers(
            "MCP-Protocol-Version: 2026-07-28\nMcp-Method: tools/call\nMcp-Name: notes.read",
            call_meta,
        ),
        with_headers(
            "MCP-Protocol-Version: 2026-07-28\nMcp-Method: tools/call\nMcp-Name: =?base64?bm90ZXMucmVhZA==?=",
            call_meta,
        ),
        with_headers(
            "MCP-Protocol-Version: 2026-07-28\nMcp-Method: tools/list\nMcp-Name: other",
            call_meta,
        ),
        with_headers(
            "MCP-Protocol-Version: 2026-07-28\nMcp-Method: server/discover",
            discover,
        ),
        with_headers("Mcp-Method: initialize\nMcp-Method: tools/list", init),
        with_headers("Host: [::1]:7070\nOrigin: http://evil.example", list),
        with_headers("Accept: application/json\nContent-Type: text/plain", list),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}
