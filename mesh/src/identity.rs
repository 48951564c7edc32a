//! The node's long-term identity: an ed25519 key named by its [`DidKey`].

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::Error;
use crate::did::DidKey;
use crate::keystore::KeyStore;

/// The key store entry holding the identity's 32-byte ed25519 seed.
pub const IDENTITY_KEY_NAME: &str = "node.ed25519";

/// The node identity. Its `Debug` output never shows the secret key.
pub struct NodeIdentity {
    key: SigningKey,
    did: DidKey,
}

impl NodeIdentity {
    /// Loads the identity from `store`, generating and storing a fresh one if there is none.
    pub fn load_or_generate(store: &dyn KeyStore) -> Result<Self, Error> {
        if let Some(seed) = store.load(IDENTITY_KEY_NAME)? {
            let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| Error::MalformedKey {
                path: store.describe(IDENTITY_KEY_NAME),
                reason: "an ed25519 seed is 32 bytes",
            })?;
            return Ok(Self::from_seed(seed));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| Error::Random)?;
        store.store(IDENTITY_KEY_NAME, &seed)?;
        Ok(Self::from_seed(seed))
    }

    /// The identity with the given ed25519 seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let did = DidKey::from_public_key(key.verifying_key().to_bytes());
        Self { key, did }
    }

    /// The node's DID.
    pub fn did(&self) -> DidKey {
        self.did
    }

    /// Signs `message`; the signature is 64 bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("did", &self.did)
            .finish_non_exhaustive()
    }
}

/// Verifies that `signature` over `message` was made by the key that `did` names.
pub fn verify(did: &DidKey, message: &[u8], signature: &[u8], what: &str) -> Result<(), Error> {
    let bad = || Error::BadSignature { what: what.to_owned() };
    let key = VerifyingKey::from_bytes(&did.public_key()).map_err(|_| bad())?;
    let signature = Signature::from_slice(signature).map_err(|_| bad())?;
    key.verify(message, &signature).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
