//! The authorization server's rules, apart from HTTP and HTML: what makes an
//! authorization request acceptable, what the consent page may offer, how Allow turns
//! into a task and a code, and the token endpoint (code with PKCE, refresh rotation)
//! and revocation.
//!
//! Invariants:
//! - A code is sent only to a redirect URI registered for the client, and only after
//!   its task exists; it is single use, lives 60 seconds, and redeems only with the PKCE
//!   verifier, the same client and redirect URI, and the same resource.
//! - Replaying a code or a rotated refresh token revokes the task: whoever replays it, the
//!   tokens it yielded are no longer trusted (RFC 6749 §4.1.2, OAuth 2.1 §4.3.1).
//! - Access tokens are task tokens bound to the resource; the task's window bounds every
//!   refresh, and ending the task (approver, client, expiry) ends them all.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::ids::random_hex;
use crate::oauth::clients::redirect_matches;
use crate::oauth::documents::{ClientDocuments, is_document_id};
use crate::oauth::error::OAuthError;
use crate::policy::{Grant, Policy, ToolPattern};
use crate::store::{OAuthClient, OAuthGrant, Redeemed, Rotated, Store, TaskState};
use crate::tasks::lifecycle::{Lifecycle, OpenRequest, Opened};
use crate::tokens::verify::{Principal, TokenVerifier};
use crate::upstream::catalog::Catalog;

/// How long a code may wait to be redeemed.
pub const CODE_MS: i64 = 60_000;
/// How long after an approval-gated grant's approval could have expired its person may
/// still come back for the code.
pub const UNCLAIMED_MS: i64 = 10 * 60_000;
/// Unused client registrations are forgotten after a day.
pub const UNUSED_CLIENT_MS: i64 = 24 * 3600 * 1000;
/// Most registered clients; past it, registration waits for unused ones to be forgotten.
pub const MAX_CLIENTS: i64 = 50_000;
/// Prefix of refresh tokens (they are opaque; the prefix tells them from access tokens).
pub const REFRESH_PREFIX: &str = "lrt_";
/// Longest `state` a client may send.
pub const MAX_STATE_BYTES: usize = 1024;
/// Windows the consent page offers (seconds), within the grant's maximum.
pub const WINDOWS: [i64; 5] = [900, 3600, 8 * 3600, 24 * 3600, 7 * 24 * 3600];
/// The window preselected on the consent page (within the grant).
pub const DEFAULT_WINDOW: i64 = 3600;

/// The parameters of `GET /oauth/authorize` (and of the consent form, which repeats them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthorizeParams {
    /// Must be `code`.
    #[serde(default)]
    pub response_type: Option<String>,
    /// The registered client.
    #[serde(default)]
    pub client_id: Option<String>,
    /// One of its redirect URIs.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// PKCE challenge (S256).
    #[serde(default)]
    pub code_challenge: Option<String>,
    /// Must be `S256`.
    #[serde(default)]
    pub code_challenge_method: Option<String>,
    /// Returned unchanged.
    #[serde(default)]
    pub state: Option<String>,
    /// RFC 8707: must be this broker's `/mcp`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Tool names and `prefix.*` patterns, space-separated.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A checked authorization request.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// The client.
    pub client: OAuthClient,
    /// Where the answer goes.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// The client's state.
    pub state: Option<String>,
    /// The resource (audience).
    pub resource: String,
    /// The tools asked for (resolved), empty when the client asked for no scope.
    pub scope: Vec<String>,
    /// The parameters, to repeat in the consent form.
    pub params: AuthorizeParams,
}

/// Why an authorization request is refused.
#[derive(Debug)]
pub enum Refusal {
    /// The client or redirect URI cannot be trusted: shown on a page, never redirected.
    Page(String),
    /// Sent back to the client's redirect URI (RFC 6749 §4.1.2.1).
    Redirect {
        /// The client's redirect URI.
        redirect_uri: String,
        /// The OAuth error code.
        error: &'static str,
        /// What was wrong.
        description: String,
        /// The client's state.
        state: Option<String>,
    },
}

/// What the consent page offers.
#[derive(Debug)]
pub struct ConsentChoices {
    /// Every tool the user's grant allows: (name, description, preselected).
    pub tools: Vec<(String, String, bool)>,
    /// Windows offered (seconds) and the preselected one.
    pub windows: Vec<i64>,
    /// The preselected window.
    pub default_window: i64,
}

