//! Telemetry that outlives the auth plane: the JSON log file in the data directory
//! ([`logfile`]) and optional OpenTelemetry export over OTLP/HTTP ([`otlp`]).
//!
//! Both sit behind bounded queues filled with non-blocking sends: when the disk or the collector
//! is slow, records are dropped and counted (`meshgate_log_lines_dropped_total`,
//! `meshgate_otlp_spans_dropped_total`), never waited for on the request path.

pub mod logfile;
pub mod otlp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `observability:`: the log file and the OpenTelemetry export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ObservabilityConfig {
    /// The rotating JSON log file in the data directory (`logs/meshgate.log`).
    pub log_file: LogFileConfig,
    /// OpenTelemetry (OTLP/HTTP JSON) export of metrics and request spans; off without an endpoint.
    pub otlp: OtlpConfig,
}

/// `observability.log_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogFileConfig {
    /// Write the log file (`meshgate serve` only).
    pub enabled: bool,
    /// Size at which the file is rotated, in bytes (at least 4096).
    #[serde(deserialize_with = "at_least_4096")]
    pub max_file_bytes: u64,
    /// Files kept, the current one included (1 to 100): the log never takes more than
    /// `max_files × max_file_bytes`.
    #[serde(deserialize_with = "one_to_hundred")]
    pub max_files: usize,
    /// Lines waiting for the writer thread; beyond it lines are dropped and counted.
    pub queue_lines: usize,
}

impl Default for LogFileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 5,
            queue_lines: 8192,
        }
    }
}

/// `observability.otlp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OtlpConfig {
    /// Base URL of an OTLP/HTTP collector (e.g. `http://127.0.0.1:4318`); metrics go to
    /// `/v1/metrics`, spans to `/v1/traces`. Unset: no export.
    #[serde(deserialize_with = "endpoint")]
    pub endpoint: Option<String>,
    /// How often metrics and the queued spans are sent (humantime).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Longest time one export may take, connecting included (humantime).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Spans waiting for export; beyond it spans are dropped and counted.
    pub queue_spans: usize,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            queue_spans: 4096,
            service_name: "meshgate".into(),
        }
    }
}

/// Counters of the telemetry pipelines, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Log lines dropped because the writer's queue was full.
    pub log_lines_dropped: AtomicU64,
    /// Log lines the writer failed to write (disk full, permissions).
    pub log_write_errors: AtomicU64,
    /// Spans dropped because the export queue was full.
    pub otlp_spans_dropped: AtomicU64,
    /// Successful OTLP exports (one per request to the collector).
    pub otlp_exports: AtomicU64,
    /// Failed OTLP exports (unreachable, timed out or refused by the collector).
    pub otlp_export_failures: AtomicU64,
}

impl Stats {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The process's telemetry counters.
pub fn stats() -> &'static Stats {
    static STATS: std::sync::OnceLock<Stats> = std::sync::OnceLock::new();
    STATS.get_or_init(Stats::default)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d.is_zero() {
        return Err(serde::de::Error::custom("must be longer than 0s"));
    }
    Ok(d)
}

fn endpoint<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let Some(s) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let url = url::Url::parse(&s).map_err(serde::de::Error::custom)?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(serde::de::Error::custom("must be an http(s) URL without a query"));
    }
    Ok(Some(s.trim_end_matches('/').to_owned()))
}

fn at_least_4096<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(deserializer)?;
    if n < 4096 {
        return Err(serde::de::Error::custom("must be at least 4096"));
    }
    Ok(n)
}

fn one_to_hundred<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(deserializer)?;
    if !(1..=100).contains(&n) {
        return Err(serde::de::Error::custom("must be between 1 and 100"));
    }
    Ok(n)
}
