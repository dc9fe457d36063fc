//! Who is calling: the admin token, credentials, task tokens, and every way a bearer is
//! refused — on the real verifier, revoked set and clock.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

use super::{Authenticator, Caller, bearer};
use crate::error::ApiError;
use crate::replica::health::FeedHealth;
use crate::tasks::testkit::{Kit, notes_policy};
use crate::tokens::mint::Role;

const ADMIN: &str = "the-admin-token-0123456789abcdef0123456789";

fn authenticator(kit: &Kit, health: FeedHealth) -> Authenticator {
    Authenticator {
        verifier: kit.verifier.clone(),
        revoked: kit.revoked.clone(),
        health: Arc::new(health),
        clock: kit.clock.clone(),
        admin_digest: Sha256::digest(ADMIN.as_bytes()).into(),
        metrics_digest: Some(Sha256::digest(b"scrape-only").into()),
    }
}

fn with_bearer(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    headers
}

async fn kit() -> Kit {
    Kit::new(&notes_policy("http://127.0.0.1:9")).await
}

#[test]
fn a_bearer_is_the_token_after_the_bearer_scheme() {
    assert_eq!(bearer(&with_bearer("Bearer abc")).unwrap(), "abc");
    assert_eq!(bearer(&with_bearer("bearer  abc ")).unwrap(), "abc");
    for bad in ["abc", "Basic abc", "Bearer ", "Bearer"] {
        let headers = with_bearer(bad);
        let refused = bearer(&headers);
        assert!(
            matches!(refused, Err(ApiError::Unauthenticated(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        bearer(&HeaderMap::new()),
        Err(ApiError::Unauthenticated(_))
    ));
}

#[tokio::test]
async fn each_kind_of_bearer_is_its_caller() {
    let kit = kit().await;
    let auth = authenticator(&kit, FeedHealth::single(kit.clock.clone()));
    assert!(matches!(
        auth.authenticate(&with_bearer(&format!("Bearer {ADMIN}"))),
        Ok(Caller::Admin)
    ));
    let agent = kit
        .credentials
        .mint(Role::Agent, "bot", None)
        .await
        .unwrap();
    let approver = kit
        .credentials
        .mint(Role::Approver, "ann", None)
        .await
        .unwrap();
    let (_, task) = kit.active_task("bot", &["notes.read"]).await;
    let caller = auth
        .authenticate(&with_bearer(&format!("Bearer {agent}")))
        .unwrap();
    assert!(matches!(&caller, Caller::Agent(c) if c.id == "bot"));
    assert_eq!(caller.actor(), "agent:bot");
    let caller = auth
        .authenticate(&with_bearer(&format!("Bearer {approver}")))
        .unwrap();
    assert!(matches!(&caller, Caller::Approver(c) if c.id == "ann"));
    assert!(matches!(
        auth.authenticate(&with_bearer(&format!("Bearer {task}"))),
        Ok(Caller::Task(_))
    ));
    // Where a task token is required, nothing else passes.
    for other in [ADMIN, agent.as_str(), approver.as_str()] {
        let refused = auth.task_token(&with_bearer(&format!("Bearer {other}")));
        assert!(matches!(refused, Err(ApiError::TokenInvalid(_))));
    }
    auth.task_token(&with_bearer(&format!("Bearer {task}")))
        .unwrap();
}

#[tokio::test]
async fn forged_revoked_and_expired_bearers_are_refused() {
    let kit = kit().await;
    let auth = authenticator(&kit, FeedHealth::single(kit.clock.clone()));
    for forged in ["Bearer not-a-token", &format!("Bearer {ADMIN}x")] {
        let refused = auth.authenticate(&with_bearer(forged));
        assert!(
            matches!(refused, Err(ApiError::TokenInvalid(_))),
            "{forged}"
        );
    }
    let revoked = kit
        .credentials
        .mint(Role::Agent, "bot", None)
        .await
        .unwrap();
    kit.credentials
        .revoke_agent("bot", "gone", "admin")
        .await
        .unwrap();
    let refused = auth.authenticate(&with_bearer(&format!("Bearer {revoked}")));
    assert!(matches!(refused, Err(ApiError::TokenRevoked(_))));
    let short = kit
        .credentials
        .mint(Role::Approver, "ann", Some(60))
        .await
        .unwrap();
    auth.authenticate(&with_bearer(&format!("Bearer {short}")))
        .unwrap();
    kit.clock.advance(Duration::from_secs(61));
    let refused = auth.authenticate(&with_bearer(&format!("Bearer {short}")));
    assert!(
        matches!(refused, Err(ApiError::TokenExpired(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_stale_replica_trusts_no_credential() {
    let kit = kit().await;
    let auth = authenticator(
        &kit,
        FeedHealth::replicated(kit.clock.clone(), Duration::from_secs(2)),
    );
    let agent = kit
        .credentials
        .mint(Role::Agent, "bot", None)
        .await
        .unwrap();
    auth.authenticate(&with_bearer(&format!("Bearer {agent}")))
        .unwrap();
    kit.clock.advance(Duration::from_secs(3));
    let refused = auth.authenticate(&with_bearer(&format!("Bearer {agent}")));
    assert!(
        matches!(refused, Err(ApiError::Unavailable(_))),
        "{refused:?}"
    );
    // The admin token needs no feed.
    auth.authenticate(&with_bearer(&format!("Bearer {ADMIN}")))
        .unwrap();
}

#[tokio::test]
async fn only_the_scrape_token_or_a_verified_bearer_is_known_without_a_signature_check() {
    let kit = kit().await;
    let auth = authenticator(&kit, FeedHealth::single(kit.clock.clone()));
    assert!(auth.is_metrics_token(&with_bearer("Bearer scrape-only")));
    assert!(!auth.is_metrics_token(&with_bearer("Bearer scrape-onl")));
    assert!(auth.is_known_credential(&with_bearer(&format!("Bearer {ADMIN}"))));
    let agent = kit
        .credentials
        .mint(Role::Agent, "bot", None)
        .await
        .unwrap();
    assert!(!auth.is_known_credential(&with_bearer(&format!("Bearer {agent}"))));
    auth.authenticate(&with_bearer(&format!("Bearer {agent}")))
        .unwrap();
    assert!(auth.is_known_credential(&with_bearer(&format!("Bearer {agent}"))));
}
