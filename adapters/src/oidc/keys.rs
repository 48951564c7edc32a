//! The upstream's signature keys and offline verification of upstream JWTs against them.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::Error;
use crate::config::SignatureAlgorithm;
use crate::error::untrusted;

/// Longest token accepted for verification, in bytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The claims of an upstream token that passed [verification](crate::oidc::OidcProvider::verify).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct VerifiedClaims {
    /// `iss`: the upstream's issuer, exactly as configured.
    pub issuer: String,
    /// `sub`, if present.
    pub subject: Option<String>,
    /// `aud`, as a list (a single string becomes one entry).
    pub audience: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// `nbf`, Unix seconds, if present.
    pub not_before: Option<u64>,
    /// `iat`, Unix seconds, if present.
    pub issued_at: Option<u64>,
    /// The `kid` of the key that verified the token, if the token named one.
    pub key_id: Option<String>,
    /// The algorithm that verified the token.
    pub algorithm: SignatureAlgorithm,
    /// Every claim of the token, the ones above included, for claim mapping.
    pub claims: Map<String, Value>,
}

impl VerifiedClaims {
    /// A claim by name.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// The space-separated `scope` claim (RFC 9068 §2.2.3), split; empty when absent.
    pub fn scopes(&self) -> Vec<&str> {
        self.claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|scope| scope.split(' ').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// `client_id` (RFC 9068 §2.2) or, for ID tokens, `azp`, if present.
    pub fn client_id(&self) -> Option<&str> {
        self.claims
            .get("client_id")
            .or_else(|| self.claims.get("azp"))
            .and_then(Value::as_str)
    }
}

/// A token's JOSE header, as far as key selection needs it.
#[derive(Debug)]
pub(crate) struct TokenHeader {
    pub(crate) algorithm: SignatureAlgorithm,
    pub(crate) kid: Option<String>,
}

/// Reads the header of a compact JWS without trusting anything in it: the algorithm must be on
/// `allowed`, a `crit` header is refused (no extension is understood), a JWE is refused.
pub(crate) fn parse_header(token: &str, allowed: &[SignatureAlgorithm]) -> Result<TokenHeader, Error> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::MalformedToken("the token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Error::MalformedToken("not a compact JWS of three parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Error::MalformedToken("the header is not base64url"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| Error::MalformedToken("the header is not a JSON object"))?;
    let Some(Value::String(name)) = header.get("alg") else {
        return Err(Error::MalformedToken("the header has no `alg`"));
    };
    let algorithm = SignatureAlgorithm::from_name(name)
        .filter(|algorithm| allowed.contains(algorithm))
        .ok_or_else(|| Error::AlgorithmNotAllowed(untrusted(name)))?;
    if header.contains_key("crit") {
        return Err(Error::MalformedToken("the header has critical extensions"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Error::MalformedToken("the header's `kid` is not a string")),
    };
    Ok(TokenHeader { algorithm, kid })
}

/// One usable upstream key.
struct Key {
    kid: Option<String>,
    algorithms: Vec<SignatureAlgorithm>,
    decoding: DecodingKey,
}

/// The usable keys of one fetched JWKS.
pub(crate) struct KeySet {
    keys: Vec<Key>,
    /// When the JWKS was fetched, since the Unix epoch.
    pub(crate) fetched_at: Duration,
    /// The JWKS document as fetched, for the disk cache.
    pub(crate) document: Value,
}

impl KeySet {
    /// Keeps the keys of `document` (a JWK Set, RFC 7517 §5) that can verify one of `allowed`:
    /// signature keys (no `use` other than `sig`, `key_ops` with `verify` if any), whose own
    /// `alg`, if given, is allowed and fits the key type; RSA keys of 2048 bits or more, P-256
    /// and P-384 EC keys, Ed25519 OKP keys. Symmetric keys and unknown key types are skipped
    /// (RFC 7517 §5: ignore what is not understood). Fails with [`Error::InvalidDocument`] when
    /// the document is not a JWK Set and with [`Error::NoUsableKeys`] when nothing is left.
    pub(crate) fn parse(document: Value, allowed: &[SignatureAlgorithm], fetched_at: Duration) -> Result<Self, Error> {
        let Some(Value::Array(entries)) = document.get("keys") else {
            return Err(Error::InvalidDocument {
                what: "JWKS",
                reason: "it has no `keys` array".into(),
            });
        };
        let keys: Vec<Key> = entries.iter().filter_map(|entry| usable_key(entry, allowed)).collect();
        if keys.is_empty() {
            return Err(Error::NoUsableKeys);
        }
        Ok(Self {
            keys,
            fetched_at,
            document,
        })
    }

    /// How many usable keys the set holds.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token` (whose header is `header`) with the key its `kid` names; `validation`
    /// checks the signature, `iss` and `aud`; `exp` and `nbf` are checked here against `now`
    /// with no leeway.
    pub(crate) fn verify(
        &self,
        token: &str,
        header: &TokenHeader,
        validation: &Validation,
        now: Duration,
    ) -> Result<VerifiedClaims, Error> {
        let key = self.find(header)?;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation).map_err(verification_error)?;
        let claims = data.claims;
        let expires_at = numeric_date(claims.get("exp")).ok_or(Error::MissingClaim("exp"))?;
        let not_before = match claims.get("nbf") {
            None => None,
            value => Some(numeric_date(value).ok_or(Error::MissingClaim("nbf"))?),
        };
        let now = now.as_secs();
        if now >= expires_at {
            return Err(Error::Expired { exp: expires_at });
        }
        if let Some(nbf) = not_before.filter(|nbf| now < *nbf) {
            return Err(Error::NotYetValid { nbf });
        }
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(Error::MissingClaim("iss"))?
            .to_owned();
        let audience = match claims.get("aud") {
            Some(Value::String(audience)) => vec![audience.clone()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => return Err(Error::MissingClaim("aud")),
        };
        Ok(VerifiedClaims {
            issuer,
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            audience,
            expires_at,
            not_before,
            issued_at: numeric_date(claims.get("iat")),
            key_id: header.kid.clone(),
            algorithm: header.algorithm,
            claims,
        })
    }

    /// The key for `header`: the one with its `kid` (which must fit its `alg`), or, for a token
    /// without `kid`, the only key for its `alg`.
    fn find(&self, header: &TokenHeader) -> Result<&Key, Error> {
        let fits = |key: &&Key| key.algorithms.contains(&header.algorithm);
        match &header.kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|key| key.kid.as_deref() == Some(kid.as_str()))
                    .peekable();
                if named.peek().is_none() {
                    return Err(Error::UnknownKey {
                        kid: Some(untrusted(kid)),
                    });
                }
                named.find(fits).ok_or_else(|| Error::KeyAlgorithmMismatch {
                    kid: untrusted(kid),
                    alg: header.algorithm.as_str(),
                })
            }
            None => {
                let mut candidates = self.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => Ok(key),
                    _ => Err(Error::UnknownKey { kid: None }),
                }
            }
        }
    }
}

