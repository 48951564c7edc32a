//! The node's writable side: the state store, the identity, the key store and the private signing
//! keys. Administrative commands ([`AdminRequest`]) execute here, whether they arrive over the admin
//! socket of a running server or from a CLI that opened the data directory itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::clock::Clock;
use mesh::did::DidKey;
use mesh::identity::NodeIdentity;
use mesh::keystore::{FileKeyStore, KeyStore};
use mesh::state::{
    Admission, Change, ClientDegradation, ClientRecord, KeyRecord, NodeInfo, Removal, SecretHash, SecretRecord,
};
use mesh::store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::keys::{Alg, SigningKey};
use crate::view::{LocalKeys, View};

/// The RFC 8693 token-exchange grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Grant types a client may be registered with (`token-exchange` is accepted as a short alias of
/// [`TOKEN_EXCHANGE`] and stored as the full URI).
pub const SUPPORTED_GRANTS: &[&str] = &["client_credentials", TOKEN_EXCHANGE];

/// An administrative command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AdminRequest {
    /// Registers a client; answers its id and its secret (the only time the secret is shown).
    ClientAdd {
        /// Display name.
        name: String,
        /// Grant types (may be empty: a client that only introspects and revokes).
        grants: Vec<String>,
        /// Allowed scopes.
        scopes: Vec<String>,
        /// Allowed audiences; the first ones are the default when a request names none.
        audiences: Vec<String>,
        /// Access-token algorithm (default: the configured one).
        token_alg: Option<Alg>,
        /// JWK Set for `private_key_jwt`.
        jwks: Option<Value>,
        /// An operator-chosen (imported) secret, stored with argon2; default a generated one.
        secret: Option<String>,
        /// The client's degradation policy for when its upstream is unavailable.
        #[serde(default)]
        degradation: Option<ClientDegradation>,
    },
    /// Registers a federated client: its credentials live at `upstream`, under `client_id`, which
    /// is also its id here; no local secret. Answers its summary.
    ClientAddFederated {
        /// Display name.
        name: String,
        /// The client's id at the upstream, and here.
        client_id: String,
        /// The upstream's configured name.
        upstream: String,
        /// `mapped` (default) or `passthrough`.
        mode: Option<String>,
        /// Grant types (default: `client_credentials`).
        grants: Vec<String>,
        /// Allowed local scopes (empty: whatever the upstream grants, mapped).
        scopes: Vec<String>,
        /// Allowed audiences.
        audiences: Vec<String>,
        /// Access-token algorithm.
        token_alg: Option<Alg>,
        /// The degradation policy.
        #[serde(default)]
        degradation: Option<ClientDegradation>,
    },
    /// Updates a client's degradation policy: the given fields replace the stored ones, the others
    /// stay; `None` clears the policy.
    ClientSetPolicy {
        /// The client.
        client_id: String,
        /// The policy.
        degradation: Option<ClientDegradation>,
    },
    /// Lists clients (never secrets).
    ClientList,
    /// Shows one client.
    ClientShow {
        /// The client.
        client_id: String,
    },
    /// Removes a client; its tokens stop introspecting active.
    ClientRemove {
        /// The client.
        client_id: String,
    },
    /// Issues a new secret; the old ones keep working for `grace_secs`.
    ClientRotateSecret {
        /// The client.
        client_id: String,
        /// Seconds the previous secrets stay valid.
        grace_secs: u64,
    },
    /// Replaces every signing key; old keys stay published until their tokens expire.
    KeysRotate,
    /// Lists signing keys.
    KeysList,
    /// The node's DID and data directory.
    Status,
    /// Admits a node to the mesh (signed by this node).
    MeshAdmit {
        /// The node to admit.
        did: DidKey,
    },
    /// Removes a node from the mesh for good (signed by this node).
    MeshRemove {
        /// The node to remove.
        did: DidKey,
    },
    /// Mesh members, peers and the document's heads.
    MeshStatus,
    /// Rotates the node's identity key by pre-rotation: the DID stays, the pre-committed next key
    /// signs from now on.
    IdRotate,
    /// The state of every configured upstream; answered by the running server (its breakers and
    /// caches live there), never by a node opened from the CLI.
    UpstreamStatus,
    /// Imports client records with their ids unchanged (`meshgate import`); see [`crate::import`].
    ClientImport {
        /// The records, secrets already hashed.
        records: Vec<ClientRecord>,
        /// Check only; change nothing.
        dry_run: bool,
        /// Overwrite clients with the same id.
        replace: bool,
    },
    /// Exports the clients in meshgate's own format (hashes only; `meshgate export`).
    Export,
    /// Publishes a previous gateway's public keys in every node's JWKS, and accepts its tokens at
    /// introspection, until `until` (`meshgate import jwks`); see [`crate::legacy`].
    ImportJwks {
        /// The JWK Set (public keys).
        jwks: Value,
        /// The issuer of the tokens they signed.
        issuer: String,
        /// Unix seconds after which they are dropped.
        until: u64,
    },
    /// The audit log of administrative changes, oldest first.
    Audit {
        /// Only records at or after this time (Unix seconds).
        #[serde(default)]
        since: Option<u64>,
    },
    /// Users, their consents, and clients of the authorization code flow; see [`crate::users`].
    User(crate::users::UserRequest),
    /// Trusts (or stops trusting) a plugin developer key, for the whole mesh.
    PluginTrust {
        /// The developer key.
        signer: DidKey,
        /// Trust or withdraw trust.
        trusted: bool,
    },
    /// Installs a signed plugin whose module is already stored as `plugins/<sha256>.wasm`.
    PluginInstall {
        /// The developer's signed manifest.
        manifest: mesh::plugin::PluginManifest,
        /// Apply it to every client.
        all_clients: bool,
    },
    /// Lists installed plugins and trusted signers.
    PluginList,
    /// Removes a plugin from the mesh.
    PluginRemove {
        /// The plugin.
        name: String,
    },
    /// Applies plugins to a client, or stops applying them (`client update --plugin`).
    PluginBind {
        /// The client.
        client_id: String,
        /// Plugins to apply to it.
        add: Vec<String>,
        /// Plugins to stop applying to it.
        remove: Vec<String>,
    },
}

