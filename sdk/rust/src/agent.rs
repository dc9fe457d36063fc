//! The agent side: open a task, call tools through the broker, renew, complete, and
//! hand narrower tokens to sub-agents.
//!
//! ```no_run
//! # async fn run() -> leash_sdk::Result<()> {
//! use leash_sdk::{Broker, TaskRequest};
//! let broker = Broker::new("http://127.0.0.1:7070", std::env::var("LEASH_CREDENTIAL").unwrap());
//! let task = broker
//!     .start_task(TaskRequest::new("find notes about biscuit", ["notes.search"]).ttl_seconds(300))
//!     .await?;
//! let hits = task.call("notes.search", serde_json::json!({"query": "biscuit"})).await?;
//! println!("{hits}");
//! task.complete().await?; // from here on, every token of the task is refused
//! # Ok(()) }
//! ```

use std::ops::Deref;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::{
    APPROVAL_HEADER, CallResult, ErrorBody, PendingApproval, RenewBody, TaskEnded, TaskIssued,
    TaskRequest, TaskView, TokenBody, TokenRevoked, ToolInfo, ToolList,
};
use crate::tls::TlsError;

/// How long to wait for a human approval by default.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a held call is repeated while its approval is pending.
const CALL_APPROVAL_POLL: Duration = Duration::from_millis(250);

impl TaskRequest {
    /// A request for `tools` (names or `prefix.*`) for `purpose`.
    pub fn new<I, S>(purpose: impl Into<String>, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TaskRequest {
            purpose: purpose.into(),
            tools: tools.into_iter().map(Into::into).collect(),
            ttl_seconds: None,
            checks: Vec::new(),
        }
    }

    /// The window, in seconds (default: the grant's maximum).
    pub fn ttl_seconds(mut self, ttl: i64) -> Self {
        self.ttl_seconds = Some(ttl);
        self
    }

    /// An extra Biscuit check to put into the task token.
    pub fn check(mut self, check: impl Into<String>) -> Self {
        self.checks.push(check.into());
        self
    }
}

/// The HTTP plumbing shared by [`Broker`] and [`Task`].
#[derive(Clone, Debug)]
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// Speaks `https://` with the platform's roots plus `ca_certificates`, follows no
    /// redirect and ignores environment proxies ([`crate::tls`]).
    fn new(url: &str, ca_certificates: &[CertificateDer<'static>]) -> Result<Self, TlsError> {
        let http = crate::tls::client_builder(ca_certificates)?
            .build()
            .map_err(|e| TlsError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            base: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// [`Client::new`] with the platform's roots only. Like `reqwest::Client::new`, it
    /// panics only if no client can be built at all (no TLS configuration), which does
    /// not depend on any input.
    fn platform(url: &str) -> Self {
        Self::new(url, &[]).expect("an HTTP client with the platform's roots builds")
    }

    fn request(&self, method: Method, path: &str, bearer: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer)
    }
}

/// Reads a response: 2xx bodies as `T`, errors as [`Error::Api`].
async fn read<T: DeserializeOwned>(response: reqwest::Response) -> Result<(StatusCode, T)> {
    let status = response.status();
    let bytes = response.bytes().await?;
    if status.is_success() {
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("{status}: {e}")))?;
        return Ok((status, body));
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Err(Error::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        }),
        Err(_) => Err(Error::Protocol(format!("{status} without an error body"))),
    }
}

/// A broker, as seen by one agent (its URL and agent credential).
#[derive(Clone)]
pub struct Broker {
    client: Client,
    credential: String,
    approval_timeout: Duration,
}

impl Broker {
    /// A broker at `url` (e.g. `http://127.0.0.1:7070`) for the agent holding `credential`.
    pub fn new(url: impl AsRef<str>, credential: impl Into<String>) -> Self {
        Broker {
            client: Client::platform(url.as_ref()),
            credential: credential.into(),
            approval_timeout: DEFAULT_APPROVAL_TIMEOUT,
        }
    }

