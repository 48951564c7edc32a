//! Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3):
//! `client_secret_basic`, `client_secret_post`, `private_key_jwt` (RFC 7523 §2.2, §3) and
//! `client_secret_jwt` (the same assertion, HS256/384/512 keyed by the client secret; the MAC is
//! checked in constant time by aws-lc-rs, and the `jti` is single-use as for `private_key_jwt`).
//!
//! Exactly one method per request. Every failure is `invalid_client`; the reason is logged at debug.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::OAuthError;
use crate::form::Form;
use crate::token::Audience;
use crate::view::{Client, View};

/// RFC 7523 §2.2 assertion type.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest accepted assertion lifetime; bounds the replay cache.
const MAX_ASSERTION_LIFETIME: u64 = 3600;

/// Where the request arrived, for the assertion's `aud`.
pub struct Audiences<'a> {
    /// The issuer identifier.
    pub issuer: &'a str,
    /// The token endpoint URL.
    pub token_endpoint: &'a str,
    /// The URL of the endpoint being called.
    pub endpoint: &'a str,
}

/// Remembers `jti`s of client assertions until they expire, so each is used once.
#[derive(Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, u64>>,
}

impl ReplayCache {
    /// Records `key` until `exp`; false if it was already recorded and has not expired.
    fn first_use(&self, key: String, exp: u64, now: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, e| *e > now);
        }
        match seen.get(&key) {
            Some(e) if *e > now => false,
            _ => {
                seen.insert(key, exp);
                true
            }
        }
    }
}

/// Argon2 verifications already done, keyed by client, hash and SHA-256 of the presented secret,
/// so a low-entropy imported secret costs one slow hash per process rather than per request.
#[derive(Default)]
pub struct VerifiedSecrets {
    entries: Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl VerifiedSecrets {
    fn key(client_id: &str, phc: &str, digest: &[u8; 32]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [client_id.as_bytes(), phc.as_bytes(), digest] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    pub(crate) fn contains(&self, client_id: &str, phc: &str, digest: &[u8; 32]) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&Self::key(client_id, phc, digest))
    }

    pub(crate) fn insert(&self, client_id: &str, phc: &str, digest: &[u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(Self::key(client_id, phc, digest));
    }
}

/// Authenticates the client of a request.
pub fn authenticate(
    headers: &HeaderMap,
    form: &Form,
    view: &View,
    now: u64,
    audiences: &Audiences<'_>,
    replay: &ReplayCache,
    verified: &VerifiedSecrets,
) -> Result<Arc<Client>, OAuthError> {
    let basic = basic_credentials(headers)?;
    let post_secret = form.single("client_secret")?;
    let assertion = form.single("client_assertion")?;
    let assertion_type = form.single("client_assertion_type")?;
    let form_client_id = form.single("client_id")?;
    let methods = basic.is_some() as u8 + post_secret.is_some() as u8 + assertion.is_some() as u8;
    if methods > 1 {
        return Err(OAuthError::invalid_request(
            "use exactly one client authentication method",
        ));
    }
    let failed = |why: &'static str| {
        tracing::debug!(reason = why, "client authentication failed");
        OAuthError::invalid_client("client authentication failed")
    };
    if let Some((id, secret)) = basic {
        if form_client_id.is_some_and(|f| f != id) {
            return Err(OAuthError::invalid_request(
                "client_id does not match the Authorization header",
            ));
        }
        return by_secret(view, &id, &secret, now, verified)
            .ok_or_else(|| failed("basic: unknown client or wrong secret"));
    }
    if let Some(secret) = post_secret {
        let id = form_client_id.ok_or_else(|| OAuthError::invalid_request("client_secret without client_id"))?;
        return by_secret(view, id, secret, now, verified)
            .ok_or_else(|| failed("post: unknown client or wrong secret"));
    }
    if let Some(assertion) = assertion {
        if assertion_type != Some(JWT_BEARER_ASSERTION) {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type must be {JWT_BEARER_ASSERTION}"
            )));
        }
        return by_assertion(view, assertion, form_client_id, now, audiences, replay).map_err(failed);
    }
    Err(failed("no client authentication"))
}

