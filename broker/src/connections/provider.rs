//! Leash as the OAuth client of one `[providers]` entry: the authorization URL (code flow
//! with PKCE and `state`), the code exchange, refresh and client credentials through the
//! `oauth2` crate; RFC 8693 token exchange (which that crate does not speak) and RFC 7009
//! revocation (which it refuses over plain `http://`, and a provider on the operator's
//! own network may well be reached that way) as one form POST each. Endpoints are the policy's, or discovered from the issuer
//! (RFC 8414 / OpenID discovery) on first use, written ones winning.
//!
//! Every request goes over the one hardened upstream client ([`provider_http`]), bounded
//! in time and size. Failures are sorted for the caller: the provider could not be
//! reached or answered nonsense (a 502 to the agent), or it refused (`invalid_grant` on a
//! refresh breaks the connection). No failure text carries a token, a secret or a URL
//! with a query.

use std::sync::Arc;

use base64::Engine;
use oauth2::basic::BasicClient;
use oauth2::http;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    ErrorResponseType, HttpRequest, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardErrorResponse, TokenResponse, TokenUrl,
};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::policy::ProviderDef;
use crate::upstream::provider_http::{self, ProviderHttpError, describe_chain};

/// RFC 8693's grant type and token type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why a request to a provider did not give tokens.
#[derive(Debug, thiserror::Error)]
pub enum ProviderFailure {
    /// The provider could not be reached, timed out, or answered something that is not an
    /// OAuth answer.
    #[error("{0}")]
    Unreachable(String),
    /// The provider answered with an OAuth error. Only its code is kept: a provider's
    /// `error_description` may quote what Leash sent (a refresh token, the subject token
    /// of an exchange, a code), and this text reaches agents, pages and the audit.
    #[error("the provider refused: {error}")]
    Refused {
        /// The OAuth error code (`invalid_grant`, …), or `unrecognised_error` when the
        /// provider's code is not one (RFC 6749's charset, at most 64 characters).
        error: String,
    },
}

impl ProviderFailure {
    /// Whether the provider refused the grant itself (a dead refresh token or code).
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, ProviderFailure::Refused { error, .. } if error == "invalid_grant")
    }
}

/// Tokens from the provider (secrets: never logged, never shown).
pub struct Tokens {
    /// The access token.
    pub access_token: String,
    /// Its lifetime in seconds, if the provider said.
    pub expires_in_secs: Option<u64>,
    /// A refresh token, if one came.
    pub refresh_token: Option<String>,
    /// The scopes granted, if the provider said.
    pub scopes: Option<Vec<String>>,
}

/// The provider's endpoints.
#[derive(Clone)]
struct Endpoints {
    authorize: reqwest::Url,
    token: reqwest::Url,
    revocation: Option<reqwest::Url>,
}

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// One provider, reached with the upstream client.
pub struct ProviderClient {
    def: Arc<ProviderDef>,
    http: reqwest::Client,
    endpoints: Mutex<Option<Endpoints>>,
}

/// Discovery metadata (RFC 8414 / OpenID Connect Discovery), the fields Leash reads.
#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
}

/// A token endpoint's JSON answer, for the exchange Leash makes by hand.
#[derive(Deserialize)]
struct ExchangeAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// The OAuth error codes Leash repeats (RFC 6749, 6750, 7009, 8628, 8693, 8707, 9449 and
/// OpenID Connect): any other "code" could be a token quoted back, and is not shown.
const KNOWN_ERRORS: [&str; 22] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "unsupported_token_type",
    "invalid_target",
    "access_denied",
    "unsupported_response_type",
    "server_error",
    "temporarily_unavailable",
    "invalid_token",
    "insufficient_scope",
    "interaction_required",
    "login_required",
    "consent_required",
    "authorization_pending",
    "slow_down",
    "expired_token",
    "invalid_dpop_proof",
    "use_dpop_nonce",
];

