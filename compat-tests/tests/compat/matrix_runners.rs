//! The routing matrix's runners: one per (library, grant), each doing the grant the way that
//! library's users do and returning the token response. The Rust libraries run here (the `oauth2`
//! and `openidconnect` crates over `adapters::http`); openid-client and the MCP SDK run in
//! `js/matrix.mjs`, Authlib in `python/authlib_matrix.py`. Checks of the answer and the validation
//! are `matrix.rs`'s job.

use std::collections::BTreeMap;
use std::time::Duration;

use adapters::http::{HttpClient, HttpConfig};
use compat_tests::Registered;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl, PkceCodeChallenge,
    RedirectUrl, RefreshToken, Scope, StandardDeviceAuthorizationResponse, TokenResponse, TokenUrl,
};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreProviderMetadata, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{IssuerUrl, Nonce};
use serde_json::{Value, json};

use super::matrix::{Grant, LOGIN_SCOPE, Lib, Placement, UpstreamState};
use super::support;
use super::upstream::ACCESS_TOKEN;

/// One node of the mesh, as the runners address it.
pub(super) struct NodeRef {
    /// The node's issuer.
    pub issuer: String,
    /// The base URL of its OAuth listener (no trailing slash).
    pub url: String,
}

/// What the runners of one upstream state share.
pub(super) struct Env {
    pub state: UpstreamState,
    /// Node 1 (mints) and node 2.
    pub nodes: [NodeRef; 2],
    /// A client_credentials client (scope `read write`).
    pub machine: Registered,
    /// The resource server's client that introspects.
    pub introspector: Registered,
    /// A token-exchange client with the `issue_local` policy, `degraded_ttl: 30s`.
    pub exchange: Registered,
    /// The public client of the code flow (redirect URI `redirect_uri`, scope [`LOGIN_SCOPE`]).
    pub public_client: String,
    /// The public device client (`device_code` grant, scope [`LOGIN_SCOPE`]).
    pub device_client: String,
    pub redirect_uri: String,
    pub username: String,
    pub password: String,
    /// An access token of the upstream (oidc-provider) for meshgate's audience.
    pub subject_token: String,
}

impl Env {
    /// Where a token is minted: node 1.
    fn minter(&self) -> &NodeRef {
        &self.nodes[0]
    }

    /// Where a token is validated (and, for refresh, where the refresh token is redeemed).
    pub(super) fn validator(&self, placement: Placement) -> &NodeRef {
        match placement {
            Placement::Same => &self.nodes[0],
            Placement::Cross => &self.nodes[1],
        }
    }
}

/// A token a runner got.
pub(super) struct Minted {
    pub access_token: String,
    /// The issuer of the node that issued it.
    pub issuer: String,
    /// The whole token response.
    pub response: Value,
    /// How many times the library ran (more than once only for a cross-node refresh waiting for
    /// replication).
    pub attempts: u32,
}

