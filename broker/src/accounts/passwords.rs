//! Local accounts: a name, an Argon2id hash of its password, and whether the person is an
//! approver. A sign-in attempt is throttled per account and per address before any hash
//! is computed, costs the same whether or not the account exists (a dummy hash is
//! verified for unknown names), and is audited either way — never with the password.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde_json::json;

use crate::audit::log::{Audit, AuditEvent};
use crate::clock::Clock;
use crate::ids::is_user_name;
use crate::ratelimit::SignInThrottle;
use crate::store::{Store, UserRecord};

/// Password checks (Argon2id, 19 MiB each) running at once, broker-wide; more wait.
const CONCURRENT_CHECKS: usize = 4;
/// How long a sign-in waits for a free check before it is told to retry.
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Shortest password `leash users add` accepts.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted anywhere (hashing cost is per byte).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The name is not a valid user name.
    #[error(
        "{0:?} is not a valid user name (ASCII letters, digits, -, _, ., @ and +; at most 128)"
    )]
    BadName(String),
    /// The password is too short or too long.
    #[error("the password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} bytes long")]
    BadPassword,
    /// The name is taken.
    #[error("user {0:?} already exists")]
    Exists(String),
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(String),
}

/// Why a sign-in failed (shown to the person; the same for a wrong name and password).
#[derive(Debug, PartialEq, Eq)]
pub enum SignInFailure {
    /// Unknown name or wrong password.
    Wrong,
    /// Too many failures for this account or address; retry after this many seconds.
    Throttled(u64),
    /// The store could not be read.
    Unavailable,
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The user name.
    pub user: String,
    /// Whether they may decide approvals.
    pub approver: bool,
    /// Their OpenID Connect groups (none for a local account).
    pub groups: Vec<String>,
}

/// Local accounts.
pub struct Accounts {
    store: Arc<dyn Store>,
    audit: Audit,
    clock: Clock,
    throttle: SignInThrottle,
    /// Bounds the memory and CPU that sign-in attempts can take at once.
    checks: tokio::sync::Semaphore,
    /// Verified for unknown names, so an attempt costs the same either way.
    dummy_hash: String,
}

/// Hashes `password` with Argon2id (the crate's defaults: 19 MiB, 2 passes) and a random
/// salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AddError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AddError::BadPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AddError::Store(format!("hashing: {e}")))
}

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

