//! Bodies of the public and read-only endpoints: health, keys, the revocation feed, the
//! audit log and its checkpoints, and the MCP gateway's resource metadata.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /healthz`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// One root public key (`GET /.well-known/leash/keys`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishedKey {
    /// Root key id.
    pub kid: u32,
    /// `ed25519`.
    pub algorithm: String,
    /// Biscuit's textual form, `ed25519/<hex>`.
    pub public_key: String,
}

/// `GET /.well-known/leash/keys`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySet {
    /// Every key that verifies.
    pub keys: Vec<PublishedKey>,
    /// The key (`ed25519/<hex>`) the broker signs the third-party block of every
    /// forwarded `Leash-Capability` with: a tool server trusts `forwarded` facts only
    /// from blocks signed by it. Absent from brokers that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_key: Option<String>,
}

/// One entry of the revocation feed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationEntry {
    /// Position in the feed (increasing).
    pub seq: i64,
    /// Hex revocation id: every token with a block of this id is dead.
    pub revocation_id: String,
    /// The task it belonged to, if any.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Why: `completed`, `revoked`, `expired`, `token`, …
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// When every token with this id is past its own window (RFC 3339); a verifier may
    /// forget the id a margin after that, since such a token fails its expiry check.
    /// Null: keep it for ever.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `GET /v1/revocations?after=SEQ`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationPage {
    /// Entries after the asked position (at most 1000).
    pub revocations: Vec<RevocationEntry>,
    /// The position to ask after next time.
    pub next: i64,
}

/// One event of the hash-chained audit log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain.
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// What happened, e.g. `task.issued`, `call.allowed`.
    pub kind: String,
    /// Who did it: `agent:…`, `approver:…`, `admin`, `broker`.
    pub actor: String,
    /// The task concerned, if any.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Event details (never a token or secret).
    pub detail: Value,
    /// Hash of the previous event (hex).
    pub prev_hash: String,
    /// SHA-256 over this event and `prev_hash` (hex).
    pub hash: String,
}

/// `GET /v1/audit`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    /// Events after the asked position (at most 1000).
    pub events: Vec<AuditEntry>,
    /// The position to ask after next time.
    pub next: i64,
}

/// One signed checkpoint of the audit chain.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointEntry {
    /// The seq of the audit event it covers (and every one before it).
    pub seq: i64,
    /// That event's hash (hex).
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub at: String,
    /// The root key id that signed it (see `/.well-known/leash/keys`).
    pub kid: u32,
    /// Ed25519 signature (base64url, no padding) over the UTF-8 text
    /// `leash-audit-checkpoint-v1\n{seq}\n{hash}\n{at}`.
    pub signature: String,
}

/// `GET /v1/audit/checkpoints`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointList {
    /// Checkpoints after the asked seq, oldest first (at most 1000).
    pub checkpoints: Vec<CheckpointEntry>,
}

/// `GET /.well-known/oauth-protected-resource`: RFC 9728 metadata of the MCP gateway.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceMetadata {
    /// The protected resource, `<public url>/mcp`.
    pub resource: String,
    /// `Leash`.
    pub resource_name: String,
    /// Leash itself (its public URL): it is the authorization server of its `/mcp`.
    pub authorization_servers: Vec<String>,
    /// `["header"]`.
    pub bearer_methods_supported: Vec<String>,
    /// The scopes a client may ask for: tool names (and `prefix.*` patterns).
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// The approver page.
    pub resource_documentation: String,
}
