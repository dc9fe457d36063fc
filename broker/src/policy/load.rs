//! Reading a policy folder: every `*.toml` in it, merged, with every mistake
//! reported by file, line and column (not just the first one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::DeTable;

use super::fields::FileCtx;
use super::model::{Diagnostic, GrantHolder, Policy, PolicyErrors, Secrets, ToolPattern};
use super::toml_value::start;

/// Longest upstream timeout a tool may configure (5 minutes).
pub(super) const MAX_TIMEOUT_MS: i64 = 300_000;
/// Longest task window a grant may allow (7 days).
pub(super) const MAX_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// A grant's tool patterns with their places: (file index, offset, holder, name, patterns).
pub(super) type GrantPatterns = (usize, usize, GrantHolder, String, PlacedPatterns);
/// Tool patterns with the offset each was written at.
pub(super) type PlacedPatterns = Vec<(ToolPattern, usize)>;

/// `sha256:` and the hex SHA-256 over each file's name (without its folder) and text as
/// written (before `${NAME}` substitution), in load order: names the policy a task's
/// evidence was decided under, the same on every replica given the same files.
fn source_hash(sources: &[(PathBuf, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (path, text) in sources {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.len().to_string());
        hasher.update([0]);
        hasher.update(text.as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Loads every `*.toml` file of `dir` (sorted by name). `env` resolves `${NAME}`.
pub fn load_dir(dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Policy, PolicyErrors> {
    let fail = |message: String| {
        PolicyErrors(vec![Diagnostic {
            file: dir.to_path_buf(),
            line: 1,
            column: 1,
            message,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read the policy folder: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(fail("the policy folder holds no *.toml file".into()));
    }
    let mut sources = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            PolicyErrors(vec![Diagnostic {
                file: path.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read: {e}"),
            }])
        })?;
        sources.push((path, text));
    }
    load_sources(&sources, env)
}

/// Loads policy from `(file name, text)` pairs, as if they were files of one folder.
pub fn load_sources(
    sources: &[(PathBuf, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Policy, PolicyErrors> {
    // Every value `${ENV}` expands to is a secret the log must never show.
    let expanded = std::cell::RefCell::new(Vec::new());
    let recording = |name: &str| {
        let value = env(name);
        if let Some(value) = &value {
            expanded.borrow_mut().push(value.clone());
        }
        value
    };
    let env: &dyn Fn(&str) -> Option<String> = &recording;
    let mut diagnostics = Vec::new();
    let mut policy = Policy::default();
    // Where each tool and grant was defined, for duplicate and reference errors.
    let mut grant_patterns: Vec<GrantPatterns> = Vec::new();
    let mut tool_places: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut grant_places: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut user_places: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut group_places: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    // Every `upstream_auth.provider`, checked once all files are read.
    let mut provider_refs: Vec<(usize, usize, String)> = Vec::new();
    let mut sign_in_seen = false;
    let mut approvals_seen = false;

    for (index, (path, text)) in sources.iter().enumerate() {
        let mut file = FileCtx {
            path,
            source: text,
            diagnostics: &mut diagnostics,
        };
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(err) => {
                let offset = err.span().map_or(0, |s| s.start);
                file.error(offset, err.message().to_string());
                continue;
            }
        };
        for (key, value) in root.get_ref().iter() {
            match key.get_ref().as_ref() {
                "tools" => {
                    for (name, table) in file.section(value, "tools") {
                        let offset = start(name);
                        let name = name.get_ref().to_string();
                        if let Some((other, line)) = tool_places.get(&name) {
                            let first = sources[*other].0.display();
                            file.error(
                                offset,
                                format!("tool {name:?} is already defined at {first}:{line}"),
                            );
                            continue;
                        }
                        // Whichever is written first, a tool in an MCP server's namespace
                        // is a mistake (the server's tools are `NAME.tool`).
                        if let Some(server) = name.split('.').next()
                            && policy.mcp_servers.get(server).is_some_and(|s| s.prefixed)
                        {
                            file.error(
                                offset,
                                format!("tool {name:?} clashes with the tools of MCP server {server:?} ({server}.*)"),
                            );
                            continue;
                        }
                        if let Some((tool, auth_at)) = file.tool(&name, offset, table, env) {
                            tool_places.insert(name.clone(), (index, file.line(offset)));
                            if let (Some(at), Some(auth)) = (auth_at, &tool.upstream_auth) {
                                provider_refs.push((index, at, auth.provider.clone()));
                            }
                            policy.tools.insert(name, Arc::new(tool));
                        }
                    }
                }
                section @ ("agents" | "users" | "groups") => {
                    let holder = match section {
                        "agents" => GrantHolder::Agent,
                        "users" => GrantHolder::User,
                        _ => GrantHolder::Group,
                    };
                    for (name, table) in file.section(value, section) {
                        let offset = start(name);
                        let name = name.get_ref().to_string();
                        let places = match holder {
                            GrantHolder::Agent => &mut grant_places,
                            GrantHolder::User => &mut user_places,
                            GrantHolder::Group => &mut group_places,
                        };
                        if let Some((other, line)) = places.get(&name) {
                            let first = sources[*other].0.display();
                            let noun = holder.noun();
                            file.error(
                                offset,
                                format!("{noun} {name:?} is already defined at {first}:{line}"),
                            );
                            continue;
                        }
                        if let Some((grant, patterns)) = file.grant(holder, &name, offset, table) {
                            places.insert(name.clone(), (index, file.line(offset)));
                            grant_patterns.push((index, offset, holder, name.clone(), patterns));
                            let grants = match holder {
                                GrantHolder::Agent => &mut policy.grants,
                                GrantHolder::User => &mut policy.users,
                                GrantHolder::Group => &mut policy.groups,
                            };
                            grants.insert(name, Arc::new(grant));
                        }
                    }
                }
                "sign_in" => {
                    if sign_in_seen {
                        file.error(
                            start(key),
                            "[sign_in] is already defined in another file".into(),
                        );
                    } else if let Some(oidc) = file.sign_in(value, env) {
                        policy.oidc = Some(Arc::new(oidc));
                    }
                    sign_in_seen = true;
                }
                "approvals" => {
                    if approvals_seen {
                        file.error(
                            start(key),
                            "[approvals] is already defined in another file".into(),
                        );
                    } else if let Some(settings) = file.approvals(value, env) {
                        policy.approvals = settings;
                    }
                    approvals_seen = true;
                }
                "providers" => {
                    for (name, table) in file.section(value, "providers") {
                        let offset = start(name);
                        let name = name.get_ref().to_string();
                        if policy.providers.contains_key(&name) {
                            file.error(offset, format!("provider {name:?} is defined twice"));
                            continue;
                        }
                        if let Some(provider) = file.provider(&name, offset, table, env) {
                            policy.providers.insert(name, Arc::new(provider));
                        }
                    }
                }
                "mcp_servers" => {
                    for (name, table) in file.section(value, "mcp_servers") {
                        let offset = start(name);
                        let name = name.get_ref().to_string();
                        let Some((server, auth_at)) = file.mcp_server(&name, offset, table, env)
                        else {
                            continue;
                        };
                        // A server without a prefix has no namespace to clash with.
                        if policy.mcp_servers.contains_key(&name)
                            || server.prefixed
                                && policy
                                    .tools
                                    .keys()
                                    .any(|t| t.split('.').next() == Some(name.as_str()))
                        {
                            file.error(offset, format!("MCP server {name:?} is defined twice, or clashes with a tool prefix"));
                            continue;
                        }
                        // One server at most shares the policy's namespace: two could
                        // publish the same name, and a call would reach whichever was up.
                        if !server.prefixed
                            && let Some(other) =
                                policy.mcp_servers.values().find(|s| !s.prefixed)
                        {
                            file.error(offset, format!("MCP server {name:?} sets prefix = false, and so does {:?}: only one server may", other.name));
                            continue;
                        }
                        if let (Some(at), Some(auth)) = (auth_at, &server.upstream_auth) {
                            provider_refs.push((index, at, auth.provider.clone()));
                        }
                        policy.mcp_servers.insert(name, Arc::new(server));
                    }
                }
                other => file.error(
                    start(key),
                    format!(
                        "unknown section {other:?} (expected tools, agents, users, groups, sign_in, mcp_servers, providers, approvals)"
                    ),
                ),
            }
        }
    }

    // Every grant must name tools that exist.
    for (index, _, holder, agent, patterns) in &grant_patterns {
        let (path, text) = &sources[*index];
        let mut file = FileCtx {
            path,
            source: text,
            diagnostics: &mut diagnostics,
        };
        for (pattern, offset) in patterns {
            let known = policy.tools.keys().any(|tool| pattern.matches(tool))
                || policy.names_mcp_server(pattern);
            if !known {
                let shown = match pattern {
                    ToolPattern::Exact(name) => format!("tool {name:?}"),
                    ToolPattern::Prefix(prefix) => {
                        format!("tools \"{prefix}.*\" (no tool has that prefix)")
                    }
                };
                file.error(
                    *offset,
                    format!(
                        "{} {agent:?} is granted {shown}, which is not defined",
                        holder.noun()
                    ),
                );
            }
        }
    }

    for (index, offset, provider) in &provider_refs {
        if !policy.providers.contains_key(provider) {
            let (path, text) = &sources[*index];
            FileCtx {
                path,
                source: text,
                diagnostics: &mut diagnostics,
            }
            .error(
                *offset,
                format!(
                    "upstream_auth names provider {provider:?}, which is not defined in [providers]"
                ),
            );
        }
    }

    if diagnostics.is_empty() {
        policy.secrets = Secrets(expanded.take());
        policy.source_hash = source_hash(sources);
        Ok(policy)
    } else {
        diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(PolicyErrors(diagnostics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<Policy, PolicyErrors> {
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(name, text)| (PathBuf::from(name), text.to_string()))
            .collect();
        let env = |name: &str| (name == "SEARCH_API_KEY").then(|| "s3cret".to_string());
        load_sources(&sources, &env)
    }

    const GOOD: &str = r#"
[tools."web.search"]
description = "Search the web"
upstream = "http://127.0.0.1:9001/search"
timeout_ms = 10000
input_schema = { type = "object", required = ["query"], additionalProperties = false, properties = { query = { type = "string", maxLength = 200 } } }
upstream_headers = { Authorization = "Bearer ${SEARCH_API_KEY}" }

[agents.research-bot]
tools = ["web.search", "web.*"]
max_ttl_seconds = 900
idle_timeout_seconds = 300
max_calls = 100
checks = ['check if call($t), $t != "web.forbidden"']
"#;

    #[test]
    fn the_design_example_loads() {
        let policy = load(&[("a.toml", GOOD)]).unwrap();
        let tool = policy.tool("web.search").unwrap();
        assert_eq!(tool.upstream_headers[0].1, "Bearer s3cret");
        assert!(!format!("{tool:?}").contains("s3cret"));
        let grant = policy.grant("research-bot").unwrap();
        assert!(grant.allows("web.search"));
        assert_eq!(grant.max_calls, Some(100));
        assert_eq!(grant.checks.len(), 1);
    }

    #[test]
    fn the_design_example_records_its_expanded_secrets() {
        let policy = load(&[("a.toml", GOOD)]).unwrap();
        assert_eq!(policy.secrets.0, vec!["s3cret".to_string()]);
        assert!(!format!("{policy:?}").contains("s3cret"));
    }

    #[test]
    fn a_tool_in_an_mcp_servers_namespace_is_refused_in_either_order() {
        let server = "[mcp_servers.everything]\nurl = \"http://127.0.0.1:3001/mcp\"\n";
        let tool = "[tools.\"everything.echo\"]\nupstream = \"http://127.0.0.1:9/echo\"\ninput_schema = { type = \"object\" }\n";
        for files in [
            vec![("a.toml", server), ("b.toml", tool)],
            vec![("a.toml", tool), ("b.toml", server)],
            vec![("a.toml", &*format!("{server}{tool}"))],
            vec![("a.toml", &*format!("{tool}{server}"))],
        ] {
            let errors = load(&files).expect_err("a clash is a policy error").0;
            assert!(
                errors.iter().any(|d| d.message.contains("clashes")),
                "{errors:?}"
            );
        }
    }

    /// `command` starts a stdio server with only `PATH` and its `env` (`${VAR}` from the
    /// environment); a server has a url or a command, and url-only settings are refused
    /// with a command.
    #[test]
    fn a_stdio_server_has_a_command_and_its_own_environment() {
        let good = "[mcp_servers.files]\ncommand = [\"npx\", \"-y\", \"@modelcontextprotocol/server-filesystem\", \"/data\"]\nenv = { API_KEY = \"${SEARCH_API_KEY}\", MODE = \"read-only\" }\n";
        let policy = load(&[("a.toml", good)]).unwrap();
        let def = &policy.mcp_servers["files"];
        let command = def.command.as_ref().unwrap();
        assert_eq!(command.program, "npx");
        assert_eq!(
            command.args,
            ["-y", "@modelcontextprotocol/server-filesystem", "/data"]
        );
        assert_eq!(
            command.env,
            [
                ("API_KEY".to_string(), "s3cret".to_string()),
                ("MODE".to_string(), "read-only".to_string())
            ]
        );
        assert_eq!(def.url.as_str(), "stdio://files");
        assert!(!format!("{def:?}").contains("s3cret"), "{def:?}");
        assert_eq!(def.scrub("failed: s3cret"), "failed: [redacted]");
        for (wrong, says) in [
            ("command = []", "names no program"),
            ("command = \"npx\"", "array of strings"),
            (
                "command = [\"npx\"]\nurl = \"http://127.0.0.1:1/mcp\"",
                "both url and command",
            ),
            (
                "command = [\"npx\"]\nheaders = { A = \"b\" }",
                "not a command",
            ),
            (
                "command = [\"npx\"]\nenv = { \"1BAD\" = \"x\" }",
                "not a variable name",
            ),
            ("command = [\"npx\"]\nenv = { A = 1 }", "must be a string"),
            (
                "url = \"http://127.0.0.1:1/mcp\"\nenv = { A = \"b\" }",
                "a command's process",
            ),
            ("timeout_ms = 5", "no url (or command)"),
        ] {
            let text = format!("[mcp_servers.files]\n{wrong}\n");
            let errors = load(&[("a.toml", text.as_str())]).unwrap_err().0;
            assert!(
                errors.iter().any(|d| d.message.contains(says)),
                "{wrong}: {errors:?}"
            );
        }
    }

    /// `per_call` marks a server's own names (tools, prompts, `NAME.resources`) for
    /// per-call approval; a pattern outside the server's names is a mistake, not a no-op.
    #[test]
    fn per_call_names_the_servers_own_names() {
        use crate::policy::ToolApproval;
        let server = "[mcp_servers.docs]\nurl = \"http://127.0.0.1:3001/mcp\"\nper_call = [\"docs.resources\", \"docs.admin.*\"]\n";
        let policy = load(&[("a.toml", server)]).unwrap();
        let def = &policy.mcp_servers["docs"];
        assert_eq!(def.approval_of("docs.resources"), ToolApproval::PerCall);
        assert_eq!(def.approval_of("docs.admin.wipe"), ToolApproval::PerCall);
        assert_eq!(def.approval_of("docs.search"), ToolApproval::None);
        for wrong in ["web.search", "docs", "docs.*x", "resources"] {
            let text = server.replace("docs.admin.*", wrong);
            let errors = load(&[("a.toml", text.as_str())]).unwrap_err().0;
            assert!(
                errors.iter().any(|d| d.message.contains("per_call")),
                "{wrong}: {errors:?}"
            );
        }
        let unprefixed = "[mcp_servers.docs]\nurl = \"http://127.0.0.1:3001/mcp\"\nprefix = false\nper_call = [\"resources\", \"summarize\"]\n";
        let policy = load(&[("a.toml", unprefixed)]).unwrap();
        assert_eq!(
            policy.mcp_servers["docs"].approval_of("resources"),
            ToolApproval::PerCall
        );
        let dotted = unprefixed.replace("\"summarize\"", "\"docs.summarize\"");
        assert!(load(&[("a.toml", dotted.as_str())]).is_err());
    }

    /// `prefix = false`: no namespace to clash with, grants may name the server's tools
    /// (known only once they are discovered; undotted, so never by a wildcard), and the
    /// flag must be a boolean.
    #[test]
    fn a_server_without_a_prefix_exposes_its_own_names() {
        let server =
            "[mcp_servers.everything]\nurl = \"http://127.0.0.1:3001/mcp\"\nprefix = false\n";
        let tool = "[tools.\"everything.echo\"]\nupstream = \"http://127.0.0.1:9/echo\"\ninput_schema = { type = \"object\" }\n";
        let agent = "[agents.bot]\ntools = [\"echo\", \"everything.echo\"]\nmax_ttl_seconds = 60\n";
        let wildcard =
            "[agents.other]\ntools = [\"get.*\", \"get.weather\"]\nmax_ttl_seconds = 60\n";
        for files in [
            vec![("a.toml", server), ("b.toml", tool), ("c.toml", agent)],
            vec![("a.toml", tool), ("b.toml", server), ("c.toml", agent)],
        ] {
            let policy = load(&files).expect("no clash without a prefix");
            let def = &policy.mcp_servers["everything"];
            assert!(!def.prefixed);
            assert_eq!(def.exposed_name("echo").as_deref(), Some("echo"));
        }
        let prefixed = server.replace("prefix = false", "prefix = true");
        let policy = load(&[("a.toml", prefixed.as_str())]).unwrap();
        assert_eq!(
            policy.mcp_servers["everything"]
                .exposed_name("echo")
                .as_deref(),
            Some("everything.echo")
        );
        let errors = load(&[("a.toml", &*server.replace("false", "\"no\""))])
            .unwrap_err()
            .0;
        assert!(
            errors
                .iter()
                .any(|d| d.message.contains("prefix must be true or false")),
            "{errors:?}"
        );
        // Without any unprefixed server, an unknown name is still a mistake; with one,
        // so is a wildcard or a dotted name it cannot have.
        let errors = load(&[("a.toml", &*format!("{prefixed}{agent}"))])
            .unwrap_err()
            .0;
        assert!(
            errors.iter().any(|d| d.message.contains("tool \"echo\"")),
            "{errors:?}"
        );
        let second = server.replace("everything", "other");
        let errors = load(&[("a.toml", server), ("b.toml", second.as_str())])
            .unwrap_err()
            .0;
        assert!(
            errors
                .iter()
                .any(|d| d.message.contains("only one server may")),
            "{errors:?}"
        );
        let errors = load(&[("a.toml", &*format!("{server}{wildcard}"))])
            .unwrap_err()
            .0;
        for shown in ["\"get.*\"", "\"get.weather\""] {
            assert!(
                errors.iter().any(|d| d.message.contains(shown)),
                "{shown}: {errors:?}"
            );
        }
    }

    #[test]
    fn every_mistake_is_reported_with_its_line() {
        let bad = r#"
[tools."web.search"]
upstream = "ftp://nowhere"
colour = "blue"
input_schema = { type = "objekt" }

[agents.bot]
tools = ["web.search", "missing.tool"]
max_ttl_seconds = -5
checks = ["check if nonsense(("]
"#;
        let errors = load(&[("bad.toml", bad)]).unwrap_err().0;
        let lines: Vec<(usize, &str)> = errors
            .iter()
            .map(|d| (d.line, d.message.as_str()))
            .collect();
        let text = errors
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            lines.iter().any(|(l, m)| *l == 3 && m.contains("upstream")),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 4 && m.contains("unknown key \"colour\"")),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 5 && m.contains("not a valid JSON Schema")),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 9 && m.contains("max_ttl_seconds")),
            "{text}"
        );
        assert!(
            lines.iter().any(|(l, m)| *l == 10 && m.contains("checks")),
            "{text}"
        );
        assert!(text.starts_with("bad.toml:3:"), "{text}");
    }

    #[test]
    fn granting_an_undefined_tool_names_its_place() {
        let text = format!("{GOOD}\n[agents.other]\ntools = [\"nope.tool\"]\n");
        let errors = load(&[("a.toml", &text)]).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("\"nope.tool\""));
        assert_eq!(errors[0].line, 17);
    }

    #[test]
    fn missing_environment_variable_is_an_error_without_its_value() {
        let text = GOOD.replace("SEARCH_API_KEY", "NOT_SET_ANYWHERE");
        let errors = load(&[("a.toml", &text)]).unwrap_err().0;
        assert!(
            errors[0].message.contains("NOT_SET_ANYWHERE is not set"),
            "{errors:?}"
        );
    }

    #[test]
    fn duplicates_across_files_and_syntax_errors() {
        let errors = load(&[("a.toml", GOOD), ("b.toml", GOOD), ("c.toml", "[tools\n")])
            .unwrap_err()
            .0;
        let text = errors
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("b.toml:2:8: tool \"web.search\" is already defined at a.toml:2"),
            "{text}"
        );
        assert!(
            text.contains("b.toml:9:9: agent \"research-bot\" is already defined"),
            "{text}"
        );
        assert!(text.contains("c.toml:1:"), "{text}");
    }

    const PROVIDERS: &str = r#"
[providers.acme]
issuer = "https://id.acme.example"
client_id = "leash"
client_secret = "${SEARCH_API_KEY}"
token_exchange = true
scopes = ["offline_access"]
authorize_params = { prompt = "consent" }

[providers.plain]
authorize_url = "https://plain.example/authorize"
token_url = "https://plain.example/token"
client_id = "leash"

[tools."notes.read"]
upstream = "https://api.acme.example/notes"
input_schema = { type = "object" }
upstream_auth = { provider = "acme", scopes = ["notes:read"] }

[tools."ops.status"]
upstream = "https://api.plain.example/status"
input_schema = { type = "object" }
upstream_auth = { provider = "plain", grant = "client_credentials" }
"#;

    #[test]
    fn providers_and_upstream_auth_load() {
        use crate::policy::UpstreamGrant;
        let policy = load(&[("a.toml", PROVIDERS)]).unwrap();
        let acme = &policy.providers["acme"];
        assert_eq!(acme.issuer.as_deref(), Some("https://id.acme.example"));
        assert!(acme.token_exchange && acme.authorize_url.is_none());
        assert_eq!(acme.client_secret.as_deref(), Some("s3cret"));
        assert!(!format!("{acme:?}").contains("s3cret"));
        assert!(policy.secrets.0.contains(&"s3cret".to_string()));
        assert_eq!(
            acme.authorize_params,
            vec![("prompt".into(), "consent".into())]
        );
        let notes = policy
            .tool("notes.read")
            .unwrap()
            .upstream_auth
            .clone()
            .unwrap();
        assert_eq!(notes.provider, "acme");
        assert_eq!(notes.scopes, vec!["notes:read".to_string()]);
        assert_eq!(notes.grant, UpstreamGrant::User);
        let ops = policy
            .tool("ops.status")
            .unwrap()
            .upstream_auth
            .clone()
            .unwrap();
        assert_eq!(ops.grant, UpstreamGrant::ClientCredentials);
    }

    #[test]
    fn bad_providers_and_upstream_auth_are_named() {
        let cases = [
            (
                "[providers.x]\nclient_id = \"c\"\n",
                "needs issuer (for discovery) or both authorize_url and token_url",
            ),
            (
                "[providers.x]\nissuer = \"https://i.example\"\n",
                "needs client_id",
            ),
            (
                "[providers.x]\nissuer = \"ftp://i.example\"\nclient_id = \"c\"\n",
                "must be an http:// or https:// URL",
            ),
            (
                "[providers.x]\nissuer = \"https://i.example\"\nclient_id = \"c\"\nscopes = [\"a b\"]\n",
                "is not a valid OAuth scope",
            ),
            (
                "[providers.x]\nissuer = \"https://i.example\"\nclient_id = \"c\"\ntoken_exchange = \"yes\"\n",
                "token_exchange must be true or false",
            ),
            (
                "[providers.x]\nissuer = \"https://i.example\"\nclient_id = \"c\"\nauthorize_params = { state = \"fixed\" }\n",
                "may not set \"state\"",
            ),
            (
                "[providers.\"a.b\"]\nissuer = \"https://i.example\"\nclient_id = \"c\"\n",
                "is not a valid provider name",
            ),
            (
                "[tools.\"t.x\"]\nupstream = \"https://u.example\"\ninput_schema = { type = \"object\" }\nupstream_auth = { provider = \"nope\" }\n",
                "names provider \"nope\", which is not defined",
            ),
            (
                "[tools.\"t.x\"]\nupstream = \"https://u.example\"\ninput_schema = { type = \"object\" }\nupstream_auth = { scopes = [] }\n",
                "upstream_auth needs provider",
            ),
            (
                "[tools.\"t.x\"]\nupstream = \"https://u.example\"\ninput_schema = { type = \"object\" }\nupstream_auth = { provider = \"p\", grant = \"implicit\" }\n[providers.p]\nissuer = \"https://i.example\"\nclient_id = \"c\"\n",
                "grant must be \"user\" or \"client_credentials\"",
            ),
            (
                "[tools.\"t.x\"]\nupstream = \"https://u.example\"\ninput_schema = { type = \"object\" }\nupstream_headers = { Authorization = \"Bearer k\" }\nupstream_auth = { provider = \"p\" }\n[providers.p]\nissuer = \"https://i.example\"\nclient_id = \"c\"\n",
                "sets both upstream_auth and an Authorization header",
            ),
        ];
        for (text, expected) in cases {
            let errors = load(&[("bad.toml", text)]).unwrap_err().to_string();
            assert!(errors.contains(expected), "{text}\n=> {errors}");
        }
        // Defined in another file, in either order: fine.
        let tool = "[tools.\"t.x\"]\nupstream = \"https://u.example\"\ninput_schema = { type = \"object\" }\nupstream_auth = { provider = \"p\" }\n";
        let provider = "[providers.p]\nissuer = \"https://i.example\"\nclient_id = \"c\"\n";
        assert!(load(&[("a.toml", tool), ("b.toml", provider)]).is_ok());
        assert!(load(&[("a.toml", provider), ("b.toml", tool)]).is_ok());
        let twice = load(&[("a.toml", provider), ("b.toml", provider)])
            .unwrap_err()
            .to_string();
        assert!(twice.contains("provider \"p\" is defined twice"), "{twice}");
    }
}
