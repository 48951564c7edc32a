//! Configuration of one upstream, as it appears under `upstreams:` in meshgate's YAML.
//!
//! ```yaml
//! upstreams:
//!   - name: corp
//!     issuer: https://idp.corp/realms/agents   # OIDC discovery from here…
//!     # endpoints: { token: https://…/token, jwks: https://…/certs }   # …or explicit endpoints
//!     audience: meshgate
//!     client_id: meshgate-edge
//!     client_secret: s3cret
//!     federate_unknown_clients: false
//!     timeouts: { connect: 200ms, total: 2s, token_deadline: 300ms }
//!     breaker: { failure_threshold: 5, open_for: 5s }
//!     jwks: { max_stale: 7d, refresh_interval: 5m, min_refresh_interval: 30s }
//!     scope_map: { "api.read": [read], "api.admin": [read, write] }
//! ```
//!
//! Every field but `name` and `issuer` has a default. Durations are written the humantime way
//! (`300ms`, `5s`, `7d`). Unknown keys are accepted here; the caller reports them (`serde_ignored`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use url::Url;

use crate::breaker::BreakerConfig;
use crate::http::HttpConfig;

/// One upstream identity provider.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct UpstreamConfig {
    /// The name clients refer to (`client add --upstream NAME`), also the metrics label.
    pub name: String,
    /// The upstream's issuer identifier (OpenID Connect Discovery 1.0 §3, RFC 8414 §2): the `iss`
    /// its tokens carry and, unless [`UpstreamConfig::endpoints`] is given, where its discovery
    /// document is fetched. Compared exactly, as a string.
    pub issuer: Issuer,
    /// Explicit endpoints for an upstream without discovery (a plain OAuth2 server). When given,
    /// no discovery document is fetched.
    #[serde(default)]
    pub endpoints: Option<Endpoints>,
    /// The audience upstream tokens must carry in `aud` to be accepted by meshgate. Default: none,
    /// which makes every token verification fail with [`crate::Error::WrongAudience`]: an
    /// upstream token is accepted only when it was meant for meshgate.
    #[serde(default)]
    pub audience: Option<String>,
    /// meshgate's own client id at the upstream, for its own calls (client_credentials).
    #[serde(default)]
    pub client_id: Option<String>,
    /// meshgate's own client secret at the upstream.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Whether a client id meshgate does not know is forwarded to this upstream (and recorded as
    /// federated once the upstream accepts it). Default: false.
    #[serde(default)]
    pub federate_unknown_clients: bool,
    /// How client credentials are sent to the upstream's token endpoint. Default: HTTP Basic.
    #[serde(default)]
    pub token_auth_method: TokenAuthMethod,
    /// Signature algorithms accepted on upstream tokens. Default: RS256, ES256, EdDSA, PS256.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<SignatureAlgorithm>,
    /// Network time limits.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Circuit breaker settings.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// JWKS cache settings.
    #[serde(default)]
    pub jwks: JwksConfig,
    /// PEM file contents of an extra root CA for this upstream's TLS. Default: none.
    #[serde(default)]
    pub extra_root_ca_pem: Option<String>,
    /// Upstream scope → the local scopes it grants, applied to federated clients' tokens and to
    /// token exchange. An upstream scope without an entry grants nothing. Default: empty, which
    /// maps every upstream scope to itself. Mapping only ever narrows: a local token never
    /// carries a scope that no upstream scope of the subject maps to.
    #[serde(default)]
    pub scope_map: std::collections::BTreeMap<String, Vec<String>>,
    /// Login federation: a "Sign in with …" button on meshgate's login page that signs people in
    /// at this upstream (see [`crate::login`]). Default: none (no button). Needs `client_id` and
    /// `client_secret`: meshgate's confidential client at the upstream, with
    /// `{meshgate issuer}/login/upstream/callback` registered as its redirect URI.
    #[serde(default)]
    pub login: Option<LoginConfig>,
}

