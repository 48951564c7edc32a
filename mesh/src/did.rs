//! `did:key` for ed25519 public keys: `did:key:z` + base58btc(`0xed 0x01` ‖ key).
//!
//! See the did:key method specification, §2 ("Format") and the multicodec table (`ed25519-pub` = 0xed).

use std::fmt;
use std::str::FromStr;

use crate::Error;

const PREFIX: &str = "did:key:z";
const ED25519_MULTICODEC: [u8; 2] = [0xed, 0x01];

/// A `did:key` naming an ed25519 public key. Always well formed: it can only be built from a key
/// or parsed from a valid string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DidKey([u8; 32]);

impl DidKey {
    /// The `did:key` of an ed25519 public key.
    pub fn from_public_key(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// The ed25519 public key this DID names.
    pub fn public_key(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Display for DidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; 34];
        bytes[..2].copy_from_slice(&ED25519_MULTICODEC);
        bytes[2..].copy_from_slice(&self.0);
        write!(f, "{PREFIX}{}", bs58::encode(bytes).into_string())
    }
}

impl fmt::Debug for DidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for DidKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let encoded = s
            .strip_prefix(PREFIX)
            .ok_or(Error::InvalidDid("must start with did:key:z (base58btc)"))?;
        let bytes = bs58::decode(encoded)
            .into_vec()
            .map_err(|_| Error::InvalidDid("not base58btc"))?;
        if bytes.len() != 34 || bytes[..2] != ED25519_MULTICODEC {
            return Err(Error::InvalidDid(
                "not an ed25519 public key (multicodec 0xed01, 32 bytes)",
            ));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[2..]);
        Ok(Self(key))
    }
}

impl serde::Serialize for DidKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DidKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Test vectors from the did:key method specification (ed25519 section).
    const SPEC_VECTORS: [&str; 3] = [
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
        "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
    ];

    #[test]
    fn spec_vectors_round_trip() {
        for vector in SPEC_VECTORS {
            let did: DidKey = vector.parse().unwrap();
            assert_eq!(did.to_string(), vector);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "did:key:",
            "did:web:example.com",
            "did:key:6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
            "did:key:z0OIl",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", // secp256k1
        ] {
            assert!(bad.parse::<DidKey>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(key in any::<[u8; 32]>()) {
            let did = DidKey::from_public_key(key);
            let text = did.to_string();
            prop_assert!(text.starts_with("did:key:z6Mk"));
            prop_assert_eq!(text.parse::<DidKey>().unwrap(), did);
        }

        #[test]
        fn parser_never_panics(s in "\\PC*") {
            let _ = s.parse::<DidKey>();
        }
    }
}
