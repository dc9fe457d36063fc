//! Token verification: bytes → a verified Biscuit and the principal its authority names.
//!
//! Order: size limit → cache (keyed by SHA-256 of the token text) → revocation ids read
//! without signature work → signature by root key id → authority facts. The result is
//! cached, so a token's signature is checked once; revocation is checked on every use by
//! the caller ([`crate::tokens::revocation`]).

use std::sync::Arc;
use std::time::Duration;

use biscuit_auth::{
    AuthorizerLimits, Biscuit, UnverifiedBiscuit, builder::AuthorizerBuilder, error,
};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::tokens::keys::RootKeys;

/// Largest token accepted (bytes of base64 text).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// An authority block longer than this (as Datalog text) counts as costly to evaluate.
const COSTLY_AUTHORITY_BYTES: usize = 2048;
/// Most blocks a token may have (an authority block and its attenuations).
pub const MAX_BLOCKS: usize = 32;
/// Verified tokens kept in memory.
const CACHE_CAPACITY: u64 = 100_000;

/// Who a verified token speaks for, read from its authority block only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A task token (or an attenuation of one).
    Task {
        /// The task id.
        task_id: String,
        /// The agent that owns the task.
        agent: String,
    },
    /// An agent credential.
    Agent(String),
    /// An approver credential.
    Approver(String),
}

/// A token whose signature has been checked.
#[derive(Debug)]
pub struct VerifiedToken {
    /// The parsed token, for the authorizer.
    pub biscuit: Biscuit,
    /// Whom it names.
    pub principal: Principal,
    /// Hex revocation id of each block, authority first.
    pub revocation_ids: Vec<String>,
    /// The `tool` facts of the authority block.
    pub tools: Vec<String>,
    /// The authority's `user` fact: the person who started the task for a client.
    pub user: Option<String>,
    /// The authority's `audience` fact: the one resource this token may be used at.
    pub audience: Option<String>,
    /// The authority's `expires` fact (seconds since the epoch), on audience-bound tokens.
    pub expires_at_secs: Option<i64>,
    /// The blocks holding a per-token budget (their Datalog reads `token_calls`); found
    /// once per token, so the call path does not print blocks.
    pub budget_blocks: Vec<usize>,
    /// Whether evaluating this token may be costly: it carries blocks a holder appended,
    /// regular expressions, or a large authority block (an agent may put up to 32
    /// checks of its own in it). Such tokens are authorized off the async workers.
    pub costly: bool,
}

impl VerifiedToken {
    /// The revocation id of this exact token (its last block): names it in the audit.
    pub fn own_id(&self) -> &str {
        self.revocation_ids.last().map(String::as_str).unwrap_or("")
    }
}

/// Verifies tokens against the root keys and caches the results.
pub struct TokenVerifier {
    keys: Arc<RootKeys>,
    /// The forwarding key's public half: a token carrying a block it signed is a
    /// forwarded capability, meant for one tool server, never a bearer for Leash.
    forwarding: Option<biscuit_auth::PublicKey>,
    cache: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
}