    /// Trusts these CA certificates (DER) too, besides the platform's roots: for a broker
    /// whose certificate a private CA signed. Read a PEM file with
    /// [`crate::tls::load_ca_bundle`].
    pub fn with_ca_certificates(
        mut self,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Self> {
        self.client = Client::new(&self.client.base, certificates)?;
        Ok(self)
    }

    /// How long [`Broker::start_task`], [`Task::call`] and [`Task::renew`] wait for a
    /// human approval before giving up with [`Error::ApprovalTimeout`].
    pub fn approval_timeout(mut self, timeout: Duration) -> Self {
        self.approval_timeout = timeout;
        self
    }

    /// Opens a task. If its grant needs an approval, waits (long-polling) until an
    /// approver decides, up to the approval timeout.
    pub async fn start_task(&self, request: TaskRequest) -> Result<Task> {
        let response = self
            .client
            .request(Method::POST, "/v1/tasks", &self.credential)
            .json(&request)
            .send()
            .await?;
        let (_, view): (_, TaskIssued) = read(response).await?;
        let view = match view.state.as_str() {
            "active" => view,
            "pending_approval" => {
                self.wait_active(&view.task_id, view.approval_id.as_deref().unwrap_or(""))
                    .await?
            }
            other => {
                return Err(Error::NotActivated {
                    task_id: view.task_id,
                    state: other.to_string(),
                });
            }
        };
        let token = view
            .token
            .ok_or_else(|| Error::Protocol("an active task without a token".into()))?;
        Ok(Task {
            client: self.client.clone(),
            credential: Some(self.credential.clone()),
            task_id: view.task_id,
            token,
            expires_at: view.expires_at,
            approval_timeout: self.approval_timeout,
        })
    }

    /// Long-polls a pending task until it is decided; its token and window once active.
    async fn wait_active(&self, task_id: &str, approval_id: &str) -> Result<TaskIssued> {
        let deadline = Instant::now() + self.approval_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::ApprovalTimeout {
                    approval_id: approval_id.to_string(),
                });
            }
            let wait = left.as_secs().clamp(1, 60);
            let response = self
                .client
                .request(
                    Method::GET,
                    &format!("/v1/tasks/{task_id}?wait={wait}"),
                    &self.credential,
                )
                .send()
                .await?;
            let (_, view): (_, TaskView) = read(response).await?;
            match view.state.as_str() {
                "pending_approval" => continue,
                "active" => {
                    return Ok(TaskIssued {
                        task_id: view.task_id,
                        state: view.state,
                        token: view.token,
                        expires_at: Some(view.expires_at),
                        approval_id: None,
                    });
                }
                other => {
                    return Err(Error::NotActivated {
                        task_id: task_id.to_string(),
                        state: other.to_string(),
                    });
                }
            }
        }
    }
}

/// A task: its id and token, and what can be done with them.
pub struct Task {
    client: Client,
    /// The owner's credential, when this task was opened by this process (renewal needs it).
    credential: Option<String>,
    task_id: String,
    token: String,
    expires_at: Option<String>,
    approval_timeout: Duration,
}

impl Task {
    /// A task from a token handed over by another agent (a sub-agent's side of
    /// delegation). The token is used as is; the broker checks it on every call.
    pub fn from_token(url: impl AsRef<str>, token: impl Into<String>) -> Result<Task> {
        let token = token.into();
        let task_id = task_id_of(&token)?;
        Ok(Task {
            client: Client::platform(url.as_ref()),
            credential: None,
            task_id,
            token,
            expires_at: None,
            approval_timeout: DEFAULT_APPROVAL_TIMEOUT,
        })
    }

    /// Trusts these CA certificates (DER) too, besides the platform's roots (see
    /// [`Broker::with_ca_certificates`]).
    pub fn with_ca_certificates(
        mut self,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Self> {
        self.client = Client::new(&self.client.base, certificates)?;
        Ok(self)
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.task_id
    }

    /// The token (send it only to the broker, or attenuate it for a sub-agent).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// End of the window (RFC 3339), when known.
    pub fn expires_at(&self) -> Option<&str> {
        self.expires_at.as_deref()
    }

    /// Calls a tool with an arguments object; returns the upstream's JSON. A tool that
    /// needs a per-call approval is waited for and the call repeated with its approval,
    /// up to the approval timeout.
    pub async fn call(&self, tool: &str, args: Value) -> Result<Value> {
        // The name goes into the URL path: refuse anything but a tool name, so a
        // model-chosen name such as "../tasks/…/complete?" cannot reach another endpoint.
        let valid = !tool.is_empty()
            && tool.len() <= 128
            && tool.split('.').all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(Error::Token(format!("{tool:?} is not a tool name")));
        }
        let path = format!("/v1/tools/{tool}/call");
        let mut approval: Option<String> = None;
        let deadline = Instant::now() + self.approval_timeout;
        loop {
            let mut request = self
                .client
                .request(Method::POST, &path, &self.token)
                .json(&args);
            if let Some(id) = &approval {
                request = request.header(APPROVAL_HEADER, id);
            }
            let response = request.send().await?;
            if response.status() == StatusCode::ACCEPTED {
                let (_, pending): (_, PendingApproval) = read(response).await?;
                if Instant::now() >= deadline {
                    return Err(Error::ApprovalTimeout {
                        approval_id: pending.approval_id,
                    });
                }
                approval = Some(pending.approval_id);
                tokio::time::sleep(CALL_APPROVAL_POLL).await;
                continue;
            }
            let (_, done): (_, CallResult) = read(response).await?;
            return Ok(done.result);
        }
    }

    /// The tools this token may call, with their input schemas.
    pub async fn tools(&self) -> Result<Vec<ToolInfo>> {
        let response = self
            .client
            .request(Method::GET, "/v1/tools", &self.token)
            .send()
            .await?;
        let (_, list): (_, ToolList) = read(response).await?;
        Ok(list.tools)
    }

