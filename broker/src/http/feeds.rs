//! Public and read-only endpoints: health, keys, the revocation feed, the audit log.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use leash_sdk::protocol::{
    AuditEntry, AuditPage, CheckpointEntry, CheckpointList, Health, KeySet, PublishedKey,
    RevocationEntry, RevocationPage,
};
use serde::Deserialize;

use super::extract::QueryParams;
use crate::audit::log::Audit;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::http::auth::{ApproverOrAdmin, MetricsReader};
use crate::metrics::{Metrics, Sample};
use crate::replica::health::FeedHealth;
use crate::store::Store;
use crate::tokens::keys::{ForwardingKey, RootKeys};
use crate::tokens::revocation::RevocationSet;

/// `GET /metrics` (admin token, or the scrape-only `LEASH_METRICS_TOKEN`): OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "feeds",
    security(("admin" = []), ("metrics" = [])),
    responses((status = 200, description = "Counters and gauges in the OpenMetrics text format", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(
    _: MetricsReader,
    State(audit): State<Audit>,
    State(health): State<Arc<FeedHealth>>,
    State(metrics): State<Arc<Metrics>>,
    State(revoked): State<Arc<RevocationSet>>,
) -> ApiResult<Response> {
    let sample = Sample {
        revoked_ids: i64::try_from(revoked.len()).unwrap_or(i64::MAX),
        feed_healthy: health.check().is_ok(),
        audit_writable: audit.check_writable().is_ok(),
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(sample),
    )
        .into_response())
}

/// Most feed entries in one answer.
const PAGE: i64 = 1000;

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "feeds",
    responses((status = 200, description = "The broker is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// `GET /.well-known/leash/keys`.
#[utoipa::path(get, path = "/.well-known/leash/keys", tag = "feeds",
    responses((status = 200, description = "Every root public key that verifies tokens, and the forwarding key that signs the last block of every forwarded `Leash-Capability`", body = KeySet)))]
pub async fn keys(
    State(forwarding): State<Arc<ForwardingKey>>,
    State(keys): State<Arc<RootKeys>>,
) -> Json<KeySet> {
    let keys = keys
        .published()
        .into_iter()
        .map(|key| PublishedKey {
            kid: key.kid,
            algorithm: key.algorithm.into(),
            public_key: key.public_key,
        })
        .collect();
    Json(KeySet {
        keys,
        forwarding_key: Some(forwarding.published()),
    })
}

/// `?after=SEQ` of the feeds.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct After {
    /// Answer entries after this position (default 0).
    #[serde(default)]
    after: i64,
}

/// `?after=SEQ&wait=SECONDS` of the revocation feed.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Answer entries after this position (default 0).
    #[serde(default)]
    after: i64,
    /// Hold an empty answer up to this many seconds (0 to 30) until something is revoked.
    #[serde(default)]
    #[param(maximum = 30)]
    wait: u64,
}

/// Longest long-poll of the revocation feed.
const MAX_FEED_WAIT_SECONDS: u64 = 30;

/// `GET /v1/revocations?after=SEQ[&wait=SECONDS]`: the public revocation feed. With
/// `wait` (at most 30), an empty answer is held until something is revoked, so
/// followers hear of a revocation within milliseconds.
#[utoipa::path(get, path = "/v1/revocations", tag = "feeds", params(FeedQuery),
    responses((status = 200, description = "Revocations after the asked position", body = RevocationPage)))]
pub async fn revocations(
    State(revoked): State<Arc<RevocationSet>>,
    State(store): State<Arc<dyn Store>>,
    QueryParams(q): QueryParams<FeedQuery>,
) -> ApiResult<Json<RevocationPage>> {
    if q.wait > MAX_FEED_WAIT_SECONDS {
        return Err(ApiError::BadRequest(format!(
            "wait is at most {MAX_FEED_WAIT_SECONDS} seconds"
        )));
    }
    let after = q.after.max(0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(q.wait);
    let entries = loop {
        let published = revoked.next_publication();
        tokio::pin!(published);
        published.as_mut().enable();
        let entries = store
            .revocations_after(after, PAGE)
            .await
            .map_err(ApiError::internal)?;
        if !entries.is_empty() || tokio::time::Instant::now() >= deadline {
            break entries;
        }
        if tokio::time::timeout_at(deadline, published).await.is_err() {
            break Vec::new();
        }
    };
    let next = entries.last().map_or(after, |e| e.seq);
    let revocations = entries
        .into_iter()
        .map(|e| RevocationEntry {
            seq: e.seq,
            revocation_id: e.revocation_id,
            task_id: e.task_id,
            reason: e.reason,
            at: rfc3339(e.at_ms),
            expires_at: e.expires_at_ms.map(rfc3339),
        })
        .collect();
    Ok(Json(RevocationPage { revocations, next }))
}

/// `GET /v1/audit?after=SEQ`: hash-chained events, for approvers and the admin.
#[utoipa::path(get, path = "/v1/audit", tag = "feeds", params(After),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Audit events after the asked position", body = AuditPage)))]
pub async fn audit(
    _: ApproverOrAdmin,
    State(store): State<Arc<dyn Store>>,
    QueryParams(q): QueryParams<After>,
) -> ApiResult<Json<AuditPage>> {
    let rows = store
        .audit_after(q.after.max(0), PAGE)
        .await
        .map_err(ApiError::internal)?;
    let next = rows.last().map_or(q.after.max(0), |r| r.seq);
    let events = rows
        .into_iter()
        .map(|r| AuditEntry {
            seq: r.seq,
            at: rfc3339(r.at_ms),
            kind: r.kind,
            actor: r.actor,
            task_id: r.task_id,
            detail: r.detail,
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
        .collect();
    Ok(Json(AuditPage { events, next }))
}

/// `GET /v1/audit/checkpoints?after=SEQ`: the signed checkpoints of the audit chain
/// (oldest first, at most 1000), for approvers and the admin — for a collector that keeps
/// them where the database's owner cannot reach.
#[utoipa::path(get, path = "/v1/audit/checkpoints", tag = "feeds", params(After),
    security(("approver" = []), ("admin" = [])),
    responses((status = 200, description = "Checkpoints after the asked seq", body = CheckpointList)))]
pub async fn audit_checkpoints(
    _: ApproverOrAdmin,
    State(store): State<Arc<dyn Store>>,
    QueryParams(q): QueryParams<After>,
) -> ApiResult<Json<CheckpointList>> {
    let checkpoints = store
        .checkpoints_after(q.after.max(0), PAGE)
        .await
        .map_err(ApiError::internal)?;
    let checkpoints = checkpoints
        .iter()
        .map(crate::audit::checkpoint::PublishedCheckpoint::from)
        .map(|c| CheckpointEntry {
            seq: c.seq,
            hash: c.hash,
            at: c.at,
            kid: c.kid,
            signature: c.signature,
        })
        .collect();
    Ok(Json(CheckpointList { checkpoints }))
}
