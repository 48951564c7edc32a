//! The configured upstream identity providers of a running node: one [`adapters::Upstream`] per
//! `upstreams:` entry, with a JWKS disk cache under the data directory
//! (`upstreams/<name>/jwks.json`, 0600), a background refresh that remembers its last error, and
//! the status `meshgate upstream status` and `/metrics` show.
//!
//! Building them makes no network call and start never waits for an upstream: the first refresh
//! runs in the background, and until it succeeds verification uses the disk cache (or fails
//! closed with `503` when there is none).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use adapters::Upstream;
use adapters::config::UpstreamConfig;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::Error;
use crate::federation::Health;

/// Most upstreams a node may configure; it bounds the `upstream` label of the metrics.
pub const MAX_UPSTREAMS: usize = 16;

/// The upstreams of a node. Cloning is cheap.
#[derive(Clone)]
pub struct Upstreams(Arc<Inner>);

struct Inner {
    entries: Vec<Entry>,
    clock: Arc<dyn mesh::clock::Clock>,
}

struct Entry {
    upstream: Upstream,
    config: UpstreamConfig,
    last_refresh: Mutex<RefreshRecord>,
}

#[derive(Default, Clone)]
struct RefreshRecord {
    ok_at: Option<u64>,
    error: Option<(u64, String)>,
}

/// Reads a [`mesh::clock::Clock`] (whole seconds) as an [`adapters::clock::Clock`], so the
/// bridge and its upstreams share one injected clock.
pub struct MeshClock(pub Arc<dyn mesh::clock::Clock>);

impl adapters::clock::Clock for MeshClock {
    fn now(&self) -> Duration {
        Duration::from_secs(self.0.now())
    }
}

impl Upstreams {
    /// Builds one upstream per entry, reading time from `clock`; each caches its JWKS under
    /// `data_dir/upstreams/<name>/` (in memory only when `data_dir` is `None`). Makes no network
    /// call. Fails when a cache directory cannot be created or an HTTP client cannot be built
    /// (a bad extra root CA).
    pub fn build(
        configs: &[UpstreamConfig],
        data_dir: Option<&Path>,
        clock: Arc<dyn mesh::clock::Clock>,
    ) -> Result<Self, Error> {
        let mesh_clock = clock.clone();
        let clock: Arc<dyn adapters::clock::Clock> = Arc::new(MeshClock(clock));
        let mut entries = Vec::with_capacity(configs.len());
        for config in configs {
            let cache = data_dir.map(|dir| cache_path(dir, &config.name)).transpose()?;
            let upstream = Upstream::new(config, clock.clone(), cache)
                .map_err(|e| Error::Config(vec![format!("upstreams.{}: {e}", config.name)]))?;
            if config.audience.is_none() {
                tracing::warn!(
                    upstream = %config.name,
                    "no `audience` configured: every token of this upstream is refused for exchange"
                );
            }
            entries.push(Entry {
                upstream,
                config: config.clone(),
                last_refresh: Mutex::new(RefreshRecord::default()),
            });
        }
        Ok(Self(Arc::new(Inner {
            entries,
            clock: mesh_clock,
        })))
    }

    /// No upstreams.
    pub fn none(clock: Arc<dyn mesh::clock::Clock>) -> Self {
        Self(Arc::new(Inner {
            entries: Vec::new(),
            clock,
        }))
    }

    /// Starts one background task per upstream that refreshes discovery and the JWKS now and
    /// then every `jwks.refresh_interval` (every `jwks.min_refresh_interval` after a failure),
    /// recording the outcome for the status; the tasks end when `shutdown` flips to `true`.
    pub fn spawn_refresh(&self, shutdown: watch::Receiver<bool>) {
        for index in 0..self.0.entries.len() {
            let (upstreams, shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move { upstreams.refresh_loop(index, shutdown).await });
        }
    }

