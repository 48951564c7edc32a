//! The node's long-term identity: a [`DidKey`] named after its inception key, and the ed25519 key
//! that currently signs for it (the inception key until the first rotation, see [`crate::kel`]).

use std::sync::{PoisonError, RwLock};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::did::DidKey;
use crate::kel::KeyEvent;
use crate::keystore::KeyStore;

/// The key store entry holding the inception key's 32-byte ed25519 seed (the DID's key).
pub const IDENTITY_KEY_NAME: &str = "node.ed25519";
/// The key store entry holding the current key after a rotation: its event's seq (u64, big-endian)
/// and its 32-byte seed. Absent: the inception key is current (seq 0).
pub const CURRENT_KEY_NAME: &str = "node.current.ed25519";
/// The key store entry holding the pre-committed next key's 32-byte seed.
pub const NEXT_KEY_NAME: &str = "node.next.ed25519";

/// The node identity. Its `Debug` output never shows a secret key.
///
/// It is shared (`Arc`) by everything that signs for the node; [`NodeIdentity::rotate`] replaces
/// the current key in place, so every later signature uses the new one.
pub struct NodeIdentity {
    did: DidKey,
    keys: RwLock<Keys>,
}

struct Keys {
    /// Seq of the key event that made `current` current.
    seq: u64,
    current: SigningKey,
    next: SigningKey,
}

impl NodeIdentity {
    /// Loads the identity from `store`, generating and storing what is missing: the inception key
    /// (a new identity) and the next key (a data directory from before pre-rotation, or a rotation
    /// interrupted between writing the current and the next key).
    pub fn load_or_generate(store: &dyn KeyStore) -> Result<Self, Error> {
        let inception = match store.load(IDENTITY_KEY_NAME)? {
            Some(seed) => seed_of(store, IDENTITY_KEY_NAME, &seed)?,
            None => {
                let seed = random_seed()?;
                store.store(IDENTITY_KEY_NAME, &seed)?;
                seed
            }
        };
        let (seq, current) = match store.load(CURRENT_KEY_NAME)? {
            Some(bytes) if bytes.len() == 40 => {
                let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
                (seq, seed_of(store, CURRENT_KEY_NAME, &bytes[8..])?)
            }
            Some(_) => {
                return Err(Error::MalformedKey {
                    path: store.describe(CURRENT_KEY_NAME),
                    reason: "the current key is a seq (8 bytes) and an ed25519 seed (32 bytes)",
                });
            }
            None => (0, inception),
        };
        let next = match store.load(NEXT_KEY_NAME)? {
            Some(seed) if seed != current => seed_of(store, NEXT_KEY_NAME, &seed)?,
            _ => {
                let seed = random_seed()?;
                store.store(NEXT_KEY_NAME, &seed)?;
                seed
            }
        };
        Ok(Self::from_keys(inception, seq, current, next))
    }

