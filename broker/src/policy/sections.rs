//! The sections of a policy file — `[tools]`, `[mcp_servers]`, `[agents]`, `[users]`,
//! `[approvals]` — each checked field by field into the policy's types.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::model::{
    ApprovalSettings, Grant, GrantApproval, GrantHolder, McpServerDef, OidcSettings, StdioCommand,
    ToolApproval, ToolDef, ToolPattern,
};
use super::toml_value::{start, to_json};
use crate::ids::{is_principal_name, is_tool_name, is_user_name};

use super::fields::FileCtx;
use super::load::{MAX_TIMEOUT_MS, MAX_TTL_SECONDS, PlacedPatterns};

impl<'a> FileCtx<'a> {
    pub(super) fn tool(
        &mut self,
        name: &str,
        offset: usize,
        table: &DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<(ToolDef, Option<usize>)> {
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
                "upstream_auth",
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
        let upstream_auth = fields
            .get("upstream_auth")
            .and_then(|value| self.upstream_auth(value, &what));
        if upstream_auth.is_some()
            && upstream_headers
                .iter()
                .any(|(header, _)| header == axum::http::header::AUTHORIZATION)
        {
            self.error(
                offset,
                format!("{what} sets both upstream_auth and an Authorization header; keep one"),
            );
        }
        if self.diagnostics.len() > before {
            return None;
        }
        let (upstream_auth, auth_at) = match upstream_auth {
            Some((auth, at)) => (Some(auth), Some(at)),
            None => (None, None),
        };
        Some((
            ToolDef {
                name: name.to_string(),
                description,
                upstream: upstream?,
                timeout: Duration::from_millis(timeout_ms as u64),
                approval,
                input_schema,
                validator: validator?,
                upstream_headers,
                mcp: None,
                upstream_auth,
            },
            auth_at,
        ))
    }

    /// A table of header name → value (with `${ENV}`), values marked sensitive and never echoed.
    pub(super) fn header_table(
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

    /// `command = [program, args…]` and `env = { NAME = "value" }` of an MCP server.
    fn stdio_command(
        &mut self,
        fields: &super::fields::Fields<'_, '_>,
        what: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<StdioCommand> {
        let value = fields.get("command")?;
        let words = self.strings(fields, "command", what)?;
        let Some(((program, _), args)) = words.split_first() else {
            self.error(start(value), format!("{what}.command names no program"));
            return None;
        };
        if program.trim().is_empty() {
            self.error(start(value), format!("{what}.command names no program"));
            return None;
        }
        let mut variables = Vec::new();
        if let Some(table) = fields.get("env") {
            let Some(entries) = table.get_ref().as_table() else {
                self.error(
                    start(table),
                    format!("{what}.env must be a table of strings"),
                );
                return None;
            };
            for (key, content) in entries.iter() {
                let at = start(content);
                let key = key.get_ref().to_string();
                let valid = key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && key.bytes().next().is_some_and(|b| !b.is_ascii_digit());
                if !valid {
                    self.error(at, format!("{what}.env: {key:?} is not a variable name"));
                    continue;
                }
                let Some(text) = content.get_ref().as_str() else {
                    self.error(at, format!("{what}.env.{key} must be a string"));
                    continue;
                };
                // The value may hold a secret: never echoed.
                if let Some(text) = self.substitute(text, at, env) {
                    variables.push((key, text));
                }
            }
        }
        Some(StdioCommand {
            program: program.clone(),
            args: args.iter().map(|(arg, _)| arg.clone()).collect(),
            env: variables,
        })
    }

    pub(super) fn mcp_server(
        &mut self,
        name: &str,
        offset: usize,
        table: &DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<(McpServerDef, Option<usize>)> {
        let what = format!("mcp_servers.{name:?}");
        let before = self.diagnostics.len();
        if !is_principal_name(name) || name.contains('.') {
            self.error(
                offset,
                format!("{name:?} is not a valid MCP server name (ASCII letters, digits, - and _)"),
            );
        }
        let fields = self.fields(
            table,
            &[
                "url",
                "headers",
                "timeout_ms",
                "upstream_auth",
                "prefix",
                "per_call",
                "command",
                "env",
            ],
            &what,
        );
        let command = self.stdio_command(&fields, &what, env);
        let url = match self.string(&fields, "url", &what) {
            Some((_, at)) if command.is_some() => {
                self.error(
                    at,
                    format!("{what} has both url and command: one or the other"),
                );
                None
            }
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
            // A stdio server is named by a URL of its own, for logs and tool records.
            None if command.is_some() => reqwest::Url::parse(&format!("stdio://{name}")).ok(),
            None => {
                if !fields.contains_key("url") && !fields.contains_key("command") {
                    self.error(offset, format!("{what} has no url (or command)"));
                }
                None
            }
        };
        if command.is_some() {
            for key in ["headers", "upstream_auth"] {
                if let Some(value) = fields.get(key) {
                    self.error(
                        start(value),
                        format!("{what}.{key} is for a server reached at a url, not a command"),
                    );
                }
            }
        } else if let Some(value) = fields.get("env") {
            self.error(
                start(value),
                format!("{what}.env is for a command's process"),
            );
        }
        let timeout_ms = self
            .integer(&fields, "timeout_ms", &what, 1, MAX_TIMEOUT_MS)
            .unwrap_or(30_000);
        let headers = match fields.get("headers") {
            Some(value) => self.header_table(value, &format!("{what}.headers"), env),
            None => Vec::new(),
        };
        let upstream_auth = fields
            .get("upstream_auth")
            .and_then(|value| self.upstream_auth(value, &what));
        let prefixed = self.flag(&fields, "prefix", &what).unwrap_or(true);
        let mut per_call = Vec::new();
        for (text, at) in self.strings(&fields, "per_call", &what).unwrap_or_default() {
            // Only this server's own names: a pattern reaching elsewhere would be a typo
            // that silently approves nothing.
            let own = if prefixed {
                text.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.'))
            } else {
                !text.contains('.')
            };
            match ToolPattern::parse(&text) {
                Some(pattern) if own => per_call.push(pattern),
                _ => self.error(
                    at,
                    if prefixed {
                        format!("{what}.per_call: {text:?} is not one of this server's names ({name}.tool, {name}.*)")
                    } else {
                        format!("{what}.per_call: {text:?} is not one of this server's names (undotted names, since it has no prefix)")
                    },
                ),
            }
        }
        if self.diagnostics.len() > before {
            return None;
        }
        let (upstream_auth, auth_at) = match upstream_auth {
            Some((auth, at)) => (Some(auth), Some(at)),
            None => (None, None),
        };
        Some((
            McpServerDef {
                name: name.to_string(),
                url: url?,
                headers,
                timeout: Duration::from_millis(timeout_ms as u64),
                upstream_auth,
                prefixed,
                per_call,
                command,
            },
            auth_at,
        ))
    }

    pub(super) fn grant(
        &mut self,
        holder: GrantHolder,
        agent: &str,
        offset: usize,
        table: &DeTable<'_>,
    ) -> Option<(Grant, PlacedPatterns)> {
        let what = format!("{}.{agent:?}", holder.section());
        let before = self.diagnostics.len();
        match holder {
            GrantHolder::Agent if !is_principal_name(agent) => {
                self.error(offset, format!("{agent:?} is not a valid agent id (ASCII letters, digits, -, _ and ., at most 64)"));
            }
            GrantHolder::User if !is_user_name(agent) => {
                self.error(offset, format!("{agent:?} is not a valid user name (ASCII letters, digits, -, _, ., @ and +, at most 128)"));
            }
            GrantHolder::Group
                if agent.is_empty() || agent.len() > 256 || agent.chars().any(char::is_control) =>
            {
                self.error(
                    offset,
                    format!("{agent:?} is not a valid group name (1 to 256 characters)"),
                );
            }
            _ => {}
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

    /// `[sign_in]`, holding `[sign_in.oidc]`.
    pub(super) fn sign_in(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<OidcSettings> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(start(value), "sign_in must be a table".into());
            return None;
        };
        let outer = self.fields(table, &["oidc"], "sign_in");
        let oidc = outer.get("oidc")?;
        let Some(table) = oidc.get_ref().as_table() else {
            self.error(start(oidc), "sign_in.oidc must be a table".into());
            return None;
        };
        let what = "sign_in.oidc";
        let before = self.diagnostics.len();
        let fields = self.fields(
            table,
            &[
                "issuer",
                "client_id",
                "client_secret",
                "approver_groups",
                "groups_claim",
                "username_claim",
                "scopes",
            ],
            what,
        );
        let text = |this: &mut Self, key: &str| -> Option<String> {
            let (value, at) = this.string(&fields, key, what)?;
            this.substitute(&value, at, env)
        };
        let issuer = text(self, "issuer");
        let client_id = text(self, "client_id");
        let client_secret = text(self, "client_secret");
        let groups_claim = text(self, "groups_claim").unwrap_or_else(|| "groups".into());
        let username_claim = text(self, "username_claim").unwrap_or_else(|| "email".into());
        let list = |this: &mut Self, key: &str| -> Vec<String> {
            this.strings(&fields, key, what)
                .unwrap_or_default()
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        let approver_groups = list(self, "approver_groups");
        let mut scopes = list(self, "scopes");
        if scopes.is_empty() {
            scopes = vec!["openid".into(), "email".into(), "profile".into()];
        }
        let at = start(oidc);
        let issuer = match issuer.map(|i| i.trim_end_matches('/').to_string()) {
            Some(issuer)
                if reqwest::Url::parse(&issuer)
                    .is_ok_and(|u| matches!(u.scheme(), "https" | "http")) =>
            {
                issuer
            }
            Some(_) => {
                self.error(at, "sign_in.oidc.issuer must be an https:// URL".into());
                return None;
            }
            None => {
                self.error(at, "sign_in.oidc needs issuer".into());
                return None;
            }
        };
        let Some(client_id) = client_id else {
            self.error(at, "sign_in.oidc needs client_id".into());
            return None;
        };
        if !scopes.iter().any(|s| s == "openid") {
            self.error(at, "sign_in.oidc.scopes must include openid".into());
        }
        (self.diagnostics.len() == before).then_some(OidcSettings {
            issuer,
            client_id,
            client_secret,
            approver_groups,
            groups_claim,
            username_claim,
            scopes,
        })
    }

    pub(super) fn approvals(
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
