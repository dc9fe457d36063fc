//! Request-level limits, in front of every route (the MCP gateway too):
//! - the request head (request line and headers) is at most `max_header_bytes` → 431;
//! - the body must arrive within `client_timeout` of the request → 408 (a client that
//!   drips its body cannot hold a connection);
//! - credentials that are not ours (forged, garbage, a wrong admin token: `token_invalid`,
//!   `unauthenticated`) are throttled per client address and logged with the address and
//!   a fingerprint of the credential — never the credential itself. Past the budget, an
//!   address's requests with an unknown credential get 429 before any parsing or
//!   signature work; known-good credentials (the admin token, tokens verified before)
//!   still pass, so one noisy process cannot lock out its neighbours on the same host. Genuine tokens whose life ended (`token_revoked`, `token_expired`,
//!   `task_inactive`) are not guesses: they are neither throttled nor logged above debug,
//!   so an agent that keeps using a revoked token cannot lock its neighbours out.

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use leash_sdk::protocol::ErrorCode;
use sha2::{Digest, Sha256};

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::http::slots::Slots;
use crate::metrics::Metrics;
use crate::ratelimit::AuthFailureLimiter;

/// Long-held requests (`?wait=` long-polls, `/v1/events`) take a slot of their
/// address's share and of the overall long-poll cap for as long as their answer streams;
/// past either, 429 with `Connection: close` (so the refused connection is freed too).
pub async fn long_poll_slots(
    State(long_polls): State<Arc<Slots>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(peer) = crate::http::edge::peer_of(&request) else {
        return next.run(request).await;
    };
    if !is_long_held(&request) {
        return next.run(request).await;
    }
    let Some(slot) = long_polls.try_take(peer.ip()) else {
        let mut refusal = ApiError::RateLimited {
            message: "too many long-polls or event streams are open (from this address, or in all); retry shortly".into(),
            retry_after_secs: 1,
        }
        .into_response();
        refusal.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return refusal;
    };
    let (parts, body) = next.run(request).await.into_parts();
    Response::from_parts(
        parts,
        Body::new(Holding {
            inner: body,
            _slot: slot,
        }),
    )
}

/// Whether a request may be held open: the event stream, or a `wait` other than 0 —
/// read from the decoded query exactly as the handlers read it (`%77ait=30` is `wait`).
fn is_long_held(request: &Request) -> bool {
    if request.uri().path() == "/v1/events" {
        return true;
    }
    if request.uri().query().is_none() {
        return false;
    }
    match axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri()) {
        Ok(axum::extract::Query(pairs)) => pairs
            .iter()
            .any(|(key, value)| key == "wait" && value.trim().parse::<u64>() != Ok(0)),
        // The handler refuses a query it cannot read (400) without waiting.
        Err(_) => false,
    }
}

/// A response body that holds a long-poll slot until it is dropped.
struct Holding {
    inner: Body,
    _slot: crate::http::slots::Slot,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body did not arrive in time (found by the body extractors in the error chain).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// The middleware; see the module documentation.
pub async fn guard(
    State(auth_failures): State<Arc<AuthFailureLimiter>>,
    State(config): State<Arc<ServeConfig>>,
    State(metrics): State<Arc<Metrics>>,
    State(auth): State<crate::http::auth::Authenticator>,
    request: Request,
    next: Next,
) -> Response {
    let head = head_size(&request);
    if head > config.max_header_bytes {
        return ApiError::HeadersTooLarge(format!(
            "the request line and headers take {head} bytes; at most {} are allowed",
            config.max_header_bytes
        ))
        .into_response();
    }
    let peer = crate::http::edge::peer_of(&request).map(|addr| addr.ip().to_string());
    let credential = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| fingerprint(value.as_bytes()));
    if let (Some(peer), Some(_)) = (&peer, &credential)
        && let Err(refusal) = auth_failures.admit(peer)
        && !auth.is_known_credential(request.headers())
    {
        metrics.throttled();
        return refusal.into_response();
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let (parts, body) = request.into_parts();
    // Requests without a body (most GETs) need no deadline and no timer.
    let body = if http_body::Body::is_end_stream(&body) {
        body
    } else {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(config.client_timeout)),
        })
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(credential) = &credential
    {
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .copied()
            .unwrap_or(ErrorCode::Unauthenticated);
        let peer_text = peer.as_deref().unwrap_or("unknown");
        if matches!(code, ErrorCode::TokenInvalid | ErrorCode::Unauthenticated) {
            if let Some(peer) = &peer {
                auth_failures.record_failure(peer);
            }
            metrics.invalid_credential();
            tracing::warn!(
                peer = peer_text,
                %method,
                %path,
                code = code.as_str(),
                credential = %credential,
                "authentication failed"
            );
        } else {
            tracing::debug!(
                peer = peer_text,
                %method,
                %path,
                code = code.as_str(),
                credential = %credential,
                "refused an ended token"
            );
        }
    }
    response
}

/// Bytes of the request line and headers, as sent (near enough: `name: value\r\n`).
fn head_size(request: &Request) -> usize {
    let uri = request.uri();
    let line = request.method().as_str().len()
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + 12;
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// A short, one-way name for a presented credential: enough to correlate repeated
/// failures in logs, useless for replaying it.
pub fn fingerprint(credential: &[u8]) -> String {
    let digest = Sha256::digest(credential);
    format!("sha256:{}", hex::encode(&digest[..6]))
}

/// A request body that fails once its deadline passes, however it trickles in.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (or anything it wraps) is a [`BodyTimedOut`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        current = err.source();
    }
    false
}