/// The `client_secret_basic` or `client_secret_post` credentials of a request, when it uses
/// exactly that one method; `None` otherwise (no secret, several methods, malformed: let
/// [`authenticate`] answer those).
pub fn secret_credentials(headers: &HeaderMap, form: &Form) -> Option<(String, String)> {
    let basic = basic_credentials(headers).ok()?;
    let post_secret = form.single("client_secret").ok()?;
    let form_client_id = form.single("client_id").ok()?;
    if form.single("client_assertion").ok()?.is_some() {
        return None;
    }
    match (basic, post_secret) {
        (Some((id, secret)), None) if form_client_id.is_none_or(|f| f == id) => Some((id, secret)),
        (None, Some(secret)) => Some((form_client_id?.to_owned(), secret.to_owned())),
        _ => None,
    }
}

fn by_secret(view: &View, id: &str, secret: &str, now: u64, verified: &VerifiedSecrets) -> Option<Arc<Client>> {
    let client = view.clients.get(id)?;
    client.verify_secret(secret, now, verified).then(|| client.clone())
}

/// Parses `Authorization: Basic` (RFC 6749 §2.3.1: both parts form-urlencoded).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(OAuthError::invalid_request("repeated Authorization header"));
    }
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "unsupported Authorization scheme; use Basic",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((form_decode(id), form_decode(secret))))
}

fn form_decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    jti: String,
}

fn by_assertion(
    view: &View,
    assertion: &str,
    form_client_id: Option<&str>,
    now: u64,
    audiences: &Audiences<'_>,
    replay: &ReplayCache,
) -> Result<Arc<Client>, &'static str> {
    use jsonwebtoken::Algorithm;
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| "assertion: malformed header")?;
    if !matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::PS256
            | Algorithm::ES256
            | Algorithm::EdDSA
            | Algorithm::HS256
            | Algorithm::HS384
            | Algorithm::HS512
    ) {
        return Err("assertion: algorithm not allowed");
    }
    let unverified = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
        .map_err(|_| "assertion: malformed claims")?
        .claims;
    if unverified.iss != unverified.sub || form_client_id.is_some_and(|id| id != unverified.sub) {
        return Err("assertion: iss, sub and client_id differ");
    }
    let client = view.clients.get(&unverified.sub).ok_or("assertion: unknown client")?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    let claims = client
        .assertion_keys
        .iter()
        .filter(|k| k.algorithms.contains(&header.alg))
        .filter(|k| k.expires_at.is_none_or(|t| now < t))
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        .find_map(|k| jsonwebtoken::decode::<AssertionClaims>(assertion, &k.decoding, &validation).ok())
        .ok_or("assertion: signature does not verify with the client's keys")?
        .claims;
    if claims.sub != unverified.sub {
        return Err("assertion: claims changed");
    }
    let aud_ok = [audiences.issuer, audiences.token_endpoint, audiences.endpoint]
        .iter()
        .any(|a| claims.aud.contains(a));
    if !aud_ok {
        return Err("assertion: aud names neither the issuer nor the endpoint");
    }
    if now >= claims.exp || claims.exp > now + MAX_ASSERTION_LIFETIME || claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err("assertion: expired, not yet valid or lives too long");
    }
    if claims.jti.is_empty() || !replay.first_use(format!("{}\u{0}{}", claims.sub, claims.jti), claims.exp, now) {
        return Err("assertion: jti missing or already used");
    }
    Ok(client.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6749 §2.3.1: form-urlencode id and secret, join with `:`, base64.
    fn encode_basic(id: &str, secret: &str) -> String {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        )
    }

    proptest! {
        #[test]
        fn basic_credentials_round_trip(id in "\\PC{1,24}", secret in "\\PC{1,40}") {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, encode_basic(&id, &secret).parse().unwrap());
            let decoded = basic_credentials(&headers).unwrap();
            prop_assert_eq!(decoded, Some((id, secret)));
        }

        #[test]
        fn any_authorization_value_is_an_answer_not_a_panic(value in "[ -~]{0,80}") {
            let mut headers = HeaderMap::new();
            if let Ok(value) = value.parse() {
                headers.insert(header::AUTHORIZATION, value);
                if let Err(e) = basic_credentials(&headers) {
                    prop_assert_eq!(e.code(), "invalid_client");
                }
            }
        }
    }
}
