//! `meshgate import` and `meshgate export`: clients (and Keycloak users) brought over from another
//! OAuth server unchanged — client ids, secrets, redirect URIs, grants, scopes, audiences, keys —
//! with a precise report of every field that could not be mapped.
//!
//! The flow: a source parser ([`keycloak`], [`hydra`], [`oidc_provider`], [`meshgate`]) turns the
//! file into a [`Parsed`] set of [`ImportedClient`]s (and users) plus what it could not read;
//! [`plan`] turns those into replicated [`ClientRecord`]s (hashing secrets with argon2, keeping
//! HMAC keys for `client_secret_jwt`, rotating secrets a source does not hold); the node applies
//! them with [`apply`] — through the admin socket of a running server or offline under the
//! store's lock, like `client add`.
//!
//! Secrets: a plaintext secret from the source is stored as an argon2 hash (it keeps working as
//! it is); a `client_secret_jwt` client's secret is kept as its HMAC key (see
//! [`mesh::state::SecretHash::HmacKey`] for the trade-off); meshgate's own export carries only
//! hashes, which are imported as they are.

pub mod hydra;
pub mod keycloak;
pub mod meshgate;
pub mod oidc_provider;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::state::{Change, ClientDegradation, ClientRecord, SecretHash, SecretRecord, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::Error;
use crate::keys::Alg;
use crate::node;
use crate::password::PasswordHash;

/// Largest import file accepted.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `client_secret_basic` (also accepts `client_secret_post`: meshgate allows both).
    ClientSecretBasic,
    /// `client_secret_post`.
    ClientSecretPost,
    /// `client_secret_jwt`: an HS256/384/512 assertion keyed by the secret.
    ClientSecretJwt,
    /// `private_key_jwt`: an assertion signed with a key of the client's JWKS.
    PrivateKeyJwt,
    /// `none`: a public client.
    None,
}

impl AuthMethod {
    /// Parses an RFC 7591 `token_endpoint_auth_method`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "client_secret_basic" => Self::ClientSecretBasic,
            "client_secret_post" => Self::ClientSecretPost,
            "client_secret_jwt" => Self::ClientSecretJwt,
            "private_key_jwt" => Self::PrivateKeyJwt,
            "none" => Self::None,
            _ => return None,
        })
    }

    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretJwt => "client_secret_jwt",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::None => "none",
        }
    }

    fn uses_secret(self) -> bool {
        matches!(
            self,
            Self::ClientSecretBasic | Self::ClientSecretPost | Self::ClientSecretJwt
        )
    }
}

/// A client as read from a source, before any mapping decision.
#[derive(Debug, Clone, Default)]
pub struct ImportedClient {
    /// The client id, kept unchanged.
    pub client_id: String,
    /// Display name (the id when the source has none).
    pub name: String,
    /// Token-endpoint authentication.
    pub auth_method: Option<AuthMethod>,
    /// The plaintext secret, when the source holds one.
    pub secret: Option<String>,
    /// Already-hashed secrets (meshgate's own export).
    pub secret_hashes: Vec<SecretRecord>,
    /// Redirect URIs, unchanged.
    pub redirect_uris: Vec<String>,
    /// Grant types as the source names them.
    pub grant_types: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Public keys for `private_key_jwt`.
    pub jwks: Option<Value>,
    /// Access-token algorithm, if the source sets one.
    pub token_alg: Option<String>,
    /// Degradation policy (meshgate's own export).
    pub degradation: Option<ClientDegradation>,
    /// Registration time (meshgate's own export).
    pub created_at: Option<u64>,
}

/// A user as read from a source (Keycloak), with the password hash exactly as it was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedUser {
    /// The login name.
    pub username: String,
    /// E-mail address.
    pub email: Option<String>,
    /// Whether the e-mail address was verified.
    pub email_verified: bool,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Whether the account may sign in.
    pub enabled: bool,
    /// The password hash, verified as it is ([`PasswordHash::verify`]); `None`: no password.
    pub password: Option<PasswordHash>,
}

