//! The `meshgate` command line.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use mesh::clock::{Clock, SystemClock};
use serde_json::{Value, json};

use crate::admin;
use crate::config::{self, Config, Overrides, ProcessEnvironment};
use crate::error::Error;
use crate::keys::Alg;
use crate::node::{AdminRequest, Node};

/// meshgate: an OAuth 2.1 / OpenID Connect issuer backed by a mesh identity.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about, propagate_version = true)]
pub struct Cli {
    /// Data directory (default: $XDG_DATA_HOME/meshgate, else ~/.local/share/meshgate).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// YAML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OAuth endpoints and the metrics plane.
    Serve(ServeArgs),
    /// Manage clients.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the node's DID (creating the identity if missing); `id rotate` replaces its key.
    Id {
        #[command(subcommand)]
        command: Option<IdCommand>,
    },
    /// Manage the mesh: admit and remove nodes, show peers.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect the upstream identity providers.
    #[command(subcommand)]
    Upstream(UpstreamCommand),
    /// Guard an HTTP service or MCP server with OAuth: a reverse proxy serving RFC 9728 metadata,
    /// validating tokens and forwarding the verified subject, client and scopes.
    Protect(crate::protect::ProtectArgs),
    /// HTTPS: create a local CA and a server certificate.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Bring clients (and Keycloak users) over from another OAuth server, unchanged; reports every
    /// field it could not map.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write every client in meshgate's own format (secret hashes only) for `import meshgate`.
    Export {
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check this node's configuration and surroundings (key permissions, state, JWKS, clock skew
    /// against peers, upstreams, certificates, algorithms) and explain each finding; exits 1 when
    /// a check fails.
    Doctor,
    /// The audit log of administrative changes (who, what, when), replicated on every node.
    Audit {
        /// Only changes at or after TIME: RFC 3339 (2026-11-30T12:00:00Z) or a duration ago (1h, 7d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Manage the people who sign in at /authorize (replicated to every node).
    #[command(subcommand)]
    User(UserCommand),
    /// Signed WebAssembly plugins: developer keys, build, sign, trust, install, list, remove.
    #[command(subcommand)]
    Plugin(crate::plugin_cli::PluginCommand),
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// A Keycloak realm export (clients, and users with their password hashes).
    Keycloak {
        /// The realm export (JSON).
        file: PathBuf,
        #[command(flatten)]
        options: ImportOptions,
    },
    /// An ORY Hydra client list (`hydra list oauth2-clients --format json`); Hydra exports no
    /// secrets: give them with --secrets or they are rotated and printed once.
    Hydra {
        /// The client list (JSON).
        file: PathBuf,
        #[command(flatten)]
        options: ImportOptions,
    },
    /// A node-oidc-provider client array.
    #[command(name = "oidc-provider")]
    OidcProvider {
        /// The client array (JSON).
        file: PathBuf,
        #[command(flatten)]
        options: ImportOptions,
    },
    /// The previous gateway's JWKS (a URL or a file): every node publishes its keys and accepts
    /// its tokens at introspection until --until, so tokens it issued stay valid through the
    /// cutover.
    Jwks {
        /// `https://old-gateway/.well-known/jwks.json` or a file.
        source: String,
        /// When to stop: an RFC 3339 time (2026-12-01T12:00:00Z) or a duration from now (24h);
        /// at least the old gateway's longest token lifetime after its last issuance.
        #[arg(long, value_name = "TIME")]
        until: String,
        /// The issuer (`iss`) of the old gateway's tokens.
        #[arg(long, value_name = "URL")]
        issuer: String,
    },
    /// `meshgate export` output (from this or another mesh).
    Meshgate {
        /// The export (JSON).
        file: PathBuf,
        #[command(flatten)]
        options: ImportOptions,
    },
}

#[derive(Debug, Args)]
struct ImportOptions {
    /// A JSON object client id → secret, for clients whose secret the file lacks.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Report what would be imported; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Overwrite existing clients with the same id (default: skip them).
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Create a local CA (once; reused afterwards) in DATA_DIR/tls and issue a server certificate
    /// for 127.0.0.1, localhost, ::1, the configured issuer's host and every --san; prints the CA
    /// certificate clients must trust. `serve --tls` (or `bridge.tls`) then serves HTTPS with it,
    /// and a running server picks up a re-issued certificate by itself.
    Init {
        /// Another name (host name or IP address) for the certificate (repeatable).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Validity of the server certificate in days (at most 825).
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from standard input (--password-stdin, required).
    Add {
        /// Login name.
        username: String,
        /// Full name (the `name` claim).
        #[arg(long)]
        name: Option<String>,
        /// E-mail address (the `email` claim).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users (never password hashes).
    List,
    /// Remove a user and their consents.
    Remove {
        /// Login name.
        username: String,
    },
    /// Change a user's password.
    Passwd {
        /// Login name.
        username: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List a user's remembered consents.
    Consents {
        /// Login name.
        username: String,
    },
    /// Forget a user's consent to a client: the next sign-in asks again.
    RevokeConsent {
        /// Login name.
        username: String,
        /// The client id.
        client_id: String,
    },
    /// Link an upstream identity: creates the password-less user `upstream:NAME:SUB`, which may
    /// then sign in with the upstream (needed when its `login.users` is `existing`).
    Link {
        /// The upstream's configured name.
        #[arg(long)]
        upstream: String,
        /// The user's `sub` at the upstream.
        #[arg(long)]
        subject: String,
        /// Full name (the `name` claim).
        #[arg(long)]
        name: Option<String>,
        /// E-mail address (the `email` claim).
        #[arg(long)]
        email: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum UpstreamCommand {
    /// Per upstream: issuer, circuit breaker (state, failures, since when open), JWKS cache age
    /// and staleness, last refresh error. Asks the running server; without one, shows the disk
    /// caches only.
    Status,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address of the OAuth listener [default: 127.0.0.1:8700].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address of the metrics listener [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Issuer URL [default: http:// + the bound listen address].
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    /// Address of the mesh sync listener [default: 127.0.0.1:7946].
    #[arg(long, value_name = "ADDR")]
    sync_listen: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM; reloaded when it changes).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with the certificate `meshgate tls init` wrote into the data directory.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls: bool,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum ClientCommand {
    /// Register a client and print its id and secret (the secret is shown only this once).
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Grant type the client may use (repeatable): `client_credentials`,
        /// `urn:ietf:params:oauth:grant-type:token-exchange` (alias `token-exchange`); none =
        /// introspection/revocation only. `device_code` (the RFC 8628 device flow, alone or with
        /// --redirect-uri) registers a client acting for users, with refresh tokens.
        #[arg(long = "grant", value_name = "GRANT")]
        grants: Vec<String>,
        /// Allowed scopes, space-separated (repeatable).
        #[arg(long = "scope", value_name = "SCOPES")]
        scopes: Vec<String>,
        /// Allowed audience / RFC 8707 resource (repeatable); the default audiences of its tokens.
        #[arg(long = "audience", value_name = "URL")]
        audiences: Vec<String>,
        /// Access-token signing algorithm.
        #[arg(long, value_name = "EdDSA|ES256|RS256")]
        token_alg: Option<Alg>,
        /// JWK Set file with the client's public keys, for private_key_jwt.
        #[arg(long, value_name = "FILE")]
        jwks_file: Option<PathBuf>,
        /// Read the client secret from standard input instead of generating one (stored with argon2).
        #[arg(long)]
        secret_stdin: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Redirect URI for the authorization code flow (repeatable); registers a code-flow client
        /// (grants authorization_code and refresh_token). A loopback `http://127.0.0.1/...` or
        /// `http://[::1]/...` URI matches on any port.
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// Where RP-initiated logout may return to (repeatable; exact match).
        #[arg(long = "post-logout-redirect-uri", value_name = "URI", requires = "redirect_uris")]
        post_logout_redirect_uris: Vec<String>,
        /// A public client (no secret; PKCE only; token_endpoint_auth_method none); needs
        /// --redirect-uri or --grant device_code.
        #[arg(long)]
        public: bool,
        /// ID-token signing algorithm [default: RS256].
        #[arg(long, value_name = "RS256|ES256|EdDSA", requires = "redirect_uris")]
        id_token_alg: Option<Alg>,
        #[command(flatten)]
        federated: FederatedArgs,
    },
    /// Set a client's degradation policy (for when its upstream identity provider is unavailable).
    Update {
        /// The client id.
        client_id: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Clear the client's policy (the node's `federation` defaults apply).
        #[arg(long, conflicts_with_all = ["on_upstream_unavailable", "max_offline", "degraded_ttl"])]
        clear_policy: bool,
        /// Apply this installed plugin to the client (repeat for several).
        #[arg(long = "plugin", value_name = "NAME")]
        plugins: Vec<String>,
        /// Stop applying this plugin to the client (repeat for several).
        #[arg(long = "remove-plugin", value_name = "NAME")]
        remove_plugins: Vec<String>,
    },
    /// List clients (never secrets).
    List,
    /// Show one client.
    Show {
        /// The client id.
        client_id: String,
    },
    /// Remove a client; its tokens stop introspecting active.
    Remove {
        /// The client id.
        client_id: String,
    },
    /// Issue a new secret; the old one keeps working for the grace period.
    RotateSecret {
        /// The client id.
        client_id: String,
        /// How long the old secret keeps working (e.g. 10m, 1h; 0 = not at all).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum IdCommand {
    /// Rotate the identity key: the pre-committed next key signs from now on, a fresh next key is
    /// committed to; the DID (and so the node's admission) stays.
    Rotate,
}

/// A federated client: its credentials live at an upstream (no local secret is generated).
#[derive(Debug, Args)]
struct FederatedArgs {
    /// The upstream (`upstreams:` entry name) that holds the client's credentials; meshgate
    /// forwards them there and remembers a salted hash of each secret it accepts.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["secret_stdin", "jwks_file"])]
    upstream: Option<String>,
    /// The client's id at the upstream, which is also its id here (agents keep their
    /// credentials).
    #[arg(long = "client-id", value_name = "ID", requires = "upstream")]
    client_id: Option<String>,
    /// `mapped`: a local token carrying the upstream token's mapped claims (default);
    /// `passthrough`: the upstream's token itself.
    #[arg(long, value_name = "mapped|passthrough", requires = "upstream")]
    mode: Option<String>,
}

/// A client's degradation policy on the command line; replicated with the client.
#[derive(Debug, Args)]
struct PolicyArgs {
    /// When its upstream is unavailable: keep issuing (shorter, `degraded` tokens) or answer 503.
    #[arg(long, value_name = "issue_local|fail_closed")]
    on_upstream_unavailable: Option<String>,
    /// How long after the upstream went dark local issuance continues (e.g. 24h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_offline: Option<std::time::Duration>,
    /// Lifetime of tokens minted while the upstream is unavailable (e.g. 2m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    degraded_ttl: Option<std::time::Duration>,
}

impl PolicyArgs {
    fn degradation(self) -> Option<mesh::state::ClientDegradation> {
        if self.on_upstream_unavailable.is_none() && self.max_offline.is_none() && self.degraded_ttl.is_none() {
            return None;
        }
        Some(mesh::state::ClientDegradation {
            on_upstream_unavailable: self.on_upstream_unavailable,
            max_offline_secs: self.max_offline.map(|d| d.as_secs()),
            degraded_ttl_secs: self.degraded_ttl.map(|d| d.as_secs()),
        })
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Replace the signing keys; old keys stay published until their tokens have expired.
    Rotate,
    /// List signing keys.
    List,
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Admit a node (by DID) to the mesh; signed by this node and replicated to every member.
    Admit {
        /// The node's DID (`meshgate id` on that node prints it).
        did: mesh::did::DidKey,
    },
    /// Remove a node from the mesh everywhere: its keys leave every JWKS, its tokens go inactive.
    Remove {
        /// The node's DID.
        did: mesh::did::DidKey,
    },
    /// Members, peers (alive/suspect/dead), the last sync per peer and the document's heads.
    Status,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and name the key path of every problem.
    Check {
        /// The YAML file.
        file: PathBuf,
    },
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let json = cli.json;
    if let Command::Doctor = cli.command {
        let overrides = Overrides {
            data_dir: cli.data_dir.clone(),
            ..Default::default()
        };
        let findings = crate::doctor::run(
            cli.config.as_deref(),
            &ProcessEnvironment,
            &overrides,
            Arc::new(SystemClock),
        );
        let text = crate::doctor::text(&findings);
        let _ = print(json, &crate::doctor::json(&findings), &text);
        let failed = findings.iter().any(|f| f.status == crate::doctor::Status::Fail);
        return i32::from(failed);
    }
    match execute(cli) {
        Ok(()) => 0,
        Err(e) => {
            if json {
                println!("{}", json!({"error": e.to_string()}));
            } else {
                eprintln!("error: {e}");
            }
            1
        }
    }
}

fn execute(cli: Cli) -> Result<(), Error> {
    let env = ProcessEnvironment;
    if let Command::Config(ConfigCommand::Check { file }) = &cli.command {
        config::check(file)?;
        return print(
            cli.json,
            &json!({"valid": true, "file": file}),
            &format!("{}: valid", file.display()),
        );
    }
    if let Command::Protect(args) = cli.command {
        return crate::protect::run(args, cli.data_dir, cli.config, cli.json);
    }
    let overrides = match &cli.command {
        Command::Serve(args) => Overrides {
            data_dir: cli.data_dir.clone(),
            listen: args.listen.clone(),
            metrics_listen: args.metrics_listen.clone(),
            issuer: args.issuer.clone(),
            sync_listen: args.sync_listen.clone(),
            tls_cert: args.tls_cert.clone(),
            tls_key: args.tls_key.clone(),
        },
        _ => Overrides {
            data_dir: cli.data_dir.clone(),
            ..Default::default()
        },
    };
    let mut config = config::load(cli.config.as_deref(), &env, &overrides)?;
    let data_dir = config.data_dir(&env);
    if let Command::Serve(ServeArgs { tls: true, .. }) = &cli.command {
        config.bridge.tls = Some(crate::tls::TlsFiles::generated(&data_dir));
    }
    if let Command::Tls(TlsCommand::Init { sans, days }) = &cli.command {
        return tls_init(&config, &data_dir, sans, *days, cli.json);
    }
    if let Command::Import(command) = &cli.command {
        return import(command, &config, &data_dir, SystemClock.now(), cli.json);
    }
    if let Command::Export { output } = &cli.command {
        return export(output.as_deref(), &config, &data_dir, cli.json);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Command::Upstream(UpstreamCommand::Status) = &cli.command {
        let answer = match admin::call_running(&data_dir, &AdminRequest::UpstreamStatus)? {
            Some(upstreams) => json!({"running": true, "upstreams": upstreams}),
            None => offline_upstream_status(&config, &data_dir, clock)?,
        };
        return print(cli.json, &answer, &upstream_status_text(&answer));
    }
    let request = match cli.command {
        Command::Serve(_) => return serve(&config, data_dir, clock, cli.json),
        Command::Upstream(_) => unreachable!("handled above"),
        Command::Tls(_) => unreachable!("handled above"),
        Command::Import(_) | Command::Export { .. } => unreachable!("handled above"),
        Command::Config(_) => unreachable!("handled above"),
        Command::Protect(_) => unreachable!("handled above"),
        Command::Doctor => unreachable!("handled in run"),
        Command::Audit { since } => AdminRequest::Audit {
            since: since
                .map(|t| crate::audit::parse_since(&t, clock.now()))
                .transpose()
                .map_err(Error::Admin)?,
        },
        Command::Id { command: None } => AdminRequest::Status,
        Command::Id {
            command: Some(IdCommand::Rotate),
        } => AdminRequest::IdRotate,
        Command::Mesh(MeshCommand::Admit { did }) => AdminRequest::MeshAdmit { did },
        Command::Mesh(MeshCommand::Remove { did }) => AdminRequest::MeshRemove { did },
        Command::Mesh(MeshCommand::Status) => AdminRequest::MeshStatus,
        Command::User(command) => AdminRequest::User(user_request(command)?),
        Command::Keys(KeysCommand::Rotate) => AdminRequest::KeysRotate,
        Command::Keys(KeysCommand::List) => AdminRequest::KeysList,
        Command::Client(ClientCommand::List) => AdminRequest::ClientList,
        Command::Client(ClientCommand::Show { client_id }) => AdminRequest::ClientShow { client_id },
        Command::Client(ClientCommand::Remove { client_id }) => AdminRequest::ClientRemove { client_id },
        Command::Client(ClientCommand::RotateSecret { client_id, grace }) => AdminRequest::ClientRotateSecret {
            client_id,
            grace_secs: grace.as_secs(),
        },
        Command::Client(ClientCommand::Add {
            name,
            grants,
            scopes,
            audiences,
            token_alg,
            jwks_file,
            secret_stdin,
            policy,
            redirect_uris,
            post_logout_redirect_uris,
            public,
            id_token_alg,
            ..
        }) if grants.iter().any(|g| is_device_grant(g)) => {
            if grants.iter().any(|g| !is_device_grant(g))
                || jwks_file.is_some()
                || secret_stdin
                || policy.degradation().is_some()
            {
                return Err(Error::Admin(
                    "a --grant device_code client takes no other --grant, --jwks-file, --secret-stdin or policy options"
                        .into(),
                ));
            }
            AdminRequest::User(crate::users::UserRequest::AddDeviceClient {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                scopes,
                audiences,
                public,
                token_alg,
                id_token_alg,
            })
        }
        Command::Client(ClientCommand::Add {
            public: true,
            ref redirect_uris,
            ..
        }) if redirect_uris.is_empty() => {
            return Err(Error::Admin(
                "--public needs --redirect-uri or --grant device_code".into(),
            ));
        }
        Command::Client(ClientCommand::Add {
            name,
            grants,
            scopes,
            audiences,
            token_alg,
            jwks_file,
            secret_stdin,
            policy,
            redirect_uris,
            post_logout_redirect_uris,
            public,
            id_token_alg,
            ..
        }) if !redirect_uris.is_empty() => {
            if !grants.is_empty() || jwks_file.is_some() || secret_stdin || policy.degradation().is_some() {
                return Err(Error::Admin(
                    "a --redirect-uri client takes no --grant, --jwks-file, --secret-stdin or policy options".into(),
                ));
            }
            AdminRequest::User(crate::users::UserRequest::AddCodeClient {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                scopes,
                audiences,
                public,
                token_alg,
                id_token_alg,
            })
        }
        Command::Client(ClientCommand::Add {
            name,
            grants,
            scopes,
            audiences,
            token_alg,
            jwks_file,
            secret_stdin,
            policy,
            federated,
            ..
        }) if federated.upstream.is_some() => {
            let upstream = federated.upstream.unwrap_or_default();
            if !config.upstreams.iter().any(|u| u.name == upstream) {
                return Err(Error::Admin(format!(
                    "no upstream named `{upstream}` in the configuration (give --config FILE with an `upstreams:` entry of that name)"
                )));
            }
            let _ = (jwks_file, secret_stdin);
            AdminRequest::ClientAddFederated {
                name,
                client_id: federated.client_id.ok_or_else(|| {
                    Error::Admin("--upstream needs --client-id: the client's id at the upstream".into())
                })?,
                upstream,
                mode: federated.mode,
                grants,
                scopes,
                audiences,
                token_alg,
                degradation: policy.degradation(),
            }
        }
        Command::Client(ClientCommand::Add {
            name,
            grants,
            scopes,
            audiences,
            token_alg,
            jwks_file,
            secret_stdin,
            policy,
            ..
        }) => {
            let jwks = match jwks_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                        action: format!("read {}", path.display()),
                        source,
                    })?;
                    Some(
                        serde_json::from_str(&text)
                            .map_err(|e| Error::Admin(format!("{}: not JSON: {e}", path.display())))?,
                    )
                }
                None => None,
            };
            let secret = if secret_stdin {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map_err(|source| Error::Io {
                    action: "read the secret from stdin".into(),
                    source,
                })?;
                Some(s.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            AdminRequest::ClientAdd {
                name,
                grants,
                scopes,
                audiences,
                token_alg,
                jwks,
                secret,
                degradation: policy.degradation(),
            }
        }
        Command::Plugin(command) => match crate::plugin_cli::prepare(command, &data_dir)? {
            Ok(request) => request,
            Err(answer) => return print(cli.json, &answer, &human(&answer)),
        },
        Command::Client(ClientCommand::Update {
            client_id,
            policy,
            clear_policy,
            plugins,
            remove_plugins,
        }) if !plugins.is_empty() || !remove_plugins.is_empty() => {
            if policy.degradation().is_some() || clear_policy {
                return Err(Error::Admin(
                    "give --plugin/--remove-plugin and the policy flags in separate `client update` calls".into(),
                ));
            }
            AdminRequest::PluginBind {
                client_id,
                add: plugins,
                remove: remove_plugins,
            }
        }
        Command::Client(ClientCommand::Update {
            client_id,
            policy,
            clear_policy,
            ..
        }) => {
            let degradation = policy.degradation();
            if degradation.is_none() && !clear_policy {
                return Err(Error::Admin(
                    "nothing to update: give --on-upstream-unavailable, --max-offline, --degraded-ttl or --clear-policy"
                        .into(),
                ));
            }
            AdminRequest::ClientSetPolicy { client_id, degradation }
        }
    };
    let default_alg = config.bridge.token_alg;
    let trusted = config.node.sync.trusted_peers.clone();
    let answer = admin::call(&data_dir, &request, || {
        Node::open(&data_dir, clock.clone(), default_alg, trusted.clone())
    })?;
    let answer = match request {
        AdminRequest::Status => json!({"did": answer["did"]}),
        _ => answer,
    };
    let text = match request {
        AdminRequest::MeshStatus => mesh_status_text(&answer),
        AdminRequest::Audit { .. } => crate::audit::text(&answer),
        AdminRequest::PluginList => crate::plugin_cli::list_text(&answer),
        _ => human(&answer),
    };
    print(cli.json, &answer, &text)
}

fn user_request(command: UserCommand) -> Result<crate::users::UserRequest, Error> {
    use crate::users::UserRequest;
    Ok(match command {
        UserCommand::Add {
            username,
            name,
            email,
            password_stdin,
        } => UserRequest::Add {
            username,
            password: read_password(password_stdin)?,
            name,
            email,
        },
        UserCommand::List => UserRequest::List,
        UserCommand::Remove { username } => UserRequest::Remove { username },
        UserCommand::Passwd {
            username,
            password_stdin,
        } => UserRequest::Passwd {
            username,
            password: read_password(password_stdin)?,
        },
        UserCommand::Consents { username } => UserRequest::Consents { username },
        UserCommand::RevokeConsent { username, client_id } => UserRequest::RevokeConsent { username, client_id },
        UserCommand::Link {
            upstream,
            subject,
            name,
            email,
        } => UserRequest::Link {
            upstream,
            subject,
            name,
            email,
        },
    })
}

/// The password from standard input (its first line), with `--password-stdin`: passwords never go
/// on the command line, where other users can read them.
fn read_password(stdin: bool) -> Result<String, Error> {
    if !stdin {
        return Err(Error::Admin(
            "give the password on standard input with --password-stdin (e.g. from a password manager)".into(),
        ));
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|source| Error::Io {
        action: "read the password from stdin".into(),
        source,
    })?;
    let password = s.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        return Err(Error::Admin("the password is empty".into()));
    }
    Ok(password)
}

fn mesh_status_text(status: &Value) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "node:    {}\nmembers: {}\nheads:   {}\n",
        str_of(&status["did"]),
        status["members"].as_array().map_or(0, Vec::len),
        status["heads"]
            .as_array()
            .map_or(String::new(), |h| h.iter().map(str_of).collect::<Vec<_>>().join(" "))
    );
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        out.push_str("peers:   (none)");
        return out;
    }
    out.push_str(&format!(
        "{:<58} {:<8} {:<10} {}",
        "PEER", "STATE", "LAST SYNC", "ADDRESS"
    ));
    for peer in peers {
        let last = peer["last_sync_secs_ago"]
            .as_u64()
            .map_or("-".to_owned(), |s| format!("{s}s ago"));
        out.push_str(&format!(
            "\n{:<58} {:<8} {:<10} {}",
            str_of(&peer["did"]),
            str_of(&peer["state"]),
            last,
            str_of(&peer["addr"])
        ));
    }
    out
}

/// Upstream status without a running server: what the JWKS disk caches hold; the breakers live
/// only in a running server (`breaker: null`).
fn offline_upstream_status(config: &Config, data_dir: &std::path::Path, clock: Arc<dyn Clock>) -> Result<Value, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            action: "start the runtime".into(),
            source,
        })?;
    let _entered = runtime.enter();
    let now = clock.now();
    let upstreams = crate::upstream::Upstreams::build(&config.upstreams, Some(data_dir), clock)?;
    let mut list = serde_json::to_value(upstreams.status(now, config.federation.jwks_fresh_for))
        .map_err(|e| Error::Admin(e.to_string()))?;
    for entry in list.as_array_mut().into_iter().flatten() {
        entry["breaker"] = Value::Null;
        entry["available"] = Value::Null;
    }
    Ok(json!({"running": false, "upstreams": list}))
}

fn upstream_status_text(status: &Value) -> String {
    let upstreams = status["upstreams"].as_array().cloned().unwrap_or_default();
    if upstreams.is_empty() {
        return "no upstreams configured".into();
    }
    let mut out = String::new();
    if status["running"] != true {
        out.push_str("meshgate is not running: breaker states are unknown; JWKS from the disk cache\n");
    }
    out.push_str(&format!(
        "{:<12} {:<10} {:<8} {:<20} {:<16} {:<10} {}",
        "UPSTREAM", "BREAKER", "FAILURES", "OPEN SINCE", "JWKS AGE", "AVAILABLE", "ISSUER"
    ));
    for upstream in upstreams {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let breaker = &upstream["breaker"];
        let jwks = &upstream["jwks"];
        let age = match jwks["age_secs"].as_u64() {
            None => "none".to_owned(),
            Some(age) => {
                let note = if jwks["usable"] == false {
                    " (too stale)"
                } else if jwks["fresh"] == false {
                    " (stale)"
                } else {
                    ""
                };
                format!("{age}s{note}")
            }
        };
        let opened = breaker["opened_at"]
            .as_u64()
            .map_or("-".to_owned(), |at| at.to_string());
        out.push_str(&format!(
            "\n{:<12} {:<10} {:<8} {:<20} {:<16} {:<10} {}",
            text(&upstream["name"]),
            text(&breaker["state"]),
            text(&breaker["consecutive_failures"]),
            opened,
            age,
            text(&upstream["available"]),
            text(&upstream["issuer"]),
        ));
        if let Some(error) = upstream["last_refresh_error"]["error"].as_str() {
            out.push_str(&format!("\n  last refresh error: {error}"));
        }
    }
    out
}

fn serve(config: &Config, data_dir: PathBuf, clock: Arc<dyn Clock>, json: bool) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            action: "start the runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let running = crate::serve::start(config, &data_dir, clock).await?;
        let description = running.describe();
        let text = format!(
            "meshgate serving\n  issuer:   {}\n  node:     {}\n  metrics:  http://{}/metrics\n  mesh:     {}\n  data dir: {}",
            running.issuer,
            running.did,
            running.metrics_listen,
            running.sync_listen,
            running.data_dir.display()
        );
        // Listen before telling anyone we serve: a SIGTERM right after the line must stop us cleanly.
        let stop = crate::serve::signals();
        print(json, &description, &text)?;
        stop.await;
        tracing::info!("shutting down");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn admin_call(config: &Config, data_dir: &std::path::Path, request: &AdminRequest) -> Result<Value, Error> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (alg, trusted) = (config.bridge.token_alg, config.node.sync.trusted_peers.clone());
    admin::call(data_dir, request, || {
        Node::open(data_dir, clock.clone(), alg, trusted.clone())
    })
}

