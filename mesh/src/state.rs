//! The replicated state document: the client registry, the signing-key records and the revocation
//! set, changed only through [`Change`]s so that every change can be persisted, shipped to peers and
//! applied to in-memory views the same way.
//!
//! Pure data: nothing here reads a clock or touches the file system.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::did::DidKey;
use crate::identity::{self, NodeIdentity};
use crate::kel::{self, KeyChains, KeyEvent};
use crate::login;
use crate::plugin::{PluginRecord, PluginTrust};

/// The schema version of [`State`] this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Schema version, [`SCHEMA_VERSION`] when written by this build.
    pub schema: u32,
    /// Registered clients by `client_id`.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientRecord>,
    /// Signing-key records by `kid`.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
    /// Revoked token ids (`jti`) with the token's `exp`, after which the entry may be dropped.
    #[serde(default)]
    pub revocations: BTreeMap<String, u64>,
    /// Admissions of nodes to the mesh, by [`Admission::key`] (admitted and admitting DID).
    #[serde(default)]
    pub admissions: BTreeMap<String, Admission>,
    /// What each node says about itself (issuer, sync address), by DID.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Nodes removed from the mesh, by [`Removal::key`] (removed and removing DID).
    #[serde(default)]
    pub removals: BTreeMap<String, Removal>,
    /// Identity key events, by [`KeyEvent::key`] (`"{did}|{seq}"`); see [`crate::kel`].
    #[serde(default)]
    pub key_events: BTreeMap<String, KeyEvent>,
    /// A previous gateway's public keys, by `kid`; see [`crate::legacy`].
    #[serde(default)]
    pub legacy_keys: BTreeMap<String, crate::legacy::LegacyKey>,
    /// The audit log of administrative changes, by [`AuditRecord::id`] (time-ordered).
    #[serde(default)]
    pub audit: BTreeMap<String, AuditRecord>,
    /// People who log in at `/authorize`, by username; see [`crate::login`].
    #[serde(default)]
    pub users: BTreeMap<String, login::UserRecord>,
    /// Remembered consents, by [`login::ConsentRecord::key`] (`"{username}|{client_id}"`).
    #[serde(default)]
    pub consents: BTreeMap<String, login::ConsentRecord>,
    /// Refresh tokens (by the hash of the token), the spent records and revoked families.
    #[serde(default)]
    pub refresh: login::RefreshState,
    /// Trust in plugin developer keys, by signer DID; see [`crate::plugin`].
    #[serde(default)]
    pub plugin_signers: BTreeMap<String, PluginTrust>,
    /// Installed (or removed) plugins, by name; see [`crate::plugin`].
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginRecord>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            clients: BTreeMap::new(),
            keys: BTreeMap::new(),
            revocations: BTreeMap::new(),
            admissions: BTreeMap::new(),
            nodes: BTreeMap::new(),
            removals: BTreeMap::new(),
            key_events: BTreeMap::new(),
            legacy_keys: BTreeMap::new(),
            audit: BTreeMap::new(),
            users: BTreeMap::new(),
            consents: BTreeMap::new(),
            refresh: login::RefreshState::default(),
            plugin_signers: BTreeMap::new(),
            plugins: BTreeMap::new(),
        }
    }
}

