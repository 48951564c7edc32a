//! OpenTelemetry export over OTLP/HTTP with JSON bodies (`observability.otlp.endpoint`):
//! every `interval`, the metrics `/metrics` shows go to `{endpoint}/v1/metrics` and the request
//! spans queued since go to `{endpoint}/v1/traces`.
//!
//! The request path only does [`record`]: a non-blocking send of a small fixed-size value into a
//! bounded queue (dropped and counted when full). The exporter runs on its own thread and runtime
//! and talks to the collector with the adapters' HTTP client (timeouts, no redirects, rustls), so a
//! dead or frozen collector costs failed exports, never a slower or failed token request.
//!
//! Why not the `opentelemetry-otlp` crate: resolved against this workspace's lock file (Nov 2026),
//! `opentelemetry-otlp` 0.33 with `http-json` and `reqwest-client` (and `opentelemetry_sdk` 0.33)
//! adds 16 crates — the SDK, `prost` and `prost-derive`, `async-trait`, a second `rand` (0.9),
//! `tokio-stream`, `anyhow`, … — though no second HTTP/TLS stack (0.31 still pulled reqwest 0.12
//! and tonic). This exporter is one module on the HTTP client the adapters already use, with no
//! new crate, and its request-path cost is one `try_send` of a 40-byte value.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{OtlpConfig, Stats, stats};
use crate::error::Error;
use crate::http::AppState;

/// One finished HTTP request, as queued by the request path.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord {
    /// Index into [`crate::metrics::ENDPOINTS`].
    pub endpoint: u8,
    /// 0 GET, 1 POST, 2 other.
    pub method: u8,
    /// The response status.
    pub status: u16,
    /// When the request arrived.
    pub start: Instant,
    /// How long it took.
    pub elapsed: Duration,
}

static QUEUE: ArcSwapOption<mpsc::Sender<SpanRecord>> = ArcSwapOption::const_empty();

/// Queues a span for the finished request, if export is on; never waits.
pub fn record(endpoint: usize, method: &axum::http::Method, status: u16, start: Instant, elapsed: Duration) {
    let guard = QUEUE.load();
    let Some(queue) = guard.as_ref() else { return };
    let method = match *method {
        axum::http::Method::GET => 0,
        axum::http::Method::POST => 1,
        _ => 2,
    };
    let span = SpanRecord {
        endpoint: endpoint as u8,
        method,
        status,
        start,
        elapsed,
    };
    if queue.try_send(span).is_err() {
        Stats::bump(&stats().otlp_spans_dropped);
    }
}

/// Starts the exporter thread when `config` names an endpoint; it stops at `shutdown`.
pub fn spawn(
    config: &OtlpConfig,
    state: AppState,
    node: String,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<std::thread::JoinHandle<()>>, Error> {
    let Some(endpoint) = config.endpoint.clone() else {
        return Ok(None);
    };
    let client = adapters::http::HttpClient::new(&adapters::http::HttpConfig {
        connect_timeout: config.timeout,
        timeout: config.timeout,
        ..Default::default()
    })
    .map_err(|e| Error::Config(vec![format!("observability.otlp: {e}")]))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            action: "start the OTLP runtime".into(),
            source,
        })?;
    let (sender, receiver) = mpsc::channel(config.queue_spans.max(1));
    QUEUE.store(Some(Arc::new(sender)));
    let exporter = Exporter {
        endpoint,
        client,
        state,
        resource: resource(&config.service_name, &node),
        interval: config.interval,
        trace_prefix: random_hex::<8>(),
        sequence: 0,
        failing: false,
    };
    std::thread::Builder::new()
        .name("meshgate-otlp".into())
        .spawn(move || runtime.block_on(exporter.run(receiver, shutdown)))
        .map(Some)
        .map_err(|source| Error::Io {
            action: "spawn the OTLP thread".into(),
            source,
        })
}

