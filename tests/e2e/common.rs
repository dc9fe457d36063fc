//! Test harness: a real broker on 127.0.0.1:0, a real recording upstream, and the
//! built `leash` binary for process-level tests. Each handle stops its server on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use leash_broker::{AppState, ServeConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The admin token every test broker uses.
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub capability: Option<String>,
}

/// A scriptable upstream tool server that records what it receives.
pub struct ToolServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    _stop: oneshot::Sender<()>,
}

async fn upstream(
    State(log): State<Arc<Mutex<Vec<Received>>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    log.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        body: parsed.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        capability: headers
            .get("leash-capability")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    });
    let mut out = HeaderMap::new();
    out.insert("content-type", "application/json".parse().unwrap());
    match uri.path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (StatusCode::OK, out, b"{}".to_vec())
        }
        "/fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            out,
            b"{\"error\":\"boom\"}".to_vec(),
        ),
        "/garbage" => (StatusCode::OK, out, b"<html>not json".to_vec()),
        // Answers exactly the bytes given as `{"hex": …}`.
        "/answer" => {
            let bytes = parsed["hex"].as_str().and_then(|h| hex::decode(h).ok());
            (StatusCode::OK, out, bytes.unwrap_or_default())
        }
        "/huge" => {
            let mut body = b"[\"".to_vec();
            body.extend(std::iter::repeat_n(b'x', 9 * 1024 * 1024));
            body.extend(b"\"]");
            (StatusCode::OK, out, body)
        }
        _ => (
            StatusCode::OK,
            out,
            serde_json::to_vec(&json!({ "echo": parsed, "path": uri.path() })).unwrap(),
        ),
    }
}

impl ToolServer {
    pub async fn spawn() -> ToolServer {
        // reqwest is built without a crypto provider (Leash's clients bring their own):
        // tests that use plain `reqwest::Client::new()` get ring as the default.
        leash_sdk::tls::install_default_provider();
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/{*path}", post(upstream))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .ok();
        });
        ToolServer {
            addr,
            received,
            _stop: stop,
        }
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// The standard test policy; `{UP}` is the upstream's address.
pub const POLICY: &str = r#"
[tools."web.search"]
description = "Search"
upstream = "http://{UP}/search"
timeout_ms = 2000
input_schema = { type = "object", required = ["query"], additionalProperties = false, properties = { query = { type = "string", maxLength = 50 } } }
upstream_headers = { Authorization = "Bearer upstream-secret-key" }

[tools."fs.read"]
description = "Read a file"
upstream = "http://{UP}/read"
input_schema = { type = "object", properties = { path = { type = "string" } } }

[tools."shell.exec"]
description = "Not granted to the bot"
upstream = "http://{UP}/exec"
input_schema = { type = "object" }

[tools."bad.slow"]
upstream = "http://{UP}/slow"
timeout_ms = 300
input_schema = { type = "object" }

[tools."bad.fail"]
upstream = "http://{UP}/fail"
input_schema = { type = "object" }

[tools."bad.garbage"]
upstream = "http://{UP}/garbage"
input_schema = { type = "object" }

[tools."bad.huge"]
upstream = "http://{UP}/huge"
input_schema = { type = "object" }

[tools."bad.answer"]
upstream = "http://{UP}/answer"
input_schema = { type = "object", properties = { hex = { type = "string" } } }

[tools."bad.down"]
upstream = "http://127.0.0.1:9/down"
timeout_ms = 1000
input_schema = { type = "object" }

[agents.bot]
tools = ["web.search", "fs.read", "bad.*"]
max_ttl_seconds = 600
idle_timeout_seconds = 120
max_calls = 1000

[agents.small]
tools = ["web.search"]
max_ttl_seconds = 60
max_calls = 3
checks = ['check if call($t), $t != "fs.read"']
"#;

/// A broker running in this process.
pub struct TestBroker {
    pub url: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub upstream: ToolServer,
    pub data: tempfile::TempDir,
    _policies: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

/// A response: status and JSON body (Null if the body was not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The error code, if the body is an error.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl TestBroker {
    pub async fn spawn() -> TestBroker {
        Self::spawn_with(POLICY).await
    }

    pub async fn spawn_with(policy: &str) -> TestBroker {
        Self::spawn_tuned(policy, |_| {}).await
    }

    /// A broker whose configuration `tune` adjusts before start.
    pub async fn spawn_tuned(policy: &str, tune: impl FnOnce(&mut ServeConfig)) -> TestBroker {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("leash_broker=warn")
            .with_test_writer()
            .try_init();
        let upstream = ToolServer::spawn().await;
        let policies = tempfile::tempdir().unwrap();
        std::fs::write(
            policies.path().join("test.toml"),
            policy.replace("{UP}", &upstream.addr.to_string()),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        Self::start(upstream, policies, data, tune).await
    }

    /// Replaces the policy file (`{UP}` is the upstream's address); seen after a restart.
    pub fn write_policy(&self, policy: &str) {
        std::fs::write(
            self._policies.path().join("test.toml"),
            policy.replace("{UP}", &self.upstream.addr.to_string()),
        )
        .unwrap();
    }

    /// Stops this broker (counters and audit flushed) and starts a new one on the same
    /// data folder, policies and upstream: a restart.
    pub async fn restart(mut self) -> TestBroker {
        self.shutdown_in_place().await;
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().unwrap());
        let policies = std::mem::replace(&mut self._policies, tempfile::tempdir().unwrap());
        let upstream = std::mem::replace(&mut self.upstream, ToolServer::spawn().await);
        Self::start(upstream, policies, data, |_| {}).await
    }