impl State {
    /// Applies one change.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutClient(client) => {
                self.clients.insert(client.client_id.clone(), client.clone());
            }
            Change::RemoveClient(client_id) => {
                self.clients.remove(client_id);
            }
            Change::PutKey(key) => {
                self.keys.insert(key.kid.clone(), key.clone());
            }
            Change::RemoveKey(kid) => {
                self.keys.remove(kid);
            }
            Change::Revoke { jti, exp } => {
                self.revocations.insert(jti.clone(), *exp);
            }
            Change::DropExpiredRevocations { now } => {
                self.revocations.retain(|_, exp| *exp > *now);
            }
            Change::Admit(admission) => {
                self.admissions.insert(admission.key(), admission.clone());
            }
            Change::PutNode(info) => {
                self.nodes.insert(info.did.to_string(), info.clone());
            }
            Change::RemoveNode(removal) => {
                self.removals.insert(removal.key(), removal.clone());
            }
            Change::PutKeyEvent(event) => {
                self.key_events.insert(event.key(), event.clone());
            }
            Change::PutLegacyKey(key) => {
                self.legacy_keys.insert(key.kid.clone(), key.clone());
            }
            Change::RemoveLegacyKey(kid) => {
                self.legacy_keys.remove(kid);
            }
            Change::PutAudit(record) => {
                self.audit.insert(record.id.clone(), record.clone());
            }
            Change::RemoveAudit(id) => {
                self.audit.remove(id);
            }
            Change::Login(change) => login::apply(self, change),
            Change::TrustPluginSigner(trust) => {
                self.plugin_signers.insert(trust.key(), trust.clone());
            }
            Change::PutPlugin(record) => {
                self.plugins.insert(record.key(), record.clone());
            }
        }
    }

    /// The keys of `did` (inception first, current last) as its valid key events say; see
    /// [`kel::chain`].
    pub fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]> {
        kel::chain(did, |seq| self.key_events.get(&kel::event_key(did, seq)))
    }

    /// The key that signs for `did` now: the last of [`State::keys_of`].
    pub fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.keys_of(did).last().copied().unwrap_or(did.public_key())
    }

    /// Whether `event` is the next rotation of its DID after the events held here
    /// ([`kel::extends`]).
    pub fn extends_chain(&self, event: &kel::KeyEvent) -> bool {
        kel::extends(event, |seq| self.key_events.get(&kel::event_key(&event.did, seq)))
    }
}

impl KeyChains for State {
    fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]> {
        State::keys_of(self, did)
    }
}

/// One change to the [`State`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Change {
    /// Adds or replaces a client.
    PutClient(ClientRecord),
    /// Removes a client.
    RemoveClient(String),
    /// Adds or replaces a signing-key record.
    PutKey(KeyRecord),
    /// Removes a signing-key record (after every token it signed has expired).
    RemoveKey(String),
    /// Revokes the token with id `jti`, which expires at `exp`.
    Revoke {
        /// The token id.
        jti: String,
        /// The token's expiry (Unix seconds).
        exp: u64,
    },
    /// Drops revocations of tokens that expired at or before `now`.
    DropExpiredRevocations {
        /// Unix seconds.
        now: u64,
    },
    /// Admits a node to the mesh.
    Admit(Admission),
    /// Adds or replaces what a node says about itself.
    PutNode(NodeInfo),
    /// Removes a node from the mesh, for good.
    RemoveNode(Removal),
    /// Adds an event to a node's identity key event log.
    PutKeyEvent(KeyEvent),
    /// Adds or replaces a previous gateway's key ([`crate::legacy`]).
    PutLegacyKey(crate::legacy::LegacyKey),
    /// Removes a previous gateway's key (its `until` has passed, or an operator withdrew it).
    RemoveLegacyKey(String),
    /// Adds an entry to the audit log.
    PutAudit(AuditRecord),
    /// Drops an entry of the audit log (retention), by [`AuditRecord::id`].
    RemoveAudit(String),
    /// Changes users, consents or refresh-token families; see [`crate::login`].
    Login(login::LoginChange),
    /// Trusts (or stops trusting) a plugin developer key.
    TrustPluginSigner(PluginTrust),
    /// Installs, rebinds or removes (a tombstone) a plugin.
    PutPlugin(PluginRecord),
}

/// One administrative change in the audit log: who (an operator, the offline CLI or a node),
/// what (never a secret), when, and on which node; signed by that node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// `{at, zero-padded}|{node}|{nonce}`: unique, and ordered by time as a string.
    pub id: String,
    /// When (Unix seconds).
    pub at: u64,
    /// The node that executed the change.
    pub node: DidKey,
    /// Who asked for it: `operator uid N` (the admin socket's peer), `offline cli`, or
    /// `node did:key:…` (the node itself, e.g. applying its configuration).
    pub actor: String,
    /// The command, e.g. `client_add`, `keys_rotate`, `mesh_admit`.
    pub action: String,
    /// What changed (ids, names, policies), never a secret.
    pub detail: serde_json::Value,
    /// `node`'s signature over the other fields, base64url.
    pub signature: String,
}

