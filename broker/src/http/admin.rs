//! Credentials and kill switches: minting agent and approver credentials (admin),
//! revoking an agent (approver, admin), an approver (admin), one credential (admin or
//! its holder), one token (holder, approver, admin).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use leash_sdk::protocol::{
    AgentCredential, AgentRevoked, ApproverCredential, ApproverRevoked, CredentialBody,
    CredentialRequest, CredentialRevoked, ReasonBody, TokenBody, TokenRevoked,
};
use serde_json::json;

use super::extract::{JsonBody, OptionalJson, PathParam};
use crate::app::state::AppState;
use crate::audit::log::AuditEvent;
use crate::error::{ApiError, ApiResult};
use crate::http::auth::{Admin, ApproverOrAdmin, Caller};
use crate::ids::is_principal_name;
use crate::store::TaskState;
use crate::tasks::runtime::EndOutcome;
use crate::tokens::mint::{Role, credential, to_text};
use crate::tokens::verify::Principal;

/// `POST /v1/agents/{agent}/credentials`.
#[utoipa::path(post, path = "/v1/agents/{agent}/credentials", tag = "admin",
    params(("agent" = String, Path, description = "An agent id the policy has a grant for", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body(content = Option<CredentialRequest>, description = "May be empty"),
    security(("admin" = [])),
    responses((status = 201, description = "The credential, shown once", body = AgentCredential)))]
pub async fn agent_credential(
    _: Admin,
    State(state): State<AppState>,
    PathParam(agent): PathParam,
    OptionalJson(body): OptionalJson<CredentialRequest>,
) -> ApiResult<(StatusCode, Json<AgentCredential>)> {
    if !is_principal_name(&agent) {
        return Err(ApiError::BadRequest(format!(
            "{agent:?} is not a valid agent id"
        )));
    }
    if state.policy.grant(&agent).is_none() {
        return Err(ApiError::NotFound(format!(
            "the policy has no grant for agent {agent:?}"
        )));
    }
    let token = mint_credential(&state, Role::Agent, &agent, body.ttl_seconds).await?;
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
    State(state): State<AppState>,
    PathParam(approver): PathParam,
    OptionalJson(body): OptionalJson<CredentialRequest>,
) -> ApiResult<(StatusCode, Json<ApproverCredential>)> {
    if !is_principal_name(&approver) {
        return Err(ApiError::BadRequest(format!(
            "{approver:?} is not a valid approver id"
        )));
    }
    let token = mint_credential(&state, Role::Approver, &approver, body.ttl_seconds).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApproverCredential {
            approver,
            credential: token,
        }),
    ))
}

/// How long a credential lives when the request names no `ttl_seconds`: 90 days.
pub const DEFAULT_CREDENTIAL_TTL_SECONDS: i64 = 90 * 24 * 3600;

async fn mint_credential(
    state: &AppState,
    role: Role,
    id: &str,
    ttl_seconds: Option<i64>,
) -> ApiResult<String> {
    let now = state.clock.now_ms();
    let expires = match ttl_seconds.unwrap_or(DEFAULT_CREDENTIAL_TTL_SECONDS) {
        ttl if ttl > 0 && ttl <= 366 * 24 * 3600 => Some(now / 1000 + ttl),
        _ => {
            return Err(ApiError::BadRequest(
                "ttl_seconds must be from 1 to 31622400".into(),
            ));
        }
    };
    let biscuit = credential(&state.keys, role, id, expires)
        .map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
    let (text, revocation_id) =
        to_text(&biscuit).map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
    state
        .store
        .insert_credential(
            &revocation_id,
            role.as_str(),
            id,
            now,
            expires.map(|s| s * 1000),
        )
        .await
        .map_err(ApiError::internal)?;
    state
        .audit
        .record(AuditEvent {
            kind: "credential.issued",
            actor: "admin".into(),
            task_id: None,
            detail: json!({ "role": role.as_str(), "subject": id, "revocation_id": revocation_id }),
        })
        .await;
    Ok(text)
}