/// Something the import could not carry over, named precisely.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmapped {
    /// The client (or `user:NAME`) it belongs to; `None` for the file as a whole.
    pub client_id: Option<String>,
    /// The source field, as the source names it.
    pub field: String,
    /// The value that was not carried over (secrets are never echoed).
    pub value: Value,
    /// Why.
    pub reason: String,
}

impl Unmapped {
    /// A field of `client` that was not carried over.
    pub fn field(client: &str, field: &str, value: Value, reason: impl Into<String>) -> Self {
        Self {
            client_id: Some(client.to_owned()),
            field: field.to_owned(),
            value,
            reason: reason.into(),
        }
    }
}

/// What a source parser read.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// A one-line description of the source (e.g. the Keycloak realm and its issuer).
    pub source: String,
    /// Clients to import.
    pub clients: Vec<ImportedClient>,
    /// Clients not imported at all, with the reason (e.g. Keycloak's built-in clients).
    pub skipped: Vec<(String, String)>,
    /// Users (Keycloak).
    pub users: Vec<ImportedUser>,
    /// Fields not carried over.
    pub unmapped: Vec<Unmapped>,
}

/// The source format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Keycloak realm export (`kc.sh export` / the admin console's partial export).
    Keycloak,
    /// An ORY Hydra client list (`hydra list clients --format json` / `GET /admin/clients`).
    Hydra,
    /// A node-oidc-provider client array (its `clients` configuration).
    OidcProvider,
    /// `meshgate export`.
    Meshgate,
}

/// Parses `text` as `source`.
pub fn parse(source: Source, text: &str) -> Result<Parsed, Error> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Admin(format!("not JSON: {e}")))?;
    match source {
        Source::Keycloak => keycloak::parse(&value),
        Source::Hydra => hydra::parse(&value),
        Source::OidcProvider => oidc_provider::parse(&value),
        Source::Meshgate => meshgate::parse(&value),
    }
}

/// A secret generated during the import (the source did not hold it): shown only once.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// The client.
    pub client_id: String,
    /// The new secret (`None` in a dry run: nothing is generated).
    pub client_secret: Option<String>,
}

/// The records to apply, and what the mapping decided.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Records for the store.
    pub records: Vec<ClientRecord>,
    /// Secrets generated because the source had none.
    pub rotated: Vec<Rotated>,
    /// Fields not carried over (the parser's and the mapping's).
    pub unmapped: Vec<Unmapped>,
    /// How each client authenticates after the import.
    pub methods: BTreeMap<String, Vec<String>>,
}

