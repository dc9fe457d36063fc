//! The policy's types: tools, MCP servers, grants, approval settings, and the
//! diagnostics a policy folder can earn.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};

/// The merged policy of a policy folder.
#[derive(Debug, Default)]
pub struct Policy {
    /// Every configured tool, by name.
    pub tools: BTreeMap<String, Arc<ToolDef>>,
    /// Every agent's grant, by agent id.
    pub grants: BTreeMap<String, Arc<Grant>>,
    /// Every user's grant (`[users."name"]`), by user name: what the tasks a person
    /// starts for an MCP client may hold.
    pub users: BTreeMap<String, Arc<Grant>>,
    /// Grants by OpenID Connect group (`[groups.NAME]`), for people without a
    /// `[users]` grant of their own.
    pub groups: BTreeMap<String, Arc<Grant>>,
    /// `[sign_in.oidc]`: the deployment's OpenID provider, if people sign in through one.
    pub oidc: Option<Arc<OidcSettings>>,
    /// Settings of human approval.
    pub approvals: ApprovalSettings,
    /// Upstream MCP servers, by name; their tools appear as `NAME.tool`.
    pub mcp_servers: BTreeMap<String, Arc<McpServerDef>>,
    /// `[providers.NAME]`: OAuth providers Leash is a client of, for upstream credentials.
    pub providers: BTreeMap<String, Arc<ProviderDef>>,
    /// Every value a `${ENV}` reference expanded to: scrubbed from every log line.
    pub secrets: Secrets,
    /// `sha256:…` of the policy files as written (see `load`): named in task evidence.
    pub source_hash: String,
}

/// Values that must never be shown; `Debug` prints only how many there are.
#[derive(Default, Clone)]
pub struct Secrets(pub Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} values)", self.0.len())
    }
}

/// An upstream MCP server (`[mcp_servers.NAME]`).
#[derive(Clone)]
pub struct McpServerDef {
    /// The name, and (unless `prefix = false`) the prefix of its tools (`NAME.tool`).
    pub name: String,
    /// Its Streamable HTTP endpoint.
    pub url: reqwest::Url,
    /// Headers sent on every request to it (credentials the agent never sees).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long one call may take.
    pub timeout: Duration,
    /// `upstream_auth`: each call carries this provider token (the task's person's, or the
    /// deployment's), on a session of its own; discovery uses `headers`.
    pub upstream_auth: Option<UpstreamAuth>,
    /// Whether its tools are exposed as `NAME.tool` (the default) or, with
    /// `prefix = false` (one server of a policy at most), under the server's own undotted
    /// names. A name a policy tool already has stays the policy tool's (`Catalog`): a
    /// policy error, found when the server's tools are discovered.
    pub prefixed: bool,
    /// `per_call = ["pattern", …]`: the exposed names (tools, prompts, `NAME.resources`)
    /// whose every use needs a human approval, as `approval = "per_call"` on a tool.
    pub per_call: Vec<ToolPattern>,
    /// `command = [program, args…]` (with `env`): a stdio server Leash starts and keeps
    /// running, instead of one reached at `url` (which is then `stdio://NAME`).
    pub command: Option<StdioCommand>,
}

/// A stdio MCP server's process: what is run, and the only environment it gets besides
/// `PATH` (Leash's own environment holds its secrets, and none of it is passed on).
#[derive(Clone, PartialEq, Eq)]
pub struct StdioCommand {
    /// The program, found on `PATH` unless it has a slash.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// `env = { NAME = "value" }`, `${VAR}` substituted at load.
    pub env: Vec<(String, String)>,
}

/// Where a discovered name goes on its MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpTarget {
    /// The `[mcp_servers]` entry.
    pub server: String,
    /// What the name stands for there.
    pub kind: McpKind,
}

