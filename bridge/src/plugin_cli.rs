//! `meshgate plugin …`: developer keys, building and signing modules (local files only), and the
//! node commands (trust, install, list, remove) that go through the admin channel; plus what the
//! node does for those commands ([`execute`]).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use mesh::did::DidKey;
use mesh::plugin::{PluginManifest, PluginRecord, PluginTrust};
use mesh::state::Change;
use serde_json::{Value, json};

use crate::error::Error;
use crate::node::{AdminRequest, Node};
use crate::plugin_host::{module_dir, store_module};

/// `meshgate plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a developer signing key (ed25519, file mode 0600) and print its did:key.
    Keygen {
        /// Where to write the key.
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
    },
    /// Compile a WebAssembly text module (.wat) to a binary module, reproducibly.
    Build {
        /// The .wat file.
        source: PathBuf,
        /// The .wasm file to write.
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a module: writes the manifest MODULE.manifest.json beside MODULE.wasm.
    Sign {
        /// The module (.wasm).
        module: PathBuf,
        /// The developer key file (from `plugin keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The plugin's name (a-z 0-9 - _).
        #[arg(long)]
        name: String,
        /// The plugin's version (`--version` is meshgate's own).
        #[arg(long = "plugin-version", value_name = "VERSION", default_value = "0.1.0")]
        plugin_version: String,
        /// A hook the module implements (repeat): on_token_request, map_upstream_claims, on_introspect.
        #[arg(long = "hook", required = true, value_name = "HOOK")]
        hooks: Vec<String>,
        /// Let requests through unchanged when the plugin fails (default: deny them).
        #[arg(long)]
        fail_open: bool,
    },
    /// Trust a developer key: plugins it signs may be installed and run on every node.
    Trust {
        /// The developer's did:key.
        did: DidKey,
    },
    /// Stop trusting a developer key: its plugins stop running on every node.
    Untrust {
        /// The developer's did:key.
        did: DidKey,
    },
    /// Install a signed module (MODULE.manifest.json beside it); replaces a plugin of the same name.
    Install {
        /// The module (.wasm).
        module: PathBuf,
        /// Apply it to every client (otherwise to those named with `client update --plugin`).
        #[arg(long)]
        all_clients: bool,
    },
    /// List installed plugins and trusted signers.
    List,
    /// Remove a plugin from every node.
    Remove {
        /// The plugin's name.
        name: String,
    },
}

/// The manifest path of a module: `dir/name.wasm` → `dir/name.manifest.json`.
pub fn manifest_path(module: &Path) -> PathBuf {
    module.with_extension("manifest.json")
}

/// Runs a local command and returns its answer, or turns a node command into its admin request.
pub fn prepare(command: PluginCommand, data_dir: &Path) -> Result<Result<AdminRequest, Value>, Error> {
    Ok(match command {
        PluginCommand::Keygen { out } => Err(keygen(&out)?),
        PluginCommand::Build { source, out } => {
            let bytes = plugins::build(&read(&source)?).map_err(|e| Error::Admin(e.to_string()))?;
            write(&out, &bytes)?;
            Err(json!({"module": out, "sha256": plugins::digest::sha256_hex(&bytes)}))
        }
        PluginCommand::Sign {
            module,
            key,
            name,
            plugin_version,
            hooks,
            fail_open,
        } => {
            let key = load_key(&key)?;
            let bytes = read(&module)?;
            let manifest = PluginManifest::sign(
                &key,
                name,
                plugin_version,
                hooks,
                plugins::digest::sha256_hex(&bytes),
                fail_open,
            )?;
            let path = manifest_path(&module);
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Admin(e.to_string()))?;
            write(&path, &text)?;
            Err(json!({"manifest": path, "name": manifest.name, "sha256": manifest.sha256, "signer": manifest.signer}))
        }
        PluginCommand::Trust { did } => Ok(AdminRequest::PluginTrust {
            signer: did,
            trusted: true,
        }),
        PluginCommand::Untrust { did } => Ok(AdminRequest::PluginTrust {
            signer: did,
            trusted: false,
        }),
        PluginCommand::Install { module, all_clients } => {
            let bytes = read(&module)?;
            let path = manifest_path(&module);
            let manifest: PluginManifest = serde_json::from_slice(&read(&path)?)
                .map_err(|e| Error::Admin(format!("{}: not a plugin manifest: {e}", path.display())))?;
            manifest
                .verify()
                .map_err(|e| Error::Admin(format!("{}: refused: {e}", path.display())))?;
            let digest = plugins::digest::sha256_hex(&bytes);
            if digest != manifest.sha256 {
                return Err(Error::Admin(format!(
                    "{}: refused: its SHA-256 {digest} does not match the manifest's {} (tampered, or signed before a rebuild)",
                    module.display(),
                    manifest.sha256
                )));
            }
            store_module(&module_dir(data_dir), &digest, &bytes).map_err(|source| Error::Io {
                action: format!("store the module in {}", module_dir(data_dir).display()),
                source,
            })?;
            Ok(AdminRequest::PluginInstall { manifest, all_clients })
        }
        PluginCommand::List => Ok(AdminRequest::PluginList),
        PluginCommand::Remove { name } => Ok(AdminRequest::PluginRemove { name }),
    })
}