impl AuditRecord {
    /// `node` records that `actor` did `action` at `at`; `nonce` tells apart records of one
    /// second (e.g. a random hex string).
    pub fn sign(
        node: &NodeIdentity,
        at: u64,
        actor: String,
        action: String,
        detail: serde_json::Value,
        nonce: &str,
    ) -> Self {
        let mut record = Self {
            id: format!("{at:012}|{}|{nonce}", node.did()),
            at,
            node: node.did(),
            actor,
            action,
            detail,
            signature: String::new(),
        };
        let signature = sign_fields(node, &record.signed_fields());
        record.signature = signature;
        record
    }

    fn signed_fields(&self) -> impl Serialize + '_ {
        (
            "audit",
            &self.id,
            self.at,
            &self.node,
            &self.actor,
            &self.action,
            &self.detail,
        )
    }

    /// Checks the signature against `node`'s keys (any key of its chain).
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        verify_fields(
            chains,
            &self.node,
            &self.signed_fields(),
            &self.signature,
            "audit record",
        )
    }
}

/// A member's signed statement that `did` belongs to the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admission {
    /// The admitted node.
    pub did: DidKey,
    /// The member that admitted it.
    pub admitted_by: DidKey,
    /// When (Unix seconds).
    pub admitted_at: u64,
    /// `admitted_by`'s signature over the other fields, base64url.
    pub signature: String,
}

impl Admission {
    /// `admitter` admits `did` at `now`.
    pub fn sign(admitter: &NodeIdentity, did: DidKey, now: u64) -> Self {
        let mut record = Self {
            did,
            admitted_by: admitter.did(),
            admitted_at: now,
            signature: String::new(),
        };
        let signature = sign_fields(admitter, &record.signed_fields());
        record.signature = signature;
        record
    }

    /// Its key in the state: one admission per (admitted, admitting) pair, so admissions by
    /// different members never overwrite each other.
    pub fn key(&self) -> String {
        format!("{}|{}", self.did, self.admitted_by)
    }

    fn signed_fields(&self) -> impl Serialize + '_ {
        ("admission", &self.did, &self.admitted_by, self.admitted_at)
    }

    /// Checks the signature against `admitted_by`'s keys (any key of its chain).
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        verify_fields(
            chains,
            &self.admitted_by,
            &self.signed_fields(),
            &self.signature,
            "admission",
        )
    }
}

/// What a node says about itself, signed by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node.
    pub did: DidKey,
    /// The issuer identifier its tokens carry.
    pub issuer: String,
    /// Where it listens for mesh sync (`host:port`).
    pub sync_addr: String,
    /// When it said so (Unix seconds).
    pub updated_at: u64,
    /// The node's signature over the other fields, base64url.
    pub signature: String,
}

impl NodeInfo {
    /// `node` describes itself.
    pub fn sign(node: &NodeIdentity, issuer: String, sync_addr: String, now: u64) -> Self {
        let mut record = Self {
            did: node.did(),
            issuer,
            sync_addr,
            updated_at: now,
            signature: String::new(),
        };
        let signature = sign_fields(node, &record.signed_fields());
        record.signature = signature;
        record
    }

    fn signed_fields(&self) -> impl Serialize + '_ {
        ("node", &self.did, &self.issuer, &self.sync_addr, self.updated_at)
    }

    /// Checks the signature against `did`'s keys (any key of its chain).
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        verify_fields(chains, &self.did, &self.signed_fields(), &self.signature, "node info")
    }
}

/// A member's signed statement that `did` is removed from the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// The removed node.
    pub did: DidKey,
    /// The member that removed it.
    pub removed_by: DidKey,
    /// When (Unix seconds).
    pub removed_at: u64,
    /// `removed_by`'s signature over the other fields, base64url.
    pub signature: String,
}

impl Removal {
    /// `remover` removes `did` at `now`.
    pub fn sign(remover: &NodeIdentity, did: DidKey, now: u64) -> Self {
        let mut record = Self {
            did,
            removed_by: remover.did(),
            removed_at: now,
            signature: String::new(),
        };
        let signature = sign_fields(remover, &record.signed_fields());
        record.signature = signature;
        record
    }

