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
/// kept as the text it sent, once [`readable`] has checked it: the broker only wraps it in
/// `{"result": …}`, so building a tree of it and writing that out again would be work for
/// nothing. An MCP server's `CallToolResult` arrives parsed.
#[derive(Debug)]
pub enum Answer {
    /// The upstream's JSON text, checked to be one well-formed value.
    Raw(Box<RawValue>),
    /// A parsed answer.
    Parsed(Value),
    /// An MCP upstream's questions for its stateless client (2026-07-28
    /// `input_required`): not a result yet.
    Asks(Box<rmcp::model::InputRequiredResult>),
}

impl Answer {
    /// The answer as a tree, for callers that look inside it (the MCP gateway). A raw
    /// answer passed [`readable`], so this fails only if memory does.
    pub fn into_value(self) -> Result<Value, serde_json::Error> {
        match self {
            Answer::Raw(raw) => serde_json::from_str(raw.get()),
            Answer::Parsed(value) => Ok(value),
            Answer::Asks(asks) => serde_json::to_value(asks),
        }
    }
}

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Raw(raw) => raw.serialize(serializer),
            Answer::Parsed(value) => value.serialize(serializer),
            Answer::Asks(asks) => asks.serialize(serializer),
        }
    }
}

/// The upstream's answer as it was written, if a client parsing the broker's answer
/// `{"result": …}` into a JSON tree (the SDKs' `CallResult`) can read it: one value,
/// UTF-8, string escapes that decode (no lone surrogates), numbers a double holds, and
/// nesting that leaves room for the wrapper within serde_json's limit. A
/// check of the syntax alone would pass the last three on, and the client would fail
/// on a 200.
pub fn readable(body: Vec<u8>) -> Option<Box<RawValue>> {
    let mut reader = serde_json::Deserializer::from_slice(&body);
    serde::de::DeserializeSeed::deserialize(Readable(MAX_ANSWER_DEPTH), &mut reader).ok()?;
    reader.end().ok()?;
    RawValue::from_string(String::from_utf8(body).ok()?).ok()
}

/// Most levels of arrays and objects in an upstream's answer: serde_json reads 127, and
/// one of those is the `{"result": …}` around it.
const MAX_ANSWER_DEPTH: usize = 126;

/// A JSON value read through only to be checked, keeping nothing: the checks of parsing a
/// `Value`, with no tree built; the levels of nesting still allowed.
struct Readable(usize);

impl<'de> serde::de::DeserializeSeed<'de> for Readable {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Readable {
    /// One level down, or an error past the last.
    fn nested<E: serde::de::Error>(&self) -> Result<Readable, E> {
        match self.0.checked_sub(1) {
            Some(left) => Ok(Readable(left)),
            None => Err(E::custom("nested too deeply")),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Readable {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(Readable(inner.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while map.next_key_seed(Readable(inner.0))?.is_some() {
            map.next_value_seed(Readable(inner.0))?;
        }
        Ok(())
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
    /// One word for the audit: `timeout`, `unreachable`, `tls`, `unauthorized`,
    /// `bad_answer`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamFailure::Timeout { .. } => "timeout",
            UpstreamFailure::Unreachable { .. } => "unreachable",
            UpstreamFailure::Tls { .. } => "tls",
            UpstreamFailure::Unauthorized { .. } => "unauthorized",
            UpstreamFailure::BadAnswer { .. } => "bad_answer",
        }
    }

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
            readable(body)
                .map(Answer::Raw)
                .ok_or_else(|| UpstreamFailure::BadAnswer {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `readable` passes exactly what a client parsing a tree reads, alone and inside the
    /// broker's `{"result": …}`, and passes it on byte for byte (outer whitespace aside).
    #[test]
    fn readable_is_what_a_json_tree_parser_reads_kept_as_written() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        let samples: Vec<Vec<u8>> = vec![
            br#"{"z":123456789012345678901234567890,"a":1.10,"s":"\u00e9","d":{"k":1,"k":2}}"#
                .to_vec(),
            b" [1, -0, 2.5e-3, true, null, \"\xc3\xa9\"]\n".to_vec(),
            b"\"\\ud83d\\ude00\"".to_vec(),
            b"\"\\ud800\"".to_vec(),
            b"\"\\udc00x\"".to_vec(),
            b"[1e400]".to_vec(),
            b"[-1e400]".to_vec(),
            b"{\"a\":\"\xff\"}".to_vec(),
            b"{\"a\":1} {\"b\":2}".to_vec(),
            b"{\"a\":1".to_vec(),
            b"{\"a\":01}".to_vec(),
            b"[1,]".to_vec(),
            b"".to_vec(),
            b"nul".to_vec(),
            b"1,\"x\":2".to_vec(),
            deep(100),
            deep(126),
            deep(127),
            deep(128),
            deep(129),
            deep(5000),
        ];
        let mut refused = 0;
        for sample in &samples {
            let wrapped = [&b"{\"result\":"[..], sample, b"}"].concat();
            let tree = serde_json::from_slice::<Value>(sample).is_ok()
                && serde_json::from_slice::<Value>(&wrapped).is_ok();
            let raw = readable(sample.clone());
            assert_eq!(
                raw.is_some(),
                tree,
                "{}",
                String::from_utf8_lossy(&sample[..sample.len().min(60)])
            );
            match raw {
                Some(raw) => assert_eq!(
                    raw.get().as_bytes(),
                    String::from_utf8_lossy(sample).trim().as_bytes()
                ),
                None => refused += 1,
            }
        }
        assert!(refused >= 15, "the refused samples are refused: {refused}");
    }
}