struct Exporter {
    endpoint: String,
    client: adapters::http::HttpClient,
    state: AppState,
    resource: Value,
    interval: Duration,
    trace_prefix: String,
    sequence: u64,
    failing: bool,
}

impl Exporter {
    async fn run(mut self, mut spans: mpsc::Receiver<SpanRecord>, shutdown: watch::Receiver<bool>) {
        let stop = crate::serve::wait_for(shutdown);
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            self.export(&mut spans).await;
        }
        QUEUE.store(None);
        // One last export, so what the node saw just before it stopped is not lost.
        let last = self.export(&mut spans);
        let _ = tokio::time::timeout(Duration::from_secs(2), last).await;
    }

    async fn export(&mut self, spans: &mut mpsc::Receiver<SpanRecord>) {
        let now_instant = Instant::now();
        let now_nanos = u128::from(self.state.now()) * 1_000_000_000;
        let mut batch = Vec::new();
        while batch.len() < 8192 {
            match spans.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let body = self.traces(&batch, now_instant, now_nanos);
            self.post("/v1/traces", body).await;
        }
        let text = crate::observability::render(&self.state);
        let body = json!({"resourceMetrics": [{
            "resource": self.resource,
            "scopeMetrics": [{"scope": {"name": "meshgate"}, "metrics": metrics_from_text(&text, now_nanos)}],
        }]});
        self.post("/v1/metrics", body).await;
    }

    fn traces(&mut self, batch: &[SpanRecord], now_instant: Instant, now_nanos: u128) -> Value {
        let spans: Vec<Value> = batch
            .iter()
            .map(|span| {
                self.sequence += 1;
                let ago = now_instant.saturating_duration_since(span.start).as_nanos();
                let start = now_nanos.saturating_sub(ago);
                let end = start + span.elapsed.as_nanos();
                let route = crate::metrics::ENDPOINTS
                    .get(usize::from(span.endpoint))
                    .copied()
                    .unwrap_or("other");
                let method = ["GET", "POST", "OTHER"][usize::from(span.method.min(2))];
                json!({
                    "traceId": format!("{}{:016x}", self.trace_prefix, self.sequence),
                    "spanId": format!("{:016x}", self.sequence),
                    "name": format!("{method} {route}"),
                    "kind": 2,
                    "startTimeUnixNano": start.to_string(),
                    "endTimeUnixNano": end.to_string(),
                    "attributes": [
                        attribute("http.request.method", json!({"stringValue": method})),
                        attribute("meshgate.endpoint", json!({"stringValue": route})),
                        attribute("http.response.status_code", json!({"intValue": span.status.to_string()})),
                    ],
                    "status": {"code": if span.status >= 500 { 2 } else { 0 }},
                })
            })
            .collect();
        json!({"resourceSpans": [{
            "resource": self.resource,
            "scopeSpans": [{"scope": {"name": "meshgate"}, "spans": spans}],
        }]})
    }

    async fn post(&mut self, path: &str, body: Value) {
        let request = axum::http::Request::builder()
            .method(axum::http::Method::POST)
            .uri(format!("{}{path}", self.endpoint))
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default());
        let outcome = match request {
            Ok(request) => match self.client.execute(request).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("the collector answered {}", response.status())),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                Stats::bump(&stats().otlp_exports);
                if self.failing {
                    tracing::info!(endpoint = %self.endpoint, "OTLP export works again");
                }
                self.failing = false;
            }
            Err(error) => {
                Stats::bump(&stats().otlp_export_failures);
                if !self.failing {
                    tracing::warn!(endpoint = %self.endpoint, path, %error, "OTLP export failed; retrying every interval, dropping what does not fit");
                }
                self.failing = true;
            }
        }
    }
}