/// Executes a plugin admin request on the node: the answer and the changes to apply.
pub fn execute(node: &Node, request: AdminRequest, now: u64) -> Result<(Value, Vec<Change>), Error> {
    let state = node.state();
    let me = node.did();
    let identity = node.identity();
    let record = |name: &str| {
        state
            .plugins
            .get(name)
            .filter(|r| !r.removed)
            .ok_or_else(|| Error::Admin(format!("no plugin named `{name}` is installed")))
    };
    Ok(match request {
        AdminRequest::PluginTrust { signer, trusted } => {
            let trust = PluginTrust::sign(&identity, signer, trusted, now);
            (
                json!({"signer": signer, "trusted": trusted}),
                vec![Change::TrustPluginSigner(trust)],
            )
        }
        AdminRequest::PluginInstall { manifest, all_clients } => {
            manifest.verify()?;
            if !state
                .trusted_plugin_signers(&me, node.trusted_peers())
                .contains(&manifest.signer)
            {
                return Err(Error::Admin(format!(
                    "plugin `{}` is signed by {}, which is not trusted; run `meshgate plugin trust {}` first",
                    manifest.name, manifest.signer, manifest.signer
                )));
            }
            let path = module_dir(node.data_dir()).join(format!("{}.wasm", manifest.sha256));
            let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                action: format!("read {}", path.display()),
                source,
            })?;
            if plugins::digest::sha256_hex(&bytes) != manifest.sha256 {
                return Err(Error::Admin(format!("{}: does not match its digest", path.display())));
            }
            let (previous_all, clients) = match state.plugins.get(&manifest.name).filter(|r| !r.removed) {
                Some(previous) => (previous.all_clients, previous.clients.clone()),
                None => (false, Vec::new()),
            };
            let answer = json!({"installed": manifest.name, "version": manifest.version, "sha256": manifest.sha256,
                                "all_clients": all_clients || previous_all});
            let record = PluginRecord::sign(&identity, manifest, all_clients || previous_all, clients, false, now);
            (answer, vec![Change::PutPlugin(record)])
        }
        AdminRequest::PluginRemove { name } => {
            let previous = record(&name)?.clone();
            let tombstone = PluginRecord::sign(&identity, previous.manifest, false, vec![], true, now);
            (json!({"removed": name}), vec![Change::PutPlugin(tombstone)])
        }
        AdminRequest::PluginBind { client_id, add, remove } => {
            if !state.clients.contains_key(&client_id) {
                return Err(Error::Admin(format!("no client `{client_id}`")));
            }
            let mut changes = Vec::new();
            for (name, bind) in add.iter().map(|n| (n, true)).chain(remove.iter().map(|n| (n, false))) {
                let previous = record(name)?;
                let mut clients = previous.clients.clone();
                clients.retain(|c| *c != client_id);
                if bind {
                    clients.push(client_id.clone());
                }
                changes.push(Change::PutPlugin(PluginRecord::sign(
                    &identity,
                    previous.manifest.clone(),
                    previous.all_clients,
                    clients,
                    false,
                    now,
                )));
            }
            (
                json!({"client_id": client_id, "plugins_added": add, "plugins_removed": remove}),
                changes,
            )
        }
        AdminRequest::PluginList => {
            let trusted = state.trusted_plugin_signers(&me, node.trusted_peers());
            let plugins: Vec<Value> = state
                .plugins
                .values()
                .filter(|r| !r.removed)
                .map(|r| {
                    let m = &r.manifest;
                    let present = std::fs::read(module_dir(node.data_dir()).join(format!("{}.wasm", m.sha256)))
                        .is_ok_and(|b| plugins::digest::sha256_hex(&b) == m.sha256);
                    json!({"name": m.name, "version": m.version, "hooks": m.hooks, "sha256": m.sha256,
                           "signer": m.signer, "signer_trusted": trusted.contains(&m.signer),
                           "module_present": present, "fail_open": m.fail_open,
                           "all_clients": r.all_clients, "clients": r.clients})
                })
                .collect();
            (json!({"plugins": plugins, "trusted_signers": trusted}), vec![])
        }
        _ => return Err(Error::Admin("not a plugin command".into())),
    })
}

