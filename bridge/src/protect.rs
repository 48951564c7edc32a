//! `meshgate protect`: a reverse proxy that puts OAuth in front of an HTTP service or MCP server.
//!
//! - Serves RFC 9728 protected-resource metadata at `/.well-known/oauth-protected-resource` (and
//!   at `/.well-known/oauth-protected-resource{path}` for a resource URL with a path).
//! - Answers a request without a usable token `401` with
//!   `WWW-Authenticate: Bearer resource_metadata="..."`, and one whose token lacks a required
//!   scope `403` with `error="insufficient_scope", scope="..."`.
//! - Validates tokens locally: the RFC 9068 `at+jwt` signature against the issuer's JWKS (fetched
//!   once, cached, refetched on an unknown `kid` at most every [`JWKS_MIN_REFRESH`] and at least
//!   every [`JWKS_MAX_AGE`]), `iss`, `aud` = the resource, `exp`/`nbf` by the injected clock.
//! - Revocation: through the issuer's introspection endpoint (authenticated with
//!   `--client-id` and `MESHGATE_PROTECT_CLIENT_SECRET`), the answer remembered per token for
//!   `--revocation-check-interval` (default 5 s): a revoked token stops working within that long.
//!   `--danger-skip-revocation-check` turns the check off.
//! - Mesh-member mode (`--data-dir DIR`, see [`crate::protect_mesh`]): the gateway joins the mesh
//!   with its own node identity and validates tokens against the replicated state instead — the
//!   attested keys of current members (a removed node's tokens are refused), the replicated
//!   revocation list (a revocation on any node reaches it by sync, no introspection call, no
//!   client credentials).
//! - Forwards to the upstream with the `Authorization` header and every incoming `X-Meshgate-*`
//!   header removed, and `X-Meshgate-Subject`, `X-Meshgate-Client`, `X-Meshgate-Scope` set from
//!   the verified token. Bodies above `--max-body-bytes` are refused `413`; an upstream that does
//!   not answer within `--upstream-timeout` (or refuses the connection) is answered `502` with a
//!   JSON body saying so; the upstream's response body is streamed back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mesh::clock::Clock;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;

/// Refetch the JWKS for an unknown `kid` at most this often.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(5);
/// Refetch the JWKS at least this often.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// The headers forwarded to the upstream.
pub const SUBJECT_HEADER: &str = "x-meshgate-subject";
/// The client id header.
pub const CLIENT_HEADER: &str = "x-meshgate-client";
/// The granted scopes header (space-separated).
pub const SCOPE_HEADER: &str = "x-meshgate-scope";

/// `meshgate protect` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ProtectArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The service to protect (`http://127.0.0.1:PORT`); request paths are appended.
    #[arg(long, value_name = "URL")]
    pub upstream: url::Url,
    /// The resource identifier (RFC 8707/9728): the URL clients call; tokens must carry it in `aud`.
    #[arg(long, value_name = "URL")]
    pub resource: url::Url,
    /// A scope every request needs (repeatable, or space-separated).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// The issuer whose tokens are accepted (a meshgate node).
    #[arg(long, value_name = "URL")]
    pub issuer: String,
    /// Client id for the issuer's introspection endpoint (revocation checks).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Its secret.
    #[arg(
        long,
        env = "MESHGATE_PROTECT_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub client_secret: Option<String>,
    /// How long an introspection answer is remembered per token (humantime).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub revocation_check_interval: Duration,
    /// Accept tokens without asking the issuer whether they were revoked.
    #[arg(long)]
    pub danger_skip_revocation_check: bool,
    /// Largest request body forwarded, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest wait for the upstream's response headers, and between two chunks of its body.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// Mesh-member mode (with `--data-dir`): a mesh peer to dial at start (`host:port`; repeatable;
    /// added to `node.sync.gossip_peers` of `--config`).
    #[arg(long = "gossip-peer", value_name = "HOST:PORT")]
    pub gossip_peers: Vec<String>,
    /// Mesh-member mode: a member's DID trusted without `mesh admit` (repeatable; added to
    /// `node.sync.trusted_peers`).
    #[arg(long = "trusted-peer", value_name = "DID")]
    pub trusted_peers: Vec<mesh::did::DidKey>,
    /// Mesh-member mode: the address of the gateway's mesh sync listener (default
    /// `node.sync.listen` of `--config`, else `127.0.0.1:0`).
    #[arg(long, value_name = "ADDR")]
    pub sync_listen: Option<SocketAddr>,
}

