//! Configuration: YAML in the `node:` / `bridge:` / `upstreams:` / `federation:` shape, overridden by environment variables
//! (`MESHGATE_` + key path with `__` between levels), overridden by command-line flags.
//!
//! Loading never half-succeeds: [`load`] returns a complete [`Config`] or every problem it found,
//! each naming its key path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use crate::error::Error;
use crate::keys::Alg;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The node: identity, data directory, mesh sync, plugin execution.
    pub node: NodeConfig,
    /// The OAuth/OIDC facade.
    pub bridge: BridgeConfig,
    /// Upstream identity providers whose tokens token exchange accepts (`upstreams:`, a list of
    /// [`adapters::config::UpstreamConfig`]).
    pub upstreams: Vec<adapters::config::UpstreamConfig>,
    /// What token exchange does per client while an upstream is unavailable (`federation:`).
    pub federation: crate::federation::FederationConfig,
    /// How much of the replicated audit log every node keeps (`audit:`).
    pub audit: crate::audit::AuditConfig,
    /// The log file and OpenTelemetry export (`observability:`).
    pub observability: crate::telemetry::ObservabilityConfig,
}

/// `node:`: the mesh node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Data directory; default `$XDG_DATA_HOME/meshgate`, else `~/.local/share/meshgate`.
    pub data_dir: Option<PathBuf>,
    /// Node identity.
    pub identity: IdentityConfig,
    /// Mesh synchronisation (used once peers exist; a single node is a mesh of one).
    pub sync: SyncConfig,
    /// Plugin execution.
    pub execution: ExecutionConfig,
}

/// `node.identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct IdentityConfig {
    /// The DID method naming the node; only `key` exists.
    pub did_method: DidMethod,
    /// Keep keys in the local enclave (the data directory's 0600 key files).
    pub local_enclave: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            did_method: DidMethod::Key,
            local_enclave: true,
        }
    }
}

/// Supported DID methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DidMethod {
    /// `did:key` (ed25519).
    Key,
}

/// `node.sync`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SyncConfig {
    /// Bound on the replicated document's size, in MiB.
    pub crdt_buffer_mb: NonZeroU64,
    /// Address for mesh traffic.
    pub listen: SocketAddr,
    /// Peers to contact at start (`host:port`).
    pub gossip_peers: Vec<String>,
    /// DIDs admitted to the mesh without an explicit `mesh admit`.
    pub trusted_peers: Vec<mesh::did::DidKey>,
    /// Discover peers on the local network with mDNS (register this node, browse for others);
    /// default off. It only proposes addresses: a discovered node must still be a member.
    pub mdns: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            crdt_buffer_mb: NonZeroU64::new(128).unwrap_or(NonZeroU64::MIN),
            listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            gossip_peers: Vec::new(),
            trusted_peers: Vec::new(),
            mdns: false,
        }
    }
}

/// `node.execution`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ExecutionConfig {
    /// The WebAssembly runtime for plugins; only `wasmtime` exists.
    pub wasm_runtime: WasmRuntime,
    /// Memory cap of one plugin instance, in MiB.
    pub max_skill_memory_mb: NonZeroU64,
    /// Wall-clock deadline of one plugin call (humantime: `5ms`); between 1 ms and 1 s.
    #[serde(deserialize_with = "plugin_deadline")]
    pub plugin_deadline: Duration,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            wasm_runtime: WasmRuntime::Wasmtime,
            max_skill_memory_mb: NonZeroU64::new(512).unwrap_or(NonZeroU64::MIN),
            plugin_deadline: Duration::from_millis(5),
        }
    }
}

/// Supported WebAssembly runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WasmRuntime {
    /// wasmtime.
    Wasmtime,
}

