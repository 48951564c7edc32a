//! An upstream OpenID Connect provider: discovery, the JWKS (cached in memory and on disk, with a
//! staleness bound), and offline verification of upstream JWTs.
//!
//! [`OidcProvider::verify`] checks an upstream access or ID token against the cached JWKS without
//! calling the upstream: signature (algorithm allow-list, `kid` → a key of the matching type and
//! curve), `iss` equal to the configured issuer, the configured audience in `aud`, `exp` and `nbf`
//! against the caller's `now` with no leeway. Only a token whose `kid` is not in the cache makes it
//! refresh the JWKS — at most once per [`JwksConfig::min_refresh_interval`], through the circuit
//! breaker — before it answers.
//!
//! The JWKS is refreshed by [`OidcProvider::refresh`] (discovery, then the JWKS; both through the
//! upstream's [`Circuit`]) and by the task [`OidcProvider::spawn_refresh`] starts. A refreshed
//! JWKS is written to the disk cache given at construction and read back by the next process, so
//! a node restarted while the upstream is dark still verifies. A JWKS last fetched more than
//! [`JwksConfig::max_stale`] ago is no longer used: verification fails closed with
//! [`Error::JwksTooStale`].

mod cache;
mod keys;

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::Validation;
use serde_json::Value;
use url::Url;

pub use self::keys::VerifiedClaims;
use self::keys::{KeySet, TokenHeader};
use crate::Error;
use crate::circuit::Circuit;
use crate::clock::Clock;
use crate::config::{Endpoints, Issuer, JwksConfig, SignatureAlgorithm, UpstreamConfig};
use crate::http::HttpClient;

/// An upstream OIDC provider (or an OAuth2 server with explicit endpoints and a JWKS).
///
/// Cloning is cheap; clones share the cache, the circuit and the HTTP client.
#[derive(Clone, Debug)]
pub struct OidcProvider {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: Issuer,
    endpoints: Option<Endpoints>,
    algorithms: Vec<SignatureAlgorithm>,
    validations: Vec<(SignatureAlgorithm, Validation)>,
    jwks: JwksConfig,
    /// How long `verify` waits for an unknown-`kid` refresh (the token-path deadline).
    refresh_wait: Duration,
    http: HttpClient,
    circuit: Arc<Circuit>,
    clock: Arc<dyn Clock>,
    cache_path: Option<PathBuf>,
    keys: ArcSwapOption<KeySet>,
    metadata: ArcSwapOption<Metadata>,
    /// Serializes refreshes; holds the time of the last refresh an unknown `kid` caused.
    refreshing: tokio::sync::Mutex<Option<Duration>>,
}

/// What meshgate uses of the upstream's discovery document (OpenID Connect Discovery 1.0 §3,
/// RFC 8414 §2), or of its explicit [`Endpoints`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Metadata {
    /// `issuer`, equal to the configured issuer.
    pub issuer: String,
    /// `jwks_uri`.
    pub jwks_uri: Option<Url>,
    /// `token_endpoint`.
    pub token_endpoint: Option<Url>,
    /// `authorization_endpoint`.
    pub authorization_endpoint: Option<Url>,
    /// `introspection_endpoint`.
    pub introspection_endpoint: Option<Url>,
    /// `userinfo_endpoint`.
    pub userinfo_endpoint: Option<Url>,
    /// The whole discovery document (`null` for explicit endpoints).
    pub document: Value,
}

/// The provider's cache and circuit state, for metrics and `meshgate upstream status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ProviderStatus {
    /// The circuit breaker.
    pub circuit: crate::breaker::Snapshot,
    /// When the cached JWKS was fetched, since the Unix epoch; `None` when there is none.
    pub jwks_fetched_at: Option<Duration>,
    /// Usable keys in the cached JWKS.
    pub jwks_keys: usize,
    /// Whether the cached JWKS is still within `max_stale`.
    pub jwks_fresh_enough: bool,
    /// Whether discovery (or explicit endpoints) has given the upstream's endpoints.
    pub discovered: bool,
}

