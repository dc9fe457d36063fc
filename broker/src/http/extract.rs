//! Request extractors whose rejections are API errors in the documented format
//! (axum's own rejections answer in plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The largest request body the API reads (set as an extension by the router).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// How much of a body over the limit is still read (and thrown away) before the 413 is
/// sent: a client still sending when the server closes gets a connection reset instead
/// of the answer. Past this, the connection is closed as it is.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Reads the raw body, mapping an oversized body to 413. Only up to the limit is kept;
/// the rest of an oversized one (up to [`DRAIN_LIMIT`]) is read and dropped, so the client
/// can finish sending and read its 413.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        use futures_util::StreamExt;
        let Some(BodyLimit(limit)) = req.extensions().get::<BodyLimit>().copied() else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "the router sets no body limit for this route"
            )));
        };
        let mut body = req.into_body().into_data_stream();
        let mut kept: Vec<u8> = Vec::new();
        let mut seen = 0usize;
        while let Some(data) = body.next().await {
            let data = data.map_err(|err| {
                if super::limits::is_body_timeout(&err) {
                    ApiError::RequestTimeout(
                        "the request body did not arrive in time; send it faster".into(),
                    )
                } else {
                    ApiError::BadRequest(format!("cannot read the request body: {err}"))
                }
            })?;
            seen = seen.saturating_add(data.len());
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen <= limit {
                kept.extend_from_slice(&data);
            }
        }
        if seen > limit {
            return Err(ApiError::PayloadTooLarge(
                "the request body is larger than allowed".into(),
            ));
        }
        Ok(RawBody(Bytes::from(kept)))
    }
}

/// Parses a JSON body; `allow_empty` turns an empty body into `{}`.
pub fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    allow_empty: bool,
) -> Result<T, ApiError> {
    if body.is_empty() && allow_empty {
        return serde_json::from_str("{}")
            .map_err(|e| ApiError::BadRequest(format!("a request body is required: {e}")));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json"
        && !(essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Err(ApiError::BadRequest(
            "the Content-Type must be application/json".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A JSON body that must be present.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let RawBody(body) = RawBody::from_request(req, state).await?;
        parse_json(&headers, &body, false).map(JsonBody)
    }
}

/// A JSON body that may be empty (then it reads as `{}`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let RawBody(body) = RawBody::from_request(req, state).await?;
        parse_json(&headers, &body, true).map(OptionalJson)
    }
}

/// The single path parameter of a route.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParam(value))
            .map_err(|e| ApiError::BadRequest(format!("bad path: {e}")))
    }
}

/// Query parameters, with a 400 for a malformed query string.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| QueryParams(value))
            .map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))
    }
}

/// `?state=…&limit=…` of the list endpoints.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only items in this state (`all` for every state).
    pub state: Option<String>,
    /// At most this many items (default 100; clamped to 1 to 1000).
    pub limit: Option<i64>,
}

impl ListQuery {
    /// The limit, defaulted and clamped.
    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}
