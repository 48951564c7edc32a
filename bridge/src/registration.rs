//! Dynamic client registration (RFC 7591) and its management protocol (RFC 7592): the
//! `bridge.registration` configuration, client metadata parsed into a [`Metadata`] that cannot
//! hold an unacceptable value, and the sweep that expires dynamically registered clients that
//! went unused.
//!
//! Policy: a *public* client (`token_endpoint_auth_method: none`) whose redirection URIs are
//! loopback (`http://127.0.0.1`, `http://[::1]`, `http://localhost`, any port) or `https` may
//! register without credentials when `open_public` is on (the default, as MCP clients expect);
//! so may a public device-flow client (RFC 8628), which registers no redirection URI.
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

use crate::view::View;

mod metadata;

pub use metadata::{AuthMethod, Metadata, check_redirect_uri, is_loopback_host};

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
            .field(
                "initial_access_tokens",
                &format_args!("[{} redacted]", self.initial_access_tokens.len()),
            )
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
        (Some(secret), vec![mesh::state::SecretRecord { hash, expires_at: None }])
    };
    let dynamic = DynamicRegistration {
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
        dynamic_registration: Some(Box::new(dynamic)),
        redirect_uris: Vec::new(),
        post_logout_redirect_uris: Vec::new(),
        token_endpoint_auth_method: None,
        id_token_signed_response_alg: None,
        federation: None,
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
    record.name = metadata
        .client_name
        .unwrap_or_else(|| "dynamically registered client".into());
    record.grant_types = metadata.grant_types;
    record.scopes = metadata.scopes;
    record.redirect_uris = metadata.redirect_uris;
    record.token_endpoint_auth_method = Some(metadata.auth_method.as_str().into());
    if let Some(dynamic) = record.dynamic_registration.as_mut() {
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
        let method = record.token_endpoint_auth_method.as_deref().unwrap_or_default();
        body.insert("redirect_uris".into(), json!(record.redirect_uris));
        body.insert("token_endpoint_auth_method".into(), json!(method));
        body.insert("response_types".into(), json!(dynamic.response_types));
        if method != "none" {
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
    fn loads_from_the_bridge_section() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "bridge:\n  registration:\n    open_public: false\n    initial_access_tokens: [\"t0ken\"]\n    unused_client_expiry: 7d\n    danger_allow_http_loopback_metadata_documents: true\n",
        )
        .unwrap();
        let config = crate::config::check(file.path()).unwrap().bridge.registration;
        assert!(!config.open_public);
        assert_eq!(config.unused_client_expiry, Duration::from_secs(7 * 86_400));
        assert!(config.danger_allow_http_loopback_metadata_documents);
        assert!(Registry::new(config).is_initial_access_token("t0ken"));

        std::fs::write(
            file.path(),
            "bridge:\n  registration:\n    unused_client_expiry: 1s\n    open_publik: true\n",
        )
        .unwrap();
        let error = crate::config::check(file.path()).unwrap_err().to_string();
        assert!(error.contains("bridge.registration.unused_client_expiry"), "{error}");
        assert!(error.contains("bridge.registration.open_publik"), "{error}");
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
