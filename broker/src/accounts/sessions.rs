//! Web sessions: signing in sets cookie `leash_session` (HttpOnly, SameSite=Lax, Secure
//! over TLS, Path=/) holding a random id; the store keeps only its SHA-256, with the user,
//! the approver role, an expiry, and the session's CSRF token. Every form a session
//! posts carries that token; before sign-in, the sign-in form itself is protected by a
//! double-submit cookie (`leash_csrf`), so a foreign page cannot sign a browser in to
//! an attacker's account either.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::log::{Audit, AuditEvent};
use crate::clock::Clock;
use crate::ids::random_hex;
use crate::store::{Store, WebSession};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "leash_session";
/// The pre-sign-in CSRF cookie's name.
pub const CSRF_COOKIE: &str = "leash_csrf";
/// How long a session lasts (8 hours), however active.
pub const SESSION_MS: i64 = 8 * 3600 * 1000;

/// Sessions of signed-in people.
pub struct Sessions {
    store: Arc<dyn Store>,
    audit: Audit,
    clock: Clock,
    /// Whether cookies are marked `Secure` (the broker serves HTTPS, or its public URL is).
    secure: bool,
}

/// A started session: the cookie to set and the session.
pub struct Started {
    /// The `Set-Cookie` value.
    pub cookie: String,
    /// The session.
    pub session: WebSession,
}

fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The value of cookie `name` in `headers` — only if it is there exactly once. A second
/// cookie of the same name is one someone else planted (for a longer path, or from a
/// sibling subdomain, browsers send it first): the request is treated as carrying none,
/// so a planted session can never stand in for the person's own.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Whether `submitted` equals `expected`, in constant time (both non-empty).
pub fn same_token(submitted: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(submitted.as_bytes().ct_eq(expected.as_bytes()))
}

impl Sessions {
    /// Sessions kept in `store`; cookies marked `Secure` when `secure`.
    pub fn new(store: Arc<dyn Store>, audit: Audit, clock: Clock, secure: bool) -> Self {
        Sessions {
            store,
            audit,
            clock,
            secure,
        }
    }

    /// A `Set-Cookie` value for `name` = `value`, living `max_age` seconds (0 deletes).
    pub fn set_cookie(&self, name: &str, value: &str, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        let name = self.named(name);
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
    }

    /// A cookie's name on the wire: over HTTPS with the `__Host-` prefix, which browsers
    /// accept only from this very origin, with `Secure`, `Path=/` and no `Domain` — so a
    /// sibling subdomain or a plain-HTTP page cannot plant one (a planted session would
    /// sign the person in as someone else).
    fn named(&self, name: &str) -> String {
        if self.secure {
            format!("__Host-{name}")
        } else {
            name.to_string()
        }
    }

    /// The value of this broker's cookie `name` (see [`cookie`] and
    /// [`Sessions::set_cookie`]).
    pub fn cookie<'h>(&self, headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
        cookie(headers, &self.named(name))
    }

    /// A fresh pre-sign-in CSRF token and its cookie.
    pub fn login_csrf(&self) -> (String, String) {
        let token = random_hex(16);
        let cookie = self.set_cookie(CSRF_COOKIE, &token, 3600);
        (token, cookie)
    }

    /// Starts a session for `user`.
    pub async fn start(
        &self,
        user: &str,
        approver: bool,
        groups: &[String],
    ) -> Result<Started, crate::store::StoreError> {
        let id = random_hex(32);
        let now = self.clock.now_ms();
        let session = WebSession {
            id_hash: digest(&id),
            user: user.to_string(),
            approver,
            groups: groups.to_vec(),
            csrf: random_hex(16),
            created_at_ms: now,
            expires_at_ms: now + SESSION_MS,
        };
        self.store.insert_session(&session).await?;
        Ok(Started {
            cookie: self.set_cookie(SESSION_COOKIE, &id, SESSION_MS / 1000),
            session,
        })
    }

    /// The live session the request's cookie names, if any.
    pub async fn current(&self, headers: &HeaderMap) -> Option<WebSession> {
        let id = self.cookie(headers, SESSION_COOKIE)?;
        if id.len() != 64 {
            return None;
        }
        self.store
            .get_session(&digest(id), self.clock.now_ms())
            .await
            .ok()
            .flatten()
    }

    /// Whether `session` is still live (not signed out, not expired).
    pub async fn is_live(&self, session: &WebSession) -> bool {
        self.store
            .get_session(&session.id_hash, self.clock.now_ms())
            .await
            .is_ok_and(|found| found.is_some())
    }

    /// Ends `session` (sign-out); the cookie that deletes it. If the store cannot delete
    /// it, the session stays live, so that is an error, not a cleared cookie.
    pub async fn end(&self, session: &WebSession) -> Result<String, crate::store::StoreError> {
        self.store
            .delete_session(&session.id_hash, self.clock.now_ms())
            .await?;
        self.audit
            .record(AuditEvent {
                kind: "user.signed_out",
                actor: format!("user:{}", session.user),
                task_id: None,
                detail: json!({}),
            })
            .await;
        Ok(self.set_cookie(SESSION_COOKIE, "", 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_cookie_sent_twice_counts_as_none() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; leash_session=mine"),
        );
        assert_eq!(cookie(&headers, "leash_session"), Some("mine"));
        assert_eq!(cookie(&headers, "b"), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("leash_session=planted; a=1; leash_session=mine"),
        );
        assert_eq!(cookie(&headers, "leash_session"), None);
        assert_eq!(cookie(&headers, "a"), Some("1"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("leash_session=more"),
        );
        assert_eq!(cookie(&headers, "leash_session"), None);
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("xleash_session=bad; leash_session=good; other=1"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("good"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("", ""));
    }

    #[tokio::test]
    async fn over_https_every_cookie_is_a_host_cookie() {
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::in_memory().await.unwrap());
        let clock = Clock::fixed(1_000);
        let audit = Audit::start(store.clone(), clock.clone(), 0).await.unwrap();
        let secure = Sessions::new(store.clone(), audit.clone(), clock.clone(), true);
        let set = secure.set_cookie(SESSION_COOKIE, "v", 60);
        assert!(set.starts_with("__Host-leash_session=v; Path=/;"), "{set}");
        assert!(
            set.ends_with("; Secure") && !set.contains("Domain"),
            "{set}"
        );
        let mut headers = HeaderMap::new();
        // A plain-named cookie (planted from a sibling or over HTTP) is not read.
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("leash_session=planted"),
        );
        assert_eq!(secure.cookie(&headers, SESSION_COOKIE), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-leash_session=mine"),
        );
        assert_eq!(secure.cookie(&headers, SESSION_COOKIE), Some("mine"));
        // Plain HTTP (development): plain names.
        let plain = Sessions::new(store, audit, clock, false);
        assert!(
            plain
                .set_cookie(SESSION_COOKIE, "v", 60)
                .starts_with("leash_session=v;")
        );
    }
}