/// The writable node.
pub struct Node {
    store: Store,
    identity: Arc<NodeIdentity>,
    trusted: Vec<DidKey>,
    keystore: Box<dyn KeyStore>,
    signing: HashMap<String, Arc<SigningKey>>,
    clock: Arc<dyn Clock>,
    default_alg: Alg,
    /// The members and their verified sync addresses, as of a store membership version.
    members_cache: std::sync::Mutex<Option<(u64, Arc<Members>)>>,
}

/// What [`Node::is_member`] and [`Node::peer_addresses`] derive from the state (verifying every
/// signature of the records involved), kept until admissions, removals, key events or node
/// information change.
struct Members {
    members: std::collections::BTreeSet<DidKey>,
    peers: Vec<(DidKey, String)>,
}

impl Node {
    /// Opens (creating if needed) the data directory: locks it, loads or creates the identity and
    /// loads or generates a signing key for every algorithm.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>, default_alg: Alg, trusted: Vec<DidKey>) -> Result<Self, Error> {
        Self::open_with_peers(data_dir, clock, default_alg, trusted, false)
    }

    /// Like [`Node::open`]; with `recover_from_peers` (a serving node that has peers), a state no
    /// local copy can rebuild is recovered from the peers instead of failing (see
    /// [`mesh::store`], *Recovery*, and [`Node::recovering_from_peers`]).
    pub fn open_with_peers(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        default_alg: Alg,
        trusted: Vec<DidKey>,
        recover_from_peers: bool,
    ) -> Result<Self, Error> {
        let config = mesh::store::Config {
            recover_from_peers,
            ..Default::default()
        };
        let mut store = Store::open_with(data_dir, config)?;
        let keystore = FileKeyStore::open(&data_dir.join("keys"))?;
        let identity = Arc::new(NodeIdentity::load_or_generate(&keystore)?);
        if let Some(event) = identity.reconcile(store.state())? {
            tracing::info!(did = %identity.did(), seq = event.seq, "publishing the identity's key event");
            store.apply(&[Change::PutKeyEvent(event)], clock.now())?;
        }
        if store.state().current_key(&identity.did()) != identity.current_key() {
            tracing::warn!(
                did = %identity.did(),
                "the replicated state lacks earlier key events of this identity; they come back from peers"
            );
        }
        let mut node = Self {
            store,
            identity,
            trusted,
            keystore: Box::new(keystore),
            signing: HashMap::new(),
            clock,
            default_alg,
            members_cache: std::sync::Mutex::new(None),
        };
        let did = node.identity.did();
        let own: Vec<KeyRecord> = node
            .store
            .state()
            .keys
            .values()
            .filter(|k| k.node == did)
            .cloned()
            .collect();
        for record in own {
            let Ok(alg) = record.alg.parse::<Alg>() else { continue };
            match node.keystore.load(&key_file(&record.kid))? {
                Some(pkcs8) => {
                    let key = SigningKey::from_pkcs8(alg, &pkcs8)?;
                    node.signing.insert(record.kid.clone(), Arc::new(key));
                }
                None if record.retired_at.is_none() => {
                    tracing::warn!(kid = %record.kid, "private half of an active signing key is missing; replacing it");
                    let retired = record.retire(&node.identity, node.clock.now());
                    node.store.apply(&[Change::PutKey(retired)], node.clock.now())?;
                }
                None => {}
            }
        }
        let missing: Vec<Alg> = Alg::ALL
            .into_iter()
            .filter(|alg| node.active_kid(*alg).is_none())
            .collect();
        if !missing.is_empty() {
            let changes = missing
                .into_iter()
                .map(|alg| node.new_key(alg))
                .collect::<Result<Vec<_>, _>>()?;
            node.store.apply(&changes, node.clock.now())?;
        }
        // Trust given in configuration becomes signed admissions in the replicated state, so every
        // member (also one that learned of this node through `mesh admit`) sees the same members.
        let me = node.identity.did();
        let now = node.clock.now();
        let admissions: Vec<Change> = node
            .trusted
            .iter()
            .filter(|did| **did != me)
            .filter(|did| {
                !node
                    .store
                    .state()
                    .admissions
                    .values()
                    .any(|a| a.did == **did && a.admitted_by == me)
            })
            .map(|did| Change::Admit(Admission::sign(&node.identity, *did, now)))
            .collect();
        let audits: Vec<Change> = admissions
            .iter()
            .filter_map(|change| match change {
                Change::Admit(admission) => Some(crate::audit::record(
                    &node.identity,
                    node.store.state(),
                    now,
                    crate::audit::Actor::Node,
                    (
                        "mesh_admit",
                        json!({"did": admission.did, "from": "node.sync.trusted_peers"}),
                    ),
                    &Value::Null,
                )),
                _ => None,
            })
            .collect();
        let admissions: Vec<Change> = admissions.into_iter().chain(audits).collect();
        node.store.apply(&admissions, now)?;
        Ok(node)
    }

    /// The node's DID.
    pub fn did(&self) -> DidKey {
        self.identity.did()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.store.dir()
    }

    /// The materialized replicated state.
    pub fn state(&self) -> &mesh::state::State {
        self.store.state()
    }

    /// The node identity, shared with the mesh driver for handshakes.
    pub fn identity(&self) -> Arc<NodeIdentity> {
        self.identity.clone()
    }

    /// Whether `did` is a member of the mesh now.
    pub fn is_member(&self, did: &DidKey) -> bool {
        self.cached_members().members.contains(did)
    }

    /// Other members with the sync address they announced.
    pub fn peer_addresses(&self) -> Vec<(DidKey, String)> {
        self.cached_members().peers.clone()
    }

    /// The members and their verified sync addresses, recomputed only when the store's
    /// membership version moved.
    fn cached_members(&self) -> Arc<Members> {
        let version = self.store.membership_version();
        let mut cache = self.members_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, cached)) = cache.as_ref().filter(|(v, _)| *v == version) {
            return cached.clone();
        }
        let me = self.identity.did();
        let state = self.store.state();
        let members = state.members(&me, &self.trusted);
        let peers: Vec<(DidKey, String)> = state
            .nodes
            .values()
            .filter(|n| n.did != me && members.contains(&n.did) && n.verify(state).is_ok())
            .map(|n| (n.did, n.sync_addr.clone()))
            .collect();
        let cached = Arc::new(Members { members, peers });
        *cache = Some((version, cached.clone()));
        cached
    }

    /// Publishes this node's issuer and sync address if they changed; returns the change made.
    pub fn announce(&mut self, issuer: &str, sync_addr: &str) -> Result<Vec<Change>, Error> {
        let current = self.store.state().nodes.get(&self.identity.did().to_string());
        if current.is_some_and(|n| n.issuer == issuer && n.sync_addr == sync_addr) {
            return Ok(vec![]);
        }
        let info = NodeInfo::sign(
            &self.identity,
            issuer.to_owned(),
            sync_addr.to_owned(),
            self.clock.now(),
        );
        let changes = vec![Change::PutNode(info)];
        self.store.apply(&changes, self.clock.now())?;
        Ok(changes)
    }

    /// The DIDs trusted as members by configuration (`node.sync.trusted_peers`).
    pub fn trusted_peers(&self) -> &[DidKey] {
        &self.trusted
    }

    /// A full view of the current state.
    pub fn view(&self) -> View {
        View::build(self.store.state(), self)
    }

    /// The next sync message for a mesh peer.
    pub fn generate_sync_message(&mut self, peer: &mut mesh::doc::PeerSync) -> Option<Vec<u8>> {
        self.store.generate_sync_message(peer)
    }

    /// Applies a mesh peer's sync message; returns how the state changed.
    pub fn receive_sync_message(
        &mut self,
        peer: &mut mesh::doc::PeerSync,
        message: &[u8],
    ) -> Result<Vec<Change>, Error> {
        Ok(self.store.receive_sync_message(peer, message)?)
    }

    /// Whether the replicated state is being recovered from peers (started empty after a
    /// corruption no local copy could repair, no peer synced yet): the node must not serve it.
    pub fn recovering_from_peers(&self) -> bool {
        self.store.recovering_from_peers()
    }

    /// Size of the replicated document in bytes.
    pub fn document_size(&self) -> usize {
        self.store.document_size()
    }

    /// Bounds the replicated document (`node.sync.crdt_buffer_mb`, in bytes): past half of it the
    /// store starts a new epoch holding the live state only (see `mesh::epoch`).
    pub fn set_document_bound(&mut self, bytes: u64) {
        self.store.set_epoch_bound(Some(bytes));
    }

    /// The epochs of the replicated document this node holds, for mesh peers.
    pub fn epochs(&self) -> mesh::epoch::Announce {
        self.store.announce()
    }

    /// The next sync message of epoch `seed` for a mesh peer.
    pub fn generate_in(&mut self, seed: &[u8; 32], peer: &mut mesh::doc::PeerSync) -> Option<Vec<u8>> {
        self.store.generate_in(seed, peer)
    }

    /// Applies a mesh peer's sync message of epoch `seed`; returns how the state changed.
    pub fn receive_in(
        &mut self,
        seed: &[u8; 32],
        peer: &mut mesh::doc::PeerSync,
        message: &[u8],
    ) -> Result<Vec<Change>, Error> {
        Ok(self.store.receive_in(seed, peer, message, self.clock.now())?)
    }

    /// Moves to a peer's announced epoch if it is better and can be built here; returns whether it
    /// moved and how the state changed.
    pub fn offer(&mut self, announce: &mesh::epoch::Announce) -> Result<(bool, Vec<Change>), Error> {
        Ok(match self.store.offer(announce, self.clock.now())? {
            mesh::epoch::Offered::Switched(changes) => (true, changes),
            _ => (false, Vec::new()),
        })
    }

    /// Applies changes made elsewhere (revocations from `/revoke`, maintenance) and persists them.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), Error> {
        Ok(self.store.apply(changes, self.clock.now())?)
    }

    /// Changes that drop what has expired at `now`: revocations of expired tokens and signing keys
    /// retired longer than `token_ttl` ago (their private halves are deleted).
    pub fn expire(&mut self, now: u64, token_ttl: u64) -> Result<Vec<Change>, Error> {
        let state = self.store.state();
        let mut changes = Vec::new();
        if state.revocations.values().any(|exp| *exp <= now) {
            changes.push(Change::DropExpiredRevocations { now });
        }
        let expired: Vec<String> = state
            .keys
            .values()
            .filter(|k| k.retired_at.is_some_and(|r| now >= r.saturating_add(token_ttl)))
            .map(|k| k.kid.clone())
            .collect();
        changes.extend(mesh::login::expire(state, now).into_iter().map(Change::Login));
        for kid in expired {
            if self.signing.remove(&kid).is_some() {
                self.keystore.remove(&key_file(&kid))?;
            }
            changes.push(Change::RemoveKey(kid));
        }
        let state = self.store.state();
        changes.extend(
            state
                .legacy_keys
                .values()
                .filter(|k| now >= k.until)
                .map(|k| Change::RemoveLegacyKey(k.kid.clone())),
        );
        if !changes.is_empty() {
            self.store.apply(&changes, self.clock.now())?;
        }
        Ok(changes)
    }

    /// Executes an administrative command as the offline CLI (see [`Node::execute_as`]).
    pub fn execute(&mut self, request: AdminRequest) -> Result<(Value, Vec<Change>), Error> {
        self.execute_as(request, crate::audit::Actor::OfflineCli)
    }

    /// Executes an administrative command asked for by `actor`; returns the answer and the changes
    /// it made, an audit record among them when it changed anything.
    pub fn execute_as(
        &mut self,
        request: AdminRequest,
        actor: crate::audit::Actor,
    ) -> Result<(Value, Vec<Change>), Error> {
        let now = self.clock.now();
        let audit = crate::audit::describe(&request);
        let (answer, mut changes) = match request {
            AdminRequest::ClientAdd {
                name,
                grants,
                scopes,
                audiences,
                token_alg,
                jwks,
                secret,
                degradation,
            } => {
                let client_id = random_id();
                let (secret, hash) = match secret {
                    Some(s) => {
                        let hash = hash_imported_secret(&s)?;
                        (s, hash)
                    }
                    None => new_secret(),
                };
                let record = ClientRecord {
                    client_id: client_id.clone(),
                    name: checked_name(name)?,
                    secrets: vec![SecretRecord { hash, expires_at: None }],
                    grant_types: checked_grants(grants)?,
                    scopes: checked_scopes(scopes)?,
                    audiences: checked_audiences(audiences)?,
                    token_alg: token_alg.unwrap_or(self.default_alg).to_string(),
                    jwks: jwks.map(checked_jwks).transpose()?,
                    created_at: now,
                    degradation: degradation.map(checked_degradation).transpose()?,
                    dynamic_registration: None,
                    redirect_uris: vec![],
                    post_logout_redirect_uris: vec![],
                    token_endpoint_auth_method: None,
                    id_token_signed_response_alg: None,
                    federation: None,
                };
                let answer = json!({"client_id": client_id, "client_secret": secret});
                (answer, vec![Change::PutClient(record)])
            }
            AdminRequest::ClientAddFederated {
                name,
                client_id,
                upstream,
                mode,
                grants,
                scopes,
                audiences,
                token_alg,
                degradation,
            } => {
                let client_id = checked_federated_id(client_id)?;
                if self.store.state().clients.contains_key(&client_id) {
                    return Err(Error::Admin(format!("client `{client_id}` already exists")));
                }
                if !crate::federated::valid_mode(mode.as_deref()) {
                    return Err(Error::Admin("--mode must be mapped or passthrough".into()));
                }
                let grants = if grants.is_empty() {
                    vec!["client_credentials".to_owned()]
                } else {
                    checked_grants(grants)?
                };
                let record = ClientRecord {
                    client_id: client_id.clone(),
                    name: checked_name(name)?,
                    secrets: Vec::new(),
                    grant_types: grants,
                    scopes: checked_scopes(scopes)?,
                    audiences: checked_audiences(audiences)?,
                    token_alg: token_alg.unwrap_or(self.default_alg).to_string(),
                    jwks: None,
                    created_at: now,
                    degradation: degradation.map(checked_degradation).transpose()?,
                    federation: Some(Box::new(mesh::state::ClientFederation {
                        upstream,
                        mode,
                        verified_secrets: Vec::new(),
                        granted_scopes: Vec::new(),
                        auto: false,
                    })),
                    ..Default::default()
                };
                (summary(&record, now), vec![Change::PutClient(record)])
            }
            AdminRequest::ClientList => {
                let list: Vec<Value> = self.store.state().clients.values().map(|c| summary(c, now)).collect();
                (Value::Array(list), vec![])
            }
            AdminRequest::ClientShow { client_id } => (summary(self.client(&client_id)?, now), vec![]),
            AdminRequest::ClientSetPolicy { client_id, degradation } => {
                let mut record = self.client(&client_id)?.clone();
                record.degradation = match degradation {
                    None => None,
                    Some(update) => {
                        let current = record.degradation.take().unwrap_or_default();
                        Some(checked_degradation(ClientDegradation {
                            on_upstream_unavailable: update.on_upstream_unavailable.or(current.on_upstream_unavailable),
                            max_offline_secs: update.max_offline_secs.or(current.max_offline_secs),
                            degraded_ttl_secs: update.degraded_ttl_secs.or(current.degraded_ttl_secs),
                        })?)
                    }
                };
                (summary(&record, now), vec![Change::PutClient(record)])
            }
            AdminRequest::ClientRemove { client_id } => {
                self.client(&client_id)?;
                (json!({"removed": client_id}), vec![Change::RemoveClient(client_id)])
            }
            AdminRequest::ClientRotateSecret { client_id, grace_secs } => {
                let mut record = self.client(&client_id)?.clone();
                let hmac = record.secrets.iter().any(|s| matches!(s.hash, SecretHash::HmacKey(_)));
                let until = now.saturating_add(grace_secs);
                record.secrets.retain(|s| s.expires_at.is_none_or(|t| t > now));
                for old in &mut record.secrets {
                    old.expires_at = Some(old.expires_at.map_or(until, |t| t.min(until)));
                }
                if grace_secs == 0 {
                    record.secrets.clear();
                }
                let (secret, hash) = new_secret();
                // A client_secret_jwt client keeps its method: the new secret is its HMAC key.
                let hash = if hmac {
                    SecretHash::HmacKey(URL_SAFE_NO_PAD.encode(secret.as_bytes()))
                } else {
                    hash
                };
                record.secrets.push(SecretRecord { hash, expires_at: None });
                let answer =
                    json!({"client_id": client_id, "client_secret": secret, "previous_secrets_valid_until": until});
                (answer, vec![Change::PutClient(record)])
            }
            AdminRequest::KeysRotate => {
                let mut changes = Vec::new();
                for alg in Alg::ALL {
                    if let Some(kid) = self.active_kid(alg) {
                        let old = self.store.state().keys[&kid].clone();
                        changes.push(Change::PutKey(old.retire(&self.identity, now)));
                    }
                    changes.push(self.new_key(alg)?);
                }
                let fresh: Vec<Value> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::PutKey(k) if k.retired_at.is_none() => Some(json!({"kid": k.kid, "alg": k.alg})),
                        _ => None,
                    })
                    .collect();
                (json!({"active": fresh}), changes)
            }
            AdminRequest::KeysList => {
                let keys: Vec<Value> = self
                    .store
                    .state()
                    .keys
                    .values()
                    .map(|k| {
                        json!({"kid": k.kid, "alg": k.alg, "node": k.node, "created_at": k.created_at,
                               "retired_at": k.retired_at})
                    })
                    .collect();
                (Value::Array(keys), vec![])
            }
            AdminRequest::MeshAdmit { did } => {
                let admission = Admission::sign(&self.identity, did, now);
                (json!({"admitted": did}), vec![Change::Admit(admission)])
            }
            AdminRequest::MeshRemove { did } => {
                if did == self.did() {
                    return Err(Error::Admin(
                        "a node cannot remove itself; run `mesh remove` on another member".into(),
                    ));
                }
                if !self.is_member(&did) {
                    return Err(Error::Admin(format!("{did} is not a member of the mesh")));
                }
                let removal = Removal::sign(&self.identity, did, now);
                (json!({"removed": did}), vec![Change::RemoveNode(removal)])
            }
            AdminRequest::MeshStatus => {
                let state = self.store.state();
                let me = self.did();
                let members: Vec<Value> = state
                    .members(&me, &self.trusted)
                    .into_iter()
                    .map(|did| {
                        let info = state.nodes.get(&did.to_string());
                        json!({"did": did, "issuer": info.map(|i| &i.issuer),
                               "sync_addr": info.map(|i| &i.sync_addr), "self": did == me})
                    })
                    .collect();
                (
                    json!({"did": me, "members": members, "heads": self.store.heads()}),
                    vec![],
                )
            }
            AdminRequest::IdRotate => {
                let event = self.identity.rotate(self.keystore.as_ref())?;
                let key = DidKey::from_public_key(event.key).to_string();
                let fingerprint = key.trim_start_matches("did:key:");
                let answer = json!({"did": self.did(), "key": fingerprint, "seq": event.seq});
                (answer, vec![Change::PutKeyEvent(event)])
            }
            request @ (AdminRequest::PluginTrust { .. }
            | AdminRequest::PluginInstall { .. }
            | AdminRequest::PluginList
            | AdminRequest::PluginRemove { .. }
            | AdminRequest::PluginBind { .. }) => crate::plugin_cli::execute(self, request, now)?,
            AdminRequest::UpstreamStatus => {
                return Err(Error::Admin("upstream status is answered by the running server".into()));
            }
            AdminRequest::ClientImport {
                records,
                dry_run,
                replace,
            } => crate::import::apply(self.store.state(), records, dry_run, replace)?,
            AdminRequest::Export => (crate::import::meshgate::export(self.store.state(), now), vec![]),
            AdminRequest::ImportJwks { jwks, issuer, until } => {
                let records = crate::legacy::records(&jwks, &issuer, until, &self.identity, now)?;
                let kids: Vec<&str> = records.iter().map(|r| r.kid.as_str()).collect();
                let answer = json!({"kids": kids, "issuer": issuer, "until": until});
                (answer, records.into_iter().map(Change::PutLegacyKey).collect())
            }
            AdminRequest::User(request) => crate::users::execute(self, request, now)?,
            AdminRequest::Status => (
                json!({"did": self.did(), "data_dir": self.data_dir(), "clients": self.store.state().clients.len()}),
                vec![],
            ),
            AdminRequest::Audit { since } => (crate::audit::query(self.store.state(), since), vec![]),
        };
        if let Some(audit) = audit.filter(|_| !changes.is_empty()) {
            changes.push(crate::audit::record(
                &self.identity,
                self.store.state(),
                now,
                actor,
                audit,
                &answer,
            ));
        }
        if !changes.is_empty() {
            self.store.apply(&changes, self.clock.now())?;
        }
        Ok((answer, changes))
    }

    fn client(&self, client_id: &str) -> Result<&ClientRecord, Error> {
        self.store
            .state()
            .clients
            .get(client_id)
            .ok_or_else(|| Error::Admin(format!("no client `{client_id}`")))
    }

    fn active_kid(&self, alg: Alg) -> Option<String> {
        let did = self.did();
        self.store
            .state()
            .keys
            .values()
            .filter(|k| k.node == did && k.retired_at.is_none() && k.alg == alg.as_str())
            .filter(|k| self.signing.contains_key(&k.kid))
            .max_by_key(|k| k.created_at)
            .map(|k| k.kid.clone())
    }

    /// Generates a key, stores its private half and returns the attested record to apply.
    fn new_key(&mut self, alg: Alg) -> Result<Change, Error> {
        let (key, pkcs8) = SigningKey::generate(alg)?;
        self.keystore.store(&key_file(key.kid()), &pkcs8)?;
        let record = KeyRecord::attest(
            &self.identity,
            key.kid().to_owned(),
            alg.to_string(),
            key.public_jwk().clone(),
            self.clock.now(),
        );
        self.signing.insert(key.kid().to_owned(), Arc::new(key));
        Ok(Change::PutKey(record))
    }
}

