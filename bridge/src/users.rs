//! People who log in at `/authorize`: `meshgate user add|list|remove|passwd|consents|revoke-consent`,
//! and clients of the authorization code flow (`meshgate client add --redirect-uri`).
//!
//! Users replicate through the mesh (see [`mesh::login`]), so a user added on one node logs in on
//! every node. Passwords are stored as argon2 PHC strings; users imported from Keycloak keep their
//! PBKDF2 hashes as they were ([`crate::password::PasswordHash::to_stored`]).

use argon2::{PasswordHasher, PasswordVerifier};
use mesh::login::{ConsentRecord, LoginChange, UserRecord};
use mesh::state::{Change, ClientRecord, SecretRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::Error;
use crate::keys::Alg;
use crate::node::Node;

/// Grant types of an authorization-code client.
pub const CODE_GRANTS: [&str; 2] = ["authorization_code", "refresh_token"];

/// A user, consent or code-flow-client command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum UserRequest {
    /// Adds a user.
    Add {
        /// Login name.
        username: String,
        /// Password (hashed with argon2 before it is stored).
        password: String,
        /// Full name.
        #[serde(default)]
        name: Option<String>,
        /// E-mail address.
        #[serde(default)]
        email: Option<String>,
    },
    /// Lists users (never password hashes).
    List,
    /// Removes a user and their consents.
    Remove {
        /// Login name.
        username: String,
    },
    /// Changes a user's password.
    Passwd {
        /// Login name.
        username: String,
        /// The new password.
        password: String,
    },
    /// Lists a user's remembered consents.
    Consents {
        /// Login name.
        username: String,
    },
    /// Forgets a user's consent to a client (the next login asks again).
    RevokeConsent {
        /// Login name.
        username: String,
        /// The client.
        client_id: String,
    },
    /// Registers a client of the authorization code flow.
    AddCodeClient {
        /// Display name.
        name: String,
        /// Redirect URIs (exact match; any port for loopback IP literals).
        redirect_uris: Vec<String>,
        /// Where RP-initiated logout may return to.
        #[serde(default)]
        post_logout_redirect_uris: Vec<String>,
        /// Allowed scopes.
        scopes: Vec<String>,
        /// Allowed audiences.
        #[serde(default)]
        audiences: Vec<String>,
        /// A public client (`token_endpoint_auth_method: none`, PKCE only); else it gets a secret.
        #[serde(default)]
        public: bool,
        /// Access-token algorithm.
        #[serde(default)]
        token_alg: Option<Alg>,
        /// ID-token algorithm (default RS256).
        #[serde(default)]
        id_token_alg: Option<Alg>,
    },
    /// Links an upstream identity to a new meshgate user `upstream:<upstream>:<subject>` without a
    /// password, so that it may sign in through "Sign in with …" when the upstream's login is
    /// configured with `users: existing` (see [`crate::http::upstream_login`]).
    Link {
        /// The upstream's configured `name`.
        upstream: String,
        /// The identity's `sub` at the upstream.
        subject: String,
        /// Full name.
        #[serde(default)]
        name: Option<String>,
        /// E-mail address.
        #[serde(default)]
        email: Option<String>,
    },
    /// Registers a client of the device flow (RFC 8628): grants the device code and
    /// refresh_token, and with redirect URIs the authorization code flow too.
    AddDeviceClient {
        /// Display name.
        name: String,
        /// Redirect URIs, if it also uses the code flow.
        #[serde(default)]
        redirect_uris: Vec<String>,
        /// Where RP-initiated logout may return to.
        #[serde(default)]
        post_logout_redirect_uris: Vec<String>,
        /// Allowed scopes.
        scopes: Vec<String>,
        /// Allowed audiences.
        #[serde(default)]
        audiences: Vec<String>,
        /// A public client (`token_endpoint_auth_method: none`); else it gets a secret.
        #[serde(default)]
        public: bool,
        /// Access-token algorithm.
        #[serde(default)]
        token_alg: Option<Alg>,
        /// ID-token algorithm (default RS256).
        #[serde(default)]
        id_token_alg: Option<Alg>,
    },
    /// Imports users with password hashes from another identity provider (`meshgate import`),
    /// the hashes kept as they are; existing usernames are skipped.
    Import {
        /// The users.
        users: Vec<ImportUser>,
        /// Report only.
        #[serde(default)]
        dry_run: bool,
    },
}

/// A user of [`UserRequest::Import`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportUser {
    /// Login name.
    pub username: String,
    /// The stored hash ([`crate::password::PasswordHash::to_stored`]).
    pub password: String,
    /// Full name.
    #[serde(default)]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
}