/// The running proxy's shared state.
#[derive(Clone)]
pub struct Protect(Arc<Inner>);

struct Inner {
    args: ProtectArgs,
    scopes: Vec<String>,
    metadata_url: String,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    upstream: reqwest::Client,
    issuer_metadata: tokio::sync::OnceCell<IssuerMetadata>,
    jwks: tokio::sync::Mutex<Jwks>,
    introspected: Mutex<HashMap<String, (u64, bool)>>,
    /// Mesh-member mode: the replicated state tokens are checked against.
    member: Option<crate::protect_mesh::Member>,
}

#[derive(Debug, Clone, Deserialize)]
struct IssuerMetadata {
    issuer: String,
    jwks_uri: String,
    introspection_endpoint: Option<String>,
}

#[derive(Default)]
struct Jwks {
    keys: HashMap<String, (jsonwebtoken::Algorithm, Arc<jsonwebtoken::DecodingKey>)>,
    fetched_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    scope: String,
    exp: u64,
    #[serde(default)]
    nbf: u64,
    #[serde(default)]
    jti: String,
}

/// Why a request is refused before it reaches the upstream.
enum Refusal {
    NoToken,
    InvalidToken(&'static str),
    InsufficientScope,
    Unavailable(String),
}

impl Protect {
    /// The proxy for `args`, reading time from `clock`.
    pub fn new(args: ProtectArgs, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        Self::build(args, clock, None)
    }

    /// The proxy for `args` as a mesh member: tokens are validated against `member`'s replicated
    /// state (keys, revocations, members), never through introspection.
    pub fn with_member(
        args: ProtectArgs,
        clock: Arc<dyn Clock>,
        member: crate::protect_mesh::Member,
    ) -> Result<Self, Error> {
        Self::build(args, clock, Some(member))
    }