/// Maps parsed clients to records: supported grants, valid scopes, audiences, keys and secrets
/// (from the source, else `secrets` (client id → secret), else rotated unless `dry_run`).
pub fn plan(
    parsed: &Parsed,
    secrets: &BTreeMap<String, String>,
    default_alg: Alg,
    now: u64,
    dry_run: bool,
) -> Result<Planned, Error> {
    let mut planned = Planned {
        records: Vec::new(),
        rotated: Vec::new(),
        unmapped: parsed.unmapped.clone(),
        methods: BTreeMap::new(),
    };
    for client in &parsed.clients {
        let id = client.client_id.as_str();
        let mut unmapped = |field: &str, value: Value, reason: &str| {
            planned.unmapped.push(Unmapped::field(id, field, value, reason));
        };
        let mut grants = Vec::new();
        for grant in &client.grant_types {
            let normalized = match grant.as_str() {
                "token-exchange" | "token_exchange" => node::TOKEN_EXCHANGE,
                other => other,
            };
            if node::SUPPORTED_GRANTS.contains(&normalized) {
                if !grants.iter().any(|g| g == normalized) {
                    grants.push(normalized.to_owned());
                }
            } else {
                unmapped(
                    "grant_types",
                    json!(grant),
                    "grant not supported by this meshgate build",
                );
            }
        }
        let mut scopes = Vec::new();
        for scope in &client.scopes {
            if node::is_scope_token(scope) {
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            } else {
                unmapped("scope", json!(scope), "not an RFC 6749 scope token");
            }
        }
        let token_alg = match &client.token_alg {
            Some(alg) => match alg.parse::<Alg>() {
                Ok(alg) => alg,
                Err(_) => {
                    unmapped(
                        "access_token_signed_response_alg",
                        json!(alg),
                        &format!("meshgate signs access tokens with EdDSA, ES256 or RS256; {default_alg} used"),
                    );
                    default_alg
                }
            },
            None => default_alg,
        };
        let jwks = match &client.jwks {
            Some(jwks) => match node::checked_jwks(jwks.clone()) {
                Ok(jwks) => Some(jwks),
                Err(e) => {
                    unmapped("jwks", jwks.clone(), &e.to_string());
                    None
                }
            },
            None => None,
        };
        let method = client.auth_method.unwrap_or(AuthMethod::ClientSecretBasic);
        let mut records = client.secret_hashes.clone();
        if method == AuthMethod::ClientSecretJwt {
            records.retain(|s| !matches!(s.hash, SecretHash::HmacKey(_)));
        }
        let mut methods = Vec::new();
        if method.uses_secret() {
            let given = client.secret.clone().or_else(|| secrets.get(id).cloned());
            let has_hashes = !records.is_empty() && method != AuthMethod::ClientSecretJwt;
            match (given, has_hashes) {
                (Some(secret), _) => {
                    let hash = if method == AuthMethod::ClientSecretJwt {
                        hmac_key(&secret)?
                    } else if dry_run {
                        SecretHash::Argon2(String::new())
                    } else {
                        node::hash_imported_secret(&secret)?
                    };
                    records.retain(|s| s.hash != hash);
                    records.push(SecretRecord { hash, expires_at: None });
                }
                (None, true) => {}
                (None, false) => {
                    let secret = (!dry_run).then(node::new_secret);
                    if let Some((secret, hash)) = secret {
                        let hash = if method == AuthMethod::ClientSecretJwt {
                            hmac_key(&secret)?
                        } else {
                            hash
                        };
                        records.push(SecretRecord { hash, expires_at: None });
                        planned.rotated.push(Rotated {
                            client_id: id.to_owned(),
                            client_secret: Some(secret),
                        });
                    } else {
                        planned.rotated.push(Rotated {
                            client_id: id.to_owned(),
                            client_secret: None,
                        });
                    }
                }
            }
            if method == AuthMethod::ClientSecretJwt {
                methods.push("client_secret_jwt".to_owned());
            } else {
                methods.extend(["client_secret_basic".to_owned(), "client_secret_post".to_owned()]);
            }
        } else if client.secret.as_deref().is_some_and(|s| !s.is_empty()) {
            unmapped(
                "secret",
                json!("(not shown)"),
                &format!(
                    "the client authenticates with {}: its secret is not kept",
                    method.as_str()
                ),
            );
        }
        match method {
            AuthMethod::PrivateKeyJwt if jwks.is_some() => methods.push("private_key_jwt".into()),
            AuthMethod::PrivateKeyJwt => unmapped(
                "token_endpoint_auth_method",
                json!("private_key_jwt"),
                "private_key_jwt without an inline JWKS: register its keys with `client add --jwks-file` \
                 after the import (the client cannot authenticate until then)",
            ),
            AuthMethod::None => unmapped(
                "token_endpoint_auth_method",
                json!("none"),
                "public clients are not supported by this meshgate build; imported without credentials",
            ),
            _ if jwks.is_some() => methods.push("private_key_jwt".into()),
            _ => {}
        }
        let record = ClientRecord {
            client_id: id.to_owned(),
            name: client.name.clone(),
            secrets: records,
            grant_types: grants,
            scopes,
            audiences: client.audiences.clone(),
            token_alg: token_alg.to_string(),
            jwks,
            created_at: client.created_at.unwrap_or(now),
            degradation: client.degradation.clone(),
            redirect_uris: client.redirect_uris.clone(),
            dynamic_registration: None,
            post_logout_redirect_uris: Vec::new(),
            token_endpoint_auth_method: None,
            id_token_signed_response_alg: None,
            federation: None,
        };
        planned.methods.insert(id.to_owned(), methods);
        planned.records.push(record);
    }
    Ok(planned)
}