/// The kinds of name an MCP server publishes through Leash. They share one namespace
/// (`NAME.x`), so one grant pattern (`NAME.*`) covers a server's whole surface, and the
/// call facts tell them apart (`resource($uri)`, `prompt($name)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpKind {
    /// A tool, by its name on the server (`tools/call`).
    Tool(String),
    /// A prompt, by its name on the server (`prompts/get`, `completion/complete`).
    Prompt(String),
    /// Every resource of the server (`resources/read`, `completion/complete` of a
    /// template), exposed as [`RESOURCES`] under the server's prefix: which URIs a token
    /// may read is narrowed with `resource($uri)` checks.
    Resources,
}

/// The name of a server's resources (`NAME.resources`; `resources` without a prefix).
pub const RESOURCES: &str = "resources";

impl McpServerDef {
    /// Whether uses of the exposed name `name` need a per-call approval (`per_call`).
    pub fn approval_of(&self, name: &str) -> ToolApproval {
        if self.per_call.iter().any(|p| p.matches(name)) {
            ToolApproval::PerCall
        } else {
            ToolApproval::None
        }
    }

    /// The name Leash exposes for this server's tool `tool`; `None` for a dotted name of
    /// a server without a prefix. Wildcard grants (`prefix.*`) cover dotted names only, so
    /// such a server's tools are reached by exact names alone: its upstream cannot slip a
    /// tool into another server's namespace (`everything.wipe`) or under a grant's
    /// wildcard (`web.*`) by naming it so.
    pub fn exposed_name(&self, tool: &str) -> Option<String> {
        if self.prefixed {
            Some(format!("{}.{tool}", self.name))
        } else {
            (!tool.contains('.')).then(|| tool.to_string())
        }
    }
}

impl fmt::Debug for McpServerDef {
    /// Never prints header values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpServerDef")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field(
                "command",
                &self.command.as_ref().map(|c| (&c.program, &c.args)),
            )
            .finish()
    }
}

impl McpServerDef {
    /// `text` (an error from the MCP client, which may quote the request) with every
    /// secret this server's definition holds replaced: its URL's user, password and
    /// query, and its header values — where `${ENV}` secrets end up after expansion.
    pub fn scrub(&self, text: &str) -> String {
        let mut secrets: Vec<String> = Vec::new();
        if !self.url.username().is_empty() {
            secrets.push(self.url.username().to_string());
        }
        secrets.extend(self.url.password().map(str::to_string));
        secrets.extend(self.url.query().map(str::to_string));
        if let Some(command) = &self.command {
            secrets.extend(command.env.iter().map(|(_, value)| value.clone()));
        }
        for (_, value) in &self.headers {
            if let Ok(value) = value.to_str() {
                secrets.push(value.to_string());
                // `Bearer <secret>`: the secret alone may be quoted too.
                secrets.extend(value.split_whitespace().skip(1).map(str::to_string));
            }
        }
        let mut spelled: Vec<String> = secrets
            .iter()
            .flat_map(|secret| crate::logging::spellings(secret))
            .filter(|spelling| spelling.len() >= 4)
            .collect();
        // Longest first, so a secret inside a longer one is not left half-replaced.
        spelled.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_string();
        for secret in &spelled {
            out = out.replace(secret.as_str(), "[redacted]");
        }
        out
    }
}

/// One tool: an HTTP upstream with an input schema.
pub struct ToolDef {
    /// The tool's name (`web.search`).
    pub name: String,
    /// Human description, shown to agents.
    pub description: String,
    /// Where Leash POSTs the arguments. Agents never choose it.
    pub upstream: reqwest::Url,
    /// How long the upstream may take before the call fails with 504.
    pub timeout: Duration,
    /// Whether each call needs a human approval.
    pub approval: ToolApproval,
    /// The input JSON Schema as written.
    pub input_schema: serde_json::Value,
    /// The compiled schema.
    pub validator: jsonschema::Validator,
    /// Headers added to the upstream request (credentials the agent never sees).
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// For a name discovered on an upstream MCP server: the server and what the name
    /// stands for there (a tool, a prompt, or the server's resources).
    pub mcp: Option<McpTarget>,
    /// `upstream_auth`: the provider whose access token each call carries (instead of a
    /// static header).
    pub upstream_auth: Option<UpstreamAuth>,
}

