//! The approval webhook: a JSON POST for every approval request and decision, signed
//! with HMAC-SHA256 over `"<timestamp>.<body>"` (headers `Leash-Timestamp`,
//! `Leash-Signature: sha256=<hex>`), retried with backoff, never blocking the broker.
//!
//! Each delivery runs on its own task (at most [`PARALLEL`] at once), so one hanging
//! receiver delays nothing else. Decisions are in the store whatever the webhook does.
//! Deliveries use the broker's one upstream client ([`crate::upstream::client::Proxy::client`]):
//! `https://` with the same trust, no redirects, no environment proxies.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::{Semaphore, broadcast};

use crate::clock::Clock;
use crate::events::hub::Events;

/// Deliveries in flight at once.
pub const PARALLEL: usize = 16;
/// Attempts per event.
pub const ATTEMPTS: u32 = 6;
/// Time allowed for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The signature header value for a body sent at `timestamp` (seconds).
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts forwarding approval events to `url` with `client` (the upstream client).
/// `first_retry` is the first backoff step.
pub fn start(
    events: &Events,
    client: reqwest::Client,
    clock: Clock,
    url: reqwest::Url,
    secret: Option<String>,
    first_retry: Duration,
) {
    let mut rx = events.subscribe();
    let slots = Arc::new(Semaphore::new(PARALLEL));
    tokio::spawn(async move {
        loop {
            let event = match rx.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(
                        missed,
                        "webhook fell behind; some notifications were not sent"
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if !event.kind.starts_with("approval.") {
                continue;
            }
            let body = json!({ "event": event.kind, "task_id": event.task_id, "data": event.data })
                .to_string();
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (client, url, secret, clock) =
                (client.clone(), url.clone(), secret.clone(), clock.clone());
            tokio::spawn(async move {
                deliver(&client, &url, secret.as_deref(), &clock, &body, first_retry).await;
                drop(permit);
            });
        }
    });
}

async fn deliver(
    client: &reqwest::Client,
    url: &reqwest::Url,
    secret: Option<&str>,
    clock: &Clock,
    body: &str,
    first_retry: Duration,
) {
    let mut delay = first_retry;
    for attempt in 1..=ATTEMPTS {
        let timestamp = clock.now_ms().div_euclid(1000);
        let mut request = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("leash-timestamp", timestamp.to_string())
            .timeout(ATTEMPT_TIMEOUT)
            .body(body.to_string());
        if let Some(secret) = secret {
            request = request.header("leash-signature", signature(secret, timestamp, body));
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                tracing::warn!(
                    attempt,
                    status = response.status().as_u16(),
                    "webhook refused a notification; will retry"
                )
            }
            Err(err) => {
                tracing::warn!(attempt, error = %leash_sdk::tls::describe(&err), "webhook unreachable; will retry")
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
    tracing::error!(attempts = ATTEMPTS, "webhook notification given up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value computed independently (python: hmac.new(b"k", b"1.{}", sha256)).
        assert_eq!(
            signature("k", 1, "{}"),
            "sha256=3dd49b2593d0f9a349e9e71c4bde3e2b862c2be4003fe9b4ba81332029310158"
        );
    }
}