fn hmac_key(secret: &str) -> Result<SecretHash, Error> {
    if secret.len() < 32 {
        // RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
        tracing::warn!("a client_secret_jwt secret is shorter than 32 bytes");
    }
    if secret.is_empty() {
        return Err(Error::Admin("a client_secret_jwt secret must not be empty".into()));
    }
    Ok(SecretHash::HmacKey(URL_SAFE_NO_PAD.encode(secret.as_bytes())))
}

/// Applies planned records to the store's `state`: checks each (id, name, grants, scopes,
/// audiences, keys, redirect URIs), skips ids that exist unless `replace`, and answers what was
/// (or, with `dry_run`, would be) imported.
pub fn apply(
    state: &State,
    records: Vec<ClientRecord>,
    dry_run: bool,
    replace: bool,
) -> Result<(Value, Vec<Change>), Error> {
    let mut imported = Vec::new();
    let mut skipped = Vec::new();
    let mut changes = Vec::new();
    for mut record in records {
        let id = record.client_id.clone();
        let problem = (|| -> Result<(), Error> {
            if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
                return Err(Error::Admin(
                    "the client id must be 1 to 255 printable characters".into(),
                ));
            }
            record.name = node::checked_name(std::mem::take(&mut record.name))?;
            record.grant_types = node::checked_grants(std::mem::take(&mut record.grant_types))?;
            record.scopes = node::checked_scopes(std::mem::take(&mut record.scopes))?;
            record.audiences = node::checked_audiences(std::mem::take(&mut record.audiences))?;
            record.jwks = record.jwks.take().map(node::checked_jwks).transpose()?;
            record.degradation = record.degradation.take().map(node::checked_degradation).transpose()?;
            record.token_alg.parse::<Alg>().map_err(Error::Admin)?;
            for uri in &record.redirect_uris {
                let parsed = url::Url::parse(uri).map_err(|e| Error::Admin(format!("redirect URI `{uri}`: {e}")))?;
                if parsed.fragment().is_some() {
                    return Err(Error::Admin(format!("redirect URI `{uri}` has a fragment")));
                }
            }
            if state.clients.contains_key(&id) && !replace {
                return Err(Error::Admin(
                    "a client with this id exists (give --replace to overwrite it)".into(),
                ));
            }
            Ok(())
        })();
        match problem {
            Ok(()) => {
                imported.push(id);
                changes.push(Change::PutClient(record));
            }
            Err(e) => skipped.push(json!({"client_id": id, "reason": e.to_string()})),
        }
    }
    let answer = json!({"imported": imported, "skipped": skipped, "dry_run": dry_run});
    Ok((answer, if dry_run { vec![] } else { changes }))
}

/// What happened to the users a source held.
#[derive(Debug, Clone, Serialize)]
pub struct UsersOutcome {
    /// Users read.
    pub parsed: usize,
    /// Users stored (or, in a dry run, that would be).
    pub imported: usize,
    /// Users not stored, with the reason (`{"username", "reason"}`).
    pub skipped: Vec<Value>,
    /// Why not all were stored.
    pub note: Option<String>,
}