impl LocalKeys for Node {
    fn signing_key(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.signing.get(kid).cloned()
    }

    fn did(&self) -> DidKey {
        self.identity.did()
    }

    fn members(&self) -> std::collections::BTreeSet<DidKey> {
        self.cached_members().members.clone()
    }

    fn issuers(&self) -> HashMap<DidKey, String> {
        let members = self.members();
        self.store
            .state()
            .nodes
            .values()
            .filter(|n| members.contains(&n.did) && n.verify(self.store.state()).is_ok())
            .map(|n| (n.did, n.issuer.clone()))
            .collect()
    }

    fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]> {
        self.store.state().keys_of(did)
    }

    fn current_keys(&self) -> HashMap<DidKey, [u8; 32]> {
        let state = self.store.state();
        self.members()
            .into_iter()
            .map(|did| (did, state.current_key(&did)))
            .filter(|(did, key)| *key != did.public_key())
            .collect()
    }
}

fn key_file(kid: &str) -> String {
    format!("signing-{kid}.pk8")
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS RNG failing is unrecoverable; getrandom documents it as practically impossible.
    getrandom::fill(&mut bytes).expect("operating system random number generator failed");
    bytes
}

/// A new client id: 20 lowercase letters and digits (about 103 bits).
pub(crate) fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes::<20>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A new 256-bit secret (base64url) and its SHA-256 hash.
pub(crate) fn new_secret() -> (String, SecretHash) {
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let hash = SecretHash::Sha256(URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes())));
    (secret, hash)
}

