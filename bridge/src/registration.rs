//! Dynamic client registration (RFC 7591) and its management protocol (RFC 7592): the
//! `bridge.registration` configuration, client metadata parsed into a [`Metadata`] that cannot
//! hold an unacceptable value, and the sweep that expires dynamically registered clients that
//! went unused.
//!
//! Policy: a *public* client (`token_endpoint_auth_method: none`) whose redirection URIs are
//! loopback (`http://127.0.0.1`, `http://[::1]`, `http://localhost`, any port) or `https` may
//! register without credentials when `open_public` is on (the default, as MCP clients expect).
//! Confidential clients, and every client when `open_public` is off, present an initial access
//! token from `initial_access_tokens`. Registered clients are ordinary replicated clients
//! ([`mesh::state::ClientRecord`] with a [`DynamicRegistration`]); the registration access token
//! is stored as a SHA-256 hash and compared in constant time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh::state::{Change, ClientRecord, DynamicRegistration};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::OAuthError;
use crate::view::View;

/// Largest registration request body, bytes.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Most redirection URIs one client may register.
pub const MAX_REDIRECT_URIS: usize = 10;
/// Longest URI (redirection URI, `client_uri`, ...), characters.
pub const MAX_URI_LEN: usize = 2000;
/// Longest free-text field (`client_name`, `software_id`, a contact), characters.
pub const MAX_TEXT_LEN: usize = 200;
/// Most scopes one client may register.
pub const MAX_SCOPES: usize = 50;
/// Most contacts.
pub const MAX_CONTACTS: usize = 10;
/// A node writes a client's `last_used` back to the replicated record when its own memory of the
/// last use is newer by at least this much (seconds), so the record is written about once a day.
pub const LAST_USED_WRITE_BACK_SECS: u64 = 86_400;

/// `bridge.registration`: dynamic client registration and Client ID Metadata Documents.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct RegistrationConfig {
    /// Serve `/register` at all.
    pub enabled: bool,
    /// Public clients with loopback or https redirection URIs register without an initial access
    /// token (default on). Off: every registration needs one.
    pub open_public: bool,
    /// Initial access tokens (RFC 7591 §3): a registration presenting one as a bearer token may
    /// register any client, confidential included. Keep them out of the file with
    /// `MESHGATE_BRIDGE__REGISTRATION__INITIAL_ACCESS_TOKENS='["..."]'`.
    pub initial_access_tokens: Vec<String>,
    /// A dynamically registered client unused for this long is removed (humantime; default `30d`).
    #[serde(deserialize_with = "duration")]
    pub unused_client_expiry: Duration,
    /// Most dynamically registered clients at once; registration answers
    /// `temporarily_unavailable` beyond it.
    pub max_dynamic_clients: usize,
    /// Accept `https` URLs as `client_id`s naming a Client ID Metadata Document (default on).
    pub client_id_metadata_documents: bool,
    /// Development only: also fetch `http` metadata documents from loopback hosts.
    pub danger_allow_http_loopback_metadata_documents: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            open_public: true,
            initial_access_tokens: Vec::new(),
            unused_client_expiry: Duration::from_secs(30 * 86_400),
            max_dynamic_clients: 10_000,
            client_id_metadata_documents: true,
            danger_allow_http_loopback_metadata_documents: false,
        }
    }
}

impl std::fmt::Debug for RegistrationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationConfig")
            .field("enabled", &self.enabled)
            .field("open_public", &self.open_public)
            .field("initial_access_tokens", &format_args!("[{} redacted]", self.initial_access_tokens.len()))
            .field("unused_client_expiry", &self.unused_client_expiry)
            .field("max_dynamic_clients", &self.max_dynamic_clients)
            .field("client_id_metadata_documents", &self.client_id_metadata_documents)
            .field(
                "danger_allow_http_loopback_metadata_documents",
                &self.danger_allow_http_loopback_metadata_documents,
            )
            .finish()
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(deserializer)?;
    let d = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d < Duration::from_secs(60) {
        return Err(serde::de::Error::custom("must be at least 1m"));
    }
    Ok(d)
}

/// The registration policy as the request path uses it: initial access tokens hashed.
pub struct Registry {
    config: RegistrationConfig,
    initial_access_hashes: Vec<[u8; 32]>,
    /// The Client ID Metadata Document resolver.
    pub documents: crate::cimd::Resolver,
}