/// What the person decided on the consent page.
#[derive(Debug)]
pub struct Consent<'a> {
    /// What the task is for.
    pub purpose: &'a str,
    /// The tools ticked.
    pub tools: &'a [String],
    /// The window chosen (seconds).
    pub ttl_seconds: i64,
}

/// What Allow led to.
#[derive(Debug)]
pub enum Allowed {
    /// Redirect here (with the code).
    Redirect(String),
    /// The grant needs an approver first: the task waiting.
    Pending(String),
}

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The task token, bound to the resource.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The next refresh token (single use).
    pub refresh_token: String,
    /// The consented tools, space-separated.
    pub scope: String,
}

/// The form of `POST /oauth/token`.
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    /// `authorization_code` or `refresh_token`.
    #[serde(default)]
    pub grant_type: Option<String>,
    /// The code.
    #[serde(default)]
    pub code: Option<String>,
    /// The redirect URI of the authorization request.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// The client.
    #[serde(default)]
    pub client_id: Option<String>,
    /// PKCE verifier.
    #[serde(default)]
    pub code_verifier: Option<String>,
    /// The refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// RFC 8707.
    #[serde(default)]
    pub resource: Option<String>,
    /// Ignored on refresh (the task's tools stay).
    #[serde(default)]
    pub scope: Option<String>,
}

/// The authorization server.
pub struct OAuthServer {
    documents: ClientDocuments,
    registrations: crate::ratelimit::RegistrationLimiter,
    store: Arc<dyn Store>,
    lifecycle: Arc<Lifecycle>,
    policy: Arc<Policy>,
    catalog: Arc<Catalog>,
    verifier: Arc<TokenVerifier>,
    clock: Clock,
}

fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// Whether `verifier` is a valid PKCE verifier (RFC 7636 §4.1) whose S256 is `challenge`.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let shape = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    shape
        && crate::accounts::sessions::same_token(
            &URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
            challenge,
        )
}

/// The agent id of a client's tasks.
pub fn client_agent(client_id: &str) -> String {
    format!("client:{client_id}")
}

impl OAuthServer {
    /// The server over these handles.
    pub fn new(
        documents: ClientDocuments,
        store: Arc<dyn Store>,
        lifecycle: Arc<Lifecycle>,
        policy: Arc<Policy>,
        catalog: Arc<Catalog>,
        verifier: Arc<TokenVerifier>,
        clock: Clock,
    ) -> Self {
        OAuthServer {
            documents,
            registrations: crate::ratelimit::RegistrationLimiter::new(clock.clone()),
            store,
            lifecycle,
            policy,
            catalog,
            verifier,
            clock,
        }
    }

    /// Every tool name a grant allows, sorted.
    fn granted_tools(&self, grant: &Grant) -> Vec<String> {
        self.catalog
            .names()
            .into_iter()
            .filter(|tool| grant.allows(tool))
            .collect()
    }

    /// The scope every tool Leash knows (for metadata).
    pub fn all_tools(&self) -> Vec<String> {
        self.catalog.names()
    }