/// `bridge:`: the OAuth facade.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BridgeConfig {
    /// Address of the OAuth listener.
    pub listen: SocketAddr,
    /// Address of the observability listener (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_listen: SocketAddr,
    /// The issuer identifier; default `http://` + the bound listen address.
    pub issuer: Option<Issuer>,
    /// The audience of tokens requested without `resource` by clients without registered audiences;
    /// default the issuer.
    pub resource: Option<String>,
    /// Lifetime of access tokens (humantime: `10m`, `1h`); between 1 s and 24 h.
    #[serde(deserialize_with = "token_ttl")]
    pub access_token_ttl: Duration,
    /// Algorithm of access tokens for clients that do not choose one.
    pub token_alg: Alg,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How many verified access-token signatures introspection remembers (0 = verify every time).
    pub verified_token_cache: usize,
    /// Dynamic client registration (RFC 7591) and Client ID Metadata Documents.
    pub registration: crate::registration::RegistrationConfig,
    /// Serve HTTPS with this certificate and key (PEM files, reloaded when they change); the
    /// default issuer then starts with `https://`. Unset: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Token buckets per source address and per client (`bridge.rate_limits`).
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    /// Connection cap and read timeouts of the OAuth listener (`bridge.connections`).
    pub connections: crate::listener::ConnectionConfig,
    /// After a refresh token is rotated, how long a concurrent refresh with it gets the same new
    /// pair instead of revoking the family as a reuse (humantime; default 3s, at most 1m).
    #[serde(deserialize_with = "refresh_grace")]
    pub refresh_grace: Duration,
    /// Lifetime of a refresh-token family from the login (humantime; default 30d).
    #[serde(deserialize_with = "positive_duration")]
    pub refresh_token_ttl: Duration,
    /// Lifetime of a signed-in browser session (humantime; default 12h).
    #[serde(deserialize_with = "positive_duration")]
    pub session_ttl: Duration,
    /// Lifetime of a device code of the device flow (RFC 8628; humantime; default 10m, at most 1h).
    #[serde(deserialize_with = "device_code_ttl")]
    pub device_code_ttl: Duration,
    /// The polling interval devices are told (RFC 8628 `interval`; humantime; default 5s, 1s to 1m).
    #[serde(deserialize_with = "device_poll_interval")]
    pub device_poll_interval: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            issuer: None,
            resource: None,
            access_token_ttl: Duration::from_secs(600),
            token_alg: Alg::EdDSA,
            max_body_bytes: 64 * 1024,
            verified_token_cache: 65_536,
            registration: Default::default(),
            tls: None,
            rate_limits: Default::default(),
            connections: Default::default(),
            refresh_grace: Duration::from_secs(3),
            refresh_token_ttl: Duration::from_secs(30 * 86_400),
            session_ttl: Duration::from_secs(12 * 3600),
            device_code_ttl: Duration::from_secs(600),
            device_poll_interval: Duration::from_secs(5),
        }
    }
}

/// An issuer identifier (RFC 8414 §2): an `http`/`https` URL without query or fragment, kept
/// without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer(String);

impl Issuer {
    /// Parses an issuer URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err("the issuer must be an https (or http) URL".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("the issuer must not have a query or fragment".into());
        }
        if url.host_str().is_none() {
            return Err("the issuer must have a host".into());
        }
        Ok(Self(s.trim_end_matches('/').to_owned()))
    }

    /// The issuer as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path part (empty or starting with `/`), under which the endpoints are served.
    pub fn path(&self) -> String {
        url::Url::parse(&self.0)
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for Issuer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Issuer::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn token_ttl<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
        return Err(serde::de::Error::custom("must be between 1s and 24h"));
    }
    Ok(d)
}

fn refresh_grace<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d > Duration::from_secs(60) {
        return Err(serde::de::Error::custom("must be at most 1m"));
    }
    Ok(d)
}

fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(366 * 86_400) {
        return Err(serde::de::Error::custom("must be between 1s and 366d"));
    }
    Ok(d)
}

fn device_code_ttl<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d < Duration::from_secs(10) || d > Duration::from_secs(3600) {
        return Err(serde::de::Error::custom("must be between 10s and 1h"));
    }
    Ok(d)
}

fn device_poll_interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(60) {
        return Err(serde::de::Error::custom("must be between 1s and 1m"));
    }
    Ok(d)
}

fn plugin_deadline<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(1) {
        return Err(serde::de::Error::custom("must be between 1ms and 1s"));
    }
    Ok(d)
}