impl Registry {
    /// The policy of `config`.
    pub fn new(config: RegistrationConfig) -> Self {
        let initial_access_hashes = config.initial_access_tokens.iter().map(|t| sha256(t)).collect();
        let documents = crate::cimd::Resolver::new(crate::cimd::ResolverConfig {
            enabled: config.client_id_metadata_documents,
            danger_allow_http_loopback: config.danger_allow_http_loopback_metadata_documents,
            ..Default::default()
        });
        Self {
            config,
            initial_access_hashes,
            documents,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistrationConfig {
        &self.config
    }

    /// Whether `presented` is one of the initial access tokens (constant time per token).
    pub fn is_initial_access_token(&self, presented: &str) -> bool {
        let digest = sha256(presented);
        let mut ok = subtle::Choice::from(0);
        for hash in &self.initial_access_hashes {
            ok |= hash.ct_eq(&digest);
        }
        ok.into()
    }
}

/// How a registered client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// `none`: a public client.
    None,
    /// `client_secret_basic`.
    ClientSecretBasic,
    /// `client_secret_post`.
    ClientSecretPost,
}

impl AuthMethod {
    /// Its RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
        }
    }
}

/// Client metadata that passed every check (RFC 7591 §2).
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// Exact redirection URIs.
    pub redirect_uris: Vec<String>,
    /// Token endpoint authentication.
    pub auth_method: AuthMethod,
    /// Grant types.
    pub grant_types: Vec<String>,
    /// Response types (`code` or none).
    pub response_types: Vec<String>,
    /// Display name.
    pub client_name: Option<String>,
    /// Scopes the client may be granted.
    pub scopes: Vec<String>,
    /// Other understood fields, checked (URIs, contacts, software id/version).
    pub extra: Map<String, Value>,
}

const URI_FIELDS: &[&str] = &["client_uri", "logo_uri", "tos_uri", "policy_uri"];
const TEXT_FIELDS: &[&str] = &["software_id", "software_version"];
const GRANTS: &[&str] = &["authorization_code", "refresh_token", "client_credentials"];