    /// Refreshes every upstream once, recording the outcomes; returns the first error.
    pub async fn refresh_all(&self) -> Result<(), adapters::Error> {
        let mut first = Ok(());
        for entry in &self.0.entries {
            let result = entry.upstream.oidc().refresh().await;
            entry.record(self.0.clock.now(), &result);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }

    /// Whether no upstream is configured.
    pub fn is_empty(&self) -> bool {
        self.0.entries.is_empty()
    }

    /// The upstream whose issuer is exactly `issuer`.
    pub fn by_issuer(&self, issuer: &str) -> Option<&Upstream> {
        self.0
            .entries
            .iter()
            .find(|entry| entry.config.issuer.as_str() == issuer)
            .map(|entry| &entry.upstream)
    }

    /// The upstream named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Upstream> {
        self.0
            .entries
            .iter()
            .find(|entry| entry.upstream.name() == name)
            .map(|entry| &entry.upstream)
    }

    /// The configuration of the upstream named `name`.
    pub fn config_by_name(&self, name: &str) -> Option<&UpstreamConfig> {
        self.0
            .entries
            .iter()
            .find(|entry| entry.config.name == name)
            .map(|entry| &entry.config)
    }

    /// The configuration of every upstream, in configuration order.
    pub fn configs(&self) -> Vec<&UpstreamConfig> {
        self.0.entries.iter().map(|entry| &entry.config).collect()
    }

    /// The first upstream with `federate_unknown_clients: true`, which unknown client ids are
    /// forwarded to.
    pub fn federating_unknown_clients(&self) -> Option<&Upstream> {
        self.0
            .entries
            .iter()
            .find(|entry| entry.config.federate_unknown_clients)
            .map(|entry| &entry.upstream)
    }

    /// The status of every upstream at `now` (Unix seconds); `fresh_for` is
    /// `federation.jwks_fresh_for`.
    pub fn status(&self, now: u64, fresh_for: Duration) -> Vec<UpstreamStatus> {
        self.0
            .entries
            .iter()
            .map(|entry| entry.status(now, fresh_for))
            .collect()
    }

