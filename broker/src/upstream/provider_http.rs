//! The HTTP exchange of the OAuth crates (`openidconnect` for sign-in, `oauth2` for
//! upstream providers) over the one hardened upstream client: each exchange bounded in
//! time as a whole (10 s, however slowly the answer trickles in) and size (1 MiB),
//! redirects never followed, failures described without URL or headers.

use std::time::Duration;

use oauth2::{HttpRequest, HttpResponse};

/// Largest answer read from a provider.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Time allowed for one request to a provider.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// The failing HTTP exchange with a provider (no URL, no header, no body in the text).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderHttpError(pub String);

/// Sends one request of an OAuth crate with `http` and reads the bounded answer, all
/// within [`PROVIDER_TIMEOUT`].
pub async fn send(
    http: reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ProviderHttpError> {
    tokio::time::timeout(PROVIDER_TIMEOUT, exchange(http, request))
        .await
        .map_err(|_| ProviderHttpError("no whole answer within 10 seconds".into()))?
}

async fn exchange(
    http: reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ProviderHttpError> {
    let fail = |e: &dyn std::fmt::Display| ProviderHttpError(e.to_string());
    let request = reqwest::Request::try_from(request).map_err(|e| fail(&e))?;
    let mut response = http
        .execute(request)
        .await
        .map_err(|e| ProviderHttpError(leash_sdk::tls::describe(&e)))?;
    let mut answer = HttpResponse::new(Vec::new());
    *answer.status_mut() = response.status();
    *answer.headers_mut() = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| fail(&"the answer broke off"))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(fail(&"the answer is larger than 1 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    *answer.body_mut() = body;
    Ok(answer)
}

/// An error and its causes on one line (the OAuth crates nest the useful part).
pub fn describe_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
