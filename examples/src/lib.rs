//! Runnable meshgate examples; each file under `examples/` starts with its `Run with:` line.
//!
//! # Layout
//!
//! - `examples/client_credentials.rs`: a service using the `oauth2` crate's client_credentials grant
//!   against a meshgate issuer, exactly as it would against any OAuth 2.1 server.
#![forbid(unsafe_code)]
