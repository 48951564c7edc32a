//! The immutable in-memory view the hot path reads: clients, verification keys, this node's active
//! signing keys and the revocation set, in persistent maps behind an atomic pointer swap.
//!
//! A view is updated by applying the same [`Change`]s that change the stored state, one at a time;
//! persistent maps make each update cost O(log n) instead of a rebuild.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use argon2::PasswordVerifier;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::did::DidKey;
use mesh::state::{Change, ClientRecord, KeyRecord, SecretHash, State};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::keys::{self, Alg, SigningKey};

/// A snapshot of everything the request path needs.
#[derive(Clone, Default)]
pub struct View {
    /// Clients by `client_id`.
    pub clients: imbl::HashMap<String, Arc<Client>>,
    /// Verification keys of every node by `kid` (attestation checked).
    pub keys: imbl::HashMap<String, Arc<PublicKey>>,
    /// Revoked token ids with their expiry.
    pub revoked: imbl::HashMap<String, u64>,
    /// The mesh's members as this node sees them (itself included).
    pub members: Arc<BTreeSet<DidKey>>,
    /// The issuer each member announced.
    pub issuers: Arc<HashMap<DidKey, String>>,
    /// The key that signs for each member now, where it differs from the DID's own (a rotated
    /// identity); handshakes and datagrams verify with it.
    pub current_keys: Arc<HashMap<DidKey, [u8; 32]>>,
    /// This node's active signing key per algorithm.
    signing: [Option<Arc<SigningKey>>; 3],
    /// A previous gateway's keys by `kid` (`meshgate import jwks`), signatures verified.
    pub legacy: imbl::HashMap<String, Arc<crate::legacy::Verifier>>,
}

/// Looks up this node's private signing keys by `kid`.
pub trait LocalKeys {
    /// The private key with this `kid`, if this node holds it.
    fn signing_key(&self, kid: &str) -> Option<Arc<SigningKey>>;
    /// This node's DID.
    fn did(&self) -> DidKey;
    /// The current members of the mesh.
    fn members(&self) -> BTreeSet<DidKey>;
    /// The issuer each member announced.
    fn issuers(&self) -> HashMap<DidKey, String>;
    /// The keys of `did`'s key event chain, inception first (records it signed verify with any).
    fn keys_of(&self, did: &DidKey) -> Vec<[u8; 32]>;
    /// The current key of every member whose identity rotated.
    fn current_keys(&self) -> HashMap<DidKey, [u8; 32]>;
}

impl View {
    /// The key that signs for `did` now: its rotated key if any, else the DID's own.
    pub fn current_key(&self, did: &DidKey) -> [u8; 32] {
        self.current_keys.get(did).copied().unwrap_or(did.public_key())
    }

    fn refresh_members(&mut self, local: &dyn LocalKeys) {
        self.members = Arc::new(local.members());
        self.issuers = Arc::new(local.issuers());
        self.current_keys = Arc::new(local.current_keys());
    }
}

impl View {
    /// Builds a view of `state` from scratch (at start).
    pub fn build(state: &State, local: &dyn LocalKeys) -> Self {
        let mut view = View::default();
        for client in state.clients.values() {
            view.apply(&Change::PutClient(client.clone()), local);
        }
        for key in state.keys.values() {
            view.apply(&Change::PutKey(key.clone()), local);
        }
        view.revoked = state.revocations.iter().map(|(k, v)| (k.clone(), *v)).collect();
        view.refresh_members(local);
        for key in state.legacy_keys.values() {
            view.apply(&Change::PutLegacyKey(key.clone()), local);
        }
        view
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &Change, local: &dyn LocalKeys) {
        match change {
            Change::PutClient(record) => {
                self.clients
                    .insert(record.client_id.clone(), Arc::new(Client::new(record.clone())));
            }
            Change::RemoveClient(id) => {
                self.clients.remove(id);
            }
            Change::PutKey(record) => match PublicKey::new(record, local) {
                Ok(key) => {
                    self.keys.insert(record.kid.clone(), Arc::new(key));
                    self.refresh_signing(key_alg(record), local);
                }
                Err(e) => tracing::warn!(kid = %record.kid, error = %e, "ignoring signing-key record"),
            },
            Change::RemoveKey(kid) => {
                if let Some(old) = self.keys.remove(kid) {
                    self.refresh_signing(Some(old.alg), local);
                }
            }
            Change::Revoke { jti, exp } => {
                self.revoked.insert(jti.clone(), *exp);
            }
            Change::DropExpiredRevocations { now } => self.revoked.retain(|_, exp| *exp > *now),
            // A key event can make admissions, removals and node information signed with a
            // rotated key verify, and changes the key a member's handshake must be signed with.
            Change::Admit(_) | Change::PutNode(_) | Change::RemoveNode(_) | Change::PutKeyEvent(_) => {
                self.refresh_members(local)
            }
            Change::PutLegacyKey(record) => {
                let chains = |did: &DidKey| local.keys_of(did);
                match crate::legacy::Verifier::new(record, &chains) {
                    Ok(key) => {
                        self.legacy.insert(record.kid.clone(), Arc::new(key));
                    }
                    Err(e) => tracing::warn!(kid = %record.kid, error = %e, "ignoring legacy-key record"),
                }
            }
            Change::RemoveLegacyKey(kid) => {
                self.legacy.remove(kid);
            }
            _ => {}
        }
    }