/// The provider's error code if it is a registered one, else `unrecognised_error`.
fn error_code(text: &str) -> String {
    KNOWN_ERRORS
        .iter()
        .find(|known| **known == text)
        .map_or_else(
            || "unrecognised_error".to_string(),
            |known| known.to_string(),
        )
}

fn refused<T: ErrorResponseType + std::fmt::Display>(
    error: &StandardErrorResponse<T>,
) -> ProviderFailure {
    ProviderFailure::Refused {
        error: error_code(&error.error().to_string()),
    }
}

fn classify<RE: std::error::Error + 'static, T: ErrorResponseType + std::fmt::Display>(
    err: RequestTokenError<RE, StandardErrorResponse<T>>,
) -> ProviderFailure {
    match err {
        RequestTokenError::ServerResponse(error) => refused(&error),
        RequestTokenError::Request(e) => ProviderFailure::Unreachable(describe_chain(&e)),
        RequestTokenError::Parse(..) => ProviderFailure::Unreachable(
            "the provider answered something that is not an OAuth token answer".into(),
        ),
        // Its text may quote the answer: not shown.
        RequestTokenError::Other(_) => {
            ProviderFailure::Unreachable("the provider's answer could not be used".into())
        }
    }
}

/// A failed form POST: the provider's OAuth error, or (not OAuth at all) unreachable.
fn refusal_of(answer: &oauth2::HttpResponse, what: &str) -> ProviderFailure {
    match serde_json::from_slice::<ErrorAnswer>(answer.body()) {
        Ok(error) => ProviderFailure::Refused {
            error: error_code(&error.error),
        },
        Err(_) => ProviderFailure::Unreachable(format!(
            "{what} answered HTTP {}",
            answer.status().as_u16()
        )),
    }
}

fn tokens_of(answer: &oauth2::basic::BasicTokenResponse) -> Tokens {
    Tokens {
        access_token: answer.access_token().secret().clone(),
        expires_in_secs: answer.expires_in().map(|d| d.as_secs()),
        refresh_token: answer.refresh_token().map(|r| r.secret().clone()),
        scopes: answer
            .scopes()
            .map(|s| s.iter().map(|scope| scope.to_string()).collect()),
    }
}

impl ProviderClient {
    /// The client of `def`, reaching it with `http`.
    pub fn new(def: Arc<ProviderDef>, http: reqwest::Client) -> Self {
        ProviderClient {
            def,
            http,
            endpoints: Mutex::new(None),
        }
    }

    /// The policy entry.
    pub fn def(&self) -> &ProviderDef {
        &self.def
    }

    /// The endpoints: written in the policy, or discovered once (a failed discovery is
    /// tried again on the next use).
    async fn endpoints(&self) -> Result<Endpoints, ProviderFailure> {
        let mut known = self.endpoints.lock().await;
        if let Some(endpoints) = known.as_ref() {
            return Ok(endpoints.clone());
        }
        let discovered = match (
            &self.def.issuer,
            &self.def.authorize_url,
            &self.def.token_url,
        ) {
            (Some(issuer), None, _) | (Some(issuer), _, None) => Some(self.discover(issuer).await?),
            _ => None,
        };
        // A discovered endpoint must be a web URL, and never plain http:// under an
        // https:// issuer.
        let https_only = self
            .def
            .issuer
            .as_deref()
            .is_some_and(|i| i.starts_with("https://"));
        let pick = |written: &Option<reqwest::Url>, found: Option<&str>| -> Option<reqwest::Url> {
            written.clone().or_else(|| {
                found
                    .and_then(|f| reqwest::Url::parse(f).ok())
                    .filter(|u| match u.scheme() {
                        "https" => u.host().is_some(),
                        "http" => !https_only && u.host().is_some(),
                        _ => false,
                    })
            })
        };
        let authorize = pick(
            &self.def.authorize_url,
            discovered
                .as_ref()
                .and_then(|m| m.authorization_endpoint.as_deref()),
        );
        let token = pick(
            &self.def.token_url,
            discovered
                .as_ref()
                .and_then(|m| m.token_endpoint.as_deref()),
        );
        let revocation = pick(
            &self.def.revocation_url,
            discovered
                .as_ref()
                .and_then(|m| m.revocation_endpoint.as_deref()),
        );
        let (Some(authorize), Some(token)) = (authorize, token) else {
            return Err(ProviderFailure::Unreachable(
                "the provider's discovery document names no authorization or token endpoint".into(),
            ));
        };
        let endpoints = Endpoints {
            authorize,
            token,
            revocation,
        };
        *known = Some(endpoints.clone());
        Ok(endpoints)
    }

