//! Who is calling: the admin (bootstrap secret), an agent or approver (credentials), or
//! the holder of a task token. Read from `Authorization: Bearer …`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use biscuit_auth::builder::{AuthorizerBuilder, fact};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::state::AppState;
use crate::error::ApiError;
use crate::tokens::verify::{Principal, VerifiedToken};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The holder of the admin token.
    Admin,
    /// An agent, by credential.
    Agent(String),
    /// An approver, by credential.
    Approver(String),
    /// The holder of a task token (possibly attenuated).
    Task(Arc<VerifiedToken>),
}

impl Caller {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Agent(id) => format!("agent:{id}"),
            Caller::Approver(id) => format!("approver:{id}"),
            Caller::Task(token) => match &token.principal {
                Principal::Task { agent, .. } => format!("agent:{agent}"),
                _ => "unknown".into(),
            },
        }
    }

    /// Refuses any caller but an approver or the admin.
    pub fn require_approver_or_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::Approver(_) => Ok(()),
            _ => Err(ApiError::Forbidden(
                "this needs an approver credential or the admin token".into(),
            )),
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

/// Whether the bearer in `headers` is already known good: the admin token (digest
/// compared in constant time) or a token verified before. Costs no signature check; the
/// invalid-credential throttle lets these through (routes::limits).
pub fn is_known_credential(state: &AppState, headers: &HeaderMap) -> bool {
    let Ok(token) = bearer(headers) else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    bool::from(digest.ct_eq(&state.admin_digest)) || state.verifier.is_known(token)
}

/// Authenticates a request.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = bearer(headers)?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if bool::from(digest.ct_eq(&state.admin_digest)) {
        return Ok(Caller::Admin);
    }
    let verified = state
        .verifier
        .verify(token, |id| state.revoked.refusal(id))?;
    match &verified.principal {
        Principal::Task { .. } => Ok(Caller::Task(verified)),
        Principal::Agent(agent) => {
            // A replica that may have missed a credential revocation trusts none.
            state.health.check()?;
            check_credential(state, &verified)?;
            Ok(Caller::Agent(agent.clone()))
        }
        Principal::Approver(approver) => {
            state.health.check()?;
            check_credential(state, &verified)?;
            Ok(Caller::Approver(approver.clone()))
        }
    }
}

/// Runs a credential's own checks (its window, any attenuation) against `time(now)`.
pub fn check_credential(state: &AppState, token: &VerifiedToken) -> Result<(), ApiError> {
    let now = std::time::UNIX_EPOCH + Duration::from_millis(state.clock.now_ms().max(0) as u64);
    let result = AuthorizerBuilder::new()
        .set_limits(leash_sdk::capability::limits())
        .fact(fact("time", &[biscuit_auth::builder::date(&now)]))
        .and_then(|b| b.policy("allow if role($r)"))
        .and_then(|b| b.build(&token.biscuit))
        .and_then(|mut a| a.authorize());
    result
        .map(|_| ())
        .map_err(|_| ApiError::TokenExpired("the credential has expired or its checks fail".into()))
}

/// Authenticates a request that must carry a task token.
pub fn task_token(state: &AppState, headers: &HeaderMap) -> Result<Arc<VerifiedToken>, ApiError> {
    match authenticate(state, headers)? {
        Caller::Task(token) => Ok(token),
        Caller::Agent(_) => Err(ApiError::TokenInvalid(
            "this is an agent credential, not a task token: open a task with POST /v1/tasks".into(),
        )),
        Caller::Approver(_) => Err(ApiError::TokenInvalid(
            "this is an approver credential, not a task token".into(),
        )),
        Caller::Admin => Err(ApiError::TokenInvalid(
            "the admin token is not a task token".into(),
        )),
    }
}
