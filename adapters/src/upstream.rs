//! [`Upstream`]: everything meshgate holds for one configured upstream, wired together.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::circuit::Circuit;
use crate::clock::Clock;
use crate::config::UpstreamConfig;
use crate::http::HttpClient;
use crate::oauth2_upstream::{OAuth2Upstream, TokenEndpoint};
use crate::oidc::{OidcProvider, ProviderStatus};

/// One upstream: its HTTP client, its circuit breaker, its [`OidcProvider`] (discovery, JWKS,
/// offline verification) and its [`OAuth2Upstream`] (token endpoint), all sharing the one client
/// and the one breaker. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Upstream {
    name: String,
    oidc: OidcProvider,
    oauth2: OAuth2Upstream,
    http: HttpClient,
    credentials: Option<(String, crate::config::Secret)>,
    deadline: Duration,
    auth_method: crate::config::TokenAuthMethod,
}

impl Upstream {
    /// Builds the upstream described by `config`; `cache_path` is its JWKS disk cache file (see
    /// [`OidcProvider::new`]). Makes no network call.
    ///
    /// Fails when the HTTP client cannot be built ([`Error::NoRootCertificate`],
    /// [`Error::InvalidRootCertificate`], [`Error::ClientBuild`]).
    pub fn new(config: &UpstreamConfig, clock: Arc<dyn Clock>, cache_path: Option<PathBuf>) -> Result<Self, Error> {
        let http = HttpClient::new(&config.http_config())?;
        let circuit = Arc::new(Circuit::new(config.name.clone(), config.breaker.clone(), clock.clone()));
        let oidc = OidcProvider::new(config, http.clone(), circuit.clone(), clock, cache_path);
        let endpoint = match config.endpoints.as_ref().and_then(|endpoints| endpoints.token.clone()) {
            Some(url) => TokenEndpoint::Fixed(url),
            None => TokenEndpoint::Discovered(oidc.clone()),
        };
        let oauth2 = OAuth2Upstream::new(config, endpoint, http.clone(), circuit);
        Ok(Self {
            name: config.name.clone(),
            oidc,
            oauth2,
            http,
            credentials: config.client_id.clone().zip(config.client_secret.clone()),
            deadline: config.timeouts.token_deadline,
            auth_method: config.token_auth_method,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Discovery, JWKS and offline verification.
    pub fn oidc(&self) -> &OidcProvider {
        &self.oidc
    }

    /// The token endpoint client.
    pub fn oauth2(&self) -> &OAuth2Upstream {
        &self.oauth2
    }

    /// The circuit breaker every call to this upstream goes through.
    pub fn circuit(&self) -> &Arc<Circuit> {
        self.oidc.circuit()
    }

    /// Whether [`Upstream::introspect`] can be tried: meshgate has credentials at the upstream
    /// and knows its introspection endpoint.
    pub fn can_introspect(&self) -> bool {
        self.credentials.is_some()
            && self
                .oidc
                .metadata()
                .is_some_and(|metadata| metadata.introspection_endpoint.is_some())
    }

    /// Introspects `token` at the upstream (RFC 7662) with meshgate's configured credentials,
    /// within the token-path deadline; see [`crate::introspection::introspect`]. Fails with
    /// [`Error::MissingCredentials`] or [`Error::MissingEndpoint`] when it cannot be tried.
    pub async fn introspect(&self, token: &str) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        let Some((client_id, client_secret)) = &self.credentials else {
            return Err(Error::MissingCredentials);
        };
        let endpoint = self
            .oidc
            .metadata()
            .and_then(|metadata| metadata.introspection_endpoint.clone())
            .ok_or(Error::MissingEndpoint("introspection"))?;
        crate::introspection::introspect(
            &self.http,
            self.circuit(),
            &endpoint,
            client_id,
            client_secret,
            token,
            self.deadline,
        )
        .await
    }

    /// Starts a login at the upstream (see [`crate::login`]): the authorization URL to redirect
    /// the browser to, with fresh `state`, `nonce` and PKCE S256 challenge, for meshgate's
    /// configured `client_id` and `redirect_uri` (registered at the upstream), asking for
    /// `openid` and `scopes`. Makes no network call; needs the discovered (or configured)
    /// authorization endpoint: [`Error::MissingEndpoint`] otherwise, [`Error::MissingCredentials`]
    /// without a configured `client_id`.
    pub fn begin_login(&self, redirect_uri: &url::Url, scopes: &[&str]) -> Result<crate::login::LoginRequest, Error> {
        let (client_id, _) = self.credentials.as_ref().ok_or(Error::MissingCredentials)?;
        let metadata = self.oidc.metadata();
        let endpoints = crate::login::Endpoints {
            authorization: metadata.as_ref().and_then(|m| m.authorization_endpoint.as_ref()),
            token: None,
            client_id,
            client_secret: None,
            auth_method: self.auth_method,
        };
        crate::login::begin(&endpoints, redirect_uri, scopes)
    }

    /// Finishes a login (see [`crate::login`]): exchanges `code` at the upstream's token endpoint
    /// with meshgate's credentials and `request`'s PKCE verifier (through the breaker, within
    /// three times the token-path deadline), then verifies the ID token against the cached JWKS
    /// (audience: meshgate's `client_id`) and its `nonce`. The caller has checked `state` with
    /// [`crate::login::LoginRequest::state_matches`].
    ///
    /// Errors: [`Error::TokenRejected`] when the upstream refuses the code; the
    /// [`Error::is_invalid_token`] ones (with [`Error::NonceMismatch`]) for an unacceptable ID
    /// token; [`Error::is_upstream_failure`] ones when it is unreachable or answers badly.
    pub async fn finish_login(
        &self,
        request: &crate::login::LoginRequest,
        code: &str,
        redirect_uri: &url::Url,
        now: Duration,
    ) -> Result<crate::login::LoginIdentity, Error> {
        let (client_id, client_secret) = self.credentials.as_ref().ok_or(Error::MissingCredentials)?;
        let metadata = self.oidc.metadata();
        let endpoints = crate::login::Endpoints {
            authorization: None,
            token: metadata.as_ref().and_then(|m| m.token_endpoint.as_ref()),
            client_id,
            client_secret: Some(client_secret),
            auth_method: self.auth_method,
        };
        let deadline = crate::login::deadline(self.deadline);
        let (id_token, access_token, scopes) = self
            .circuit()
            .call_with_deadline(
                deadline,
                crate::login::exchange(&endpoints, &self.http, code, &request.pkce_verifier, redirect_uri),
            )
            .await?;
        let claims = self.oidc.verify_id_token(&id_token, client_id, now).await?;
        let subject = crate::login::check_claims(&claims, &request.nonce, client_id)?;
        Ok(crate::login::LoginIdentity {
            subject,
            id_token_claims: claims,
            access_token,
            scopes,
        })
    }

    /// Cache and circuit state at `now`, for metrics and `meshgate upstream status`.
    pub fn status(&self, now: Duration) -> ProviderStatus {
        self.oidc.status(now)
    }
}