    async fn start(
        upstream: ToolServer,
        policies: tempfile::TempDir,
        data: tempfile::TempDir,
        tune: impl FnOnce(&mut ServeConfig),
    ) -> TestBroker {
        let mut config = ServeConfig::new(policies.path().to_path_buf(), data.path().to_path_buf());
        config.admin_token = Some(ADMIN.to_string());
        config.sweep_interval = Duration::from_millis(50);
        config.webhook_first_retry = Duration::from_millis(20);
        config.mcp_refresh = Duration::from_millis(200);
        // Load tests hammer one agent; the rate limit has its own test.
        config.rate_limit = 0;
        // Revocation tests send many refused calls from one address; the throttle of
        // failed authentications has its own tests (limits.rs).
        config.auth_failure_limit = 0;
        tune(&mut config);
        let state = leash_broker::prepare(config, &|_| None)
            .await
            .expect("broker starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let running = state.clone();
        let done = tokio::spawn(async move {
            leash_broker::run(running, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestBroker {
            url,
            state,
            http: reqwest::Client::new(),
            upstream,
            data,
            _policies: policies,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Stops the server, waits until counters and audit are flushed, and hands back the
    /// data folder.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        self.shutdown_in_place().await;
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }

    async fn shutdown_in_place(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(reqwest::Method::GET, path, bearer, None).await
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, bearer, Some(body))
            .await
    }

    pub async fn agent(&self, agent: &str) -> String {
        let reply = self
            .post(
                &format!("/v1/agents/{agent}/credentials"),
                Some(ADMIN),
                json!({}),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        reply.body["credential"].as_str().unwrap().to_string()
    }

    pub async fn approver(&self, approver: &str) -> String {
        let reply = self
            .post(
                &format!("/v1/approvers/{approver}/credentials"),
                Some(ADMIN),
                json!({}),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        reply.body["credential"].as_str().unwrap().to_string()
    }

    /// Opens a task; returns (task id, token).
    pub async fn task(&self, credential: &str, tools: &[&str]) -> (String, String) {
        let reply = self
            .post(
                "/v1/tasks",
                Some(credential),
                json!({ "purpose": "test", "tools": tools }),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        (
            reply.body["task_id"].as_str().unwrap().to_string(),
            reply.body["token"].as_str().unwrap().to_string(),
        )
    }

    pub async fn call(&self, token: &str, tool: &str, args: Value) -> Reply {
        self.post(&format!("/v1/tools/{tool}/call"), Some(token), args)
            .await
    }

    /// The broker's public root key, read from the well-known endpoint.
    pub async fn public_key(&self) -> biscuit_auth::PublicKey {
        let keys = self.get("/.well-known/leash/keys", None).await;
        let text = keys.body["keys"][0]["public_key"].as_str().unwrap();
        text.parse().expect("public key in Biscuit's textual form")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Path of the built `leash` binary, next to this test executable's folder.
/// `scripts/test.sh` builds it before the tests run (a nested `cargo build` here would
/// wait forever on the lock the running `cargo test` holds).
pub fn leash_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("leash");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test.sh, or cargo build -p leash-broker first",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A `leash serve` process.
pub struct BrokerProcess {
    pub child: Child,
    pub url: String,
}

impl BrokerProcess {
    /// Starts `leash serve` on a free port and waits until /healthz answers.
    pub async fn start(policies: &Path, data: &Path) -> BrokerProcess {
        Self::start_env(policies, data, &[]).await
    }

    /// Like [`BrokerProcess::start`], with extra environment variables.
    pub async fn start_env(policies: &Path, data: &Path, env: &[(&str, String)]) -> BrokerProcess {
        Self::start_logged(policies, data, env, None).await
    }

    /// Like [`BrokerProcess::start_env`], writing the broker's log (stderr) to `log`.
    pub async fn start_logged(
        policies: &Path,
        data: &Path,
        env: &[(&str, String)],
        log: Option<&Path>,
    ) -> BrokerProcess {
        // reqwest is built without a crypto provider (Leash's clients bring their own).
        leash_sdk::tls::install_default_provider();
        let port = free_port();
        let mut command = Command::new(leash_binary());
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--policies")
            .arg(policies)
            .arg("--data")
            .arg(data)
            .env("LEASH_LOG", "warn")
            .env_remove("LEASH_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::null(),
            });
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/healthz")).await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "leash serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        BrokerProcess { child, url }
    }

    /// SIGKILL: no graceful anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `leash audit verify` on a data folder: (chain intact, what it printed).
pub fn audit_verify(data: &Path) -> (bool, String) {
    audit_verify_with(data, &[])
}

/// Runs `leash audit verify --data DATA ARGS…` (no LEASH_* from the test's environment).
pub fn audit_verify_with(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(leash_binary())
        .args(["audit", "verify", "--data"])
        .arg(data)
        .args(args)
        .env_remove("LEASH_DATABASE_URL")
        .env_remove("LEASH_AUDIT_CHECKPOINT_FILE")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A policy folder holding [`POLICY`] for `upstream`.
pub fn policy_dir(upstream: &ToolServer) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        POLICY.replace("{UP}", &upstream.addr.to_string()),
    )
    .unwrap();
    dir
}

/// A stateless 2026-07-28 MCP request to `URL/mcp` (`method` with `params`), with what
/// that protocol requires: `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` for a named
/// request and the per-request `_meta`. (Older protocols need `initialize` and a session.)
pub fn mcp_request(
    http: &reqwest::Client,
    url: &str,
    id: u64,
    method: &str,
    params: Value,
) -> reqwest::RequestBuilder {
    let mut params = params;
    // The request's own `_meta` entries (a client's capabilities, say) over the defaults.
    let mut meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    if let Some(given) = params["_meta"].as_object() {
        for (key, value) in given {
            meta[key] = value.clone();
        }
    }
    params["_meta"] = meta;
    let mut request = http
        .post(format!("{url}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params["name"].as_str() {
        request = request.header("mcp-name", name);
    }
    request.json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
}

/// Sends `request` and reads its body as JSON (any status).
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A port on 127.0.0.1 that nothing listens on, for a server a test starts later.
///
/// It is taken from outside the kernel's ephemeral range: a port the kernel handed out (as
/// `bind(0)` would) is also what it picks for outgoing connections, so between this call
/// and the server's own bind any connection of the suite's could take it (CI saw a
/// provider fail with EADDRINUSE that way). Each port is handed out once per run.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .map(|range| {
            range
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // Below the ephemeral range when there is room there, else above it.
    let (low, high) = match ephemeral[..] {
        [start, _] if start > LOWEST + 1_000 => (LOWEST, start),
        [_, end] if end < 64_535 => (end + 1, 65_536),
        _ => (LOWEST, 32_768),
    };
    let span = high - low;
    // Runs started at once (a developer's and CI's) start at different places.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let next = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (offset + next) % span;
        let port = u16::try_from(port).expect("a port number");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port outside the ephemeral range {ephemeral:?}");
}

/// Simple HTTP helpers against any base URL.
pub async fn post_json(url: &str, bearer: Option<&str>, body: Value) -> Reply {
    leash_sdk::tls::install_default_provider();
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// `token` with one more block appended offline, as a holder would.
pub fn attenuate(token: &str, code: &str) -> String {
    biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(code)
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap()
}

/// A child process spoken to a line at a time: told lines on its stdin, answering a
/// word (and maybe more) per line on its stdout. Killed on drop; a script that waits on
/// its stdin ends when this is dropped.
pub struct LineScript {
    child: tokio::process::Child,
    said: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    tell: tokio::process::ChildStdin,
    name: String,
}

impl LineScript {
    /// Runs `program script args…`, its stderr passed through.
    pub fn spawn(program: &Path, script: &Path, args: &[String]) -> LineScript {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(program)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("{} does not run: {err}", program.display()));
        let said = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let tell = child.stdin.take().unwrap();
        let name = script
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        LineScript {
            child,
            said,
            tell,
            name,
        }
    }

    /// Waits up to `limit` for the next line, which must start with `word`; the rest of
    /// that line, trimmed.
    pub async fn expect_within(&mut self, word: &str, limit: Duration) -> String {
        let line = tokio::time::timeout(limit, self.said.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} did not say {word} in time", self.name))
            .unwrap()
            .unwrap_or_default();
        let rest = line.trim().strip_prefix(word);
        rest.unwrap_or_else(|| panic!("{} said {line:?}, not {word}", self.name))
            .trim()
            .to_string()
    }

    /// [`LineScript::expect_within`] a minute.
    pub async fn expect(&mut self, word: &str) -> String {
        self.expect_within(word, Duration::from_secs(60)).await
    }

    /// Waits up to a minute for the next line, which must be exactly `line` (trimmed).
    pub async fn expect_line(&mut self, line: &str) {
        let rest = self.expect(line).await;
        assert!(
            rest.is_empty(),
            "{} said {line:?} followed by {rest:?}",
            self.name
        );
    }

    /// Tells the script one line.
    pub async fn tell(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.tell
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Waits up to a minute for the script to end, and requires that it succeeded.
    pub async fn finished(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not end in time", self.name))
            .unwrap();
        assert!(status.success(), "{} failed: {status}", self.name);
    }
}
