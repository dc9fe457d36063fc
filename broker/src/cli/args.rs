//! The command line: `leash serve`, `leash policy check`, `leash token inspect`,
//! `leash audit verify`, with the environment variables of DESIGN.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::ServeConfig;

/// Leash: task-bound capabilities for AI agents' tool calls.
#[derive(Parser, Debug)]
#[command(name = "leash", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker.
    Serve(Box<ServeArgs>),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Work with a task's signed evidence (`GET /v1/tasks/{id}/evidence`).
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Rotate and retire root keys (PostgreSQL deployments; needs LEASH_MASTER_KEY).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Local accounts: people who sign in without an OpenID Connect provider.
    #[command(subcommand)]
    Users(UsersCommand),
}

/// `leash evidence …`.
#[derive(Subcommand, Debug)]
pub enum EvidenceCommand {
    /// Check a task's evidence offline: the signature over its RFC 8785 canonical JSON,
    /// each audit row's hash, the counts, the checkpoint. Names everything that does not
    /// match; exits 1 if anything does not.
    Verify {
        /// The evidence document (JSON, as the broker answered it).
        file: PathBuf,
        /// The deployment's published keys: a file holding `/.well-known/leash/keys`'
        /// JSON, or its URL (http:// or https://).
        #[arg(
            long,
            env = "LEASH_KEYS",
            default_value = "http://127.0.0.1:7070/.well-known/leash/keys"
        )]
        keys: String,
    },
}

/// `leash users …`.
#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a local account. The password is read from standard input (its first
    /// line), or generated and printed once when standard input is a terminal or empty.
    Add {
        /// The user name (also the key of its `[users."NAME"]` grant).
        name: String,
        /// The person may decide approvals.
        #[arg(long)]
        approver: bool,
        /// The data folder holding the SQLite database.
        #[arg(long, env = "LEASH_DATA", default_value = "./data")]
        data: PathBuf,
        /// A PostgreSQL deployment instead (`postgres://…`).
        #[arg(long, env = "LEASH_DATABASE_URL")]
        database_url: Option<String>,
        /// The deployment's PostgreSQL schema.
        #[arg(long, env = "LEASH_DATABASE_SCHEMA", default_value = "leash")]
        database_schema: String,
    },
}

/// Where a PostgreSQL deployment's keys live.
#[derive(Args, Debug)]
pub struct DatabaseArgs {
    /// The deployment's database.
    #[arg(long, env = "LEASH_DATABASE_URL")]
    pub database_url: String,
    /// The deployment's schema.
    #[arg(long, env = "LEASH_DATABASE_SCHEMA", default_value = "leash")]
    pub database_schema: String,
    /// PEM file of extra CA certificates for the database's TLS (`sslmode` in the URL).
    #[arg(long, env = "LEASH_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
}

