//! The node's plugin host: which installed plugins run, loaded from content-addressed modules, and
//! how their hooks shape a token request.
//!
//! The replicated state says which plugins are installed ([`mesh::plugin::PluginRecord`]) and
//! which developer keys are trusted ([`mesh::plugin::PluginTrust`]). [`PluginHost::reconcile`]
//! turns that into the [`Active`] set the request path reads (one atomic load): each plugin either
//! loaded — module bytes from `plugins/<sha256>.wasm` in the data directory, fetched from a peer
//! (`GET /mesh/plugins/<sha256>`) when missing, verified (digest, manifest signature, signer
//! trusted now) and only then compiled — or refused with the reason. A new version replaces the
//! old one only once it has loaded, so a hot swap never leaves a gap; an untrusted signer's plugin
//! is refused at once.
//!
//! On the request path a refused plugin, or a failing call, applies the plugin's failure policy:
//! deny (`access_denied`, the default) or, with `fail_open` in its manifest, skip the plugin.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh::did::DidKey;
use mesh::plugin::PluginRecord;
use plugins::hooks::{Capability, Decision, Introspection, TokenRequest, UpstreamClaims, Verdict};
use plugins::{Limits, Plugin, Sandbox};
use serde_json::{Map, Value};

use crate::error::{Error, OAuthError};

/// Largest module fetched from a peer.
const MAX_FETCH_BYTES: usize = plugins::sandbox::MAX_MODULE_BYTES;

/// What the replicated state says about plugins, as this node sees it now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Installed (not removed) plugins whose record verifies and was written by a member.
    pub records: Vec<PluginRecord>,
    /// The plugin developer keys trusted now.
    pub trusted: BTreeSet<DidKey>,
    /// Base URLs (issuers) of the other members, to fetch missing modules from.
    pub peers: Vec<String>,
}

/// One installed plugin as the request path sees it.
#[derive(Clone)]
pub struct Entry {
    /// Its installation record (manifest, clients).
    pub record: Arc<PluginRecord>,
    /// Loaded, or refused with the reason.
    pub status: Result<Plugin, String>,
}

/// The plugins that apply on this node now.
#[derive(Clone, Default)]
pub struct Active {
    /// By name.
    pub entries: Vec<Entry>,
}

/// What the plugins decided for a token: narrowed scopes, added claims and capabilities.
#[derive(Debug, Default)]
pub struct Shaped {
    /// The scopes, narrowed.
    pub scopes: Vec<String>,
    /// Claims to add to the token.
    pub claims: Map<String, Value>,
    /// Capabilities to add to the token.
    pub cap: Vec<Capability>,
}

/// A plugin denied the token at introspection (or failed under a deny policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied;

/// The node's plugin host.
pub struct PluginHost {
    sandbox: Sandbox,
    dir: PathBuf,
    active: ArcSwap<Active>,
    http: reqwest::Client,
    /// Wakes the reconcile loop (a plugin record, a trust record or the membership changed).
    pub wake: tokio::sync::Notify,
}