    /// Renews the window (needs the owner's credential: tasks from [`Broker::start_task`]).
    /// If the grant needs an approval, waits for it. The new token replaces the old one.
    pub async fn renew(&mut self, ttl_seconds: i64) -> Result<()> {
        let credential = self.credential.clone().ok_or_else(|| {
            Error::Token("only the owner agent can renew (this task came from a token)".into())
        })?;
        let path = format!("/v1/tasks/{}/renew", self.task_id);
        let response = self
            .client
            .request(Method::POST, &path, &credential)
            .json(&RenewBody { ttl_seconds })
            .send()
            .await?;
        let (status, issued): (_, TaskIssued) = read(response).await?;
        let (token, expires_at) = if status == StatusCode::ACCEPTED {
            let view = self
                .wait_new_token(&credential, issued.approval_id.as_deref().unwrap_or(""))
                .await?;
            (view.token, Some(view.expires_at))
        } else {
            (issued.token, issued.expires_at)
        };
        self.token = token.ok_or_else(|| Error::Protocol("a renewal without a token".into()))?;
        self.expires_at = expires_at;
        Ok(())
    }

    async fn wait_new_token(&self, credential: &str, approval_id: &str) -> Result<TaskView> {
        let deadline = Instant::now() + self.approval_timeout;
        while Instant::now() < deadline {
            let path = format!("/v1/tasks/{}", self.task_id);
            let (_, view): (_, TaskView) = read(
                self.client
                    .request(Method::GET, &path, credential)
                    .send()
                    .await?,
            )
            .await?;
            if view.state != "active" {
                return Err(Error::NotActivated {
                    task_id: self.task_id.clone(),
                    state: view.state,
                });
            }
            if view.token.as_deref().is_some_and(|t| t != self.token) {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(Error::ApprovalTimeout {
            approval_id: approval_id.to_string(),
        })
    }

    /// Completes the task: from the answer on, every token of it (attenuated ones
    /// included) is refused everywhere.
    pub async fn complete(&self) -> Result<()> {
        let bearer = self.credential.as_deref().unwrap_or(&self.token);
        let path = format!("/v1/tasks/{}/complete", self.task_id);
        let response = self
            .client
            .request(Method::POST, &path, bearer)
            .send()
            .await?;
        let _: (_, TaskEnded) = read(response).await?;
        Ok(())
    }

    /// A narrower token for a sub-agent, made offline (no broker round trip): this
    /// task's token plus a block of `checks`. See [`crate::attenuate`].
    pub fn attenuate(&self, checks: &[&str]) -> Result<String> {
        crate::capability::attenuate(&self.token, checks).map_err(Error::Token)
    }

    /// Revokes one token derived from this task (e.g. a sub-agent's), leaving the task
    /// and its other tokens alive.
    pub async fn revoke_token(&self, token: &str) -> Result<()> {
        let response = self
            .client
            .request(Method::POST, "/v1/tokens/revoke", &self.token)
            .json(&TokenBody {
                token: token.to_string(),
            })
            .send()
            .await?;
        let _: (_, TokenRevoked) = read(response).await?;
        Ok(())
    }

    /// A guard that completes the task when dropped. Best effort: the completion runs on
    /// the current Tokio runtime after the drop, and is lost if the process exits first.
    /// Prefer [`TaskGuard::complete`] (or [`Task::complete`]) where you can.
    pub fn guard(self) -> TaskGuard {
        TaskGuard { task: Some(self) }
    }
}

// Credentials and tokens never appear in `Debug` output (logs).
impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.client.base)
            .field("credential", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("url", &self.client.base)
            .field("task_id", &self.task_id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Completes its task when dropped (see [`Task::guard`]).
#[derive(Debug)]
pub struct TaskGuard {
    task: Option<Task>,
}

impl TaskGuard {
    /// Completes the task now and waits for the broker's answer.
    pub async fn complete(mut self) -> Result<()> {
        match self.task.take() {
            Some(task) => task.complete().await,
            None => Ok(()),
        }
    }
}

impl Deref for TaskGuard {
    type Target = Task;

    fn deref(&self) -> &Task {
        self.task
            .as_ref()
            .expect("the task is present until the guard is consumed")
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(task) = self.task.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(err) = task.complete().await {
                    tracing::warn!(task = %task.task_id, error = %err, "completing a dropped task failed");
                }
            });
        }
    }
}

/// The task id named by a token's authority block.
fn task_id_of(token: &str) -> Result<String> {
    let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|e| Error::Token(format!("not a Biscuit token: {e}")))?;
    let source = unverified
        .print_block_source(0)
        .map_err(|e| Error::Token(e.to_string()))?;
    source
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("task(\"")?
                .strip_suffix("\");")
                .map(String::from)
        })
        .ok_or_else(|| Error::Token("the token names no task: is it a credential?".into()))
}
