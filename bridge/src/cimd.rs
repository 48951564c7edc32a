//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, as the MCP
//! authorization spec uses them): a `client_id` that is an `https` URL names a JSON document of
//! client metadata served at that URL. [`resolve_client`] looks up any `client_id`: a registered
//! client from the replicated registry, or a metadata document, fetched and cached. `/authorize`
//! and `/token` fetch a document through [`Resolver::resolve`] before handling the request, then
//! handle the client as [`client_record`] describes it, from [`Resolver::cached`].
//!
//! Limits (documented in the README): the document is at most [`MAX_DOCUMENT_BYTES`]; the fetch
//! connects within 2 s and completes within [`FETCH_TIMEOUT`]; redirects are never followed; a
//! fetched document is cached for [`CACHE_TTL_SECS`], a failure for [`NEGATIVE_TTL_SECS`]; at most
//! [`CACHE_ENTRIES`] documents are cached. The URL must be `https`, with a path, without query,
//! fragment, user information or dot segments, and not an IP literal in a private, loopback or
//! link-local range. Only `danger_allow_http_loopback_metadata_documents` (development) admits
//! `http` on loopback hosts. A document's `client_id` must equal its URL; it describes a public
//! client (`token_endpoint_auth_method` `none`) with loopback or `https` redirection URIs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::error::OAuthError;
use crate::http::AppState;
use crate::registration::{Metadata, is_loopback_host};

/// Largest metadata document, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
/// Longest fetch of a document, start to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched document is used before it is fetched again, seconds.
pub const CACHE_TTL_SECS: u64 = 300;
/// How long a failed fetch is remembered (so a bad URL does not cause a fetch per request), seconds.
pub const NEGATIVE_TTL_SECS: u64 = 30;
/// Most cached documents.
pub const CACHE_ENTRIES: usize = 1024;

/// Where a resolved client comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientSource {
    /// The replicated client registry (added by an operator or registered dynamically).
    Registered,
    /// A Client ID Metadata Document.
    MetadataDocument,
}

/// A client as `/authorize` and `/token` need it, wherever it comes from.
#[derive(Debug, Clone)]
pub struct ResolvedClient {
    /// The client identifier (for a metadata document: its URL).
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Exact redirection URIs (empty for clients registered without any).
    pub redirect_uris: Vec<String>,
    /// Whether the client is public (no secret, no keys): it authenticates with `none` + PKCE.
    pub public: bool,
    /// Grant types.
    pub grant_types: Vec<String>,
    /// Scopes the client may be granted (empty: the caller's default policy applies).
    pub scopes: Vec<String>,
    /// Where it comes from.
    pub source: ClientSource,
    /// The other metadata of a document (`client_uri`, `logo_uri`, ...), for a consent page.
    pub metadata: serde_json::Map<String, Value>,
}

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Accept metadata-document client ids at all.
    pub enabled: bool,
    /// Development only: `http` documents on loopback hosts, and IP-literal loopback hosts.
    pub danger_allow_http_loopback: bool,
    /// Fetch timeout.
    pub timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            danger_allow_http_loopback: false,
            timeout: FETCH_TIMEOUT,
        }
    }
}

type Entry = (u64, Result<Arc<ResolvedClient>, String>);

/// Fetches and caches metadata documents.
pub struct Resolver {
    config: ResolverConfig,
    http: Option<adapters::http::HttpClient>,
    cache: Mutex<HashMap<String, Entry>>,
}