impl Metadata {
    /// Parses a registration request body (a JSON object). Unknown fields are ignored (RFC 7591
    /// §2) and not stored.
    pub fn parse(body: &Value) -> Result<Self, OAuthError> {
        let Some(object) = body.as_object() else {
            return Err(OAuthError::invalid_client_metadata("the body must be a JSON object"));
        };
        let strings = |name: &'static str| -> Result<Option<Vec<String>>, OAuthError> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| OAuthError::invalid_client_metadata(format!("`{name}` must hold strings")))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(OAuthError::invalid_client_metadata(format!(
                    "`{name}` must be an array of strings"
                ))),
            }
        };
        let text = |name: &'static str| -> Result<Option<String>, OAuthError> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.chars().count() <= MAX_TEXT_LEN && !s.chars().any(char::is_control) => {
                    Ok(Some(s.clone()))
                }
                Some(Value::String(_)) => Err(OAuthError::invalid_client_metadata(format!(
                    "`{name}` must be at most {MAX_TEXT_LEN} characters without control characters"
                ))),
                Some(_) => Err(OAuthError::invalid_client_metadata(format!("`{name}` must be a string"))),
            }
        };

        let auth_method = match text("token_endpoint_auth_method")?.as_deref() {
            None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
            Some("client_secret_post") => AuthMethod::ClientSecretPost,
            Some("none") => AuthMethod::None,
            Some(other) => {
                return Err(OAuthError::invalid_client_metadata(format!(
                    "token_endpoint_auth_method `{other}` is not supported (none, client_secret_basic, client_secret_post)"
                )));
            }
        };
        let grant_types = strings("grant_types")?.unwrap_or_else(|| vec!["authorization_code".into()]);
        let mut grants: Vec<String> = Vec::new();
        for grant in grant_types {
            if !GRANTS.contains(&grant.as_str()) {
                return Err(OAuthError::invalid_client_metadata(format!(
                    "grant type `{}` is not supported for registered clients",
                    truncated(&grant)
                )));
            }
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
        if grants.iter().any(|g| g == "client_credentials") && auth_method == AuthMethod::None {
            return Err(OAuthError::invalid_client_metadata(
                "a public client (token_endpoint_auth_method none) cannot use client_credentials",
            ));
        }
        let code_flow = grants.iter().any(|g| g == "authorization_code");
        let response_types = strings("response_types")?.unwrap_or_else(|| {
            if code_flow { vec!["code".into()] } else { vec![] }
        });
        if response_types.iter().any(|r| r != "code") {
            return Err(OAuthError::invalid_client_metadata("only the `code` response type is supported"));
        }
        if code_flow != response_types.iter().any(|r| r == "code") {
            return Err(OAuthError::invalid_client_metadata(
                "response_types `code` and grant_types `authorization_code` go together (RFC 7591 §2.1)",
            ));
        }

        let redirect_uris = strings("redirect_uris")?.unwrap_or_default();
        if redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(OAuthError::invalid_redirect_uri(format!(
                "at most {MAX_REDIRECT_URIS} redirect_uris"
            )));
        }
        if code_flow && redirect_uris.is_empty() {
            return Err(OAuthError::invalid_redirect_uri(
                "redirect_uris is required for the authorization_code grant",
            ));
        }
        for uri in &redirect_uris {
            check_redirect_uri(uri)?;
        }
        let mut unique: Vec<String> = Vec::new();
        for uri in redirect_uris {
            if !unique.contains(&uri) {
                unique.push(uri);
            }
        }

        let scopes = match object.get("scope") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(scope)) => {
                let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
                if scopes.len() > MAX_SCOPES || scope.len() > MAX_SCOPES * 64 {
                    return Err(OAuthError::invalid_client_metadata(format!("at most {MAX_SCOPES} scopes")));
                }
                let mut out: Vec<String> = Vec::new();
                for s in scopes {
                    if !crate::node::is_scope_token(s) || s.len() > 64 {
                        return Err(OAuthError::invalid_client_metadata(format!(
                            "invalid scope `{}`",
                            truncated(s)
                        )));
                    }
                    if !out.iter().any(|o| o == s) {
                        out.push(s.to_owned());
                    }
                }
                out
            }
            Some(_) => return Err(OAuthError::invalid_client_metadata("`scope` must be a string")),
        };

        let mut extra = Map::new();
        for name in URI_FIELDS {
            if let Some(uri) = text_uri(object, name)? {
                extra.insert((*name).into(), Value::String(uri));
            }
        }
        for name in TEXT_FIELDS {
            if let Some(value) = text(name)? {
                extra.insert((*name).into(), Value::String(value));
            }
        }
        if let Some(contacts) = strings("contacts")? {
            if contacts.len() > MAX_CONTACTS
                || contacts
                    .iter()
                    .any(|c| c.chars().count() > MAX_TEXT_LEN || c.chars().any(char::is_control))
            {
                return Err(OAuthError::invalid_client_metadata(format!(
                    "at most {MAX_CONTACTS} contacts of at most {MAX_TEXT_LEN} characters"
                )));
            }
            extra.insert("contacts".into(), json!(contacts));
        }
        if object.contains_key("jwks") || object.contains_key("jwks_uri") {
            return Err(OAuthError::invalid_client_metadata(
                "jwks and jwks_uri are not accepted at registration (private_key_jwt clients are added by an operator)",
            ));
        }
        Ok(Self {
            redirect_uris: unique,
            auth_method,
            grant_types: grants,
            response_types,
            client_name: text("client_name")?,
            scopes,
            extra,
        })
    }

    /// Whether the client is public (authenticates with `none`).
    pub fn is_public(&self) -> bool {
        self.auth_method == AuthMethod::None
    }
}

fn text_uri(object: &Map<String, Value>, name: &'static str) -> Result<Option<String>, OAuthError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(uri)) => {
            check_web_uri(uri).map_err(|why| OAuthError::invalid_client_metadata(format!("`{name}`: {why}")))?;
            Ok(Some(uri.clone()))
        }
        Some(_) => Err(OAuthError::invalid_client_metadata(format!("`{name}` must be a string"))),
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// Whether `host` is a loopback host name for RFC 8252 native clients.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
    }
}