    /// The identity with the given inception seed, not yet rotated, whose next key is derived from
    /// the seed (deterministic: for tests and simulations; a node uses
    /// [`NodeIdentity::load_or_generate`], whose next key is random).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let next: [u8; 32] = Sha256::new()
            .chain_update(b"meshgate-test-next-key")
            .chain_update(seed)
            .finalize()
            .into();
        Self::from_keys(seed, 0, seed, next)
    }

    /// Rotates: the pre-committed next key becomes current and a fresh next key is committed to.
    /// The new key files are stored (current first, then next) before this returns the event to
    /// publish; until it is published, peers keep expecting the previous key.
    pub fn rotate(&self, store: &dyn KeyStore) -> Result<KeyEvent, Error> {
        let next_seed = random_seed()?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let mut current = (keys.seq + 1).to_be_bytes().to_vec();
        current.extend_from_slice(&keys.next.to_bytes());
        store.store(CURRENT_KEY_NAME, &current)?;
        store.store(NEXT_KEY_NAME, &next_seed)?;
        Ok(Self::advance(&mut keys, self.did, next_seed))
    }

    /// Rotates like [`NodeIdentity::rotate`], in memory only, committing to the key of `next_seed`
    /// (tests and simulations).
    pub fn rotate_with_seed(&self, next_seed: [u8; 32]) -> KeyEvent {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        Self::advance(&mut keys, self.did, next_seed)
    }

    /// The node's DID: its inception key's, whatever key is current.
    pub fn did(&self) -> DidKey {
        self.did
    }

    /// The current key's ed25519 public key.
    pub fn current_key(&self) -> [u8; 32] {
        self.read().current.verifying_key().to_bytes()
    }

    /// The seq of the key event that made the current key current (0: the inception key).
    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// The key event for the current key, committing to the next key: what the state must hold
    /// under this identity's latest seq.
    pub fn event(&self) -> KeyEvent {
        let keys = self.read();
        KeyEvent::sign(self.did, keys.seq, &keys.current, &keys.next.verifying_key().to_bytes())
    }

    /// What `state` must gain so that it agrees with the key files: the event for the current key
    /// if it is not published yet (a new identity, a data directory from before pre-rotation, or a
    /// rotation interrupted between writing its key files and publishing its event), else nothing.
    ///
    /// Fails with [`Error::IdentityKeyMismatch`] if the state holds a different event under the
    /// current seq, or already an event after it: the key files are not the ones that signed.
    pub fn reconcile(&self, state: &crate::state::State) -> Result<Option<KeyEvent>, Error> {
        let event = self.event();
        let mismatch = |reason| Error::IdentityKeyMismatch {
            did: self.did,
            seq: event.seq,
            reason,
        };
        if state
            .key_events
            .contains_key(&crate::kel::event_key(&self.did, event.seq + 1))
        {
            return Err(mismatch("the state already holds a later rotation"));
        }
        match state.key_events.get(&event.key()) {
            Some(published) if *published == event => Ok(None),
            Some(_) => Err(mismatch("the published event names another key or next key")),
            None => Ok(Some(event)),
        }
    }

    /// Signs `message` with the current key; the signature is 64 bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.read().current.sign(message).to_bytes()
    }

    fn from_keys(inception: [u8; 32], seq: u64, current: [u8; 32], next: [u8; 32]) -> Self {
        let did = DidKey::from_public_key(SigningKey::from_bytes(&inception).verifying_key().to_bytes());
        Self {
            did,
            keys: RwLock::new(Keys {
                seq,
                current: SigningKey::from_bytes(&current),
                next: SigningKey::from_bytes(&next),
            }),
        }
    }

    fn advance(keys: &mut Keys, did: DidKey, next_seed: [u8; 32]) -> KeyEvent {
        let next = SigningKey::from_bytes(&next_seed);
        keys.seq += 1;
        keys.current = std::mem::replace(&mut keys.next, next);
        KeyEvent::sign(did, keys.seq, &keys.current, &keys.next.verifying_key().to_bytes())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("did", &self.did)
            .field("seq", &self.seq())
            .finish_non_exhaustive()
    }
}

/// Verifies that `signature` over `message` was made by the key that `did` names (its inception
/// key; see [`verify_with`] for a DID's whole key chain).
pub fn verify(did: &DidKey, message: &[u8], signature: &[u8], what: &str) -> Result<(), Error> {
    verify_with(&[did.public_key()], message, signature, what)
}

/// Verifies that `signature` over `message` was made by one of `keys` (ed25519 public keys).
pub fn verify_with(keys: &[[u8; 32]], message: &[u8], signature: &[u8], what: &str) -> Result<(), Error> {
    let bad = || Error::BadSignature { what: what.to_owned() };
    let signature = Signature::from_slice(signature).map_err(|_| bad())?;
    let verifies =
        // Strict: a small-order (weak) key, or a non-canonical R, would let anyone forge
        // signatures that pass the unreduced equation for every message.
        |key: &[u8; 32]| VerifyingKey::from_bytes(key).is_ok_and(|key| key.verify_strict(message, &signature).is_ok());
    if keys.iter().any(verifies) { Ok(()) } else { Err(bad()) }
}