impl OidcProvider {
    /// A provider for `config`, calling through `http` and `circuit`, reading time from `clock`,
    /// caching the JWKS at `cache_path` (a file in the node's data directory; `None` keeps it in
    /// memory only).
    ///
    /// Makes no network call: it loads the disk cache if there is one for the same issuer (a
    /// cache that cannot be read, or belongs to another issuer, is ignored with a warning).
    /// Call [`OidcProvider::refresh`] or [`OidcProvider::spawn_refresh`] to fetch.
    pub fn new(
        config: &UpstreamConfig,
        http: HttpClient,
        circuit: Arc<Circuit>,
        clock: Arc<dyn Clock>,
        cache_path: Option<PathBuf>,
    ) -> Self {
        let audience = config.audience.as_deref();
        let validations = config
            .algorithms
            .iter()
            .map(|algorithm| {
                (
                    *algorithm,
                    keys::validation(*algorithm, config.issuer.as_str(), audience),
                )
            })
            .collect();
        let inner = Inner {
            issuer: config.issuer.clone(),
            endpoints: config.endpoints.clone(),
            algorithms: config.algorithms.clone(),
            validations,
            jwks: config.jwks.clone(),
            refresh_wait: config.timeouts.token_deadline,
            http,
            circuit,
            clock,
            cache_path,
            keys: ArcSwapOption::empty(),
            metadata: ArcSwapOption::empty(),
            refreshing: tokio::sync::Mutex::new(None),
        };
        if let Some(endpoints) = &inner.endpoints {
            inner
                .metadata
                .store(Some(Arc::new(Metadata::from_endpoints(&inner.issuer, endpoints))));
        }
        inner.load_cache();
        Self { inner: Arc::new(inner) }
    }

    /// Fetches discovery (unless endpoints are explicit) and the JWKS through the circuit
    /// breaker, replaces the cached copies, and writes the disk cache.
    ///
    /// Fails with [`Error::CircuitOpen`] without calling while the breaker is open, with the
    /// HTTP errors, [`Error::UpstreamStatus`], [`Error::InvalidDocument`],
    /// [`Error::IssuerMismatch`] or [`Error::NoUsableKeys`] when the upstream answers badly (the
    /// cached copies are then kept), and with [`Error::MissingEndpoint`] when there is no JWKS
    /// URL. A failure to write the disk cache is logged, not returned.
    pub async fn refresh(&self) -> Result<(), Error> {
        let _serialized = self.inner.refreshing.lock().await;
        self.inner.refresh().await
    }

    /// Starts a task that refreshes now and then every [`JwksConfig::refresh_interval`] (after a
    /// failure, every [`JwksConfig::min_refresh_interval`] if that is shorter), logging
    /// failures. It ends when every clone of this provider is dropped, or when aborted.
    pub fn spawn_refresh(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let config = self.inner.jwks.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let provider = OidcProvider { inner };
                let pause = match provider.refresh().await {
                    Ok(()) => config.refresh_interval,
                    Err(error) => {
                        tracing::warn!(
                            upstream = %provider.inner.circuit.name(),
                            error = %error,
                            "upstream JWKS refresh failed"
                        );
                        config.refresh_interval.min(config.min_refresh_interval)
                    }
                };
                drop(provider);
                tokio::time::sleep(pause).await;
            }
        })
    }

    /// Verifies an upstream JWT (access or ID token) at `now` (since the Unix epoch) against the
    /// cached JWKS; see the [module documentation](self).
    ///
    /// Calls the upstream only when no cached key has the token's `kid` (or nothing usable is
    /// cached), and then at most once per [`JwksConfig::min_refresh_interval`] and only if the
    /// circuit allows; it waits for that refresh at most the token-path deadline
    /// ([`Timeouts::token_deadline`](crate::config::Timeouts::token_deadline)) and lets it finish
    /// in the background. Errors: [`Error::is_invalid_token`] ones for a token that is not
    /// acceptable, [`Error::JwksUnavailable`] or [`Error::JwksTooStale`] when it cannot be judged.
    pub async fn verify(&self, token: &str, now: Duration) -> Result<VerifiedClaims, Error> {
        let header = keys::parse_header(token, &self.inner.algorithms)?;
        match self.inner.verify_cached(token, &header, now) {
            Err(Error::UnknownKey { .. } | Error::JwksUnavailable | Error::JwksTooStale { .. }) => {
                let inner = self.inner.clone();
                let refresh = tokio::spawn(async move { inner.refresh_for_unknown_key(now).await });
                // Past the wait the refresh goes on; this answer comes from the cache as it is.
                let _ = tokio::time::timeout(self.inner.refresh_wait, refresh).await;
                self.inner.verify_cached(token, &header, now)
            }
            result => result,
        }
    }

    /// Verifies an OpenID Connect ID token like [`OidcProvider::verify`], with `client_id`
    /// (meshgate's client at the upstream) as the required audience instead of the configured
    /// `audience`: signature with an allowed algorithm, `iss`, `aud`, `exp`, `nbf`. The caller
    /// checks `nonce` (and `azp`); see [`crate::login`].
    pub async fn verify_id_token(&self, token: &str, client_id: &str, now: Duration) -> Result<VerifiedClaims, Error> {
        let header = keys::parse_header(token, &self.inner.algorithms)?;
        let validation = keys::validation(header.algorithm, self.inner.issuer.as_str(), Some(client_id));
        match self.inner.verify_cached_with(token, &header, &validation, now) {
            Err(Error::UnknownKey { .. } | Error::JwksUnavailable | Error::JwksTooStale { .. }) => {
                let inner = self.inner.clone();
                let refresh = tokio::spawn(async move { inner.refresh_for_unknown_key(now).await });
                let _ = tokio::time::timeout(self.inner.refresh_wait, refresh).await;
                self.inner.verify_cached_with(token, &header, &validation, now)
            }
            result => result,
        }
    }

    /// Verifies like [`OidcProvider::verify`] but never calls the upstream: an unknown `kid`
    /// fails with [`Error::UnknownKey`].
    pub fn verify_offline(&self, token: &str, now: Duration) -> Result<VerifiedClaims, Error> {
        let header = keys::parse_header(token, &self.inner.algorithms)?;
        self.inner.verify_cached(token, &header, now)
    }

    /// The upstream's endpoints, once discovered (or from explicit configuration, or from the
    /// disk cache).
    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.inner.metadata.load_full()
    }

    /// The upstream's circuit breaker.
    pub fn circuit(&self) -> &Arc<Circuit> {
        &self.inner.circuit
    }

    /// Cache and circuit state at `now`.
    pub fn status(&self, now: Duration) -> ProviderStatus {
        let keys = self.inner.keys.load();
        let fetched_at = keys.as_ref().map(|keys| keys.fetched_at);
        ProviderStatus {
            circuit: self.inner.circuit.snapshot(),
            jwks_fetched_at: fetched_at,
            jwks_keys: keys.as_ref().map_or(0, |keys| keys.len()),
            jwks_fresh_enough: fetched_at.is_some_and(|at| now.saturating_sub(at) <= self.inner.jwks.max_stale),
            discovered: self.inner.metadata.load().is_some(),
        }
    }
}

