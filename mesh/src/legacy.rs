//! Keys of a previous (central) gateway, published next to the mesh's own during a cutover.
//!
//! `meshgate import jwks` writes one [`LegacyKey`] per public key of the old gateway's JWKS: every
//! node lists it in its JWKS, and introspection accepts the old gateway's tokens signed by it
//! (checked against the recorded issuer) — until `until`, after which the key is dropped
//! everywhere. Each record is signed by the member that imported it and verified on read, like
//! every record that grants trust.
//!
//! Stored in the document's `keys` map under [`LEGACY_KEY_PREFIX`] (no RFC 7638 thumbprint starts
//! with it); a build that predates legacy keys reads such an entry as a malformed signing key and
//! skips it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::did::DidKey;
use crate::identity::{self, NodeIdentity};
use crate::kel::KeyChains;

/// The prefix of legacy-key entries in the document's `keys` map.
pub const LEGACY_KEY_PREFIX: &str = "legacy|";

/// A previous gateway's public key, trusted until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyKey {
    /// The key's id: the JWK's `kid` (or its RFC 7638 thumbprint when it has none).
    pub kid: String,
    /// The public key as the old gateway published it (private members never stored).
    pub jwk: serde_json::Value,
    /// The issuer (`iss`) of the tokens this key signed.
    pub issuer: String,
    /// After this time (Unix seconds) the key is neither published nor trusted.
    pub until: u64,
    /// The member that imported it.
    pub added_by: DidKey,
    /// When (Unix seconds).
    pub added_at: u64,
    /// `added_by`'s signature over the other fields, base64url.
    pub signature: String,
}

impl LegacyKey {
    /// A record for `jwk` signed by `identity`.
    pub fn sign(
        identity: &NodeIdentity,
        kid: String,
        jwk: serde_json::Value,
        issuer: String,
        until: u64,
        now: u64,
    ) -> Self {
        let mut record = Self {
            kid,
            jwk,
            issuer,
            until,
            added_by: identity.did(),
            added_at: now,
            signature: String::new(),
        };
        record.signature = URL_SAFE_NO_PAD.encode(identity.sign(&record.signed_bytes()));
        record
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            "legacy-key",
            &self.kid,
            &self.jwk,
            &self.issuer,
            self.until,
            &self.added_by,
            self.added_at,
        );
        serde_json::to_vec(&fields).unwrap_or_default()
    }

    /// Checks the signature against `added_by`'s keys.
    pub fn verify(&self, chains: &dyn KeyChains) -> Result<(), Error> {
        let what = format!("legacy key {}", self.kid);
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| Error::BadSignature { what: what.clone() })?;
        identity::verify_with(&chains.keys_of(&self.added_by), &self.signed_bytes(), &signature, &what)
    }

    /// Its entry key in the document's `keys` map.
    pub fn entry(&self) -> String {
        format!("{LEGACY_KEY_PREFIX}{}", self.kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kel::NoRotation;

    #[test]
    fn signature_verifies_and_detects_tampering() {
        let id = NodeIdentity::from_seed([3; 32]);
        let key = LegacyKey::sign(
            &id,
            "old-1".into(),
            serde_json::json!({"kty": "EC"}),
            "https://auth.corp".into(),
            100,
            10,
        );
        key.verify(&NoRotation).unwrap();
        for tampered in [
            LegacyKey {
                until: 1_000,
                ..key.clone()
            },
            LegacyKey {
                issuer: "https://evil".into(),
                ..key.clone()
            },
            LegacyKey {
                added_by: NodeIdentity::from_seed([4; 32]).did(),
                ..key.clone()
            },
        ] {
            assert!(tampered.verify(&NoRotation).is_err());
        }
    }
}