impl Accounts {
    /// Accounts kept in `store`, audited to `audit`.
    pub fn new(store: Arc<dyn Store>, audit: Audit, clock: Clock) -> Self {
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = Argon2::default()
            .hash_password(crate::ids::random_hex(16).as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .unwrap_or_default();
        Accounts {
            store,
            audit,
            throttle: SignInThrottle::new(clock.clone()),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
            clock,
            dummy_hash,
        }
    }

    /// Creates a local account.
    pub async fn add(&self, name: &str, password: &str, approver: bool) -> Result<(), AddError> {
        add_user(
            self.store.as_ref(),
            name,
            password,
            approver,
            self.clock.now_ms(),
        )
        .await?;
        self.audit
            .record(AuditEvent {
                kind: "user.added",
                actor: "admin".into(),
                task_id: None,
                detail: json!({ "user": name, "approver": approver }),
            })
            .await;
        Ok(())
    }

    /// Checks `password` for `name`, from client `address`. Audits the outcome.
    pub async fn check(
        &self,
        name: &str,
        password: &str,
        address: &str,
    ) -> Result<SignedIn, SignInFailure> {
        if let Err(wait) = self.throttle.take(name, address) {
            self.audit_failure(name, address, "throttled").await;
            return Err(SignInFailure::Throttled(wait));
        }
        let Ok(Ok(_permit)) = tokio::time::timeout(CHECK_WAIT, self.checks.acquire()).await else {
            self.throttle.give_back(name, address);
            return Err(SignInFailure::Throttled(1));
        };
        let user = if is_user_name(name) {
            self.store
                .get_user(name)
                .await
                .map_err(|_| SignInFailure::Unavailable)?
        } else {
            None
        };
        let hash = user
            .as_ref()
            .map_or(self.dummy_hash.clone(), |u| u.password_hash.clone());
        let password = password
            .chars()
            .take(MAX_PASSWORD_BYTES)
            .collect::<String>();
        // Argon2 is deliberately slow: off the async workers.
        let matches = tokio::task::spawn_blocking(move || verify(&hash, &password))
            .await
            .unwrap_or(false);
        match user {
            Some(user) if matches => {
                self.throttle.give_back(name, address);
                self.audit
                    .record(AuditEvent {
                        kind: "user.signed_in",
                        actor: format!("user:{}", user.name),
                        task_id: None,
                        detail: json!({ "method": "password", "address": address }),
                    })
                    .await;
                Ok(SignedIn {
                    user: user.name,
                    approver: user.approver,
                    groups: Vec::new(),
                })
            }
            _ => {
                self.audit_failure(name, address, "wrong name or password")
                    .await;
                Err(SignInFailure::Wrong)
            }
        }
    }

    async fn audit_failure(&self, name: &str, address: &str, why: &str) {
        // The name as typed is shown only if it could be a user name (never a password
        // pasted into the wrong field).
        let shown = if is_user_name(name) {
            name
        } else {
            "(not a user name)"
        };
        self.audit
            .record(AuditEvent {
                kind: "user.sign_in_failed",
                actor: "anonymous".into(),
                task_id: None,
                detail: json!({ "user": shown, "address": address, "why": why }),
            })
            .await;
    }
}

/// Creates a local account in `store` (also used by `leash users add`, with no broker
/// running).
pub async fn add_user(
    store: &dyn Store,
    name: &str,
    password: &str,
    approver: bool,
    now_ms: i64,
) -> Result<(), AddError> {
    if !is_user_name(name) {
        return Err(AddError::BadName(name.to_string()));
    }
    let owned = password.to_string();
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&owned))
        .await
        .map_err(|e| AddError::Store(e.to_string()))??;
    let created = store
        .insert_user(&UserRecord {
            name: name.to_string(),
            password_hash,
            approver,
            created_at_ms: now_ms,
        })
        .await
        .map_err(|e| AddError::Store(e.to_string()))?;
    if created {
        Ok(())
    } else {
        Err(AddError::Exists(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    async fn accounts() -> Accounts {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let clock = Clock::default();
        let audit = Audit::start(store.clone(), clock.clone(), 0).await.unwrap();
        Accounts::new(store, audit, clock)
    }

    #[tokio::test]
    async fn a_password_signs_in_and_nothing_else_does() {
        let accounts = accounts().await;
        accounts
            .add("alice@example.com", "correct horse battery", true)
            .await
            .unwrap();
        let signed = accounts
            .check("alice@example.com", "correct horse battery", "10.0.0.1")
            .await
            .unwrap();
        assert_eq!(signed.user, "alice@example.com");
        assert!(signed.approver);
        assert_eq!(
            accounts
                .check("alice@example.com", "wrong horse battery", "10.0.0.1")
                .await,
            Err(SignInFailure::Wrong)
        );
        assert_eq!(
            accounts
                .check("nobody", "correct horse battery", "10.0.0.1")
                .await,
            Err(SignInFailure::Wrong)
        );
        assert!(matches!(
            accounts
                .add("alice@example.com", "another long password", false)
                .await,
            Err(AddError::Exists(_))
        ));
        assert!(matches!(
            accounts.add("bob", "short", false).await,
            Err(AddError::BadPassword)
        ));
        assert!(matches!(
            accounts
                .add("bob smith", "a long enough password", false)
                .await,
            Err(AddError::BadName(_))
        ));
    }

    #[tokio::test]
    async fn the_sixth_wrong_password_is_throttled_even_when_right() {
        let accounts = accounts().await;
        accounts
            .add("carol", "correct horse battery", false)
            .await
            .unwrap();
        for i in 0..5 {
            let address = format!("10.0.0.{i}");
            assert_eq!(
                accounts.check("carol", "guess", &address).await,
                Err(SignInFailure::Wrong)
            );
        }
        assert!(matches!(
            accounts
                .check("carol", "correct horse battery", "10.1.1.1")
                .await,
            Err(SignInFailure::Throttled(_))
        ));
    }

    #[test]
    fn the_stored_hash_is_argon2id() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(&hash, "correct horse battery"));
        assert!(!verify(&hash, "correct horse batterz"));
    }
}
