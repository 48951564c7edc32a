//! Federated clients: clients whose credentials live at an upstream identity provider
//! (`client add --upstream NAME --client-id ID`, or any unknown client id when the upstream has
//! `federate_unknown_clients: true`). The request flow is in `http/federated.rs`; this module
//! holds its pure parts: scope mapping by policy, and the salted slow hashes of the secrets the
//! upstream accepted, which let the client authenticate locally while the upstream is down.
//!
//! Secrets: a presented secret is forwarded to the upstream and, once accepted, hashed with
//! argon2 (random per-record salt) into the replicated client record. The plaintext is never
//! stored or logged. Verifying a presented secret against the stored hashes runs argon2 once per
//! process and secret; the outcome is remembered in [`crate::auth::VerifiedSecrets`] (keyed by a
//! SHA-256 of the secret, in memory only), so the hot path stays fast.

use std::collections::BTreeMap;

use argon2::{PasswordHasher, PasswordVerifier};
use mesh::state::VerifiedSecret;
use sha2::{Digest, Sha256};

use crate::auth::VerifiedSecrets;

/// How many upstream-accepted secrets a record keeps (the newest), so that agents using the old
/// and the new secret during a rotation at the upstream do not rewrite the record in turn.
pub const MAX_VERIFIED_SECRETS: usize = 2;

/// `mapped`: the agent receives a local token carrying the upstream token's mapped claims.
pub const MODE_MAPPED: &str = "mapped";
/// `passthrough`: the agent receives the upstream's token itself.
pub const MODE_PASSTHROUGH: &str = "passthrough";

/// Whether `mode` is a valid `--mode` (unset means [`MODE_MAPPED`]).
pub fn valid_mode(mode: Option<&str>) -> bool {
    matches!(mode, None | Some(MODE_MAPPED) | Some(MODE_PASSTHROUGH))
}

/// Maps upstream scopes to local scopes through `scope_map` (an empty map is the identity; an
/// upstream scope without an entry maps to nothing), in first-seen order without duplicates.
pub fn map_scopes<'a>(
    scope_map: &BTreeMap<String, Vec<String>>,
    upstream: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut local: Vec<String> = Vec::new();
    for scope in upstream {
        if scope_map.is_empty() {
            if !local.iter().any(|s| s == scope) {
                local.push(scope.to_owned());
            }
            continue;
        }
        for mapped in scope_map.get(scope).into_iter().flatten() {
            if !local.iter().any(|s| s == mapped) {
                local.push(mapped.clone());
            }
        }
    }
    local
}

/// The upstream scopes to ask for so that the local scopes `requested` can be granted: those
/// whose mapping yields at least one of them (the identity when `scope_map` is empty).
pub fn upstream_scopes_for(scope_map: &BTreeMap<String, Vec<String>>, requested: &[&str]) -> Vec<String> {
    if scope_map.is_empty() {
        return requested.iter().map(|s| (*s).to_owned()).collect();
    }
    scope_map
        .iter()
        .filter(|(_, local)| local.iter().any(|l| requested.contains(&l.as_str())))
        .map(|(upstream, _)| upstream.clone())
        .collect()
}

/// Narrows `granted` (already mapped) to the client's allowed scopes (when it has any) and to
/// the `requested` ones (when the request named some). Never adds a scope.
pub fn narrow(granted: Vec<String>, allowed: &[String], requested: Option<&[&str]>) -> Vec<String> {
    granted
        .into_iter()
        .filter(|scope| allowed.is_empty() || allowed.contains(scope))
        .filter(|scope| requested.is_none_or(|requested| requested.contains(&scope.as_str())))
        .collect()
}

/// A salted argon2 hash (PHC string) of a secret the upstream accepted.
pub fn hash_secret(secret: &str, now: u64) -> Result<VerifiedSecret, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("random salt: {e}"))?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| format!("argon2: {e}"))?;
    Ok(VerifiedSecret {
        hash: hash.to_string(),
        verified_at: now,
    })
}

/// Whether `presented` matches one of `stored`: first through `cache` (no slow hash), else by
/// argon2, remembering a match. Call from a blocking thread when the cache may miss.
pub fn verify_secret(client_id: &str, stored: &[VerifiedSecret], presented: &str, cache: &VerifiedSecrets) -> bool {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    stored.iter().any(|record| {
        if cache.contains(client_id, &record.hash, &digest) {
            return true;
        }
        let Ok(hash) = argon2::PasswordHash::new(&record.hash) else {
            return false;
        };
        let ok = argon2::Argon2::default()
            .verify_password(presented.as_bytes(), &hash)
            .is_ok();
        if ok {
            cache.insert(client_id, &record.hash, &digest);
        }
        ok
    })
}

/// Whether `presented` matches one of `stored` according to `cache` alone (no slow hash).
pub fn cached_match(client_id: &str, stored: &[VerifiedSecret], presented: &str, cache: &VerifiedSecrets) -> bool {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    stored
        .iter()
        .any(|record| cache.contains(client_id, &record.hash, &digest))
}

/// Remembers in `cache` that `presented` matches `record` (just hashed from it).
pub fn remember(client_id: &str, record: &VerifiedSecret, presented: &str, cache: &VerifiedSecrets) {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    cache.insert(client_id, &record.hash, &digest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn scope_mapping_never_widens() {
        let empty = BTreeMap::new();
        assert_eq!(map_scopes(&empty, ["read", "write", "read"]), ["read", "write"]);
        let policy = map(&[("api.read", &["read"]), ("api.admin", &["read", "write"])]);
        assert_eq!(map_scopes(&policy, ["api.read", "openid"]), ["read"]);
        assert_eq!(map_scopes(&policy, ["api.admin", "api.read"]), ["read", "write"]);
        assert!(
            map_scopes(&policy, ["write"]).is_empty(),
            "unmapped scopes grant nothing"
        );
        assert_eq!(upstream_scopes_for(&policy, &["write"]), ["api.admin"]);
        assert_eq!(upstream_scopes_for(&empty, &["write"]), ["write"]);
        let granted = vec!["read".to_owned(), "write".to_owned()];
        assert_eq!(narrow(granted.clone(), &[], None), granted);
        assert_eq!(narrow(granted.clone(), &["read".to_owned()], None), ["read"]);
        assert_eq!(narrow(granted.clone(), &[], Some(&["write", "admin"])), ["write"]);
    }

    #[test]
    fn hashes_are_salted_and_verify_through_the_cache() {
        let a = hash_secret("correct horse", 10).unwrap();
        let b = hash_secret("correct horse", 10).unwrap();
        assert_ne!(a.hash, b.hash, "each record has its own salt");
        assert!(!a.hash.contains("correct horse"));
        let cache = VerifiedSecrets::default();
        assert!(!cached_match("c", std::slice::from_ref(&a), "correct horse", &cache));
        assert!(verify_secret("c", std::slice::from_ref(&a), "correct horse", &cache));
        assert!(cached_match("c", std::slice::from_ref(&a), "correct horse", &cache));
        assert!(!verify_secret("c", std::slice::from_ref(&a), "wrong", &cache));
        assert!(!cached_match(
            "other",
            std::slice::from_ref(&a),
            "correct horse",
            &cache
        ));
        assert!(valid_mode(None) && valid_mode(Some("passthrough")) && !valid_mode(Some("x")));
    }
}
