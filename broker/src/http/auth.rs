//! Who is calling: the admin (bootstrap secret), an agent or approver (credentials), or
//! the holder of a task token, read from `Authorization: Bearer …` — or, for approver
//! endpoints only, a person signed in to the approver page (session cookie, with the
//! session's CSRF token in `X-Leash-CSRF` on anything but a read).
//!
//! Each kind of caller an endpoint admits is an extractor ([`Admin`], [`ApproverOrAdmin`],
//! [`Agent`], [`AgentOrTask`], [`TaskToken`], [`MetricsReader`], or any [`Caller`]), so
//! a handler's signature says who may call it, and a refusal is the same [`ApiError`]
//! wherever it happens (the failed-authentication throttle of `http::limits` reads it
//! from the response). The extractors need only an [`Authenticator`], which any state
//! provides through [`FromRef`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use biscuit_auth::builder::{AuthorizerBuilder, fact};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::sessions::{Sessions, same_token};
use crate::app::state::AppState;
use crate::clock::Clock;
use crate::error::ApiError;
use crate::replica::health::FeedHealth;
use crate::store::WebSession;
use crate::tokens::revocation::RevocationSet;
use crate::tokens::verify::{Principal, TokenVerifier, VerifiedToken};

/// Exactly what authenticating a request needs: the token verifier, the revoked set,
/// the feed's health (a stale replica trusts no credential), the clock (credential
/// windows) and the digests of the admin and metrics tokens.
#[derive(Clone)]
pub struct Authenticator {
    verifier: Arc<TokenVerifier>,
    revoked: Arc<RevocationSet>,
    health: Arc<FeedHealth>,
    clock: Clock,
    admin_digest: [u8; 32],
    metrics_digest: Option<[u8; 32]>,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        Authenticator {
            verifier: state.verifier.clone(),
            revoked: state.revoked.clone(),
            health: state.health.clone(),
            clock: state.clock.clone(),
            admin_digest: state.admin_digest,
            metrics_digest: state.metrics_digest,
        }
    }
}

/// An agent's or approver's credential, verified.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The agent or approver id it names.
    pub id: String,
    /// The verified credential (its revocation ids, authority first).
    pub token: Arc<VerifiedToken>,
}

/// An authenticated caller; as an extractor, any of them.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The holder of the admin token.
    Admin,
    /// An agent, by credential.
    Agent(Credential),
    /// An approver, by credential.
    Approver(Credential),
    /// The holder of a task token (possibly attenuated).
    Task(Arc<VerifiedToken>),
}

impl Caller {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Agent(agent) => format!("agent:{}", agent.id),
            Caller::Approver(approver) => format!("approver:{}", approver.id),
            Caller::Task(token) => match &token.principal {
                Principal::Task { agent, .. } => format!("agent:{agent}"),
                _ => "unknown".into(),
            },
        }
    }
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthenticated("missing Authorization: Bearer header".into()))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is not ASCII".into()))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::Unauthenticated(
            "the Authorization header must be `Bearer <token>`".into(),
        )),
    }
}

impl Authenticator {
    fn is_admin(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(digest.ct_eq(&self.admin_digest))
    }

    /// Whether the bearer in `headers` is already known good: the admin token (digest
    /// compared in constant time) or a token verified before. Costs no signature check;
    /// the invalid-credential throttle lets these through (`http::limits`).
    pub fn is_known_credential(&self, headers: &HeaderMap) -> bool {
        let Ok(token) = bearer(headers) else {
            return false;
        };
        self.is_admin(token) || self.verifier.is_known(token)
    }

    /// Whether the bearer in `headers` is the scrape-only metrics token.
    pub fn is_metrics_token(&self, headers: &HeaderMap) -> bool {
        bearer(headers).ok().is_some_and(|token| {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            self.metrics_digest
                .is_some_and(|expected| bool::from(digest.ct_eq(&expected)))
        })
    }