impl Inner {
    fn verify_cached(&self, token: &str, header: &TokenHeader, now: Duration) -> Result<VerifiedClaims, Error> {
        let (_, validation) = self
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.algorithm)
            .ok_or_else(|| Error::AlgorithmNotAllowed(header.algorithm.as_str().into()))?;
        self.verify_cached_with(token, header, validation, now)
    }

    fn verify_cached_with(
        &self,
        token: &str,
        header: &TokenHeader,
        validation: &jsonwebtoken::Validation,
        now: Duration,
    ) -> Result<VerifiedClaims, Error> {
        let keys = self.keys.load();
        let Some(keys) = keys.as_ref() else {
            return Err(Error::JwksUnavailable);
        };
        let age = now.saturating_sub(keys.fetched_at);
        if age > self.jwks.max_stale {
            return Err(Error::JwksTooStale {
                age,
                max_stale: self.jwks.max_stale,
            });
        }
        keys.verify(token, header, validation, now)
    }

    /// Refreshes unless an unknown `kid` already caused a refresh less than
    /// `min_refresh_interval` before `now`. Failures are logged: the caller answers from the
    /// cache either way.
    async fn refresh_for_unknown_key(&self, now: Duration) {
        let mut last = self.refreshing.lock().await;
        if last.is_some_and(|last| now < last.saturating_add(self.jwks.min_refresh_interval)) {
            return;
        }
        *last = Some(now);
        if let Err(error) = self.refresh().await {
            tracing::warn!(upstream = %self.circuit.name(), error = %error, "JWKS refresh for an unknown key id failed");
        }
    }

    /// The refresh itself; callers hold `refreshing`.
    async fn refresh(&self) -> Result<(), Error> {
        let metadata = match &self.endpoints {
            Some(endpoints) => Arc::new(Metadata::from_endpoints(&self.issuer, endpoints)),
            None => {
                let url = self.issuer.discovery_url();
                let metadata = self
                    .circuit
                    .call(async {
                        // An OAuth 2.0 server without OpenID Connect (a meshgate hub) publishes
                        // RFC 8414 metadata instead: tried when the OIDC document is not found.
                        let document = match self.get_json(&url, "discovery document").await {
                            Err(Error::UpstreamStatus { status: 404, .. }) => {
                                self.get_json(&self.issuer.rfc8414_url(), "discovery document").await?
                            }
                            other => other?,
                        };
                        Metadata::from_discovery(&self.issuer, document)
                    })
                    .await?;
                Arc::new(metadata)
            }
        };
        self.metadata.store(Some(metadata.clone()));
        let jwks_uri = metadata.jwks_uri.clone().ok_or(Error::MissingEndpoint("jwks"))?;
        let keys = self
            .circuit
            .call(async {
                let document = self.get_json(jwks_uri.as_str(), "JWKS").await?;
                KeySet::parse(document, &self.algorithms, self.clock.now())
            })
            .await?;
        let keys = Arc::new(keys);
        self.keys.store(Some(keys.clone()));
        self.store_cache(&metadata, &keys).await;
        Ok(())
    }

    /// GETs a JSON document; anything but a 200 with a JSON body is an error.
    async fn get_json(&self, url: &str, what: &'static str) -> Result<Value, Error> {
        let request = ::http::Request::get(url)
            .header(::http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| Error::InvalidDocument {
                what,
                reason: "its URL is not a valid URI".into(),
            })?;
        let response = self.http.execute(request).await?;
        if response.status() != ::http::StatusCode::OK {
            return Err(Error::UpstreamStatus {
                what,
                status: response.status().as_u16(),
            });
        }
        serde_json::from_slice(response.body()).map_err(|error| Error::InvalidDocument {
            what,
            reason: format!("not JSON ({error})"),
        })
    }

    fn load_cache(&self) {
        let Some(path) = &self.cache_path else { return };
        let file = match cache::load(path) {
            Ok(Some(file)) => file,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(upstream = %self.circuit.name(), error = %error, "ignoring the JWKS cache file");
                return;
            }
        };
        if file.issuer != self.issuer.as_str() {
            tracing::warn!(upstream = %self.circuit.name(), "ignoring a JWKS cache file of another issuer");
            return;
        }
        let fetched_at = file.fetched_at();
        if self.endpoints.is_none() && !file.discovery.is_null() {
            match Metadata::from_discovery(&self.issuer, file.discovery) {
                Ok(metadata) => self.metadata.store(Some(Arc::new(metadata))),
                Err(error) => {
                    tracing::warn!(upstream = %self.circuit.name(), error = %error, "ignoring the cached discovery document")
                }
            }
        }
        match KeySet::parse(file.jwks, &self.algorithms, fetched_at) {
            Ok(keys) => self.keys.store(Some(Arc::new(keys))),
            Err(error) => tracing::warn!(upstream = %self.circuit.name(), error = %error, "ignoring the cached JWKS"),
        }
    }

    async fn store_cache(&self, metadata: &Metadata, keys: &KeySet) {
        let Some(path) = self.cache_path.clone() else { return };
        let file = cache::CacheFile {
            version: cache::CacheFile::VERSION,
            issuer: self.issuer.as_str().to_owned(),
            fetched_at_ms: u64::try_from(keys.fetched_at.as_millis()).unwrap_or(u64::MAX),
            discovery: metadata.document.clone(),
            jwks: keys.document.clone(),
        };
        let written = tokio::task::spawn_blocking(move || cache::store(&path, &file)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(upstream = %self.circuit.name(), error = %error, "cannot write the JWKS cache")
            }
            Err(error) => tracing::warn!(upstream = %self.circuit.name(), error = %error, "JWKS cache writer failed"),
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .field("circuit", &self.circuit)
            .field("cache_path", &self.cache_path)
            .finish_non_exhaustive()
    }
}