/// `upstream_auth = { provider, scopes, grant }` of a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuth {
    /// The `[providers]` entry.
    pub provider: String,
    /// The scopes the tool needs at the provider.
    pub scopes: Vec<String>,
    /// Whose token: the task's user's, or the deployment's own.
    pub grant: UpstreamGrant,
}

/// Whose access token a tool's calls carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamGrant {
    /// The task's user's connected account (authorization code + PKCE, refreshed).
    User,
    /// The deployment's own token (`grant = "client_credentials"`).
    ClientCredentials,
}

/// `[providers.NAME]`: an OAuth 2 provider Leash is a client of. Endpoints are written
/// out, or read from the issuer's discovery document (`issuer`), written ones winning.
pub struct ProviderDef {
    /// The name (the key of `upstream_auth.provider`, shown on `/connections`).
    pub name: String,
    /// Shown to people (`display_name`, default the name).
    pub display_name: String,
    /// For discovery at `<issuer>/.well-known/openid-configuration` (or RFC 8414's
    /// `oauth-authorization-server`).
    pub issuer: Option<String>,
    /// The authorization endpoint.
    pub authorize_url: Option<reqwest::Url>,
    /// The token endpoint.
    pub token_url: Option<reqwest::Url>,
    /// RFC 7009 revocation endpoint: disconnecting and ending a task revoke there.
    pub revocation_url: Option<reqwest::Url>,
    /// Whether the token endpoint does RFC 8693 token exchange: each task then gets its own
    /// narrowed token, revoked when the task ends.
    pub token_exchange: bool,
    /// Leash's client id there.
    pub client_id: String,
    /// Leash's client secret there (a secret, never printed).
    pub client_secret: Option<String>,
    /// Scopes asked for at connect besides the tools' (e.g. `offline_access`).
    pub scopes: Vec<String>,
    /// Extra parameters of the authorization request (e.g. `prompt = "consent"`).
    pub authorize_params: Vec<(String, String)>,
}

impl fmt::Debug for ProviderDef {
    /// Never prints the client secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderDef")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("token_exchange", &self.token_exchange)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ToolDef {
    /// Never prints header values: they hold upstream credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolDef")
            .field("name", &self.name)
            .field("upstream", &self.upstream.as_str())
            .field("timeout", &self.timeout)
            .field("approval", &self.approval)
            .field(
                "upstream_headers",
                &self
                    .upstream_headers
                    .iter()
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Whether calls of a tool need approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolApproval {
    /// Calls go straight through (after the checks).
    None,
    /// Every call waits for a human approval.
    PerCall,
}

/// Whether tasks of a grant need approval before issuance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantApproval {
    /// Tasks are issued at once.
    None,
    /// A human approves each task before its token exists.
    Issuance,
}

/// What one agent may be granted.
#[derive(Debug)]
pub struct Grant {
    /// The agent id, or the user name of a `[users]` grant.
    pub agent: String,
    /// Tool names and `prefix.*` patterns.
    pub tools: Vec<ToolPattern>,
    /// Longest window a task may have.
    pub max_ttl: Duration,
    /// A task with no call for this long expires.
    pub idle_timeout: Option<Duration>,
    /// Most calls one task may make.
    pub max_calls: Option<u64>,
    /// Whether tasks need approval before issuance.
    pub approval: GrantApproval,
    /// Extra Datalog checks copied verbatim into every task token (already parsed once).
    pub checks: Vec<String>,
}

/// Whom a grant section is for: `[agents.ID]`, `[users."name"]` or `[groups.NAME]` (the
/// same fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantHolder {
    /// An agent.
    Agent,
    /// A person signing in.
    User,
    /// Everyone in an OpenID Connect group.
    Group,
}