/// An `https` URL, or an `http` URL on a loopback host; no user info, no fragment, bounded.
fn check_web_uri(uri: &str) -> Result<url::Url, String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!("longer than {MAX_URI_LEN} characters"));
    }
    let url = url::Url::parse(uri).map_err(|e| format!("not an absolute URI ({e})"))?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err("must not contain a fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information".into());
    }
    let Some(host) = url.host() else {
        return Err("must have a host".into());
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&host) => Ok(url),
        "http" => Err("http is only allowed on a loopback host (127.0.0.1, [::1], localhost); use https".into()),
        other => Err(format!("the scheme `{}` is not allowed (https, or http on loopback)", truncated(other))),
    }
}

/// Checks one redirection URI: `https`, or `http` on loopback (RFC 8252 §7.3); no fragment (RFC
/// 6749 §3.1.2), no user information, no `javascript:`/`data:` or other schemes.
pub fn check_redirect_uri(uri: &str) -> Result<(), OAuthError> {
    check_web_uri(uri)
        .map(|_| ())
        .map_err(|why| OAuthError::invalid_redirect_uri(format!("redirect URI `{}`: {why}", truncated(uri))))
}

/// A new registration: the client record to replicate and the one-time secrets to answer.
pub struct NewClient {
    /// The record.
    pub record: ClientRecord,
    /// The client secret (confidential clients only), shown once.
    pub client_secret: Option<String>,
    /// The registration access token (RFC 7592), shown once.
    pub registration_access_token: String,
}

/// Builds the record of a new dynamically registered client.
pub fn new_client(metadata: Metadata, token_alg: &str, now: u64) -> NewClient {
    let client_id = random_id();
    let registration_access_token = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let (client_secret, secrets) = if metadata.is_public() {
        (None, Vec::new())
    } else {
        let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        let hash = mesh::state::SecretHash::Sha256(URL_SAFE_NO_PAD.encode(sha256(&secret)));
        (
            Some(secret),
            vec![mesh::state::SecretRecord { hash, expires_at: None }],
        )
    };
    let dynamic = DynamicRegistration {
        redirect_uris: Vec::new(),
        token_endpoint_auth_method: String::new(),
        response_types: Vec::new(),
        metadata: Map::new(),
        registration_token_hash: URL_SAFE_NO_PAD.encode(sha256(&registration_access_token)),
        last_used: now,
    };
    let mut record = ClientRecord {
        client_id,
        name: String::new(),
        secrets,
        grant_types: Vec::new(),
        scopes: Vec::new(),
        audiences: Vec::new(),
        token_alg: token_alg.to_owned(),
        jwks: None,
        created_at: now,
        degradation: None,
        dynamic_registration: Some(dynamic),
    };
    update(&mut record, metadata);
    NewClient {
        record,
        client_secret,
        registration_access_token,
    }
}

/// Replaces the metadata of a dynamically registered client (RFC 7592 §2.2); secrets, the
/// registration access token and the creation time stay.
pub fn update(record: &mut ClientRecord, metadata: Metadata) {
    record.name = metadata.client_name.unwrap_or_else(|| "dynamically registered client".into());
    record.grant_types = metadata.grant_types;
    record.scopes = metadata.scopes;
    if let Some(dynamic) = record.dynamic_registration.as_mut() {
        dynamic.redirect_uris = metadata.redirect_uris;
        dynamic.token_endpoint_auth_method = metadata.auth_method.as_str().into();
        dynamic.response_types = metadata.response_types;
        dynamic.metadata = metadata.extra;
    }
}

/// The client information response (RFC 7591 §3.2.1) of a dynamically registered client,
/// without its secrets.
pub fn describe(record: &ClientRecord, registration_client_uri: &str) -> Value {
    let mut body = Map::new();
    body.insert("client_id".into(), json!(record.client_id));
    body.insert("client_id_issued_at".into(), json!(record.created_at));
    body.insert("client_name".into(), json!(record.name));
    body.insert("grant_types".into(), json!(record.grant_types));
    if !record.scopes.is_empty() {
        body.insert("scope".into(), json!(record.scopes.join(" ")));
    }
    body.insert("registration_client_uri".into(), json!(registration_client_uri));
    if let Some(dynamic) = &record.dynamic_registration {
        body.insert("redirect_uris".into(), json!(dynamic.redirect_uris));
        body.insert(
            "token_endpoint_auth_method".into(),
            json!(dynamic.token_endpoint_auth_method),
        );
        body.insert("response_types".into(), json!(dynamic.response_types));
        if dynamic.token_endpoint_auth_method != "none" {
            body.insert("client_secret_expires_at".into(), json!(0));
        }
        for (k, v) in &dynamic.metadata {
            body.insert(k.clone(), v.clone());
        }
    }
    Value::Object(body)
}

