//! Password hashes as meshgate keeps them: its own argon2 PHC strings, and hashes imported from
//! another identity provider (Keycloak's PBKDF2 and argon2 credentials) kept exactly as they were,
//! so users sign in with their old passwords and no password is ever known in the clear.
//!
//! Every verification compares in constant time (aws-lc-rs's PBKDF2 verify; the argon2 crate's
//! verifier).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};

/// Iterations above which an imported PBKDF2 hash is refused (a hostile export could otherwise
/// make every login burn seconds of CPU).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// The PRF of a PBKDF2 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pbkdf2Prf {
    /// HMAC-SHA-1 (Keycloak's legacy `pbkdf2`).
    Sha1,
    /// HMAC-SHA-256 (`pbkdf2-sha256`).
    Sha256,
    /// HMAC-SHA-512 (`pbkdf2-sha512`).
    Sha512,
}

/// A stored password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PasswordHash {
    /// An argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`): meshgate's own, and
    /// Keycloak's argon2 credentials converted losslessly.
    Argon2 {
        /// The PHC string.
        phc: String,
    },
    /// PBKDF2 as Keycloak stores it: the derived key is as long as `hash`.
    Pbkdf2 {
        /// The PRF.
        prf: Pbkdf2Prf,
        /// Iteration count.
        iterations: u32,
        /// The salt, base64 (standard alphabet, padded).
        salt: String,
        /// The derived key, base64 (standard alphabet, padded).
        hash: String,
    },
}

impl PasswordHash {
    /// Hashes `password` with argon2id (meshgate's default) and a random salt.
    pub fn argon2(password: &str) -> Result<Self, String> {
        use argon2::PasswordHasher;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| format!("random: {e}"))?;
        let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
        let phc = argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| format!("argon2: {e}"))?;
        Ok(Self::Argon2 { phc: phc.to_string() })
    }

    /// Whether `password` matches, in constant time. A malformed hash never matches.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            Self::Argon2 { phc } => {
                use argon2::PasswordVerifier;
                let Ok(parsed) = argon2::PasswordHash::new(phc) else {
                    return false;
                };
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            }
            Self::Pbkdf2 {
                prf,
                iterations,
                salt,
                hash,
            } => {
                use aws_lc_rs::pbkdf2;
                let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
                    return false;
                };
                let Some(iterations) = std::num::NonZeroU32::new(*iterations) else {
                    return false;
                };
                if iterations.get() > MAX_PBKDF2_ITERATIONS || hash.is_empty() {
                    return false;
                }
                let algorithm = match prf {
                    Pbkdf2Prf::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
                    Pbkdf2Prf::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
                    Pbkdf2Prf::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
                };
                pbkdf2::verify(algorithm, iterations, &salt, password.as_bytes(), &hash).is_ok()
            }
        }
    }

    /// Reads a Keycloak password credential: `secretData` (`{"value": base64 hash, "salt": base64
    /// salt}`) and `credentialData` (`{"hashIterations": n, "algorithm": "pbkdf2-sha256"}`, or for
    /// argon2 also `type`, `version`, `memory`, `parallelism`, `hashLength`), both JSON strings as
    /// a realm export holds them.
    pub fn from_keycloak(secret_data: &str, credential_data: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Secret {
            value: String,
            #[serde(default)]
            salt: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Credential {
            #[serde(default)]
            hash_iterations: Option<i64>,
            algorithm: String,
            #[serde(default)]
            additional_parameters: serde_json::Map<String, serde_json::Value>,
        }
        let secret: Secret = serde_json::from_str(secret_data).map_err(|e| format!("secretData: {e}"))?;
        let credential: Credential =
            serde_json::from_str(credential_data).map_err(|e| format!("credentialData: {e}"))?;
        let salt = secret.salt.ok_or("secretData: no salt")?;
        let salt_bytes = STANDARD.decode(&salt).map_err(|e| format!("secretData.salt: {e}"))?;
        let hash_bytes = STANDARD
            .decode(&secret.value)
            .map_err(|e| format!("secretData.value: {e}"))?;
        let iterations = credential.hash_iterations.ok_or("credentialData: no hashIterations")?;
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|i| (1..=MAX_PBKDF2_ITERATIONS).contains(i))
            .ok_or_else(|| format!("credentialData.hashIterations: {iterations} is out of range"))?;
        let prf = match credential.algorithm.as_str() {
            "pbkdf2" => Pbkdf2Prf::Sha1,
            "pbkdf2-sha256" => Pbkdf2Prf::Sha256,
            "pbkdf2-sha512" => Pbkdf2Prf::Sha512,
            "argon2" => {
                let param = |name: &str| {
                    credential.additional_parameters.get(name).and_then(|v| {
                        v.as_array()
                            .and_then(|a| a.first())
                            .and_then(|s| s.as_str())
                            .map(str::to_owned)
                            .or_else(|| v.as_str().map(str::to_owned))
                    })
                };
                let variant = param("type").unwrap_or_else(|| "id".into());
                let version = param("version").unwrap_or_else(|| "1.3".into());
                let memory: u32 = param("memory").and_then(|m| m.parse().ok()).unwrap_or(7168);
                let parallelism: u32 = param("parallelism").and_then(|m| m.parse().ok()).unwrap_or(1);
                let version = match version.as_str() {
                    "1.3" => 19,
                    "1.0" => 16,
                    other => return Err(format!("argon2 version {other} is not supported")),
                };
                if !["id", "i", "d"].contains(&variant.as_str()) {
                    return Err(format!("argon2 type {variant} is not supported"));
                }
                let phc = format!(
                    "$argon2{variant}$v={version}$m={memory},t={iterations},p={parallelism}${}${}",
                    STANDARD_NO_PAD.encode(&salt_bytes),
                    STANDARD_NO_PAD.encode(&hash_bytes)
                );
                argon2::PasswordHash::new(&phc).map_err(|e| format!("argon2 parameters: {e}"))?;
                return Ok(Self::Argon2 { phc });
            }
            other => return Err(format!("hash algorithm `{other}` is not supported")),
        };
        if hash_bytes.is_empty() {
            return Err("secretData.value: empty hash".into());
        }
        Ok(Self::Pbkdf2 {
            prf,
            iterations,
            salt: STANDARD.encode(salt_bytes),
            hash: STANDARD.encode(hash_bytes),
        })
    }
}