impl GrantHolder {
    /// The policy section's name.
    pub fn section(self) -> &'static str {
        match self {
            GrantHolder::Agent => "agents",
            GrantHolder::User => "users",
            GrantHolder::Group => "groups",
        }
    }

    /// What one of them is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            GrantHolder::Agent => "agent",
            GrantHolder::User => "user",
            GrantHolder::Group => "group",
        }
    }
}

/// `[sign_in.oidc]`: people sign in through the deployment's OpenID provider.
pub struct OidcSettings {
    /// The issuer (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// Leash's client id at the provider.
    pub client_id: String,
    /// Leash's client secret (usually `${ENV}`; a secret, never printed).
    pub client_secret: Option<String>,
    /// Groups whose members are approvers.
    pub approver_groups: Vec<String>,
    /// The ID token claim listing a person's groups (default `groups`).
    pub groups_claim: String,
    /// The ID token claim that is the user name (default `email`).
    pub username_claim: String,
    /// Scopes asked for (default `openid email profile`).
    pub scopes: Vec<String>,
}

impl fmt::Debug for OidcSettings {
    /// Never prints the client secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("approver_groups", &self.approver_groups)
            .finish_non_exhaustive()
    }
}

/// An entry of a grant's `tools`: an exact name or a `prefix.*` wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPattern {
    /// Exactly this tool.
    Exact(String),
    /// Every tool whose name starts with this prefix followed by a dot.
    Prefix(String),
}

impl ToolPattern {
    /// Parses `name` or `prefix.*`; `None` if it is neither.
    pub fn parse(text: &str) -> Option<ToolPattern> {
        if let Some(prefix) = text.strip_suffix(".*") {
            crate::ids::is_tool_name(prefix).then(|| ToolPattern::Prefix(prefix.to_string()))
        } else {
            crate::ids::is_tool_name(text).then(|| ToolPattern::Exact(text.to_string()))
        }
    }

    /// Whether this pattern covers `tool`.
    pub fn matches(&self, tool: &str) -> bool {
        match self {
            ToolPattern::Exact(name) => name == tool,
            ToolPattern::Prefix(prefix) => tool
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        }
    }
}

impl Grant {
    /// Whether this grant covers `tool`.
    pub fn allows(&self, tool: &str) -> bool {
        self.tools.iter().any(|pattern| pattern.matches(tool))
    }
}

/// The `[approvals]` section.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    /// An undecided approval counts as denied after this.
    pub expire_after: Duration,
    /// Where approval requests and decisions are POSTed.
    pub webhook: Option<reqwest::Url>,
    /// HMAC key of the webhook signature.
    pub webhook_secret: Option<String>,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            expire_after: Duration::from_secs(900),
            webhook: None,
            webhook_secret: None,
        }
    }
}

impl Policy {
    /// The tool of that exact name.
    pub fn tool(&self, name: &str) -> Option<&Arc<ToolDef>> {
        self.tools.get(name)
    }

    /// The grant of that agent.
    pub fn grant(&self, agent: &str) -> Option<&Arc<Grant>> {
        self.grants.get(agent)
    }

    /// The grant a task is issued under: its user's when a person started it for a
    /// client (their `[users]` grant, or that of the group recorded for the task),
    /// otherwise its agent's.
    pub fn grant_for(
        &self,
        agent: &str,
        user: Option<&str>,
        group: Option<&str>,
    ) -> Option<&Arc<Grant>> {
        match (user, group) {
            (Some(_), Some(group)) => self.groups.get(group),
            (Some(user), None) => self.users.get(user),
            (None, _) => self.grants.get(agent),
        }
    }

