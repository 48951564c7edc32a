//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in an adapter.
///
/// Messages never contain request bodies, headers, URL queries or URL passwords: upstream
/// requests carry client secrets and tokens, and errors end up in logs. Values taken from a
/// presented token (`kid`, `alg`) are shortened and stripped of control characters.
///
/// Three groups matter to callers: [`Error::is_upstream_failure`] (the upstream is unreachable or
/// broken — what the circuit breaker counts and a degradation policy answers),
/// [`Error::is_invalid_token`] (a presented token is not acceptable — `invalid_grant` or
/// `invalid_token`), and the rest (configuration or local problems).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`crate::http::HttpConfig::extra_root_ca_pem`] was set but holds no PEM certificate.
    #[error("the extra root CA holds no PEM certificate")]
    NoRootCertificate,
    /// [`crate::http::HttpConfig::extra_root_ca_pem`] could not be read as a PEM certificate bundle.
    #[error("the extra root CA is not a valid PEM certificate bundle")]
    InvalidRootCertificate(#[source] reqwest::Error),
    /// The HTTP client could not be built, e.g. the TLS verifier rejected the extra root CA.
    #[error("cannot build the HTTP client")]
    ClientBuild(#[source] reqwest::Error),
    /// An outgoing request could not be converted for sending, e.g. its URI is not absolute.
    #[error("invalid outgoing HTTP request")]
    InvalidRequest(#[source] reqwest::Error),
    /// No connection to the upstream could be made: refused, unresolvable, TLS handshake
    /// failed, or [`crate::http::HttpConfig::connect_timeout`] elapsed.
    #[error("cannot connect to the upstream")]
    Connect(#[source] reqwest::Error),
    /// The whole exchange (connect, request, response head and body) took longer than
    /// [`crate::http::HttpConfig::timeout`].
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed after it was made: reset, closed early, or a malformed response.
    #[error("upstream HTTP transport failed")]
    Transport(#[source] reqwest::Error),
    /// The upstream's response body is larger than
    /// [`crate::http::HttpConfig::max_response_bytes`]; the rest was not read.
    #[error("the upstream response body exceeds {limit} bytes")]
    ResponseTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The upstream's response could not be represented as an `http::Response`.
    #[error("invalid upstream HTTP response")]
    InvalidResponse(#[source] ::http::Error),
    /// The upstream answered with an HTTP status the call does not accept: a 5xx or 429 anywhere,
    /// or anything but 200 for a discovery or JWKS document.
    #[error("the upstream answered {what} with HTTP status {status}")]
    UpstreamStatus {
        /// Which request, e.g. `the discovery request`.
        what: &'static str,
        /// The HTTP status code.
        status: u16,
    },
    /// The upstream's answer is not the JSON document expected: an HTML error page, invalid
    /// JSON, or required members missing or mistyped.
    #[error("the upstream's {what} is not valid: {reason}")]
    InvalidDocument {
        /// Which document, e.g. `discovery document`.
        what: &'static str,
        /// What is wrong. For token responses this never quotes the body.
        reason: String,
    },
    /// The discovery document (or the JWKS disk cache) names an issuer other than the configured
    /// one; both are compared as exact strings (OpenID Connect Discovery 1.0 §4.3).
    #[error("the upstream's issuer is `{found}`, expected exactly `{expected}`")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The issuer the document names.
        found: String,
    },
    /// The upstream's JWKS holds no key usable with the allowed algorithms (only symmetric keys,
    /// `alg: none` keys, encryption keys, unsupported curves, RSA keys under 2048 bits, …).
    #[error("the upstream's JWKS holds no usable signature key")]
    NoUsableKeys,
    /// The call needs an upstream endpoint that is neither configured nor in the discovery
    /// document, e.g. no `token_endpoint`.
    #[error("the upstream has no {0} endpoint")]
    MissingEndpoint(&'static str),
    /// A call on meshgate's own behalf needs `client_id` and `client_secret`, which are not
    /// configured for this upstream.
    #[error("no client credentials are configured for this upstream")]
    MissingCredentials,
    /// The upstream answered the token request with an OAuth error (RFC 6749 §5.2), e.g.
    /// `invalid_client`: it is up, it refused.
    #[error("the upstream refused the token request: {error}")]
    TokenRejected {
        /// The OAuth error code the upstream returned.
        error: String,
    },
    /// The circuit breaker is open (or its single half-open probe is in flight): the upstream was
    /// not called.
    #[error("the upstream is unavailable (circuit open); retry after {retry_after:?}")]
    CircuitOpen {
        /// Time until the breaker allows a call again.
        retry_after: Duration,
    },
    /// A token-path call got no complete answer within its response deadline
    /// ([`crate::config::Timeouts::token_deadline`]), e.g. the upstream is frozen.
    #[error("the upstream did not answer within the {0:?} response deadline")]
    DeadlineExceeded(Duration),
    /// The JWKS disk cache could not be read or written.
    #[error("JWKS cache file {path}: {source}")]
    CacheIo {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No JWKS is known yet: never fetched (the upstream has been unreachable since start) and no
    /// disk cache. Verification fails closed.
    #[error("no upstream JWKS is available yet")]
    JwksUnavailable,
    /// The cached JWKS was last fetched longer than `max_stale` ago
    /// ([`crate::config::JwksConfig::max_stale`]); verification fails closed until a refresh
    /// succeeds.
    #[error("the cached upstream JWKS is {age:?} old, more than the allowed {max_stale:?}")]
    JwksTooStale {
        /// Time since the last successful fetch.
        age: Duration,
        /// The configured bound.
        max_stale: Duration,
    },
    /// The presented token is not a compact JWS with a JSON header and claims.
    #[error("the token is malformed: {0}")]
    MalformedToken(&'static str),
    /// The token's `alg` is not on the allow-list; `none` and `HS*` never are.
    #[error("the token's algorithm `{0}` is not allowed")]
    AlgorithmNotAllowed(String),
    /// No key in the JWKS has the token's `kid`, also after a refresh (or the refresh was not
    /// possible: rate limit, circuit open); or the token has no `kid` and the JWKS has not
    /// exactly one key for its algorithm.
    #[error("no upstream key matches the token's key id {kid:?}")]
    UnknownKey {
        /// The token's `kid`, if any.
        kid: Option<String>,
    },
    /// The key named by the token's `kid` cannot verify the token's `alg` (key type, curve or
    /// the key's own `alg` differ): no algorithm confusion.
    #[error("upstream key {kid:?} is not a {alg} key")]
    KeyAlgorithmMismatch {
        /// The token's `kid`.
        kid: String,
        /// The token's `alg`.
        alg: &'static str,
    },
    /// The token's signature does not verify with the upstream key.
    #[error("the token's signature is invalid")]
    InvalidSignature,
    /// The token's `iss` is not exactly the configured issuer.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// The token's `aud` does not contain the configured audience (or none is configured).
    #[error("the token is not meant for this audience")]
    WrongAudience,
    /// The token lacks a claim verification requires (`iss`, `aud`, `exp`), or it has the wrong
    /// type.
    #[error("the token lacks a valid `{0}` claim")]
    MissingClaim(&'static str),
    /// The token's `exp` is not after now.
    #[error("the token expired at {exp}")]
    Expired {
        /// The token's `exp`, Unix seconds.
        exp: u64,
    },
    /// The token's `nbf` is after now.
    #[error("the token is not valid before {nbf}")]
    NotYetValid {
        /// The token's `nbf`, Unix seconds.
        nbf: u64,
    },
    /// An ID token's `nonce` is not the one the login sent (a replayed or injected ID token).
    #[error("the ID token's nonce is not the one this login sent")]
    NonceMismatch,
}

impl Error {
    /// Whether this error says the upstream is unreachable, too slow, or answering like a broken
    /// server — what the circuit breaker counts as a failure and a degradation policy answers.
    /// An OAuth error answer ([`Error::TokenRejected`]) is not: the upstream is up.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Self::Connect(_)
                | Self::Timeout(_)
                | Self::Transport(_)
                | Self::ResponseTooLarge { .. }
                | Self::InvalidResponse(_)
                | Self::UpstreamStatus { .. }
                | Self::InvalidDocument { .. }
                | Self::IssuerMismatch { .. }
                | Self::NoUsableKeys
                | Self::CircuitOpen { .. }
                | Self::DeadlineExceeded(_)
        )
    }

    /// Whether this error says a presented token is unacceptable (bad signature, claims,
    /// algorithm or key), as opposed to meshgate being unable to judge it
    /// ([`Error::JwksUnavailable`], [`Error::JwksTooStale`]).
    pub fn is_invalid_token(&self) -> bool {
        matches!(
            self,
            Self::MalformedToken(_)
                | Self::AlgorithmNotAllowed(_)
                | Self::UnknownKey { .. }
                | Self::KeyAlgorithmMismatch { .. }
                | Self::InvalidSignature
                | Self::WrongIssuer
                | Self::WrongAudience
                | Self::MissingClaim(_)
                | Self::Expired { .. }
                | Self::NotYetValid { .. }
                | Self::NonceMismatch
        )
    }
}

/// A value taken from an untrusted token, made safe to show in a message: at most 64 characters,
/// control characters replaced.
pub(crate) fn untrusted(value: &str) -> String {
    value
        .chars()
        .take(64)
        .map(|character| if character.is_control() { '?' } else { character })
        .collect()
}
