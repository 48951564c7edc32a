//! The observability plane: `/metrics`, `/healthz`, `/readyz` on their own listener, served by their
//! own thread and single-threaded runtime, so an overloaded or failing auth router cannot starve them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::error::Error;
use crate::http::AppState;
use crate::keys::Alg;

/// Spawns the observability thread serving on `listener`.
pub fn spawn(
    listener: std::net::TcpListener,
    state: AppState,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            action: "start the metrics runtime".into(),
            source,
        })?;
    std::thread::Builder::new()
        .name("meshgate-observability".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "metrics listener failed");
                        return;
                    }
                };
                let app = router(state, ready);
                let stop = crate::serve::wait_for(shutdown);
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        })
        .map_err(|source| Error::Io {
            action: "spawn the metrics thread".into(),
            source,
        })
}

fn router(state: AppState, ready: Arc<AtomicBool>) -> Router {
    let recovery = state.clone();
    Router::new()
        .route("/metrics", get(move || async move { metrics(&state) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready\n")
                } else if recovery.recovering_from_peers() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "recovering the replicated state from peers\n",
                    )
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }),
        )
}

fn metrics(state: &AppState) -> axum::response::Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(state),
    )
        .into_response()
}

/// The metrics text `/metrics` serves (OpenMetrics), also the source of the OTLP export.
pub fn render(state: &AppState) -> String {
    let now = state.now();
    let view = state.view();
    let ages: Vec<(&'static str, u64)> = Alg::ALL
        .iter()
        .filter_map(|alg| {
            let key = view.signing_key(*alg)?;
            let record = &view.keys.get(key.kid())?.record;
            Some((alg.as_str(), now.saturating_sub(record.created_at)))
        })
        .collect();
    state.metrics().render(
        &ages,
        view.clients.len(),
        &state.mesh_gauges(),
        &state.upstream_gauges(),
    )
}