    async fn discover(&self, issuer: &str) -> Result<Metadata, ProviderFailure> {
        let mut last = String::new();
        for path in ["openid-configuration", "oauth-authorization-server"] {
            let url = format!("{issuer}/.well-known/{path}");
            let request = http::Request::get(url)
                .header(http::header::ACCEPT, "application/json")
                .body(Vec::new())
                .map_err(|e| ProviderFailure::Unreachable(e.to_string()))?;
            match provider_http::send(self.http.clone(), request).await {
                Ok(answer) if answer.status().is_success() => {
                    let metadata: Metadata =
                        serde_json::from_slice(answer.body()).map_err(|_| {
                            ProviderFailure::Unreachable(
                                "the discovery document is not valid JSON metadata".into(),
                            )
                        })?;
                    if metadata.issuer.trim_end_matches('/') != issuer {
                        return Err(ProviderFailure::Unreachable(
                            "the discovery document names another issuer".into(),
                        ));
                    }
                    return Ok(metadata);
                }
                Ok(answer) => {
                    last = format!("discovery answered HTTP {}", answer.status().as_u16())
                }
                Err(e) => last = e.0,
            }
        }
        Err(ProviderFailure::Unreachable(last))
    }

    async fn client(
        &self,
        redirect_uri: Option<&str>,
    ) -> Result<(Client, Endpoints), ProviderFailure> {
        let endpoints = self.endpoints().await?;
        let mut client = BasicClient::new(ClientId::new(self.def.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(endpoints.authorize.clone()))
            .set_token_uri(TokenUrl::from_url(endpoints.token.clone()));
        if let Some(secret) = &self.def.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
        }
        if let Some(uri) = redirect_uri {
            let redirect = RedirectUrl::new(uri.to_string())
                .map_err(|e| ProviderFailure::Unreachable(format!("bad redirect URL: {e}")))?;
            client = client.set_redirect_uri(redirect);
        }
        Ok((client, endpoints))
    }

    /// The origin of the authorization endpoint, discovering it if needed (for the
    /// connect page's `form-action`); `None` if it cannot be known now.
    pub async fn authorize_origin(&self) -> Option<String> {
        let endpoints = self.endpoints().await.ok()?;
        let origin = endpoints.authorize.origin().ascii_serialization();
        (origin != "null").then_some(origin)
    }