    /// A person's grant: their own `[users."name"]` if there is one, else that of the
    /// first of their `groups` (in the policy's alphabetical order) with a
    /// `[groups.NAME]` grant — with that group's name.
    pub fn person_grant(
        &self,
        user: &str,
        groups: &[String],
    ) -> Option<(Option<String>, Arc<Grant>)> {
        if let Some(grant) = self.users.get(user) {
            return Some((None, grant.clone()));
        }
        self.groups
            .iter()
            .find(|(name, _)| groups.contains(name))
            .map(|(name, grant)| (Some(name.clone()), grant.clone()))
    }

    /// Whether `pattern` can only be checked when an MCP server's tools are discovered:
    /// it is in a prefixed server's namespace, or it is an undotted name that a server
    /// without a prefix may have (such a server exposes no other kind).
    pub fn names_mcp_server(&self, pattern: &ToolPattern) -> bool {
        let name = match pattern {
            ToolPattern::Exact(name) => name
                .split_once('.')
                .map_or(name.as_str(), |(server, _)| server),
            ToolPattern::Prefix(prefix) => prefix.split('.').next().unwrap_or(prefix),
        };
        let unprefixed_may_have = matches!(pattern, ToolPattern::Exact(name) if !name.contains('.'))
            && self.mcp_servers.values().any(|server| !server.prefixed);
        self.mcp_servers
            .get(name)
            .is_some_and(|server| server.prefixed)
            || unprefixed_may_have
    }

    /// The longest window of any grant: nothing a task does can outlast it.
    pub fn longest_ttl(&self) -> Duration {
        self.grants
            .values()
            .map(|grant| grant.max_ttl)
            .max()
            .unwrap_or(Duration::from_secs(3600))
    }
}

/// One mistake in a policy file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every mistake found in a policy folder.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyErrors(pub Vec<Diagnostic>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server without a prefix exposes undotted names only: a wildcard grant covers
    /// dotted names, and must not reach what that upstream chooses to call its tools.
    #[test]
    fn a_server_without_a_prefix_exposes_no_dotted_name() {
        let server = |prefixed| McpServerDef {
            name: "plain".into(),
            url: reqwest::Url::parse("http://127.0.0.1:9/mcp").unwrap(),
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
            upstream_auth: None,
            prefixed,
            per_call: Vec::new(),
            command: None,
        };
        assert_eq!(
            server(true).exposed_name("a.b").as_deref(),
            Some("plain.a.b")
        );
        assert_eq!(server(false).exposed_name("echo").as_deref(), Some("echo"));
        assert_eq!(server(false).exposed_name("everything.wipe"), None);
        let wildcard = ToolPattern::parse("everything.*").unwrap();
        assert!(wildcard.matches("everything.wipe") && !wildcard.matches("echo"));
    }

    #[test]
    fn scrub_removes_every_secret_of_an_mcp_server_definition() {
        let def = McpServerDef {
            name: "vault".into(),
            url: reqwest::Url::parse("http://svc:pa%2Fss-w0rd@127.0.0.1:9/mcp?key=s3cr3t-key")
                .unwrap(),
            headers: vec![(
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("Bearer tok-123456"),
            )],
            timeout: Duration::from_secs(1),
            upstream_auth: None,
            prefixed: true,
            per_call: Vec::new(),
            command: None,
        };
        let error = format!(
            "error sending request for url ({}): header Bearer tok-123456; token tok-123456; pass pa/ss-w0rd",
            def.url
        );
        let clean = def.scrub(&error);
        for secret in ["pa%2Fss-w0rd", "pa/ss-w0rd", "s3cr3t-key", "tok-123456"] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        assert!(clean.contains("127.0.0.1:9/mcp"), "{clean}");
    }

    #[test]
    fn wildcards_match_whole_segments_only() {
        let pattern = ToolPattern::parse("everything.*").unwrap();
        assert!(pattern.matches("everything.echo"));
        assert!(!pattern.matches("everythingelse.echo"));
        assert!(!pattern.matches("everything."));
        assert!(!pattern.matches("everything"));
        assert_eq!(ToolPattern::parse("*"), None);
        assert_eq!(ToolPattern::parse("a.*.b"), None);
    }
}