/// `login:` of an upstream: how people sign in at it through meshgate's login page.
///
/// ```yaml
/// login: { display_name: "Corp SSO", scopes: [profile, email] }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LoginConfig {
    /// The button reads "Sign in with DISPLAY_NAME". Default: the upstream's `name`.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Scopes asked for besides `openid` (their claims fill the user's name and e-mail).
    /// Default: `profile`, `email`.
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
    /// Who may sign in: `create` (default) — every identity the upstream vouches for, its
    /// meshgate user created at the first login; `existing` — only identities an operator
    /// linked beforehand (`meshgate user link --upstream NAME --subject SUB`).
    #[serde(default)]
    pub users: LoginUsers,
}

/// [`LoginConfig::users`]: which upstream identities may sign in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoginUsers {
    /// Any identity the upstream vouches for; the first login creates its meshgate user (as Dex
    /// and Keycloak's default first-broker-login flow do).
    #[default]
    Create,
    /// Only identities whose meshgate user exists already (linked by an operator).
    Existing,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            display_name: None,
            scopes: default_login_scopes(),
            users: LoginUsers::default(),
        }
    }
}

fn default_login_scopes() -> Vec<String> {
    vec!["profile".to_owned(), "email".to_owned()]
}

impl UpstreamConfig {
    /// A configuration with every optional field at its default.
    pub fn new(name: impl Into<String>, issuer: Issuer) -> Self {
        Self {
            name: name.into(),
            issuer,
            endpoints: None,
            audience: None,
            client_id: None,
            client_secret: None,
            federate_unknown_clients: false,
            token_auth_method: TokenAuthMethod::default(),
            algorithms: default_algorithms(),
            timeouts: Timeouts::default(),
            breaker: BreakerConfig::default(),
            jwks: JwksConfig::default(),
            extra_root_ca_pem: None,
            scope_map: std::collections::BTreeMap::new(),
            login: None,
        }
    }

    /// The settings of the HTTP client for this upstream.
    pub fn http_config(&self) -> HttpConfig {
        HttpConfig {
            connect_timeout: self.timeouts.connect,
            timeout: self.timeouts.total,
            extra_root_ca_pem: self.extra_root_ca_pem.clone().map(String::into_bytes),
            ..HttpConfig::default()
        }
    }
}

fn default_algorithms() -> Vec<SignatureAlgorithm> {
    vec![
        SignatureAlgorithm::RS256,
        SignatureAlgorithm::ES256,
        SignatureAlgorithm::EdDSA,
        SignatureAlgorithm::PS256,
    ]
}

/// An issuer identifier: an absolute `https` or `http` URL without query or fragment
/// (RFC 8414 §2), kept exactly as written because issuers are compared as strings.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Issuer(String);

impl Issuer {
    /// Parses an issuer identifier; fails with a message saying what is wrong.
    pub fn new(issuer: impl Into<String>) -> Result<Self, String> {
        let issuer = issuer.into();
        let url = Url::parse(&issuer).map_err(|error| format!("issuer `{issuer}` is not a URL: {error}"))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(format!("issuer `{issuer}` is not an http(s) URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("issuer `{issuer}` has a query or fragment"));
        }
        Ok(Self(issuer))
    }

    /// The identifier as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The discovery document's URL: OpenID Connect Discovery 1.0 §4, the issuer with
    /// `/.well-known/openid-configuration` appended.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.0.trim_end_matches('/'))
    }

    /// The RFC 8414 §3 authorization server metadata URL: `/.well-known/oauth-authorization-server`
    /// inserted between the host and the issuer's path.
    pub fn rfc8414_url(&self) -> String {
        match Url::parse(&self.0) {
            Ok(url) => {
                let path = url.path().trim_end_matches('/');
                let origin = url.origin().ascii_serialization();
                format!("{origin}/.well-known/oauth-authorization-server{path}")
            }
            Err(_) => self.discovery_url(),
        }
    }
}

impl fmt::Debug for Issuer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, formatter)
    }
}

