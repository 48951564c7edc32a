//! Cutover without invalidating tokens: the previous gateway's public keys
//! ([`mesh::legacy::LegacyKey`], imported with `meshgate import jwks URL|FILE --until TIME
//! --issuer ISS`) are listed in every node's JWKS and its tokens are accepted at introspection —
//! signature by one of those keys, the recorded issuer, expiry, audience untouched, revocation by
//! `jti` — until the records' `until`, after which they are neither published nor trusted (and
//! maintenance drops them from the replicated state).

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use mesh::legacy::LegacyKey;
use serde_json::{Value, json};

use crate::error::Error;
use crate::view::View;

/// Claims copied from a legacy token into the introspection answer (RFC 7662 §2.2 members).
const INTROSPECTED: &[&str] = &[
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
    "username",
];

/// A legacy key ready to verify with.
pub struct Verifier {
    /// The replicated record.
    pub record: LegacyKey,
    /// The algorithms the key may verify (from its JWK's `alg`, else its type).
    pub algorithms: Vec<Algorithm>,
    /// The verification key.
    pub decoding: jsonwebtoken::DecodingKey,
}

impl Verifier {
    /// Checks the record (signature by its author's keys) and prepares its key.
    pub fn new(record: &LegacyKey, chains: &dyn mesh::kel::KeyChains) -> Result<Self, String> {
        record.verify(chains).map_err(|e| e.to_string())?;
        let algorithms = algorithms_of(&record.jwk)?;
        let decoding = crate::keys::decoding_key(&record.jwk).map_err(|e| e.to_string())?;
        Ok(Self {
            record: record.clone(),
            algorithms,
            decoding,
        })
    }

    /// Whether the key is published and trusted at `now` (its author still a member).
    pub fn live(&self, view: &View, now: u64) -> bool {
        now < self.record.until && view.members.contains(&self.record.added_by)
    }

    /// The JWK as published.
    pub fn published(&self) -> Value {
        let mut jwk = self.record.jwk.clone();
        if let Some(map) = jwk.as_object_mut() {
            map.insert("kid".into(), self.record.kid.clone().into());
            map.entry("use").or_insert_with(|| "sig".into());
        }
        jwk
    }
}

/// The asymmetric JWS algorithms a public JWK may verify.
fn algorithms_of(jwk: &Value) -> Result<Vec<Algorithm>, String> {
    if let Some(alg) = jwk.get("alg").and_then(Value::as_str) {
        let alg: Algorithm = alg.parse().map_err(|_| format!("unknown alg `{alg}`"))?;
        let allowed = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        return if allowed.contains(&alg) {
            Ok(vec![alg])
        } else {
            Err(format!("alg `{alg:?}` is not an asymmetric signature algorithm"))
        };
    }
    Ok(
        match (
            jwk.get("kty").and_then(Value::as_str),
            jwk.get("crv").and_then(Value::as_str),
        ) {
            (Some("RSA"), _) => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256],
            (Some("EC"), Some("P-256")) => vec![Algorithm::ES256],
            (Some("EC"), Some("P-384")) => vec![Algorithm::ES384],
            (Some("OKP"), Some("Ed25519")) => vec![Algorithm::EdDSA],
            _ => return Err("unsupported key type".into()),
        },
    )
}

/// The previous gateway's keys to publish at `now`.
pub fn published(view: &View, now: u64) -> Vec<Value> {
    let mut keys: Vec<&Arc<Verifier>> = view.legacy.values().filter(|k| k.live(view, now)).collect();
    keys.sort_by(|a, b| a.record.kid.cmp(&b.record.kid));
    keys.iter().map(|k| k.published()).collect()
}