    /// Checks an authorization request for `resource` (this broker's `/mcp`). The client
    /// and redirect URI are checked first: until both are known good, nothing is
    /// redirected anywhere.
    pub async fn check(
        &self,
        params: &AuthorizeParams,
        resource: &str,
    ) -> Result<Authorization, Refusal> {
        let client_id = params
            .client_id
            .as_deref()
            .filter(|id| !id.is_empty() && id.len() <= 200)
            .ok_or_else(|| Refusal::Page("the request names no client (client_id)".into()))?;
        let client = if is_document_id(client_id) {
            self.documents
                .client(client_id, self.clock.now_ms())
                .await
                .map_err(Refusal::Page)?
        } else {
            self.store
                .get_client(client_id)
                .await
                .map_err(|_| {
                    Refusal::Page("the broker cannot read its clients now; try again".into())
                })?
                .ok_or_else(|| {
                    Refusal::Page(format!(
                        "no client {client_id:?} is registered with this broker"
                    ))
                })?
        };
        let redirect_uri = params
            .redirect_uri
            .clone()
            .ok_or_else(|| Refusal::Page("the request names no redirect_uri".into()))?;
        if !redirect_matches(&client.redirect_uris, &redirect_uri) {
            return Err(Refusal::Page(
                "the redirect_uri is not one this client registered; the request is refused rather than sent there".into(),
            ));
        }
        let state = params.state.clone();
        let refuse = |error: &'static str, description: String| Refusal::Redirect {
            redirect_uri: redirect_uri.clone(),
            error,
            description,
            state: state.clone(),
        };
        if state.as_ref().is_some_and(|s| s.len() > MAX_STATE_BYTES) {
            return Err(refuse(
                "invalid_request",
                "state is longer than 1024 bytes".into(),
            ));
        }
        if params.response_type.as_deref() != Some("code") {
            return Err(refuse(
                "unsupported_response_type",
                "only response_type=code is supported".into(),
            ));
        }
        let challenge = params.code_challenge.clone().unwrap_or_default();
        if challenge.len() != 43
            || !challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(refuse(
                "invalid_request",
                "a PKCE code_challenge (S256, 43 base64url characters) is required".into(),
            ));
        }
        if params.code_challenge_method.as_deref() != Some("S256") {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method must be S256".into(),
            ));
        }
        let asked_resource = params.resource.as_deref().unwrap_or(resource);
        if asked_resource.trim_end_matches('/') != resource {
            return Err(refuse(
                "invalid_target",
                format!("this server issues tokens only for {resource}"),
            ));
        }
        // The scope only preselects tools on the consent page, which offers just the
        // person's grant: a client asking for more (MCP clients ask for every scope the
        // resource advertises) is not an error. A word naming no tool at all is.
        let mut scope = BTreeSet::new();
        let words = params.scope.as_deref().unwrap_or("").split_whitespace();
        for word in words {
            let Some(pattern) = ToolPattern::parse(word) else {
                return Err(refuse(
                    "invalid_scope",
                    format!("{word:?} is neither a tool name nor a \"prefix.*\" pattern"),
                ));
            };
            let matched: Vec<String> = self
                .catalog
                .names()
                .into_iter()
                .filter(|tool| pattern.matches(tool))
                .collect();
            if matched.is_empty() {
                return Err(refuse(
                    "invalid_scope",
                    format!("scope {word:?} names no tool of this server"),
                ));
            }
            scope.extend(matched);
        }
        Ok(Authorization {
            client,
            redirect_uri,
            code_challenge: challenge,
            state,
            resource: resource.to_string(),
            scope: scope.into_iter().collect(),
            params: params.clone(),
        })
    }

    /// What the consent page offers `user` (in `groups`); `None` if the policy grants
    /// them nothing.
    pub fn choices(
        &self,
        user: &str,
        groups: &[String],
        request: &Authorization,
    ) -> Option<ConsentChoices> {
        let (_, grant) = self.policy.person_grant(user, groups)?;
        let grant = &grant;
        let tools: Vec<(String, String, bool)> = self
            .granted_tools(grant)
            .into_iter()
            .map(|tool| {
                let description = self
                    .catalog
                    .get(&tool)
                    .map(|def| def.description.clone())
                    .unwrap_or_default();
                let checked = request.scope.is_empty() || request.scope.contains(&tool);
                (tool, description, checked)
            })
            .collect();
        if tools.is_empty() {
            return None;
        }
        let max = grant.max_ttl.as_secs() as i64;
        let mut windows: Vec<i64> = WINDOWS.iter().copied().filter(|w| *w < max).collect();
        windows.push(max);
        Some(ConsentChoices {
            tools,
            windows,
            default_window: DEFAULT_WINDOW.min(max),
        })
    }

    /// Allow: opens the task for the client under `user`'s grant, records what the
    /// code is bound to, and — once the task is active — the redirect with the code.
    pub async fn allow(
        &self,
        user: &str,
        groups: &[String],
        request: &Authorization,
        consent: Consent<'_>,
        issuer: &str,
    ) -> Result<Allowed, ApiError> {
        let agent = client_agent(&request.client.client_id);
        let group = self
            .policy
            .person_grant(user, groups)
            .and_then(|(group, _)| group);
        let opened = self
            .lifecycle
            .open(
                OpenRequest {
                    agent: &agent,
                    credential: None,
                    purpose: consent.purpose,
                    tools: consent.tools,
                    ttl_seconds: Some(consent.ttl_seconds),
                    checks: &[],
                    user: Some(user),
                    user_group: group.as_deref(),
                    audience: Some(&request.resource),
                },
                || Ok(()),
            )
            .await?;
        let task_id = match &opened {
            Opened::Active { task_id, .. } | Opened::Pending { task_id, .. } => task_id.clone(),
        };
        let scope = match self.lifecycle.load(&task_id).await {
            Ok(record) => record.tools.join(" "),
            Err(_) => consent.tools.join(" "),
        };
        self.store
            .insert_grant(&OAuthGrant {
                task_id: task_id.clone(),
                client_id: request.client.client_id.clone(),
                user: user.to_string(),
                redirect_uri: request.redirect_uri.clone(),
                code_challenge: request.code_challenge.clone(),
                resource: request.resource.clone(),
                state: request.state.clone(),
                scope,
                created_at_ms: self.clock.now_ms(),
                code_expires_at_ms: None,
                code_issued: false,
            })
            .await
            .map_err(ApiError::internal)?;
        match opened {
            Opened::Active { .. } => Ok(Allowed::Redirect(
                self.code_redirect(&task_id, issuer).await?,
            )),
            Opened::Pending { .. } => Ok(Allowed::Pending(task_id)),
        }
    }

    /// After an approval wait: the redirect for `user`'s task `task_id` — with a code once
    /// approved, `access_denied` once denied — or `None` while it still waits.
    pub async fn resume(
        &self,
        user: &str,
        task_id: &str,
        issuer: &str,
    ) -> Result<Option<String>, ApiError> {
        let grant = self
            .store
            .get_grant(task_id)
            .await
            .map_err(ApiError::internal)?
            .filter(|grant| grant.user == user)
            .ok_or_else(|| ApiError::NotFound(format!("no authorization {task_id} of yours")))?;
        if grant.code_issued {
            return Err(ApiError::Conflict(
                "this authorization was already completed".into(),
            ));
        }
        let record = self.lifecycle.load(task_id).await?;
        match record.state {
            TaskState::PendingApproval => Ok(None),
            TaskState::Active => Ok(Some(self.code_redirect(task_id, issuer).await?)),
            other => Ok(Some(error_redirect(
                &grant.redirect_uri,
                "access_denied",
                &format!(
                    "the request was not approved (the task is {})",
                    other.as_str()
                ),
                grant.state.as_deref(),
                issuer,
            ))),
        }
    }

    /// Issues the task's one code and the redirect carrying it.
    async fn code_redirect(&self, task_id: &str, issuer: &str) -> Result<String, ApiError> {
        let grant = self
            .store
            .get_grant(task_id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::NotFound(format!("no authorization {task_id}")))?;
        let code = random_hex(32);
        let fresh = self
            .store
            .set_code(task_id, &digest(&code), self.clock.now_ms() + CODE_MS)
            .await
            .map_err(ApiError::internal)?;
        if !fresh {
            return Err(ApiError::Conflict(
                "this authorization was already completed".into(),
            ));
        }
        let mut url = reqwest::Url::parse(&grant.redirect_uri)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("stored redirect uri: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("code", &code);
            if let Some(state) = &grant.state {
                query.append_pair("state", state);
            }
            query.append_pair("iss", issuer);
        }
        Ok(url.to_string())
    }

    /// Deny: the redirect with `access_denied`.
    pub fn deny(&self, request: &Authorization, issuer: &str) -> String {
        error_redirect(
            &request.redirect_uri,
            "access_denied",
            "the person declined",
            request.state.as_deref(),
            issuer,
        )
    }

    /// `POST /oauth/token`.
    pub async fn token(&self, form: &TokenForm) -> Result<TokenResponse, OAuthError> {
        match form.grant_type.as_deref() {
            Some("authorization_code") => self.redeem(form).await,
            Some("refresh_token") => self.refresh(form).await,
            Some(other) => Err(OAuthError::new(
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported (authorization_code, refresh_token)"
                ),
            )),
            None => Err(OAuthError::invalid_request("grant_type is required")),
        }
    }

    async fn redeem(&self, form: &TokenForm) -> Result<TokenResponse, OAuthError> {
        let required = |value: &Option<String>, name: &str| {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
        };
        let code = required(&form.code, "code")?;
        let client_id = required(&form.client_id, "client_id")?;
        let redirect_uri = required(&form.redirect_uri, "redirect_uri")?;
        let verifier = required(&form.code_verifier, "code_verifier")?;
        let grant = match self
            .store
            .redeem_code(&digest(&code))
            .await
            .map_err(OAuthError::server_error)?
        {
            Redeemed::First(grant) => grant,
            Redeemed::Replayed(grant) => {
                self.end(&grant.task_id, "an authorization code was used twice")
                    .await;
                return Err(OAuthError::invalid_grant(
                    "the code was already used; the access it gave is revoked",
                ));
            }
            Redeemed::Expired(_) => {
                return Err(OAuthError::invalid_grant("the code has expired"));
            }
            Redeemed::Unknown => {
                return Err(OAuthError::invalid_grant("the code is not valid"));
            }
        };
        // The code is used up now: if what comes with it does not check out, nobody can
        // ever redeem it, so its task must not stay behind.
        if let Err(refusal) =
            self.check_redemption(&grant, &client_id, &redirect_uri, &verifier, form)
        {
            self.end(
                &grant.task_id,
                "its authorization code was presented wrongly",
            )
            .await;
            return Err(refusal);
        }
        let refresh = format!("{REFRESH_PREFIX}{}", random_hex(32));
        self.store
            .insert_refresh(&digest(&refresh), &grant.task_id, self.clock.now_ms())
            .await
            .map_err(OAuthError::server_error)?;
        self.access(&grant, refresh).await
    }

    /// What must come with a code: in time, the same client, redirect URI and resource,
    /// and the PKCE verifier.
    fn check_redemption(
        &self,
        grant: &OAuthGrant,
        client_id: &str,
        redirect_uri: &str,
        verifier: &str,
        form: &TokenForm,
    ) -> Result<(), OAuthError> {
        if grant
            .code_expires_at_ms
            .is_none_or(|end| end <= self.clock.now_ms())
        {
            return Err(OAuthError::invalid_grant("the code has expired"));
        }
        if grant.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "the code was issued to another client",
            ));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(OAuthError::invalid_grant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        if let Some(resource) = &form.resource
            && resource.trim_end_matches('/') != grant.resource
        {
            return Err(OAuthError::new(
                "invalid_target",
                format!("the code is for {}", grant.resource),
            ));
        }
        if !pkce_matches(verifier, &grant.code_challenge) {
            return Err(OAuthError::invalid_grant(
                "the code_verifier does not match the code_challenge",
            ));
        }
        Ok(())
    }

    async fn refresh(&self, form: &TokenForm) -> Result<TokenResponse, OAuthError> {
        let token = form
            .refresh_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let client_id = form
            .client_id
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuthError::invalid_request("client_id is required"))?;
        let old = digest(token);
        let invalid = || OAuthError::invalid_grant("the refresh token is not valid");
        let task_id = self
            .store
            .refresh_task(&old)
            .await
            .map_err(OAuthError::server_error)?
            .ok_or_else(invalid)?;
        let grant = self
            .store
            .get_grant(&task_id)
            .await
            .map_err(OAuthError::server_error)?
            .ok_or_else(invalid)?;
        if grant.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        let next = format!("{REFRESH_PREFIX}{}", random_hex(32));
        match self
            .store
            .rotate_refresh(&old, &digest(&next), self.clock.now_ms())
            .await
            .map_err(OAuthError::server_error)?
        {
            Rotated::Current(_) => self.access(&grant, next).await,
            Rotated::Replayed(task_id) => {
                self.end(&task_id, "a refresh token was used twice").await;
                Err(OAuthError::invalid_grant(
                    "the refresh token was already used; the access it gave is revoked",
                ))
            }
            Rotated::Unknown => Err(invalid()),
        }
    }

    /// A fresh access token for the grant's task.
    async fn access(
        &self,
        grant: &OAuthGrant,
        refresh_token: String,
    ) -> Result<TokenResponse, OAuthError> {
        let issued = self
            .lifecycle
            .reissue(&grant.task_id)
            .await
            .map_err(|err| match err {
                ApiError::Unavailable(_) | ApiError::Internal(_) => OAuthError::server_error(err),
                other => OAuthError::invalid_grant(format!(
                    "the task behind this grant cannot be used: {}",
                    other.status_and_code().1
                )),
            })?;
        Ok(TokenResponse {
            access_token: issued.token,
            token_type: "Bearer",
            expires_in: ((issued.token_expires_at_ms - self.clock.now_ms()) / 1000).max(0),
            refresh_token,
            scope: issued.tools.join(" "),
        })
    }

    /// RFC 7009: revoking an access token or a refresh token ends the task behind it.
    /// Unknown and foreign tokens are ignored (the answer is the same).
    pub async fn revoke(&self, token: &str) -> Result<(), OAuthError> {
        let task_id = if token.starts_with(REFRESH_PREFIX) {
            self.store
                .refresh_task(&digest(token))
                .await
                .map_err(OAuthError::server_error)?
        } else {
            match self.verifier.verify(token, |_| None) {
                Ok(verified) if verified.audience.is_some() => match &verified.principal {
                    Principal::Task { task_id, .. } => Some(task_id.clone()),
                    _ => None,
                },
                _ => None,
            }
        };
        if let Some(task_id) = task_id {
            self.end(&task_id, "the client revoked its token").await;
        }
        Ok(())
    }

    /// Ends the tasks whose code expired unredeemed: an Allow nobody completed leaves no
    /// live task behind. Run by the sweeper; the number ended.
    pub async fn expire_unredeemed(&self) -> Result<usize, crate::store::StoreError> {
        let now = self.clock.now_ms();
        // An approval-gated grant waits up to the approval's expiry; its person then has
        // this long to come back for the code.
        let unclaimed = self.policy.approvals.expire_after.as_millis() as i64 + UNCLAIMED_MS;
        let tasks = self.store.expire_codes(now, now - unclaimed).await?;
        for task_id in &tasks {
            self.end(task_id, "its authorization code was never redeemed")
                .await;
        }
        Ok(tasks.len())
    }

    /// Forgets client registrations that never led to a grant within a day.
    pub async fn prune_clients(&self) -> Result<u64, crate::store::StoreError> {
        self.store
            .prune_clients(self.clock.now_ms() - UNUSED_CLIENT_MS)
            .await
    }

    /// Whether `address` may register another client now (`Err` is the OAuth answer).
    pub async fn admit_registration(&self, address: &str) -> Result<(), OAuthError> {
        if let Err(wait) = self.registrations.take(address) {
            return Err(OAuthError::new(
                "temporarily_unavailable",
                format!("too many registrations from this address; retry in {wait} s"),
            ));
        }
        let count = self
            .store
            .count_clients()
            .await
            .map_err(OAuthError::server_error)?;
        if count >= MAX_CLIENTS {
            return Err(OAuthError::new(
                "temporarily_unavailable",
                "this broker holds as many client registrations as it takes; retry later",
            ));
        }
        Ok(())
    }

    async fn end(&self, task_id: &str, reason: &str) {
        if let Err(err) = self
            .lifecycle
            .end(task_id, TaskState::Revoked, reason, "oauth")
            .await
        {
            tracing::debug!("ending task {task_id}: {err}");
        }
    }
}

/// The redirect carrying an error (RFC 6749 §4.1.2.1, with RFC 9207's `iss`).
pub fn error_redirect(
    redirect_uri: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
    issuer: &str,
) -> String {
    let Ok(mut url) = reqwest::Url::parse(redirect_uri) else {
        return redirect_uri.to_string();
    };
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("error", error);
        query.append_pair("error_description", description);
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", issuer);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_s256_of_a_well_formed_verifier() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            challenge
        ));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches("short", challenge));
    }

    #[test]
    fn error_redirects_keep_the_clients_query_and_add_state_and_iss() {
        let url = error_redirect(
            "http://127.0.0.1:3000/cb?x=1",
            "access_denied",
            "no",
            Some("s t"),
            "http://127.0.0.1:7070",
        );
        assert_eq!(
            url,
            "http://127.0.0.1:3000/cb?x=1&error=access_denied&error_description=no&state=s+t&iss=http%3A%2F%2F127.0.0.1%3A7070"
        );
    }
}