/// Executes `request` on `node`; returns the answer and the changes to apply.
pub fn execute(node: &Node, request: UserRequest, now: u64) -> Result<(Value, Vec<Change>), Error> {
    let state = node.state();
    let user = |name: &str| {
        state
            .users
            .get(name)
            .ok_or_else(|| Error::Admin(format!("no user `{name}`")))
    };
    Ok(match request {
        UserRequest::Add {
            username,
            password,
            name,
            email,
        } => {
            checked_username(&username)?;
            if state.users.contains_key(&username) {
                return Err(Error::Admin(format!("user `{username}` exists; use `user passwd`")));
            }
            let record = UserRecord {
                sub: crate::node::random_id(),
                username: username.clone(),
                password: hash_password(&password)?,
                name: checked_optional(name, "--name")?,
                email: checked_optional(email, "--email")?,
                created_at: now,
                updated_at: now,
            };
            let answer = json!({"username": username, "sub": record.sub});
            (answer, vec![Change::Login(LoginChange::PutUser(record))])
        }
        UserRequest::Link {
            upstream,
            subject,
            name,
            email,
        } => {
            let valid = !upstream.is_empty()
                && upstream.len() <= 64
                && upstream
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid || subject.is_empty() || subject.len() > 1024 || subject.chars().any(char::is_control) {
                return Err(Error::Admin(
                    "--upstream is an upstream's configured name and --subject its user's `sub`".into(),
                ));
            }
            let username = crate::http::upstream_login::username(&upstream, &subject);
            if state.users.contains_key(&username) {
                return Err(Error::Admin(format!(
                    "`{upstream}` identity `{subject}` is linked already"
                )));
            }
            let record = UserRecord {
                sub: crate::http::upstream_login::subject(&upstream, &subject),
                username: username.clone(),
                password: String::new(),
                name: checked_optional(name, "--name")?,
                email: checked_optional(email, "--email")?,
                created_at: now,
                updated_at: now,
            };
            let answer = json!({"username": username, "sub": record.sub});
            (answer, vec![Change::Login(LoginChange::PutUser(record))])
        }
        UserRequest::Import { users, dry_run } => {
            let mut imported = Vec::new();
            let mut skipped = Vec::new();
            let mut changes = Vec::new();
            for user in users {
                let checked = (|| {
                    checked_username(&user.username)?;
                    if state.users.contains_key(&user.username) || imported.contains(&user.username) {
                        return Err(Error::Admin("a user with this name exists".into()));
                    }
                    if user.password.is_empty() || user.password.len() > 2048 {
                        return Err(Error::Admin("no usable password hash".into()));
                    }
                    Ok(UserRecord {
                        sub: crate::node::random_id(),
                        username: user.username.clone(),
                        password: user.password,
                        name: checked_optional(user.name, "name")?,
                        email: checked_optional(user.email, "email")?,
                        created_at: now,
                        updated_at: now,
                    })
                })();
                match checked {
                    Ok(record) => {
                        imported.push(user.username);
                        changes.push(Change::Login(LoginChange::PutUser(record)));
                    }
                    Err(e) => skipped.push(json!({"username": user.username, "reason": e.to_string()})),
                }
            }
            let answer = json!({"imported": imported, "skipped": skipped, "dry_run": dry_run});
            (answer, if dry_run { vec![] } else { changes })
        }
        UserRequest::List => {
            let list = state.users.values().map(user_summary).collect();
            (Value::Array(list), vec![])
        }
        UserRequest::Remove { username } => {
            user(&username)?;
            let mut changes = vec![Change::Login(LoginChange::RemoveUser(username.clone()))];
            changes.extend(
                state
                    .consents
                    .values()
                    .filter(|c| c.username == username)
                    .map(|c| Change::Login(LoginChange::RemoveConsent(c.key()))),
            );
            // Their refresh-token families stop refreshing (also for a later user of the same
            // name) and the access tokens issued with them introspect inactive.
            let families: std::collections::BTreeSet<&str> = state
                .refresh
                .tokens
                .values()
                .filter(|t| t.username == username && !state.refresh.revoked.contains_key(&t.family))
                .map(|t| t.family.as_str())
                .collect();
            for family in &families {
                changes.extend(crate::http::refresh::revoke_family(state, family, "user_removed", now));
            }
            (json!({"removed": username, "revoked_grants": families.len()}), changes)
        }
        UserRequest::Passwd { username, password } => {
            let mut record = user(&username)?.clone();
            record.password = hash_password(&password)?;
            record.updated_at = now;
            (
                json!({"username": username, "updated_at": now}),
                vec![Change::Login(LoginChange::PutUser(record))],
            )
        }
        UserRequest::Consents { username } => {
            user(&username)?;
            let list = state
                .consents
                .values()
                .filter(|c| c.username == username)
                .map(|c: &ConsentRecord| json!({"client_id": c.client_id, "scopes": c.scopes, "granted_at": c.granted_at}))
                .collect();
            (Value::Array(list), vec![])
        }
        UserRequest::RevokeConsent { username, client_id } => {
            let key = mesh::login::consent_key(&username, &client_id);
            if !state.consents.contains_key(&key) {
                return Err(Error::Admin(format!("`{username}` has no consent for `{client_id}`")));
            }
            (
                json!({"username": username, "client_id": client_id, "revoked": true}),
                vec![Change::Login(LoginChange::RemoveConsent(key))],
            )
        }
        UserRequest::AddCodeClient {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            audiences,
            public,
            token_alg,
            id_token_alg,
        } => {
            if redirect_uris.is_empty() {
                return Err(Error::Admin("give at least one --redirect-uri".into()));
            }
            let client = UserClient {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                scopes,
                audiences,
                public,
                token_alg,
                id_token_alg,
            };
            client.add(false, now)?
        }
        UserRequest::AddDeviceClient {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            audiences,
            public,
            token_alg,
            id_token_alg,
        } => {
            if redirect_uris.is_empty() && !post_logout_redirect_uris.is_empty() {
                return Err(Error::Admin("--post-logout-redirect-uri needs --redirect-uri".into()));
            }
            let client = UserClient {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                scopes,
                audiences,
                public,
                token_alg,
                id_token_alg,
            };
            client.add(true, now)?
        }
    })
}

