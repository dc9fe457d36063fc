//! Reading a policy folder: every `*.toml` in it, merged, with every mistake
//! reported by file, line and column (not just the first one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::toml_value::{line_col, start, to_json};
use super::{
    ApprovalSettings, Diagnostic, Grant, GrantApproval, McpServerDef, Policy, PolicyErrors,
    Secrets, ToolApproval, ToolDef, ToolPattern,
};
use crate::ids::{is_principal_name, is_tool_name};

/// Longest upstream timeout a tool may configure (5 minutes).
const MAX_TIMEOUT_MS: i64 = 300_000;
/// Longest task window a grant may allow (7 days).
const MAX_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// A grant's tool patterns with their places: (file index, offset, agent, patterns).
type GrantPatterns = (usize, usize, String, PlacedPatterns);
/// Tool patterns with the offset each was written at.
type PlacedPatterns = Vec<(ToolPattern, usize)>;

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
                            && policy.mcp_servers.contains_key(server)
                        {
                            file.error(
                                offset,
                                format!("tool {name:?} clashes with the tools of MCP server {server:?} ({server}.*)"),
                            );
                            continue;
                        }
                        if let Some(tool) = file.tool(&name, offset, table, env) {
                            tool_places.insert(name.clone(), (index, file.line(offset)));
                            policy.tools.insert(name, Arc::new(tool));
                        }
                    }
                }
                "agents" => {
                    for (name, table) in file.section(value, "agents") {
                        let offset = start(name);
                        let name = name.get_ref().to_string();
                        if let Some((other, line)) = grant_places.get(&name) {
                            let first = sources[*other].0.display();
                            file.error(
                                offset,
                                format!("agent {name:?} is already defined at {first}:{line}"),
                            );
                            continue;
                        }
                        if let Some((grant, patterns)) = file.grant(&name, offset, table) {
                            grant_places.insert(name.clone(), (index, file.line(offset)));
                            grant_patterns.push((index, offset, name.clone(), patterns));
                            policy.grants.insert(name, Arc::new(grant));
                        }
                    }
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
                "mcp_servers" => {
                    for (name, table) in file.section(value, "mcp_servers") {
                        let offset = start(name);
                        let name = name.get_ref().to_string();
                        if policy.mcp_servers.contains_key(&name)
                            || policy
                                .tools
                                .keys()
                                .any(|t| t.split('.').next() == Some(name.as_str()))
                        {
                            file.error(offset, format!("MCP server {name:?} is defined twice, or clashes with a tool prefix"));
                            continue;
                        }
                        if let Some(server) = file.mcp_server(&name, offset, table, env) {
                            policy.mcp_servers.insert(name, Arc::new(server));
                        }
                    }
                }
                other => file.error(
                    start(key),
                    format!(
                        "unknown section {other:?} (expected tools, agents, mcp_servers, approvals)"
                    ),
                ),
            }
        }
    }

    // Every grant must name tools that exist.
    for (index, _, agent, patterns) in &grant_patterns {
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
                    format!("agent {agent:?} is granted {shown}, which is not defined"),
                );
            }
        }
    }

    if diagnostics.is_empty() {
        policy.secrets = Secrets(expanded.take());
        Ok(policy)
    } else {
        diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(PolicyErrors(diagnostics))
    }
}

/// One file being read: its text, for positions, and the shared list of mistakes.
struct FileCtx<'a> {
    path: &'a Path,
    source: &'a str,
    diagnostics: &'a mut Vec<Diagnostic>,
}

type Fields<'t, 'i> = BTreeMap<&'t str, &'t Spanned<DeValue<'i>>>;

impl<'a> FileCtx<'a> {
    fn error(&mut self, offset: usize, message: String) {
        let (line, column) = line_col(self.source, offset);
        self.diagnostics.push(Diagnostic {
            file: self.path.to_path_buf(),
            line,
            column,
            message,
        });
    }

    fn line(&self, offset: usize) -> usize {
        line_col(self.source, offset).0
    }

