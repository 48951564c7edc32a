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
//! - [`registration`]: RFC 7591/7592 dynamic client registration and the unused-client sweep;
//!   [`cimd`]: Client ID Metadata Documents and [`cimd::resolve_client`].
//! - [`protect`]: `meshgate protect`, the reverse proxy that guards an HTTP service or MCP server.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cimd;
pub mod cli;
pub mod commit;
pub mod config;
pub mod doctor;
pub mod error;
pub mod federated;
pub mod federation;
pub mod form;
pub mod http;
pub mod import;
pub mod keys;
pub mod legacy;
pub mod listener;
pub mod login_throttle;
pub mod metrics;
pub mod node;
pub mod observability;
pub mod password;
pub mod plugin_cli;
pub mod plugin_host;
pub mod protect;
pub mod protect_mesh;
pub mod ratelimit;
pub mod reference;
pub mod registration;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod users;
pub mod verified;
pub mod view;

/// Installs the log subscriber: structured lines on stderr, filtered by `MESHGATE_LOG` (default
/// `info,automerge=warn` for `serve`, `warn` otherwise), and the same events as JSON lines to the
/// log file once `serve` opens one ([`telemetry::logfile`]). Tokens, secrets and `Authorization`
/// headers are never logged: handlers log reasons, not request contents.
pub fn init_logging(serving: bool) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // automerge instruments document loading at INFO with the whole change graph in the span:
    // formatting it cost half a node's CPU under write load, so it is quiet unless asked for.
    let default = if serving { "info,automerge=warn" } else { "warn" };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("MESHGATE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_filter(filter());
    let file = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(telemetry::logfile::Sink)
        .with_filter(tracing_subscriber::filter::filter_fn(|_| telemetry::logfile::active()))
        .with_filter(filter());
    let _ = tracing_subscriber::registry().with(stderr).with(file).try_init();
}
