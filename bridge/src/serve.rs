//! `meshgate serve`: binds the OAuth listener, the observability listener (on its own thread and
//! runtime, so it shares no fate with the auth router) and the admin socket, then serves until a
//! shutdown signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh::clock::Clock;
use tokio::sync::watch;

use crate::config::{Config, Issuer};
use crate::error::Error;
use crate::http::{self, AppState, Federation, Settings};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::upstream::Upstreams;
use crate::{admin, observability};

/// A running server.
pub struct Running {
    /// The issuer identifier.
    pub issuer: String,
    /// Where the OAuth listener is bound.
    pub listen: SocketAddr,
    /// Where the observability listener is bound.
    pub metrics_listen: SocketAddr,
    /// Where the mesh sync listener is bound.
    pub sync_listen: SocketAddr,
    /// The node's DID.
    pub did: String,
    /// The data directory.
    pub data_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    observability: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// The JSON object `serve --json` prints.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "listen": self.listen.to_string(),
            "metrics_listen": self.metrics_listen.to_string(),
            "sync_listen": self.sync_listen.to_string(),
            "did": self.did,
            "data_dir": self.data_dir,
        })
    }

    /// Stops accepting, finishes in-flight requests and returns when everything has stopped.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.server).await;
        if let Some(thread) = self.observability.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Starts serving `config` from `data_dir`.
pub async fn start(config: &Config, data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Running, Error> {
    let bridge = &config.bridge;
    let node = {
        let (dir, clock, alg) = (data_dir.to_path_buf(), clock.clone(), bridge.token_alg);
        let trusted = config.node.sync.trusted_peers.clone();
        tokio::task::spawn_blocking(move || Node::open(&dir, clock, alg, trusted))
            .await
            .map_err(|e| Error::Io {
                action: "open data directory".into(),
                source: std::io::Error::other(e),
            })??
    };
    let bind = |addr: SocketAddr| {
        let listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        Ok::<_, Error>(listener)
    };
    let listener = bind(bridge.listen)?;
    let listen = listener.local_addr().map_err(|source| Error::Bind {
        addr: bridge.listen.to_string(),
        source,
    })?;
    let metrics_listener = bind(bridge.metrics_listen)?;
    let sync_listener = bind(config.node.sync.listen)?;
    let sync_addr = sync_listener.local_addr().map_err(|source| Error::Bind {
        addr: config.node.sync.listen.to_string(),
        source,
    })?;
    let sync_addr = if sync_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], sync_addr.port()))
    } else {
        sync_addr
    };
    let metrics_listen = metrics_listener.local_addr().map_err(|source| Error::Bind {
        addr: bridge.metrics_listen.to_string(),
        source,
    })?;
    let issuer = match &bridge.issuer {
        Some(issuer) => issuer.clone(),
        None => {
            let host = if listen.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], listen.port()))
            } else {
                listen
            };
            Issuer::parse(&format!("http://{host}")).map_err(|e| Error::Config(vec![format!("bridge.issuer: {e}")]))?
        }
    };
    let settings = Settings {
        issuer: issuer.as_str().to_owned(),
        resource: bridge.resource.clone().unwrap_or_else(|| issuer.as_str().to_owned()),
        token_ttl: bridge.access_token_ttl.as_secs(),
        default_alg: bridge.token_alg,
        max_body_bytes: bridge.max_body_bytes,
        verified_token_cache: bridge.verified_token_cache,
    };
    let did = node.did().to_string();
    let identity = node.identity();
    let data_dir = node.data_dir().to_path_buf();
    let metrics = Arc::new(Metrics::default());
    // Upstreams: built without a network call (each loads its JWKS disk cache); their first
    // refresh runs in the background, so start never waits for an upstream.
    let upstreams = Upstreams::build(&config.upstreams, Some(&data_dir), clock.clone())?;
    let federation = Federation::new(upstreams.clone(), config.federation.clone());
    let state = AppState::with_federation(settings, node, clock, metrics, federation);
    let execution = &config.node.execution;
    let limits = plugins::Limits {
        memory_bytes: usize::try_from(execution.max_skill_memory_mb.get().saturating_mul(1024 * 1024))
            .unwrap_or(usize::MAX),
        deadline: execution.plugin_deadline,
        ..Default::default()
    };
    let plugin_host = Arc::new(crate::plugin_host::PluginHost::new(&data_dir, limits)?);
    state.set_plugins(plugin_host.clone());
    // Installed plugins whose modules are here load before the first request is served.
    plugin_host.reconcile(state.plugin_snapshot(), false).await;
    let admin_listener = admin::bind(&data_dir)?;
    {
        let (state, issuer, sync_addr) = (state.clone(), issuer.as_str().to_owned(), sync_addr.to_string());
        tokio::task::spawn_blocking(move || {
            state.with_node(|node| node.announce(&issuer, &sync_addr).map(|c| ((), c)))
        })
        .await
        .map_err(|e| Error::Io {
            action: "announce the node".into(),
            source: std::io::Error::other(e),
        })??;
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let driver_config = mesh::driver::DriverConfig {
        bootstrap: config.node.sync.gossip_peers.clone(),
        mdns: config.node.sync.mdns,
        ..Default::default()
    };
    let replica = Arc::new(http::MeshReplica(state.clone()));
    let driver = mesh::driver::Driver::start(sync_listener, identity, replica, driver_config, shutdown_rx.clone())
        .map_err(|source| Error::Bind {
            addr: sync_addr.to_string(),
            source,
        })?;
    state.set_driver(driver);
    upstreams.spawn_refresh(shutdown_rx.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let observability = observability::spawn(metrics_listener, state.clone(), ready.clone(), shutdown_rx.clone())?;

    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Bind {
        addr: listen.to_string(),
        source,
    })?;
    let app = http::app(state.clone());
    let signal = wait_for(shutdown_rx.clone());
    let server = tokio::spawn(async move {
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            state.clone(),
            wait_for(shutdown_rx.clone()),
        ));
        let maintenance = tokio::spawn(maintain(state.clone(), wait_for(shutdown_rx.clone())));
        let plugin_task = tokio::spawn(http::plugins::reconcile_loop(
            state.clone(),
            wait_for(shutdown_rx.clone()),
        ));
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
            tracing::error!(error = %e, "OAuth listener failed");
        }
        let _ = admin_task.await;
        let _ = maintenance.await;
        let _ = plugin_task.await;
    });
    ready.store(true, Ordering::SeqCst);
    tracing::info!(issuer = issuer.as_str(), %listen, %metrics_listen, %sync_addr, %did, "serving");
    Ok(Running {
        issuer: issuer.as_str().to_owned(),
        listen,
        metrics_listen,
        sync_listen: sync_addr,
        did,
        data_dir,
        shutdown,
        server,
        observability: Some(observability),
    })
}

/// Resolves when the watch flips to `true` (or its sender is gone).
pub(crate) async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Drops expired revocations and retired keys whose tokens have all expired.
async fn maintain(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let (state, now, ttl) = (state.clone(), state.now(), state.settings().token_ttl);
        let result =
            tokio::task::spawn_blocking(move || state.with_node(|node| node.expire(now, ttl).map(|c| ((), c)))).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "maintenance failed");
        }
    }
}

/// Waits for SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal sent right after (e.g. once `serve` printed its line) is
/// never missed.
pub fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal as unix_signal};
    let term = unix_signal(SignalKind::terminate());
    let int = unix_signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (term, int) => {
                if let Err(e) = term.as_ref().and(int.as_ref()) {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT");
                }
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
