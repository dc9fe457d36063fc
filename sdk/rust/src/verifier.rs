//! The tool-server side: verify a capability offline against the broker's public keys
//! and its revocation feed.
//!
//! [`Verifier::connect`] fetches `/.well-known/leash/keys`, reads the whole revocation
//! feed, and keeps following it (every `poll_interval`). A token is refused if any of its
//! revocation ids was published, and **every** token is refused while the view of the
//! feed is older than `max_staleness` (default 5 s): a verifier that cannot hear about
//! revocations fails closed. Signature checks are cached (moka, keyed by SHA-256 of the
//! token); revocation and the authorizer run on every call.
//!
//! Only capabilities the broker forwarded are accepted: the `Leash-Capability` the broker
//! attaches ends in a block signed by its forwarding key (published beside the root
//! keys), and the verifier requires that block's `forwarded(tool)` for the called tool. A
//! raw task token sent straight to the tool server would skip the broker's approvals,
//! schema, budgets and audit, so it is refused unless the tool server opts in with
//! [`VerifierConfig::accept_raw_task_tokens`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use biscuit_auth::{Biscuit, PublicKey, UnverifiedBiscuit};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::capability::{CallFacts, evaluate, evaluate_forwarded, explain, is_forwarded_by};
use crate::protocol::{KeySet, RevocationPage};
use crate::tls::describe;

/// Settings of a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The broker's base URL.
    pub broker_url: String,
    /// Refuse everything when the revocation view is older than this.
    pub max_staleness: Duration,
    /// Pause between reads of the feed after an error. Reads are long-polls (the broker
    /// answers as soon as something is revoked), each held at most `max_staleness / 2`.
    pub poll_interval: Duration,
    /// Also accept task tokens that did not come through the broker (default `false`).
    /// Such calls skip the broker's approvals, schema checks, budgets and audit; opt in
    /// only for a tool server that agents may call directly on purpose.
    pub accept_raw_task_tokens: bool,
    /// CA certificates (DER) trusted besides the platform's roots, for a broker whose
    /// certificate a private CA signed ([`crate::tls::load_ca_bundle`] reads a PEM file).
    pub ca_certificates: Vec<CertificateDer<'static>>,
}

impl VerifierConfig {
    /// Defaults: 5 s staleness (long-polls of 2.5 s), 500 ms pause after an error, only
    /// forwarded capabilities accepted.
    pub fn new(broker_url: impl AsRef<str>) -> Self {
        VerifierConfig {
            broker_url: broker_url.as_ref().trim_end_matches('/').to_string(),
            max_staleness: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
            accept_raw_task_tokens: false,
            ca_certificates: Vec::new(),
        }
    }

    /// Trusts these CA certificates too, besides the platform's roots.
    pub fn with_ca_certificates(mut self, certificates: Vec<CertificateDer<'static>>) -> Self {
        self.ca_certificates = certificates;
        self
    }
}

/// How often the broker's key set is re-read (retired keys stop verifying within this).
const KEY_REFRESH: Duration = Duration::from_secs(30);

/// Why a capability was refused (each maps to an HTTP status with [`VerifyError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No capability was presented.
    #[error("no capability presented")]
    Missing,
    /// Not a Biscuit, or a bad signature, or an unknown root key.
    #[error("invalid capability: {0}")]
    Invalid(String),
    /// A block of it was revoked.
    #[error("the capability was revoked")]
    Revoked,
    /// Its checks refuse this call (names the check).
    #[error("capability denied: {0}")]
    Denied(String),
    /// The arguments are outside what can be judged (more than
    /// [`crate::facts::MAX_VALUES`] values).
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// The revocation view is too old to trust: fail closed.
    #[error(
        "revocation view is {age_ms} ms old (limit {limit_ms} ms); refusing until it catches up"
    )]
    Stale {
        /// Age of the view.
        age_ms: u128,
        /// The limit.
        limit_ms: u128,
    },
}

impl VerifyError {
    /// The HTTP status a tool server should answer.
    pub fn status(&self) -> u16 {
        match self {
            VerifyError::Missing | VerifyError::Invalid(_) | VerifyError::Revoked => 401,
            VerifyError::Denied(_) => 403,
            VerifyError::BadArguments(_) => 400,
            VerifyError::Stale { .. } => 503,
        }
    }
}

/// A call that passed verification.
#[derive(Debug, Clone)]
pub struct VerifiedCapability {
    /// The task the capability belongs to.
    pub task_id: String,
    /// Its agent.
    pub agent: String,
    /// The tool verified for.
    pub tool: String,
    /// Whether the broker forwarded it (`false` only for a raw task token accepted by
    /// opt-in).
    pub forwarded: bool,
}