/// The [`Validation`] for tokens signed with `algorithm`: signature with exactly that algorithm,
/// `iss` equal to `issuer`, `audience` in `aud`; `exp`, `iss` and `aud` required; the time checks
/// are left to [`KeySet::verify`], which uses the injected clock (`leeway` 0).
pub(crate) fn validation(algorithm: SignatureAlgorithm, issuer: &str, audience: Option<&str>) -> Validation {
    let mut validation = Validation::new(jose_algorithm(algorithm));
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = true;
    validation.set_issuer(&[issuer]);
    validation.aud = audience.map(|audience| std::iter::once(audience.to_owned()).collect());
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation
}

fn jose_algorithm(algorithm: SignatureAlgorithm) -> Algorithm {
    match algorithm {
        SignatureAlgorithm::RS256 => Algorithm::RS256,
        SignatureAlgorithm::RS384 => Algorithm::RS384,
        SignatureAlgorithm::RS512 => Algorithm::RS512,
        SignatureAlgorithm::PS256 => Algorithm::PS256,
        SignatureAlgorithm::PS384 => Algorithm::PS384,
        SignatureAlgorithm::PS512 => Algorithm::PS512,
        SignatureAlgorithm::ES256 => Algorithm::ES256,
        SignatureAlgorithm::ES384 => Algorithm::ES384,
        SignatureAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn usable_key(entry: &Value, allowed: &[SignatureAlgorithm]) -> Option<Key> {
    use SignatureAlgorithm as A;
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|usage| *usage != PublicKeyUse::Signature)
    {
        return None;
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|operations| !operations.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let by_type: &[SignatureAlgorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = URL_SAFE_NO_PAD.decode(&rsa.n).ok()?;
            let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return None;
            }
            &[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[A::ES256],
            EllipticCurve::P384 => &[A::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => &[A::EdDSA],
        _ => return None,
    };
    let declared = match common.key_algorithm {
        // `none`, HS*, encryption algorithms and unknown names map to no signature algorithm.
        Some(declared) => Some(SignatureAlgorithm::from_name(&format!("{declared:?}"))?),
        None => None,
    };
    let algorithms: Vec<_> = by_type
        .iter()
        .copied()
        .filter(|algorithm| declared.is_none_or(|declared| declared == *algorithm))
        .filter(|algorithm| allowed.contains(algorithm))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    Some(Key {
        kid: common.key_id.clone(),
        algorithms,
        decoding: DecodingKey::from_jwk(&jwk).ok()?,
    })
}

/// A NumericDate (RFC 7519 §2): a non-negative JSON number of seconds, fractions truncated.
fn numeric_date(value: Option<&Value>) -> Option<u64> {
    let number = value?.as_number()?;
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0 && *seconds < u64::MAX as f64)
            .map(|seconds| seconds as u64)
    })
}

fn verification_error(error: jsonwebtoken::errors::Error) -> Error {
    match error.into_kind() {
        ErrorKind::InvalidIssuer => Error::WrongIssuer,
        ErrorKind::InvalidAudience => Error::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
            Error::MissingClaim(match claim.as_str() {
                "iss" => "iss",
                "aud" => "aud",
                "exp" => "exp",
                "nbf" => "nbf",
                _ => "sub",
            })
        }
        ErrorKind::Base64(_) => Error::MalformedToken("a part is not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => Error::MalformedToken("the claims are not a JSON object"),
        ErrorKind::InvalidToken => Error::MalformedToken("not a compact JWS"),
        // Bad signature, or a key the crypto provider refuses for this algorithm.
        _ => Error::InvalidSignature,
    }
}
