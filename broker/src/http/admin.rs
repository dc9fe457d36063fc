//! Credentials and kill switches: minting agent and approver credentials (admin),
//! revoking an agent (approver, admin), an approver (admin), one credential (admin or
//! its holder), one token (holder, approver, admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use leash_sdk::protocol::{
    AgentCredential, AgentRevoked, ApproverCredential, ApproverRevoked, CredentialBody,
    CredentialRequest, CredentialRevoked, ReasonBody, TokenBody, TokenRevoked,
};

use super::extract::{JsonBody, OptionalJson, PathParam};
use crate::error::{ApiError, ApiResult};
use crate::http::auth::{Admin, ApproverOrAdmin, Caller};
use crate::ids::is_principal_name;
use crate::policy::Policy;
use crate::ratelimit::RateLimiter;
use crate::tasks::credentials::Credentials;
use crate::tokens::mint::Role;
use crate::tokens::verify::Principal;

/// `POST /v1/agents/{agent}/credentials`.
#[utoipa::path(post, path = "/v1/agents/{agent}/credentials", tag = "admin",
    params(("agent" = String, Path, description = "An agent id the policy has a grant for", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body(content = Option<CredentialRequest>, description = "May be empty"),
    security(("admin" = [])),
    responses((status = 201, description = "The credential, shown once", body = AgentCredential)))]
pub async fn agent_credential(
    _: Admin,
    State(policy): State<Arc<Policy>>,
    State(credentials): State<Arc<Credentials>>,
    PathParam(agent): PathParam,
    OptionalJson(body): OptionalJson<CredentialRequest>,
) -> ApiResult<(StatusCode, Json<AgentCredential>)> {
    if !is_principal_name(&agent) {
        return Err(ApiError::BadRequest(format!(
            "{agent:?} is not a valid agent id"
        )));
    }
    if policy.grant(&agent).is_none() {
        return Err(ApiError::NotFound(format!(
            "the policy has no grant for agent {agent:?}"
        )));
    }
    let token = credentials
        .mint(Role::Agent, &agent, body.ttl_seconds)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AgentCredential {
            agent,
            credential: token,
        }),
    ))
}

/// `POST /v1/approvers/{approver}/credentials`.
#[utoipa::path(post, path = "/v1/approvers/{approver}/credentials", tag = "admin",
    params(("approver" = String, Path, description = "The approver's id", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body(content = Option<CredentialRequest>, description = "May be empty"),
    security(("admin" = [])),
    responses((status = 201, description = "The credential, shown once", body = ApproverCredential)))]
pub async fn approver_credential(
    _: Admin,
    State(credentials): State<Arc<Credentials>>,
    PathParam(approver): PathParam,
    OptionalJson(body): OptionalJson<CredentialRequest>,
) -> ApiResult<(StatusCode, Json<ApproverCredential>)> {
    if !is_principal_name(&approver) {
        return Err(ApiError::BadRequest(format!(
            "{approver:?} is not a valid approver id"
        )));
    }
    let token = credentials
        .mint(Role::Approver, &approver, body.ttl_seconds)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ApproverCredential {
            approver,
            credential: token,
        }),
    ))
}

/// Limits and defaults a revocation reason.
pub fn reason_text(reason: Option<String>) -> ApiResult<String> {
    let reason = reason.unwrap_or_else(|| "revoked".into());
    if !crate::text::is_free_text(&reason) {
        return Err(ApiError::BadRequest(
            "reason must be at most 1000 printable characters".into(),
        ));
    }
    Ok(reason)
}

/// `POST /v1/agents/{agent}/revoke`: every live task of the agent, and its credentials.
#[utoipa::path(post, path = "/v1/agents/{agent}/revoke", tag = "admin",
    params(("agent" = String, Path, description = "The agent to cut off", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body(content = Option<ReasonBody>, description = "May be empty"),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "The agent's tasks and credentials are revoked", body = AgentRevoked)))]
