//! `[providers.NAME]` (the OAuth providers Leash is a client of) and the `upstream_auth`
//! field of a tool, checked field by field.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::fields::FileCtx;
use super::model::{ProviderDef, UpstreamAuth, UpstreamGrant};
use super::toml_value::start;
use crate::ids::is_principal_name;

/// A URL field of a provider: `http(s)://` with a host, no fragment.
fn endpoint(text: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .filter(|u| u.fragment().is_none())
}

/// A scope token of RFC 6749 §3.3 (printable ASCII but space, `"` and `\`).
fn is_scope(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

impl<'a> FileCtx<'a> {
    pub(super) fn provider(
        &mut self,
        name: &str,
        offset: usize,
        table: &DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ProviderDef> {
        let what = format!("providers.{name:?}");
        let before = self.diagnostics.len();
        if !is_principal_name(name) || name.contains('.') {
            self.error(
                offset,
                format!("{name:?} is not a valid provider name (ASCII letters, digits, - and _)"),
            );
        }
        let fields = self.fields(
            table,
            &[
                "display_name",
                "issuer",
                "authorize_url",
                "token_url",
                "revocation_url",
                "token_exchange",
                "client_id",
                "client_secret",
                "scopes",
                "authorize_params",
            ],
            &what,
        );
        let text = |this: &mut Self, key: &str| -> Option<(String, usize)> {
            let (value, at) = this.string(&fields, key, &what)?;
            this.substitute(&value, at, env).map(|v| (v, at))
        };
        let url = |this: &mut Self, key: &str| -> Option<reqwest::Url> {
            let (value, at) = text(this, key)?;
            let parsed = endpoint(&value);
            if parsed.is_none() {
                this.error(
                    at,
                    format!("{what}.{key} must be an http:// or https:// URL without a fragment"),
                );
            }
            parsed
        };
        let issuer = url(self, "issuer").map(|u| u.as_str().trim_end_matches('/').to_string());
        let authorize_url = url(self, "authorize_url");
        let token_url = url(self, "token_url");
        let revocation_url = url(self, "revocation_url");
        if issuer.is_none() && (authorize_url.is_none() || token_url.is_none()) {
            self.error(
                offset,
                format!("{what} needs issuer (for discovery) or both authorize_url and token_url"),
            );
        }
        let display_name = self
            .string(&fields, "display_name", &what)
            .map(|(s, _)| s)
            .unwrap_or_else(|| name.to_string());
        let client_id = match text(self, "client_id") {
            Some((id, _)) if !id.is_empty() => Some(id),
            _ => {
                self.error(offset, format!("{what} needs client_id"));
                None
            }
        };
        let client_secret = text(self, "client_secret").map(|(s, _)| s);
        let token_exchange = match fields.get("token_exchange") {
            None => false,
            Some(value) => match value.get_ref().as_bool() {
                Some(flag) => flag,
                None => {
                    self.error(
                        start(value),
                        format!("{what}.token_exchange must be true or false"),
                    );
                    false
                }
            },
        };
        let mut scopes = Vec::new();
        for (scope, at) in self.strings(&fields, "scopes", &what).unwrap_or_default() {
            if is_scope(&scope) {
                scopes.push(scope);
            } else {
                self.error(at, format!("{scope:?} is not a valid OAuth scope"));
            }
        }
        let mut authorize_params = Vec::new();
        if let Some(value) = fields.get("authorize_params") {
            match value.get_ref().as_table() {
                None => self.error(
                    start(value),
                    format!("{what}.authorize_params must be a table of strings"),
                ),
                Some(params) => {
                    for (key, content) in params.iter() {
                        let key = key.get_ref().to_string();
                        const OURS: [&str; 7] = [
                            "response_type",
                            "client_id",
                            "redirect_uri",
                            "scope",
                            "state",
                            "code_challenge",
                            "code_challenge_method",
                        ];
                        match content.get_ref().as_str() {
                            _ if OURS.contains(&key.as_str()) => self.error(
                                start(content),
                                format!(
                                    "{what}.authorize_params may not set {key:?}: Leash sets it"
                                ),
                            ),
                            Some(v) => authorize_params.push((key, v.to_string())),
                            None => self.error(
                                start(content),
                                format!("{what}.authorize_params.{key} must be a string"),
                            ),
                        }
                    }
                }
            }
        }
        if self.diagnostics.len() > before {
            return None;
        }
        Some(ProviderDef {
            name: name.to_string(),
            display_name,
            issuer,
            authorize_url,
            token_url,
            revocation_url,
            token_exchange,
            client_id: client_id?,
            client_secret,
            scopes,
            authorize_params,
        })
    }

    /// `upstream_auth = { provider = "…", scopes = […], grant = "user" | "client_credentials" }`.
    /// Whether the provider exists is checked once every file is read.
    pub(super) fn upstream_auth(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        what: &str,
    ) -> Option<(UpstreamAuth, usize)> {
        let what = format!("{what}.upstream_auth");
        let Some(table) = value.get_ref().as_table() else {
            self.error(start(value), format!("{what} must be a table"));
            return None;
        };
        let before = self.diagnostics.len();
        let fields = self.fields(table, &["provider", "scopes", "grant"], &what);
        let provider = self.string(&fields, "provider", &what);
        if provider.is_none() && !fields.contains_key("provider") {
            self.error(start(value), format!("{what} needs provider"));
        }
        let mut scopes = Vec::new();
        for (scope, at) in self.strings(&fields, "scopes", &what).unwrap_or_default() {
            if is_scope(&scope) {
                scopes.push(scope);
            } else {
                self.error(at, format!("{scope:?} is not a valid OAuth scope"));
            }
        }
        let grant = match self.string(&fields, "grant", &what) {
            None => UpstreamGrant::User,
            Some((g, _)) if g == "user" => UpstreamGrant::User,
            Some((g, _)) if g == "client_credentials" => UpstreamGrant::ClientCredentials,
            Some((_, at)) => {
                self.error(
                    at,
                    format!("{what}.grant must be \"user\" or \"client_credentials\""),
                );
                UpstreamGrant::User
            }
        };
        if self.diagnostics.len() > before {
            return None;
        }
        let (provider, at) = provider?;
        Some((
            UpstreamAuth {
                provider,
                scopes,
                grant,
            },
            at,
        ))
    }
}
