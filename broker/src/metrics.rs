//! Operational metrics, served as OpenMetrics text at `GET /metrics` (admin token, or the
//! scrape-only `LEASH_METRICS_TOKEN`). One registry per broker (prometheus-client), so
//! brokers sharing a process do not mix their figures.
//!
//! Labels are bounded: a tool label is a tool of the catalog or `unknown`, so callers
//! cannot grow the series by inventing names. No label carries a token or an agent's text.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a checked call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The tool (a catalog name, or `unknown`).
    pub tool: String,
    /// `allowed`, `held` (waits for an approval) or the error code.
    pub outcome: String,
}

/// Figures sampled when scraped.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Revocation ids in memory.
    pub revoked_ids: i64,
    /// 1 while this replica's revocation view is fresh.
    pub feed_healthy: bool,
    /// 1 while the audit log takes writes.
    pub audit_writable: bool,
}

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: Histogram,
    invalid_credentials: Counter,
    throttled: Counter,
    revoked_ids: Gauge,
    feed_healthy: Gauge,
    audit_writable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series described.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("leash");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Checked tool calls, by tool and outcome",
            calls.clone(),
        );
        // 0.25 ms .. ~4 s.
        let call_seconds = Histogram::new(exponential_buckets(0.00025, 2.0, 15));
        registry.register(
            "call_duration_seconds",
            "Time of allowed calls through the broker, upstream included",
            call_seconds.clone(),
        );
        let invalid_credentials = Counter::default();
        registry.register(
            "invalid_credentials",
            "Requests with a credential that is not the broker's (forged, garbage, wrong admin token)",
            invalid_credentials.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "throttled_credentials",
            "Requests refused unchecked because their address sent too many invalid credentials",
            throttled.clone(),
        );
        let revoked_ids = Gauge::default();
        registry.register(
            "revoked_ids",
            "Revocation ids held in memory",
            revoked_ids.clone(),
        );
        let feed_healthy = Gauge::default();
        registry.register(
            "feed_healthy",
            "1 while this replica's view of revocations is fresh (always 1 on SQLite)",
            feed_healthy.clone(),
        );
        let audit_writable = Gauge::default();
        registry.register(
            "audit_writable",
            "1 while the audit log takes writes (calls are refused otherwise)",
            audit_writable.clone(),
        );
        Metrics {
            registry,
            calls,
            call_seconds,
            invalid_credentials,
            throttled,
            revoked_ids,
            feed_healthy,
            audit_writable,
        }
    }

    /// Counts one checked call; `took` only for allowed ones.
    pub fn call(&self, tool: &str, outcome: &str, took: Option<Duration>) {
        self.calls
            .get_or_create(&CallLabels {
                tool: tool.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(took) = took {
            self.call_seconds.observe(took.as_secs_f64());
        }
    }

    /// Counts one invalid credential.
    pub fn invalid_credential(&self) {
        self.invalid_credentials.inc();
    }

    /// Counts one request refused by the invalid-credential throttle.
    pub fn throttled(&self) {
        self.throttled.inc();
    }

    /// The OpenMetrics text, with the sampled gauges set first.
    pub fn render(&self, sample: Sample) -> String {
        self.revoked_ids.set(sample.revoked_ids);
        self.feed_healthy.set(i64::from(sample.feed_healthy));
        self.audit_writable.set(i64::from(sample.audit_writable));
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %err, "cannot render metrics");
        }
        out
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_samples() {
        let metrics = Metrics::new();
        metrics.call("web.search", "allowed", Some(Duration::from_millis(3)));
        metrics.call("web.search", "capability_denied", None);
        metrics.invalid_credential();
        let text = metrics.render(Sample {
            revoked_ids: 7,
            feed_healthy: true,
            audit_writable: false,
        });
        assert!(
            text.contains(r#"leash_calls_total{tool="web.search",outcome="allowed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("leash_call_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("leash_invalid_credentials_total 1"), "{text}");
        assert!(text.contains("leash_revoked_ids 7"), "{text}");
        assert!(text.contains("leash_audit_writable 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