pub(crate) fn hash_imported_secret(secret: &str) -> Result<SecretHash, Error> {
    use argon2::PasswordHasher;
    if secret.is_empty() {
        return Err(Error::Admin("the secret must not be empty".into()));
    }
    let salt = argon2::password_hash::SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| Error::Admin(format!("salt: {e}")))?;
    let hash = argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| Error::Admin(format!("argon2: {e}")))?;
    Ok(SecretHash::Argon2(hash.to_string()))
}

pub(crate) fn checked_name(name: String) -> Result<String, Error> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(Error::Admin("--name must be 1 to 200 characters".into()));
    }
    Ok(name)
}

pub(crate) fn checked_grants(grants: Vec<String>) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for grant in grants {
        let grant = match grant.as_str() {
            "token-exchange" | "token_exchange" => TOKEN_EXCHANGE.to_owned(),
            _ => grant,
        };
        if !SUPPORTED_GRANTS.contains(&grant.as_str()) {
            return Err(Error::Admin(format!(
                "unsupported grant `{grant}` (supported: {})",
                SUPPORTED_GRANTS.join(", ")
            )));
        }
        if !out.contains(&grant) {
            out.push(grant);
        }
    }
    Ok(out)
}

/// Splits and checks scopes (RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )).
pub fn checked_scopes(scopes: Vec<String>) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
        if !is_scope_token(scope) {
            return Err(Error::Admin(format!("invalid scope `{scope}`")));
        }
        if !out.iter().any(|s| s == scope) {
            out.push(scope.to_owned());
        }
    }
    Ok(out)
}

