//! Tool pinning (the rug-pull guard): the first time Leash sees an upstream tool it
//! records a hash of its name, description and input schema. A later, different
//! definition is withheld — not listed, not callable — until an approver accepts it.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::ToolPin;
use crate::tasks::approvals;

/// The definition that is pinned, and its hash.
pub fn definition(name: &str, description: &str, input_schema: &Value) -> (Value, String) {
    let definition =
        json!({ "name": name, "description": description, "input_schema": input_schema });
    let hash = hex::encode(Sha256::digest(definition.to_string().as_bytes()));
    (definition, hash)
}

/// Whether the tool must be withheld. Pins a first sight; files an approval for a change
/// (once: not again while one is pending).
pub async fn withheld(
    state: &AppState,
    server: &str,
    name: &str,
    definition: &Value,
    hash: &str,
) -> Result<bool, ApiError> {
    let pin = state
        .store
        .get_pin(name)
        .await
        .map_err(ApiError::internal)?;
    let Some(mut pin) = pin else {
        let first = ToolPin {
            name: name.to_string(),
            hash: hash.to_string(),
            pending_hash: None,
            approval_id: None,
        };
        state
            .store
            .put_pin(&first)
            .await
            .map_err(ApiError::internal)?;
        return Ok(false);
    };
    if pin.hash == hash {
        return Ok(false);
    }
    // Asked once per definition: pending, or denied/expired (then it stays withheld until
    // the upstream changes it again) — never refiled on every refresh.
    let asked = matches!((&pin.pending_hash, &pin.approval_id), (Some(pending), Some(_)) if pending == hash);
    if !asked {
        let approval = approvals::request_definition(state, server, name, definition, hash).await?;
        pin.pending_hash = Some(hash.to_string());
        pin.approval_id = Some(approval.approval_id);
        state
            .store
            .put_pin(&pin)
            .await
            .map_err(ApiError::internal)?;
        tracing::warn!(
            tool = name,
            "an upstream tool definition changed; withheld until an approver accepts it"
        );
    }
    Ok(true)
}

/// Accepts the definition an approved approval names, and releases the tool.
pub async fn accept(state: &AppState, name: &str, hash: &str) -> Result<(), ApiError> {
    let pin = ToolPin {
        name: name.to_string(),
        hash: hash.to_string(),
        pending_hash: None,
        approval_id: None,
    };
    state
        .store
        .put_pin(&pin)
        .await
        .map_err(ApiError::internal)?;
    state.catalog.release(name, hash);
    Ok(())
}
