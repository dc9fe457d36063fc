//! The only code that talks to upstream tools: POST the arguments as JSON to the
//! configured URL with the configured headers, and read back a bounded JSON answer.
//!
//! Connections are pooled and reused. Redirects are never followed and environment
//! proxies are ignored: an upstream must not be able to send a call (and its injected
//! credentials) somewhere else.

use std::time::Duration;

use axum::http::header;
use serde_json::Value;

use crate::policy::ToolDef;

/// Largest upstream answer accepted.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

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
            UpstreamFailure::Timeout { .. } | UpstreamFailure::Unreachable { .. }
        )
    }
}

/// The upstream HTTP client.
#[derive(Clone)]
pub struct Proxy {
    client: reqwest::Client,
}

impl Proxy {
    /// A client with pooled connections and no redirects.
    pub fn new() -> anyhow::Result<Self> {
        // No environment proxies: upstreams are configured by policy only, and a stray
        // HTTP_PROXY must not reroute calls that carry injected credentials (the profile
        // also showed the per-request proxy matching).
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Proxy { client })
    }

    /// Forwards one call; returns the upstream's JSON answer.
    pub async fn forward(
        &self,
        tool: &ToolDef,
        args: &Value,
        extra_headers: &[(&str, String)],
    ) -> Result<Value, UpstreamFailure> {
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
                request = request.header(*header_name, value);
            }
            let mut response = request.send().await.map_err(|err| {
                tracing::warn!(tool = %name, error = %err.without_url(), "upstream unreachable");
                UpstreamFailure::Unreachable { tool: name.clone() }
            })?;
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
            if !status.is_success() {
                return Err(UpstreamFailure::BadAnswer {
                    tool: name.clone(),
                    problem: format!("answered HTTP {}", status.as_u16()),
                });
            }
            serde_json::from_slice::<Value>(&body).map_err(|_| UpstreamFailure::BadAnswer {
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

fn too_large(tool: &str) -> UpstreamFailure {
    UpstreamFailure::BadAnswer {
        tool: tool.to_string(),
        problem: format!(
            "answered more than {} MiB",
            MAX_RESPONSE_BYTES / (1024 * 1024)
        ),
    }
}