impl PluginHost {
    /// A host keeping modules in `data_dir/plugins`, running calls under `limits`.
    pub fn new(data_dir: &Path, limits: Limits) -> Result<Self, Error> {
        let sandbox = Sandbox::new(limits).map_err(|e| Error::Config(vec![format!("node.execution: {e}")]))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(vec![format!("plugin fetch client: {e}")]))?;
        Ok(Self {
            sandbox,
            dir: module_dir(data_dir),
            active: ArcSwap::from_pointee(Active::default()),
            http,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The active set.
    pub fn active(&self) -> arc_swap::Guard<Arc<Active>> {
        self.active.load()
    }

    /// Brings the active set in line with `snapshot`; returns whether a module is still missing
    /// (then call again later). Missing modules are fetched from peers only when `fetch`.
    pub async fn reconcile(&self, snapshot: Snapshot, fetch: bool) -> bool {
        let previous = self.active.load_full();
        let mut entries = Vec::with_capacity(snapshot.records.len());
        let mut pending = false;
        for record in snapshot.records {
            let manifest = &record.manifest;
            let before = previous
                .entries
                .iter()
                .find(|e| e.record.manifest.name == manifest.name);
            let status = if !snapshot.trusted.contains(&manifest.signer) {
                Err(format!(
                    "signer {} is not trusted (run `meshgate plugin trust {}` to trust it)",
                    manifest.signer, manifest.signer
                ))
            } else if let Some(Entry { status: Ok(plugin), .. }) = before
                && plugin.manifest() == manifest
            {
                Ok(plugin.clone())
            } else {
                let peers: &[String] = if fetch { &snapshot.peers } else { &[] };
                match self.module(&manifest.sha256, peers).await {
                    Some(bytes) => {
                        let loaded = self.sandbox.load(manifest, &bytes, &snapshot.trusted);
                        if let Err(plugins::Error::DigestMismatch { .. }) = &loaded {
                            let _ = std::fs::remove_file(self.dir.join(format!("{}.wasm", manifest.sha256)));
                        }
                        loaded.map_err(|e| e.to_string())
                    }
                    None => {
                        pending = true;
                        match before {
                            // The previous version keeps serving until the new one is here.
                            Some(Entry { status: Ok(old), .. })
                                if snapshot.trusted.contains(&old.manifest().signer) =>
                            {
                                entries.push(Entry {
                                    record: Arc::new(PluginRecord {
                                        manifest: old.manifest().clone(),
                                        ..record.clone()
                                    }),
                                    status: Ok(old.clone()),
                                });
                                continue;
                            }
                            _ => Err(format!(
                                "module {} is not in this node's data directory and no peer served it yet",
                                manifest.sha256
                            )),
                        }
                    }
                }
            };
            let changed = before.is_none_or(|b| {
                b.status
                    .as_ref()
                    .map(|p| p.manifest().sha256.clone())
                    .map_err(Clone::clone)
                    != status
                        .as_ref()
                        .map(|p| p.manifest().sha256.clone())
                        .map_err(Clone::clone)
            });
            if changed {
                match &status {
                    Ok(_) => {
                        tracing::info!(plugin = %manifest.name, version = %manifest.version, sha256 = %manifest.sha256, signer = %manifest.signer, "plugin loaded")
                    }
                    Err(reason) => tracing::warn!(plugin = %manifest.name, %reason, "plugin refused: it will not run"),
                }
            }
            entries.push(Entry {
                record: Arc::new(record),
                status,
            });
        }
        for gone in previous.entries.iter().filter(|old| {
            !entries
                .iter()
                .any(|e| e.record.manifest.name == old.record.manifest.name)
        }) {
            tracing::info!(plugin = %gone.record.manifest.name, "plugin removed");
        }
        let keep: BTreeSet<String> = entries.iter().map(|e| e.record.manifest.sha256.clone()).collect();
        self.sandbox.retain(&keep);
        self.active.store(Arc::new(Active { entries }));
        pending
    }

    /// The bytes of module `sha256`: from the data directory, else from the first peer that serves
    /// bytes with that digest (then stored).
    async fn module(&self, sha256: &str, peers: &[String]) -> Option<Vec<u8>> {
        let path = self.dir.join(format!("{sha256}.wasm"));
        if let Ok(bytes) = tokio::fs::read(&path).await {
            return Some(bytes);
        }
        for peer in peers {
            let url = format!("{}/mesh/plugins/{sha256}", peer.trim_end_matches('/'));
            let response = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    tracing::debug!(%url, status = %r.status(), "plugin module not served by peer");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%url, error = %e, "plugin module fetch failed");
                    continue;
                }
            };
            if response.content_length().is_some_and(|n| n as usize > MAX_FETCH_BYTES) {
                continue;
            }
            let Ok(bytes) = response.bytes().await else { continue };
            if bytes.len() > MAX_FETCH_BYTES || plugins::digest::sha256_hex(&bytes) != sha256 {
                tracing::warn!(%url, "a peer served plugin bytes that do not match the digest; ignored");
                continue;
            }
            if let Err(e) = store_module(&self.dir, sha256, &bytes) {
                tracing::warn!(error = %e, "cannot store a fetched plugin module");
            }
            tracing::info!(sha256, peer = %peer, "fetched a plugin module from a peer");
            return Some(bytes.to_vec());
        }
        None
    }

    /// Runs `on_token_request` (and, for an upstream subject, `map_upstream_claims`) of every
    /// plugin that applies to the client; `None` when none applies.
    pub fn shape_token(
        &self,
        request: &TokenRequest<'_>,
        upstream: Option<&Value>,
    ) -> Result<Option<Shaped>, OAuthError> {
        let active = self.active.load();
        if active.entries.is_empty() {
            return Ok(None);
        }
        let mut shaped: Option<Shaped> = None;
        for entry in active.entries.iter().filter(|e| e.record.applies_to(request.client_id)) {
            let manifest = &entry.record.manifest;
            let current = shaped.get_or_insert_with(|| Shaped {
                scopes: request.scopes.to_vec(),
                ..Default::default()
            });
            let plugin = match &entry.status {
                Ok(plugin) => plugin,
                Err(reason) => {
                    failed(entry, request.client_id, reason)?;
                    continue;
                }
            };
            let mut hooks: Vec<Result<Decision, plugins::Error>> = Vec::new();
            if manifest.implements("on_token_request") {
                hooks.push(plugin.on_token_request(&TokenRequest {
                    scopes: &current.scopes,
                    ..request.clone()
                }));
            }
            if let Some(upstream) = upstream
                && manifest.implements("map_upstream_claims")
            {
                hooks.push(plugin.map_upstream_claims(&UpstreamClaims {
                    client_id: request.client_id,
                    sub: request.sub,
                    upstream,
                    scopes: &current.scopes,
                    audiences: request.audiences,
                    now: request.now,
                }));
            }
            for result in hooks {
                match result {
                    Ok(decision) if decision.decision == Verdict::Deny => {
                        let reason = decision.reason.unwrap_or_else(|| "no reason given".into());
                        tracing::info!(plugin = %manifest.name, client_id = request.client_id, %reason, "plugin denied a token request");
                        return Err(OAuthError::access_denied(format!(
                            "denied by plugin `{}`: {}",
                            manifest.name,
                            printable(&reason)
                        )));
                    }
                    Ok(decision) => {
                        if let Some(scopes) = decision.scopes {
                            current.scopes.retain(|s| scopes.contains(s));
                        }
                        current.claims.extend(decision.claims);
                        current.cap.extend(decision.cap);
                    }
                    Err(e) => failed(entry, request.client_id, &e.to_string())?,
                }
            }
        }
        Ok(shaped)
    }

    /// Runs `on_introspect` of every plugin that applies to the token's client: `Ok(None)` when
    /// the token stays as it is, `Ok(Some(claims))` with claims to add, `Err(Denied)` when a plugin
    /// denies (the token introspects inactive).
    pub fn shape_introspection(
        &self,
        introspecting: &str,
        token_client: &str,
        claims: &Value,
        now: u64,
    ) -> Result<Option<Map<String, Value>>, Denied> {
        let active = self.active.load();
        let mut added: Option<Map<String, Value>> = None;
        for entry in active
            .entries
            .iter()
            .filter(|e| e.record.applies_to(token_client) && e.record.manifest.implements("on_introspect"))
        {
            let result = match &entry.status {
                Ok(plugin) => plugin
                    .on_introspect(&Introspection {
                        client_id: introspecting,
                        claims,
                        now,
                    })
                    .map_err(|e| e.to_string()),
                Err(reason) => Err(reason.clone()),
            };
            match result {
                Ok(decision) if decision.decision == Verdict::Deny => return Err(Denied),
                Ok(decision) => added.get_or_insert_with(Map::new).extend(decision.claims),
                Err(reason) => {
                    if failed(entry, token_client, &reason).is_err() {
                        return Err(Denied);
                    }
                }
            }
        }
        Ok(added)
    }
}