/// Whether `s` is an RFC 6749 §3.3 scope-token.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

pub(crate) fn checked_audiences(audiences: Vec<String>) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for audience in audiences {
        if audience.is_empty() || audience.chars().any(char::is_control) {
            return Err(Error::Admin(format!("invalid audience `{audience}`")));
        }
        if !out.contains(&audience) {
            out.push(audience);
        }
    }
    Ok(out)
}

/// A client id chosen by an upstream: 1 to 200 printable ASCII characters without `:` (which
/// HTTP Basic credentials cannot carry unencoded everywhere) or spaces.
pub fn checked_federated_id(client_id: String) -> Result<String, Error> {
    let valid =
        !client_id.is_empty() && client_id.len() <= 200 && client_id.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !valid {
        return Err(Error::Admin(
            "--client-id must be 1 to 200 printable ASCII characters, without spaces or `:`".into(),
        ));
    }
    Ok(client_id)
}

pub(crate) fn checked_degradation(policy: ClientDegradation) -> Result<ClientDegradation, Error> {
    if let Some(mode) = &policy.on_upstream_unavailable
        && mode != "issue_local"
        && mode != "fail_closed"
    {
        return Err(Error::Admin(format!(
            "on_upstream_unavailable must be issue_local or fail_closed, not `{mode}`"
        )));
    }
    if policy.degraded_ttl_secs.is_some_and(|t| !(1..=86_400).contains(&t)) {
        return Err(Error::Admin(
            "the degraded token lifetime must be between 1s and 24h".into(),
        ));
    }
    Ok(policy)
}

