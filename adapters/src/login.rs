//! Login federation: the adapter API the authorization-code flow calls to send a user to the
//! upstream's login and to take the upstream's answer back (OpenID Connect Core 1.0 §3.1, RFC 7636
//! PKCE S256, RFC 6749 `state`).
//!
//! 1. [`Upstream::begin_login`](crate::Upstream::begin_login) builds the upstream authorization
//!    URL with a fresh `state`, `nonce` and PKCE S256 challenge; the caller keeps the returned
//!    [`LoginRequest`] (state, nonce, verifier) server-side, bound to the user's session, and
//!    redirects the browser to [`LoginRequest::url`].
//! 2. When the browser comes back to the redirect URI with `code` and `state`, the caller checks
//!    `state` with [`LoginRequest::state_matches`] (constant time) and calls
//!    [`Upstream::finish_login`](crate::Upstream::finish_login): the code is exchanged at the
//!    upstream's token endpoint (with meshgate's client credentials and the PKCE verifier),
//!    through the breaker and within the token-path deadline, and the ID token is verified
//!    against the cached JWKS (signature with an allowed algorithm, `iss`, `aud` = meshgate's
//!    client id, `exp`, `nbf`), then its `nonce` (constant time) and, with several audiences,
//!    `azp`. The result is the upstream identity ([`LoginIdentity`]) whose claims the caller maps.
//!
//! Why not the `openidconnect` crate: its HTTP side would fit (it takes the same
//! `oauth2::AsyncHttpClient`, which [`crate::http::HttpClient`] implements), but it verifies ID
//! tokens with its own JOSE stack (the `rsa`, `p256`, `p384`, `ed25519-dalek`, `hmac` crates, plus
//! `chrono` and `serde_with`) against a JWKS handed to it per call. meshgate already verifies
//! upstream JWTs in one place — [`crate::oidc::OidcProvider`] over `jsonwebtoken`/aws-lc-rs, with
//! the disk-cached JWKS, its staleness bound, the unknown-`kid` refresh and the breaker — so a
//! second crypto stack and a second key cache would only add code to audit. The authorization
//! request and the code exchange use the `oauth2` crate, which meshgate already depends on.

use std::time::Duration;

use oauth2::basic::{BasicErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, ExtraTokenFields,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use url::Url;

use crate::Error;
use crate::config::{Secret, TokenAuthMethod};
use crate::oidc::VerifiedClaims;

/// A started login: what the caller must keep (server-side, bound to the browser session) until
/// the upstream redirects back. `Debug` shows none of the secrets.
#[derive(Clone)]
pub struct LoginRequest {
    /// Where to redirect the browser: the upstream's authorization endpoint with `response_type=code`,
    /// `client_id`, `redirect_uri`, `scope` (with `openid`), `state`, `nonce`,
    /// `code_challenge` and `code_challenge_method=S256`.
    pub url: Url,
    /// The `state` sent (128 bits, base64url).
    pub state: Secret,
    /// The `nonce` sent, which the ID token must carry back.
    pub nonce: Secret,
    /// The PKCE code verifier, for [`Upstream::finish_login`](crate::Upstream::finish_login).
    pub pkce_verifier: Secret,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("url", &"[redacted: carries state and nonce]")
            .finish_non_exhaustive()
    }
}

impl LoginRequest {
    /// Whether the `state` the browser came back with is this request's (constant time).
    pub fn state_matches(&self, returned: &str) -> bool {
        bool::from(self.state.expose().as_bytes().ct_eq(returned.as_bytes()))
    }
}

/// The upstream identity a login established.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoginIdentity {
    /// The ID token's `sub`.
    pub subject: String,
    /// The verified ID token's claims, for claim mapping.
    pub id_token_claims: VerifiedClaims,
    /// The upstream access token, if the caller wants to call the upstream for the user.
    pub access_token: Secret,
    /// The scopes the upstream granted, if it said.
    pub scopes: Option<Vec<String>>,
}

/// The `id_token` member of the token response (OpenID Connect Core 1.0 §3.1.3.3).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct IdTokenField {
    #[serde(default)]
    id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type IdTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;
type LoginClient<HasAuthUrl, HasTokenUrl> = Client<
    BasicErrorResponse,
    IdTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    HasAuthUrl,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    HasTokenUrl,
>;