/// Applies `entry`'s failure policy to a failure: logs it, then denies or (fail-open) goes on.
fn failed(entry: &Entry, client_id: &str, reason: &str) -> Result<(), OAuthError> {
    let manifest = &entry.record.manifest;
    if manifest.fail_open {
        tracing::warn!(plugin = %manifest.name, client_id, %reason, "plugin failed; its policy is fail_open: skipped");
        return Ok(());
    }
    tracing::warn!(plugin = %manifest.name, client_id, %reason, "plugin failed; its policy is deny: request denied");
    Err(OAuthError::access_denied(format!(
        "plugin `{}` failed and its failure policy is deny",
        manifest.name
    )))
}

/// A reason safe to put in `error_description` (RFC 6749 §5.2: printable ASCII without `"`/`\`).
fn printable(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .take(200)
        .collect()
}

/// Where modules live: `data_dir/plugins`.
pub fn module_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("plugins")
}

/// Stores module bytes under their digest (write to a temporary file, then rename).
pub fn store_module(dir: &Path, sha256: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{sha256}.wasm"));
    let temporary = dir.join(format!(".{sha256}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// Adds each plugin's status on this running node (`loaded`, or `refused: why`) to a
/// `plugin list` answer.
pub fn annotate_list(host: &PluginHost, answer: &mut Value) {
    let active = host.active();
    for plugin in answer["plugins"].as_array_mut().into_iter().flatten() {
        let name = plugin["name"].as_str().unwrap_or_default().to_owned();
        let status = match active.entries.iter().find(|e| e.record.manifest.name == name) {
            Some(Entry { status: Ok(p), .. }) if plugin["sha256"] == p.manifest().sha256.as_str() => {
                "loaded".to_owned()
            }
            Some(Entry { status: Ok(_), .. }) => "loading the new version (the previous one runs)".to_owned(),
            Some(Entry {
                status: Err(reason), ..
            }) => format!("refused: {reason}"),
            None => "not loaded yet".to_owned(),
        };
        plugin["status"] = Value::String(status);
    }
}