    fn build(
        args: ProtectArgs,
        clock: Arc<dyn Clock>,
        member: Option<crate::protect_mesh::Member>,
    ) -> Result<Self, Error> {
        let config = |e: String| Error::Config(vec![e]);
        if !matches!(args.upstream.scheme(), "http" | "https") {
            return Err(config("--upstream must be an http(s) URL".into()));
        }
        if args.resource.fragment().is_some() || !matches!(args.resource.scheme(), "http" | "https") {
            return Err(config("--resource must be an http(s) URL without a fragment".into()));
        }
        crate::config::Issuer::parse(&args.issuer).map_err(|e| config(format!("--issuer: {e}")))?;
        if member.is_none()
            && !args.danger_skip_revocation_check
            && (args.client_id.is_none() || args.client_secret.is_none())
        {
            return Err(config(
                "revocation checks need --client-id and MESHGATE_PROTECT_CLIENT_SECRET (a client of the issuer); \
                 or pass --danger-skip-revocation-check"
                    .into(),
            ));
        }
        let scopes = crate::node::checked_scopes(args.scopes.clone()).map_err(|e| config(e.to_string()))?;
        let path = args.resource.path().trim_end_matches('/');
        let metadata_url = format!(
            "{}/.well-known/oauth-protected-resource{path}",
            args.resource.origin().ascii_serialization()
        );
        let build = |timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .tls_backend_rustls()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5));
            builder = match timeout {
                Some(t) => builder.timeout(t),
                None => builder.read_timeout(args.upstream_timeout),
            };
            builder.build().map_err(|e| Error::Io {
                action: "build the HTTP client".into(),
                source: std::io::Error::other(e),
            })
        };
        let http = build(Some(Duration::from_secs(5)))?;
        let upstream = build(None)?;
        Ok(Self(Arc::new(Inner {
            scopes,
            metadata_url,
            clock,
            http,
            upstream,
            issuer_metadata: tokio::sync::OnceCell::new(),
            jwks: tokio::sync::Mutex::new(Jwks::default()),
            introspected: Mutex::new(HashMap::new()),
            member,
            args,
        })))
    }

    /// The URL of the protected-resource metadata.
    pub fn metadata_url(&self) -> &str {
        &self.0.metadata_url
    }

    /// The router: the metadata, then every other request through the token check to the upstream.
    pub fn router(&self) -> Router {
        let path = self.0.args.resource.path().trim_end_matches('/').to_owned();
        let mut router = Router::new().route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(metadata).options(preflight),
        );
        if !path.is_empty() {
            router = router.route(
                &format!("/.well-known/oauth-protected-resource{path}"),
                axum::routing::get(metadata).options(preflight),
            );
        }
        router.fallback(proxy).with_state(self.clone())
    }

    async fn issuer_metadata(&self) -> Result<&IssuerMetadata, String> {
        self.0
            .issuer_metadata
            .get_or_try_init(|| async {
                let issuer = &self.0.args.issuer;
                let url = url::Url::parse(issuer).map_err(|e| e.to_string())?;
                let path = url.path().trim_end_matches('/');
                let well_known = format!(
                    "{}/.well-known/oauth-authorization-server{path}",
                    url.origin().ascii_serialization()
                );
                let metadata: IssuerMetadata = self.get_json(&well_known).await?;
                if metadata.issuer != *issuer {
                    return Err(format!("the issuer's metadata names `{}`", metadata.issuer));
                }
                Ok(metadata)
            })
            .await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self.0.http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        let bytes = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if bytes.len() > 1024 * 1024 {
            return Err(format!("{url}: response too large"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))
    }

    /// The verification key `kid`, refetching the JWKS when it is unknown or old.
    async fn key(
        &self,
        kid: &str,
    ) -> Result<Option<(jsonwebtoken::Algorithm, Arc<jsonwebtoken::DecodingKey>)>, String> {
        let now = self.0.clock.now();
        let mut jwks = self.0.jwks.lock().await;
        let age = jwks.fetched_at.map(|at| now.saturating_sub(at));
        let known = jwks.keys.get(kid).cloned();
        let stale = age.is_none_or(|age| age >= JWKS_MAX_AGE.as_secs());
        let may_refresh = age.is_none_or(|age| age >= JWKS_MIN_REFRESH.as_secs());
        if (known.is_none() && may_refresh) || stale {
            let uri = self.issuer_metadata().await?.jwks_uri.clone();
            match self.get_json::<Value>(&uri).await {
                Ok(set) => {
                    jwks.keys = parse_jwks(&set);
                    jwks.fetched_at = Some(now);
                }
                Err(e) if known.is_some() => tracing::warn!(error = %e, "JWKS refresh failed; using the cached keys"),
                Err(e) => return Err(e),
            }
        }
        Ok(jwks.keys.get(kid).cloned())
    }

    async fn verify(&self, headers: &HeaderMap) -> Result<Claims, Refusal> {
        let token = bearer(headers)?;
        if token.len() > 16 * 1024 {
            return Err(Refusal::InvalidToken("token too long"));
        }
        if let Some(member) = &self.0.member {
            return self.verify_in_mesh(member, token);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::InvalidToken("malformed token"))?;
        if !matches!(header.typ.as_deref(), Some("at+jwt") | Some("application/at+jwt")) {
            return Err(Refusal::InvalidToken("not an access token"));
        }
        let kid = header.kid.as_deref().ok_or(Refusal::InvalidToken("token has no kid"))?;
        let (alg, key) = self
            .key(kid)
            .await
            .map_err(Refusal::Unavailable)?
            .ok_or(Refusal::InvalidToken("unknown signing key"))?;
        if alg != header.alg {
            return Err(Refusal::InvalidToken("algorithm mismatch"));
        }
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[self.0.args.issuer.as_str()]);
        validation.set_audience(&[self.0.args.resource.as_str()]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    Refusal::InvalidToken("token is for another audience")
                }
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => Refusal::InvalidToken("token is from another issuer"),
                _ => Refusal::InvalidToken("invalid token"),
            })?
            .claims;
        let now = self.0.clock.now();
        if now >= claims.exp || now < claims.nbf {
            return Err(Refusal::InvalidToken("token expired"));
        }
        let granted: Vec<&str> = claims.scope.split(' ').collect();
        if !self.0.scopes.iter().all(|s| granted.contains(&s.as_str())) {
            return Err(Refusal::InsufficientScope);
        }
        if !self.0.args.danger_skip_revocation_check && !self.active(token, &claims, now).await? {
            return Err(Refusal::InvalidToken("token revoked"));
        }
        Ok(claims)
    }

    /// Validates `token` against the replicated state (mesh-member mode).
    fn verify_in_mesh(&self, member: &crate::protect_mesh::Member, token: &str) -> Result<Claims, Refusal> {
        if member.recovering() {
            return Err(Refusal::Unavailable(
                "the replicated state is being recovered from peers".into(),
            ));
        }
        let claims = member
            .validate(token, self.0.clock.now())
            .map_err(|inactive| Refusal::InvalidToken(crate::protect_mesh::describe(inactive)))?;
        if !claims.aud.contains(self.0.args.resource.as_str()) {
            return Err(Refusal::InvalidToken("token is for another audience"));
        }
        let granted: Vec<&str> = claims.scope.split(' ').collect();
        if !self.0.scopes.iter().all(|s| granted.contains(&s.as_str())) {
            return Err(Refusal::InsufficientScope);
        }
        Ok(Claims {
            sub: claims.sub,
            client_id: claims.client_id,
            scope: claims.scope,
            exp: claims.exp,
            nbf: claims.nbf,
            jti: claims.jti,
        })
    }

    /// Whether the issuer still calls the token active (remembered per `jti` for the interval).
    async fn active(&self, token: &str, claims: &Claims, now: u64) -> Result<bool, Refusal> {
        let interval = self.0.args.revocation_check_interval.as_secs();
        let key = if claims.jti.is_empty() {
            token.to_owned()
        } else {
            claims.jti.clone()
        };
        {
            let cache = self.0.introspected.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, active)) = cache.get(&key)
                && now < at.saturating_add(interval)
            {
                return Ok(*active);
            }
        }
        let endpoint = self
            .issuer_metadata()
            .await
            .map_err(Refusal::Unavailable)?
            .introspection_endpoint
            .clone()
            .ok_or_else(|| Refusal::Unavailable("the issuer has no introspection endpoint".into()))?;
        let (id, secret) = (
            self.0.args.client_id.as_deref().unwrap_or_default(),
            self.0.args.client_secret.as_deref().unwrap_or_default(),
        );
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let response = self
            .0
            .http
            .post(&endpoint)
            .header(header::AUTHORIZATION, format!("Basic {basic}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| Refusal::Unavailable(format!("introspection: {e}")))?;
        if !response.status().is_success() {
            return Err(Refusal::Unavailable(format!(
                "introspection answered {}",
                response.status()
            )));
        }
        let answer: Value = response
            .json()
            .await
            .map_err(|e| Refusal::Unavailable(format!("introspection: {e}")))?;
        let active = answer["active"] == true;
        let mut cache = self.0.introspected.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 65_536 {
            cache.retain(|_, (at, _)| now < at.saturating_add(interval));
            if cache.len() >= 65_536 {
                cache.clear();
            }
        }
        cache.insert(key, (now, active));
        Ok(active)
    }

    fn refuse(&self, refusal: Refusal) -> Response {
        let meta = &self.0.metadata_url;
        let scope = self.0.scopes.join(" ");
        let scope_param = if scope.is_empty() {
            String::new()
        } else {
            format!(", scope=\"{scope}\"")
        };
        let (status, challenge, error, description) = match refusal {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer resource_metadata=\"{meta}\"{scope_param}"),
                "invalid_token",
                "a bearer token is required".to_owned(),
            ),
            Refusal::InvalidToken(why) => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer error=\"invalid_token\", error_description=\"{why}\", resource_metadata=\"{meta}\""),
                "invalid_token",
                why.to_owned(),
            ),
            Refusal::InsufficientScope => (
                StatusCode::FORBIDDEN,
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{meta}\""),
                "insufficient_scope",
                format!("this resource needs the scope `{scope}`"),
            ),
            Refusal::Unavailable(why) => {
                tracing::warn!(reason = %why, "cannot validate tokens: the issuer is unavailable");
                let body = json!({"error": "temporarily_unavailable", "error_description": "the authorization server cannot be reached to validate the token"});
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return response;
            }
        };
        let body = json!({"error": error, "error_description": description});
        let mut response = (status, axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        response.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("WWW-Authenticate"),
        );
        response
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Refusal::NoToken)?;
    if values.next().is_some() {
        return Err(Refusal::InvalidToken("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| Refusal::InvalidToken("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(Refusal::NoToken),
    }
}

fn parse_jwks(set: &Value) -> HashMap<String, (jsonwebtoken::Algorithm, Arc<jsonwebtoken::DecodingKey>)> {
    let mut keys = HashMap::new();
    for jwk in set["keys"].as_array().into_iter().flatten() {
        let (Some(kid), Some(alg)) = (jwk["kid"].as_str(), jwk["alg"].as_str()) else {
            continue;
        };
        let alg = match alg {
            "EdDSA" => jsonwebtoken::Algorithm::EdDSA,
            "ES256" => jsonwebtoken::Algorithm::ES256,
            "RS256" => jsonwebtoken::Algorithm::RS256,
            _ => continue,
        };
        if let Ok(key) = crate::keys::decoding_key(jwk) {
            keys.insert(kid.to_owned(), (alg, Arc::new(key)));
        }
    }
    keys
}

async fn metadata(State(protect): State<Protect>) -> Response {
    let args = &protect.0.args;
    let body = json!({
        "resource": args.resource.as_str(),
        "authorization_servers": [args.issuer],
        "scopes_supported": protect.0.scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "meshgate protect",
    });
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("MCP-Protocol-Version"),
    );
    response
}

