//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong in an adapter.
///
/// Messages never contain request bodies, headers, URL queries or URL passwords: upstream
/// requests carry client secrets and tokens, and errors end up in logs.
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
}