    /// Authenticates a request. A token bound to an audience (an OAuth access token) is
    /// refused: it is good only at its resource ([`Self::task_token_at`]).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        self.authenticate_at(headers, None)
    }

    fn authenticate_at(
        &self,
        headers: &HeaderMap,
        resource: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let token = bearer(headers)?;
        if self.is_admin(token) {
            return Ok(Caller::Admin);
        }
        let verified = self.verifier.verify(token, |id| self.revoked.refusal(id))?;
        match &verified.principal {
            Principal::Task { .. } => match verified.audience.as_deref() {
                None => Ok(Caller::Task(verified)),
                Some(_)
                    if verified
                        .expires_at_secs
                        .is_none_or(|end| end * 1000 <= self.clock.now_ms()) =>
                {
                    Err(ApiError::TokenExpired(
                        "the access token has expired; refresh it".into(),
                    ))
                }
                Some(audience) if Some(audience) == resource => Ok(Caller::Task(verified)),
                Some(audience) => Err(ApiError::TokenInvalid(format!(
                    "this access token is for {audience} and is accepted only there"
                ))),
            },
            Principal::Agent(agent) => {
                // A replica that may have missed a credential revocation trusts none.
                self.health.check()?;
                self.check_credential(&verified)?;
                Ok(Caller::Agent(Credential {
                    id: agent.clone(),
                    token: verified,
                }))
            }
            Principal::Approver(approver) => {
                self.health.check()?;
                self.check_credential(&verified)?;
                Ok(Caller::Approver(Credential {
                    id: approver.clone(),
                    token: verified,
                }))
            }
        }
    }

    /// Runs a credential's own checks (its window, any attenuation) against `time(now)`.
    pub fn check_credential(&self, token: &VerifiedToken) -> Result<(), ApiError> {
        let now = std::time::UNIX_EPOCH + Duration::from_millis(self.clock.now_ms().max(0) as u64);
        let result = AuthorizerBuilder::new()
            .set_limits(leash_sdk::capability::limits())
            .fact(fact("time", &[biscuit_auth::builder::date(&now)]))
            .and_then(|b| b.policy("allow if role($r)"))
            .and_then(|b| b.build(&token.biscuit))
            .and_then(|mut a| a.authorize());
        result.map(|_| ()).map_err(|_| {
            ApiError::TokenExpired("the credential has expired or its checks fail".into())
        })
    }

    /// Whether any block of `token` has been revoked since it was verified.
    pub fn is_revoked(&self, token: &VerifiedToken) -> bool {
        token
            .revocation_ids
            .iter()
            .any(|id| self.revoked.contains(id))
    }

    /// Authenticates a request that must carry a task token.
    pub fn task_token(&self, headers: &HeaderMap) -> Result<Arc<VerifiedToken>, ApiError> {
        self.task_token_at(headers, None)
    }

    /// Authenticates a request to `resource` (`<public url>/mcp`) that must carry a task
    /// token: a plain task token, or an access token whose audience is that resource.
    pub fn task_token_at(
        &self,
        headers: &HeaderMap,
        resource: Option<&str>,
    ) -> Result<Arc<VerifiedToken>, ApiError> {
        match self.authenticate_at(headers, resource)? {
            Caller::Task(token) => Ok(token),
            Caller::Agent(_) => Err(ApiError::TokenInvalid(
                "this is an agent credential, not a task token: open a task with POST /v1/tasks"
                    .into(),
            )),
            Caller::Approver(_) => Err(ApiError::TokenInvalid(
                "this is an approver credential, not a task token".into(),
            )),
            Caller::Admin => Err(ApiError::TokenInvalid(
                "the admin token is not a task token".into(),
            )),
        }
    }
}

/// Authenticates `parts` with the state's [`Authenticator`].
fn caller_of<S>(parts: &Parts, state: &S) -> Result<Caller, ApiError>
where
    Authenticator: FromRef<S>,
{
    Authenticator::from_ref(state).authenticate(&parts.headers)
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        caller_of(parts, state)
    }
}

/// The holder of the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match caller_of(parts, state)? {
            Caller::Admin => Ok(Admin),
            _ => Err(ApiError::Forbidden("this needs the admin token".into())),
        }
    }
}

/// An approver (by credential, or signed in to the approver page) or the admin.
#[derive(Debug, Clone)]
pub enum ApproverOrAdmin {
    /// The holder of the admin token.
    Admin,
    /// An approver, by credential.
    Approver(Credential),
    /// A person with the approver role, signed in (session cookie; CSRF header on every
    /// request that changes something).
    Person(WebSession),
}

/// The header a signed-in page sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-leash-csrf";

impl ApproverOrAdmin {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            ApproverOrAdmin::Admin => "admin".into(),
            ApproverOrAdmin::Approver(approver) => format!("approver:{}", approver.id),
            ApproverOrAdmin::Person(session) => format!("user:{}", session.user),
        }
    }

    /// The approver's credential (none for the admin or a signed-in person).
    pub fn credential(&self) -> Option<&Arc<VerifiedToken>> {
        match self {
            ApproverOrAdmin::Admin | ApproverOrAdmin::Person(_) => None,
            ApproverOrAdmin::Approver(approver) => Some(&approver.token),
        }
    }

    /// The signed-in person's session, if that is who calls.
    pub fn session(&self) -> Option<&WebSession> {
        match self {
            ApproverOrAdmin::Person(session) => Some(session),
            _ => None,
        }
    }
}

