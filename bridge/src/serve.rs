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
    /// The mesh driver, awaited at shutdown so membership's leave is sent before exit.
    driver: mesh::driver::Driver,
    observability: Option<std::thread::JoinHandle<()>>,
    otlp: Option<std::thread::JoinHandle<()>>,
    log_file: Option<crate::telemetry::logfile::LogFile>,
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
        if tokio::time::timeout(Duration::from_secs(5), self.driver.stopped())
            .await
            .is_err()
        {
            tracing::warn!("the mesh driver did not stop within 5 s");
        }
        if let Some(thread) = self.observability.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(thread) = self.otlp.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(log_file) = self.log_file.take() {
            let _ = tokio::task::spawn_blocking(move || log_file.close()).await;
        }
    }
}

/// Starts serving `config` from `data_dir`.
pub async fn start(config: &Config, data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Running, Error> {
    let bridge = &config.bridge;
    crate::tls::install_crypto_provider();
    // Load the certificate before anything else: a bad pair is a configuration error at start.
    let tls = bridge.tls.clone().map(crate::tls::ReloadingCert::new).transpose()?;
    let mut node = {
        let (dir, clock, alg) = (data_dir.to_path_buf(), clock.clone(), bridge.token_alg);
        let trusted = config.node.sync.trusted_peers.clone();
        let sync = &config.node.sync;
        // A node with peers recovers a state no local copy can rebuild from them.
        let peers = !sync.gossip_peers.is_empty() || !sync.trusted_peers.is_empty() || sync.mdns;
        tokio::task::spawn_blocking(move || Node::open_with_peers(&dir, clock, alg, trusted, peers))
            .await
            .map_err(|e| Error::Io {
                action: "open data directory".into(),
                source: std::io::Error::other(e),
            })??
    };
    let log_file = match config.observability.log_file.enabled {
        true => Some(crate::telemetry::logfile::LogFile::open(
            node.data_dir(),
            &config.observability.log_file,
        )?),
        false => None,
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
            let scheme = if tls.is_some() { "https" } else { "http" };
            Issuer::parse(&format!("{scheme}://{host}"))
                .map_err(|e| Error::Config(vec![format!("bridge.issuer: {e}")]))?
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
    node.set_document_bound(config.node.sync.crdt_buffer_mb.get().saturating_mul(1 << 20));
    let did = node.did().to_string();
    let identity = node.identity();
    let data_dir = node.data_dir().to_path_buf();
    let metrics = Arc::new(Metrics::default());
    // Upstreams: built without a network call (each loads its JWKS disk cache); their first
    // refresh runs in the background, so start never waits for an upstream.
    let upstreams = Upstreams::build(&config.upstreams, Some(&data_dir), clock.clone())?;
    let federation = Federation::new(upstreams.clone(), config.federation.clone());
    let state = AppState::with_federation(settings, node, clock, metrics, federation);
    state.set_registration(bridge.registration.clone());
    state.authz().configure(crate::http::authorize::LoginSettings {
        refresh_grace_secs: bridge.refresh_grace.as_secs(),
        refresh_ttl_secs: bridge.refresh_token_ttl.as_secs(),
        session_ttl_secs: bridge.session_ttl.as_secs(),
    });
    state.devices().configure(crate::http::device::DeviceSettings {
        code_ttl_secs: bridge.device_code_ttl.as_secs(),
        interval_secs: bridge.device_poll_interval.as_secs(),
    });
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
    state.set_driver(driver.clone());
    upstreams.spawn_refresh(shutdown_rx.clone());
    let ready = Arc::new(AtomicBool::new(false));
    state.set_ready_flag(ready.clone());
    let observability = observability::spawn(metrics_listener, state.clone(), ready.clone(), shutdown_rx.clone())?;
    let otlp = crate::telemetry::otlp::spawn(
        &config.observability.otlp,
        state.clone(),
        did.clone(),
        shutdown_rx.clone(),
    )?;

    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Bind {
        addr: listen.to_string(),
        source,
    })?;
    state.set_hardening(crate::ratelimit::Hardening {
        limits: bridge
            .rate_limits
            .enabled
            .then(|| crate::ratelimit::RateLimits::new(&bridge.rate_limits, state.metrics().clone())),
        body_read_timeout: Some(bridge.connections.body_read_timeout),
    });
    let connections = bridge.connections.clone();
    let app = http::app(state.clone());
    let signal = wait_for(shutdown_rx.clone());
    let audit = config.audit.clone();
    let recovery = state.clone();
    let server = tokio::spawn(async move {
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            state.clone(),
            wait_for(shutdown_rx.clone()),
        ));
        let maintenance = tokio::spawn(maintain(state.clone(), audit, wait_for(shutdown_rx.clone())));
        let plugin_task = tokio::spawn(http::plugins::reconcile_loop(
            state.clone(),
            wait_for(shutdown_rx.clone()),
        ));
        let sweep = tokio::spawn(crate::registration::sweep_periodically(
            state.clone(),
            wait_for(shutdown_rx.clone()),
        ));
        let tls = match tls {
            None => Ok(None),
            Some(cert) => {
                tokio::spawn(cert.clone().watch(crate::tls::RELOAD_POLL, shutdown_rx.clone()));
                crate::tls::server_config(cert).map(Some)
            }
        };
        match tls {
            Ok(tls) => crate::listener::serve(listener, app, connections, tls, signal).await,
            Err(e) => tracing::error!(error = %e, "OAuth listener failed"),
        }
        let _ = admin_task.await;
        let _ = maintenance.await;
        let _ = sweep.await;
        let _ = plugin_task.await;
    });
    if !recovery.recovering_from_peers() {
        ready.store(true, Ordering::SeqCst);
    }
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
        driver,
        observability: Some(observability),
        otlp,
        log_file,
    })
}

/// Resolves when the watch flips to `true` (or its sender is gone).
pub(crate) async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Drops expired revocations, retired keys whose tokens have all expired, and audit records
/// beyond the configured retention.
async fn maintain(state: AppState, audit: crate::audit::AuditConfig, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let audit_state = state.clone();
        let (state, now, ttl) = (state.clone(), state.now(), state.settings().token_ttl);
        let result =
            tokio::task::spawn_blocking(move || state.with_node(|node| node.expire(now, ttl).map(|c| ((), c)))).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "maintenance failed");
        }
        let audit = audit.clone();
        let result = tokio::task::spawn_blocking(move || {
            audit_state.with_node(|node| {
                let changes = crate::audit::prune(node.state(), now, &audit);
                node.apply(&changes).map(|()| ((), changes))
            })
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "audit log retention failed");
        }
    }
}

/// Registers for SIGTERM at once (so a signal sent right after this returns is caught, not fatal)
/// and returns a future that resolves at the first SIGINT or SIGTERM.
pub fn signals() -> impl std::future::Future<Output = ()> {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
            }
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