    /// Whether `key` may be trusted now: its node is a member and the key is still published.
    pub fn trusts(&self, key: &PublicKey, now: u64, token_ttl: u64) -> bool {
        self.members.contains(&key.record.node) && key.published(now, token_ttl)
    }

    /// This node's active signing key for `alg`.
    pub fn signing_key(&self, alg: Alg) -> Option<&Arc<SigningKey>> {
        self.signing[slot(alg)].as_ref()
    }

    fn refresh_signing(&mut self, alg: Option<Alg>, local: &dyn LocalKeys) {
        let Some(alg) = alg else { return };
        let did = local.did();
        self.signing[slot(alg)] = self
            .keys
            .values()
            .filter(|k| k.alg == alg && k.record.node == did && k.record.retired_at.is_none())
            .filter_map(|k| local.signing_key(&k.record.kid).map(|s| (k.record.created_at, s)))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.kid().cmp(b.1.kid())))
            .map(|(_, s)| s);
    }
}

fn slot(alg: Alg) -> usize {
    match alg {
        Alg::EdDSA => 0,
        Alg::ES256 => 1,
        Alg::RS256 => 2,
    }
}

fn key_alg(record: &KeyRecord) -> Option<Alg> {
    record.alg.parse().ok()
}

/// A verification key with its record.
pub struct PublicKey {
    /// The replicated record.
    pub record: KeyRecord,
    /// Its algorithm.
    pub alg: Alg,
    /// Ready to verify.
    pub decoding: jsonwebtoken::DecodingKey,
    /// The holding node's DID as text, as tokens carry it in `node`.
    pub node: String,
}

impl PublicKey {
    fn new(record: &KeyRecord, local: &dyn LocalKeys) -> Result<Self, String> {
        let chains = |did: &DidKey| local.keys_of(did);
        record.verify(&chains).map_err(|e| e.to_string())?;
        let alg: Alg = record.alg.parse()?;
        if keys::thumbprint(&record.jwk) != record.kid {
            return Err("kid is not the thumbprint of the key".into());
        }
        let decoding = keys::decoding_key(&record.jwk).map_err(|e| e.to_string())?;
        Ok(Self {
            record: record.clone(),
            alg,
            decoding,
            node: record.node.to_string(),
        })
    }

    /// Whether the key is still published (in the JWKS, accepted at introspection) at `now`:
    /// until every token it signed has expired.
    pub fn published(&self, now: u64, token_ttl: u64) -> bool {
        self.record
            .retired_at
            .is_none_or(|retired| now < retired.saturating_add(token_ttl))
    }
}

/// A client as the request path needs it: secrets decoded, keys parsed.
pub struct Client {
    /// The replicated record.
    pub record: ClientRecord,
    /// Access-token algorithm.
    pub token_alg: Option<Alg>,
    secrets: Vec<(Secret, Option<u64>)>,
    /// Keys for `private_key_jwt`.
    pub assertion_keys: Vec<AssertionKey>,
    /// When this node last authenticated the client (Unix seconds; 0 = not since the record
    /// changed); dynamically registered clients that go unused expire, see [`crate::registration`].
    pub last_used: std::sync::atomic::AtomicU64,
    /// Described by a Client ID Metadata Document ([`crate::cimd`]), not in the replicated registry.
    pub metadata_document: bool,
}

enum Secret {
    Sha256([u8; 32]),
    Argon2(String),
}

/// A public key a client signs its assertions with.
pub struct AssertionKey {
    /// Its `kid`, if the JWK has one.
    pub kid: Option<String>,
    /// The algorithm family the key fits.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Ready to verify.
    pub decoding: jsonwebtoken::DecodingKey,
    /// After this time (Unix seconds) the key no longer verifies (a rotated `client_secret_jwt`
    /// secret's grace period); `None` = no expiry.
    pub expires_at: Option<u64>,
}