fn import(
    command: &ImportCommand,
    config: &Config,
    data_dir: &std::path::Path,
    now: u64,
    json: bool,
) -> Result<(), Error> {
    use crate::import::{self, Source};
    if let ImportCommand::Jwks { source, until, issuer } = command {
        let until = parse_until(until, now)?;
        let jwks = crate::legacy::fetch(source)?;
        let request = AdminRequest::ImportJwks {
            jwks,
            issuer: issuer.clone(),
            until,
        };
        let answer = admin_call(config, data_dir, &request)?;
        let text = format!(
            "published until {until} (Unix time) for issuer {issuer}: {}",
            answer["kids"]
                .as_array()
                .map(|k| k.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
        return print(json, &answer, &text);
    }
    let (source, file, options) = match command {
        ImportCommand::Jwks { .. } => unreachable!("handled above"),
        ImportCommand::Keycloak { file, options } => (Source::Keycloak, file, options),
        ImportCommand::Hydra { file, options } => (Source::Hydra, file, options),
        ImportCommand::OidcProvider { file, options } => (Source::OidcProvider, file, options),
        ImportCommand::Meshgate { file, options } => (Source::Meshgate, file, options),
    };
    let text = import::read_file(file)?;
    let parsed = import::parse(source, &text).map_err(|e| Error::Admin(format!("{}: {e}", file.display())))?;
    let secrets = match &options.secrets {
        Some(path) => import::read_secrets(path)?,
        None => Default::default(),
    };
    let planned = import::plan(&parsed, &secrets, config.bridge.token_alg, now, options.dry_run)?;
    // In batches: one admin request stays far below the socket's request limit.
    let mut imported: Vec<String> = Vec::new();
    let mut skipped: Vec<Value> = Vec::new();
    for batch in planned.records.chunks(100) {
        let request = AdminRequest::ClientImport {
            records: batch.to_vec(),
            dry_run: options.dry_run,
            replace: options.replace,
        };
        let answer = admin_call(config, data_dir, &request)?;
        imported.extend(
            answer["imported"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned)),
        );
        skipped.extend(answer["skipped"].as_array().cloned().unwrap_or_default());
    }
    let mut answer = json!({"imported": imported, "dry_run": options.dry_run});
    for (client_id, reason) in &parsed.skipped {
        skipped.push(json!({"client_id": client_id, "reason": reason}));
    }
    // A generated secret is shown only for a client that was really imported.
    let rotated: Vec<&import::Rotated> = planned
        .rotated
        .iter()
        .filter(|r| imported.contains(&r.client_id))
        .collect();
    let users = import::import_users_into_user_store(&parsed.users, options.dry_run, |request| {
        admin_call(config, data_dir, &AdminRequest::User(request))
    })?;
    answer["source"] = json!(parsed.source);
    answer["skipped"] = Value::Array(skipped);
    answer["rotated"] = json!(rotated);
    answer["unmapped"] = json!(planned.unmapped);
    answer["methods"] = json!(planned.methods);
    answer["users"] = json!(users);
    print(json, &answer, &import::report_text(&answer))
}

/// `--until`: an RFC 3339 time or a duration from `now`, as Unix seconds.
fn parse_until(text: &str, now: u64) -> Result<u64, Error> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(now.saturating_add(duration.as_secs()));
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
        Error::Admin(format!(
            "--until `{text}`: neither a duration (24h) nor an RFC 3339 time: {e}"
        ))
    })?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| Error::Admin(format!("--until `{text}` is before 1970")))
}