    /// Its key in the state: one removal per (removed, removing) pair.
    pub fn key(&self) -> String {
        format!("{}|{}", self.did, self.removed_by)
    }

    fn signed_fields(&self) -> impl Serialize + '_ {
        ("removal", &self.did, &self.removed_by, self.removed_at)
    }

    /// Checks the signature against `removed_by`'s keys (any key of its chain).
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        verify_fields(
            chains,
            &self.removed_by,
            &self.signed_fields(),
            &self.signature,
            "removal",
        )
    }
}

pub(crate) fn sign_fields(identity: &NodeIdentity, fields: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(identity.sign(&serde_json::to_vec(fields).unwrap_or_default()))
}

/// Verifies a record "by a DID": a signature by any key of `author`'s chain counts, so records
/// signed before a rotation stay valid (and a compromised old key can still sign; see
/// `mesh/ALGORITHM.md`, "Identity and pre-rotation").
pub(crate) fn verify_fields(
    chains: &dyn KeyChains,
    author: &DidKey,
    fields: &impl Serialize,
    signature: &str,
    what: &str,
) -> Result<(), Error> {
    let bad = || Error::BadSignature { what: what.to_owned() };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad())?;
    identity::verify_with(
        &chains.keys_of(author),
        &serde_json::to_vec(fields).unwrap_or_default(),
        &signature,
        what,
    )
}

impl State {
    /// The members of the mesh as `me` sees it: `me`, the `trusted` DIDs, and every node admitted by
    /// a member through a verified admission — minus every node removed by a member through a
    /// verified removal.
    pub fn members(&self, me: &DidKey, trusted: &[DidKey]) -> std::collections::BTreeSet<DidKey> {
        use std::collections::BTreeSet;
        let mut members: BTreeSet<DidKey> = trusted.iter().copied().chain([*me]).collect();
        let chains = CachedChains::new(self);
        let admissions: Vec<&Admission> = self.admissions.values().filter(|a| a.verify(&chains).is_ok()).collect();
        loop {
            let before = members.len();
            for admission in &admissions {
                if members.contains(&admission.admitted_by) {
                    members.insert(admission.did);
                }
            }
            if members.len() == before {
                break;
            }
        }
        let removed: Vec<DidKey> = self
            .removals
            .values()
            .filter(|r| r.verify(&chains).is_ok() && members.contains(&r.removed_by))
            .map(|r| r.did)
            .collect();
        for did in removed {
            members.remove(&did);
        }
        members
    }
}

impl State {
    /// The plugin developer keys trusted now, as `me` sees the mesh: those whose latest trust
    /// record says trusted, verifies, and was written by a member.
    pub fn trusted_plugin_signers(&self, me: &DidKey, trusted: &[DidKey]) -> std::collections::BTreeSet<DidKey> {
        let members = self.members(me, trusted);
        let chains = CachedChains::new(self);
        self.plugin_signers
            .values()
            .filter(|t| t.trusted && members.contains(&t.by) && t.verify(&chains).is_ok())
            .map(|t| t.signer)
            .collect()
    }
}

/// [`State::keys_of`], each DID resolved once (resolving verifies the DID's key events).
struct CachedChains<'s> {
    state: &'s State,
    resolved: std::cell::RefCell<std::collections::HashMap<DidKey, Vec<[u8; 32]>>>,
}

impl<'s> CachedChains<'s> {
    fn new(state: &'s State) -> Self {
        Self {
            state,
            resolved: Default::default(),
        }
    }
}

impl KeyChains for CachedChains<'_> {
    fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]> {
        self.resolved
            .borrow_mut()
            .entry(*did)
            .or_insert_with(|| self.state.keys_of(did))
            .clone()
    }
}

