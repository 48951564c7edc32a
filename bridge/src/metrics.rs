//! Prometheus metrics, kept lock-free on the request path: fixed arrays of atomics indexed by
//! endpoint, status and grant, encoded through `prometheus-client` at scrape time. Label sets are
//! bounded by construction: no per-token or per-client labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Endpoints with their own label value.
pub const ENDPOINTS: [&str; 7] = ["token", "introspect", "revoke", "metadata", "jwks", "other", "admin"];
/// Status codes with their own label value; anything else counts as "other".
const STATUSES: [u16; 12] = [200, 400, 401, 403, 404, 405, 413, 415, 429, 500, 503, 0];
/// Grants counted in `tokens_issued_total`.
pub const GRANTS: [&str; 2] = ["client_credentials", crate::node::TOKEN_EXCHANGE];
/// Index of token exchange in [`GRANTS`].
pub const GRANT_TOKEN_EXCHANGE: usize = 1;
/// Latency bucket upper bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Which endpoint a request path is.
pub fn endpoint_index(path: &str, prefix: &str) -> usize {
    let path = path.strip_prefix(prefix).unwrap_or(path);
    match path {
        "/token" => 0,
        "/introspect" => 1,
        "/revoke" => 2,
        p if p.starts_with("/.well-known/") => 3,
        "/jwks.json" => 4,
        _ => 5,
    }
}

fn status_index(status: u16) -> usize {
    STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len() - 1)
}

/// All of meshgate's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Counters<{ ENDPOINTS.len() * STATUSES.len() }>,
    latency: Latency,
    tokens: Counters<{ GRANTS.len() }>,
    degraded: AtomicU64,
    rate_limited: Counters<{ crate::ratelimit::Scope::ALL.len() }>,
}

impl Metrics {
    /// Records one HTTP request.
    pub fn observe_request(&self, endpoint: usize, status: u16, elapsed: Duration) {
        self.requests.0[endpoint * STATUSES.len() + status_index(status)].fetch_add(1, Ordering::Relaxed);
        self.latency.0[endpoint].observe(elapsed.as_secs_f64());
    }

