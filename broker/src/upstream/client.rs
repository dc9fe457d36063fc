//! The only code that talks to upstream tools: POST the arguments as JSON to the
//! configured URL with the configured headers, and read back a bounded JSON answer.
//!
//! Its client is **the one upstream client** of the broker, hardened once and shared by
//! HTTP tools, MCP upstreams ([`crate::upstream::mcp`] hands it to rmcp) and the webhook:
//! `https://` with rustls (the platform's roots plus `LEASH_CA_BUNDLE`), connections
//! pooled and reused, a connect timeout, redirects never followed and environment
//! proxies ignored — an upstream must not be able to send a call (and its injected
//! credentials) somewhere else, and neither must a stray `HTTP_PROXY`.

use std::time::Duration;

use axum::http::header;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::policy::ToolDef;

/// Largest upstream answer accepted.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// An upstream's answer to one call, well-formed JSON either way. An HTTP tool's answer is
/// kept as the text it sent: the broker only wraps it in `{"result": …}`, so building a
/// tree of it and writing that out again would be work for nothing. An MCP server's
/// `CallToolResult` arrives parsed.
#[derive(Debug)]
pub enum Answer {
    /// The upstream's JSON text, checked to be one well-formed value.
    Raw(Box<RawValue>),
    /// A parsed answer.
    Parsed(Value),
}

impl Answer {
    /// The answer as a tree, for callers that look inside it (the MCP gateway). Fails
    /// only for JSON nested deeper than the parser's limit (128).
    pub fn into_value(self) -> Result<Value, serde_json::Error> {
        match self {
            Answer::Raw(raw) => serde_json::from_str(raw.get()),
            Answer::Parsed(value) => Ok(value),
        }
    }
}

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Raw(raw) => raw.serialize(serializer),
            Answer::Parsed(value) => value.serialize(serializer),
        }
    }
}

/// Why a forwarded call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    /// The upstream did not answer within the tool's timeout.
    #[error("tool {tool:?} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The tool.
        tool: String,
        /// Its timeout.
        timeout_ms: u128,
    },
    /// The upstream could not be reached.
    #[error("tool {tool:?} is unreachable")]
    Unreachable {
        /// The tool.
        tool: String,
    },
    /// The TLS handshake with the upstream failed (an untrusted or mismatched
    /// certificate, an unsupported protocol): nothing was sent.
    #[error("tool {tool:?} failed the TLS handshake: {problem}")]
    Tls {
        /// The tool.
        tool: String,
        /// The certificate or handshake problem, as rustls names it.
        problem: String,
    },
    /// The upstream refused the credential Leash sent (HTTP 401): nothing was done.
    #[error("tool {tool:?} refused the credential it was sent (HTTP 401)")]
    Unauthorized {
        /// The tool.
        tool: String,
    },
    /// The upstream answered, but not with a usable JSON answer.
    #[error("tool {tool:?} {problem}")]
    BadAnswer {
        /// The tool.
        tool: String,
        /// What was wrong.
        problem: String,
    },
}

impl UpstreamFailure {
    /// Whether the upstream did no work we know of (the call should not count).
    pub fn not_performed(&self) -> bool {
        matches!(
            self,
            UpstreamFailure::Timeout { .. }
                | UpstreamFailure::Unreachable { .. }
                | UpstreamFailure::Tls { .. }
                | UpstreamFailure::Unauthorized { .. }
        )
    }
}

/// Time allowed to open a TCP connection to an upstream (the TLS handshake is bounded by
/// each call's own timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The upstream HTTP client.
#[derive(Clone)]
pub struct Proxy {
    client: reqwest::Client,
}

impl Proxy {
    /// The one upstream client: `leash_sdk::tls` rules (rustls + ring, the platform's
    /// roots plus `extra_roots`, no redirects, no environment proxies), pooled
    /// connections, a connect timeout and no overall timeout (MCP event streams are
    /// long-lived; each use sets its own deadline).
    pub fn new(extra_roots: &[rustls_pki_types::CertificateDer<'static>]) -> anyhow::Result<Self> {
        // No environment proxies: upstreams are configured by policy only, and a stray
        // HTTP_PROXY must not reroute calls that carry injected credentials (the profile
        // also showed the per-request proxy matching).
        // Other reqwest clients in this process (none of Leash's) need a default provider.
        leash_sdk::tls::install_default_provider();
        let client = leash_sdk::tls::client_builder(extra_roots)?
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Proxy { client })
    }

    /// The shared client, for MCP upstreams and the webhook (cheap to clone: one pool).
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// Forwards one call; returns the upstream's JSON answer as it was sent.
    pub async fn forward(
        &self,
        tool: &ToolDef,
        args: &Value,
        extra_headers: &[(axum::http::HeaderName, axum::http::HeaderValue)],
    ) -> Result<Answer, UpstreamFailure> {
        let name = tool.name.clone();
        let timeout = tool.timeout;
        let attempt = async {
            let mut request = self
                .client
                .post(tool.upstream.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .body(args.to_string());
            for (header_name, value) in &tool.upstream_headers {
                request = request.header(header_name, value);
            }
            for (header_name, value) in extra_headers {
                request = request.header(header_name, value);
            }
            let mut response = request.send().await.map_err(|err| failed(&name, &err))?;
            let status = response.status();
            if response
                .content_length()
                .is_some_and(|n| n as usize > MAX_RESPONSE_BYTES)
            {
                return Err(too_large(&name));
            }
            let mut body = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                            return Err(too_large(&name));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        return Err(UpstreamFailure::BadAnswer {
                            tool: name.clone(),
                            problem: "broke off its answer".into(),
                        });
                    }
                }
            }
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(UpstreamFailure::Unauthorized { tool: name.clone() });
            }
            if !status.is_success() {
                return Err(UpstreamFailure::BadAnswer {
                    tool: name.clone(),
                    problem: format!("answered HTTP {}", status.as_u16()),
                });
            }
            serde_json::from_slice::<Box<RawValue>>(&body)
                .map(Answer::Raw)
                .map_err(|_| UpstreamFailure::BadAnswer {
                    tool: name.clone(),
                    problem: "answered something that is not JSON".into(),
                })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamFailure::Timeout {
                tool: tool.name.clone(),
                timeout_ms: timeout.as_millis(),
            }),
        }
    }
}

/// Classifies a request that got no answer; logs it without the URL (it may hold a
/// secret expanded from the environment) and without any header.
pub fn failed(tool: &str, err: &reqwest::Error) -> UpstreamFailure {
    let problem = leash_sdk::tls::describe(err);
    tracing::warn!(tool = %tool, error = %problem, "upstream unreachable");
    match problem.strip_prefix("TLS: ") {
        Some(tls) => UpstreamFailure::Tls {
            tool: tool.to_string(),
            problem: tls.to_string(),
        },
        None => UpstreamFailure::Unreachable {
            tool: tool.to_string(),
        },
    }
}

fn too_large(tool: &str) -> UpstreamFailure {
    UpstreamFailure::BadAnswer {
        tool: tool.to_string(),
        problem: format!(
            "answered more than {} MiB",
            MAX_RESPONSE_BYTES / (1024 * 1024)
        ),
    }
}