/// A client acting for users (code flow, device flow, or both).
struct UserClient {
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    scopes: Vec<String>,
    audiences: Vec<String>,
    public: bool,
    token_alg: Option<Alg>,
    id_token_alg: Option<Alg>,
}

impl UserClient {
    /// Registers it (with the device grant when `device`).
    fn add(self, device: bool, now: u64) -> Result<(Value, Vec<Change>), Error> {
        let UserClient {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            audiences,
            public,
            token_alg,
            id_token_alg,
        } = self;
        {
            for uri in redirect_uris.iter().chain(&post_logout_redirect_uris) {
                checked_redirect_uri(uri).map_err(|e| Error::Admin(format!("redirect URI `{uri}`: {e}")))?;
            }
            let client_id = crate::node::random_id();
            let (secret, secrets) = if public {
                (None, vec![])
            } else {
                let (secret, hash) = crate::node::new_secret();
                (Some(secret), vec![SecretRecord { hash, expires_at: None }])
            };
            let record = ClientRecord {
                client_id: client_id.clone(),
                name: crate::node::checked_name(name)?,
                secrets,
                grant_types: if !device {
                    CODE_GRANTS.iter().map(|g| (*g).to_owned()).collect()
                } else if redirect_uris.is_empty() {
                    vec![crate::http::device::DEVICE_CODE.to_owned(), "refresh_token".to_owned()]
                } else {
                    let mut grants: Vec<String> = CODE_GRANTS.iter().map(|g| (*g).to_owned()).collect();
                    grants.push(crate::http::device::DEVICE_CODE.to_owned());
                    grants
                },
                scopes: crate::node::checked_scopes(scopes)?,
                audiences: crate::node::checked_audiences(audiences)?,
                token_alg: token_alg.unwrap_or(Alg::EdDSA).to_string(),
                jwks: None,
                created_at: now,
                degradation: None,
                redirect_uris,
                post_logout_redirect_uris,
                token_endpoint_auth_method: public.then(|| "none".to_owned()),
                id_token_signed_response_alg: id_token_alg.map(|a| a.to_string()),
                dynamic_registration: None,
                federation: None,
            };
            let mut answer = json!({"client_id": client_id, "redirect_uris": record.redirect_uris});
            match secret {
                Some(secret) => answer["client_secret"] = json!(secret),
                None => answer["token_endpoint_auth_method"] = json!("none"),
            }
            Ok((answer, vec![Change::PutClient(record)]))
        }
    }
}

fn user_summary(user: &UserRecord) -> Value {
    json!({"username": user.username, "sub": user.sub, "name": user.name, "email": user.email,
           "created_at": user.created_at, "updated_at": user.updated_at})
}