struct Inner {
    config: VerifierConfig,
    http: reqwest::Client,
    keys: RwLock<HashMap<u32, PublicKey>>,
    forwarding: RwLock<Option<PublicKey>>,
    /// Revoked ids, with when their tokens' windows end (seconds; `None`: never).
    revoked: RwLock<HashMap<String, Option<i64>>>,
    next: AtomicI64,
    last_sync: RwLock<Option<Instant>>,
    last_key_refresh: RwLock<Option<Instant>>,
    cache: moka::sync::Cache<[u8; 32], Arc<(Biscuit, String, String)>>,
}

/// Verifies Leash capabilities for a tool server. Cloning shares it.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl Verifier {
    /// Connects with default settings (see [`VerifierConfig::new`]).
    pub async fn connect(broker_url: impl AsRef<str>) -> Result<Verifier, String> {
        Self::connect_with(VerifierConfig::new(broker_url)).await
    }

    /// Fetches the keys and the whole revocation feed, then follows the feed in the
    /// background for as long as a clone of this verifier lives.
    pub async fn connect_with(config: VerifierConfig) -> Result<Verifier, String> {
        // Long enough for the longest long-poll, plus a margin.
        // https with the platform's roots plus the configured CA certificates; no
        // redirects, no environment proxies: a proxy or a redirect could swap the keys or
        // hide revocations.
        let http = crate::tls::client_builder(&config.ca_certificates)
            .map_err(|e| e.to_string())?
            .timeout(config.max_staleness / 2 + Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let inner = Arc::new(Inner {
            config,
            http,
            keys: RwLock::new(HashMap::new()),
            forwarding: RwLock::new(None),
            revoked: RwLock::new(HashMap::new()),
            next: AtomicI64::new(0),
            last_sync: RwLock::new(None),
            last_key_refresh: RwLock::new(None),
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        });
        inner.refresh_keys().await?;
        inner.sync(Duration::ZERO).await?;
        tokio::spawn(follow(Arc::downgrade(&inner)));
        Ok(Verifier { inner })
    }

    /// Whether this verifier's configuration accepts raw task tokens.
    pub fn accepts_raw_task_tokens(&self) -> bool {
        self.inner.config.accept_raw_task_tokens
    }

    /// How old the revocation view is.
    pub fn staleness(&self) -> Duration {
        self.inner.staleness()
    }

    /// Verifies `token` for a call of `tool` with `args` (an object), now. Only a
    /// capability the broker forwarded passes, unless the configuration accepts raw task
    /// tokens.
    pub async fn verify(
        &self,
        token: &str,
        tool: &str,
        args: &Value,
    ) -> Result<VerifiedCapability, VerifyError> {
        let accept_raw = self.inner.config.accept_raw_task_tokens;
        self.verify_accepting(token, tool, args, accept_raw).await
    }

    /// [`Verifier::verify`], with raw task tokens accepted when `accept_raw` (used by a
    /// [`RequireCapability`](crate::RequireCapability) route that opted in).
    pub async fn verify_accepting(
        &self,
        token: &str,
        tool: &str,
        args: &Value,
        accept_raw: bool,
    ) -> Result<VerifiedCapability, VerifyError> {
        let inner = &self.inner;
        let age = inner.staleness();
        if age > inner.config.max_staleness {
            return Err(VerifyError::Stale {
                age_ms: age.as_millis(),
                limit_ms: inner.config.max_staleness.as_millis(),
            });
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(VerifyError::Missing);
        }
        let empty = serde_json::Map::new();
        let args = match args {
            Value::Object(map) => map,
            Value::Null => &empty,
            _ => {
                return Err(VerifyError::Denied(
                    "the arguments must be a JSON object".into(),
                ));
            }
        };
        if crate::facts::value_count(args) > crate::facts::MAX_VALUES {
            return Err(VerifyError::BadArguments(format!(
                "the arguments hold more than {} values",
                crate::facts::MAX_VALUES
            )));
        }
        let unverified = UnverifiedBiscuit::from_base64(token)
            .map_err(|_| VerifyError::Invalid("not a Biscuit token".into()))?;
        let ids: Vec<String> = unverified
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect();
        if inner.is_revoked(&ids) {
            return Err(VerifyError::Revoked);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verified = match inner.cache.get(&key) {
            Some(found) => found,
            None => {
                let kid = unverified.root_key_id();
                if kid.is_some_and(|kid| inner.key(kid).is_none()) {
                    // A rotated key we have not seen yet: refresh once (rate limited).
                    let _ = inner.refresh_keys_limited().await;
                }
                let biscuit = unverified
                    .verify(|kid: Option<u32>| {
                        kid.and_then(|kid| inner.key(kid))
                            .ok_or(biscuit_auth::error::Format::UnknownPublicKey)
                    })
                    .map_err(|e| VerifyError::Invalid(format!("signature: {e}")))?;
                let (task_id, agent) = authority_principal(&biscuit)?;
                let entry = Arc::new((biscuit, task_id, agent));
                inner.cache.insert(key, entry.clone());
                entry
            }
        };
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let facts = CallFacts {
            tool,
            args,
            now_secs,
            counters: None,
            subject: crate::capability::Subject::Tool,
        };
        let forwarding = inner.forwarding();
        let forwarded_by = forwarding
            .as_ref()
            .filter(|key| is_forwarded_by(&verified.0, key));
        let forwarded = forwarded_by.is_some();
        let evaluated = match forwarded_by {
            Some(key) => evaluate_forwarded(&verified.0, &facts, key),
            None if accept_raw => evaluate(&verified.0, &facts),
            None if forwarding.is_none() => {
                return Err(VerifyError::Denied(
                    "the broker publishes no forwarding key, so no capability can be proven \
                     forwarded by Leash, and this tool server does not accept raw task tokens"
                        .into(),
                ));
            }
            None => {
                return Err(VerifyError::Denied(
                    "not forwarded by Leash: this tool server accepts only the capability \
                     Leash attaches to a call it checked (a task token sent directly is refused)"
                        .into(),
                ));
            }
        };
        evaluated.map_err(|err| VerifyError::Denied(explain(&err, tool)))?;
        Ok(VerifiedCapability {
            task_id: verified.1.clone(),
            agent: verified.2.clone(),
            tool: tool.to_string(),
            forwarded,
        })
    }
}

/// `task` and `agent` of the authority block (read with the authorizer's default scope,
/// so attenuation blocks cannot change them).
fn authority_principal(biscuit: &Biscuit) -> Result<(String, String), VerifyError> {
    let mut authorizer = biscuit_auth::builder::AuthorizerBuilder::new()
        .set_limits(crate::capability::limits())
        .build(biscuit)
        .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let mut one = |name: &str| -> Result<String, VerifyError> {
        let rule = format!("found($x) <- {name}($x)");
        let rows: Vec<(String,)> = authorizer
            .query(rule.as_str())
            .map_err(|e| VerifyError::Invalid(e.to_string()))?;
        match rows.as_slice() {
            [(value,)] => Ok(value.clone()),
            _ => Err(VerifyError::Invalid(format!(
                "not a task capability (no single {name} fact)"
            ))),
        }
    };
    Ok((one("task")?, one("agent")?))
}

impl Inner {
    fn staleness(&self) -> Duration {
        self.last_sync
            .read()
            .ok()
            .and_then(|at| *at)
            .map_or(Duration::MAX, |at| at.elapsed())
    }

    fn forwarding(&self) -> Option<PublicKey> {
        self.forwarding.read().ok().and_then(|key| *key)
    }

    fn key(&self, kid: u32) -> Option<PublicKey> {
        self.keys.read().ok()?.get(&kid).copied()
    }

    fn is_revoked(&self, ids: &[String]) -> bool {
        match self.revoked.read() {
            Ok(set) => ids.iter().any(|id| set.contains_key(id)),
            Err(_) => true,
        }
    }

    async fn refresh_keys(&self) -> Result<(), String> {
        let url = format!("{}/.well-known/leash/keys", self.config.broker_url);
        let set: KeySet = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("cannot fetch the broker's keys: {}", describe(&e)))?
            .json()
            .await
            .map_err(|e| format!("bad key document: {e}"))?;
        let mut keys = HashMap::new();
        for key in set.keys {
            let public: PublicKey = key
                .public_key
                .parse()
                .map_err(|e| format!("bad key {}: {e:?}", key.kid))?;
            keys.insert(key.kid, public);
        }
        let forwarding: Option<PublicKey> = match &set.forwarding_key {
            Some(text) => Some(
                text.parse()
                    .map_err(|e| format!("bad forwarding key: {e:?}"))?,
            ),
            None => None,
        };
        if let Ok(mut slot) = self.forwarding.write() {
            *slot = forwarding;
        }
        if let Ok(mut slot) = self.keys.write()
            && *slot != keys
        {
            *slot = keys;
            // Cached verifications may rest on a key that was just retired.
            self.cache.invalidate_all();
        }
        if let Ok(mut at) = self.last_key_refresh.write() {
            *at = Some(Instant::now());
        }
        Ok(())
    }

    async fn refresh_keys_limited(&self) -> Result<(), String> {
        let recent = self
            .last_key_refresh
            .read()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10));
        if recent {
            Ok(())
        } else {
            self.refresh_keys().await
        }
    }

    /// Reads the feed up to its end; the view is fresh as of the start of this read.
    /// With `wait`, the first read is a long-poll held until something is revoked.
    async fn sync(&self, wait: Duration) -> Result<(), String> {
        let started = Instant::now();
        let mut wait_secs = wait.as_secs();
        loop {
            let after = self.next.load(Ordering::SeqCst);
            let url = format!(
                "{}/v1/revocations?after={after}&wait={wait_secs}",
                self.config.broker_url
            );
            wait_secs = 0;
            let page: RevocationPage = self
                .http
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot read the revocation feed: {}", describe(&e)))?
                .json()
                .await
                .map_err(|e| format!("bad revocation page: {e}"))?;
            if let Ok(mut set) = self.revoked.write() {
                set.extend(
                    page.revocations
                        .iter()
                        .map(|r| (r.revocation_id.clone(), window_end(r.expires_at.as_deref()))),
                );
            }
            self.next.store(page.next, Ordering::SeqCst);
            if page.revocations.is_empty() {
                break;
            }
        }
        self.prune(unix_now());
        if let Ok(mut at) = self.last_sync.write() {
            *at = Some(started);
        }
        Ok(())
    }

    /// Forgets revoked ids whose tokens' windows ended more than [`PRUNE_MARGIN`] ago:
    /// such a token fails its own expiry check here anyway.
    fn prune(&self, now_secs: i64) {
        if let Ok(mut set) = self.revoked.write() {
            retain_live(&mut set, now_secs);
        }
    }
}

