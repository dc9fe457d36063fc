//! Issuing a task token for a task: the grant's checks plus the agent's, a window, and
//! the revocation id to record. Used by task creation, renewal and approval.

use crate::error::ApiError;
use crate::mint::{TaskClaims, task_token, to_text};
use crate::policy::Grant;
use crate::server::AppState;

/// A freshly minted task token.
pub struct Issued {
    /// The token text (base64).
    pub token: String,
    /// Hex revocation id of its authority block.
    pub revocation_id: String,
    /// End of its window (ms since epoch, whole seconds).
    pub expires_at_ms: i64,
}

/// Mints a token for a task of `grant` that ends `ttl_ms` from now.
pub fn issue(
    state: &AppState,
    task_id: &str,
    grant: &Grant,
    tools: &[String],
    agent_checks: &[String],
    ttl_ms: i64,
) -> Result<Issued, ApiError> {
    let expires_secs = state.clock.now_ms().div_euclid(1000) + ttl_ms.div_euclid(1000);
    let checks: Vec<String> = grant.checks.iter().chain(agent_checks).cloned().collect();
    let biscuit = task_token(
        &state.keys,
        &TaskClaims {
            task_id,
            agent: &grant.agent,
            tools,
            expires_at_secs: expires_secs,
            checks: &checks,
        },
    )
    .map_err(|e| ApiError::internal(anyhow::anyhow!("minting a task token: {e}")))?;
    let (token, revocation_id) = to_text(&biscuit)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("encoding a task token: {e}")))?;
    Ok(Issued {
        token,
        revocation_id,
        expires_at_ms: expires_secs * 1000,
    })
}