/// `leash keys …`.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Add a root key with the next id: new tokens use it; old tokens verify until they expire.
    Rotate(DatabaseArgs),
    /// Retire a root key everywhere: tokens signed with it stop verifying.
    Retire {
        /// The root key id to retire.
        kid: u32,
        /// Where the keys live.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `leash serve` options.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LEASH_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// The policy folder (every *.toml in it).
    #[arg(long, env = "LEASH_POLICIES", default_value = "./policies")]
    pub policies: PathBuf,
    /// The data folder: root keys, SQLite database, generated admin token.
    #[arg(long, env = "LEASH_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// A database URL instead of the embedded SQLite file.
    #[arg(long, env = "LEASH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// How often expired and idle tasks are swept, in milliseconds.
    #[arg(long, env = "LEASH_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
    /// Days an ended task's record and audit rows are kept; then they are pruned, only
    /// up to a signed audit checkpoint (which stays and anchors the rest of the chain).
    #[arg(long, env = "LEASH_TASK_RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u64).range(1..=36_500))]
    pub task_retention_days: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "LEASH_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Requests per second each agent may make (tool calls and task opening); 0 = no limit.
    #[arg(long, env = "LEASH_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,
    /// Burst size of the per-agent rate limit.
    #[arg(long, env = "LEASH_RATE_BURST", default_value_t = 2000)]
    pub rate_burst: u32,
    /// Undecided approvals one agent may have waiting (tasks, renewals, calls); past
    /// that its requests get 429 until approvers catch up.
    #[arg(
        long,
        env = "LEASH_MAX_PENDING_APPROVALS_PER_AGENT",
        default_value_t = 20
    )]
    pub max_pending_approvals_per_agent: i64,
    /// Tokens of one task that may be revoked one at a time (`POST /v1/tokens/revoke`);
    /// past that the task itself must be revoked or completed.
    #[arg(
        long,
        env = "LEASH_MAX_REVOKED_TOKENS_PER_TASK",
        default_value_t = 1000
    )]
    pub max_revoked_tokens_per_task: i64,
    /// Window, in seconds, of the per-call capability sent upstream (`Leash-Capability`).
    #[arg(long, env = "LEASH_CAPABILITY_TTL", default_value_t = 30)]
    pub capability_ttl_seconds: u64,
    /// Extra host names `/mcp` answers to (comma-separated); loopback and the listen
    /// address are always allowed. Others get 403 (DNS-rebinding protection).
    #[arg(long, env = "LEASH_MCP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub mcp_allowed_hosts: Vec<String>,
    /// How often upstream MCP tool lists are re-read, in seconds.
    #[arg(long, env = "LEASH_MCP_REFRESH_SECONDS", default_value_t = 30)]
    pub mcp_refresh_seconds: u64,
    /// PostgreSQL schema of this deployment; replicas of one deployment share it.
    #[arg(long, env = "LEASH_DATABASE_SCHEMA", default_value = "leash")]
    pub database_schema: String,
    /// A replica that has not heard from the others for this long (ms) refuses checked calls.
    #[arg(long, env = "LEASH_FEED_STALENESS_MS", default_value_t = 2000)]
    pub feed_staleness_ms: u64,
    /// Most client connections served at once; further ones wait in the listen queue.
    #[arg(long, env = "LEASH_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,
    /// Most connections one client address may hold at once; past that its new
    /// connections get 429 and are closed. 0 = no per-address cap.
    #[arg(long, env = "LEASH_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 512)]
    pub max_connections_per_address: usize,
    /// Most long-held requests (`?wait=` long-polls, `/v1/events`) one client address may
    /// hold at once; past that they get 429. 0 = no per-address cap. All addresses
    /// together may hold at most three quarters of --max-connections, so a quarter is
    /// always left for short requests (health checks, revokes, calls).
    #[arg(long, env = "LEASH_MAX_LONG_POLLS_PER_ADDRESS", default_value_t = 64)]
    pub max_long_polls_per_address: usize,
    /// Largest request head (request line and headers), in bytes; larger ones get 431.
    #[arg(long, env = "LEASH_MAX_HEADER_BYTES", default_value_t = 96 * 1024)]
    pub max_header_bytes: usize,
    /// Seconds a client has to send a request's headers, and then its body; slower
    /// clients are cut off (headers: connection closed; body: 408).
    #[arg(long, env = "LEASH_CLIENT_TIMEOUT_SECONDS", default_value_t = 10)]
    pub client_timeout_seconds: u64,
    /// Failed authentications per second allowed from one client address (burst: 10×);
    /// past that, its requests with a credential get 429 without being checked. 0 = no limit.
    #[arg(long, env = "LEASH_AUTH_FAILURE_LIMIT", default_value_t = 20)]
    pub auth_failure_limit: u32,
    /// Sign an audit checkpoint (the chain's head, with the root key) after this many
    /// events; 0: not by count.
    #[arg(long, env = "LEASH_AUDIT_CHECKPOINT_EVENTS", default_value_t = 100)]
    pub audit_checkpoint_events: u64,
    /// Sign an audit checkpoint this often, in seconds, when there are new events;
    /// 0: not by time. A graceful stop always signs one.
    #[arg(long, env = "LEASH_AUDIT_CHECKPOINT_SECONDS", default_value_t = 5)]
    pub audit_checkpoint_seconds: u64,
    /// Also append every checkpoint to this file (JSON lines, fsynced), kept outside the
    /// database so that database access alone cannot remove them.
    #[arg(long, env = "LEASH_AUDIT_CHECKPOINT_FILE")]
    pub audit_checkpoint_file: Option<PathBuf>,
    /// PEM file of extra CA certificates trusted (besides the system's roots) by every
    /// outbound connection: HTTP tools, MCP upstreams, the webhook, PostgreSQL.
    #[arg(long, env = "LEASH_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "LEASH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LEASH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The URL clients reach this broker at (the OAuth issuer; `<URL>/mcp` is the
    /// resource MCP access tokens are for). Unset: each request's Host names it.
    #[arg(long, env = "LEASH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Lifetime of an OAuth access token in seconds (at most 900; never beyond its
    /// task's window).
    #[arg(long, env = "LEASH_ACCESS_TOKEN_SECONDS", default_value_t = 900)]
    pub access_token_seconds: u64,
    /// Hosts whose client ID metadata documents may be fetched although they resolve to
    /// private or loopback addresses (comma-separated; none by default).
    #[arg(
        long,
        env = "LEASH_CLIENT_METADATA_PRIVATE_HOSTS",
        value_delimiter = ','
    )]
    pub client_metadata_private_hosts: Vec<String>,
}

