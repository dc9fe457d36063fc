//! Credentials and kill switches as domain rules: minting agent and approver
//! credentials, cutting off an agent (its credentials, then its live tasks) or an
//! approver, and revoking one credential or one task token. Who may ask is the HTTP
//! layer's business; what happens, in which order, and what is audited is decided here.

use std::sync::Arc;

use serde_json::json;

use crate::audit::log::{Audit, AuditEvent};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::store::{Store, TaskState};
use crate::tasks::runtime::Tasks;
use crate::tokens::keys::RootKeys;
use crate::tokens::mint::{Role, credential, to_text};
use crate::tokens::revocation::RevocationSet;
use crate::tokens::verify::{TokenVerifier, VerifiedToken};

/// How long a credential lives when the request names no `ttl_seconds`: 90 days.
pub const DEFAULT_CREDENTIAL_TTL_SECONDS: i64 = 90 * 24 * 3600;
/// Longest credential window: 366 days.
pub const MAX_CREDENTIAL_TTL_SECONDS: i64 = 366 * 24 * 3600;

/// The credentials service.
pub struct Credentials {
    /// Signs credentials.
    pub keys: Arc<RootKeys>,
    /// Credential records and the revocation feed.
    pub store: Arc<dyn Store>,
    /// Every issue and revoke is audited.
    pub audit: Audit,
    /// The clock.
    pub clock: Clock,
    /// This broker's revoked ids (updated before the answer).
    pub revoked: Arc<RevocationSet>,
    /// Reads the token or credential a revocation names.
    pub verifier: Arc<TokenVerifier>,
    /// An agent's live tasks end with it.
    pub tasks: Arc<Tasks>,
    /// Tokens of one task that may be revoked one at a time.
    pub max_revoked_tokens_per_task: i64,
}

impl Credentials {
    /// Mints a credential of `role` for `id`, valid `ttl_seconds` (default 90 days).
    pub async fn mint(
        &self,
        role: Role,
        id: &str,
        ttl_seconds: Option<i64>,
    ) -> Result<String, ApiError> {
        let now = self.clock.now_ms();
        let expires = match ttl_seconds.unwrap_or(DEFAULT_CREDENTIAL_TTL_SECONDS) {
            ttl if ttl > 0 && ttl <= MAX_CREDENTIAL_TTL_SECONDS => Some(now / 1000 + ttl),
            _ => {
                return Err(ApiError::BadRequest(
                    "ttl_seconds must be from 1 to 31622400".into(),
                ));
            }
        };
        let biscuit = credential(&self.keys, role, id, expires)
            .map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
        let (text, revocation_id) =
            to_text(&biscuit).map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
        self.store
            .insert_credential(
                &revocation_id,
                role.as_str(),
                id,
                now,
                expires.map(|s| s * 1000),
            )
            .await
            .map_err(ApiError::internal)?;
        self.audit
            .record(AuditEvent {
                kind: "credential.issued",
                actor: "admin".into(),
                task_id: None,
                detail: json!({ "role": role.as_str(), "subject": id, "revocation_id": revocation_id }),
            })
            .await;
        Ok(text)
    }

    /// Cuts an agent off: its credentials first (so it cannot open a new task while its
    /// tasks are ended), then every live task. Returns how many tasks this ended.
    pub async fn revoke_agent(
        &self,
        agent: &str,
        reason: &str,
        actor: &str,
    ) -> Result<u64, ApiError> {
        let credentials = self
            .store
            .revoke_credentials(Role::Agent.as_str(), agent, self.clock.now_ms())
            .await
            .map_err(ApiError::internal)?;
        self.revoked.extend(&credentials);
        let revoked_tasks = self
            .tasks
            .end_agent(agent, TaskState::Revoked, reason, actor)
            .await?;
        self.audit
            .record(AuditEvent {
                kind: "agent.revoked",
                actor: actor.to_string(),
                task_id: None,
                detail: json!({ "agent": agent, "reason": reason, "revoked_tasks": revoked_tasks, "revoked_credentials": credentials.len() }),
            })
            .await;
        Ok(revoked_tasks)
    }

    /// Every credential of an approver dies at once. Returns how many.
    pub async fn revoke_approver(&self, approver: &str, reason: &str) -> Result<u64, ApiError> {
        let credentials = self
            .store
            .revoke_credentials(Role::Approver.as_str(), approver, self.clock.now_ms())
            .await
            .map_err(ApiError::internal)?;
        self.revoked.extend(&credentials);
        self.audit
            .record(AuditEvent {
                kind: "approver.revoked",
                actor: "admin".into(),
                task_id: None,
                detail: json!({ "approver": approver, "reason": reason, "revoked_credentials": credentials.len() }),
            })
            .await;
        Ok(credentials.len() as u64)
    }

    /// The token or credential a revocation names (`field` of the body): its signature is
    /// verified, but an already revoked one is accepted, so revoking twice is fine. Not
    /// one of ours → 400 naming the field.
    pub fn target(&self, text: &str, field: &str) -> Result<Arc<VerifiedToken>, ApiError> {
        self.verifier.verify(text, |_| None).map_err(|e| match e {
            ApiError::TokenInvalid(why) => ApiError::BadRequest(format!("{field}: {why}")),
            other => other,
        })
    }

    /// Revokes one credential by its root id (and everything attenuated from it);
    /// audited once, however often it is asked.
    pub async fn revoke_credential(
        &self,
        root: &str,
        role: Role,
        subject: &str,
        actor: &str,
    ) -> Result<(), ApiError> {
        if self.revoke_one(root, None, "credential").await? {
            self.audit
                .record(AuditEvent {
                    kind: "credential.revoked",
                    actor: actor.to_string(),
                    task_id: None,
                    detail: json!({ "role": role.as_str(), "subject": subject, "revocation_id": root }),
                })
                .await;
        }
        Ok(())
    }

    /// Revokes one task token (`target`, of `task_id`) and everything derived from it;
    /// its task goes on. At most `max_revoked_tokens_per_task` per task: every revoked
    /// id is kept by the broker and every verifier until its window ends.
    pub async fn revoke_token(
        &self,
        target: &VerifiedToken,
        task_id: &str,
        actor: &str,
    ) -> Result<String, ApiError> {
        let own = target.own_id().to_string();
        let cap = self.max_revoked_tokens_per_task;
        if !self.revoked.contains(&own)
            && self
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
        if self.revoke_one(&own, Some(task_id), "token").await? {
            self.audit
                .record(AuditEvent {
                    kind: "token.revoked",
                    actor: actor.to_string(),
                    task_id: Some(task_id.to_string()),
                    detail: json!({ "revocation_id": own, "blocks": target.revocation_ids.len() }),
                })
                .await;
        }
        Ok(own)
    }

    /// Publishes one revocation id (feed, then this broker's revoked set); `true` if it
    /// was not revoked before (so the caller audits it once).
    async fn revoke_one(
        &self,
        id: &str,
        task_id: Option<&str>,
        reason: &str,
    ) -> Result<bool, ApiError> {
        let published = self
            .store
            .revoke_ids(&[id.to_string()], task_id, reason, self.clock.now_ms())
            .await
            .map_err(ApiError::internal)?;
        self.revoked.extend(&published);
        Ok(!published.is_empty())
    }
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