/// A registered OAuth client (RFC 6749 §2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client identifier (RFC 6749 §2.2).
    pub client_id: String,
    /// A human-readable name.
    pub name: String,
    /// Secrets the client may authenticate with; several during a rotation's grace period.
    #[serde(default)]
    pub secrets: Vec<SecretRecord>,
    /// Grant types the client may use, as registered (`client_credentials`, ...).
    pub grant_types: Vec<String>,
    /// Scopes the client may be granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences (RFC 8707 resource identifiers) the client may request tokens for.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// JWS algorithm of the client's access tokens: `EdDSA`, `ES256` or `RS256`.
    pub token_alg: String,
    /// Public keys for `private_key_jwt` (a JWK Set, RFC 7517 §5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// When the client was registered (Unix seconds).
    pub created_at: u64,
    /// Redirect URIs for the authorization code flow (RFC 7591 `redirect_uris`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser back to (exact match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_logout_redirect_uris: Vec<String>,
    /// RFC 7591 `token_endpoint_auth_method`: `none` for a public client; unset = authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
    /// OIDC `id_token_signed_response_alg` (`RS256` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_signed_response_alg: Option<String>,
    /// What to do for this client when its upstream identity provider is unavailable; unset
    /// fields come from the node's `federation.default_policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degradation: Option<ClientDegradation>,
    /// Set when the client registered itself (RFC 7591 dynamic registration): its metadata, the
    /// hash of its registration access token, and when it was last used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_registration: Option<Box<DynamicRegistration>>,
    /// Set for a federated client: one whose credentials live at an upstream identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<Box<ClientFederation>>,
}

/// What a dynamically registered client (RFC 7591) carries besides the common fields (its
/// redirect URIs and `token_endpoint_auth_method` are the [`ClientRecord`]'s own).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicRegistration {
    /// `response_types`, as registered.
    #[serde(default)]
    pub response_types: Vec<String>,
    /// The remaining client metadata (client_uri, logo_uri, contacts, software_id, ...), echoed
    /// back on RFC 7592 reads.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// SHA-256 of the registration access token (RFC 7592), base64url.
    pub registration_token_hash: String,
    /// When the client was last seen using a token endpoint, as far as this record knows (Unix
    /// seconds; nodes write it back at most about once a day).
    #[serde(default)]
    pub last_used: u64,
}

impl std::fmt::Debug for DynamicRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicRegistration")
            .field("last_used", &self.last_used)
            .finish_non_exhaustive()
    }
}

/// What meshgate holds of a federated client (`client add --upstream NAME --client-id ID`, or an
/// unknown client id an upstream with `federate_unknown_clients` accepted): the client
/// authenticates at the upstream while it is reachable; the salted slow hashes of secrets the
/// upstream accepted let it authenticate locally while the upstream is not. Never a secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientFederation {
    /// The `name` of the upstream (`upstreams:` entry) that holds the client's credentials.
    pub upstream: String,
    /// `mapped` (a local token carrying the upstream token's mapped claims; default) or
    /// `passthrough` (the upstream's token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Secrets the upstream accepted, newest last (at most a few), as salted argon2 hashes.
    #[serde(default)]
    pub verified_secrets: Vec<VerifiedSecret>,
    /// The local scopes (after mapping) the upstream granted when a secret was last recorded;
    /// what a degraded token may carry when the client has no registered scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_scopes: Vec<String>,
    /// Whether meshgate recorded the client on its own (`federate_unknown_clients`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
}

/// A secret an upstream accepted for a federated client.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedSecret {
    /// An argon2 PHC string (its own random salt) of the secret.
    pub hash: String,
    /// When the upstream last accepted it (Unix seconds).
    pub verified_at: u64,
}

impl std::fmt::Debug for VerifiedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedSecret")
            .field("verified_at", &self.verified_at)
            .finish_non_exhaustive()
    }
}

/// A client's degradation policy as replicated with the client (all fields optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDegradation {
    /// `issue_local` or `fail_closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_upstream_unavailable: Option<String>,
    /// Seconds after the upstream went dark during which local issuance continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_offline_secs: Option<u64>,
    /// Lifetime in seconds of tokens minted while the upstream is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_ttl_secs: Option<u64>,
}