/// Headers that belong to one connection (RFC 9110 §7.6.1) and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

async fn proxy(State(protect): State<Protect>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let claims = match protect.verify(&parts.headers).await {
        Ok(claims) => claims,
        Err(refusal) => return protect.refuse(refusal),
    };
    let limit = protect.0.args.max_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return gateway_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            &format!("request body larger than {limit} bytes"),
        );
    };
    let mut url = protect.0.args.upstream.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}{}", parts.uri.path()));
    url.set_query(parts.uri.query());
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "authorization" || n.starts_with("x-meshgate-") {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    for (name, value) in [
        (SUBJECT_HEADER, claims.sub.as_str()),
        (CLIENT_HEADER, claims.client_id.as_str()),
        (SCOPE_HEADER, claims.scope.as_str()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let send = protect
        .0
        .upstream
        .request(method, url)
        .headers(headers)
        .body(body)
        .send();
    let timeout = protect.0.args.upstream_timeout;
    let response = match tokio::time::timeout(timeout, send).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upstream request failed");
            let why = if e.is_connect() {
                "the upstream service refused the connection or is not running"
            } else {
                "the upstream service failed to answer"
            };
            return gateway_error(StatusCode::BAD_GATEWAY, "bad_gateway", why);
        }
        Err(_) => {
            tracing::warn!(?timeout, "upstream request timed out");
            return gateway_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                &format!(
                    "the upstream service did not answer within {}",
                    humantime::format_duration(timeout)
                ),
            );
        }
    };
    let mut builder = Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
    }
    let body = Body::new(reqwest::Body::from(response));
    builder.body(body).unwrap_or_else(|_| {
        gateway_error(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the upstream answered malformed headers",
        )
    })
}

