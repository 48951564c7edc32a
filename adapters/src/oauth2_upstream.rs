//! A plain OAuth2 upstream's token endpoint, through the `oauth2` crate over [`HttpClient`].
//!
//! [`OAuth2Upstream::forward_client_credentials`] passes a federated client's own credentials on
//! to the upstream (RFC 6749 §4.4), so agents keep the secrets they already have there;
//! [`OAuth2Upstream::client_credentials`] does the same with meshgate's configured credentials.
//! Every call goes through the upstream's [`Circuit`] with a response deadline
//! ([`Timeouts::token_deadline`](crate::config::Timeouts::token_deadline), 300 ms by default),
//! shorter than the HTTP client's total timeout: an upstream that accepts the connection and then
//! never answers fails the call within the deadline, and counts as a breaker failure.
//!
//! The upstream's answer is judged for the breaker: a token or an OAuth error (`invalid_client`,
//! [`Error::TokenRejected`]) means the upstream is up; a 5xx, a 429, an HTML page or a broken
//! body means it is not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicRequestTokenError, BasicTokenResponse};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse, Scope, TokenResponse, TokenUrl,
};
use url::Url;

use crate::Error;
use crate::circuit::Circuit;
use crate::config::{Secret, TokenAuthMethod, UpstreamConfig};
use crate::http::HttpClient;
use crate::oidc::OidcProvider;

/// Where the token endpoint comes from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TokenEndpoint {
    /// A configured URL.
    Fixed(Url),
    /// The `token_endpoint` of an OIDC provider's discovery document. While it is not known yet,
    /// a call first tries a discovery (within its deadline).
    Discovered(OidcProvider),
}

/// A token issued by the upstream. Tokens are [`Secret`]s: `Debug` does not show them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UpstreamToken {
    /// `access_token`.
    pub access_token: Secret,
    /// `token_type`, e.g. `bearer`.
    pub token_type: String,
    /// `expires_in`, if given.
    pub expires_in: Option<Duration>,
    /// `refresh_token`, if given.
    pub refresh_token: Option<Secret>,
    /// `scope`, if given (RFC 6749 §5.1: absent means as requested).
    pub scopes: Option<Vec<String>>,
}

/// The token endpoint client of one upstream.
#[derive(Clone, Debug)]
pub struct OAuth2Upstream {
    endpoint: TokenEndpoint,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    auth_method: TokenAuthMethod,
    deadline: Duration,
    http: HttpClient,
    circuit: Arc<Circuit>,
}

impl OAuth2Upstream {
    /// A client of `endpoint` with `config`'s credentials, auth method and token deadline,
    /// calling through `http` and `circuit` (share both with the upstream's [`OidcProvider`]: one
    /// upstream, one breaker).
    pub fn new(config: &UpstreamConfig, endpoint: TokenEndpoint, http: HttpClient, circuit: Arc<Circuit>) -> Self {
        Self {
            endpoint,
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            auth_method: config.token_auth_method,
            deadline: config.timeouts.token_deadline,
            http,
            circuit,
        }
    }

    /// The configured token-path response deadline.
    pub fn token_deadline(&self) -> Duration {
        self.deadline
    }

    /// Requests a token with a client's own credentials (the client_credentials grant), as the
    /// client would have at the upstream itself; `scope` is the space-separated scope it asked
    /// for. Gives up after `deadline`.
    ///
    /// Errors: [`Error::TokenRejected`] when the upstream refuses (wrong secret, unknown client,
    /// bad scope); [`Error::CircuitOpen`], [`Error::DeadlineExceeded`] and the other
    /// [upstream failures](Error::is_upstream_failure) when it is unreachable or broken. No error
    /// carries the secret.
    pub async fn forward_client_credentials(
        &self,
        client_id: &str,
        client_secret: &Secret,
        scope: Option<&str>,
        deadline: Duration,
    ) -> Result<UpstreamToken, Error> {
        let token_url = self.token_url(deadline).await?;
        let client = BasicClient::new(ClientId::new(client_id.to_owned()))
            .set_client_secret(ClientSecret::new(client_secret.expose().to_owned()))
            .set_auth_type(match self.auth_method {
                TokenAuthMethod::ClientSecretPost => AuthType::RequestBody,
                _ => AuthType::BasicAuth,
            })
            .set_token_uri(TokenUrl::from_url(token_url));
        let request = client.exchange_client_credentials().add_scopes(
            scope
                .unwrap_or_default()
                .split_whitespace()
                .map(|scope| Scope::new(scope.to_owned())),
        );
        let http = JudgedStatus(&self.http);
        self.circuit
            .call_with_deadline(deadline, async {
                let response = request.request_async(&http).await.map_err(token_error)?;
                Ok(token(&response))
            })
            .await
    }