/// Runs `lib`'s `grant` (the cell's setup included, e.g. the login whose refresh token a refresh
/// cell redeems).
pub(super) async fn run(lib: Lib, grant: Grant, placement: Placement, env: &Env) -> Result<Minted, String> {
    // The node whose token endpoint issues the access token the cell validates.
    let issuing = match grant {
        Grant::Refresh => env.validator(placement),
        _ => env.minter(),
    };
    let input = match grant {
        Grant::ClientCredentials => json!({
            "issuer": issuing.issuer,
            "client_id": env.machine.client_id,
            "client_secret": env.machine.client_secret,
            "scope": "read",
        }),
        Grant::AuthorizationCode => json!({
            "issuer": issuing.issuer,
            "client_id": env.public_client,
            "redirect_uri": env.redirect_uri,
            "username": env.username,
            "password": env.password,
            "scope": LOGIN_SCOPE,
        }),
        Grant::Refresh => json!({
            "issuer": issuing.issuer,
            "client_id": env.public_client,
            "refresh_token": refresh_token_from(env.minter(), env).await?,
        }),
        Grant::TokenExchange => json!({
            "issuer": issuing.issuer,
            "client_id": env.exchange.client_id,
            "client_secret": env.exchange.client_secret,
            "subject_token": env.subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "scope": "read",
        }),
        // Device codes are node-local: the device starts at, is approved on and polls node 1.
        Grant::Device => json!({
            "issuer": issuing.issuer,
            "client_id": env.device_client,
            "username": env.username,
            "password": env.password,
            "scope": LOGIN_SCOPE,
        }),
    };
    // A refresh token minted on node 1 reaches node 2 by replication: an unknown refresh token is
    // refused without side effects, so a cross-node refresh is retried (bounded) until it arrives.
    let attempts = if grant == Grant::Refresh && placement == Placement::Cross {
        10
    } else {
        1
    };
    let mut attempt = 0;
    let response = loop {
        attempt += 1;
        let result = match lib {
            Lib::Oauth2 => oauth2_crate(grant, &input).await,
            Lib::OpenIdConnect => openidconnect_crate(grant, &input).await,
            Lib::OpenIdClient => {
                script(
                    ScriptKind::Node,
                    format!("openid-client:{}", grant.name()),
                    input.clone(),
                )
                .await
            }
            Lib::McpSdk => script(ScriptKind::Node, format!("mcp-sdk:{}", grant.name()), input.clone()).await,
            Lib::Authlib => script(ScriptKind::Python, grant.name().to_owned(), input.clone()).await,
        };
        match result {
            Ok(response) => break response,
            Err(problem) if attempt < attempts && problem.contains("invalid_grant") => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(problem) => return Err(problem),
        }
    };
    let access_token = response["access_token"]
        .as_str()
        .ok_or_else(|| format!("no access_token in {response}"))?
        .to_owned();
    Ok(Minted {
        access_token,
        issuer: issuing.issuer.clone(),
        response,
        attempts: attempt,
    })
}

/// A fresh refresh token of the public client, from a login at `node` over raw HTTP (the cell's
/// setup; the library under test does the refresh).
async fn refresh_token_from(node: &NodeRef, env: &Env) -> Result<String, String> {
    let tokens = super::login::log_in(&node.url, &env.public_client, &env.username, &env.password, LOGIN_SCOPE).await;
    tokens["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the login gave no refresh token: {tokens}"))
}

enum ScriptKind {
    Node,
    Python,
}

/// `node js/matrix.mjs COMMAND` or `python python/authlib_matrix.py GRANT`; its `tokens`.
async fn script(kind: ScriptKind, command: String, input: Value) -> Result<Value, String> {
    let printed = tokio::task::spawn_blocking(move || match kind {
        ScriptKind::Node => compat_tests::node_script("matrix.mjs", &[&command], &input),
        ScriptKind::Python => compat_tests::python_script("authlib_matrix.py", &[&command], &input),
    })
    .await
    .map_err(|error| format!("the script task: {error}"))??;
    Ok(printed["tokens"].clone())
}

fn http() -> Result<HttpClient, String> {
    HttpClient::new(&HttpConfig {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    })
    .map_err(|error| format!("adapters::http::HttpClient: {error}"))
}

fn text(input: &Value, name: &str) -> String {
    input[name].as_str().unwrap_or_default().to_owned()
}

fn scopes(input: &Value) -> Vec<Scope> {
    text(input, "scope")
        .split_whitespace()
        .map(|s| Scope::new(s.to_owned()))
        .collect()
}