impl<'de> Deserialize<'de> for Issuer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Explicit upstream endpoints, for upstreams without a discovery document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Endpoints {
    /// The token endpoint (RFC 6749 §3.2).
    #[serde(default)]
    pub token: Option<Url>,
    /// The JWK Set document (RFC 7517 §5), needed to verify upstream JWTs.
    #[serde(default)]
    pub jwks: Option<Url>,
    /// The authorization endpoint (RFC 6749 §3.1), for login federation.
    #[serde(default)]
    pub authorization: Option<Url>,
    /// The introspection endpoint (RFC 7662).
    #[serde(default)]
    pub introspection: Option<Url>,
}

impl Endpoints {
    /// Endpoints with only a token endpoint.
    pub fn with_token(token: Url) -> Self {
        Self {
            token: Some(token),
            ..Self::default()
        }
    }
}

/// A secret, such as a client secret: `Debug` shows `[redacted]`, there is no `Display`, and the
/// value is read only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("[redacted]")
    }
}

/// How client credentials are presented at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenAuthMethod {
    /// HTTP Basic authentication (`client_secret_basic`), which every server must support.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    ClientSecretPost,
}

/// A JWS signature algorithm accepted on upstream tokens (RFC 7518 §3.1). Symmetric algorithms
/// (`HS*`) and `none` cannot be expressed: a public JWKS can never verify them safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA with P-256 and SHA-256.
    ES256,
    /// ECDSA with P-384 and SHA-384.
    ES384,
    /// EdDSA with Ed25519 (RFC 8037).
    EdDSA,
}

impl SignatureAlgorithm {
    /// Every algorithm, in declaration order.
    pub const ALL: [Self; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    /// The JOSE name, e.g. `RS256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    /// The algorithm with this JOSE name, if it is one of these.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|algorithm| algorithm.as_str() == name)
    }
}

/// Network time limits for one upstream; see [`Timeouts::default`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// Longest time to establish a connection. Default: 200 ms.
    #[serde(with = "duration")]
    pub connect: Duration,
    /// Longest time for a whole exchange (discovery, JWKS, background calls). Default: 2 s.
    #[serde(with = "duration")]
    pub total: Duration,
    /// Longest time a token-path call (forwarding a client's credentials) waits for the
    /// upstream's answer, however far it got; past it, the caller falls back to its degradation
    /// policy. Catches a frozen upstream that accepts connections and never answers. Default:
    /// 300 ms.
    #[serde(with = "duration")]
    pub token_deadline: Duration,
}

impl Default for Timeouts {
    /// Connect 200 ms, total 2 s, token-path response deadline 300 ms.
    fn default() -> Self {
        Self {
            connect: Duration::from_millis(200),
            total: Duration::from_secs(2),
            token_deadline: Duration::from_millis(300),
        }
    }
}

/// JWKS cache settings; see [`JwksConfig::default`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct JwksConfig {
    /// How long after the last successful fetch the cached JWKS is still used to verify tokens
    /// while the upstream cannot be reached. Past it, verification fails closed with
    /// [`crate::Error::JwksTooStale`]. Default: 7 days.
    #[serde(with = "duration")]
    pub max_stale: Duration,
    /// How often the background task refreshes discovery and the JWKS. Default: 5 minutes.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// Least time between two refreshes triggered by an unknown `kid`, so tokens with made-up key
    /// ids cannot make meshgate hammer the upstream. Default: 30 s.
    #[serde(with = "duration")]
    pub min_refresh_interval: Duration,
}

impl Default for JwksConfig {
    /// Stale for up to 7 days, background refresh every 5 minutes, unknown-`kid` refreshes at
    /// most every 30 s.
    fn default() -> Self {
        Self {
            max_stale: Duration::from_secs(7 * 24 * 3600),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
        }
    }
}

