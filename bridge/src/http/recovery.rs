//! A node whose replicated state is being recovered from its peers (it started from an empty
//! document after a corruption no local copy could repair, see `mesh::store`, *Recovery*) does not
//! serve it: its client list, keys and revocations are incomplete until a peer has synced, and an
//! empty revocation list would let a revoked token through introspection. Until then every request
//! on the OAuth listener answers 503 `temporarily_unavailable` with `Retry-After`, and `/readyz`
//! answers 503 `recovering`; both turn normal as soon as the first complete sync with a peer
//! lands, without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::OAuthError;

/// Seconds a client is told to wait before retrying during a recovery.
const RETRY_AFTER_SECS: u64 = 5;

impl AppState {
    /// Whether the node is recovering its replicated state from peers and must not serve it.
    pub fn recovering_from_peers(&self) -> bool {
        self.0.recovering.load(Ordering::SeqCst)
    }

    /// Attaches the readiness flag `/readyz` reports, so the end of a recovery makes the node ready.
    pub fn set_ready_flag(&self, ready: Arc<AtomicBool>) {
        let _ = self.0.ready.set(ready);
    }

    /// After a sync message from a peer: ends the recovery here once the store says it is over.
    pub(super) fn check_recovered(&self) {
        if !self.recovering_from_peers() {
            return;
        }
        let recovering = self
            .0
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recovering_from_peers();
        if !recovering {
            self.0.recovering.store(false, Ordering::SeqCst);
            if let Some(ready) = self.0.ready.get() {
                ready.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Answers 503 on every route while the node recovers from peers.
pub(super) async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.recovering_from_peers() {
        return OAuthError::temporarily_unavailable(
            "this node is recovering its replicated state from its peers; retry shortly or use another node",
        )
        .with_retry_after(RETRY_AFTER_SECS)
        .into_response();
    }
    next.run(request).await
}