/// The environment, behind a trait so tests can feed a map.
pub trait Environment {
    /// Every `(name, value)` pair.
    fn vars(&self) -> Vec<(String, String)>;
    /// One variable.
    fn var(&self, name: &str) -> Option<String> {
        self.vars().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Command-line overrides, the highest precedence.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--issuer`.
    pub issuer: Option<String>,
    /// `--sync-listen`.
    pub sync_listen: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
}

/// Loads the configuration: defaults, then `file`, then the environment, then `overrides`.
pub fn load(file: Option<&Path>, env: &dyn Environment, overrides: &Overrides) -> Result<Config, Error> {
    let mut value = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(vec![format!("{}: cannot read: {e}", path.display())]))?;
            if text.trim().is_empty() {
                Value::Mapping(Default::default())
            } else {
                serde_yaml::from_str(&text)
                    .map_err(|e| Error::Config(vec![format!("{}: not valid YAML: {e}", path.display())]))?
            }
        }
        None => Value::Mapping(Default::default()),
    };
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    for (name, raw) in env.vars() {
        let Some(rest) = name.strip_prefix("MESHGATE_") else {
            continue;
        };
        if !rest.contains("__") {
            continue; // MESHGATE_LOG and the like are not configuration keys
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let parsed: Value = serde_yaml::from_str(&raw).unwrap_or(Value::String(raw));
        set_path(&mut value, &path, parsed);
    }
    let flags = [
        (
            &["node", "data_dir"][..],
            overrides.data_dir.as_ref().map(|p| p.display().to_string()),
        ),
        (&["bridge", "listen"][..], overrides.listen.clone()),
        (&["bridge", "metrics_listen"][..], overrides.metrics_listen.clone()),
        (&["bridge", "issuer"][..], overrides.issuer.clone()),
        (&["node", "sync", "listen"][..], overrides.sync_listen.clone()),
        (
            &["bridge", "tls", "cert"][..],
            overrides.tls_cert.as_ref().map(|p| p.display().to_string()),
        ),
        (
            &["bridge", "tls", "key"][..],
            overrides.tls_key.as_ref().map(|p| p.display().to_string()),
        ),
    ];
    for (path, flag) in flags {
        if let Some(v) = flag {
            let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            set_path(&mut value, &path, Value::String(v));
        }
    }
    from_value(value)
}

/// Parses a configuration from YAML text alone (defaults, then `text`; no environment, no flags),
/// returning a complete [`Config`] or every problem found. What [`check`] does to a file's text.
pub fn from_yaml(text: &str) -> Result<Config, Error> {
    if text.trim().is_empty() {
        return from_value(Value::Mapping(Default::default()));
    }
    let value: Value = serde_yaml::from_str(text).map_err(|e| Error::Config(vec![format!("not valid YAML: {e}")]))?;
    if value.is_null() {
        return from_value(Value::Mapping(Default::default()));
    }
    from_value(value)
}

/// Checks a configuration file, returning every problem found.
pub fn check(file: &Path) -> Result<Config, Error> {
    load(Some(file), &BTreeMap::new(), &Overrides::default())
}

fn set_path(value: &mut Value, path: &[String], leaf: Value) {
    let Some((first, rest)) = path.split_first() else {
        *value = leaf;
        return;
    };
    // A list entry is addressed by its index (`MESHGATE_UPSTREAMS__0__AUDIENCE`).
    if let (Value::Sequence(list), Ok(index)) = (&mut *value, first.parse::<usize>())
        && let Some(entry) = list.get_mut(index)
    {
        set_path(entry, rest, leaf);
        return;
    }
    if !value.is_mapping() {
        *value = Value::Mapping(Default::default());
    }
    if let Value::Mapping(map) = value {
        let entry = map.entry(Value::String(first.clone())).or_insert(Value::Null);
        set_path(entry, rest, leaf);
    }
}

/// Deserializes, collecting every unknown key and every bad value (by removing each bad value and
/// trying again, so one mistake does not hide the next).
fn from_value(mut value: Value) -> Result<Config, Error> {
    let mut problems = Vec::new();
    for _ in 0..64 {
        let mut unknown = Vec::new();
        let result: Result<Config, _> = {
            let mut record = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
            let ignored = serde_ignored::Deserializer::new(value.clone(), &mut record);
            serde_path_to_error::deserialize(ignored)
        };
        for key in unknown {
            let entry = format!("{key}: unknown key");
            if !problems.contains(&entry) {
                problems.push(entry);
            }
        }
        if let Ok(config) = &result {
            let bridge = &config.bridge;
            let limits = bridge
                .rate_limits
                .problems()
                .into_iter()
                .chain(bridge.connections.problems());
            for problem in crate::upstream::check(&config.upstreams).into_iter().chain(limits) {
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
        }
        match result {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => return Err(Error::Config(problems)),
            Err(e) => {
                let path = e.path().to_string();
                problems.push(format!("{path}: {}", e.inner()));
                if path == "." || !remove_path(&mut value, e.path()) {
                    return Err(Error::Config(problems));
                }
            }
        }
    }
    Err(Error::Config(problems))
}

/// A key path as serde_path_to_error writes it (`upstreams[0].audience`), so unknown keys and
/// bad values name list entries alike.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

fn remove_path(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        current = match (segment, current) {
            (Segment::Map { key }, Value::Mapping(map)) => match map.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Sequence(seq)) => match seq.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, current) {
        (Segment::Map { key }, Value::Mapping(map)) => map.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, Value::Sequence(seq)) if *index < seq.len() => {
            seq.remove(*index);
            true
        }
        _ => false,
    }
}

/// The default data directory: `$XDG_DATA_HOME/meshgate`, else `~/.local/share/meshgate`.
pub fn default_data_dir(env: &dyn Environment) -> PathBuf {
    if let Some(xdg) = env.var("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("meshgate");
    }
    let home = env.var("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/meshgate")
}

impl Config {
    /// The data directory this configuration names, or the default.
    pub fn data_dir(&self, env: &dyn Environment) -> PathBuf {
        self.node.data_dir.clone().unwrap_or_else(|| default_data_dir(env))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn design_example_loads() {
        let file = write(
            r#"
node:
  identity: { did_method: "key", local_enclave: true }
  sync:
    crdt_buffer_mb: 128
    listen: "0.0.0.0:7946"
    gossip_peers: ["edge-2.local:7946", "edge-3.local:7946"]
  execution: { wasm_runtime: "wasmtime", max_skill_memory_mb: 512 }
bridge:
  listen: "127.0.0.1:8700"
  issuer: "http://127.0.0.1:8700"
"#,
        );
        let config = check(file.path()).unwrap();
        assert_eq!(config.node.sync.gossip_peers.len(), 2);
        assert_eq!(config.bridge.issuer.unwrap().as_str(), "http://127.0.0.1:8700");
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let file = write(
            "node:\n  sync:\n    crdt_bufer_mb: 3\n    crdt_buffer_mb: 0\nbridge:\n  listen: nowhere\n  access_token_ttl: 0s\n  issuer: ftp://x\nextra: 1\n",
        );
        let Err(Error::Config(problems)) = check(file.path()) else {
            panic!("accepted a bad config")
        };
        let text = problems.join("\n");
        for path in [
            "node.sync.crdt_bufer_mb",
            "node.sync.crdt_buffer_mb",
            "bridge.listen",
            "bridge.access_token_ttl",
            "bridge.issuer",
            "extra",
        ] {
            assert!(text.contains(path), "{path} missing from:\n{text}");
        }
    }

    #[test]
    fn precedence_is_flags_then_env_then_file() {
        let file = write(
            "bridge:\n  listen: 127.0.0.1:1000\n  metrics_listen: 127.0.0.1:1001\nnode:\n  sync:\n    crdt_buffer_mb: 5\n",
        );
        let environment = env(&[
            ("MESHGATE_BRIDGE__LISTEN", "127.0.0.1:2000"),
            ("MESHGATE_NODE__SYNC__CRDT_BUFFER_MB", "64"),
            ("MESHGATE_LOG", "debug"),
        ]);
        let overrides = Overrides {
            listen: Some("127.0.0.1:3000".into()),
            ..Default::default()
        };
        let config = load(Some(file.path()), &environment, &overrides).unwrap();
        assert_eq!(config.bridge.listen.port(), 3000);
        assert_eq!(config.bridge.metrics_listen.port(), 1001);
        assert_eq!(config.node.sync.crdt_buffer_mb.get(), 64);
        let config = load(Some(file.path()), &environment, &Overrides::default()).unwrap();
        assert_eq!(config.bridge.listen.port(), 2000);
    }

    #[test]
    fn bad_environment_value_is_named() {
        let environment = env(&[("MESHGATE_NODE__SYNC__CRDT_BUFFER_MB", "lots")]);
        let Err(Error::Config(problems)) = load(None, &environment, &Overrides::default()) else {
            panic!()
        };
        assert!(problems[0].contains("node.sync.crdt_buffer_mb"), "{problems:?}");
    }

    #[test]
    fn default_data_dir_follows_xdg() {
        assert_eq!(
            default_data_dir(&env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/meshgate")
        );
        assert_eq!(
            default_data_dir(&env(&[("HOME", "/h")])),
            PathBuf::from("/h/.local/share/meshgate")
        );
    }

    #[test]
    fn mdns_is_off_unless_asked() {
        let config = load(None, &env(&[]), &Overrides::default()).unwrap();
        assert!(!config.node.sync.mdns);
        let file = write("node:\n  sync:\n    mdns: true\n");
        assert!(
            load(Some(file.path()), &env(&[]), &Overrides::default())
                .unwrap()
                .node
                .sync
                .mdns
        );
        let environment = env(&[("MESHGATE_NODE__SYNC__MDNS", "true")]);
        assert!(load(None, &environment, &Overrides::default()).unwrap().node.sync.mdns);
    }

    #[test]
    fn upstreams_and_federation_load_and_problems_are_named() {
        let file = write(
            r#"
upstreams:
  - name: corp
    issuer: https://idp.corp/realms/agents
    audience: meshgate
    jwks: { max_stale: 2d }
federation:
  jwks_fresh_for: 10m
  clients:
    abc: { on_upstream_unavailable: fail_closed, degraded_ttl: 1m }
"#,
        );
        let config = check(file.path()).unwrap();
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.upstreams[0].jwks.max_stale, Duration::from_secs(2 * 86_400));
        assert_eq!(config.federation.jwks_fresh_for, Duration::from_secs(600));
        let environment = env(&[("MESHGATE_UPSTREAMS__0__AUDIENCE", "edge")]);
        let config = load(Some(file.path()), &environment, &Overrides::default()).unwrap();
        assert_eq!(config.upstreams[0].audience.as_deref(), Some("edge"));

        let file = write(
            r#"
upstreams:
  - name: corp
    issuer: https://idp.corp
    audiance: meshgate
    timeouts: { connect: fast }
  - name: corp
    issuer: https://idp.corp
  - name: "bad name"
    issuer: ftp://nowhere
federation:
  clients:
    abc: { on_upstream_unavailable: maybe }
"#,
        );
        let Err(Error::Config(problems)) = check(file.path()) else {
            panic!("accepted a bad config")
        };
        let text = problems.join("\n");
        for needle in [
            "upstreams[0].audiance",
            "upstreams[0].timeouts.connect",
            "upstreams[2].issuer",
            "federation.clients.abc.on_upstream_unavailable",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn duplicate_upstreams_are_refused() {
        let file = write(
            "upstreams:\n  - { name: corp, issuer: https://idp.corp }\n  - { name: corp, issuer: https://idp.corp }\n",
        );
        let Err(Error::Config(problems)) = check(file.path()) else {
            panic!("accepted duplicates")
        };
        let text = problems.join("\n");
        assert!(text.contains("upstreams[1].name"), "{text}");
        assert!(text.contains("upstreams[1].issuer"), "{text}");
    }

    #[test]
    fn upstream_login_loads_and_needs_credentials() {
        let corp = "  - { name: corp, issuer: https://idp.corp, client_id: mg, client_secret: s, \
login: { display_name: Corp SSO, users: existing } }\n";
        let file = write(&format!(
            "upstreams:\n{corp}  - {{ name: other, issuer: https://o.corp, login: {{}} }}\n"
        ));
        let Err(Error::Config(problems)) = check(file.path()) else {
            panic!("accepted a login without credentials")
        };
        let text = problems.join("\n");
        assert!(text.contains("upstreams[1].login: needs `client_id`"), "{text}");
        assert!(!text.contains("upstreams[0]"), "{text}");
        let config = check(write(&format!("upstreams:\n{corp}")).path()).unwrap();
        let login = config.upstreams[0].login.clone().unwrap();
        assert_eq!(login.display_name.as_deref(), Some("Corp SSO"));
        assert_eq!(login.users, adapters::config::LoginUsers::Existing);
        assert_eq!(login.scopes, ["profile", "email"]);
    }
}