fn gateway_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The configuration of mesh-member mode: `config_file`'s `node.sync` (and bridge token settings),
/// with the flags' peers added; without a file and `--sync-listen`, the sync listener takes a free
/// port on 127.0.0.1.
pub fn member_config(
    args: &ProtectArgs,
    data_dir: &std::path::Path,
    config_file: Option<&std::path::Path>,
) -> Result<crate::config::Config, Error> {
    let overrides = crate::config::Overrides {
        data_dir: Some(data_dir.to_path_buf()),
        sync_listen: args.sync_listen.map(|a| a.to_string()),
        ..Default::default()
    };
    let mut config = crate::config::load(config_file, &crate::config::ProcessEnvironment, &overrides)?;
    if config_file.is_none() && args.sync_listen.is_none() {
        config.node.sync.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    }
    let sync = &mut config.node.sync;
    sync.gossip_peers.extend(args.gossip_peers.iter().cloned());
    for did in &args.trusted_peers {
        if !sync.trusted_peers.contains(did) {
            sync.trusted_peers.push(*did);
        }
    }
    Ok(config)
}

/// Runs `meshgate protect` until SIGINT/SIGTERM; with `data_dir`, as a mesh member (configured by
/// `config_file`'s `node.sync` and the flags), else pointed at the issuer.
pub fn run(
    args: ProtectArgs,
    data_dir: Option<std::path::PathBuf>,
    config_file: Option<std::path::PathBuf>,
    json_output: bool,
) -> Result<(), Error> {
    if data_dir.is_none()
        && (config_file.is_some()
            || !args.gossip_peers.is_empty()
            || !args.trusted_peers.is_empty()
            || args.sync_listen.is_some())
    {
        return Err(Error::Config(vec![
            "--config, --gossip-peer, --trusted-peer and --sync-listen are for the mesh-member mode: add --data-dir DIR".into(),
        ]));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            action: "start the runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let listen = args.listen;
        let clock: Arc<dyn Clock> = Arc::new(mesh::clock::SystemClock);
        let protect = match data_dir {
            None => Protect::new(args, clock)?,
            Some(dir) => {
                crate::config::Issuer::parse(&args.issuer)
                    .map_err(|e| Error::Config(vec![format!("--issuer: {e}")]))?;
                let config = member_config(&args, &dir, config_file.as_deref())?;
                let member = crate::protect_mesh::Member::start(&config, &dir, &args.issuer, clock.clone()).await?;
                Protect::with_member(args, clock, member)?
            }
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| Error::Bind {
            addr: listen.to_string(),
            source,
        })?;
        let mut describe = json!({
            "listen": bound.to_string(),
            "resource": protect.0.args.resource.as_str(),
            "resource_metadata": protect.metadata_url(),
            "upstream": protect.0.args.upstream.as_str(),
        });
        if let Some(member) = &protect.0.member {
            describe["did"] = json!(member.did);
            describe["sync_listen"] = json!(member.sync_listen.to_string());
        }
        if json_output {
            println!("{describe}");
        } else {
            println!(
                "protecting {} at {bound} for {} (metadata: {})",
                protect.0.args.upstream,
                protect.0.args.resource,
                protect.metadata_url()
            );
        }
        tracing::info!(%bound, resource = protect.0.args.resource.as_str(), "protecting");
        let app = protect.router();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(crate::serve::signal())
            .await
            .map_err(|source| Error::Io {
                action: "serve".into(),
                source,
            });
        if let Some(member) = &protect.0.member {
            member.shutdown().await;
        }
        served
    })
}