/// The `oauth2` crate: endpoints from the node's RFC 8414 metadata (the crate does no discovery).
async fn oauth2_crate(grant: Grant, input: &Value) -> Result<Value, String> {
    let http = http()?;
    let issuer = text(input, "issuer");
    let metadata = support::get(&format!("{issuer}/.well-known/oauth-authorization-server"))
        .await
        .json();
    let token_url = TokenUrl::new(text(&metadata, "token_endpoint")).map_err(|e| e.to_string())?;
    let client = BasicClient::new(ClientId::new(text(input, "client_id"))).set_token_uri(token_url);
    let failed = |error: &dyn std::fmt::Debug| format!("oauth2 crate: {error:?}");
    let token = match grant {
        Grant::ClientCredentials => client
            .set_client_secret(ClientSecret::new(text(input, "client_secret")))
            .exchange_client_credentials()
            .add_scopes(scopes(input))
            .request_async(&http)
            .await
            .map_err(|e| failed(&e))?,
        Grant::AuthorizationCode => {
            let client = client
                .set_auth_uri(AuthUrl::new(text(&metadata, "authorization_endpoint")).map_err(|e| e.to_string())?)
                .set_redirect_uri(RedirectUrl::new(text(input, "redirect_uri")).map_err(|e| e.to_string())?);
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            let (url, state) = client
                .authorize_url(CsrfToken::new_random)
                .add_scopes(scopes(input))
                .set_pkce_challenge(challenge)
                .url();
            let code = code_from(url.as_str(), state.secret(), input).await?;
            client
                .exchange_code(AuthorizationCode::new(code))
                .set_pkce_verifier(verifier)
                .request_async(&http)
                .await
                .map_err(|e| failed(&e))?
        }
        Grant::Refresh => client
            .exchange_refresh_token(&RefreshToken::new(text(input, "refresh_token")))
            .request_async(&http)
            .await
            .map_err(|e| failed(&e))?,
        Grant::Device => {
            let client = client.set_device_authorization_url(
                DeviceAuthorizationUrl::new(text(&metadata, "device_authorization_endpoint"))
                    .map_err(|e| e.to_string())?,
            );
            let details: StandardDeviceAuthorizationResponse = client
                .exchange_device_code()
                .add_scopes(scopes(input))
                .request_async(&http)
                .await
                .map_err(|e| failed(&e))?;
            let polling = async {
                client
                    .exchange_device_access_token(&details)
                    .request_async(&http, tokio::time::sleep, Some(DEVICE_POLLING))
                    .await
                    .map_err(|e| failed(&e))
            };
            let page = verification_page(&details);
            let (token, ()) = tokio::try_join!(polling, approve_device(&page, input))?;
            token
        }
        Grant::TokenExchange => return Err(format!("no oauth2-crate runner for {}", grant.name())),
    };
    Ok(json!({
        "access_token": token.access_token().secret(),
        "expires_in": token.expires_in().map(|ttl| ttl.as_secs()),
        "refresh_token": token.refresh_token().map(|t| t.secret().clone()),
    }))
}