/// Limits and defaults a revocation reason.
pub fn reason_text(reason: Option<String>) -> ApiResult<String> {
    let reason = reason.unwrap_or_else(|| "revoked".into());
    if reason.chars().count() > 1000 || !crate::ids::is_plain_text(&reason) {
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
    State(state): State<AppState>,
    PathParam(agent): PathParam,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> ApiResult<Json<AgentRevoked>> {
    if !is_principal_name(&agent) {
        return Err(ApiError::BadRequest(format!(
            "{agent:?} is not a valid agent id"
        )));
    }
    let reason = reason_text(body.reason)?;
    let actor = caller.actor();
    // Credentials first, so the agent cannot open a new task while its tasks are ended.
    let now = state.clock.now_ms();
    let credentials = state
        .store
        .revoke_credentials(Role::Agent.as_str(), &agent, now)
        .await
        .map_err(ApiError::internal)?;
    state.revoked.extend(&credentials);
    let mut revoked_tasks: u64 = 0;
    for task_id in state
        .store
        .live_tasks_of(&agent)
        .await
        .map_err(ApiError::internal)?
    {
        if let EndOutcome::Ended(_) = state
            .tasks
            .end(&task_id, TaskState::Revoked, &reason, &actor)
            .await?
        {
            revoked_tasks += 1;
        }
    }
    state
        .audit
        .record(AuditEvent {
            kind: "agent.revoked",
            actor,
            task_id: None,
            detail: json!({ "agent": agent, "reason": reason, "revoked_tasks": revoked_tasks, "revoked_credentials": credentials.len() }),
        })
        .await;
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
    State(state): State<AppState>,
    PathParam(approver): PathParam,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> ApiResult<Json<ApproverRevoked>> {
    if !is_principal_name(&approver) {
        return Err(ApiError::BadRequest(format!(
            "{approver:?} is not a valid approver id"
        )));
    }
    let reason = reason_text(body.reason)?;
    let credentials = state
        .store
        .revoke_credentials(Role::Approver.as_str(), &approver, state.clock.now_ms())
        .await
        .map_err(ApiError::internal)?;
    state.revoked.extend(&credentials);
    state
        .audit
        .record(AuditEvent {
            kind: "approver.revoked",
            actor: "admin".into(),
            task_id: None,
            detail: json!({ "approver": approver, "reason": reason, "revoked_credentials": credentials.len() }),
        })
        .await;
    Ok(Json(ApproverRevoked {
        approver,
        revoked_credentials: credentials.len() as u64,
    }))
}

/// Publishes one revocation id (feed, then this broker's revoked set); `true` if it was
/// not revoked before (so the caller audits it once).
async fn revoke_one(
    state: &AppState,
    id: &str,
    task_id: Option<&str>,
    reason: &str,
) -> ApiResult<bool> {
    let published = state
        .store
        .revoke_ids(&[id.to_string()], task_id, reason, state.clock.now_ms())
        .await
        .map_err(ApiError::internal)?;
    state.revoked.extend(&published);
    Ok(!published.is_empty())
}

/// The token or credential a revocation names (`field` of the body): its signature is
/// verified, but an already revoked one is accepted, so revoking twice is fine. Not one
/// of ours → 400 naming the field.
fn revocation_target(
    state: &AppState,
    text: &str,
    field: &str,
) -> ApiResult<std::sync::Arc<crate::tokens::verify::VerifiedToken>> {
    state.verifier.verify(text, |_| None).map_err(|e| match e {
        ApiError::TokenInvalid(why) => ApiError::BadRequest(format!("{field}: {why}")),
        other => other,
    })
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
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CredentialBody>,
) -> ApiResult<Json<CredentialRevoked>> {
    let target = revocation_target(&state, &body.credential, "credential")?;
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
    if revoke_one(&state, &root, None, "credential").await? {
        state
            .audit
            .record(AuditEvent {
                kind: "credential.revoked",
                actor: caller.actor(),
                task_id: None,
                detail: json!({ "role": role.as_str(), "subject": subject, "revocation_id": root }),
            })
            .await;
    }
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
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TokenBody>,
) -> ApiResult<Json<TokenRevoked>> {
    let target = revocation_target(&state, &body.token, "token")?;
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
        Caller::Agent(agent) => state.rate_limiter.check(&agent.id)?,
        Caller::Task(holder) => {
            if let Principal::Task { agent, .. } = &holder.principal {
                state.rate_limiter.check(agent)?;
            }
        }
        Caller::Admin | Caller::Approver(_) => {}
    }
    let own = target.own_id().to_string();
    let cap = state.config.max_revoked_tokens_per_task;
    if !state.revoked.contains(&own)
        && state
            .store
            .revoked_tokens_of(task_id)
            .await
            .map_err(ApiError::internal)?
            >= cap
    {
        return Err(ApiError::BudgetExhausted(format!(
            "task {task_id} already has {cap} tokens revoked one by one; revoke or complete the task instead"
        )));
    }
    if revoke_one(&state, &own, Some(task_id), "token").await? {
        state
            .audit
            .record(AuditEvent {
                kind: "token.revoked",
                actor: caller.actor(),
                task_id: Some(task_id.clone()),
                detail: json!({ "revocation_id": own, "blocks": target.revocation_ids.len() }),
            })
            .await;
    }
    Ok(Json(TokenRevoked {
        task_id: task_id.clone(),
        revocation_id: own,
        state: "revoked".into(),
    }))
}