    /// The entries of a `[tools]`-like section: a table of tables.
    fn section<'t, 'i>(
        &mut self,
        value: &'t Spanned<DeValue<'i>>,
        what: &str,
    ) -> Vec<(&'t Spanned<toml::de::DeString<'i>>, &'t DeTable<'i>)> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(start(value), format!("{what} must be a table"));
            return Vec::new();
        };
        let mut entries = Vec::new();
        for (name, entry) in table.iter() {
            match entry.get_ref().as_table() {
                Some(inner) => entries.push((name, inner)),
                None => self.error(
                    start(name),
                    format!("{what}.{} must be a table", name.get_ref()),
                ),
            }
        }
        entries
    }

    /// The keys of `table`, reporting every key not in `allowed`.
    fn fields<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        allowed: &[&str],
        what: &str,
    ) -> Fields<'t, 'i> {
        let mut fields = BTreeMap::new();
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            if allowed.contains(&name) {
                fields.insert(name, value);
            } else {
                self.error(
                    start(key),
                    format!(
                        "unknown key {name:?} in {what} (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        fields
    }

    fn string(
        &mut self,
        fields: &Fields<'_, '_>,
        key: &str,
        what: &str,
    ) -> Option<(String, usize)> {
        let value = fields.get(key)?;
        match value.get_ref().as_str() {
            Some(s) => Some((s.to_string(), start(value))),
            None => {
                self.error(start(value), format!("{what}.{key} must be a string"));
                None
            }
        }
    }

    fn integer(
        &mut self,
        fields: &Fields<'_, '_>,
        key: &str,
        what: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let value = fields.get(key)?;
        let parsed = value
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(
                    start(value),
                    format!("{what}.{key} must be an integer from {min} to {max}"),
                );
                None
            }
        }
    }

    fn strings(
        &mut self,
        fields: &Fields<'_, '_>,
        key: &str,
        what: &str,
    ) -> Option<Vec<(String, usize)>> {
        let value = fields.get(key)?;
        let Some(items) = value.get_ref().as_array() else {
            self.error(
                start(value),
                format!("{what}.{key} must be an array of strings"),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s.to_string(), start(item))),
                None => self.error(start(item), format!("{what}.{key} must hold only strings")),
            }
        }
        Some(out)
    }

    /// Replaces every `${NAME}` in `text` with the environment variable's value.
    fn substitute(
        &mut self,
        text: &str,
        offset: usize,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(begin) = rest.find("${") {
            out.push_str(&rest[..begin]);
            let after = &rest[begin + 2..];
            let Some(end) = after.find('}') else {
                self.error(offset, "unterminated ${ in value".into());
                return None;
            };
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                self.error(
                    offset,
                    format!("${{{name}}} is not a valid environment variable reference"),
                );
                return None;
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None => {
                    self.error(offset, format!("environment variable {name} is not set"));
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    fn tool(
        &mut self,
        name: &str,
        offset: usize,
        table: &DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ToolDef> {
        let what = format!("tools.{name:?}");
        let before = self.diagnostics.len();
        if !is_tool_name(name) {
            self.error(offset, format!("{name:?} is not a valid tool name (dot-separated ASCII letters, digits, - and _)"));
        }
        let fields = self.fields(
            table,
            &[
                "description",
                "upstream",
                "timeout_ms",
                "approval",
                "input_schema",
                "upstream_headers",
            ],
            &what,
        );
        let description = self
            .string(&fields, "description", &what)
            .map(|(s, _)| s)
            .unwrap_or_default();
        let upstream = match self.string(&fields, "upstream", &what) {
            Some((url, at)) => match reqwest::Url::parse(&url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                    Some(url)
                }
                _ => {
                    self.error(
                        at,
                        format!("{what}.upstream must be an http:// or https:// URL"),
                    );
                    None
                }
            },
            None => {
                if !fields.contains_key("upstream") {
                    self.error(offset, format!("{what} has no upstream"));
                }
                None
            }
        };
        let timeout_ms = self
            .integer(&fields, "timeout_ms", &what, 1, MAX_TIMEOUT_MS)
            .unwrap_or(10_000);
        let approval = match self.string(&fields, "approval", &what) {
            None => ToolApproval::None,
            Some((s, _)) if s == "none" => ToolApproval::None,
            Some((s, _)) if s == "per_call" => ToolApproval::PerCall,
            Some((_, at)) => {
                self.error(
                    at,
                    format!("{what}.approval must be \"none\" or \"per_call\""),
                );
                ToolApproval::None
            }
        };
        let (input_schema, validator) = match fields.get("input_schema") {
            None => {
                self.error(offset, format!("{what} has no input_schema"));
                (serde_json::Value::Null, None)
            }
            Some(value) => match to_json(value.get_ref()) {
                Err(message) => {
                    self.error(start(value), format!("{what}.input_schema: {message}"));
                    (serde_json::Value::Null, None)
                }
                Ok(schema) => match crate::policy::input_schema::compile(&schema) {
                    Ok(validator) => (schema, Some(validator)),
                    Err(message) => {
                        self.error(
                            start(value),
                            format!("{what}.input_schema is not a valid JSON Schema: {message}"),
                        );
                        (schema, None)
                    }
                },
            },
        };
        let upstream_headers = match fields.get("upstream_headers") {
            Some(value) => self.header_table(value, &format!("{what}.upstream_headers"), env),
            None => Vec::new(),
        };
        if self.diagnostics.len() > before {
            return None;
        }
        Some(ToolDef {
            name: name.to_string(),
            description,
            upstream: upstream?,
            timeout: Duration::from_millis(timeout_ms as u64),
            approval,
            input_schema,
            validator: validator?,
            upstream_headers,
            mcp: None,
        })
    }

    /// A table of header name → value (with `${ENV}`), values marked sensitive and never echoed.
    fn header_table(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        what: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        let Some(headers) = value.get_ref().as_table() else {
            self.error(start(value), format!("{what} must be a table of strings"));
            return out;
        };
        for (header, content) in headers.iter() {
            let at = start(content);
            let Ok(header_name) = HeaderName::try_from(header.get_ref().as_ref()) else {
                self.error(
                    start(header),
                    format!("{:?} is not a valid HTTP header name", header.get_ref()),
                );
                continue;
            };
            let Some(text) = content.get_ref().as_str() else {
                self.error(at, format!("{what}.{header_name} must be a string"));
                continue;
            };
            let Some(text) = self.substitute(text, at, env) else {
                continue;
            };
            match HeaderValue::try_from(text) {
                Ok(mut header_value) => {
                    header_value.set_sensitive(true);
                    out.push((header_name, header_value));
                }
                // The value may hold a secret: never echo it.
                Err(_) => self.error(
                    at,
                    format!("{what}.{header_name} is not a valid header value"),
                ),
            }
        }
        out
    }

    fn mcp_server(
        &mut self,
        name: &str,
        offset: usize,
        table: &DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<McpServerDef> {
        let what = format!("mcp_servers.{name:?}");
        let before = self.diagnostics.len();
        if !is_principal_name(name) || name.contains('.') {
            self.error(
                offset,
                format!("{name:?} is not a valid MCP server name (ASCII letters, digits, - and _)"),
            );
        }
        let fields = self.fields(table, &["url", "headers", "timeout_ms"], &what);
        let url = match self.string(&fields, "url", &what) {
            Some((text, at)) => match self
                .substitute(&text, at, env)
                .map(|u| reqwest::Url::parse(&u))
            {
                Some(Ok(url))
                    if matches!(url.scheme(), "http" | "https") && url.host().is_some() =>
                {
                    Some(url)
                }
                Some(_) => {
                    self.error(at, format!("{what}.url must be an http:// or https:// URL"));
                    None
                }
                None => None,
            },
            None => {
                if !fields.contains_key("url") {
                    self.error(offset, format!("{what} has no url"));
                }
                None
            }
        };
        let timeout_ms = self
            .integer(&fields, "timeout_ms", &what, 1, MAX_TIMEOUT_MS)
            .unwrap_or(30_000);
        let headers = match fields.get("headers") {
            Some(value) => self.header_table(value, &format!("{what}.headers"), env),
            None => Vec::new(),
        };
        if self.diagnostics.len() > before {
            return None;
        }
        Some(McpServerDef {
            name: name.to_string(),
            url: url?,
            headers,
            timeout: Duration::from_millis(timeout_ms as u64),
        })
    }

    fn grant(
        &mut self,
        agent: &str,
        offset: usize,
        table: &DeTable<'_>,
    ) -> Option<(Grant, PlacedPatterns)> {
        let what = format!("agents.{agent:?}");
        let before = self.diagnostics.len();
        if !is_principal_name(agent) {
            self.error(offset, format!("{agent:?} is not a valid agent id (ASCII letters, digits, -, _ and ., at most 64)"));
        }
        let fields = self.fields(
            table,
            &[
                "tools",
                "max_ttl_seconds",
                "idle_timeout_seconds",
                "max_calls",
                "approval",
                "checks",
            ],
            &what,
        );
        let mut patterns = Vec::new();
        match self.strings(&fields, "tools", &what) {
            None if !fields.contains_key("tools") => {
                self.error(offset, format!("{what} has no tools"))
            }
            None => {}
            Some(tools) => {
                if tools.is_empty() {
                    self.error(offset, format!("{what}.tools is empty"));
                }
                for (text, at) in tools {
                    match ToolPattern::parse(&text) {
                        Some(pattern) => patterns.push((pattern, at)),
                        None => self.error(
                            at,
                            format!("{text:?} is neither a tool name nor a \"prefix.*\" pattern"),
                        ),
                    }
                }
            }
        }
        let max_ttl = self
            .integer(&fields, "max_ttl_seconds", &what, 1, MAX_TTL_SECONDS)
            .unwrap_or(900);
        let idle = self.integer(&fields, "idle_timeout_seconds", &what, 1, MAX_TTL_SECONDS);
        let max_calls = self.integer(&fields, "max_calls", &what, 1, i64::MAX);
        let approval = match self.string(&fields, "approval", &what) {
            None => GrantApproval::None,
            Some((s, _)) if s == "none" => GrantApproval::None,
            Some((s, _)) if s == "issuance" => GrantApproval::Issuance,
            Some((_, at)) => {
                self.error(
                    at,
                    format!("{what}.approval must be \"none\" or \"issuance\""),
                );
                GrantApproval::None
            }
        };
        let mut checks = Vec::new();
        for (source, at) in self.strings(&fields, "checks", &what).unwrap_or_default() {
            match crate::tokens::mint::parse_check(&source) {
                Ok(()) => checks.push(source),
                Err(message) => self.error(at, format!("{what}.checks: {message}")),
            }
        }
        if self.diagnostics.len() > before {
            return None;
        }
        let grant = Grant {
            agent: agent.to_string(),
            tools: patterns.iter().map(|(p, _)| p.clone()).collect(),
            max_ttl: Duration::from_secs(max_ttl as u64),
            idle_timeout: idle.map(|s| Duration::from_secs(s as u64)),
            max_calls: max_calls.map(|n| n as u64),
            approval,
            checks,
        };
        Some((grant, patterns))
    }

    fn approvals(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ApprovalSettings> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(start(value), "approvals must be a table".into());
            return None;
        };
        let what = "approvals";
        let before = self.diagnostics.len();
        let fields = self.fields(
            table,
            &["expire_after_seconds", "webhook", "webhook_secret"],
            what,
        );
        let mut settings = ApprovalSettings::default();
        if let Some(seconds) =
            self.integer(&fields, "expire_after_seconds", what, 1, MAX_TTL_SECONDS)
        {
            settings.expire_after = Duration::from_secs(seconds as u64);
        }
        if let Some((url, at)) = self.string(&fields, "webhook", what) {
            match self
                .substitute(&url, at, env)
                .map(|u| reqwest::Url::parse(&u))
            {
                Some(Ok(url)) if matches!(url.scheme(), "http" | "https") => {
                    settings.webhook = Some(url)
                }
                Some(_) => self.error(
                    at,
                    "approvals.webhook must be an http:// or https:// URL".into(),
                ),
                None => {}
            }
        }
        if let Some((secret, at)) = self.string(&fields, "webhook_secret", what) {
            settings.webhook_secret = self.substitute(&secret, at, env);
        }
        (self.diagnostics.len() == before).then_some(settings)
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
}
