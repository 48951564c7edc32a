//! meshgate's facade: the OAuth 2.1 / OpenID Connect HTTP endpoints, token minting, client
//! authentication, configuration, the CLI and the `meshgate` binary.
//!
//! # Layout
//!
//! - [`config`]: YAML configuration with environment and flag overrides.
//! - [`node`]: the writable node (state store, identity, keys) and administrative commands.
//! - [`view`]: the immutable in-memory view the request path reads.
//! - [`http`]: `fn app(state) -> Router` and the OAuth handlers; [`form`] and [`auth`] parse and
//!   authenticate requests; [`token`] mints and validates RFC 9068 access tokens with [`keys`].
//! - [`error`]: [`error::OAuthError`], the one type that becomes an HTTP error response.
//! - [`serve`]: binding the listeners; [`observability`] and [`metrics`] are the separate metrics plane;
//!   [`admin`] is the local admin socket the CLI uses while a server runs.
//! - [`upstream`]: the configured upstream identity providers (`adapters::Upstream` each, JWKS
//!   disk cache, background refresh, status); [`federation`]: the per-client degradation policy
//!   token exchange applies while an upstream is unavailable.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod federation;
pub mod form;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod observability;
pub mod plugin_cli;
pub mod plugin_host;
pub mod serve;
pub mod token;
pub mod upstream;
pub mod verified;
pub mod view;

/// Installs the log subscriber: structured lines on stderr, filtered by `MESHGATE_LOG` (default
/// `info,automerge=warn` for `serve`, `warn` otherwise). Tokens, secrets and `Authorization` headers are never
/// logged: handlers log reasons, not request contents.
pub fn init_logging(serving: bool) {
    // automerge instruments document loading at INFO with the whole change graph in the span:
    // formatting it cost half a node's CPU under write load, so it is quiet unless asked for.
    let default = if serving { "info,automerge=warn" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}
