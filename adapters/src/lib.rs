//! Adapters between meshgate and the outside world: upstream identity providers reached over HTTP.
//!
//! # Layout
//!
//! - [`config`]: [`config::UpstreamConfig`], one entry of `upstreams:` in the YAML — issuer or
//!   explicit endpoints, audience, credentials ([`config::Secret`], redacted), timeouts, breaker
//!   and JWKS cache settings, each with a documented default.
//! - [`http`]: [`http::HttpClient`], the one outbound HTTP client every upstream adapter shares —
//!   short connect and total timeouts ([`http::HttpConfig`]), redirects never followed, rustls with
//!   an optional extra root CA, bounded response bodies. It implements the `oauth2` crate's
//!   [`oauth2::AsyncHttpClient`], so `oauth2` (built without its own reqwest) runs over it.
//! - [`breaker`]: [`breaker::Breaker`], the circuit breaker as a pure state machine (injected
//!   time, seeded jitter); [`circuit`]: [`circuit::Circuit`], one shared per upstream, which runs
//!   async calls through it, with the token-path response deadline.
//! - [`oidc`]: [`oidc::OidcProvider`] — discovery, the JWKS cached in memory and on disk with a
//!   staleness bound, background and unknown-`kid` refresh, and offline verification of upstream
//!   JWTs.
//! - [`oauth2_upstream`]: [`oauth2_upstream::OAuth2Upstream`] — the token endpoint, forwarding a
//!   federated client's own credentials.
//! - [`login`]: login federation for the authorization-code flow — the upstream authorization
//!   URL (PKCE S256, `state`, `nonce`) and the code exchange with ID token verification.
//! - [`introspection`]: RFC 7662 introspection at the upstream with meshgate's credentials.
//! - [`Upstream`]: the above wired together for one configured upstream.
//! - [`clock`]: injected time ([`clock::Clock`]).
//! - [`Error`]: the crate's single error type; every variant says when it happens.
//!
//! Invariants: this crate never depends on `bridge` (the facade depends on it, not the reverse).
//! Every upstream call goes through the upstream's circuit breaker. Verifying an upstream token
//! never calls the upstream, except for one rate-limited JWKS refresh when its `kid` is unknown.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod circuit;
pub mod clock;
pub mod config;
mod error;
pub mod http;
pub mod introspection;
pub mod login;
pub mod oauth2_upstream;
pub mod oidc;
mod upstream;

pub use error::Error;
pub use upstream::Upstream;
