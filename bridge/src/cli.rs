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
    /// Signed WebAssembly plugins: developer keys, build, sign, trust, install, list, remove.
    #[command(subcommand)]
    Plugin(crate::plugin_cli::PluginCommand),
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
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client and print its id and secret (the secret is shown only this once).
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Grant type the client may use (repeatable): `client_credentials`,
        /// `urn:ietf:params:oauth:grant-type:token-exchange` (alias `token-exchange`); none =
        /// introspection/revocation only.
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
    let overrides = match &cli.command {
        Command::Serve(args) => Overrides {
            data_dir: cli.data_dir.clone(),
            listen: args.listen.clone(),
            metrics_listen: args.metrics_listen.clone(),
            issuer: args.issuer.clone(),
            sync_listen: args.sync_listen.clone(),
        },
        _ => Overrides {
            data_dir: cli.data_dir.clone(),
            ..Default::default()
        },
    };
    let config = config::load(cli.config.as_deref(), &env, &overrides)?;
    let data_dir = config.data_dir(&env);
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
        Command::Config(_) => unreachable!("handled above"),
        Command::Id { command: None } => AdminRequest::Status,
        Command::Id {
            command: Some(IdCommand::Rotate),
        } => AdminRequest::IdRotate,
        Command::Mesh(MeshCommand::Admit { did }) => AdminRequest::MeshAdmit { did },
        Command::Mesh(MeshCommand::Remove { did }) => AdminRequest::MeshRemove { did },
        Command::Mesh(MeshCommand::Status) => AdminRequest::MeshStatus,
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
        AdminRequest::PluginList => crate::plugin_cli::list_text(&answer),
        _ => human(&answer),
    };
    print(cli.json, &answer, &text)
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
        let stop = crate::serve::signal();
        let description = running.describe();
        let text = format!(
            "meshgate serving\n  issuer:   {}\n  node:     {}\n  metrics:  http://{}/metrics\n  mesh:     {}\n  data dir: {}",
            running.issuer,
            running.did,
            running.metrics_listen,
            running.sync_listen,
            running.data_dir.display()
        );
        print(json, &description, &text)?;
        stop.await;
        tracing::info!("shutting down");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
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
        matches!(self.command, Command::Serve(_))
    }
}