pub async fn revoke_agent(
    caller: ApproverOrAdmin,
    State(credentials): State<Arc<Credentials>>,
    PathParam(agent): PathParam,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> ApiResult<Json<AgentRevoked>> {
    if !is_principal_name(&agent) {
        return Err(ApiError::BadRequest(format!(
            "{agent:?} is not a valid agent id"
        )));
    }
    let reason = reason_text(body.reason)?;
    let revoked_tasks = credentials
        .revoke_agent(&agent, &reason, &caller.actor())
        .await?;
    Ok(Json(AgentRevoked { revoked_tasks }))
}

/// `POST /v1/approvers/{approver}/revoke`: every credential of the approver dies at once
/// (on every replica, through the revocation feed).
#[utoipa::path(post, path = "/v1/approvers/{approver}/revoke", tag = "admin",
    params(("approver" = String, Path, description = "The approver to cut off", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body(content = Option<ReasonBody>, description = "May be empty"),
    security(("admin" = [])),
    responses((status = 200, description = "Every credential of the approver is revoked", body = ApproverRevoked)))]
pub async fn revoke_approver(
    _: Admin,
    State(credentials): State<Arc<Credentials>>,
    PathParam(approver): PathParam,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> ApiResult<Json<ApproverRevoked>> {
    if !is_principal_name(&approver) {
        return Err(ApiError::BadRequest(format!(
            "{approver:?} is not a valid approver id"
        )));
    }
    let reason = reason_text(body.reason)?;
    let revoked_credentials = credentials.revoke_approver(&approver, &reason).await?;
    Ok(Json(ApproverRevoked {
        approver,
        revoked_credentials,
    }))
}

/// `POST /v1/credentials/revoke`: one agent or approver credential (and anything
/// attenuated from it) dies; the subject's other credentials and tasks go on. For the
/// admin, or the credential's own holder.
#[utoipa::path(post, path = "/v1/credentials/revoke", tag = "admin",
    request_body = CredentialBody,
    security(("admin" = []), ("agent" = []), ("approver" = [])),
    responses((status = 200, description = "The credential is revoked", body = CredentialRevoked)))]
pub async fn revoke_credential(
    caller: Caller,
    State(credentials): State<Arc<Credentials>>,
    JsonBody(body): JsonBody<CredentialBody>,
) -> ApiResult<Json<CredentialRevoked>> {
    let target = credentials.target(&body.credential, "credential")?;
    let (role, subject) = match &target.principal {
        Principal::Agent(agent) => (Role::Agent, agent.clone()),
        Principal::Approver(approver) => (Role::Approver, approver.clone()),
        Principal::Task { .. } => {
            return Err(ApiError::BadRequest(
                "credential: this is a task token; revoke it with /v1/tokens/revoke".into(),
            ));
        }
    };
    // The credential itself: its authority block's id, which every attenuation shares.
    let Some(root) = target.revocation_ids.first().cloned() else {
        return Err(ApiError::BadRequest("credential: it has no blocks".into()));
    };
    let allowed = match &caller {
        Caller::Admin => true,
        Caller::Agent(holder) | Caller::Approver(holder) => {
            holder.token.revocation_ids.first() == Some(&root)
        }
        Caller::Task(_) => false,
    };
    if !allowed {
        return Err(ApiError::Forbidden(
            "only the admin or the credential's own holder may revoke it".into(),
        ));
    }
    credentials
        .revoke_credential(&root, role, &subject, &caller.actor())
        .await?;
    Ok(Json(CredentialRevoked {
        role: role.as_str().into(),
        subject,
        revocation_id: root,
        state: "revoked".into(),
    }))
}

/// `POST /v1/tokens/revoke`: one (attenuated) token and everything derived from it;
/// its task goes on. Allowed for the token itself or any ancestor of it, the owner
/// agent, approvers and the admin.
#[utoipa::path(post, path = "/v1/tokens/revoke", tag = "admin",
    request_body = TokenBody,
    security(("task" = []), ("agent" = []), ("approver" = []), ("admin" = [])),
    responses((status = 200, description = "The token and everything attenuated from it are revoked", body = TokenRevoked)))]
pub async fn revoke_token(
    caller: Caller,
    State(credentials): State<Arc<Credentials>>,
    State(rate_limiter): State<Arc<RateLimiter>>,
    JsonBody(body): JsonBody<TokenBody>,
) -> ApiResult<Json<TokenRevoked>> {
    let target = credentials.target(&body.token, "token")?;
    let Principal::Task { task_id, agent } = &target.principal else {
        return Err(ApiError::BadRequest(
            "token: only task tokens are revoked here; revoke an agent with /v1/agents/{agent}/revoke".into(),
        ));
    };
    let allowed = match &caller {
        Caller::Admin | Caller::Approver(_) => true,
        Caller::Agent(owner) => owner.id == *agent,
        Caller::Task(holder) => {
            holder.revocation_ids.len() <= target.revocation_ids.len()
                && target.revocation_ids.starts_with(&holder.revocation_ids)
        }
    };
    if !allowed {
        return Err(ApiError::Forbidden(
            "only the token's holder (or an ancestor), its owner agent or an approver may revoke it".into(),
        ));
    }
    // What a token holder can publish is bounded: every revoked id is kept by the broker
    // and by every verifier until its window ends.
    match &caller {
        Caller::Agent(agent) => rate_limiter.check(&agent.id)?,
        Caller::Task(holder) => {
            if let Principal::Task { agent, .. } = &holder.principal {
                rate_limiter.check(agent)?;
            }
        }
        Caller::Admin | Caller::Approver(_) => {}
    }
    let own = credentials
        .revoke_token(&target, task_id, &caller.actor())
        .await?;
    Ok(Json(TokenRevoked {
        task_id: task_id.clone(),
        revocation_id: own,
        state: "revoked".into(),
    }))
}