/// Text for `plugin list`.
pub fn list_text(answer: &Value) -> String {
    let mut out = String::new();
    let plugins = answer["plugins"].as_array().cloned().unwrap_or_default();
    if plugins.is_empty() {
        out.push_str("no plugins installed\n");
    }
    for p in plugins {
        let applies = if p["all_clients"] == true {
            "all clients".to_owned()
        } else {
            format!("clients: {}", p["clients"])
        };
        let status = p["status"].as_str().map(str::to_owned).unwrap_or_else(|| {
            if p["signer_trusted"] == true {
                "trusted".into()
            } else {
                "signer NOT trusted".into()
            }
        });
        out.push_str(&format!(
            "{} {} [{}] {} — {}\n  sha256 {}\n  signer {}\n",
            p["name"].as_str().unwrap_or("-"),
            p["version"].as_str().unwrap_or("-"),
            p["hooks"].as_array().map_or(String::new(), |h| h
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")),
            applies,
            status,
            p["sha256"].as_str().unwrap_or("-"),
            p["signer"].as_str().unwrap_or("-"),
        ));
    }
    out.push_str("trusted signers:");
    for signer in answer["trusted_signers"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!("\n  {}", signer.as_str().unwrap_or("-")));
    }
    out
}

fn keygen(out: &Path) -> Result<Value, Error> {
    let key = mesh::plugin::generate_developer_key();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|source| Error::Io {
            action: format!("create {} (an existing key is never overwritten)", out.display()),
            source,
        })?;
    file.write_all(format!("{}\n", URL_SAFE_NO_PAD.encode(key.to_bytes())).as_bytes())
        .map_err(|source| Error::Io {
            action: format!("write {}", out.display()),
            source,
        })?;
    let did = DidKey::from_public_key(key.verifying_key().to_bytes());
    Ok(json!({"key": out, "did": did}))
}

fn load_key(path: &Path) -> Result<SigningKey, Error> {
    let metadata = std::fs::metadata(path).map_err(|source| Error::Io {
        action: format!("read {}", path.display()),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Admin(format!(
            "developer key {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = String::from_utf8(read(path)?).unwrap_or_default();
    let seed: [u8; 32] = URL_SAFE_NO_PAD
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::Admin(format!(
                "{} is not a developer key (from `meshgate plugin keygen`)",
                path.display()
            ))
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        action: format!("read {}", path.display()),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        action: format!("write {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_consistent_and_parses_plugin_commands() {
        crate::cli::Cli::command().debug_assert();
        crate::cli::Cli::try_parse_from([
            "meshgate",
            "plugin",
            "sign",
            "m.wasm",
            "--key",
            "k",
            "--name",
            "n",
            "--plugin-version",
            "2",
            "--hook",
            "on_token_request",
        ])
        .unwrap();
        assert_eq!(
            manifest_path(Path::new("/x/after-hours.wasm")),
            Path::new("/x/after-hours.manifest.json")
        );
    }

    #[test]
    fn developer_keys_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.key");
        let answer = keygen(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let key = load_key(&path).unwrap();
        assert_eq!(
            answer["did"],
            DidKey::from_public_key(key.verifying_key().to_bytes()).to_string()
        );
        assert!(keygen(&path).is_err(), "an existing key is overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_key(&path).unwrap_err().to_string().contains("chmod 600"));
    }
}