fn export(
    output: Option<&std::path::Path>,
    config: &Config,
    data_dir: &std::path::Path,
    json: bool,
) -> Result<(), Error> {
    let export = admin_call(config, data_dir, &AdminRequest::Export)?;
    let text = serde_json::to_string_pretty(&export).map_err(|e| Error::Admin(e.to_string()))?;
    let Some(path) = output else {
        return print(false, &export, &text);
    };
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| Error::Io {
                action: format!("create {}", path.display()),
                source,
            })?;
        file.write_all(text.as_bytes()).map_err(|source| Error::Io {
            action: format!("write {}", path.display()),
            source,
        })?;
    }
    let clients = export["clients"].as_array().map_or(0, Vec::len);
    let summary = json!({"file": path, "clients": clients, "omitted": export["omitted"]});
    print(
        json,
        &summary,
        &format!("{clients} clients written to {}", path.display()),
    )
}

fn tls_init(config: &Config, data_dir: &std::path::Path, sans: &[String], days: u32, json: bool) -> Result<(), Error> {
    let mut names = sans.to_vec();
    if let Some(host) = config
        .bridge
        .issuer
        .as_ref()
        .and_then(|issuer| url::Url::parse(issuer.as_str()).ok())
        .and_then(|url| url.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
    {
        names.push(host);
    }
    let done = crate::tls::init(data_dir, &names, days)?;
    let value = serde_json::to_value(&done).map_err(|e| Error::Admin(e.to_string()))?;
    let text = format!(
        "{} CA:      {}\nserver certificate: {} (names: {})\nserver key:         {}\n\nTrust the CA in clients (e.g. NODE_EXTRA_CA_CERTS={} or SSL_CERT_FILE), then run `meshgate serve --tls`.",
        if done.new_ca { "created" } else { "reused " },
        done.ca_cert.display(),
        done.cert.display(),
        done.names.join(", "),
        done.key.display(),
        done.ca_cert.display(),
    );
    print(json, &value, &text)
}

fn print(json: bool, value: &Value, text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let line = if json { value.to_string() } else { text.to_owned() };
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            action: "write to stdout".into(),
            source,
        })
}

fn human(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(items) if items.is_empty() => "(none)".into(),
        Value::Array(items) => items
            .iter()
            .map(|i| human(i).replace('\n', "  "))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

impl Cli {
    /// Whether the command is `serve`.
    pub fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve(_) | Command::Protect(_))
    }
}

/// Whether `grant` names the device flow (RFC 8628): the grant type URI or `device_code`.
fn is_device_grant(grant: &str) -> bool {
    matches!(grant, "device_code" | "device-code" | crate::http::device::DEVICE_CODE)
}