/// How long after its window a revoked id is still kept (clocks differ).
pub const PRUNE_MARGIN: Duration = Duration::from_secs(300);

/// Keeps the ids whose windows ended less than [`PRUNE_MARGIN`] before `now_secs`.
fn retain_live(set: &mut HashMap<String, Option<i64>>, now_secs: i64) {
    let horizon = now_secs - PRUNE_MARGIN.as_secs() as i64;
    set.retain(|_, end| end.is_none_or(|end| end >= horizon));
}

/// The end of a revoked id's window from the feed's `expires_at`, in seconds. An
/// unreadable time keeps the id for ever (fail closed).
fn window_end(expires_at: Option<&str>) -> Option<i64> {
    let text = expires_at?;
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp() + 1)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Follows the feed until the last [`Verifier`] is dropped.
async fn follow(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let pause = strong.config.poll_interval;
        // Retired keys must stop verifying here too: re-read the key set now and then.
        let keys_due = strong
            .last_key_refresh
            .read()
            .ok()
            .and_then(|at| *at)
            .is_none_or(|at| at.elapsed() >= KEY_REFRESH);
        if keys_due && let Err(err) = strong.refresh_keys().await {
            tracing::warn!(error = %err, "cannot refresh the broker's keys");
        }
        // Held at most half the staleness limit, so a silent broker is noticed in time.
        let wait = (strong.config.max_staleness / 2).clamp(Duration::ZERO, Duration::from_secs(30));
        let result = strong.sync(wait).await;
        drop(strong);
        let long_polled = wait.as_secs() > 0;
        if let Err(err) = &result {
            tracing::warn!(error = %err, "revocation feed unreachable; the view is getting stale");
        }
        // Below one second of staleness budget the feed is polled, not long-polled.
        if result.is_err() || !long_polled {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod pruning_tests {
    use super::*;

    #[test]
    fn revoked_ids_are_kept_until_their_window_and_the_margin_have_passed() {
        let end = window_end(Some("2026-12-01T10:00:00Z")).unwrap();
        assert_eq!(window_end(None), None);
        assert_eq!(
            window_end(Some("not a time")),
            None,
            "unreadable: kept for ever"
        );
        let mut set = HashMap::from([
            ("old".to_string(), Some(end)),
            ("forever".to_string(), None),
        ]);
        retain_live(&mut set, end + PRUNE_MARGIN.as_secs() as i64);
        assert!(set.contains_key("old"), "still within the margin");
        retain_live(&mut set, end + PRUNE_MARGIN.as_secs() as i64 + 1);
        assert!(!set.contains_key("old"));
        assert!(set.contains_key("forever"));
    }
}
