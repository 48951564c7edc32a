//! RFC 9068 JWT access tokens: minting and validation.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keys::SigningKey;
use crate::verified::{TokenDigest, VerifiedTokens};
use crate::view::View;

/// One granted capability: `can` (a scope) on `with` (an audience), UCAN-style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    /// The audience (resource).
    pub with: String,
    /// The scope.
    pub can: String,
}

/// A JWT `aud`: one string or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// From a list: a string when there is one.
    pub fn from_list(mut list: Vec<String>) -> Self {
        if list.len() == 1 {
            Audience::One(list.remove(0))
        } else {
            Audience::Many(list)
        }
    }

    /// Whether `value` is one of the audiences.
    pub fn contains(&self, value: &str) -> bool {
        match self {
            Audience::One(a) => a == value,
            Audience::Many(list) => list.iter().any(|a| a == value),
        }
    }
}

/// The claims of a meshgate access token (RFC 9068 §2.2, plus `cap` and `node`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the client for client_credentials.
    pub sub: String,
    /// Audience(s).
    pub aud: Audience,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes; absent when none were granted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expiry.
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
    /// Capabilities: one per audience and non-OpenID scope.
    #[serde(default)]
    pub cap: Vec<Capability>,
    /// The DID of the issuing node.
    pub node: String,
    /// The acting party of a token-exchange token (RFC 8693 §4.1): `{"sub": client_id}`, with the
    /// subject token's own `act` nested inside. Absent on client_credentials tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
    /// Whether the token was minted while the upstream identity provider was unavailable, under
    /// the client's `issue_local` policy (shorter lifetime). Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
}

/// Scopes that name OpenID Connect claims rather than capabilities.
const OPENID_SCOPES: &[&str] = &["openid", "profile", "email", "address", "phone", "offline_access"];

/// The capabilities for `scopes` on `audiences`.
pub fn capabilities(audiences: &[String], scopes: &[&str]) -> Vec<Capability> {
    audiences
        .iter()
        .flat_map(|aud| {
            scopes
                .iter()
                .filter(|s| !OPENID_SCOPES.contains(s))
                .map(move |s| Capability {
                    with: aud.clone(),
                    can: (*s).to_owned(),
                })
        })
        .collect()
}

/// A new token id: 128 random bits, base64url.
pub fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("operating system random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` plus `extra` claims (added by plugins, never a claim of [`AccessClaims`]) with
/// `key`.
pub fn mint_with(
    claims: &AccessClaims,
    extra: &serde_json::Map<String, serde_json::Value>,
    key: &SigningKey,
) -> Result<String, Error> {
    let mut object = match serde_json::to_value(claims) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => return Err(Error::Key("claims: not an object".into())),
    };
    for (name, value) in extra {
        object.entry(name.clone()).or_insert_with(|| value.clone());
    }
    let json = serde_json::to_vec(&object).map_err(|e| Error::Key(format!("claims: {e}")))?;
    key.sign_jwt(&json)
}

/// Signs `claims` with `key`.
pub fn mint(claims: &AccessClaims, key: &SigningKey) -> Result<String, Error> {
    let json = serde_json::to_vec(claims).map_err(|e| Error::Key(format!("claims: {e}")))?;
    key.sign_jwt(&json)
}

/// Why a token is not active; logged at debug, never shown to the caller beyond `active: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inactive {
    /// Not a JWS, or its header or payload does not parse.
    Malformed,
    /// `typ` is not `at+jwt`.
    NotAnAccessToken,
    /// No such `kid` among the published keys, or the algorithm does not match the key.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Issued by a different issuer or by a node that does not hold the key.
    WrongIssuer,
    /// Expired or not yet valid.
    Expired,
    /// Revoked.
    Revoked,
    /// Its client no longer exists.
    UnknownClient,
    /// An `on_introspect` plugin denied it (or failed under a deny policy).
    DeniedByPlugin,
}

/// Validates an access token against the view at `now`: header, key, signature (or a remembered
/// verification of these exact bytes), issuer, time, revocation, client. Returns the claims of an
/// active token.
pub fn validate(
    token: &str,
    view: &View,
    issuer: &str,
    now: u64,
    token_ttl: u64,
    verified: &VerifiedTokens,
) -> Result<AccessClaims, Inactive> {
    if token.len() > 16 * 1024 {
        return Err(Inactive::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| Inactive::Malformed)?;
    if !matches!(header.typ.as_deref(), Some("at+jwt") | Some("application/at+jwt")) {
        return Err(Inactive::NotAnAccessToken);
    }
    let kid = header.kid.as_deref().ok_or(Inactive::UnknownKey)?;
    let key: &Arc<crate::view::PublicKey> = view.keys.get(kid).ok_or(Inactive::UnknownKey)?;
    if key.alg.jwt() != header.alg || !view.trusts(key, now, token_ttl) {
        return Err(Inactive::UnknownKey);
    }
    let digest = TokenDigest::of(token);
    let claims = if verified.contains(&digest) {
        jsonwebtoken::dangerous::insecure_decode::<AccessClaims>(token)
            .map_err(|_| Inactive::Malformed)?
            .claims
    } else {
        let mut validation = jsonwebtoken::Validation::new(key.alg.jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => Inactive::BadSignature,
                _ => Inactive::Malformed,
            })?;
        verified.insert(&digest);
        data.claims
    };
    let announced = view.issuers.get(&key.record.node).is_some_and(|i| *i == claims.iss);
    if (claims.iss != issuer && !announced) || claims.node != key.node {
        return Err(Inactive::WrongIssuer);
    }
    if now >= claims.exp || now < claims.nbf {
        return Err(Inactive::Expired);
    }
    if view.revoked.contains_key(&claims.jti) {
        return Err(Inactive::Revoked);
    }
    if !view.clients.contains_key(&claims.client_id) {
        return Err(Inactive::UnknownClient);
    }
    Ok(claims)
}
