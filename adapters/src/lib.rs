//! Adapters between meshgate and the outside world: upstream identity providers reached over HTTP.
//!
//! # Layout
//!
//! - [`http`]: [`http::HttpClient`], the one outbound HTTP client every upstream adapter shares —
//!   short connect and total timeouts ([`http::HttpConfig`]), redirects never followed, rustls with
//!   an optional extra root CA, bounded response bodies. It implements the `oauth2` crate's
//!   [`oauth2::AsyncHttpClient`], so `oauth2` (built without its own reqwest) runs over it.
//! - [`Error`]: the crate's single error type; every variant says when it happens.
//!
//! Invariant: this crate never depends on `bridge` (the facade depends on it, not the reverse).

#![forbid(unsafe_code)]

mod error;
pub mod http;

pub use error::Error;
