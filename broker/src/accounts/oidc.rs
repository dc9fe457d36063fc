//! Signing in through the deployment's OpenID provider (`[sign_in.oidc]`): the
//! authorization code flow with PKCE, `state` and `nonce`, through the `openidconnect`
//! crate (discovery, JWKS, ID token signature, `iss`, `aud`, `exp`, `nonce`).
//!
//! What a sign-in in progress must remember (state, nonce, PKCE verifier, where to go
//! next) travels in a cookie sealed with the deployment's at-rest key (`leash_oidc`,
//! HttpOnly, ten minutes), so any replica can finish it and a browser that did not start
//! it (login CSRF) cannot. The provider is configured by the operator, so it is reached
//! with the one hardened upstream client (no redirects, no proxies, bounded answers).
//!
//! The user name is the ID token's `username_claim` (default `email`, accepted only with
//! `email_verified: true`); the groups are its `groups_claim`; a member of
//! an `approver_groups` group is an approver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

use crate::accounts::passwords::SignedIn;
use crate::accounts::sessions::same_token;
use crate::audit::log::{Audit, AuditEvent};
use crate::clock::Clock;
use crate::policy::OidcSettings;
use crate::tokens::seal::Sealer;
use crate::upstream::provider_http::{self, describe_chain};

/// The cookie holding a sign-in in progress.
pub const OIDC_COOKIE: &str = "leash_oidc";
/// How long a sign-in may take at the provider.
pub const LOGIN_MS: i64 = 10 * 60 * 1000;
/// How long discovered provider metadata (and its keys) is used before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(300);
/// The ID token signatures accepted (RS256, PS256, ES256, EdDSA).
const ID_TOKEN_ALGS: [CoreJwsSigningAlgorithm; 4] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EdDsa,
];
/// The kind of sealed value the cookie holds.
const SEALED_KIND: &str = "oidc sign-in";

/// Why an OpenID sign-in did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OidcFailure {
    /// The provider could not be reached or answered nonsense (502).
    #[error("the sign-in provider cannot be reached: {0}")]
    Unreachable(String),
    /// The person declined at the provider, or it refused (403).
    #[error("the sign-in provider did not sign you in: {0}")]
    Declined(String),
    /// The callback is not one this browser is waiting for, or does not check out (400).
    #[error("{0}")]
    Refused(String),
}

/// What the cookie remembers.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    redirect_uri: String,
    expires_at_ms: i64,
}

/// Sign-in through the OpenID provider.
pub struct OidcSignIn {
    audit: Audit,
    settings: Arc<OidcSettings>,
    http: reqwest::Client,
    sealer: Arc<Sealer>,
    clock: Clock,
    metadata: Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

/// Where the person starts at the provider, and the cookie to set.
pub struct Started {
    /// The provider's authorization URL.
    pub location: String,
    /// The `leash_oidc` cookie value (sealed).
    pub cookie_value: String,
}

impl OidcSignIn {
    /// Sign-in through `settings`' provider, reached with `http`.
    pub fn new(
        settings: Arc<OidcSettings>,
        http: reqwest::Client,
        sealer: Arc<Sealer>,
        audit: Audit,
        clock: Clock,
    ) -> Self {
        OidcSignIn {
            audit,
            settings,
            http,
            sealer,
            clock,
            metadata: Mutex::new(None),
        }
    }

    /// The provider's name for the sign-in page (its issuer's host).
    pub fn provider_name(&self) -> String {
        reqwest::Url::parse(&self.settings.issuer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| self.settings.issuer.clone())
    }

