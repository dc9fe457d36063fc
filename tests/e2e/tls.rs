//! TLS everywhere it is needed (DESIGN.md, "Contract additions (second round)"): https
//! upstreams (HTTP tools, MCP servers) trusted by the platform's roots plus
//! `LEASH_CA_BUNDLE`; one hardened upstream client (no redirects, no environment
//! proxies); `leash serve --tls-cert/--tls-key`; the SDK over https; PostgreSQL
//! `sslmode`. Every certificate is made here, with rcgen, by a throw-away CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{ADMIN, BrokerProcess, TestBroker, ToolServer, free_port, leash_binary};

/// A certificate authority made for one test.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `names` (IP addresses become IP SANs): (chain PEM, key PEM).
    pub(crate) fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate and a 127.0.0.1/localhost leaf into `dir`:
    /// (ca.pem, cert.pem, key.pem).
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.leaf(&["127.0.0.1", "localhost"]);
        let paths = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&paths.0, self.pem()).unwrap();
        std::fs::write(&paths.1, cert).unwrap();
        std::fs::write(&paths.2, key).unwrap();
        paths
    }
}

pub(crate) fn server_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    )
}

/// A TLS terminator in front of a plain TCP `backend` (a tool server, an MCP server):
/// what an https upstream looks like to Leash. Stops on drop.
struct TlsFront {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    async fn start(cert_pem: &str, key_pem: &str, backend: SocketAddr) -> TlsFront {
        Self::start_for(cert_pem, key_pem, backend, false).await
    }

    /// With `postgres`, first answers PostgreSQL's `SSLRequest` with `S` (PostgreSQL
    /// negotiates TLS inside its own protocol), then forwards in plain text.
    async fn start_for(
        cert_pem: &str,
        key_pem: &str,
        backend: SocketAddr,
        postgres: bool,
    ) -> TlsFront {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(cert_pem, key_pem));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    if postgres {
                        let mut request = [0u8; 8];
                        if stream.read_exact(&mut request).await.is_err()
                            || request != [0, 0, 0, 8, 4, 210, 22, 47]
                            || stream.write_all(b"S").await.is_err()
                        {
                            return;
                        }
                    }
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP listener that records the first line of whatever is sent to it: stands in for
/// a proxy (`CONNECT host:port` or `POST http://…`) that must never be contacted.
struct Recorder {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                let seen = seen.clone();
                seen.lock().unwrap().push(format!("connection from {peer}"));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
                    {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let first = text.lines().next().unwrap_or("").to_string();
                        seen.lock().unwrap().push(first);
                    }
                });
            }
        });
        Recorder { addr, lines, task }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reqwest client trusting only `ca` (reqwest's own API, not Leash's TLS code).
fn client_trusting(ca: &Ca) -> reqwest::Client {
    leash_sdk::tls::install_default_provider();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap()
}

const TOOL_POLICY: &str = r#"
[tools."secure.search"]
upstream = "https://{TLS}/search"
timeout_ms = 5000
input_schema = { type = "object" }
upstream_headers = { Authorization = "Bearer upstream-secret-key" }

[tools."other.search"]
upstream = "https://{OTHER}/search"
timeout_ms = 5000
input_schema = { type = "object" }
upstream_headers = { Authorization = "Bearer upstream-secret-key" }

[tools."bounce.search"]
upstream = "http://{BOUNCE}/search"
timeout_ms = 5000
input_schema = { type = "object" }
upstream_headers = { Authorization = "Bearer upstream-secret-key" }

[agents.bot]
tools = ["secure.*", "other.*", "bounce.*"]
max_ttl_seconds = 600
"#;

fn tool_policy(tls: SocketAddr, other: SocketAddr, bounce: SocketAddr) -> String {
    TOOL_POLICY
        .replace("{TLS}", &tls.to_string())
        .replace("{OTHER}", &other.to_string())
        .replace("{BOUNCE}", &bounce.to_string())
}