impl Resolver {
    /// A resolver with `config`.
    pub fn new(config: ResolverConfig) -> Self {
        let http = adapters::http::HttpClient::new(&adapters::http::HttpConfig {
            connect_timeout: Duration::from_secs(2).min(config.timeout),
            timeout: config.timeout,
            extra_root_ca_pem: None,
            max_response_bytes: MAX_DOCUMENT_BYTES,
        })
        .map_err(|e| tracing::error!(error = %e, "cannot build the metadata-document HTTP client"))
        .ok();
        Self {
            config,
            http,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `client_id` looks like a metadata-document URL this resolver would fetch.
    pub fn accepts(&self, client_id: &str) -> bool {
        self.config.enabled && self.document_url(client_id).is_ok()
    }

    /// The client described by the document at `url`, from the cache or fetched at `now`.
    pub async fn resolve(&self, url: &str, now: u64) -> Result<Arc<ResolvedClient>, OAuthError> {
        if !self.config.enabled {
            return Err(OAuthError::invalid_client("unknown client"));
        }
        self.document_url(url).map_err(OAuthError::invalid_client)?;
        if let Some((at, cached)) = self.lock().get(url).cloned() {
            let ttl = if cached.is_ok() {
                CACHE_TTL_SECS
            } else {
                NEGATIVE_TTL_SECS
            };
            if now < at.saturating_add(ttl) {
                return cached.map_err(OAuthError::invalid_client);
            }
        }
        let result = self.fetch(url).await.map(Arc::new);
        if let Err(why) = &result {
            tracing::info!(client_id = %url, reason = %why, "client metadata document refused");
        }
        let mut cache = self.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (at, r)| {
                now < at.saturating_add(if r.is_ok() { CACHE_TTL_SECS } else { NEGATIVE_TTL_SECS })
            });
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(url.to_owned(), (now, result.clone()));
        result.map_err(OAuthError::invalid_client)
    }

    /// A document resolved successfully before and still cached (possibly past its refresh time:
    /// an authorization request validated with it may finish with it), without fetching.
    pub fn cached(&self, url: &str) -> Option<Arc<ResolvedClient>> {
        if !self.config.enabled {
            return None;
        }
        self.lock().get(url).and_then(|(_, r)| r.as_ref().ok().cloned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a client id URL (draft §3): https (or http on loopback in danger mode), a path, no
    /// query, fragment, user information or dot segments, no private IP literal.
    fn document_url(&self, client_id: &str) -> Result<url::Url, String> {
        if client_id.len() > crate::registration::MAX_URI_LEN {
            return Err("client_id URL too long".into());
        }
        let url = url::Url::parse(client_id).map_err(|_| "client_id is not a URL".to_owned())?;
        // The parsed form must be the same string: no normalisation (dot segments, case) allowed.
        if url.as_str() != client_id {
            return Err("client_id URL is not in normal form (dot segments, default port, case)".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("client_id URL must not have a query or fragment".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("client_id URL must not carry user information".into());
        }
        if url.path() == "/" || url.path().is_empty() {
            return Err("client_id URL must have a path".into());
        }
        let host = url.host().ok_or_else(|| "client_id URL has no host".to_owned())?;
        let loopback = is_loopback_host(&host);
        match url.scheme() {
            "https" if !loopback && !private_ip_literal(&host) => Ok(url.clone()),
            "https" | "http" if loopback && self.config.danger_allow_http_loopback => Ok(url.clone()),
            "https" => Err("client_id URL names a private or loopback address".into()),
            _ => Err("client_id URL must be https".into()),
        }
    }

    async fn fetch(&self, url: &str) -> Result<ResolvedClient, String> {
        let http = self.http.as_ref().ok_or("no HTTP client")?;
        let request = axum::http::Request::builder()
            .method("GET")
            .uri(url)
            .header("accept", "application/json")
            .body(Vec::new())
            .map_err(|e| format!("bad request: {e}"))?;
        // The client's own timeout bounds the exchange; this one also bounds DNS resolution.
        let response = tokio::time::timeout(self.config.timeout + Duration::from_secs(1), http.execute(request))
            .await
            .map_err(|_| format!("fetching the document took longer than {:?}", self.config.timeout))?
            .map_err(|e| format!("fetching the document failed: {e}"))?;
        if response.status() != axum::http::StatusCode::OK {
            return Err(format!("the document URL answered {}", response.status()));
        }
        let document: Value =
            serde_json::from_slice(response.body()).map_err(|_| "the document is not JSON".to_owned())?;
        parse_document(url, document)
    }
}

/// The (never replicated) client record a metadata-document client is handled with at
/// `/authorize` and `/token`: public, its redirection URIs, grant types and scopes.
pub fn client_record(resolved: &ResolvedClient, token_alg: &str, now: u64) -> mesh::state::ClientRecord {
    mesh::state::ClientRecord {
        client_id: resolved.client_id.clone(),
        name: resolved.name.clone(),
        secrets: Vec::new(),
        grant_types: resolved.grant_types.clone(),
        scopes: resolved.scopes.clone(),
        audiences: Vec::new(),
        token_alg: token_alg.to_owned(),
        jwks: None,
        created_at: now,
        degradation: None,
        dynamic_registration: None,
        redirect_uris: resolved.redirect_uris.clone(),
        post_logout_redirect_uris: Vec::new(),
        token_endpoint_auth_method: Some("none".into()),
        id_token_signed_response_alg: None,
        federation: None,
    }
}

/// Validates a fetched document for the client id `url`.
pub fn parse_document(url: &str, mut document: Value) -> Result<ResolvedClient, String> {
    let object = document.as_object_mut().ok_or("the document is not a JSON object")?;
    if object.get("client_id").and_then(Value::as_str) != Some(url) {
        return Err("the document's client_id is not its URL".into());
    }
    for secret in ["client_secret", "client_secret_expires_at"] {
        if object.contains_key(secret) {
            return Err(format!("the document must not contain `{secret}`"));
        }
    }
    object
        .entry("token_endpoint_auth_method")
        .or_insert_with(|| Value::String("none".into()));
    let metadata = Metadata::parse(&document).map_err(|e| e.to_string())?;
    if !metadata.is_public() {
        return Err("a metadata-document client must use token_endpoint_auth_method none".into());
    }
    if metadata.redirect_uris.is_empty() {
        return Err("the document has no redirect_uris".into());
    }
    Ok(ResolvedClient {
        client_id: url.to_owned(),
        name: metadata.client_name.clone().unwrap_or_else(|| url.to_owned()),
        redirect_uris: metadata.redirect_uris,
        public: true,
        grant_types: metadata.grant_types,
        scopes: metadata.scopes,
        source: ClientSource::MetadataDocument,
        metadata: metadata.extra,
    })
}

fn private_ip_literal(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(ip) => {
            ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_broadcast()
        }
        url::Host::Ipv6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_unique_local()
                || ip.is_unicast_link_local()
                || ip.to_ipv4_mapped().is_some()
        }
        url::Host::Domain(_) => false,
    }
}

/// Resolves any `client_id` for `/authorize` or `/token`: a client in the replicated registry
/// first, else (for an https URL) its Client ID Metadata Document. `invalid_client` when neither.
pub async fn resolve_client(state: &AppState, client_id: &str) -> Result<ResolvedClient, OAuthError> {
    if let Some(client) = state.view().clients.get(client_id) {
        let record = &client.record;
        let dynamic = record.dynamic_registration.as_ref();
        return Ok(ResolvedClient {
            client_id: record.client_id.clone(),
            name: record.name.clone(),
            redirect_uris: record.redirect_uris.clone(),
            public: !client.has_secrets() && client.assertion_keys.is_empty(),
            grant_types: record.grant_types.clone(),
            scopes: record.scopes.clone(),
            source: ClientSource::Registered,
            metadata: dynamic.map(|d| d.metadata.clone()).unwrap_or_default(),
        });
    }
    let resolver = &state.registry().documents;
    if !resolver.accepts(client_id) {
        return Err(OAuthError::invalid_client("unknown client"));
    }
    resolver
        .resolve(client_id, state.now())
        .await
        .map(|c| ResolvedClient::clone(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_urls() {
        let strict = Resolver::new(ResolverConfig::default());
        assert!(strict.accepts("https://app.example/client.json"));
        for bad in [
            "https://app.example",
            "https://app.example/",
            "https://app.example/c.json?x=1",
            "https://app.example/c.json#f",
            "https://u:p@app.example/c.json",
            "https://app.example/a/../c.json",
            "http://app.example/c.json",
            "http://127.0.0.1:8080/c.json",
            "https://127.0.0.1/c.json",
            "https://10.0.0.1/c.json",
            "https://[::1]/c.json",
            "my-client",
        ] {
            assert!(!strict.accepts(bad), "{bad}");
        }
        let dev = Resolver::new(ResolverConfig {
            danger_allow_http_loopback: true,
            ..Default::default()
        });
        assert!(dev.accepts("http://127.0.0.1:8080/c.json"));
        assert!(!dev.accepts("http://app.example/c.json"));
    }

    #[test]
    fn documents_are_checked() {
        let url = "https://app.example/client.json";
        let good =
            serde_json::json!({"client_id": url, "client_name": "App", "redirect_uris": ["http://127.0.0.1/cb"]});
        let client = parse_document(url, good).unwrap();
        assert!(client.public);
        assert_eq!(client.redirect_uris, ["http://127.0.0.1/cb"]);
        let wrong_id =
            serde_json::json!({"client_id": "https://other.example/c.json", "redirect_uris": ["http://127.0.0.1/cb"]});
        assert!(parse_document(url, wrong_id).is_err());
        let secret = serde_json::json!({"client_id": url, "redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "client_secret_basic"});
        assert!(parse_document(url, secret).is_err());
        let script = serde_json::json!({"client_id": url, "redirect_uris": ["javascript:alert(1)"]});
        assert!(parse_document(url, script).is_err());
    }
}
