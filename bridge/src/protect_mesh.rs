//! `meshgate protect --data-dir DIR`: the protecting gateway as a member of the mesh.
//!
//! The gateway opens its own node identity in `DIR` (created like `meshgate id --data-dir DIR`),
//! and runs the same mesh driver as `meshgate serve` over the same replicated state
//! ([`crate::node::Node`], [`crate::http::MeshReplica`]) — but serves no OAuth endpoint. Tokens are
//! validated against the replicated state with [`crate::token::validate`], exactly as a node's
//! introspection does: the attested signing keys of current members (a removed node's keys stop
//! counting), the replicated revocation list, the client's existence. No call to any node's
//! introspection endpoint is made, so no client credentials are needed.
//!
//! It joins like a node: an operator admits its DID on a member (`meshgate mesh admit DID`, or
//! `node.sync.trusted_peers`), and the gateway trusts a member (`node.sync.trusted_peers` in
//! `--config`, or `meshgate mesh admit MEMBER --data-dir DIR` before starting) and dials
//! `node.sync.gossip_peers` (or `--gossip-peer`). It does not announce an issuer or sync address
//! (it issues nothing); members it dials keep the session open and push their changes through it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::clock::Clock;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::Error;
use crate::http::{AppState, MeshReplica, Settings};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::token::{AccessClaims, Inactive};
use crate::verified::VerifiedTokens;

/// The gateway's mesh membership: the replicated state and the driver syncing it.
pub struct Member {
    state: AppState,
    driver: mesh::driver::Driver,
    shutdown: watch::Sender<bool>,
    verified: VerifiedTokens,
    issuer: String,
    token_ttl: u64,
    /// The gateway's DID.
    pub did: String,
    /// Where the mesh sync listener is bound.
    pub sync_listen: SocketAddr,
}

impl Member {
    /// Opens `data_dir` and starts syncing with the mesh described by `config.node.sync`; tokens
    /// are checked against `issuer` (tokens of any member's announced issuer are accepted too).
    pub async fn start(config: &Config, data_dir: &Path, issuer: &str, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let sync = &config.node.sync;
        let mut node = {
            let (dir, clock, alg) = (data_dir.to_path_buf(), clock.clone(), config.bridge.token_alg);
            let trusted = sync.trusted_peers.clone();
            let peers = !sync.gossip_peers.is_empty() || !sync.trusted_peers.is_empty() || sync.mdns;
            tokio::task::spawn_blocking(move || Node::open_with_peers(&dir, clock, alg, trusted, peers))
                .await
                .map_err(|e| Error::Io {
                    action: "open data directory".into(),
                    source: std::io::Error::other(e),
                })??
        };
        node.set_document_bound(sync.crdt_buffer_mb.get().saturating_mul(1 << 20));
        let listener = std::net::TcpListener::bind(sync.listen).map_err(|source| Error::Bind {
            addr: sync.listen.to_string(),
            source,
        })?;
        let bound = listener
            .set_nonblocking(true)
            .and_then(|()| listener.local_addr())
            .map_err(|source| Error::Bind {
                addr: sync.listen.to_string(),
                source,
            })?;
        let did = node.did().to_string();
        let identity = node.identity();
        let bridge = &config.bridge;
        let settings = Settings {
            issuer: issuer.to_owned(),
            resource: issuer.to_owned(),
            token_ttl: bridge.access_token_ttl.as_secs(),
            default_alg: bridge.token_alg,
            max_body_bytes: bridge.max_body_bytes,
            verified_token_cache: bridge.verified_token_cache,
        };
        let token_ttl = settings.token_ttl;
        let state = AppState::new(settings, node, clock, Arc::new(Metrics::default()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let driver_config = mesh::driver::DriverConfig {
            bootstrap: sync.gossip_peers.clone(),
            mdns: sync.mdns,
            ..Default::default()
        };
        let replica = Arc::new(MeshReplica(state.clone()));
        let driver =
            mesh::driver::Driver::start(listener, identity, replica, driver_config, shutdown_rx).map_err(|source| {
                Error::Bind {
                    addr: bound.to_string(),
                    source,
                }
            })?;
        state.set_driver(driver.clone());
        tracing::info!(%did, sync_listen = %bound, "protect: joined the mesh as a member");
        Ok(Self {
            verified: VerifiedTokens::new(bridge.verified_token_cache),
            state,
            driver,
            shutdown,
            issuer: issuer.to_owned(),
            token_ttl,
            did,
            sync_listen: bound,
        })
    }

    /// Whether the replicated state is not yet usable (being recovered from peers after a
    /// corruption): no token can be judged until it is.
    pub fn recovering(&self) -> bool {
        self.state.recovering_from_peers()
    }

    /// Validates `token` against the replicated state at `now`: signature by an attested key of a
    /// current member, issuer, time, revocation, client.
    pub fn validate(&self, token: &str, now: u64) -> Result<AccessClaims, Inactive> {
        let view = self.state.view();
        crate::token::validate(token, &view, &self.issuer, now, self.token_ttl, &self.verified)
    }

    /// Stops syncing; waits (bounded) for the driver to leave the mesh.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(Duration::from_secs(5), self.driver.stopped())
            .await
            .is_err()
        {
            tracing::warn!("the mesh driver did not stop within 5 s");
        }
    }
}

/// The reason a mesh-validated token is refused, for the `WWW-Authenticate` error description.
pub fn describe(inactive: Inactive) -> &'static str {
    match inactive {
        Inactive::Malformed => "malformed token",
        Inactive::NotAnAccessToken => "not an access token",
        Inactive::UnknownKey => "unknown signing key",
        Inactive::BadSignature => "invalid token",
        Inactive::WrongIssuer => "token is from another issuer",
        Inactive::Expired => "token expired",
        Inactive::Revoked => "token revoked",
        Inactive::UnknownClient => "the token's client no longer exists",
        Inactive::DeniedByPlugin => "invalid token",
    }
}