    async fn refresh_loop(self, index: usize, mut shutdown: watch::Receiver<bool>) {
        let entry = &self.0.entries[index];
        let jwks = &entry.config.jwks;
        loop {
            let result = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                result = entry.upstream.oidc().refresh() => result,
            };
            entry.record(self.0.clock.now(), &result);
            let pause = match &result {
                Ok(()) => jwks.refresh_interval,
                Err(error) => {
                    tracing::warn!(upstream = %entry.config.name, error = %error, "upstream refresh failed");
                    jwks.refresh_interval.min(jwks.min_refresh_interval)
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

impl Entry {
    fn record(&self, now: u64, result: &Result<(), adapters::Error>) {
        let mut record = self.last_refresh.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                record.ok_at = Some(now);
                record.error = None;
            }
            Err(error) => record.error = Some((now, error.to_string())),
        }
    }

    fn status(&self, now: u64, fresh_for: Duration) -> UpstreamStatus {
        let now_d = Duration::from_secs(now);
        let provider = self.upstream.status(now_d);
        let health = Health::from(&provider);
        let record = self.last_refresh.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let jwks_age = provider.jwks_fetched_at.map(|at| now_d.saturating_sub(at).as_secs());
        UpstreamStatus {
            name: self.config.name.clone(),
            issuer: self.config.issuer.as_str().to_owned(),
            available: health.is_available(now_d, fresh_for),
            breaker: BreakerStatus {
                state: provider.circuit.state.as_str(),
                consecutive_failures: provider.circuit.consecutive_failures,
                opened_at: provider.circuit.opened_at.map(|at| at.as_secs()),
                retry_at: provider.circuit.retry_at.map(|at| at.as_secs()),
                trips: provider.circuit.trips,
            },
            jwks: JwksStatus {
                fetched_at: provider.jwks_fetched_at.map(|at| at.as_secs()),
                age_secs: jwks_age,
                keys: provider.jwks_keys,
                fresh: jwks_age.is_some_and(|age| age <= fresh_for.as_secs()),
                usable: provider.jwks_fresh_enough,
                fresh_for_secs: fresh_for.as_secs(),
                max_stale_secs: self.config.jwks.max_stale.as_secs(),
            },
            discovered: provider.discovered,
            last_refresh_ok_at: record.ok_at,
            last_refresh_error: record.error.map(|(at, error)| RefreshError { at, error }),
        }
    }
}

/// One upstream's state, as `meshgate upstream status --json` prints it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct UpstreamStatus {
    /// The configured name.
    pub name: String,
    /// The configured issuer.
    pub issuer: String,
    /// Whether token exchange issues normally (breaker closed and JWKS fresh); when false, the
    /// clients' degradation policies apply.
    pub available: bool,
    /// The circuit breaker.
    pub breaker: BreakerStatus,
    /// The cached JWKS.
    pub jwks: JwksStatus,
    /// Whether the upstream's endpoints are known (discovery or explicit configuration).
    pub discovered: bool,
    /// When the last refresh succeeded (Unix seconds).
    pub last_refresh_ok_at: Option<u64>,
    /// The last refresh error since the last success.
    pub last_refresh_error: Option<RefreshError>,
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BreakerStatus {
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// When the current outage began (Unix seconds).
    pub opened_at: Option<u64>,
    /// When the next probe may be made (Unix seconds).
    pub retry_at: Option<u64>,
    /// How often the breaker opened since start.
    pub trips: u64,
}

/// The cached JWKS.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JwksStatus {
    /// When it was fetched (Unix seconds); `None`: never, and no disk cache.
    pub fetched_at: Option<u64>,
    /// Its age in seconds.
    pub age_secs: Option<u64>,
    /// Usable keys.
    pub keys: usize,
    /// Whether it is younger than `federation.jwks_fresh_for`.
    pub fresh: bool,
    /// Whether it is younger than the upstream's `jwks.max_stale` (verification still uses it).
    pub usable: bool,
    /// `federation.jwks_fresh_for` in seconds.
    pub fresh_for_secs: u64,
    /// `jwks.max_stale` in seconds.
    pub max_stale_secs: u64,
}

/// A failed refresh.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RefreshError {
    /// When (Unix seconds).
    pub at: u64,
    /// What went wrong (no secrets, no token material).
    pub error: String,
}

/// `data_dir/upstreams/<name>/jwks.json`, creating the directory (0700).
fn cache_path(data_dir: &Path, name: &str) -> Result<PathBuf, Error> {
    let dir = data_dir.join("upstreams").join(name);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).map_err(|source| Error::Io {
        action: format!("create {}", dir.display()),
        source,
    })?;
    Ok(dir.join("jwks.json"))
}

/// Checks the `upstreams:` list beyond what each entry's type enforces: at most
/// [`MAX_UPSTREAMS`], names of 1–64 characters from `[A-Za-z0-9_-]` and unique, issuers unique
/// (an issuer names exactly one upstream). Returns one message per problem, by key path.
pub fn check(configs: &[UpstreamConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    if configs.len() > MAX_UPSTREAMS {
        problems.push(format!(
            "upstreams: at most {MAX_UPSTREAMS} upstreams may be configured"
        ));
    }
    for (index, config) in configs.iter().enumerate() {
        let name = &config.name;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            problems.push(format!(
                "upstreams[{index}].name: `{name}` must be 1 to 64 letters, digits, `-` or `_`"
            ));
        }
        if configs[..index].iter().any(|other| other.name == *name) {
            problems.push(format!("upstreams[{index}].name: `{name}` is configured twice"));
        }
        if config.login.is_some() && (config.client_id.is_none() || config.client_secret.is_none()) {
            problems.push(format!(
                "upstreams[{index}].login: needs `client_id` and `client_secret` (meshgate's client at the upstream)"
            ));
        }
        if configs[..index].iter().any(|other| other.issuer == config.issuer) {
            problems.push(format!(
                "upstreams[{index}].issuer: `{}` is configured twice",
                config.issuer.as_str()
            ));
        }
    }
    problems
}