/// Writes `ca`'s certificate to a file in a fresh folder (the CA bundle).
fn bundle(ca: &Ca) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_tool_upstream_works_through_leash() {
    let ca = Ca::new("Leash test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let upstream = ToolServer::spawn().await;
    let front = TlsFront::start(&cert, &key, upstream.addr).await;
    let (_dir, ca_file) = bundle(&ca);
    let policy = tool_policy(front.addr, front.addr, front.addr);
    let broker = TestBroker::spawn_tuned(&policy, |c| c.ca_bundle = Some(ca_file)).await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["secure.search"]).await;

    let reply = broker
        .call(&token, "secure.search", json!({"q": "over tls"}))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["result"]["echo"], json!({"q": "over tls"}));
    let received = upstream.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].authorization.as_deref(),
        Some("Bearer upstream-secret-key"),
        "the injected header arrives over TLS"
    );
    assert!(received[0].capability.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_leash_does_not_trust_is_a_502_naming_the_problem() {
    let trusted = Ca::new("Trusted CA");
    let stranger = Ca::new("Some other CA");
    let upstream = ToolServer::spawn().await;
    // Signed by a CA Leash does not trust.
    let (cert, key) = stranger.leaf(&["127.0.0.1"]);
    let unknown = TlsFront::start(&cert, &key, upstream.addr).await;
    // Signed by the trusted CA, but for another name.
    let (cert, key) = trusted.leaf(&["example.org"]);
    let misnamed = TlsFront::start(&cert, &key, upstream.addr).await;
    let (_dir, ca_file) = bundle(&trusted);
    let policy = tool_policy(unknown.addr, misnamed.addr, unknown.addr);
    let broker = TestBroker::spawn_tuned(&policy, |c| c.ca_bundle = Some(ca_file)).await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker
        .task(&agent, &["secure.search", "other.search"])
        .await;

    let reply = broker.call(&token, "secure.search", json!({})).await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.code(), "upstream_error");
    let message = reply.message();
    assert!(
        message.contains("TLS") && message.contains("invalid peer certificate"),
        "the message names the certificate problem: {message}"
    );
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(!message.contains("upstream-secret-key"), "{message}");

    let reply = broker.call(&token, "other.search", json!({})).await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.code(), "upstream_error");
    let message = reply.message();
    assert!(
        message.contains("certificate not valid for name"),
        "the message names the certificate problem: {message}"
    );
    assert!(!message.contains("upstream-secret-key"), "{message}");
    assert_eq!(
        upstream.count(),
        0,
        "nothing reaches an upstream whose certificate failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_is_not_followed() {
    // The other host: records anything it receives.
    let elsewhere = ToolServer::spawn().await;
    let target = format!("http://{}/steal", elsewhere.addr);
    let redirect = Router::new().fallback(move || {
        let target = target.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("location", target.parse().unwrap());
            (StatusCode::TEMPORARY_REDIRECT, headers, "")
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bounce = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, redirect).await.ok() });
    // The same, behind TLS (the https client is the same client).
    let ca = Ca::new("Leash test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let front = TlsFront::start(&cert, &key, bounce).await;
    let (_dir, ca_file) = bundle(&ca);
    let policy = tool_policy(front.addr, front.addr, bounce);
    let broker = TestBroker::spawn_tuned(&policy, |c| c.ca_bundle = Some(ca_file)).await;
    let agent = broker.agent("bot").await;
    let (_, token) = broker
        .task(&agent, &["bounce.search", "secure.search"])
        .await;

    for tool in ["bounce.search", "secure.search"] {
        let reply = broker.call(&token, tool, json!({"q": "x"})).await;
        assert_eq!(reply.status, 502, "{tool}: {reply:?}");
        assert_eq!(reply.code(), "upstream_error");
        assert!(reply.message().contains("307"), "{reply:?}");
    }
    assert_eq!(
        elsewhere.count(),
        0,
        "the redirect target received the call: {:?}",
        elsewhere.received.lock().unwrap()
    );
    server.abort();
}

/// Polls `check` until it is true or `limit` passes.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/interop-venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it installs mcp and biscuit-python)",
        path.display()
    );
    path
}