    /// The provider's metadata and keys: discovered, then kept for five minutes (or
    /// read again at once with `fresh`, after a key the cached set does not hold).
    async fn metadata(&self, fresh: bool) -> Result<CoreProviderMetadata, OidcFailure> {
        let mut cached = self.metadata.lock().await;
        if !fresh
            && let Some((at, metadata)) = cached.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|e| OidcFailure::Unreachable(format!("the issuer URL is not valid: {e}")))?;
        let http = self.http.clone();
        let client = move |request: HttpRequest| provider_http::send(http.clone(), request);
        let metadata = CoreProviderMetadata::discover_async(issuer, &client)
            .await
            .map_err(|e| OidcFailure::Unreachable(describe_chain(&e)))?;
        *cached = Some((Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
        redirect_uri: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        OidcFailure,
    > {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcFailure::Refused(format!("bad redirect URL: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in that comes back to `redirect_uri` and then goes to `next`.
    pub async fn start(&self, next: &str, redirect_uri: &str) -> Result<Started, OidcFailure> {
        let client = self.client(self.metadata(false).await?, redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let pending = Pending {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            next: next.to_string(),
            redirect_uri: redirect_uri.to_string(),
            expires_at_ms: self.clock.now_ms() + LOGIN_MS,
        };
        let text = serde_json::to_string(&pending)
            .map_err(|e| OidcFailure::Refused(format!("cannot remember the sign-in: {e}")))?;
        Ok(Started {
            location: url.to_string(),
            cookie_value: self.sealer.seal(SEALED_KIND, "cookie", &text),
        })
    }

    /// [`Self::finish`], audited (`user.signed_in` / `user.sign_in_failed`, method
    /// `oidc`, with the client's `address`).
    pub async fn finish_audited(
        &self,
        callback: &Callback,
        cookie: Option<&str>,
        address: &str,
    ) -> Result<(SignedIn, String), OidcFailure> {
        let outcome = self.finish(callback, cookie).await;
        let event = match &outcome {
            Ok((signed, _)) => AuditEvent {
                kind: "user.signed_in",
                actor: format!("user:{}", signed.user),
                task_id: None,
                detail: json!({ "method": "oidc", "address": address, "approver": signed.approver }),
            },
            Err(failure) => AuditEvent {
                kind: "user.sign_in_failed",
                actor: "anonymous".into(),
                task_id: None,
                detail: json!({ "method": "oidc", "address": address, "why": failure.to_string() }),
            },
        };
        self.audit.record(event).await;
        outcome
    }

    /// Finishes a sign-in from the provider's callback: `cookie` is the `leash_oidc`
    /// value this browser holds. Returns who signed in and where to go next.
    pub async fn finish(
        &self,
        callback: &Callback,
        cookie: Option<&str>,
    ) -> Result<(SignedIn, String), OidcFailure> {
        let refused = |why: &str| OidcFailure::Refused(why.to_string());
        let cookie = cookie.ok_or_else(|| {
            refused("this browser did not start a sign-in (or it expired); sign in again")
        })?;
        let pending: Pending = self
            .sealer
            .open(SEALED_KIND, "cookie", cookie)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .ok_or_else(|| refused("the sign-in cookie is not one this broker made"))?;
        if pending.expires_at_ms <= self.clock.now_ms() {
            return Err(refused("the sign-in took too long; sign in again"));
        }
        if !callback
            .state
            .as_deref()
            .is_some_and(|state| same_token(state, &pending.state))
        {
            return Err(refused(
                "the answer from the sign-in provider is not for this browser's sign-in",
            ));
        }
        if let Some(issuer) = &callback.iss
            && issuer.trim_end_matches('/') != self.settings.issuer
        {
            return Err(refused("the answer names another issuer (RFC 9207)"));
        }
        if let Some(error) = &callback.error {
            let description = callback.error_description.as_deref().unwrap_or("");
            return Err(OidcFailure::Declined(
                format!("{error} {description}").trim().to_string(),
            ));
        }
        let code = callback
            .code
            .clone()
            .ok_or_else(|| refused("the answer carries no code"))?;
        let metadata = self.metadata(false).await?;
        let client = self.client(metadata, &pending.redirect_uri)?;
        let http = self.http.clone();
        let http_client = move |request: HttpRequest| provider_http::send(http.clone(), request);
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcFailure::Unreachable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&http_client)
            .await
            .map_err(|e| {
                OidcFailure::Refused(format!("the code was not accepted: {}", describe_chain(&e)))
            })?;
        let id_token = openidconnect::TokenResponse::id_token(&tokens)
            .ok_or_else(|| refused("the provider sent no ID token"))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let checked = {
            let verifier = client.id_token_verifier().set_allowed_algs(ID_TOKEN_ALGS);
            id_token.claims(&verifier, &nonce).map(|_| ())
        };
        if let Err(first) = checked {
            // Perhaps the provider rotated its keys: read them again, once.
            let metadata = self.metadata(true).await?;
            let client = self.client(metadata, &pending.redirect_uri)?;
            let verifier = client.id_token_verifier().set_allowed_algs(ID_TOKEN_ALGS);
            id_token.claims(&verifier, &nonce).map_err(|_| {
                OidcFailure::Refused(format!("the ID token does not check out: {first}"))
            })?;
        }
        // Verified above: read the claims Leash needs from the same token's payload.
        let payload = id_token
            .to_string()
            .split('.')
            .nth(1)
            .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .ok_or_else(|| refused("the ID token's claims cannot be read"))?;
        let signed = person(&self.settings, &payload)?;
        Ok((signed, pending.next))
    }
}

/// Who the verified claims name, by `settings`' claims.
fn person(settings: &OidcSettings, claims: &serde_json::Value) -> Result<SignedIn, OidcFailure> {
    let name_claim = &settings.username_claim;
    let user = claims[name_claim.as_str()]
        .as_str()
        .map(str::trim)
        .filter(|name| crate::ids::is_user_name(name))
        .ok_or_else(|| {
            OidcFailure::Refused(format!(
                "the ID token has no usable {name_claim:?} claim to name you by"
            ))
        })?;
    // An e-mail names a person only if the provider vouches for it: without
    // `email_verified: true`, someone could set the victim's address on an account of
    // their own ("nOAuth"). Providers that do not assert it: name people by another
    // claim (`username_claim`).
    if name_claim == "email" && claims["email_verified"] != serde_json::Value::Bool(true) {
        return Err(OidcFailure::Refused(
            "the provider does not vouch for this e-mail address (email_verified is not true); name people by another claim (username_claim)".into(),
        ));
    }
    let groups: Vec<String> = match &claims[settings.groups_claim.as_str()] {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(one) => vec![one.clone()],
        _ => Vec::new(),
    };
    let approver = groups
        .iter()
        .any(|group| settings.approver_groups.contains(group));
    Ok(SignedIn {
        user: user.to_string(),
        approver,
        groups,
    })
}

/// The query of the provider's callback.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    /// The code.
    #[serde(default)]
    pub code: Option<String>,
    /// The state sent.
    #[serde(default)]
    pub state: Option<String>,
    /// RFC 9207 issuer.
    #[serde(default)]
    pub iss: Option<String>,
    /// An error instead of a code.
    #[serde(default)]
    pub error: Option<String>,
    /// Its description.
    #[serde(default)]
    pub error_description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> OidcSettings {
        OidcSettings {
            issuer: "https://login.example.com".into(),
            client_id: "leash".into(),
            client_secret: None,
            approver_groups: vec!["security".into()],
            groups_claim: "groups".into(),
            username_claim: "email".into(),
            scopes: vec!["openid".into()],
        }
    }

    #[test]
    fn an_email_names_a_person_only_when_the_provider_vouches_for_it() {
        let s = settings();
        let ann = person(
            &s,
            &json!({"email": "ann@example.com", "email_verified": true, "groups": ["security", "x"]}),
        )
        .unwrap();
        assert_eq!(ann.user, "ann@example.com");
        assert!(ann.approver);
        assert_eq!(ann.groups, vec!["security".to_string(), "x".to_string()]);
        for unvouched in [
            json!({"email": "ann@example.com"}),
            json!({"email": "ann@example.com", "email_verified": false}),
            json!({"email": "ann@example.com", "email_verified": "true"}),
        ] {
            assert!(person(&s, &unvouched).is_err(), "{unvouched}");
        }
        // Groups of the wrong shape give no role.
        let odd = person(
            &s,
            &json!({"email": "bo@example.com", "email_verified": true, "groups": {"security": true}}),
        )
        .unwrap();
        assert!(!odd.approver && odd.groups.is_empty());
        // Another claim names people where e-mail is not vouched for.
        let by_name = OidcSettings {
            username_claim: "preferred_username".into(),
            ..settings()
        };
        assert_eq!(
            person(&by_name, &json!({"preferred_username": "carol"}))
                .unwrap()
                .user,
            "carol"
        );
        assert!(person(&by_name, &json!({"preferred_username": "not a name"})).is_err());
    }
}
