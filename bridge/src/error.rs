//! The errors of the `bridge` crate.
//!
//! [`OAuthError`] is the one type that becomes an HTTP error response: an RFC 6749 §5.2 JSON body
//! with the right status, `WWW-Authenticate` on 401 and `Cache-Control: no-store`. Internal detail
//! is logged, never sent. [`Error`] covers everything else (start-up, configuration, CLI).

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An OAuth error response (RFC 6749 §5.2, RFC 6750 §3.1, RFC 7009 §2.2.1, RFC 8707 §2).
#[derive(Debug, Clone)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: Cow<'static, str>,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After: seconds` (RFC 9110 §10.2.3) to the response, e.g. to a `503`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The `Retry-After` seconds, if any.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// 400 `invalid_request`: a parameter is missing, repeated, malformed, or the body is not a form.
    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 `invalid_client`: client authentication failed (unknown client, wrong secret, bad assertion).
    pub fn invalid_client(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// 400 `invalid_grant`: the presented grant is invalid, expired or revoked.
    pub fn invalid_grant(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// 400 `unauthorized_client`: the client may not use this grant type (or act on this token).
    pub fn unauthorized_client(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
    }

    /// 400 `unsupported_grant_type`: the server does not support the grant type.
    pub fn unsupported_grant_type(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", description)
    }

    /// 400 `invalid_scope`: a requested scope is unknown or not allowed for the client.
    pub fn invalid_scope(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    /// 400 `access_denied` (the OAuth error registry; RFC 8628 §3.5 uses it at the token endpoint):
    /// a policy plugin denied the request, or failed under a deny-on-failure policy.
    pub fn access_denied(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "access_denied", description)
    }

    /// 400 `authorization_pending` (RFC 8628 §3.5): the user has not approved the device yet.
    pub fn authorization_pending() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            "the user has not yet approved the request",
        )
    }

    /// 400 `slow_down` (RFC 8628 §3.5): the device polls faster than its interval, which grows by
    /// 5 s.
    pub fn slow_down(interval: u64) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "slow_down",
            format!("polling too fast; wait {interval} s between requests"),
        )
    }

    /// 400 `expired_token` (RFC 8628 §3.5): the device code expired before the user approved it.
    pub fn expired_token() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "expired_token",
            "the device code has expired; start again",
        )
    }

    /// 400 `invalid_target` (RFC 8707 §2): a requested resource or audience is not allowed.
    pub fn invalid_target(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", description)
    }

    /// 413 `invalid_request`: the body is larger than the configured limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("request body larger than {limit} bytes"),
        )
    }

    /// 404 `invalid_request`: no such endpoint.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request", "no such endpoint")
    }

    /// 405 `invalid_request`: the endpoint does not accept this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "method not allowed on this endpoint",
        )
    }

    /// 500 `server_error`: something failed inside; `detail` is logged, not sent.
    pub fn server_error(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error")
    }

    /// 503 `temporarily_unavailable`: the server cannot answer now (e.g. the upstream identity
    /// provider is unavailable and the client's policy fails closed); pair it with
    /// [`OAuthError::with_retry_after`].
    pub fn temporarily_unavailable(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", description)
    }

    /// 400 `invalid_redirect_uri` (RFC 7591 §3.2.2): a registered redirection URI is not acceptable.
    pub fn invalid_redirect_uri(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_redirect_uri", description)
    }

    /// 400 `invalid_client_metadata` (RFC 7591 §3.2.2): a client metadata field is invalid.
    pub fn invalid_client_metadata(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_client_metadata", description)
    }

    /// 401 `invalid_token` (RFC 6750 §3.1) with a `Bearer` challenge: a missing, unknown or wrong
    /// bearer token (initial or registration access token).
    pub fn invalid_token(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
    }

    /// 429 `temporarily_unavailable` (the RFC 6749 code clients treat as retriable): too many
    /// requests (RFC 6585 §4), or too many failed client authentications; carries `Retry-After`
    /// (seconds, at least 1).
    pub fn too_many_requests(retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            "too many requests; retry later",
        )
        .with_retry_after(retry_after.max(1))
    }

    /// 408 `invalid_request`: the request body did not arrive within the body read timeout.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            "the request body did not arrive in time",
        )
    }

    /// The OAuth error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            error: self.code,
            error_description: &self.description,
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            let scheme = if self.code == "invalid_token" {
                "Bearer"
            } else {
                "Basic"
            };
            let challenge = format!(
                "{scheme} realm=\"meshgate\", error=\"{}\", error_description=\"{}\"",
                self.code,
                self.description.replace(['"', '\\'], "'")
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// Everything else that can fail in the bridge: start-up, configuration, the CLI, the admin channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; each entry names a key path and what is wrong with it.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<String>),
    /// The node's state or keys could not be loaded or saved.
    #[error(transparent)]
    Mesh(#[from] mesh::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Key generation or loading failed.
    #[error("signing key: {0}")]
    Key(String),
    /// An administrative command was refused (unknown client, bad argument, ...).
    #[error("{0}")]
    Admin(String),
    /// Talking to the running node over the admin socket failed.
    #[error("admin channel {path}: {source}")]
    AdminChannel {
        /// The socket.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Any other I/O failure.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_carries_a_challenge_and_no_store() {
        let response = OAuthError::invalid_client("client authentication failed").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm=\"meshgate\""), "{challenge}");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let response = OAuthError::temporarily_unavailable("upstream down")
            .with_retry_after(7)
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