/// The Python MCP upstream of `mcp.rs` (the official SDK's `MCPServer`), killed on drop.
struct McpUpstream {
    child: Child,
    port: u16,
}

impl McpUpstream {
    async fn start() -> McpUpstream {
        leash_sdk::tls::install_default_provider();
        let port = free_port();
        let child = Command::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/mcp_upstream.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let up = eventually(Duration::from_secs(30), async || {
            http.get(format!("http://127.0.0.1:{port}/ready"))
                .send()
                .await
                .is_ok()
        })
        .await;
        assert!(up, "the Python MCP upstream did not start");
        McpUpstream { child, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for McpUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_mcp_upstream_works_through_leash() {
    let mcp = McpUpstream::start().await;
    let ca = Ca::new("Leash test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let front = TlsFront::start(&cert, &key, mcp.addr()).await;
    let (_dir, ca_file) = bundle(&ca);
    let policy = format!(
        r#"
[mcp_servers.secure]
url = "https://{}/mcp"
timeout_ms = 5000

[agents.bot]
tools = ["secure.*"]
max_ttl_seconds = 600
"#,
        front.addr
    );
    let broker = TestBroker::spawn_tuned(&policy, |c| c.ca_bundle = Some(ca_file)).await;
    let discovered = eventually(Duration::from_secs(30), async || {
        broker.state.catalog.get("secure.echo").is_some()
    })
    .await;
    assert!(discovered, "Leash did not discover the https MCP upstream");
    let agent = broker.agent("bot").await;
    let (_, token) = broker.task(&agent, &["secure.echo"]).await;
    let reply = broker
        .call(&token, "secure.echo", json!({"message": "hello over tls"}))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.to_string().contains("hello over tls"),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxies_are_ignored_by_tools_mcp_upstreams_and_the_webhook() {
    // Environment variables are process-wide: the broker runs as its own process here.
    let recorder = Recorder::start().await;
    let upstream = ToolServer::spawn().await;
    let hook = ToolServer::spawn().await;
    let mcp = McpUpstream::start().await;
    let ca = Ca::new("Leash test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let front = TlsFront::start(&cert, &key, upstream.addr).await;
    let work = tempfile::tempdir().unwrap();
    let ca_file = work.path().join("bundle.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("policy.toml"),
        format!(
            r#"
[tools."plain.search"]
upstream = "http://{up}/search"
input_schema = {{ type = "object" }}
upstream_headers = {{ Authorization = "Bearer upstream-secret-key" }}

[tools."secure.search"]
upstream = "https://{front}/search"
input_schema = {{ type = "object" }}
upstream_headers = {{ Authorization = "Bearer upstream-secret-key" }}

[mcp_servers.everything]
url = "http://{mcp}/mcp"
timeout_ms = 5000
headers = {{ Authorization = "Bearer mcp-secret-key" }}

[agents.bot]
tools = ["plain.*", "secure.*", "everything.*"]
max_ttl_seconds = 600

[agents.gated]
tools = ["plain.*"]
max_ttl_seconds = 600
approval = "issuance"

[approvals]
webhook = "http://{hook}/hook"
webhook_secret = "hook-secret"
"#,
            up = upstream.addr,
            front = front.addr,
            mcp = mcp.addr(),
            hook = hook.addr,
        ),
    )
    .unwrap();
    let proxy = format!("http://{}", recorder.addr);
    let mut env: Vec<(&str, String)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy.clone()))
    .collect();
    env.push(("NO_PROXY", String::new()));
    env.push(("no_proxy", String::new()));
    env.push(("LEASH_ADMIN_TOKEN", ADMIN.to_string()));
    env.push(("LEASH_CA_BUNDLE", ca_file.display().to_string()));
    env.push(("LEASH_MCP_REFRESH_SECONDS", "1".to_string()));
    let data = work.path().join("data");
    let broker = BrokerProcess::start_env(&policies, &data, &env).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = async |path: &str, bearer: &str, body: Value| -> (u16, Value) {
        let response = http
            .post(format!("{}{path}", broker.url))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    };
    let (status, body) = post("/v1/agents/bot/credentials", ADMIN, json!({})).await;
    assert_eq!(status, 201, "{body}");
    let bot = body["credential"].as_str().unwrap().to_string();

    // HTTP tools, plain and https.
    let (status, body) = post(
        "/v1/tasks",
        &bot,
        json!({"purpose": "proxy test", "tools": ["plain.search", "secure.search"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    for tool in ["plain.search", "secure.search"] {
        let (status, body) = post(&format!("/v1/tools/{tool}/call"), &token, json!({})).await;
        assert_eq!(status, 200, "{tool}: {body}");
    }
    assert_eq!(upstream.count(), 2);

    // The MCP upstream: its tools are discovered and called directly.
    let mut mcp_token = String::new();
    let discovered = eventually(Duration::from_secs(30), async || {
        let (status, body) = post(
            "/v1/tasks",
            &bot,
            json!({"purpose": "mcp", "tools": ["everything.echo"]}),
        )
        .await;
        if status == 201 {
            mcp_token = body["token"].as_str().unwrap().to_string();
        }
        status == 201
    })
    .await;
    assert!(
        discovered,
        "the MCP upstream's tools never appeared; proxy saw {:?}",
        recorder.lines()
    );
    let (status, body) = post(
        "/v1/tools/everything.echo/call",
        &mcp_token,
        json!({"message": "direct"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The webhook: an issuance approval is announced.
    let (status, body) = post("/v1/agents/gated/credentials", ADMIN, json!({})).await;
    assert_eq!(status, 201, "{body}");
    let gated = body["credential"].as_str().unwrap().to_string();
    let (status, body) = post(
        "/v1/tasks",
        &gated,
        json!({"purpose": "needs approval", "tools": ["plain.search"]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let delivered = eventually(Duration::from_secs(15), async || hook.count() > 0).await;
    assert!(
        delivered,
        "the webhook was not delivered; proxy saw {:?}",
        recorder.lines()
    );

    // Give stray connections a moment, then: the proxy heard nothing at all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        recorder.lines(),
        Vec::<String>::new(),
        "a client used the environment's proxy"
    );
}

/// Runs `leash serve` with `args`/`env`; returns the child once `https://…/healthz`
/// answers to `client`, or panics.
async fn serve_https(
    dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
    client: &reqwest::Client,
) -> (Child, String) {
    let port = free_port();
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    write_minimal_policy(&policies);
    let mut command = Command::new(leash_binary());
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--policies")
        .arg(&policies)
        .arg("--data")
        .arg(dir.join("data"))
        .args(args)
        .env("LEASH_LOG", "warn")
        .env("LEASH_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(30), async || {
        client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    if !up {
        let _ = child.kill();
        panic!("leash serve did not answer https on {url}");
    }
    (child, url)
}

/// A valid policy with nothing in it worth calling.
fn write_minimal_policy(policies: &Path) {
    std::fs::write(
        policies.join("policy.toml"),
        "[tools.\"t.x\"]\nupstream = \"http://127.0.0.1:9/x\"\ninput_schema = { type = \"object\" }\n\n[agents.bot]\ntools = [\"t.x\"]\nmax_ttl_seconds = 60\n",
    )
    .unwrap();
}

/// Runs `leash serve` expecting it to refuse to start; returns what it printed.
fn serve_refuses(dir: &Path, args: &[&str], env: &[(&str, String)]) -> String {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    write_minimal_policy(&policies);
    let mut command = Command::new(leash_binary());
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--policies")
        .arg(&policies)
        .arg("--data")
        .arg(dir.join("data"))
        .args(args)
        .env("LEASH_ADMIN_TOKEN", ADMIN)
        .env_remove("LEASH_CA_BUNDLE")
        .env_remove("LEASH_TLS_CERT")
        .env_remove("LEASH_TLS_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(!status.success(), "leash serve exited 0: {stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("leash serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leash_serve_with_tls_cert_and_key_serves_https_only() {
    let ca = Ca::new("Leash test CA");
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let trusting = client_trusting(&ca);
    let (mut child, url) = serve_https(
        dir.path(),
        &[],
        &[
            ("LEASH_TLS_CERT", cert.display().to_string()),
            ("LEASH_TLS_KEY", key.display().to_string()),
        ],
        &trusting,
    )
    .await;
    let health: Value = trusting
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    // Plain HTTP to the same port gets no HTTP answer.
    let plain = url.replacen("https://", "http://", 1);
    let answer = trusting.get(format!("{plain}/healthz")).send().await;
    assert!(
        answer.is_err(),
        "plain HTTP was answered: {:?}",
        answer.map(|r| r.status())
    );
    // A client that does not trust the CA refuses the certificate.
    let stranger = client_trusting(&Ca::new("Some other CA"));
    let err = stranger
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(
        leash_sdk::tls::describe(&err).contains("UnknownIssuer"),
        "{err:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_ca_bundle_mistakes_stop_leash_serve_with_a_clear_message() {
    let ca = Ca::new("Leash test CA");
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let cert_arg = cert.display().to_string();
    let key_arg = key.display().to_string();

    let said = serve_refuses(dir.path(), &["--tls-cert", &cert_arg], &[]);
    assert!(
        said.contains("--tls-cert") && said.contains("--tls-key"),
        "{said}"
    );
    let said = serve_refuses(dir.path(), &["--tls-key", &key_arg], &[]);
    assert!(said.contains("without --tls-cert"), "{said}");

    // A key that is not the certificate's.
    let (_, other_key) = ca.leaf(&["127.0.0.1"]);
    let wrong_key = dir.path().join("wrong-key.pem");
    std::fs::write(&wrong_key, other_key).unwrap();
    let said = serve_refuses(
        dir.path(),
        &[
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &wrong_key.display().to_string(),
        ],
        &[],
    );
    assert!(said.contains("does not fit"), "{said}");

    // CA bundles: missing, not PEM, a broken certificate.
    let missing = dir.path().join("no-such-bundle.pem");
    let said = serve_refuses(
        dir.path(),
        &[],
        &[("LEASH_CA_BUNDLE", missing.display().to_string())],
    );
    assert!(
        said.contains("no-such-bundle.pem") && said.contains("cannot read"),
        "{said}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let said = serve_refuses(
        dir.path(),
        &["--ca-bundle", &garbage.display().to_string()],
        &[],
    );
    assert!(
        said.contains("garbage.pem") && said.contains("no PEM certificate"),
        "{said}"
    );
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let said = serve_refuses(
        dir.path(),
        &[],
        &[("LEASH_CA_BUNDLE", broken.display().to_string())],
    );
    assert!(said.contains("broken.pem"), "{said}");
}

/// An in-process broker serving HTTPS with a certificate of `ca`.
async fn tls_broker(
    ca: &Ca,
    dir: &Path,
    tune: impl FnOnce(&mut leash_broker::ServeConfig),
) -> TestBroker {
    let (_, cert, key) = ca.write(dir);
    let mut broker = TestBroker::spawn_tuned(crate::common::POLICY, |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        tune(c);
    })
    .await;
    broker.url = broker.url.replacen("http://", "https://", 1);
    broker.http = client_trusting(ca);
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_says_hello_gives_its_connection_slot_back() {
    let ca = Ca::new("Leash test CA");
    let dir = tempfile::tempdir().unwrap();
    let broker = tls_broker(&ca, dir.path(), |c| {
        c.max_connections = 2;
        c.client_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = broker.url.trim_start_matches("https://").to_string();
    // Fill every slot with connections that never start a TLS handshake.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let started = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(8),
        broker.http.get(format!("{}/healthz", broker.url)).send(),
    )
    .await
    .expect("the silent connections still hold every slot")
    .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "served before a slot was freed: the cap was not full?"
    );
    // And the silent ones were closed by the broker.
    for mut stream in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is still open: {read:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_verifier_and_agent_client_speak_https() {
    let ca = Ca::new("Leash test CA");
    let dir = tempfile::tempdir().unwrap();
    let broker = tls_broker(&ca, dir.path(), |_| {}).await;
    let credential = broker.agent("bot").await;

    // The agent client, trusting the CA.
    let agent = leash_sdk::Broker::new(&broker.url, credential.clone())
        .with_ca_certificates(&[ca.der()])
        .unwrap();
    let task = agent
        .start_task(leash_sdk::TaskRequest::new("tls", ["web.search"]))
        .await
        .unwrap();
    let result = task
        .call("web.search", json!({"query": "over https"}))
        .await
        .unwrap();
    assert_eq!(result["echo"], json!({"query": "over https"}));
    // Without the CA, the agent client refuses the broker's certificate.
    let untrusting = leash_sdk::Broker::new(&broker.url, credential);
    let err = untrusting
        .start_task(leash_sdk::TaskRequest::new("tls", ["web.search"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // The verifier: keys and the revocation feed over https.
    let capability = broker
        .upstream
        .received
        .lock()
        .unwrap()
        .last()
        .and_then(|r| r.capability.clone())
        .expect("the call carried a capability");
    let verifier = leash_sdk::Verifier::connect_with(
        leash_sdk::VerifierConfig::new(&broker.url).with_ca_certificates(vec![ca.der()]),
    )
    .await
    .unwrap();
    let verified = verifier
        .verify(&capability, "web.search", &json!({"query": "over https"}))
        .await
        .unwrap();
    assert_eq!(verified.tool, "web.search");
    // Revocations arrive over the https feed.
    task.complete().await.unwrap();
    let refused = eventually(Duration::from_secs(5), async || {
        matches!(
            verifier
                .verify(&capability, "web.search", &json!({"query": "over https"}))
                .await,
            Err(leash_sdk::VerifyError::Revoked)
        )
    })
    .await;
    assert!(
        refused,
        "the verifier did not hear of the revocation over https"
    );

    // A verifier that does not trust the CA cannot connect, and says why.
    let err = leash_sdk::Verifier::connect(&broker.url)
        .await
        .err()
        .unwrap();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

const DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn ssl_in_use(store: &leash_broker::store::PgStore) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// This machine's PostgreSQL serves TLS with Debian's "snakeoil" certificate (made for
/// `localhost`, and trusted by this machine's store through its hash link in
/// /etc/ssl/certs). A TLS front with the test CA's certificate stands in for a server
/// whose CA only `LEASH_CA_BUNDLE` knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_is_honoured_and_never_falls_back() {
    use leash_broker::store::PgStore;
    // `suite_` schemas left by a killed run are cleared by scripts/test.sh.
    let schema = format!("suite_tls_{}", std::process::id());

    let store = PgStore::open(&format!("{DATABASE}?sslmode=require"), &schema)
        .await
        .expect("sslmode=require connects over TLS");
    assert!(ssl_in_use(&store).await, "sslmode=require but no TLS");
    let store = PgStore::open(&format!("{DATABASE}?sslmode=disable"), &schema)
        .await
        .unwrap();
    assert!(!ssl_in_use(&store).await);
    // verify-full checks the name: the certificate is for localhost, not 127.0.0.1.
    let err = PgStore::open(&format!("{DATABASE}?sslmode=verify-full"), &schema)
        .await
        .err()
        .expect("a certificate for localhost was accepted for 127.0.0.1");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    // A server whose certificate a private CA signed.
    let ca = Ca::new("Leash test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let postgres = SocketAddr::from(([127, 0, 0, 1], 5432));
    let front = TlsFront::start_for(&cert, &key, postgres, true).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/test?sslmode=verify-full",
        front.addr.port()
    );
    let err = PgStore::open(&url, &schema)
        .await
        .err()
        .expect("a certificate of an unknown CA was accepted");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let (_dir, ca_file) = bundle(&ca);
    let through_front = PgStore::open_with_ca(&url, &schema, Some(&ca_file))
        .await
        .expect("verify-full with the CA bundle");
    sqlx::query("SELECT 1")
        .execute(through_front.pool())
        .await
        .unwrap();

    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(store.pool())
        .await
        .unwrap();
}