pub(crate) fn checked_jwks(jwks: Value) -> Result<Value, Error> {
    let keys = jwks
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| Error::Admin("the JWKS must be an object with a `keys` array".into()))?;
    if keys.is_empty() {
        return Err(Error::Admin("the JWKS holds no keys".into()));
    }
    for key in keys {
        if key.get("d").is_some() {
            return Err(Error::Admin(
                "the JWKS holds a private key; register public keys only".into(),
            ));
        }
        crate::keys::decoding_key(key).map_err(|e| Error::Admin(format!("JWKS: {e}")))?;
    }
    Ok(jwks)
}

pub(crate) fn summary(client: &ClientRecord, now: u64) -> Value {
    let mut methods = Vec::new();
    let live = |s: &&SecretRecord| s.expires_at.is_none_or(|t| t > now);
    if client
        .secrets
        .iter()
        .filter(live)
        .any(|s| !matches!(s.hash, SecretHash::HmacKey(_)))
    {
        methods.extend(["client_secret_basic", "client_secret_post"]);
    }
    if client
        .secrets
        .iter()
        .filter(live)
        .any(|s| matches!(s.hash, SecretHash::HmacKey(_)))
    {
        methods.push("client_secret_jwt");
    }
    if client.jwks.is_some() {
        methods.push("private_key_jwt");
    }
    json!({
        "client_id": client.client_id,
        "name": client.name,
        "grant_types": client.grant_types,
        "scopes": client.scopes,
        "audiences": client.audiences,
        "token_alg": client.token_alg,
        "token_endpoint_auth_methods": methods,
        "secrets": client.secrets.iter().map(|s| json!({"expires_at": s.expires_at})).collect::<Vec<_>>(),
        "created_at": client.created_at,
        "degradation": client.degradation,
        "federation": client.federation.as_ref().map(|f| json!({
            "upstream": f.upstream,
            "mode": f.mode.as_deref().unwrap_or("mapped"),
            "verified_secrets": f.verified_secrets.len(),
            "last_verified_at": f.verified_secrets.iter().map(|v| v.verified_at).max(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use mesh::clock::ManualClock;

    use super::*;

    /// The cached member set follows admissions and removals made on this node and changes that
    /// arrive from a peer.
    #[test]
    fn the_cached_members_follow_admissions_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_750_000_000));
        let mut node = Node::open(dir.path(), clock.clone(), Alg::EdDSA, Vec::new()).unwrap();
        let other = NodeIdentity::from_seed([7; 32]);
        assert!(!node.is_member(&other.did()));
        node.execute(AdminRequest::MeshAdmit { did: other.did() }).unwrap();
        assert!(node.is_member(&other.did()));
        assert!(node.peer_addresses().is_empty(), "it announced no address yet");
        // The admitted node's announcement arrives over sync.
        let peer_dir = tempfile::tempdir().unwrap();
        let mut peer = Store::open(peer_dir.path()).unwrap();
        let info = NodeInfo::sign(&other, "http://other".into(), "127.0.0.1:9".into(), clock.now());
        peer.apply(&[Change::PutNode(info)], clock.now()).unwrap();
        let (mut ours, mut theirs) = (mesh::doc::PeerSync::default(), mesh::doc::PeerSync::default());
        for _ in 0..10 {
            if let Some(m) = peer.generate_sync_message(&mut theirs) {
                node.receive_sync_message(&mut ours, &m).unwrap();
            }
            if let Some(m) = node.generate_sync_message(&mut ours) {
                peer.receive_sync_message(&mut theirs, &m).unwrap();
            }
        }
        assert_eq!(node.peer_addresses(), vec![(other.did(), "127.0.0.1:9".to_owned())]);
        node.execute(AdminRequest::MeshRemove { did: other.did() }).unwrap();
        assert!(!node.is_member(&other.did()));
        assert!(node.peer_addresses().is_empty());
    }
}