impl Client {
    fn new(record: ClientRecord) -> Self {
        let secrets = record
            .secrets
            .iter()
            .filter_map(|s| {
                let secret = match &s.hash {
                    SecretHash::Sha256(b64) => {
                        Secret::Sha256(URL_SAFE_NO_PAD.decode(b64).ok()?.as_slice().try_into().ok()?)
                    }
                    SecretHash::Argon2(phc) => Secret::Argon2(phc.clone()),
                    _ => return None,
                };
                Some((secret, s.expires_at))
            })
            .collect();
        let assertion_keys = record
            .jwks
            .as_ref()
            .and_then(|set| set.get("keys"))
            .and_then(|keys| keys.as_array())
            .map(|keys| keys.iter().filter_map(AssertionKey::new).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(record.secrets.iter().filter_map(AssertionKey::hmac))
            .collect();
        let token_alg = record.token_alg.parse().ok();
        Self {
            record,
            token_alg,
            secrets,
            assertion_keys,
            last_used: std::sync::atomic::AtomicU64::new(0),
            metadata_document: false,
        }
    }

    /// A client described by a Client ID Metadata Document: `record` is built from the document
    /// ([`crate::cimd::client_record`]) and never replicated.
    pub fn from_metadata_document(record: ClientRecord) -> Self {
        Self {
            metadata_document: true,
            ..Self::new(record)
        }
    }

    /// Records a use at `now` (a relaxed store, at most once per second per client).
    pub fn touch(&self, now: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.last_used.load(Relaxed) < now {
            self.last_used.store(now, Relaxed);
        }
    }

    /// Whether the client may use `grant_type`.
    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.record.grant_types.iter().any(|g| g == grant_type)
    }

    /// Whether the client has any secret (i.e. may use `client_secret_basic`/`client_secret_post`).
    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Checks a presented secret against every unexpired secret, in constant time per hash.
    pub fn verify_secret(&self, presented: &str, now: u64, cache: &crate::auth::VerifiedSecrets) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut ok = subtle::Choice::from(0);
        for (secret, expires_at) in &self.secrets {
            if expires_at.is_some_and(|t| now >= t) {
                continue;
            }
            match secret {
                Secret::Sha256(hash) => ok |= hash.ct_eq(&digest),
                Secret::Argon2(phc) => {
                    if cache.contains(&self.record.client_id, phc, &digest) || verify_argon2(phc, presented) {
                        cache.insert(&self.record.client_id, phc, &digest);
                        ok |= subtle::Choice::from(1);
                    }
                }
            }
        }
        ok.into()
    }
}

fn verify_argon2(phc: &str, presented: &str) -> bool {
    let Ok(hash) = argon2::PasswordHash::new(phc) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(presented.as_bytes(), &hash)
        .is_ok()
}

impl AssertionKey {
    /// The HMAC key of a `client_secret_jwt` client (RFC 7523 §2.2 with HS256/384/512).
    fn hmac(secret: &mesh::state::SecretRecord) -> Option<Self> {
        let SecretHash::HmacKey(b64) = &secret.hash else {
            return None;
        };
        let key = URL_SAFE_NO_PAD.decode(b64).ok()?;
        Some(Self {
            kid: None,
            algorithms: vec![
                jsonwebtoken::Algorithm::HS256,
                jsonwebtoken::Algorithm::HS384,
                jsonwebtoken::Algorithm::HS512,
            ],
            decoding: jsonwebtoken::DecodingKey::from_secret(&key),
            expires_at: secret.expires_at,
        })
    }

    fn new(jwk: &serde_json::Value) -> Option<Self> {
        let algorithms = match jwk.get("kty")?.as_str()? {
            "RSA" => vec![jsonwebtoken::Algorithm::RS256, jsonwebtoken::Algorithm::PS256],
            "EC" if jwk.get("crv")?.as_str()? == "P-256" => vec![jsonwebtoken::Algorithm::ES256],
            "OKP" if jwk.get("crv")?.as_str()? == "Ed25519" => vec![jsonwebtoken::Algorithm::EdDSA],
            _ => return None,
        };
        let decoding = keys::decoding_key(jwk).ok()?;
        let kid = jwk.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        Some(Self {
            kid,
            algorithms,
            decoding,
            expires_at: None,
        })
    }
}
