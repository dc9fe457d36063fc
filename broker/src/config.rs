//! What `leash serve` is configured with: every setting, with DESIGN.md's defaults.
//! Read once at start (from the command line and the environment, see
//! [`crate::cli::args`]), never changed while serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `leash serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The policy folder.
    pub policies: PathBuf,
    /// The data folder (root keys, SQLite database, generated admin token).
    pub data: PathBuf,
    /// A database URL instead of the embedded SQLite file.
    pub database_url: Option<String>,
    /// The admin token; generated into the data folder when absent.
    pub admin_token: Option<String>,
    /// How often expired and idle tasks are swept.
    pub sweep_interval: Duration,
    /// How long an ended task's record and audit rows are kept (then pruned, only up to
    /// a signed checkpoint).
    pub task_retention: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// First backoff step of webhook retries (doubles each time).
    pub webhook_first_retry: Duration,
    /// Window of the per-call capability sent upstream in `Leash-Capability`.
    pub capability_ttl: Duration,
    /// Requests per second each agent may make (tool calls, task opening); 0 = no limit.
    pub rate_limit: u32,
    /// Burst size of the per-agent rate limit.
    pub rate_burst: u32,
    /// Tokens of one task that may be revoked one at a time.
    pub max_revoked_tokens_per_task: i64,
    /// Undecided approvals one agent may have waiting.
    pub max_pending_approvals_per_agent: i64,
    /// Extra host names `/mcp` answers to (besides loopback and the listen address).
    pub mcp_allowed_hosts: Vec<String>,
    /// How often upstream MCP servers' tool lists are re-read (besides on list_changed).
    pub mcp_refresh: Duration,
    /// PostgreSQL schema of this deployment (replicas of one deployment share it).
    pub database_schema: String,
    /// Key-encryption key of the root keys in PostgreSQL (`LEASH_MASTER_KEY`, 64 hex).
    pub master_key: Option<String>,
    /// A replica that has not heard from the others for longer refuses checked calls.
    pub feed_staleness: Duration,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Most connections one client address may hold (0: no per-address cap).
    pub max_connections_per_address: usize,
    /// Most long-polls and event streams one client address may hold (0: no cap); all
    /// together hold at most three quarters of `max_connections`.
    pub max_long_polls_per_address: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers, and then its body.
    pub client_timeout: Duration,
    /// Failed authentications per second allowed from one client address (0 = no limit).
    pub auth_failure_limit: u32,
    /// A scrape-only token for `GET /metrics` (`LEASH_METRICS_TOKEN`); the admin token
    /// works too.
    pub metrics_token: Option<String>,
    /// Sign an audit checkpoint after this many events (0: not by count).
    pub audit_checkpoint_events: u64,
    /// Sign an audit checkpoint this often when there are new events (0: not by time).
    pub audit_checkpoint_interval: Duration,
    /// Also append every checkpoint this broker signs to this file (JSON lines, fsynced),
    /// outside the database.
    pub audit_checkpoint_file: Option<PathBuf>,
    /// PEM file of extra CA certificates every outbound connection trusts, besides the
    /// platform's roots (`LEASH_CA_BUNDLE`).
    pub ca_bundle: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with `tls_key`; both or neither).
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The URL clients reach this broker at (`LEASH_PUBLIC_URL`, no trailing slash): the
    /// OAuth issuer, and `<public url>/mcp` the resource its access tokens are for. Unset,
    /// each request's own (allowed) Host names it.
    pub public_url: Option<String>,
    /// Lifetime of an OAuth access token (a task token; never beyond its task's window).
    pub access_token_ttl: Duration,
    /// Hosts whose client ID metadata documents may be fetched although they resolve to
    /// private or loopback addresses (`LEASH_CLIENT_METADATA_PRIVATE_HOSTS`; none by
    /// default).
    pub client_metadata_private_hosts: Vec<String>,
}

impl ServeConfig {
    /// Defaults of DESIGN.md for the given folders.
    pub fn new(policies: PathBuf, data: PathBuf) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            policies,
            data,
            database_url: None,
            admin_token: None,
            sweep_interval: Duration::from_secs(1),
            task_retention: Duration::from_secs(90 * 24 * 3600),
            body_limit: 1024 * 1024,
            webhook_first_retry: Duration::from_millis(500),
            capability_ttl: Duration::from_secs(30),
            rate_limit: 1000,
            rate_burst: 2000,
            max_revoked_tokens_per_task: 1000,
            max_pending_approvals_per_agent: 20,
            mcp_allowed_hosts: Vec::new(),
            mcp_refresh: Duration::from_secs(30),
            database_schema: "leash".into(),
            master_key: None,
            feed_staleness: Duration::from_secs(2),
            max_connections: 2048,
            max_connections_per_address: 512,
            max_long_polls_per_address: 64,
            max_header_bytes: 96 * 1024,
            client_timeout: Duration::from_secs(10),
            auth_failure_limit: 20,
            metrics_token: None,
            audit_checkpoint_events: 100,
            audit_checkpoint_interval: Duration::from_secs(5),
            audit_checkpoint_file: None,
            ca_bundle: None,
            tls_cert: None,
            tls_key: None,
            public_url: None,
            access_token_ttl: Duration::from_secs(900),
            client_metadata_private_hosts: Vec::new(),
        }
    }
}