/// What [`begin`] and [`finish`] need of an upstream.
pub(crate) struct Endpoints<'a> {
    pub(crate) authorization: Option<&'a Url>,
    pub(crate) token: Option<&'a Url>,
    pub(crate) client_id: &'a str,
    pub(crate) client_secret: Option<&'a Secret>,
    pub(crate) auth_method: TokenAuthMethod,
}

fn redirect(redirect_uri: &Url) -> RedirectUrl {
    RedirectUrl::from_url(redirect_uri.clone())
}

/// Builds the authorization request; see the module documentation.
pub(crate) fn begin(endpoints: &Endpoints<'_>, redirect_uri: &Url, scopes: &[&str]) -> Result<LoginRequest, Error> {
    let authorization = endpoints.authorization.ok_or(Error::MissingEndpoint("authorization"))?;
    let client: LoginClient<oauth2::EndpointSet, oauth2::EndpointNotSet> =
        Client::new(ClientId::new(endpoints.client_id.to_owned()))
            .set_auth_uri(AuthUrl::from_url(authorization.clone()))
            .set_redirect_uri(redirect(redirect_uri));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = CsrfToken::new_random();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scope(Scope::new("openid".into()))
        .add_extra_param("nonce", nonce.secret().clone());
    for scope in scopes.iter().filter(|scope| **scope != "openid") {
        request = request.add_scope(Scope::new((*scope).to_owned()));
    }
    let (url, state) = request.url();
    Ok(LoginRequest {
        url,
        state: Secret::new(state.secret().clone()),
        nonce: Secret::new(nonce.secret().clone()),
        pkce_verifier: Secret::new(verifier.secret().clone()),
    })
}

/// Exchanges the code and returns the unverified ID token with the rest of the answer; the
/// caller ([`crate::Upstream::finish_login`]) verifies it. Runs through `http` as given (the
/// caller wraps it in the breaker and the deadline).
pub(crate) async fn exchange(
    endpoints: &Endpoints<'_>,
    http: &crate::http::HttpClient,
    code: &str,
    pkce_verifier: &Secret,
    redirect_uri: &Url,
) -> Result<(String, Secret, Option<Vec<String>>), Error> {
    let token = endpoints.token.ok_or(Error::MissingEndpoint("token"))?;
    let client_secret = endpoints.client_secret.ok_or(Error::MissingCredentials)?;
    let client: LoginClient<oauth2::EndpointNotSet, oauth2::EndpointSet> =
        Client::new(ClientId::new(endpoints.client_id.to_owned()))
            .set_client_secret(ClientSecret::new(client_secret.expose().to_owned()))
            .set_auth_type(match endpoints.auth_method {
                TokenAuthMethod::ClientSecretPost => AuthType::RequestBody,
                _ => AuthType::BasicAuth,
            })
            .set_token_uri(TokenUrl::from_url(token.clone()))
            .set_redirect_uri(redirect(redirect_uri));
    let judged = crate::oauth2_upstream::JudgedStatus(http);
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_owned()))
        .request_async(&judged)
        .await
        .map_err(crate::oauth2_upstream::token_error)?;
    let id_token = response.extra_fields().id_token.clone().ok_or(Error::InvalidDocument {
        what: "token response",
        reason: "no `id_token`: the upstream did not answer as an OpenID provider".into(),
    })?;
    let scopes = response
        .scopes()
        .map(|scopes| scopes.iter().map(|scope| scope.as_str().to_owned()).collect());
    Ok((id_token, Secret::new(response.access_token().secret().clone()), scopes))
}

/// Checks what signature verification does not: the `nonce` (constant time), and `azp` when
/// the token has several audiences (OpenID Connect Core 1.0 §3.1.3.7).
pub(crate) fn check_claims(claims: &VerifiedClaims, nonce: &Secret, client_id: &str) -> Result<String, Error> {
    let returned = claims
        .claim("nonce")
        .and_then(serde_json::Value::as_str)
        .ok_or(Error::MissingClaim("nonce"))?;
    if !bool::from(returned.as_bytes().ct_eq(nonce.expose().as_bytes())) {
        return Err(Error::NonceMismatch);
    }
    if claims.audience.len() > 1 && claims.claim("azp").and_then(serde_json::Value::as_str) != Some(client_id) {
        return Err(Error::WrongAudience);
    }
    claims.subject.clone().ok_or(Error::MissingClaim("sub"))
}

/// The token-path deadline, for the code exchange.
pub(crate) fn deadline(token_deadline: Duration) -> Duration {
    // A login is interactive and rarer than token requests: allow a little more than the
    // token path, bounded by the same setting.
    token_deadline.saturating_mul(3)
}