impl ServeArgs {
    /// The server configuration; the admin token (`LEASH_ADMIN_TOKEN`) and the master key
    /// (`LEASH_MASTER_KEY`) come from the environment only (never flags: command lines are
    /// visible to other users).
    pub fn into_config(
        self,
        admin_token: Option<String>,
        master_key: Option<String>,
    ) -> ServeConfig {
        ServeConfig {
            listen: self.listen,
            policies: self.policies,
            data: self.data,
            database_url: self.database_url,
            admin_token,
            sweep_interval: Duration::from_millis(self.sweep_interval_ms.max(10)),
            task_retention: Duration::from_secs(self.task_retention_days * 24 * 3600),
            body_limit: self.body_limit,
            webhook_first_retry: Duration::from_millis(500),
            capability_ttl: Duration::from_secs(self.capability_ttl_seconds.clamp(1, 3600)),
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            max_revoked_tokens_per_task: self.max_revoked_tokens_per_task,
            max_pending_approvals_per_agent: self.max_pending_approvals_per_agent,
            mcp_allowed_hosts: self
                .mcp_allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            mcp_refresh: Duration::from_secs(self.mcp_refresh_seconds.max(1)),
            database_schema: self.database_schema,
            master_key,
            feed_staleness: Duration::from_millis(self.feed_staleness_ms.max(250)),
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address,
            max_long_polls_per_address: self.max_long_polls_per_address,
            max_header_bytes: self.max_header_bytes.clamp(8 * 1024, 1024 * 1024),
            client_timeout: Duration::from_secs(self.client_timeout_seconds.clamp(1, 600)),
            auth_failure_limit: self.auth_failure_limit,
            // From the environment only (main.rs), like the admin token.
            metrics_token: None,
            audit_checkpoint_events: self.audit_checkpoint_events,
            audit_checkpoint_interval: Duration::from_secs(self.audit_checkpoint_seconds),
            audit_checkpoint_file: self.audit_checkpoint_file,
            ca_bundle: self.ca_bundle,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            public_url: self
                .public_url
                .map(|url| url.trim().trim_end_matches('/').to_string()),
            access_token_ttl: Duration::from_secs(self.access_token_seconds.clamp(1, 900)),
            client_metadata_private_hosts: self.client_metadata_private_hosts,
        }
    }
}

/// `leash policy …`.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check a policy folder and point at every mistake.
    Check {
        /// The policy folder.
        #[arg(long, env = "LEASH_POLICIES", default_value = "./policies")]
        policies: PathBuf,
    },
}

/// `leash token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a token's blocks and revocation ids; verify it if the data folder has keys.
    Inspect {
        /// The token (base64). `-` reads it from standard input.
        token: String,
        /// The data folder holding the root keys.
        #[arg(long, env = "LEASH_DATA", default_value = "./data")]
        data: PathBuf,
    },
}

/// `leash audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the audit log: the hash chain (edited and deleted rows), every signed
    /// checkpoint, and that no row a checkpoint covers is missing at the end (truncation).
    Verify(AuditVerifyArgs),
}

/// `leash audit verify` options: the deployment to check, like `leash serve`'s.
#[derive(Args, Debug)]
pub struct AuditVerifyArgs {
    /// The data folder holding the SQLite database and the root keys.
    #[arg(long, env = "LEASH_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// A PostgreSQL deployment instead (`postgres://…`); its root keys are opened with
    /// LEASH_MASTER_KEY.
    #[arg(long, env = "LEASH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The deployment's PostgreSQL schema.
    #[arg(long, env = "LEASH_DATABASE_SCHEMA", default_value = "leash")]
    pub database_schema: String,
    /// A checkpoint file the broker appended to (`--audit-checkpoint-file`): its
    /// checkpoints are checked too, and must all still be in the database.
    #[arg(long, env = "LEASH_AUDIT_CHECKPOINT_FILE")]
    pub checkpoints: Option<PathBuf>,
}

/// An environment variable, if set.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