impl TokenVerifier {
    /// A verifier for these keys.
    pub fn new(keys: Arc<RootKeys>) -> Self {
        TokenVerifier {
            keys,
            forwarding: None,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    /// Refuses forwarded capabilities (tokens with a block signed by `forwarding`): an
    /// upstream that received one must not be able to call through Leash with it.
    pub fn refusing_forwarded(mut self, forwarding: biscuit_auth::PublicKey) -> Self {
        self.forwarding = Some(forwarding);
        self
    }

    /// Whether `text` already verified here (a cache lookup: no parsing, no signature).
    pub fn is_known(&self, text: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(text.trim().as_bytes()).into();
        self.cache.contains_key(&key)
    }

    /// Forgets every cached verification (after keys were rotated or retired).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Verifies `text`. `refusal` is asked about every revocation id before any
    /// signature work and on every cache hit; it answers the error for a revoked id.
    pub fn verify(
        &self,
        text: &str,
        refusal: impl Fn(&str) -> Option<ApiError>,
    ) -> Result<Arc<VerifiedToken>, ApiError> {
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_TOKEN_LEN {
            return Err(ApiError::TokenInvalid(
                "the token is empty or too long".into(),
            ));
        }
        let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if let Some(found) = self.cache.get(&key) {
            reject_revoked(&found.revocation_ids, &refusal)?;
            return Ok(found);
        }
        let unverified = UnverifiedBiscuit::from_base64(text)
            .map_err(|_| ApiError::TokenInvalid("the token is not a valid Biscuit".into()))?;
        let ids: Vec<String> = unverified
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect();
        reject_revoked(&ids, &refusal)?;
        // Every block costs a signature check here and a counter on every call.
        if ids.len() > MAX_BLOCKS {
            return Err(ApiError::TokenInvalid(format!(
                "the token has {} blocks; at most {MAX_BLOCKS} are accepted",
                ids.len()
            )));
        }
        let keys = &self.keys;
        let biscuit = unverified
            .verify(|kid: Option<u32>| keys.public_for(kid))
            .map_err(|e| match e {
                error::Format::UnknownPublicKey => {
                    ApiError::TokenInvalid("the token names an unknown root key id".into())
                }
                _ => ApiError::TokenInvalid("the token's signature is invalid".into()),
            })?;
        if let Some(forwarding) = &self.forwarding
            && (1..biscuit.block_count()).any(
                |i| matches!(biscuit.block_external_key(i), Ok(Some(key)) if key == *forwarding),
            )
        {
            return Err(ApiError::TokenInvalid(
                "this is a forwarded capability, for the tool server it was sent to; call Leash with the task token"
                    .into(),
            ));
        }
        let verified = Arc::new(read_authority(biscuit, ids)?);
        self.cache.insert(key, verified.clone());
        Ok(verified)
    }
}

fn reject_revoked(
    ids: &[String],
    refusal: &impl Fn(&str) -> Option<ApiError>,
) -> Result<(), ApiError> {
    match ids.iter().find_map(|id| refusal(id)) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Reads the principal from the authority block. Facts of attenuation blocks are not
/// trusted by the authorizer's default scope, so they cannot change the answer.
fn read_authority(
    biscuit: Biscuit,
    revocation_ids: Vec<String>,
) -> Result<VerifiedToken, ApiError> {
    let invalid =
        || ApiError::TokenInvalid("the token's authority block names no Leash principal".into());
    let mut authorizer = AuthorizerBuilder::new()
        .set_limits(AuthorizerLimits {
            max_facts: 1000,
            max_iterations: 100,
            max_time: Duration::from_millis(50),
        })
        .build(&biscuit)
        .map_err(|_| invalid())?;
    let expiries: Vec<(i64,)> = authorizer
        .query("found($x) <- expires($x)")
        .map_err(|_| invalid())?;
    let mut strings = |name: &str| -> Result<Vec<String>, ApiError> {
        let rule = format!("found($x) <- {name}($x)");
        let rows: Vec<(String,)> = authorizer.query(rule.as_str()).map_err(|_| invalid())?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    };
    let tasks = strings("task")?;
    let agents = strings("agent")?;
    let approvers = strings("approver")?;
    let roles = strings("role")?;
    let users = strings("user")?;
    let audiences = strings("audience")?;
    let mut tools = strings("tool")?;
    tools.sort();
    tools.dedup();
    let principal = match (
        tasks.as_slice(),
        agents.as_slice(),
        approvers.as_slice(),
        roles.as_slice(),
    ) {
        ([task], [agent], [], []) => Principal::Task {
            task_id: task.clone(),
            agent: agent.clone(),
        },
        ([], [agent], [], [role]) if role == "agent" => Principal::Agent(agent.clone()),
        ([], [], [approver], [role]) if role == "approver" => Principal::Approver(approver.clone()),
        _ => return Err(invalid()),
    };
    // At most one of each: a token naming two audiences or two users is not Leash's.
    let single = |values: Vec<String>| -> Result<Option<String>, ApiError> {
        match <[String; 1]>::try_from(values) {
            Ok([value]) => Ok(Some(value)),
            Err(values) if values.is_empty() => Ok(None),
            Err(_) => Err(invalid()),
        }
    };
    let expires_at_secs = match expiries.as_slice() {
        [] => None,
        [(secs,)] => Some(*secs),
        _ => return Err(invalid()),
    };
    let user = single(users)?;
    let audience = single(audiences)?;
    if (user.is_some() || audience.is_some()) && !matches!(principal, Principal::Task { .. }) {
        return Err(invalid());
    }
    let budget_blocks = leash_sdk::capability::budget_blocks(&biscuit);
    let costly = biscuit.block_count() > 1
        || biscuit.print_block_source(0).map_or(true, |source| {
            source.contains(".matches(") || source.len() > COSTLY_AUTHORITY_BYTES
        });
    Ok(VerifiedToken {
        biscuit,
        principal,
        revocation_ids,
        tools,
        user,
        audience,
        expires_at_secs,
        budget_blocks,
        costly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::mint::{Role, TaskClaims, credential, task_token};
    use biscuit_auth::builder::BlockBuilder;

    fn task(keys: &RootKeys) -> Biscuit {
        task_token(
            keys,
            &TaskClaims {
                task_id: "tsk_a",
                agent: "bot",
                user: None,
                audience: None,
                tools: &["web.search".to_string()],
                expires_at_secs: 4_000_000_000,
                checks: &[],
            },
        )
        .unwrap()
    }

    #[test]
    fn attenuation_facts_do_not_change_the_principal_or_tools() {
        let keys = Arc::new(RootKeys::generate());
        let verifier = TokenVerifier::new(keys.clone());
        let child = task(&keys)
            .append(
                BlockBuilder::new()
                    .code(r#"task("tsk_b"); tool("admin.everything"); role("approver"); approver("eve");"#)
                    .unwrap(),
            )
            .unwrap();
        let verified = verifier
            .verify(&child.to_base64().unwrap(), |_| None)
            .unwrap();
        assert_eq!(
            verified.principal,
            Principal::Task {
                task_id: "tsk_a".into(),
                agent: "bot".into()
            }
        );
        assert_eq!(verified.tools, vec!["web.search".to_string()]);
        assert_eq!(verified.revocation_ids.len(), 2);
    }

    #[test]
    fn kinds_keys_and_revocation() {
        let keys = Arc::new(RootKeys::generate());
        let verifier = TokenVerifier::new(keys.clone());
        let agent = credential(&keys, Role::Agent, "bot", None)
            .unwrap()
            .to_base64()
            .unwrap();
        assert_eq!(
            verifier.verify(&agent, |_| None).unwrap().principal,
            Principal::Agent("bot".into())
        );
        let approver = credential(&keys, Role::Approver, "ann", None)
            .unwrap()
            .to_base64()
            .unwrap();
        assert_eq!(
            verifier.verify(&approver, |_| None).unwrap().principal,
            Principal::Approver("ann".into())
        );
        let other = task(&RootKeys::generate()).to_base64().unwrap();
        assert!(matches!(
            verifier.verify(&other, |_| None),
            Err(ApiError::TokenInvalid(_))
        ));
        assert!(matches!(
            verifier.verify("garbage!!", |_| None),
            Err(ApiError::TokenInvalid(_))
        ));
        let good = task(&keys).to_base64().unwrap();
        let truncated = &good[..good.len() / 2];
        assert!(matches!(
            verifier.verify(truncated, |_| None),
            Err(ApiError::TokenInvalid(_))
        ));
        // Revocation is checked on the cached path too.
        verifier.verify(&good, |_| None).unwrap();
        assert!(matches!(
            verifier.verify(&good, |_| Some(ApiError::TokenRevoked(String::new()))),
            Err(ApiError::TokenRevoked(_))
        ));
    }
}