impl Metadata {
    /// Reads a discovery document whose `issuer` must equal `issuer` exactly.
    fn from_discovery(issuer: &Issuer, document: Value) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidDocument {
            what: "discovery document",
            reason,
        };
        let Some(object) = document.as_object() else {
            return Err(invalid("it is not a JSON object".into()));
        };
        let Some(found) = object.get("issuer").and_then(Value::as_str) else {
            return Err(invalid("it has no `issuer`".into()));
        };
        if found != issuer.as_str() {
            return Err(Error::IssuerMismatch {
                expected: issuer.as_str().to_owned(),
                found: crate::error::untrusted(found),
            });
        }
        let url = |name: &str| -> Result<Option<Url>, Error> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Url::parse(text)
                    .map(Some)
                    .map_err(|error| invalid(format!("`{name}` is not a URL: {error}"))),
                Some(_) => Err(invalid(format!("`{name}` is not a string"))),
            }
        };
        Ok(Self {
            issuer: found.to_owned(),
            jwks_uri: url("jwks_uri")?,
            token_endpoint: url("token_endpoint")?,
            authorization_endpoint: url("authorization_endpoint")?,
            introspection_endpoint: url("introspection_endpoint")?,
            userinfo_endpoint: url("userinfo_endpoint")?,
            document,
        })
    }

    fn from_endpoints(issuer: &Issuer, endpoints: &Endpoints) -> Self {
        Self {
            issuer: issuer.as_str().to_owned(),
            jwks_uri: endpoints.jwks.clone(),
            token_endpoint: endpoints.token.clone(),
            authorization_endpoint: endpoints.authorization.clone(),
            introspection_endpoint: endpoints.introspection.clone(),
            userinfo_endpoint: None,
            document: Value::Null,
        }
    }
}
