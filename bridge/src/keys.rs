//! Signing keys: generation, the public JWK and its RFC 7638 thumbprint (`kid`), and JWS signing.
//!
//! Private keys are held as parsed aws-lc-rs key pairs for the life of the process, and each key's
//! protected header is encoded once: `jsonwebtoken::encode` re-parses the PKCS#8 key on every call,
//! which costs as much as the signature itself. Verification goes through `jsonwebtoken`.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// JWS algorithms meshgate signs access tokens with (RFC 7518 §3.1, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Alg {
    /// Ed25519 (RFC 8037); the default.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256; the one RFC 9068 requires support for.
    RS256,
}

impl Alg {
    /// Every algorithm, each of which has a signing key from the first start.
    pub const ALL: [Alg; 3] = [Alg::EdDSA, Alg::ES256, Alg::RS256];

    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
        }
    }

    /// The matching `jsonwebtoken` algorithm.
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Alg::ES256 => jsonwebtoken::Algorithm::ES256,
            Alg::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "EdDSA" => Ok(Alg::EdDSA),
            "ES256" => Ok(Alg::ES256),
            "RS256" => Ok(Alg::RS256),
            other => Err(format!(
                "unsupported algorithm `{other}` (expected EdDSA, ES256 or RS256)"
            )),
        }
    }
}

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private signing key with its precomputed JWS header. `Debug` never shows the key.
pub struct SigningKey {
    kid: String,
    alg: Alg,
    jwk: serde_json::Value,
    header_b64: String,
    signer: Signer,
}

impl SigningKey {
    /// Generates a new key; returns it with its PKCS#8 encoding for the key store.
    pub fn generate(alg: Alg) -> Result<(Self, Vec<u8>), Error> {
        let rng = SystemRandom::new();
        let failed = |what: &str| Error::Key(format!("cannot generate {alg} key: {what}"));
        let pkcs8 = match alg {
            Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| failed("ed25519"))?
                .as_ref()
                .to_vec(),
            Alg::ES256 => EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| failed("p-256"))?
                .as_ref()
                .to_vec(),
            Alg::RS256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| failed("rsa"))?;
                pair.as_der().map_err(|_| failed("rsa encoding"))?.as_ref().to_vec()
            }
        };
        Ok((Self::from_pkcs8(alg, &pkcs8)?, pkcs8))
    }

    /// Loads a key from its PKCS#8 encoding.
    pub fn from_pkcs8(alg: Alg, pkcs8: &[u8]) -> Result<Self, Error> {
        let rejected = |e: aws_lc_rs::error::KeyRejected| Error::Key(format!("{alg} key rejected: {e}"));
        let (signer, jwk) = match alg {
            Alg::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(rejected)?;
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                (Signer::Ed(pair), json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
            }
            Alg::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(rejected)?;
                let point = pair.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(Error::Key("unexpected P-256 public key encoding".into()));
                }
                let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
                let y = URL_SAFE_NO_PAD.encode(&point[33..]);
                (Signer::Ec(pair), json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}))
            }
            Alg::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(rejected)?;
                let public = pair.public_key();
                let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
                let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
                (Signer::Rsa(pair), json!({"kty": "RSA", "n": n, "e": e}))
            }
        };
        let kid = thumbprint(&jwk);
        let header = json!({"alg": alg.as_str(), "kid": kid, "typ": "at+jwt"});
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        Ok(Self {
            kid,
            alg,
            jwk,
            header_b64,
            signer,
        })
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public key as a JWK, without `kid`/`alg`/`use`.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// Signs `claims` (a JSON object) as a compact JWS with header `{alg, kid, typ: "at+jwt"}`.
    pub fn sign_jwt(&self, claims: &[u8]) -> Result<String, Error> {
        let claims_len = base64::encoded_len(claims.len(), false).unwrap_or(0);
        let mut out = String::with_capacity(self.header_b64.len() + claims_len + 2 + 342);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let signature = self.sign(out.as_bytes())?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        Ok(out)
    }

    /// Signs `claims` as a compact JWS with header `{alg, kid, typ}` (e.g. `typ: "JWT"` for an
    /// OpenID Connect ID token).
    pub fn sign_jwt_typ(&self, claims: &[u8], typ: &str) -> Result<String, Error> {
        let header = json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": typ});
        let mut out = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let signature = self.sign(out.as_bytes())?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        Ok(out)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let failed = || Error::Key(format!("{} signature failed", self.alg));
        match &self.signer {
            Signer::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Signer::Ec(pair) => {
                let rng = SystemRandom::new();
                Ok(pair.sign(&rng, message).map_err(|_| failed())?.as_ref().to_vec())
            }
            Signer::Rsa(pair) => {
                let rng = SystemRandom::new();
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&sig::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| failed())?;
                Ok(signature)
            }
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of a public JWK: its required members in
/// lexicographic order, without whitespace.
pub fn thumbprint(jwk: &serde_json::Value) -> String {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("OKP") => &["crv", "kty", "x"],
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        _ => &["kty"],
    };
    let canonical: serde_json::Map<String, serde_json::Value> =
        members.iter().map(|m| (m.to_string(), jwk[*m].clone())).collect();
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

/// A public key's JWK as published in the JWKS: the key members plus `kid`, `alg` and `use`.
pub fn published_jwk(jwk: &serde_json::Value, kid: &str, alg: &str) -> serde_json::Value {
    let mut out = jwk.clone();
    if let Some(map) = out.as_object_mut() {
        map.insert("kid".into(), kid.into());
        map.insert("alg".into(), alg.into());
        map.insert("use".into(), "sig".into());
    }
    out
}

/// A `jsonwebtoken` decoding key for a public JWK of algorithm `alg`.
pub fn decoding_key(jwk: &serde_json::Value) -> Result<jsonwebtoken::DecodingKey, Error> {
    let parsed: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk.clone()).map_err(|e| Error::Key(format!("malformed JWK: {e}")))?;
    jsonwebtoken::DecodingKey::from_jwk(&parsed).map_err(|e| Error::Key(format!("unusable JWK: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(thumbprint(&jwk), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn every_algorithm_signs_tokens_jsonwebtoken_verifies() {
        for alg in Alg::ALL {
            let (key, pkcs8) = SigningKey::generate(alg).unwrap();
            let reloaded = SigningKey::from_pkcs8(alg, &pkcs8).unwrap();
            assert_eq!(reloaded.kid(), key.kid());
            let token = key.sign_jwt(br#"{"sub":"x"}"#).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            let decoding = decoding_key(key.public_jwk()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg.jwt());
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
            assert_eq!(data.claims["sub"], "x");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let (key, _) = SigningKey::generate(Alg::EdDSA).unwrap();
        assert!(!format!("{key:?}").contains("signer"));
    }
}
