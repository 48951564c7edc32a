//! The public OAuth listener: `fn app(state) -> Router` and its handlers.
//!
//! Handlers read only the immutable [`View`]; writes (revocations) go through the node lock on a
//! blocking thread and swap in a new view.

pub mod authorize;
mod cors;
pub mod device;
mod device_page;
mod discovery;
mod exchange;
mod federated;
mod form_post;
mod introspect;
mod oidc;
mod pages;
pub mod plugins;
mod recovery;
pub mod refresh;
mod register;
mod token;
mod upstream_introspect;
pub mod upstream_login;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mesh::clock::Clock;
use mesh::state::Change;

use crate::auth::{ReplayCache, VerifiedSecrets};
use crate::error::{Error, OAuthError};
use crate::keys::Alg;
use crate::metrics::{self, Metrics};
use crate::node::Node;
use crate::verified::VerifiedTokens;
use crate::view::View;

/// Settings the request path needs, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer identifier.
    pub issuer: String,
    /// The default audience (RFC 8707 resource) when a client has none and asks for none.
    pub resource: String,
    /// Access-token lifetime, seconds.
    pub token_ttl: u64,
    /// Algorithm for clients that registered none.
    pub default_alg: Alg,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Size of the memory of verified token signatures (0 = verify every time).
    pub verified_token_cache: usize,
}

/// What token exchange needs of the upstreams: the upstreams themselves, where each client's
/// degradation policy comes from, and how old an upstream JWKS may be before the upstream counts
/// as unavailable.
#[derive(Clone)]
pub struct Federation {
    /// The configured upstreams.
    pub upstreams: crate::upstream::Upstreams,
    /// Per-client degradation policies.
    pub policies: Arc<dyn crate::federation::PolicySource>,
    /// `federation.jwks_fresh_for`.
    pub jwks_fresh_for: std::time::Duration,
}

impl Federation {
    /// `upstreams` with the policies and freshness of `config`.
    pub fn new(upstreams: crate::upstream::Upstreams, config: crate::federation::FederationConfig) -> Self {
        Self {
            upstreams,
            jwks_fresh_for: config.jwks_fresh_for,
            policies: Arc::new(config),
        }
    }
}

/// Shared state of the OAuth listener.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    settings: Settings,
    path_prefix: String,
    token_endpoint: String,
    introspection_endpoint: String,
    revocation_endpoint: String,
    did: String,
    view: ArcSwap<View>,
    node: Mutex<Node>,
    clock: Arc<dyn Clock>,
    replay: ReplayCache,
    verified: VerifiedSecrets,
    verified_tokens: VerifiedTokens,
    metrics: Arc<Metrics>,
    driver: std::sync::OnceLock<mesh::driver::Driver>,
    document_bytes: std::sync::atomic::AtomicU64,
    federation: Federation,
    registry: std::sync::OnceLock<Arc<crate::registration::Registry>>,
    hardening: std::sync::OnceLock<crate::ratelimit::Hardening>,
    authz: authorize::Authz,
    plugins: std::sync::OnceLock<Arc<crate::plugin_host::PluginHost>>,
    data_dir: std::path::PathBuf,
    devices: device::Devices,
    recovering: std::sync::atomic::AtomicBool,
    ready: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>>,
    commits: crate::commit::GroupCommit,
}

impl AppState {
    /// State over an opened node, without upstreams.
    pub fn new(settings: Settings, node: Node, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        let federation = Federation::new(
            crate::upstream::Upstreams::none(clock.clone()),
            crate::federation::FederationConfig::default(),
        );
        Self::with_federation(settings, node, clock, metrics, federation)
    }

    /// State over an opened node with upstreams for token exchange.
    pub fn with_federation(
        settings: Settings,
        node: Node,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        federation: Federation,
    ) -> Self {
        let issuer = settings.issuer.clone();
        let path_prefix = url::Url::parse(&issuer)
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let view = ArcSwap::from_pointee(node.view());
        let did = node.did().to_string();
        let data_dir = node.data_dir().to_path_buf();
        let recovering = std::sync::atomic::AtomicBool::new(node.recovering_from_peers());
        let verified_tokens = VerifiedTokens::new(settings.verified_token_cache);
        Self(Arc::new(Shared {
            verified_tokens,
            token_endpoint: format!("{issuer}/token"),
            introspection_endpoint: format!("{issuer}/introspect"),
            revocation_endpoint: format!("{issuer}/revoke"),
            path_prefix,
            settings,
            did,
            view,
            node: Mutex::new(node),
            clock,
            replay: ReplayCache::default(),
            verified: VerifiedSecrets::default(),
            metrics,
            driver: std::sync::OnceLock::new(),
            document_bytes: std::sync::atomic::AtomicU64::new(0),
            federation,
            registry: std::sync::OnceLock::new(),
            hardening: std::sync::OnceLock::new(),
            authz: authorize::Authz::default(),
            plugins: std::sync::OnceLock::new(),
            data_dir,
            devices: device::Devices::default(),
            recovering,
            ready: std::sync::OnceLock::new(),
            commits: crate::commit::GroupCommit::default(),
        }))
    }