/// A stored client secret: never the secret itself.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// The hash to verify a presented secret against.
    pub hash: SecretHash,
    /// After this time (Unix seconds) the secret no longer authenticates; `None` = no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.hash {
            SecretHash::Sha256(_) => "sha256",
            SecretHash::Argon2(_) => "argon2",
            SecretHash::HmacKey(_) => "hmac_key",
        };
        f.debug_struct("SecretRecord")
            .field("hash", &kind)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// How a secret is hashed.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SecretHash {
    /// SHA-256 of a server-generated 256-bit secret, base64url. High entropy makes a slow hash
    /// unnecessary.
    Sha256(String),
    /// An argon2 PHC string, for imported (possibly low-entropy) secrets.
    Argon2(String),
    /// The secret itself (base64url), for `client_secret_jwt` clients only: verifying their HS256/
    /// 384/512 assertions needs the key on every node, so it cannot be hashed. Protected by the data
    /// directory's permissions (0700/0600) and the mesh's authenticated sync; never exported, never
    /// usable for `client_secret_basic`/`client_secret_post`.
    HmacKey(String),
}

/// A signing key's public record, attested by the node identity that holds its private half.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint of the public JWK.
    pub kid: String,
    /// JWS algorithm (`EdDSA`, `ES256`, `RS256`).
    pub alg: String,
    /// The public key as a JWK (RFC 7517).
    pub jwk: serde_json::Value,
    /// The node whose identity attested (and which holds) this key.
    pub node: DidKey,
    /// When the key was created; it signs from then on (Unix seconds).
    pub created_at: u64,
    /// When a newer key replaced it (its not-after for signing); tokens it signed stay valid until
    /// they expire. Covered by the attestation: only the key's node can retire it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
    /// The node identity's ed25519 signature over [`KeyRecord::attested_bytes`], base64url.
    pub attestation: String,
}

impl KeyRecord {
    /// Builds a record for a new key and signs it with `identity`.
    pub fn attest(identity: &NodeIdentity, kid: String, alg: String, jwk: serde_json::Value, now: u64) -> Self {
        let mut record = Self {
            kid,
            alg,
            jwk,
            node: identity.did(),
            created_at: now,
            retired_at: None,
            attestation: String::new(),
        };
        record.attestation = URL_SAFE_NO_PAD.encode(identity.sign(&record.attested_bytes()));
        record
    }

    /// The same key, retired at `now` (it signs no more), attested again by `identity`.
    pub fn retire(&self, identity: &NodeIdentity, now: u64) -> Self {
        let mut record = Self {
            retired_at: Some(now),
            ..self.clone()
        };
        record.attestation = URL_SAFE_NO_PAD.encode(identity.sign(&record.attested_bytes()));
        record
    }