    /// Records one issued token.
    pub fn token_issued(&self, grant: usize) {
        self.tokens.0[grant].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one token minted while its upstream was unavailable (`degraded: true`).
    pub fn degraded_token_issued(&self) {
        self.degraded.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one request refused by a rate limit.
    pub fn rate_limited(&self, scope: crate::ratelimit::Scope) {
        self.rate_limited.0[scope as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused by each rate limit, in [`crate::ratelimit::Scope::ALL`] order.
    pub fn rate_limited_counts(&self) -> Vec<u64> {
        self.rate_limited.values()
    }

    /// Renders the Prometheus text format, with `key_ages` (algorithm, seconds) of the active
    /// signing keys, and the mesh and upstream gauges read at scrape time.
    pub fn render(
        &self,
        key_ages: &[(&'static str, u64)],
        clients: usize,
        mesh: &MeshGauges,
        upstreams: &[UpstreamGauges],
    ) -> String {
        let mut registry = Registry::with_prefix("meshgate");
        registry.register(
            "upstream_breaker_state",
            "Circuit breaker of each upstream: 0 closed, 1 half-open, 2 open",
            UpstreamFamily(upstreams.iter().map(|u| (u.name.clone(), u.breaker_state)).collect()),
        );
        registry.register(
            "upstream_jwks_age_seconds",
            "Age of each upstream's cached JWKS (-1: none)",
            UpstreamFamily(upstreams.iter().map(|u| (u.name.clone(), u.jwks_age_secs)).collect()),
        );
        registry.register(
            "tokens_degraded",
            "Access tokens minted while their upstream was unavailable",
            Total(self.degraded.load(Ordering::Relaxed)),
        );
        registry.register("mesh_peers", "Mesh peers by state", PeerStates(mesh.peers));
        registry.register(
            "mesh_members",
            "Members of the mesh, this node included",
            Scalar(mesh.members),
        );
        registry.register(
            "mesh_sync_lag_seconds",
            "Longest time since the last sync message with a connected peer",
            Scalar(mesh.sync_lag_secs),
        );
        registry.register(
            "mesh_document_bytes",
            "Size of the replicated document",
            Scalar(mesh.document_bytes),
        );
        registry.register(
            "mesh_sync_sent_bytes",
            "Bytes of sync messages sent to peers",
            Total(mesh.bytes_sent),
        );
        registry.register(
            "mesh_received_bytes",
            "Bytes received from peers",
            Total(mesh.bytes_received),
        );
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            RequestsSnapshot(self.requests.values()),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by endpoint",
            self.latency.snapshot(),
        );
        registry.register(
            "tokens_issued",
            "Access tokens issued by grant type",
            TokensSnapshot(self.tokens.values()),
        );
        registry.register(
            "signing_key_age_seconds",
            "Age of the active signing key by algorithm",
            KeyAges(key_ages.to_vec()),
        );
        registry.register("clients", "Registered clients", Scalar(clients as u64));
        registry.register(
            "rate_limited",
            "Requests refused with 429 by each rate limit",
            RateLimitedSnapshot(self.rate_limited.values()),
        );
        let telemetry = crate::telemetry::stats();
        for (name, help, counter) in [
            (
                "log_lines_dropped",
                "Log lines not written to the log file because its queue was full (or a line exceeded a file)",
                &telemetry.log_lines_dropped,
            ),
            (
                "log_write_errors",
                "Log lines the log file writer failed to write",
                &telemetry.log_write_errors,
            ),
            (
                "otlp_spans_dropped",
                "Request spans not exported because the OTLP queue was full",
                &telemetry.otlp_spans_dropped,
            ),
            ("otlp_exports", "Successful OTLP exports", &telemetry.otlp_exports),
            (
                "otlp_export_failures",
                "OTLP exports that failed (collector unreachable, slow or refusing)",
                &telemetry.otlp_export_failures,
            ),
        ] {
            registry.register(name, help, Total(counter.load(Ordering::Relaxed)));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A fixed array of lock-free counters.
#[derive(Debug)]
struct Counters<const N: usize>([AtomicU64; N]);
impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}
impl<const N: usize> Counters<N> {
    fn values(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

#[derive(Debug)]
struct RequestsSnapshot(Vec<u64>);
impl EncodeMetric for RequestsSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (i, value) in self.0.iter().enumerate().filter(|(_, v)| **v > 0) {
            let endpoint = ENDPOINTS[i / STATUSES.len()];
            let status = match STATUSES[i % STATUSES.len()] {
                0 => "other".to_owned(),
                s => s.to_string(),
            };
            let labels = [("endpoint", endpoint), ("status", status.as_str())];
            encoder
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}
impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}
impl Histogram {
    fn observe(&self, seconds: f64) {
        let i = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Latency([Histogram; ENDPOINTS.len()]);
impl Latency {
    fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot(
            self.0
                .iter()
                .map(|h| {
                    let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
                    (h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, counts)
                })
                .collect(),
        )
    }
}

#[derive(Debug)]
struct LatencySnapshot(Vec<(f64, Vec<u64>)>);
impl EncodeMetric for LatencySnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (endpoint, (sum, counts)) in ENDPOINTS.iter().zip(&self.0) {
            let count: u64 = counts.iter().sum();
            if count == 0 {
                continue;
            }
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(counts.iter().copied())
                .collect();
            let labels = [("endpoint", *endpoint)];
            encoder
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(*sum, count, &buckets, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Debug)]
struct TokensSnapshot(Vec<u64>);
impl EncodeMetric for TokensSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (grant, value) in GRANTS.iter().zip(&self.0) {
            let labels = [("grant_type", *grant)];
            encoder
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[derive(Debug)]
struct RateLimitedSnapshot(Vec<u64>);
impl EncodeMetric for RateLimitedSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (scope, value) in crate::ratelimit::Scope::ALL.iter().zip(&self.0) {
            let labels = [("limit", scope.label())];
            encoder
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[derive(Debug)]
struct KeyAges(Vec<(&'static str, u64)>);
impl EncodeMetric for KeyAges {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (alg, age) in &self.0 {
            let labels = [("alg", *alg)];
            encoder.encode_family(&labels)?.encode_gauge(&(*age as i64))?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// One upstream's figures read at scrape time.
#[derive(Debug, Clone)]
pub struct UpstreamGauges {
    /// The upstream's configured name (the `upstream` label; at most
    /// [`crate::upstream::MAX_UPSTREAMS`] of them).
    pub name: String,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker_state: i64,
    /// Age of the cached JWKS in seconds, -1 when there is none.
    pub jwks_age_secs: i64,
}

#[derive(Debug)]
struct UpstreamFamily(Vec<(String, i64)>);
impl EncodeMetric for UpstreamFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (name, value) in &self.0 {
            let labels = [("upstream", name.as_str())];
            encoder.encode_family(&labels)?.encode_gauge(value)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Mesh figures read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct MeshGauges {
    /// Peers alive, suspect, dead.
    pub peers: [u64; 3],
    /// Members, this node included.
    pub members: u64,
    /// Longest time since the last sync with a connected peer.
    pub sync_lag_secs: u64,
    /// Size of the replicated document.
    pub document_bytes: u64,
    /// Bytes of sync messages sent.
    pub bytes_sent: u64,
    /// Bytes received from peers.
    pub bytes_received: u64,
}

#[derive(Debug)]
struct PeerStates([u64; 3]);
impl EncodeMetric for PeerStates {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (state, value) in ["alive", "suspect", "dead"].iter().zip(self.0) {
            let labels = [("state", *state)];
            encoder.encode_family(&labels)?.encode_gauge(&(value as i64))?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[derive(Debug)]
struct Total(u64);
impl EncodeMetric for Total {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[derive(Debug)]
struct Scalar(u64);
impl EncodeMetric for Scalar {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0 as i64))
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.observe_request(0, 200, Duration::from_micros(300));
        metrics.observe_request(0, 200, Duration::from_millis(3));
        metrics.observe_request(1, 418, Duration::from_millis(1));
        metrics.token_issued(0);
        let mesh = MeshGauges {
            peers: [2, 0, 1],
            members: 4,
            ..Default::default()
        };
        metrics.token_issued(GRANT_TOKEN_EXCHANGE);
        metrics.degraded_token_issued();
        let upstreams = [UpstreamGauges {
            name: "corp".into(),
            breaker_state: 2,
            jwks_age_secs: 30,
        }];
        let text = metrics.render(&[("EdDSA", 5)], 2, &mesh, &upstreams);
        assert!(
            text.contains(r#"meshgate_upstream_breaker_state{upstream="corp"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshgate_upstream_jwks_age_seconds{upstream="corp"} 30"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"meshgate_tokens_issued_total{grant_type="urn:ietf:params:oauth:grant-type:token-exchange"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("meshgate_tokens_degraded_total 1"), "{text}");
        assert!(
            text.contains(r#"meshgate_http_requests_total{endpoint="token",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshgate_http_requests_total{endpoint="introspect",status="other"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshgate_http_request_duration_seconds_bucket{le="0.0005",endpoint="token"} 1"#)
                || text.contains(r#"meshgate_http_request_duration_seconds_bucket{endpoint="token",le="0.0005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshgate_tokens_issued_total{grant_type="client_credentials"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshgate_signing_key_age_seconds{alg="EdDSA"} 5"#),
            "{text}"
        );
        assert!(text.contains("meshgate_clients 2"), "{text}");
        assert!(text.contains(r#"meshgate_mesh_peers{state="alive"} 2"#), "{text}");
        assert!(text.contains("meshgate_mesh_members 4"), "{text}");
    }
}