fn checked_username(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !ok {
        return Err(Error::Admin(
            "a username is 1 to 64 of the characters a-z A-Z 0-9 . _ - @".into(),
        ));
    }
    Ok(())
}

fn checked_optional(value: Option<String>, what: &str) -> Result<Option<String>, Error> {
    match value {
        Some(v) if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) => {
            Err(Error::Admin(format!("{what} must be 1 to 200 printable characters")))
        }
        other => Ok(other),
    }
}

/// Hashes a password with argon2 (default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, Error> {
    if password.is_empty() || password.len() > 1024 {
        return Err(Error::Admin("the password must be 1 to 1024 bytes".into()));
    }
    let salt = argon2::password_hash::SaltString::encode_b64(&crate::node::random_bytes::<16>())
        .map_err(|e| Error::Admin(format!("salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Admin(format!("argon2: {e}")))
}

/// Whether `password` matches the stored hash `phc`: an argon2 PHC string, or a PBKDF2 hash
/// imported from Keycloak ([`crate::password::PasswordHash::to_stored`]), kept as it was.
pub fn verify_password(phc: &str, password: &str) -> bool {
    if password.len() > 1024 {
        return false;
    }
    if let hash @ crate::password::PasswordHash::Pbkdf2 { .. } = crate::password::PasswordHash::from_stored(phc) {
        return hash.verify(password);
    }
    let Ok(hash) = argon2::PasswordHash::new(phc) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// Whether the stored hash `phc` should be replaced by an argon2 one at the next successful
/// login: it is an imported PBKDF2 hash ([`crate::password::PasswordHash::to_stored`]).
pub fn needs_rehash(phc: &str) -> bool {
    matches!(
        crate::password::PasswordHash::from_stored(phc),
        crate::password::PasswordHash::Pbkdf2 { .. }
    )
}

/// Checks a redirect URI for registration: absolute, no fragment, no userinfo; `https`, `http` on
/// a loopback host (`127.0.0.1`, `[::1]`, `localhost`), or a private-use scheme with a dot (RFC
/// 8252 §7.1, e.g. `com.example.app:/cb`). Never `javascript:`, `data:`, `file:` and the like.
pub fn checked_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > 2000 || uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("too long or contains spaces or control characters".into());
    }
    let url = url::Url::parse(uri).map_err(|e| format!("not an absolute URI: {e}"))?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err("must not have a fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user information".into());
    }
    match url.scheme() {
        "https" if url.host_str().is_some() => Ok(()),
        "http" if is_loopback_host(&url) => Ok(()),
        "http" => Err("http is allowed only on a loopback host (127.0.0.1, [::1], localhost)".into()),
        scheme if scheme.contains('.') => Ok(()),
        scheme => Err(format!("scheme `{scheme}` is not allowed")),
    }
}

/// Whether the URL's host is a loopback IP literal or `localhost`.
pub fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_pbkdf2_and_argon2_hashes_verify() {
        let salt = "c2FsdC1zYWx0LXNhbHQ=";
        // PBKDF2-HMAC-SHA256, 1000 iterations, 32 bytes, computed here with aws-lc-rs.
        let mut key = [0u8; 32];
        let raw_salt = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, salt).unwrap();
        aws_lc_rs::pbkdf2::derive(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(1000).unwrap(),
            &raw_salt,
            b"old password",
            &mut key,
        );
        let hash = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        let stored = format!("$pbkdf2-sha256$i=1000${salt}${hash}");
        assert!(verify_password(&stored, "old password"));
        assert!(!verify_password(&stored, "old passwore"));
        assert!(!verify_password(&stored, ""));
        let phc = hash_password("new password").unwrap();
        assert!(verify_password(&phc, "new password"));
        assert!(!verify_password(&phc, "old password"));
        assert!(!verify_password("$pbkdf2-sha256$i=0$x$y", "old password"));
        assert!(needs_rehash(&stored));
        assert!(!needs_rehash(&phc));
    }

    #[test]
    fn redirect_uris_are_checked() {
        for ok in [
            "https://app.example/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:8080/cb",
            "http://localhost:3000/cb",
            "com.example.app:/cb",
        ] {
            assert!(checked_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "http://app.example/cb",
            "https://user:pw@app.example/cb",
            "https://app.example/cb#x",
            "/relative",
            "file:///etc/passwd",
        ] {
            assert!(checked_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "wrong"));
        assert!(hash_password("").is_err());
    }
}