    /// The bytes the attestation signs: key id, algorithm, public key, node, creation time
    /// (not-before) and retirement time (not-after for signing), if any.
    pub fn attested_bytes(&self) -> Vec<u8> {
        let fields = (
            "signing-key",
            &self.kid,
            &self.alg,
            &self.jwk,
            &self.node,
            self.created_at,
            self.retired_at,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }

    /// Checks the attestation against the record's node's keys (any key of its chain).
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        let what = format!("signing key {}", self.kid);
        let signature = URL_SAFE_NO_PAD
            .decode(&self.attestation)
            .map_err(|_| Error::BadSignature { what: what.clone() })?;
        identity::verify_with(&chains.keys_of(&self.node), &self.attested_bytes(), &signature, &what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kel::NoRotation;

    #[test]
    fn attestation_verifies_and_detects_tampering() {
        let id = NodeIdentity::from_seed([1; 32]);
        let record = KeyRecord::attest(&id, "k1".into(), "EdDSA".into(), serde_json::json!({"x": "a"}), 10);
        record.verify(&NoRotation).unwrap();
        let mut tampered = record.clone();
        tampered.jwk = serde_json::json!({"x": "b"});
        assert!(tampered.verify(&NoRotation).is_err());
        let mut moved = record.clone();
        moved.node = NodeIdentity::from_seed([2; 32]).did();
        assert!(moved.verify(&NoRotation).is_err());
        // Only the key's node can retire it.
        record.retire(&id, 20).verify(&NoRotation).unwrap();
        let mut forged_retirement = record.clone();
        forged_retirement.retired_at = Some(20);
        assert!(forged_retirement.verify(&NoRotation).is_err());
        assert!(
            record
                .retire(&NodeIdentity::from_seed([2; 32]), 20)
                .verify(&NoRotation)
                .is_err()
        );
    }

    #[test]
    fn membership_follows_signed_admissions_and_removals() {
        let a = NodeIdentity::from_seed([1; 32]);
        let b = NodeIdentity::from_seed([2; 32]);
        let c = NodeIdentity::from_seed([3; 32]);
        let outsider = NodeIdentity::from_seed([4; 32]);
        let mut state = State::default();
        state.apply(&Change::Admit(Admission::sign(&a, b.did(), 1)));
        state.apply(&Change::Admit(Admission::sign(&b, c.did(), 2)));
        let members = state.members(&a.did(), &[]);
        assert!(members.contains(&b.did()) && members.contains(&c.did()));
        // An outsider cannot admit itself or others.
        let mut other = State::default();
        other.apply(&Change::Admit(Admission::sign(&outsider, outsider.did(), 3)));
        assert_eq!(other.members(&a.did(), &[]).len(), 1);
        // A tampered admission is ignored.
        let mut forged = Admission::sign(&a, b.did(), 1);
        forged.did = outsider.did();
        let mut tampered = State::default();
        tampered.apply(&Change::Admit(forged));
        assert!(!tampered.members(&a.did(), &[]).contains(&outsider.did()));
        // Removal by a member removes.
        state.apply(&Change::RemoveNode(Removal::sign(&a, c.did(), 4)));
        assert!(!state.members(&a.did(), &[]).contains(&c.did()));
        let info = NodeInfo::sign(&b, "http://127.0.0.2:8700".into(), "127.0.0.2:7946".into(), 5);
        info.verify(&NoRotation).unwrap();
    }

    #[test]
    fn records_signed_before_and_after_a_rotation_verify_by_the_did() {
        let a = NodeIdentity::from_seed([1; 32]);
        let b = NodeIdentity::from_seed([2; 32]);
        let mut state = State::default();
        state.apply(&Change::PutKeyEvent(a.event()));
        let old_key = KeyRecord::attest(&a, "k1".into(), "EdDSA".into(), serde_json::json!({"x": "a"}), 1);
        let old_admission = Admission::sign(&a, b.did(), 1);
        let rotation = a.rotate_with_seed([3; 32]);
        let new_key = KeyRecord::attest(&a, "k2".into(), "EdDSA".into(), serde_json::json!({"x": "b"}), 2);
        let removal = Removal::sign(&a, b.did(), 3);
        // Before the peer knows the rotation, what the new key signed does not verify.
        assert!(new_key.verify(&state).is_err());
        state.apply(&Change::PutKeyEvent(rotation));
        assert_eq!(state.keys_of(&a.did()), [a.did().public_key(), a.current_key()]);
        assert_eq!(state.current_key(&a.did()), a.current_key());
        old_key.verify(&state).unwrap();
        old_admission.verify(&state).unwrap();
        new_key.verify(&state).unwrap();
        removal.verify(&state).unwrap();
        state.apply(&Change::Admit(old_admission));
        assert!(state.members(&a.did(), &[]).contains(&b.did()));
        state.apply(&Change::RemoveNode(removal));
        assert!(!state.members(&a.did(), &[]).contains(&b.did()));
        // Another node's chain does not lend it a's keys.
        let mut moved = new_key.clone();
        moved.node = b.did();
        assert!(moved.verify(&state).is_err());
    }

    #[test]
    fn changes_apply() {
        let mut state = State::default();
        state.apply(&Change::Revoke {
            jti: "a".into(),
            exp: 5,
        });
        state.apply(&Change::Revoke {
            jti: "b".into(),
            exp: 50,
        });
        state.apply(&Change::DropExpiredRevocations { now: 10 });
        assert_eq!(state.revocations.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let record = SecretRecord {
            hash: SecretHash::Sha256("c2VjcmV0aGFzaA".into()),
            expires_at: None,
        };
        assert!(!format!("{record:?}").contains("c2VjcmV0aGFzaA"));
    }
}