    /// Sets the dynamic-registration policy (`bridge.registration`); call before serving. Without
    /// it the defaults apply. Answers false if a policy was already in use.
    pub fn set_registration(&self, config: crate::registration::RegistrationConfig) -> bool {
        self.0
            .registry
            .set(Arc::new(crate::registration::Registry::new(config)))
            .is_ok()
    }

    /// The dynamic-registration policy and the Client ID Metadata Document resolver.
    pub fn registry(&self) -> &crate::registration::Registry {
        self.0
            .registry
            .get_or_init(|| Arc::new(crate::registration::Registry::new(Default::default())))
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// The current view.
    pub fn view(&self) -> arc_swap::Guard<Arc<View>> {
        self.0.view.load()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// The clock.
    pub fn now(&self) -> u64 {
        self.0.clock.now()
    }

    /// The upstreams and degradation policies.
    pub fn federation(&self) -> &Federation {
        &self.0.federation
    }

    /// The state of every upstream now, for `meshgate upstream status`.
    pub fn upstream_status(&self) -> Vec<crate::upstream::UpstreamStatus> {
        let federation = &self.0.federation;
        federation.upstreams.status(self.now(), federation.jwks_fresh_for)
    }

    /// Upstream figures for `/metrics`.
    pub fn upstream_gauges(&self) -> Vec<crate::metrics::UpstreamGauges> {
        self.upstream_status()
            .into_iter()
            .map(|status| crate::metrics::UpstreamGauges {
                breaker_state: match status.breaker.state {
                    "closed" => 0,
                    "half_open" => 1,
                    _ => 2,
                },
                jwks_age_secs: status.jwks.age_secs.map_or(-1, |age| age as i64),
                name: status.name,
            })
            .collect()
    }

    /// Authenticates the client of a request that arrived at `endpoint` (the assertion `aud` may
    /// name the issuer, the token endpoint or `endpoint`).
    fn authenticate(
        &self,
        view: &View,
        headers: &axum::http::HeaderMap,
        form: &crate::form::Form,
        endpoint: &str,
        now: u64,
    ) -> Result<Arc<crate::view::Client>, OAuthError> {
        let s = &self.0;
        let audiences = crate::auth::Audiences {
            issuer: &s.settings.issuer,
            token_endpoint: &s.token_endpoint,
            endpoint,
        };
        let client = crate::auth::authenticate(headers, form, view, now, &audiences, &s.replay, &s.verified)?;
        client.touch(now);
        Ok(client)
    }

    /// Validates an access token presented to this node.
    fn validate(
        &self,
        view: &View,
        token: &str,
        now: u64,
    ) -> Result<crate::token::AccessClaims, crate::token::Inactive> {
        let s = &self.0;
        crate::token::validate(
            token,
            view,
            &s.settings.issuer,
            now,
            s.settings.token_ttl,
            &s.verified_tokens,
        )
    }

    pub(crate) fn max_body_bytes(&self) -> usize {
        self.0.settings.max_body_bytes
    }

    /// Runs `f` on the node under its lock, then applies the changes it returns to the view.
    /// Blocking (it writes to disk): call from a blocking thread.
    pub fn with_node<T>(&self, f: impl FnOnce(&mut Node) -> Result<(T, Vec<Change>), Error>) -> Result<T, Error> {
        let mut node = self.0.node.lock().unwrap_or_else(|e| e.into_inner());
        let (answer, changes) = f(&mut node)?;
        self.0
            .document_bytes
            .store(node.document_size() as u64, std::sync::atomic::Ordering::Relaxed);
        if !changes.is_empty() {
            let mut view = View::clone(&self.0.view.load());
            for change in &changes {
                view.apply(change, &*node);
            }
            self.0.view.store(Arc::new(view));
            if let Some(driver) = self.0.driver.get() {
                driver.notify_changed();
            }
            if let Some(host) = self.0.plugins.get()
                && changes.iter().any(plugins::touches_plugins)
            {
                host.wake.notify_one();
            }
        }
        Ok(answer)
    }

    /// Applies `changes` (durably, view included) together with other writes arriving at the same
    /// time: one document change and one log sync for the lot (see [`crate::commit`]).
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), Arc<str>> {
        self.0.commits.commit(self, changes).await
    }

    pub(crate) fn group_commit(&self) -> &crate::commit::GroupCommit {
        &self.0.commits
    }

    /// Attaches rate limits and the body read timeout (once; later calls are ignored).
    pub fn set_hardening(&self, hardening: crate::ratelimit::Hardening) {
        let _ = self.0.hardening.set(hardening);
    }

    /// The rate limits, if attached and enabled.
    pub fn rate_limits(&self) -> Option<&crate::ratelimit::RateLimits> {
        self.0.hardening.get().and_then(|h| h.limits.as_ref())
    }

    /// The body read timeout, if attached.
    pub(crate) fn body_read_timeout(&self) -> Option<std::time::Duration> {
        self.0.hardening.get().and_then(|h| h.body_read_timeout)
    }

    /// Attaches the mesh driver, so local changes are sent to peers at once.
    pub fn set_driver(&self, driver: mesh::driver::Driver) {
        let _ = self.0.driver.set(driver);
    }

    /// Mesh figures for `/metrics`; lock-free (the document size is recorded after each write).
    pub fn mesh_gauges(&self) -> crate::metrics::MeshGauges {
        use std::sync::atomic::Ordering::Relaxed;
        let mut gauges = crate::metrics::MeshGauges {
            members: self.view().members.len() as u64,
            document_bytes: self.0.document_bytes.load(Relaxed),
            ..Default::default()
        };
        if let Some(driver) = self.0.driver.get() {
            for peer in driver.status() {
                let slot = match peer.state {
                    mesh::driver::PeerState::Alive => 0,
                    mesh::driver::PeerState::Suspect => 1,
                    _ => 2,
                };
                gauges.peers[slot] += 1;
                if slot < 2 {
                    gauges.sync_lag_secs = gauges.sync_lag_secs.max(peer.last_sync_secs_ago.unwrap_or(0));
                }
            }
            gauges.bytes_sent = driver.traffic().bytes_sent.load(Relaxed);
            gauges.bytes_received = driver.traffic().bytes_received.load(Relaxed);
        }
        gauges
    }

    /// The device flow's node-local state.
    pub fn devices(&self) -> &device::Devices {
        &self.0.devices
    }

    /// The mesh driver's view of its peers (empty before it starts).
    pub fn mesh_peers(&self) -> Vec<mesh::driver::PeerStatus> {
        self.0.driver.get().map(|d| d.status()).unwrap_or_default()
    }
}

/// The node's replicated document as the mesh driver sees it.
pub struct MeshReplica(pub AppState);

impl mesh::driver::Replica for MeshReplica {
    fn is_member(&self, did: &mesh::did::DidKey) -> bool {
        self.0.view().members.contains(did)
    }