/// A request without `Authorization` that carries a live session cookie: the session,
/// if it may act as an approver here (the CSRF header is required unless the method is
/// safe).
async fn approver_session(
    parts: &Parts,
    sessions: &Sessions,
) -> Option<Result<WebSession, ApiError>> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let session = sessions.current(&parts.headers).await?;
    if !session.approver {
        return Some(Err(ApiError::Forbidden(format!(
            "you are signed in as {}, who is not an approver",
            session.user
        ))));
    }
    let safe = matches!(parts.method, Method::GET | Method::HEAD);
    let csrf = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|token| same_token(token, &session.csrf));
    if !safe && !csrf {
        return Some(Err(ApiError::Forbidden(
            "a signed-in page must send its session's CSRF token (X-Leash-CSRF)".into(),
        )));
    }
    Some(Ok(session))
}

impl<S> FromRequestParts<S> for ApproverOrAdmin
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
    Arc<Sessions>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(session) = approver_session(parts, &Arc::<Sessions>::from_ref(state)).await {
            return session.map(ApproverOrAdmin::Person);
        }
        match caller_of(parts, state)? {
            Caller::Admin => Ok(ApproverOrAdmin::Admin),
            Caller::Approver(approver) => Ok(ApproverOrAdmin::Approver(approver)),
            _ => Err(ApiError::Forbidden(
                "this needs an approver credential or the admin token".into(),
            )),
        }
    }
}

/// How an endpoint for agent credentials refuses everyone else (its own wording).
pub trait AgentOnly: Send + Sync {
    /// The refusal of a caller that is not an agent.
    fn refuse(caller: &Caller) -> ApiError;
}

/// Opening a task (`POST /v1/tasks`): a task token is told to use its credential.
#[derive(Debug)]
pub enum OpensTask {}

impl AgentOnly for OpensTask {
    fn refuse(caller: &Caller) -> ApiError {
        match caller {
            Caller::Task(_) => ApiError::TokenInvalid(
                "a task token cannot open tasks: use the agent credential".into(),
            ),
            _ => ApiError::Forbidden("opening a task needs an agent credential".into()),
        }
    }
}

/// Renewing a task (`POST /v1/tasks/{id}/renew`): only its owner's credential.
#[derive(Debug)]
pub enum RenewsTask {}

impl AgentOnly for RenewsTask {
    fn refuse(_: &Caller) -> ApiError {
        ApiError::Forbidden("only the owner agent's credential may renew a task".into())
    }
}

/// An agent, by credential; `W` words the refusal of anyone else. (No `Debug`: it
/// holds the presented credential.)
pub struct Agent<W: AgentOnly = OpensTask> {
    /// The agent's verified credential.
    pub credential: Credential,
    /// The credential as presented (to verify it again against later revocations).
    pub bearer: String,
    wording: PhantomData<W>,
}

impl<S, W> FromRequestParts<S> for Agent<W>
where
    S: Send + Sync,
    W: AgentOnly,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match caller_of(parts, state)? {
            Caller::Agent(credential) => Ok(Agent {
                credential,
                bearer: bearer(&parts.headers)?.to_string(),
                wording: PhantomData,
            }),
            other => Err(W::refuse(&other)),
        }
    }
}

/// An agent (by credential) or the holder of a task token: who may complete a task.
#[derive(Debug, Clone)]
pub enum AgentOrTask {
    /// An agent, by credential.
    Agent(Credential),
    /// The holder of a task token (possibly attenuated).
    Task(Arc<VerifiedToken>),
}

impl AgentOrTask {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            AgentOrTask::Agent(agent) => Caller::Agent(agent.clone()).actor(),
            AgentOrTask::Task(token) => Caller::Task(token.clone()).actor(),
        }
    }
}

impl<S> FromRequestParts<S> for AgentOrTask
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match caller_of(parts, state)? {
            Caller::Agent(agent) => Ok(AgentOrTask::Agent(agent)),
            Caller::Task(token) => Ok(AgentOrTask::Task(token)),
            _ => Err(ApiError::Forbidden(
                "only the owner agent completes a task; approvers revoke".into(),
            )),
        }
    }
}

/// The holder of a task token (possibly attenuated).
#[derive(Debug, Clone)]
pub struct TaskToken(pub Arc<VerifiedToken>);

impl<S> FromRequestParts<S> for TaskToken
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Authenticator::from_ref(state)
            .task_token(&parts.headers)
            .map(TaskToken)
    }
}

/// A metrics scraper: the holder of `LEASH_METRICS_TOKEN`, or the admin.
#[derive(Debug, Clone, Copy)]
pub struct MetricsReader;

impl<S> FromRequestParts<S> for MetricsReader
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Authenticator::from_ref(state);
        if auth.is_metrics_token(&parts.headers)
            || matches!(auth.authenticate(&parts.headers)?, Caller::Admin)
        {
            Ok(MetricsReader)
        } else {
            Err(ApiError::Forbidden(
                "metrics need the admin token or LEASH_METRICS_TOKEN".into(),
            ))
        }
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