/// The `openidconnect` crate: OpenID Connect discovery, the code flow with nonce and PKCE and the
/// ID token verified by the crate (signature against the node's JWKS, issuer, audience, nonce).
async fn openidconnect_crate(grant: Grant, input: &Value) -> Result<Value, String> {
    let http = http()?;
    let issuer = IssuerUrl::new(text(input, "issuer")).map_err(|e| e.to_string())?;
    let metadata = CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .map_err(|e| format!("openidconnect discovery: {e:?}"))?;
    let client =
        CoreClient::from_provider_metadata(metadata, openidconnect::ClientId::new(text(input, "client_id")), None);
    let failed = |error: &dyn std::fmt::Debug| format!("openidconnect crate: {error:?}");
    let (token, id_token_subject) = match grant {
        Grant::ClientCredentials => {
            let client = client.set_client_secret(openidconnect::ClientSecret::new(text(input, "client_secret")));
            let token = client
                .exchange_client_credentials()
                .map_err(|e| failed(&e))?
                .add_scopes(
                    scopes(input)
                        .into_iter()
                        .map(|s| openidconnect::Scope::new(s.to_string())),
                )
                .request_async(&http)
                .await
                .map_err(|e| failed(&e))?;
            (token, None)
        }
        Grant::AuthorizationCode => {
            let client = client.set_redirect_uri(
                openidconnect::RedirectUrl::new(text(input, "redirect_uri")).map_err(|e| e.to_string())?,
            );
            let (challenge, verifier) = openidconnect::PkceCodeChallenge::new_random_sha256();
            let mut request = client.authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                openidconnect::CsrfToken::new_random,
                Nonce::new_random,
            );
            for scope in text(input, "scope").split_whitespace().filter(|s| *s != "openid") {
                request = request.add_scope(openidconnect::Scope::new(scope.to_owned()));
            }
            let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
            let code = code_from(url.as_str(), state.secret(), input).await?;
            let token = client
                .exchange_code(openidconnect::AuthorizationCode::new(code))
                .map_err(|e| failed(&e))?
                .set_pkce_verifier(verifier)
                .request_async(&http)
                .await
                .map_err(|e| failed(&e))?;
            let id_token = openidconnect::TokenResponse::id_token(&token)
                .ok_or_else(|| "openidconnect crate: no ID token in the code response".to_owned())?;
            let claims = id_token
                .claims(&client.id_token_verifier(), &nonce)
                .map_err(|e| format!("openidconnect crate rejects the ID token: {e:?}"))?;
            let subject = claims.subject().to_string();
            (token, Some(subject))
        }
        Grant::Refresh => {
            let token = client
                .exchange_refresh_token(&openidconnect::RefreshToken::new(text(input, "refresh_token")))
                .map_err(|e| failed(&e))?
                .request_async(&http)
                .await
                .map_err(|e| failed(&e))?;
            (token, None)
        }
        Grant::Device => {
            // `CoreProviderMetadata` has no `device_authorization_endpoint`: discovery again with
            // the crate's extension point for extra metadata (as its Okta device example does).
            let issuer = IssuerUrl::new(text(input, "issuer")).map_err(|e| e.to_string())?;
            let metadata = DeviceProviderMetadata::discover_async(issuer, &http)
                .await
                .map_err(|e| format!("openidconnect discovery: {e:?}"))?;
            let endpoint = metadata.additional_metadata().device_authorization_endpoint.clone();
            let client = CoreClient::from_provider_metadata(
                metadata,
                openidconnect::ClientId::new(text(input, "client_id")),
                None,
            )
            .set_device_authorization_url(endpoint);
            // The client adds `openid` itself.
            let mut request = client.exchange_device_code();
            for scope in text(input, "scope").split_whitespace().filter(|s| *s != "openid") {
                request = request.add_scope(openidconnect::Scope::new(scope.to_owned()));
            }
            let details: CoreDeviceAuthorizationResponse =
                request.request_async(&http).await.map_err(|e| failed(&e))?;
            let polling = async {
                client
                    .exchange_device_access_token(&details)
                    .map_err(|e| failed(&e))?
                    .request_async(&http, tokio::time::sleep, Some(DEVICE_POLLING))
                    .await
                    .map_err(|e| failed(&e))
            };
            let page = verification_page(&details);
            let (token, ()) = tokio::try_join!(polling, approve_device(&page, input))?;
            // The ID token verified by the crate (no nonce in the device flow).
            let id_token = openidconnect::TokenResponse::id_token(&token)
                .ok_or_else(|| "openidconnect crate: no ID token in the device response".to_owned())?;
            let claims = id_token
                .claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
                .map_err(|e| format!("openidconnect crate rejects the ID token: {e:?}"))?;
            let subject = claims.subject().to_string();
            (token, Some(subject))
        }
        Grant::TokenExchange => {
            return Err(format!("no openidconnect-crate runner for {}", grant.name()));
        }
    };
    Ok(json!({
        "access_token": token.access_token().secret(),
        "expires_in": token.expires_in().map(|ttl| ttl.as_secs()),
        "refresh_token": token.refresh_token().map(|t| t.secret().clone()),
        "id_token_sub": id_token_subject,
    }))
}

/// Drives the login and consent pages from `authorize_url` to the redirect URI over raw HTTP (a
/// browser without JavaScript, keeping cookies) and returns the code after checking `state`.
async fn code_from(authorize_url: &str, state: &str, input: &Value) -> Result<String, String> {
    let redirect_uri = text(input, "redirect_uri");
    let url = match walk(authorize_url, Some(&redirect_uri), input).await? {
        Walked::Redirected(url) => url,
        Walked::Done(html) => {
            return Err(format!(
                "the pages never led back to {redirect_uri}: {}",
                &html[..html.len().min(300)]
            ));
        }
    };
    let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    if param("state").as_deref() != Some(state) {
        return Err(format!("state mismatch in {url}"));
    }
    param("code").ok_or_else(|| format!("no code in {url}"))
}