/// Serde for durations written the humantime way (`300ms`, `5s`, `7d`).
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*duration))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(secret.expose(), "hunter2-very-secret");
        let mut config = UpstreamConfig::new("corp", Issuer::new("https://idp.example").unwrap());
        config.client_secret = Some(secret);
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let timeouts = Timeouts::default();
        assert_eq!(timeouts.connect, Duration::from_millis(200));
        assert_eq!(timeouts.total, Duration::from_secs(2));
        assert_eq!(timeouts.token_deadline, Duration::from_millis(300));
        let jwks = JwksConfig::default();
        assert_eq!(jwks.max_stale, Duration::from_secs(604_800));
        assert_eq!(jwks.refresh_interval, Duration::from_secs(300));
        assert_eq!(jwks.min_refresh_interval, Duration::from_secs(30));
        let config = UpstreamConfig::new("corp", Issuer::new("https://idp.example").unwrap());
        assert_eq!(
            config.algorithms,
            [
                SignatureAlgorithm::RS256,
                SignatureAlgorithm::ES256,
                SignatureAlgorithm::EdDSA,
                SignatureAlgorithm::PS256
            ]
        );
        assert_eq!(config.token_auth_method, TokenAuthMethod::ClientSecretBasic);
        let http = config.http_config();
        assert_eq!(http.connect_timeout, Duration::from_millis(200));
        assert_eq!(http.timeout, Duration::from_secs(2));
    }

    #[test]
    fn parses_the_documented_yaml() {
        let yaml = r#"
name: corp
issuer: https://idp.corp/realms/agents
audience: meshgate
client_id: meshgate-edge
client_secret: s3cret
token_auth_method: client_secret_post
federate_unknown_clients: true
algorithms: [ES256, EdDSA]
timeouts: { connect: 100ms, token_deadline: 250ms }
breaker: { failure_threshold: 3, open_for: 10s }
jwks: { max_stale: 2d }
"#;
        let config: UpstreamConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(config.issuer.as_str(), "https://idp.corp/realms/agents");
        assert_eq!(
            config.issuer.discovery_url(),
            "https://idp.corp/realms/agents/.well-known/openid-configuration"
        );
        assert_eq!(config.audience.as_deref(), Some("meshgate"));
        assert_eq!(config.client_secret.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(config.token_auth_method, TokenAuthMethod::ClientSecretPost);
        assert_eq!(
            config.algorithms,
            [SignatureAlgorithm::ES256, SignatureAlgorithm::EdDSA]
        );
        assert_eq!(config.timeouts.connect, Duration::from_millis(100));
        assert_eq!(config.timeouts.total, Duration::from_secs(2));
        assert_eq!(config.timeouts.token_deadline, Duration::from_millis(250));
        assert_eq!(config.breaker.failure_threshold.get(), 3);
        assert_eq!(config.breaker.open_for, Duration::from_secs(10));
        assert_eq!(config.breaker.jitter_percent, 20);
        assert_eq!(config.jwks.max_stale, Duration::from_secs(2 * 86_400));
        assert_eq!(config.jwks.min_refresh_interval, Duration::from_secs(30));
    }

    #[test]
    fn explicit_endpoints_parse() {
        let yaml =
            "name: plain\nissuer: http://127.0.0.1:9000\nendpoints: { token: http://127.0.0.1:9000/oauth/token }\n";
        let config: UpstreamConfig = serde_yaml::from_str(yaml).unwrap();
        let endpoints = config.endpoints.unwrap();
        assert_eq!(endpoints.token.unwrap().as_str(), "http://127.0.0.1:9000/oauth/token");
        assert_eq!(endpoints.jwks, None);
    }

    #[test]
    fn symmetric_and_none_algorithms_cannot_be_configured() {
        for algorithm in ["HS256", "none"] {
            let yaml = format!("name: x\nissuer: https://idp.example\nalgorithms: [{algorithm}]\n");
            assert!(serde_yaml::from_str::<UpstreamConfig>(&yaml).is_err(), "{algorithm}");
        }
    }

    #[test]
    fn bad_issuers_are_refused() {
        assert!(Issuer::new("idp.example").is_err());
        assert!(Issuer::new("ftp://idp.example").is_err());
        assert!(Issuer::new("https://idp.example/?tenant=1").is_err());
        assert_eq!(
            Issuer::new("https://idp.example/").unwrap().as_str(),
            "https://idp.example/"
        );
        assert_eq!(
            Issuer::new("https://idp.example/").unwrap().discovery_url(),
            "https://idp.example/.well-known/openid-configuration"
        );
    }
}