    fn current_key(&self, did: &mesh::did::DidKey) -> [u8; 32] {
        self.0.view().current_key(did)
    }

    fn extends_chain(&self, event: &mesh::kel::KeyEvent) -> bool {
        self.0.with_node_read(|node| node.state().extends_chain(event))
    }

    fn peer_addresses(&self) -> Vec<(mesh::did::DidKey, String)> {
        self.0.0.node.lock().unwrap_or_else(|e| e.into_inner()).peer_addresses()
    }

    fn generate(&self, peer: &mesh::did::DidKey, sync: &mut mesh::doc::PeerSync) -> Option<Vec<u8>> {
        if !self.is_member(peer) {
            return None; // removed since the session opened: it gets nothing more
        }
        self.0
            .0
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generate_sync_message(sync)
    }

    fn receive(&self, peer: &mesh::did::DidKey, sync: &mut mesh::doc::PeerSync, message: &[u8]) -> Result<(), String> {
        if !self.is_member(peer) {
            return Err(format!("{peer} is no longer a member of the mesh"));
        }
        let changes = self
            .0
            .with_node(|node| {
                let mut changes = node.receive_sync_message(sync, message)?;
                if changes.iter().any(|c| matches!(c, mesh::state::Change::Login(_))) {
                    let now = self.0.now();
                    changes.extend(refresh::revoke_reused(node, now)?);
                }
                Ok((changes.len(), changes))
            })
            .map_err(|e| e.to_string())?;
        if changes > 0 {
            tracing::debug!(%peer, changes, "mesh: applied changes from peer");
        }
        self.0.check_recovered();
        Ok(())
    }