/// Imports `users` into the user store through `store` (the admin request
/// [`crate::users::UserRequest::Import`]): each keeps its [`ImportedUser::password`] hash as it
/// is (Keycloak's PBKDF2 or argon2, verified unchanged at login), so it signs in with its old
/// password. Disabled users and users without a password are skipped; so are existing usernames.
pub fn import_users_into_user_store(
    users: &[ImportedUser],
    dry_run: bool,
    store: impl FnOnce(crate::users::UserRequest) -> Result<Value, Error>,
) -> Result<UsersOutcome, Error> {
    let mut skipped = Vec::new();
    let mut request = Vec::new();
    for user in users {
        let reason = match &user.password {
            _ if !user.enabled => "the account is disabled",
            None => "the user has no password",
            Some(hash) => {
                let name = match (&user.given_name, &user.family_name) {
                    (Some(g), Some(f)) => Some(format!("{g} {f}")),
                    (Some(n), None) | (None, Some(n)) => Some(n.clone()),
                    (None, None) => None,
                };
                request.push(crate::users::ImportUser {
                    username: user.username.clone(),
                    password: hash.to_stored(),
                    name,
                    email: user.email.clone(),
                });
                continue;
            }
        };
        skipped.push(json!({"username": user.username, "reason": reason}));
    }
    let mut imported = 0;
    if !request.is_empty() {
        let answer = store(crate::users::UserRequest::Import {
            users: request,
            dry_run,
        })?;
        imported = answer["imported"].as_array().map_or(0, Vec::len);
        skipped.extend(answer["skipped"].as_array().cloned().unwrap_or_default());
    }
    Ok(UsersOutcome {
        parsed: users.len(),
        imported,
        note: (!skipped.is_empty()).then(|| format!("{} user(s) not imported", skipped.len())),
        skipped,
    })
}

/// The report of an import, for people.
pub fn report_text(report: &Value) -> String {
    let mut out = String::new();
    let dry = report["dry_run"] == true;
    out.push_str(&format!("source:  {}\n", report["source"].as_str().unwrap_or("-")));
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let imported = list(&report["imported"]);
    out.push_str(&format!(
        "clients: {} {}{}\n",
        imported.len(),
        if dry { "would be imported" } else { "imported" },
        match list(&report["skipped"]).len() {
            0 => String::new(),
            n => format!(", {n} skipped"),
        }
    ));
    for id in &imported {
        let id = id.as_str().unwrap_or("-");
        let methods = report["methods"][id]
            .as_array()
            .map(|m| m.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        out.push_str(&format!(
            "  + {id} ({})\n",
            if methods.is_empty() { "no credentials" } else { &methods }
        ));
    }
    for skip in list(&report["skipped"]) {
        out.push_str(&format!(
            "  - {}: {}\n",
            skip["client_id"].as_str().unwrap_or("-"),
            skip["reason"].as_str().unwrap_or("-")
        ));
    }
    let rotated = list(&report["rotated"]);
    if !rotated.is_empty() {
        out.push_str(if dry {
            "secrets the source does not hold (would be generated):\n"
        } else {
            "new secrets for clients the source held none for (shown only this once):\n"
        });
        for r in rotated {
            out.push_str(&format!(
                "  {}: {}\n",
                r["client_id"].as_str().unwrap_or("-"),
                r["client_secret"].as_str().unwrap_or("(generated on import)")
            ));
        }
    }
    let unmapped = list(&report["unmapped"]);
    if unmapped.is_empty() {
        out.push_str("not mapped: nothing\n");
    } else {
        out.push_str(&format!("not mapped ({}):\n", unmapped.len()));
        for u in unmapped {
            out.push_str(&format!(
                "  {} {}: {} — {}\n",
                u["client_id"].as_str().unwrap_or("(file)"),
                u["field"].as_str().unwrap_or("-"),
                u["value"],
                u["reason"].as_str().unwrap_or("-")
            ));
        }
    }
    let users = &report["users"];
    if users["parsed"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "users:   {} parsed, {} imported{}\n",
            users["parsed"],
            users["imported"],
            users["note"].as_str().map(|n| format!(" ({n})")).unwrap_or_default()
        ));
        for skip in list(&users["skipped"]) {
            out.push_str(&format!(
                "  - user {}: {}\n",
                skip["username"].as_str().unwrap_or("-"),
                skip["reason"].as_str().unwrap_or("-")
            ));
        }
    }
    out.trim_end().to_owned()
}

/// Reads `--secrets FILE`: a JSON object client id → secret.
pub fn read_secrets(path: &std::path::Path) -> Result<BTreeMap<String, String>, Error> {
    let text = read_file(path)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Admin(format!(
            "{}: expected a JSON object of client id → secret: {e}",
            path.display()
        ))
    })
}