/// Whether `presented` is the registration access token of `record` (constant time).
pub fn is_registration_access_token(record: &ClientRecord, presented: &str) -> bool {
    let Some(dynamic) = &record.dynamic_registration else {
        return false;
    };
    let Ok(stored) = URL_SAFE_NO_PAD.decode(&dynamic.registration_token_hash) else {
        return false;
    };
    stored.ct_eq(&sha256(presented)).into()
}

/// How many dynamically registered clients `view` holds.
pub fn dynamic_clients(view: &View) -> usize {
    view.clients
        .values()
        .filter(|c| c.record.dynamic_registration.is_some())
        .count()
}

/// The changes one sweep makes at `now`: removes dynamically registered clients unused for
/// `expiry`, and writes back `last_used` of clients this node saw in use since their record says
/// (at most about once a day each, so replication traffic stays small).
pub fn sweep(view: &View, now: u64, expiry: Duration) -> Vec<Change> {
    let expiry = expiry.as_secs();
    let mut changes = Vec::new();
    for client in view.clients.values() {
        let Some(dynamic) = &client.record.dynamic_registration else {
            continue;
        };
        let seen_here = client.last_used.load(Ordering::Relaxed);
        let last = dynamic.last_used.max(seen_here).max(client.record.created_at);
        if now.saturating_sub(last) >= expiry {
            tracing::info!(client_id = %client.record.client_id, "removing a dynamically registered client unused since {last}");
            changes.push(Change::RemoveClient(client.record.client_id.clone()));
        } else if seen_here >= dynamic.last_used.saturating_add(LAST_USED_WRITE_BACK_SECS) {
            let mut record = client.record.clone();
            if let Some(d) = record.dynamic_registration.as_mut() {
                d.last_used = seen_here;
            }
            changes.push(Change::PutClient(record));
        }
    }
    changes
}

/// Runs one sweep on the node behind `state` (blocking: call from a blocking thread).
pub fn sweep_node(state: &crate::http::AppState, now: u64) -> Result<usize, crate::error::Error> {
    let expiry = state.registry().config().unused_client_expiry;
    state.with_node(|node| {
        let changes = sweep(&state.view(), now, expiry);
        node.apply(&changes)?;
        Ok((changes.len(), changes))
    })
}

/// Sweeps every hour until `shutdown` resolves.
pub async fn sweep_periodically(state: crate::http::AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let (state, now) = (state.clone(), state.now());
        let result = tokio::task::spawn_blocking(move || sweep_node(&state, now)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "registration sweep failed");
        }
    }
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS RNG failing is unrecoverable; getrandom documents it as practically impossible.
    getrandom::fill(&mut bytes).expect("operating system random number generator failed");
    bytes
}

/// A new client id: 24 lowercase letters and digits (about 124 bits).
fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes::<24>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_loopback_or_https_only() {
        for good in [
            "http://127.0.0.1/callback",
            "http://127.0.0.1:33418/cb",
            "http://[::1]:8080/cb",
            "http://localhost:3000/cb",
            "https://app.example/cb?x=1",
        ] {
            assert!(check_redirect_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,hi",
            "http://evil.example/cb",
            "https://app.example/cb#frag",
            "https://user:pw@app.example/cb",
            "https://user@app.example/cb",
            "ftp://app.example/cb",
            "/relative",
            "com.example.app:/cb",
        ] {
            let error = check_redirect_uri(bad).unwrap_err();
            assert_eq!(error.code(), "invalid_redirect_uri", "{bad}");
        }
        assert!(check_redirect_uri(&format!("https://a.example/{}", "x".repeat(MAX_URI_LEN))).is_err());
    }

    #[test]
    fn redacted_debug() {
        let config = RegistrationConfig {
            initial_access_tokens: vec!["very-secret-iat".into()],
            ..Default::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("very-secret-iat"), "{debug}");
        let registry = Registry::new(config);
        assert!(registry.is_initial_access_token("very-secret-iat"));
        assert!(!registry.is_initial_access_token("very-secret-ia"));
    }
}