    /// The authorization URL for `scopes`, coming back to `redirect_uri`; with the
    /// `state` and the PKCE verifier the callback must match.
    pub async fn authorize_url(
        &self,
        redirect_uri: &str,
        scopes: &[String],
    ) -> Result<(String, String, String), ProviderFailure> {
        let (client, _) = self.client(Some(redirect_uri)).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge);
        for scope in scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        for (name, value) in &self.def.authorize_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        let (url, state) = request.url();
        Ok((
            url.to_string(),
            state.secret().clone(),
            verifier.secret().clone(),
        ))
    }

    /// Redeems an authorization code.
    pub async fn redeem(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens, ProviderFailure> {
        let (client, _) = self.client(Some(redirect_uri)).await?;
        let http = self.http.clone();
        let send = move |request: HttpRequest| provider_http::send(http.clone(), request);
        client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&send)
            .await
            .map(|answer| tokens_of(&answer))
            .map_err(classify)
    }

    /// A new access token from a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, ProviderFailure> {
        let (client, _) = self.client(None).await?;
        let http = self.http.clone();
        let send = move |request: HttpRequest| provider_http::send(http.clone(), request);
        let refresh = RefreshToken::new(refresh_token.to_string());
        client
            .exchange_refresh_token(&refresh)
            .request_async(&send)
            .await
            .map(|answer| tokens_of(&answer))
            .map_err(classify)
    }

    /// The deployment's own token for `scopes` (client credentials).
    pub async fn client_credentials(&self, scopes: &[String]) -> Result<Tokens, ProviderFailure> {
        let (client, _) = self.client(None).await?;
        let http = self.http.clone();
        let send = move |request: HttpRequest| provider_http::send(http.clone(), request);
        client
            .exchange_client_credentials()
            .add_scopes(scopes.iter().cloned().map(Scope::new))
            .request_async(&send)
            .await
            .map(|answer| tokens_of(&answer))
            .map_err(classify)
    }

    /// Revokes a token (RFC 7009); `refresh` says which kind it is. `Ok(false)` when the
    /// provider has no revocation endpoint.
    pub async fn revoke(&self, token: &str, refresh: bool) -> Result<bool, ProviderFailure> {
        let endpoints = self.endpoints().await?;
        let Some(revocation) = endpoints.revocation else {
            return Ok(false);
        };
        let hint = if refresh {
            "refresh_token"
        } else {
            "access_token"
        };
        let answer = self
            .post_form(
                &revocation,
                vec![
                    ("token", token.to_string()),
                    ("token_type_hint", hint.into()),
                ],
            )
            .await?;
        // RFC 7009 §2.2: 200 whether or not the token was still valid.
        if answer.status().is_success() {
            return Ok(true);
        }
        Err(refusal_of(&answer, "the revocation"))
    }

    /// POSTs `fields` to `endpoint` as Leash's client (Basic with the secret, RFC 6749
    /// §2.3.1; else `client_id` in the form).
    async fn post_form(
        &self,
        endpoint: &reqwest::Url,
        mut fields: Vec<(&str, String)>,
    ) -> Result<oauth2::HttpResponse, ProviderFailure> {
        let mut request = http::Request::post(endpoint.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        match &self.def.client_secret {
            Some(secret) => {
                let encode = |text: &str| {
                    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", encode(&self.def.client_id), encode(secret));
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                request = request.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
            }
            None => fields.push(("client_id", self.def.client_id.clone())),
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&fields)
            .finish();
        let request = request
            .body(body.into_bytes())
            .map_err(|e| ProviderFailure::Unreachable(e.to_string()))?;
        provider_http::send(self.http.clone(), request)
            .await
            .map_err(|e: ProviderHttpError| ProviderFailure::Unreachable(e.0))
    }

    /// RFC 8693: a token for `scopes` only, exchanged from `subject` (the user's access
    /// token), with a grant of its own at the provider so that revoking it leaves the
    /// user's connection alone.
    pub async fn exchange(
        &self,
        subject: &str,
        scopes: &[String],
    ) -> Result<Tokens, ProviderFailure> {
        let endpoints = self.endpoints().await?;
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", TOKEN_EXCHANGE.into()),
            ("subject_token", subject.into()),
            ("subject_token_type", ACCESS_TOKEN_TYPE.into()),
            ("requested_token_type", ACCESS_TOKEN_TYPE.into()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let answer = self.post_form(&endpoints.token, form).await?;
        if !answer.status().is_success() {
            return Err(refusal_of(&answer, "the token exchange"));
        }
        let parsed: ExchangeAnswer = serde_json::from_slice(answer.body()).map_err(|_| {
            ProviderFailure::Unreachable(
                "the token exchange answered something that is not an OAuth token answer".into(),
            )
        })?;
        Ok(Tokens {
            access_token: parsed.access_token,
            expires_in_secs: parsed.expires_in,
            refresh_token: None,
            scopes: parsed
                .scope
                .map(|s| s.split_whitespace().map(str::to_string).collect()),
        })
    }
}