/// Validates a token of the previous gateway: header `kid` naming a live legacy key (or, without
/// a `kid`, any live one), signature, `iss` equal to the key's recorded issuer, `exp` in the
/// future, `nbf` passed, and its `jti` not revoked. Answers the introspection members.
pub fn validate(view: &View, token: &str, now: u64) -> Option<Value> {
    if view.legacy.is_empty() {
        return None;
    }
    let header = jsonwebtoken::decode_header(token).ok()?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_aud = false;
    // Expiry and not-before are checked below against meshgate's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
    let candidates = view
        .legacy
        .values()
        .filter(|k| k.live(view, now))
        .filter(|k| k.algorithms.contains(&header.alg))
        .filter(|k| header.kid.as_deref().is_none_or(|kid| kid == k.record.kid));
    for key in candidates {
        validation.set_issuer(&[&key.record.issuer]);
        let Ok(data) = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) else {
            continue;
        };
        let claims = data.claims;
        // jsonwebtoken checks exp/nbf against the system clock; meshgate's clock decides.
        let exp = claims.get("exp").and_then(Value::as_u64)?;
        if now >= exp || claims.get("nbf").and_then(Value::as_u64).is_some_and(|nbf| nbf > now) {
            return None;
        }
        if let Some(jti) = claims.get("jti").and_then(Value::as_str)
            && view.revoked.contains_key(jti)
        {
            return None;
        }
        let mut answer = json!({"active": true, "token_type": "Bearer"});
        for member in INTROSPECTED {
            if let Some(value) = claims.get(*member) {
                answer[*member] = value.clone();
            }
        }
        if answer.get("client_id").is_none()
            && let Some(azp) = claims.get("azp")
        {
            answer["client_id"] = azp.clone();
        }
        answer["legacy"] = true.into();
        return Some(answer);
    }
    None
}

/// Records for every public key of `jwks` (a JWK Set), issued by `issuer`, trusted until `until`.
pub fn records(
    jwks: &Value,
    issuer: &str,
    until: u64,
    identity: &mesh::identity::NodeIdentity,
    now: u64,
) -> Result<Vec<LegacyKey>, Error> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Admin("not a JWK Set: no `keys` array".into()))?;
    if until <= now {
        return Err(Error::Admin("--until must be in the future".into()));
    }
    crate::config::Issuer::parse(issuer).map_err(|e| Error::Admin(format!("--issuer: {e}")))?;
    let mut out = Vec::new();
    for (index, jwk) in keys.iter().enumerate() {
        if jwk.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
            continue; // encryption keys sign no tokens
        }
        let Some(map) = jwk.as_object() else {
            return Err(Error::Admin(format!("keys[{index}] is not an object")));
        };
        // Keep the public members only, whatever the file holds.
        let private = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
        if private.iter().any(|m| map.contains_key(*m)) {
            return Err(Error::Admin(format!(
                "keys[{index}] holds private or symmetric key material; give the public JWKS"
            )));
        }
        algorithms_of(jwk).map_err(|e| Error::Admin(format!("keys[{index}]: {e}")))?;
        crate::keys::decoding_key(jwk).map_err(|e| Error::Admin(format!("keys[{index}]: {e}")))?;
        let kid = jwk
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| crate::keys::thumbprint(jwk));
        if kid.is_empty() || kid.len() > 256 {
            return Err(Error::Admin(format!("keys[{index}]: unusable kid")));
        }
        out.push(LegacyKey::sign(
            identity,
            kid,
            jwk.clone(),
            issuer.to_owned(),
            until,
            now,
        ));
    }
    if out.is_empty() {
        return Err(Error::Admin("the JWKS holds no signature keys".into()));
    }
    Ok(out)
}

/// Reads a JWKS from a file or an `http(s)` URL (bounded: 1 MiB, 30 s).
pub fn fetch(source: &str) -> Result<Value, Error> {
    let text = if source.starts_with("https://") || source.starts_with("http://") {
        crate::tls::install_crypto_provider();
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Admin(format!("HTTP client: {e}")))?;
        let response = client
            .get(source)
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|e| Error::Admin(format!("GET {source}: {e}")))?;
        let bytes = response
            .bytes()
            .map_err(|e| Error::Admin(format!("GET {source}: {e}")))?;
        if bytes.len() > 1024 * 1024 {
            return Err(Error::Admin(format!("{source}: larger than 1 MiB")));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        crate::import::read_file(std::path::Path::new(source))?
    };
    serde_json::from_str(&text).map_err(|e| Error::Admin(format!("{source}: not JSON: {e}")))
}