fn seed_of(store: &dyn KeyStore, name: &str, bytes: &[u8]) -> Result<[u8; 32], Error> {
    bytes.try_into().map_err(|_| Error::MalformedKey {
        path: store.describe(name),
        reason: "an ed25519 seed is 32 bytes",
    })
}

fn random_seed() -> Result<[u8; 32], Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| Error::Random)?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kel;
    use crate::keystore::FileKeyStore;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let id = NodeIdentity::from_seed([7; 32]);
        let sig = id.sign(b"hello");
        verify(&id.did(), b"hello", &sig, "test").unwrap();
        assert!(verify(&id.did(), b"hellO", &sig, "test").is_err());
        let other = NodeIdentity::from_seed([8; 32]);
        assert!(verify(&other.did(), b"hello", &sig, "test").is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let id = NodeIdentity::from_seed([9; 32]);
        let shown = format!("{id:?}");
        assert!(shown.contains("did:key:z6Mk"));
        assert!(!shown.contains("9, 9"));
    }

    #[test]
    fn rotation_keeps_the_did_and_signs_with_the_committed_key() {
        let id = NodeIdentity::from_seed([1; 32]);
        let inception = id.event();
        assert_eq!((inception.seq, inception.key), (0, id.did().public_key()));
        let rotation = id.rotate_with_seed([2; 32]);
        assert_eq!(id.did(), inception.did);
        assert_eq!((rotation.seq, rotation.key), (1, id.current_key()));
        assert_eq!(kel::digest(&rotation.key), inception.next);
        let sig = id.sign(b"m");
        assert!(verify(&id.did(), b"m", &sig, "t").is_err());
        verify_with(&[id.current_key()], b"m", &sig, "t").unwrap();
    }

    #[test]
    fn reconcile_publishes_what_is_missing_and_refuses_foreign_key_files() {
        let id = NodeIdentity::from_seed([1; 32]);
        let mut state = crate::state::State::default();
        let inception = id.reconcile(&state).unwrap().unwrap();
        state.apply(&crate::state::Change::PutKeyEvent(inception));
        assert_eq!(id.reconcile(&state).unwrap(), None);
        // Same inception, another next key: not the key files that signed the event.
        let other = NodeIdentity::from_keys([1; 32], 0, [1; 32], [5; 32]);
        assert!(matches!(
            other.reconcile(&state),
            Err(Error::IdentityKeyMismatch { .. })
        ));
        let rotation = id.rotate_with_seed([2; 32]);
        state.apply(&crate::state::Change::PutKeyEvent(rotation));
        // Key files from before the rotation.
        assert!(NodeIdentity::from_seed([1; 32]).reconcile(&state).is_err());
        assert_eq!(id.reconcile(&state).unwrap(), None);
    }

    #[test]
    fn rotation_persists_and_an_old_data_dir_gains_a_next_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::open(dir.path()).unwrap();
        store.store(IDENTITY_KEY_NAME, &[3; 32]).unwrap(); // a data dir from before pre-rotation
        let id = NodeIdentity::load_or_generate(&store).unwrap();
        assert_eq!(id.seq(), 0);
        assert!(store.load(NEXT_KEY_NAME).unwrap().is_some());
        let committed = id.event().next;
        let event = id.rotate(&store).unwrap();
        assert_eq!(kel::digest(&event.key), committed);
        let again = NodeIdentity::load_or_generate(&store).unwrap();
        assert_eq!((again.did(), again.seq(), again.event()), (id.did(), 1, event.clone()));
        // Interrupted after the current key was written: the next key is generated afresh.
        store
            .store(NEXT_KEY_NAME, &store.load(CURRENT_KEY_NAME).unwrap().unwrap()[8..])
            .unwrap();
        let resumed = NodeIdentity::load_or_generate(&store).unwrap();
        assert_eq!((resumed.seq(), resumed.current_key()), (1, event.key));
        assert_ne!(resumed.event().next, event.next);
    }
}