    /// Requests a token for meshgate itself with the configured `client_id` and
    /// `client_secret`, like [`OAuth2Upstream::forward_client_credentials`]; fails with
    /// [`Error::MissingCredentials`] when they are not configured.
    pub async fn client_credentials(&self, scope: Option<&str>, deadline: Duration) -> Result<UpstreamToken, Error> {
        let (Some(client_id), Some(client_secret)) = (&self.client_id, &self.client_secret) else {
            return Err(Error::MissingCredentials);
        };
        self.forward_client_credentials(client_id, client_secret, scope, deadline)
            .await
    }

    async fn token_url(&self, deadline: Duration) -> Result<Url, Error> {
        let provider = match &self.endpoint {
            TokenEndpoint::Fixed(url) => return Ok(url.clone()),
            TokenEndpoint::Discovered(provider) => provider,
        };
        if provider.metadata().is_none() {
            match tokio::time::timeout(deadline, provider.refresh()).await {
                Ok(result) => result?,
                Err(_) => return Err(Error::DeadlineExceeded(deadline)),
            }
        }
        provider
            .metadata()
            .and_then(|metadata| metadata.token_endpoint.clone())
            .ok_or(Error::MissingEndpoint("token"))
    }
}

/// [`HttpClient`] for the token endpoint, judging the status before `oauth2` parses the body: a
/// 5xx or 429 is an [`Error::UpstreamStatus`] (the upstream is in trouble), another non-200 whose
/// body is not a JSON object is an [`Error::TokenRejected`] (the upstream answered, not in OAuth
/// form, e.g. a plain-text 401).
pub(crate) struct JudgedStatus<'a>(pub(crate) &'a HttpClient);

impl<'c> AsyncHttpClient<'c> for JudgedStatus<'_> {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.0.execute(request).await?;
            let status = response.status();
            if status.is_server_error() || status == ::http::StatusCode::TOO_MANY_REQUESTS {
                return Err(Error::UpstreamStatus {
                    what: "the token request",
                    status: status.as_u16(),
                });
            }
            if status != ::http::StatusCode::OK
                && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(response.body()).is_err()
            {
                return Err(Error::TokenRejected {
                    error: format!("HTTP {}", status.as_u16()),
                });
            }
            Ok(response)
        })
    }
}

fn token(response: &BasicTokenResponse) -> UpstreamToken {
    UpstreamToken {
        access_token: Secret::new(response.access_token().secret().clone()),
        token_type: response.token_type().as_ref().to_owned(),
        expires_in: response.expires_in(),
        refresh_token: response
            .refresh_token()
            .map(|token| Secret::new(token.secret().clone())),
        scopes: response
            .scopes()
            .map(|scopes| scopes.iter().map(|scope| scope.as_str().to_owned()).collect()),
    }
}

pub(crate) fn token_error(error: BasicRequestTokenError<Error>) -> Error {
    match error {
        oauth2::RequestTokenError::ServerResponse(response) => Error::TokenRejected {
            error: crate::error::untrusted(response.error().as_ref()),
        },
        oauth2::RequestTokenError::Request(error) => error,
        // The body may hold a token: say what is wrong, never quote it.
        oauth2::RequestTokenError::Parse(..) => Error::InvalidDocument {
            what: "token response",
            reason: "not a valid token response".into(),
        },
        oauth2::RequestTokenError::Other(reason) => Error::InvalidDocument {
            what: "token response",
            reason,
        },
    }
}