fn attribute(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

fn resource(service: &str, node: &str) -> Value {
    json!({"attributes": [
        attribute("service.name", json!({"stringValue": service})),
        attribute("service.instance.id", json!({"stringValue": node})),
    ]})
}

/// OTLP metrics (JSON) from the OpenMetrics text `/metrics` serves: counters become cumulative
/// monotonic sums, gauges gauges, histograms their `_sum` and `_count` as sums (buckets are left
/// to the Prometheus endpoint).
pub fn metrics_from_text(text: &str, now_nanos: u128) -> Vec<Value> {
    use std::collections::BTreeMap;
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut help: BTreeMap<&str, &str> = BTreeMap::new();
    let mut points: BTreeMap<String, (bool, Vec<Value>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name, text);
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let monotonic = if name.ends_with("_total") {
            true
        } else if name.ends_with("_bucket") {
            continue;
        } else if let Some(base) = name.strip_suffix("_sum").or_else(|| name.strip_suffix("_count"))
            && types.get(base) == Some(&"histogram")
        {
            true
        } else {
            types.get(name) == Some(&"counter")
        };
        let attributes: Vec<Value> = parse_labels(labels)
            .into_iter()
            .map(|(k, v)| attribute(&k, json!({"stringValue": v})))
            .collect();
        let point = json!({
            "attributes": attributes,
            "timeUnixNano": now_nanos.to_string(),
            "asDouble": value,
        });
        points
            .entry(name.to_owned())
            .or_insert((monotonic, Vec::new()))
            .1
            .push(point);
    }
    points
        .into_iter()
        .map(|(name, (monotonic, data_points))| {
            let base = name
                .strip_suffix("_total")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(&name);
            let description = help
                .get(base)
                .or_else(|| help.get(name.as_str()))
                .copied()
                .unwrap_or("");
            if monotonic {
                json!({"name": name, "description": description, "sum": {
                    "dataPoints": data_points, "aggregationTemporality": 2, "isMonotonic": true}})
            } else {
                json!({"name": name, "description": description, "gauge": {"dataPoints": data_points}})
            }
        })
        .collect()
}

/// `a="x",b="y"` → pairs (values unescaped for `\"` and `\\`).
fn parse_labels(labels: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = labels;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_owned(), value));
        rest = &after[end..];
    }
    out
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    // The OS RNG failing is unrecoverable; getrandom documents it as practically impossible.
    getrandom::fill(&mut bytes).expect("operating system random number generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_text_becomes_otlp_metrics() {
        let text = "# HELP meshgate_http_requests HTTP requests by endpoint and status\n\
                    # TYPE meshgate_http_requests counter\n\
                    meshgate_http_requests_total{endpoint=\"token\",status=\"200\"} 7\n\
                    # TYPE meshgate_clients gauge\n\
                    meshgate_clients 3\n\
                    # TYPE meshgate_latency histogram\n\
                    meshgate_latency_bucket{le=\"0.1\"} 1\n\
                    meshgate_latency_sum 0.5\n\
                    meshgate_latency_count 2\n\
                    # EOF\n";
        let metrics = metrics_from_text(text, 42);
        let by_name = |n: &str| metrics.iter().find(|m| m["name"] == n).cloned().unwrap();
        let requests = by_name("meshgate_http_requests_total");
        assert_eq!(requests["sum"]["isMonotonic"], true);
        assert_eq!(requests["description"], "HTTP requests by endpoint and status");
        let point = &requests["sum"]["dataPoints"][0];
        assert_eq!(point["asDouble"], 7.0);
        assert_eq!(point["attributes"][0]["key"], "endpoint");
        assert_eq!(point["attributes"][1]["value"]["stringValue"], "200");
        assert_eq!(by_name("meshgate_clients")["gauge"]["dataPoints"][0]["asDouble"], 3.0);
        assert_eq!(
            by_name("meshgate_latency_count")["sum"]["dataPoints"][0]["asDouble"],
            2.0
        );
        assert!(metrics.iter().all(|m| m["name"] != "meshgate_latency_bucket"));
    }
}
