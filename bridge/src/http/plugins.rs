//! The plugin glue of the OAuth listener: `GET /mesh/plugins/{sha256}` (module bytes for peers,
//! content-addressed so a served module cannot be swapped for another), the host attached to the
//! state, and the loop that reconciles the host with the replicated state.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mesh::state::Change;

use super::AppState;
use crate::error::OAuthError;
use crate::plugin_host::{PluginHost, Snapshot, module_dir};

/// `GET /mesh/plugins/{sha256}`: the module with that digest, if this node has it.
pub(super) async fn module(State(state): State<AppState>, Path(sha256): Path<String>) -> Response {
    let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return OAuthError::not_found().into_response();
    }
    let path = module_dir(&state.0.data_dir).join(format!("{sha256}.wasm"));
    match tokio::fs::read(&path).await {
        Ok(bytes) if plugins::digest::sha256_hex(&bytes) == sha256 => {
            let mut response = bytes.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm"));
            response
        }
        _ => OAuthError::not_found().into_response(),
    }
}

/// Whether a change can change which plugins run.
pub(super) fn touches_plugins(change: &Change) -> bool {
    matches!(
        change,
        Change::TrustPluginSigner(_)
            | Change::PutPlugin(_)
            | Change::Admit(_)
            | Change::RemoveNode(_)
            | Change::PutNode(_)
            | Change::PutKeyEvent(_)
    )
}

impl AppState {
    /// Attaches the plugin host (once, at start).
    pub fn set_plugins(&self, host: Arc<PluginHost>) {
        let _ = self.0.plugins.set(host);
    }

    /// The plugin host, once attached.
    pub fn plugins(&self) -> Option<&Arc<PluginHost>> {
        self.0.plugins.get()
    }

    /// What the replicated state says about plugins now.
    pub fn plugin_snapshot(&self) -> Snapshot {
        let view = self.view();
        let node = self.0.node.lock().unwrap_or_else(|e| e.into_inner());
        let state = node.state();
        let me = node.did();
        let trusted_peers = node.trusted_peers();
        let members = state.members(&me, trusted_peers);
        let records = state
            .plugins
            .values()
            .filter(|r| !r.removed && members.contains(&r.by) && r.verify(state).is_ok())
            .cloned()
            .collect();
        let peers = view
            .issuers
            .iter()
            .filter(|(did, _)| **did != me && members.contains(did))
            .map(|(_, issuer)| issuer.clone())
            .collect();
        Snapshot {
            records,
            trusted: state.trusted_plugin_signers(&me, trusted_peers),
            peers,
        }
    }
}

/// Reconciles the host whenever it is woken (and every few seconds while a module is missing)
/// until `shutdown` resolves.
pub async fn reconcile_loop(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let Some(host) = state.plugins().cloned() else {
        return;
    };
    tokio::pin!(shutdown);
    let mut pending = true;
    loop {
        let snapshot = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || state.plugin_snapshot())
                .await
                .unwrap_or_default()
        };
        let retry = host.reconcile(snapshot, true).await;
        let wait = if retry || pending {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        pending = retry;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = host.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs the plugins that apply to `client_id` on a token about to be issued: returns the
/// (narrowed) scopes and what the plugins added, or the denial.
#[allow(clippy::too_many_arguments)]
pub(super) fn shape(
    state: &AppState,
    client_id: &str,
    grant_type: &str,
    sub: &str,
    scopes: Vec<String>,
    audiences: &[String],
    now: u64,
    upstream: Option<&serde_json::Value>,
) -> Result<(Vec<String>, Option<crate::plugin_host::Shaped>), OAuthError> {
    let Some(host) = state.plugins() else {
        return Ok((scopes, None));
    };
    let request = plugins::hooks::TokenRequest {
        client_id,
        grant_type,
        sub,
        scopes: &scopes,
        audiences,
        now,
    };
    match host.shape_token(&request, upstream)? {
        Some(mut shaped) => Ok((std::mem::take(&mut shaped.scopes), Some(shaped))),
        None => Ok((scopes, None)),
    }
}

/// Runs the `on_introspect` plugins that apply to the token's client: `Ok` with claims to add (if
/// any), `Err(())` when a plugin denies (or fails under a deny policy): the token is inactive.
pub(super) fn introspect(
    state: &AppState,
    introspecting: &str,
    claims: &crate::token::AccessClaims,
    now: u64,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, crate::plugin_host::Denied> {
    let Some(host) = state.plugins() else {
        return Ok(None);
    };
    if host.active().entries.is_empty() {
        return Ok(None);
    }
    let document = serde_json::to_value(claims).map_err(|_| crate::plugin_host::Denied)?;
    host.shape_introspection(introspecting, &claims.client_id, &document, now)
}