impl PasswordHash {
    /// The string a user record stores: the argon2 PHC string as it is, or for PBKDF2 a PHC-style
    /// `$pbkdf2-sha256$i=27500$SALT$HASH` (salt and hash in padded standard base64, as Keycloak
    /// keeps them).
    pub fn to_stored(&self) -> String {
        match self {
            Self::Argon2 { phc } => phc.clone(),
            Self::Pbkdf2 {
                prf,
                iterations,
                salt,
                hash,
            } => {
                let prf = match prf {
                    Pbkdf2Prf::Sha1 => "pbkdf2-sha1",
                    Pbkdf2Prf::Sha256 => "pbkdf2-sha256",
                    Pbkdf2Prf::Sha512 => "pbkdf2-sha512",
                };
                format!("${prf}$i={iterations}${salt}${hash}")
            }
        }
    }

    /// Reads [`PasswordHash::to_stored`]'s string; anything not PBKDF2 is taken as an argon2 PHC
    /// string (checked when verified).
    pub fn from_stored(stored: &str) -> Self {
        let pbkdf2 = || {
            let mut parts = stored.strip_prefix('$')?.split('$');
            let prf = match parts.next()? {
                "pbkdf2-sha1" => Pbkdf2Prf::Sha1,
                "pbkdf2-sha256" => Pbkdf2Prf::Sha256,
                "pbkdf2-sha512" => Pbkdf2Prf::Sha512,
                _ => return None,
            };
            let iterations = parts.next()?.strip_prefix("i=")?.parse().ok()?;
            let salt = parts.next()?.to_owned();
            let hash = parts.next()?.to_owned();
            parts.next().is_none().then_some(Self::Pbkdf2 {
                prf,
                iterations,
                salt,
                hash,
            })
        };
        pbkdf2().unwrap_or_else(|| Self::Argon2 { phc: stored.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_strings_round_trip() {
        let hash = keycloak("pbkdf2-sha256", 27_500, SHA256_VECTOR);
        let stored = hash.to_stored();
        assert!(stored.starts_with("$pbkdf2-sha256$i=27500$"), "{stored}");
        let back = PasswordHash::from_stored(&stored);
        assert_eq!(back, hash);
        assert!(back.verify("correct horse"));
        let argon = PasswordHash::argon2("pw").unwrap();
        assert_eq!(PasswordHash::from_stored(&argon.to_stored()), argon);
        assert!(!PasswordHash::from_stored("$pbkdf2-sha256$i=x$a$b").verify("pw"));
        assert!(!PasswordHash::from_stored("").verify(""));
    }

    /// A vector computed independently with Python:
    /// `base64.b64encode(hashlib.pbkdf2_hmac('sha256', b'correct horse', b'keycloak-salt-16', 27500, 64))`,
    /// the parameters of Keycloak's `pbkdf2-sha256` provider (27500 iterations, 512-bit key).
    const SHA256_VECTOR: &str = include_str!("password_vectors/pbkdf2-sha256.txt");
    /// The same with `sha512`, 210000 iterations (Keycloak 24's `pbkdf2-sha512` default).
    const SHA512_VECTOR: &str = include_str!("password_vectors/pbkdf2-sha512.txt");

    fn keycloak(algorithm: &str, iterations: u32, vector: &str) -> PasswordHash {
        let secret = serde_json::json!({
            "value": vector.trim(),
            "salt": STANDARD.encode(b"keycloak-salt-16"),
            "additionalParameters": {}
        })
        .to_string();
        let credential = serde_json::json!({
            "hashIterations": iterations,
            "algorithm": algorithm,
            "additionalParameters": {}
        })
        .to_string();
        PasswordHash::from_keycloak(&secret, &credential).unwrap()
    }

    #[test]
    fn keycloak_pbkdf2_sha256_verifies_as_it_is() {
        let hash = keycloak("pbkdf2-sha256", 27_500, SHA256_VECTOR);
        assert!(hash.verify("correct horse"));
        assert!(!hash.verify("correct horsE"));
        assert!(!hash.verify(""));
    }

    #[test]
    fn keycloak_pbkdf2_sha512_verifies_as_it_is() {
        let hash = keycloak("pbkdf2-sha512", 210_000, SHA512_VECTOR);
        assert!(hash.verify("correct horse"));
        assert!(!hash.verify("wrong"));
        // The same derived key under the wrong PRF or iteration count does not verify.
        assert!(!keycloak("pbkdf2-sha256", 210_000, SHA512_VECTOR).verify("correct horse"));
        assert!(!keycloak("pbkdf2-sha512", 27_500, SHA512_VECTOR).verify("correct horse"));
    }

    #[test]
    fn keycloak_argon2_becomes_a_phc_string_that_verifies() {
        use argon2::{Algorithm, Argon2, Params, Version};
        let salt = b"keycloak-salt-16";
        let mut out = [0u8; 32];
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(7168, 5, 1, Some(32)).unwrap(),
        )
        .hash_password_into(b"s3cret", salt, &mut out)
        .unwrap();
        let secret = serde_json::json!({"value": STANDARD.encode(out), "salt": STANDARD.encode(salt)}).to_string();
        let credential = serde_json::json!({
            "hashIterations": 5, "algorithm": "argon2",
            "additionalParameters": {"hashLength": ["32"], "memory": ["7168"], "type": ["id"], "version": ["1.3"], "parallelism": ["1"]}
        })
        .to_string();
        let hash = PasswordHash::from_keycloak(&secret, &credential).unwrap();
        assert!(matches!(hash, PasswordHash::Argon2 { .. }));
        assert!(hash.verify("s3cret"));
        assert!(!hash.verify("s3cre"));
    }

    #[test]
    fn bad_credentials_are_refused_with_a_reason() {
        let secret = serde_json::json!({"value": "AAAA", "salt": "AAAA"}).to_string();
        for (credential, needle) in [
            (r#"{"hashIterations": 1, "algorithm": "md5"}"#, "md5"),
            (r#"{"hashIterations": 0, "algorithm": "pbkdf2-sha256"}"#, "out of range"),
            (
                r#"{"hashIterations": 99999999999, "algorithm": "pbkdf2-sha256"}"#,
                "out of range",
            ),
            (r#"{"algorithm": "pbkdf2-sha256"}"#, "hashIterations"),
            ("not json", "credentialData"),
        ] {
            let error = PasswordHash::from_keycloak(&secret, credential).unwrap_err();
            assert!(error.contains(needle), "{credential}: {error}");
        }
    }

    #[test]
    fn own_argon2_hashes_verify() {
        let hash = PasswordHash::argon2("pw").unwrap();
        assert!(hash.verify("pw"));
        assert!(!hash.verify("pW"));
    }
}