/// Reads an import file (bounded by [`MAX_FILE_BYTES`]).
pub fn read_file(path: &std::path::Path) -> Result<String, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        action: format!("open {}", path.display()),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| Error::Io {
            action: format!("read {}", path.display()),
            source,
        })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Admin(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(text)
}

/// Helpers for the source parsers.
pub(crate) mod field {
    use serde_json::Value;

    /// A string field.
    pub fn string(v: &Value, key: &str) -> Option<String> {
        v.get(key).and_then(Value::as_str).map(str::to_owned)
    }

    /// A list of strings (non-strings dropped).
    pub fn strings(v: &Value, key: &str) -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Whether a value carries information (not null, false, empty or zero).
    pub fn is_set(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Parsed {
        parse(Source::Hydra, text).unwrap()
    }

    #[test]
    fn secrets_come_from_the_source_then_the_map_then_rotation() {
        let p = parsed(
            r#"[{"client_id": "a", "grant_types": ["client_credentials", "implicit"], "scope": "x y"},
                {"client_id": "b", "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_jwt"},
                {"client_id": "c", "client_secret": "from-the-file", "grant_types": ["client_credentials"]}]"#,
        );
        let secrets: BTreeMap<String, String> = [("a".to_owned(), "from-the-map".to_owned())].into();
        let planned = plan(&p, &secrets, Alg::EdDSA, 100, false).unwrap();
        let by_id = |id: &str| planned.records.iter().find(|r| r.client_id == id).unwrap();
        assert!(matches!(by_id("a").secrets[0].hash, SecretHash::Argon2(_)));
        assert!(matches!(by_id("b").secrets[0].hash, SecretHash::HmacKey(_)));
        assert!(matches!(by_id("c").secrets[0].hash, SecretHash::Argon2(_)));
        assert_eq!(by_id("a").grant_types, ["client_credentials"]);
        assert_eq!(by_id("a").scopes, ["x", "y"]);
        assert_eq!(planned.rotated.len(), 1);
        assert_eq!(planned.rotated[0].client_id, "b");
        assert!(planned.rotated[0].client_secret.is_some());
        assert!(
            planned
                .unmapped
                .iter()
                .any(|u| u.client_id.as_deref() == Some("a") && u.field == "grant_types" && u.value == "implicit")
        );
        // A dry run generates nothing.
        let dry = plan(&p, &secrets, Alg::EdDSA, 100, true).unwrap();
        assert_eq!(dry.rotated[0].client_secret, None);
    }

    #[test]
    fn apply_skips_existing_ids_unless_replacing_and_checks_records() {
        let p = parsed(r#"[{"client_id": "a", "client_secret": "s", "grant_types": ["client_credentials"]}]"#);
        let planned = plan(&p, &BTreeMap::new(), Alg::EdDSA, 100, false).unwrap();
        let mut state = State::default();
        let (answer, changes) = apply(&state, planned.records.clone(), false, false).unwrap();
        assert_eq!(answer["imported"], json!(["a"]));
        for change in &changes {
            state.apply(change);
        }
        let (answer, changes) = apply(&state, planned.records.clone(), false, false).unwrap();
        assert!(changes.is_empty());
        assert!(answer["skipped"][0]["reason"].as_str().unwrap().contains("exists"));
        let (_, changes) = apply(&state, planned.records.clone(), false, true).unwrap();
        assert_eq!(changes.len(), 1);
        let mut bad = planned.records[0].clone();
        bad.redirect_uris = vec!["https://x/cb#frag".into()];
        bad.client_id = "z".into();
        let (answer, _) = apply(&state, vec![bad], false, false).unwrap();
        assert!(answer["skipped"][0]["reason"].as_str().unwrap().contains("fragment"));
        let (_, changes) = apply(&State::default(), planned.records, true, false).unwrap();
        assert!(changes.is_empty(), "a dry run changes nothing");
    }
}