/// How long a Rust device runner polls before giving up (the cell bound is longer).
const DEVICE_POLLING: Duration = Duration::from_secs(90);

/// The device flow's extra discovery field, for the `openidconnect` crate.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
struct DeviceEndpointProviderMetadata {
    device_authorization_endpoint: DeviceAuthorizationUrl,
}

impl openidconnect::AdditionalProviderMetadata for DeviceEndpointProviderMetadata {}

/// OpenID provider metadata with the device authorization endpoint.
type DeviceProviderMetadata = openidconnect::ProviderMetadata<
    DeviceEndpointProviderMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The page the user opens: `verification_uri_complete` (the code prefilled) when given, else
/// `verification_uri` with the code as its query, as a user typing it would get.
fn verification_page<EF: oauth2::ExtraDeviceAuthorizationFields>(
    details: &oauth2::DeviceAuthorizationResponse<EF>,
) -> String {
    match details.verification_uri_complete() {
        Some(complete) => complete.secret().clone(),
        None => format!(
            "{}?user_code={}",
            details.verification_uri().as_str(),
            details.user_code().secret()
        ),
    }
}

/// Approves a device on the verification page `page` over raw HTTP: signs in, confirms the
/// prefilled code, approves; the last page must say the request was approved.
async fn approve_device(page: &str, input: &Value) -> Result<(), String> {
    match walk(page, None, input).await? {
        Walked::Done(html) if html.contains("You approved the request") => Ok(()),
        Walked::Done(html) => Err(format!(
            "the device page did not approve: {}",
            &html[..html.len().min(400)]
        )),
        Walked::Redirected(url) => Err(format!("the device page redirected to {url}")),
    }
}

/// Where [`walk`] ended.
enum Walked {
    /// At the redirect URI.
    Redirected(reqwest::Url),
    /// At a page without a form.
    Done(String),
}

/// A browser without JavaScript, keeping cookies: from `start`, follows redirects and submits each
/// page's form — the login pages (username, password), the consent page (`decision=allow`), the
/// device pages (the prefilled `user_code`, then `decision=approve`) — until `redirect_uri` (when
/// given) or a page without a form.
async fn walk(start: &str, redirect_uri: Option<&str>, input: &Value) -> Result<Walked, String> {
    let http = support::http();
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut url = reqwest::Url::parse(start).map_err(|e| e.to_string())?;
    let mut post: Option<String> = None;
    for _ in 0..20 {
        if redirect_uri.is_some_and(|r| url.as_str().starts_with(r)) {
            return Ok(Walked::Redirected(url));
        }
        let request = match post.take() {
            None => http.get(url.clone()),
            Some(body) => http
                .post(url.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        };
        let cookie = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let response = request
            .header("cookie", cookie)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap_or_default().split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("{url}: a redirect without Location"))?;
            url = url.join(location).map_err(|e| e.to_string())?;
            continue;
        }
        let html = response.text().await.unwrap_or_default();
        if status != 200 {
            return Err(format!(
                "{} answered {status}: {}",
                url.path(),
                &html[..html.len().min(300)]
            ));
        }
        let Some(action) = between(&html, "action=\"", "\"") else {
            return Ok(Walked::Done(html));
        };
        let mut fields = Vec::new();
        for name in ["csrf_token", "request", "user_code"] {
            if let Some(value) = between(&html, &format!("name=\"{name}\" value=\""), "\"") {
                fields.push((name, value.replace("&amp;", "&")));
            }
        }
        if html.contains("type=\"password\"") {
            fields.push(("username", text(input, "username")));
            fields.push(("password", text(input, "password")));
        } else if html.contains("name=\"decision\" value=\"approve\"") {
            fields.push(("decision", "approve".to_owned()));
        } else if !html.contains("name=\"user_code\"") {
            fields.push(("decision", "allow".to_owned()));
        }
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post = Some(support::form(&pairs));
        url = url.join(&action.replace("&amp;", "&")).map_err(|e| e.to_string())?;
    }
    Err(format!("too many hops from {start}"))
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_owned())
}