    fn epochs(&self) -> mesh::epoch::Announce {
        self.0.0.node.lock().unwrap_or_else(|e| e.into_inner()).epochs()
    }

    fn generate_in(
        &self,
        peer: &mesh::did::DidKey,
        seed: &[u8; 32],
        sync: &mut mesh::doc::PeerSync,
    ) -> Option<Vec<u8>> {
        if !self.is_member(peer) {
            return None;
        }
        self.0
            .0
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generate_in(seed, sync)
    }

    fn receive_in(
        &self,
        peer: &mesh::did::DidKey,
        seed: &[u8; 32],
        sync: &mut mesh::doc::PeerSync,
        message: &[u8],
    ) -> Result<(), String> {
        if !self.is_member(peer) {
            return Err(format!("{peer} is no longer a member of the mesh"));
        }
        let changes = self
            .0
            .with_node(|node| node.receive_in(seed, sync, message).map(|c| (c.len(), c)))
            .map_err(|e| e.to_string())?;
        if changes > 0 {
            tracing::debug!(%peer, changes, "mesh: applied changes from peer");
        }
        self.0.check_recovered();
        Ok(())
    }

    fn offer(&self, peer: &mesh::did::DidKey, announce: &mesh::epoch::Announce) {
        if !self.is_member(peer) {
            return;
        }
        let epoch = &announce.current;
        match self.0.with_node(|node| node.offer(announce)) {
            Ok(true) => {
                tracing::info!(%peer, epoch = epoch.number, "mesh: moved to the peer's epoch");
                // Every session announces the new epoch.
                if let Some(driver) = self.0.0.driver.get() {
                    driver.notify_changed();
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%peer, error = %e, "mesh: cannot move to the peer's epoch"),
        }
    }
}

/// The OAuth router, mounted under the issuer's path.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/.well-known/oauth-authorization-server", get(discovery::metadata))
        .route("/jwks.json", get(discovery::jwks))
        .route("/token", post(token::token))
        .route("/introspect", post(introspect::introspect))
        .route("/revoke", post(introspect::revoke))
        .route("/register", post(register::register))
        .route(
            "/register/{client_id}",
            get(register::read).put(register::update).delete(register::delete),
        )
        .route("/.well-known/openid-configuration", get(discovery::metadata))
        .route(
            "/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/login", post(authorize::login))
        .route("/consent", post(authorize::consent))
        .route("/logout", get(authorize::logout_get).post(authorize::logout_post))
        .route(upstream_login::START_PATH, post(upstream_login::start))
        .route(upstream_login::CALLBACK_PATH, get(upstream_login::callback))
        .route("/userinfo", get(oidc::userinfo).post(oidc::userinfo))
        .route("/mesh/plugins/{sha256}", get(plugins::module))
        .route("/device_authorization", post(device::device_authorization))
        .route("/device", get(device_page::device_get).post(device_page::device_post))
        .route("/device/login", post(device_page::device_login))
        .route("/device/confirm", post(device_page::device_confirm));
    let prefix = state.0.path_prefix.clone();
    let mut router = if prefix.is_empty() {
        routes
    } else {
        Router::new().nest(&prefix, routes)
    };
    if !prefix.is_empty() {
        // RFC 8414 §3: for an issuer with a path, the metadata lives at
        // /.well-known/oauth-authorization-server{path}.
        router = router.route(
            &format!("/.well-known/oauth-authorization-server{prefix}"),
            get(discovery::metadata),
        );
    }
    router
        .fallback(|| async { OAuthError::not_found() })
        .method_not_allowed_fallback(|| async { OAuthError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), recovery::gate))
        .layer(middleware::from_fn_with_state(state.clone(), cors::cors))
        .layer(middleware::from_fn_with_state(state.clone(), crate::ratelimit::limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = tokio::time::Instant::now();
    let endpoint = metrics::endpoint_index(request.uri().path(), &state.0.path_prefix);
    let method = request.method().clone();
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    state.0.metrics.observe_request(endpoint, status, elapsed);
    crate::telemetry::otlp::record(endpoint, &method, status, start, elapsed);
    tracing::debug!(endpoint = metrics::ENDPOINTS[endpoint], %method, status, micros = elapsed.as_micros() as u64, "request");
    response
}

fn server_error(e: impl std::fmt::Display) -> Response {
    OAuthError::server_error(&e).into_response()
}
