//! Signed WebAssembly plugins against real `meshgate serve` processes, driven as a new user would:
//! `plugin build` (the example's WAT), `plugin keygen`, `plugin sign`, `plugin trust`,
//! `plugin install`, `client update --plugin`; tokens from the `oauth2` crate. Unsigned, tampered
//! and untrusted modules are refused; a runaway plugin is stopped with a clear OAuth error; a
//! signer untrusted on one node is refused on every node; a plugin swapped under load fails no
//! request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use adapters::http::{HttpClient, HttpConfig};
use compat_tests::{Meshgate, Registered, cli, meshgate_bin, workspace_root};
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use reqwest::StatusCode;
use serde_json::Value;

use super::mesh::{Mesh, eventually};
use super::support::{self, Jwt, basic, form, post_form};

/// Runs `meshgate ARGS` expecting failure; returns its stderr and stdout.
fn cli_fails(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(meshgate_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        !output.status.success(),
        "`meshgate {}` succeeded: {text}",
        args.join(" ")
    );
    text
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A developer: a key file and its DID.
struct Developer {
    key: PathBuf,
    did: String,
}

fn keygen(dir: &Path, data: &Path, name: &str) -> Developer {
    let key = dir.join(format!("{name}.key"));
    let out = json(&cli(
        data,
        &["plugin", "keygen", "--out", key.to_str().unwrap(), "--json"],
    ));
    Developer {
        key,
        did: out["did"].as_str().unwrap().to_owned(),
    }
}

/// Builds `source` (WAT) with `meshgate plugin build` and signs it; returns the module path.
fn build_and_sign(
    dir: &Path,
    data: &Path,
    source: &Path,
    developer: &Developer,
    name: &str,
    version: &str,
    hook: &str,
) -> PathBuf {
    let module = dir.join(format!("{name}-{version}.wasm"));
    cli(
        data,
        &[
            "plugin",
            "build",
            source.to_str().unwrap(),
            "--out",
            module.to_str().unwrap(),
            "--json",
        ],
    );
    cli(
        data,
        &[
            "plugin",
            "sign",
            module.to_str().unwrap(),
            "--key",
            developer.key.to_str().unwrap(),
            "--name",
            name,
            "--plugin-version",
            version,
            "--hook",
            hook,
            "--json",
        ],
    );
    module
}

/// A WAT plugin whose `on_token_request` runs `body`, then answers `answer`.
fn constant_plugin(dir: &Path, file: &str, body: &str, answer: &str) -> PathBuf {
    let escaped = answer.replace('"', "\\\"");
    let wat = format!(
        r#"(module
          (memory (export "memory") 1)
          (data (i32.const 0) "{escaped}")
          (func (export "alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "on_token_request") (param i32 i32) (result i64)
            {body}
            (i64.const {len})))"#,
        len = answer.len()
    );
    let path = dir.join(file);
    std::fs::write(&path, wat).unwrap();
    path
}

fn http() -> HttpClient {
    HttpClient::new(&HttpConfig {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    })
    .unwrap()
}

async fn token_answer(server: &Meshgate, client: &Registered, scope: &str) -> support::Answer {
    post_form(
        &server.url("/token"),
        Some(&basic(&client.client_id, &client.client_secret)),
        form(&[("grant_type", "client_credentials"), ("scope", scope)]),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_plugin_shapes_tokens_and_bad_ones_are_refused_or_stopped() {
    let dir = support::temp_dir();
    let data = dir.path().join("node");
    let server = Meshgate::spawn(&data);
    let developer = keygen(dir.path(), &data, "dev");
    let example = workspace_root().join("examples/plugins/read_only_after_hours.wat");
    let module = build_and_sign(
        dir.path(),
        &data,
        &example,
        &developer,
        "after-hours",
        "1.0.0",
        "on_token_request",
    );

    // Not trusted yet: refused with the command to run.
    let refused = cli_fails(&data, &["plugin", "install", module.to_str().unwrap(), "--all-clients"]);
    assert!(
        refused.contains("not trusted") && refused.contains(&developer.did),
        "{refused}"
    );
    cli(&data, &["plugin", "trust", &developer.did]);

    // Tampered bytes: refused before anything runs.
    let tampered = dir.path().join("tampered.wasm");
    let mut bytes = std::fs::read(&module).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&tampered, &bytes).unwrap();
    std::fs::copy(
        module.with_extension("manifest.json"),
        tampered.with_extension("manifest.json"),
    )
    .unwrap();
    let refused = cli_fails(&data, &["plugin", "install", tampered.to_str().unwrap()]);
    assert!(refused.contains("does not match the manifest"), "{refused}");
    // Unsigned (no manifest): refused.
    let unsigned = dir.path().join("unsigned.wasm");
    std::fs::write(&unsigned, std::fs::read(&module).unwrap()).unwrap();
    let refused = cli_fails(&data, &["plugin", "install", unsigned.to_str().unwrap()]);
    assert!(refused.contains("unsigned.manifest.json"), "{refused}");
    // Signed by another key: the manifest's signature does not verify.
    let mut forged: Value =
        serde_json::from_str(&std::fs::read_to_string(module.with_extension("manifest.json")).unwrap()).unwrap();
    forged["signer"] = Value::String(keygen(dir.path(), &data, "mallory").did);
    let forged_module = dir.path().join("forged.wasm");
    std::fs::copy(&module, &forged_module).unwrap();
    std::fs::write(forged_module.with_extension("manifest.json"), forged.to_string()).unwrap();
    let refused = cli_fails(&data, &["plugin", "install", forged_module.to_str().unwrap()]);
    assert!(refused.contains("signature"), "{refused}");

    cli(&data, &["plugin", "install", module.to_str().unwrap(), "--all-clients"]);
    let client = server.client_add("shaped", "orders:read orders:write");
    let oauth = BasicClient::new(ClientId::new(client.client_id.clone()))
        .set_client_secret(ClientSecret::new(client.client_secret.clone()))
        .set_token_uri(TokenUrl::new(server.url("/token")).unwrap());
    let http = http();
    let request = || async {
        let token = oauth
            .exchange_client_credentials()
            .add_scope(Scope::new("orders:read".into()))
            .add_scope(Scope::new("orders:write".into()))
            .request_async(&http)
            .await
            .unwrap_or_else(|e| panic!("oauth2 client_credentials: {e:?}"));
        Jwt::parse(token.access_token().secret()).payload
    };
    eventually("the plugin shapes tokens", || async {
        request().await.get("shift").is_some()
    })
    .await;
    let payload = request().await;
    match payload["shift"].as_str() {
        Some("day") => assert_eq!(payload["scope"], "orders:read orders:write"),
        Some("night") => assert_eq!(payload["scope"], "orders:read"),
        other => panic!("shift claim {other:?}"),
    }
    let list = cli(&data, &["plugin", "list"]);
    assert!(list.contains("after-hours 1.0.0") && list.contains("loaded"), "{list}");

    // A runaway plugin, bound to one client only, is stopped at its deadline: access_denied.
    let spin = constant_plugin(
        dir.path(),
        "spin.wat",
        "(loop $forever (br $forever))",
        r#"{"decision":"allow"}"#,
    );
    let spin = build_and_sign(dir.path(), &data, &spin, &developer, "spin", "1", "on_token_request");
    cli(&data, &["plugin", "install", spin.to_str().unwrap()]);
    let victim = server.client_add("victim", "orders:read");
    cli(&data, &["client", "update", &victim.client_id, "--plugin", "spin"]);
    eventually("the runaway plugin denies", || async {
        token_answer(&server, &victim, "orders:read").await.status == StatusCode::BAD_REQUEST
    })
    .await;
    let answer = token_answer(&server, &victim, "orders:read").await;
    assert!(
        answer.oauth_error_mismatch(400, "access_denied").is_none(),
        "{}",
        answer.text
    );
    assert!(answer.text.contains("plugin `spin` failed"), "{}", answer.text);
    // Other clients are unaffected.
    assert_eq!(
        token_answer(&server, &client, "orders:read").await.status,
        StatusCode::OK
    );
    // A memory bomb and a huge answer are stopped the same way.
    let bomb = constant_plugin(
        dir.path(),
        "bomb.wat",
        "(block $full (loop $grow (br_if $full (i32.eq (memory.grow (i32.const 256)) (i32.const -1))) (br $grow))) unreachable",
        r#"{"decision":"allow"}"#,
    );
    let bomb = build_and_sign(dir.path(), &data, &bomb, &developer, "bomb", "1", "on_token_request");
    cli(&data, &["plugin", "install", bomb.to_str().unwrap()]);
    cli(
        &data,
        &[
            "client",
            "update",
            &victim.client_id,
            "--remove-plugin",
            "spin",
            "--plugin",
            "bomb",
        ],
    );
    eventually("the memory bomb denies", || async {
        let answer = token_answer(&server, &victim, "orders:read").await;
        answer.text.contains("plugin `bomb` failed")
    })
    .await;
    let log = server.output();
    assert!(log.contains("ran past its deadline"), "no deadline log line");
    assert!(log.contains("exceeded its memory cap"), "no memory cap log line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusting_a_signer_on_one_node_refuses_its_plugin_on_every_node() {
    let mesh = Mesh::new(3);
    let nodes = [mesh.start(1), mesh.start(2), mesh.start(3)];
    let work = support::temp_dir();
    let developer = keygen(work.path(), &mesh.data(1), "dev");
    let source = constant_plugin(
        work.path(),
        "tenant.wat",
        "",
        r#"{"decision":"allow","claims":{"tenant":"acme"}}"#,
    );
    let module = build_and_sign(
        work.path(),
        &mesh.data(1),
        &source,
        &developer,
        "tenant",
        "1",
        "on_token_request",
    );
    cli(&mesh.data(1), &["plugin", "trust", &developer.did]);
    cli(&mesh.data(1), &["plugin", "install", module.to_str().unwrap()]);
    let client = compat_tests::client_add(&mesh.data(1), "tenant-client", "read", &Default::default());
    cli(
        &mesh.data(1),
        &["client", "update", &client.client_id, "--plugin", "tenant"],
    );
    // Installed on node 1 only: nodes 2 and 3 fetch the module from a peer and apply it.
    for node in &nodes {
        eventually("every node applies the plugin", || async {
            let answer = token_answer(node, &client, "read").await;
            answer.status == StatusCode::OK
                && Jwt::parse(answer.json()["access_token"].as_str().unwrap()).payload["tenant"] == "acme"
        })
        .await;
    }
    // Node 2 withdraws trust: every node refuses the plugin (deny by default).
    cli(&mesh.data(2), &["plugin", "untrust", &developer.did]);
    for node in &nodes {
        eventually("every node refuses the untrusted plugin", || async {
            let answer = token_answer(node, &client, "read").await;
            answer.status == StatusCode::BAD_REQUEST && answer.text.contains("access_denied")
        })
        .await;
    }
    let list = cli(&mesh.data(3), &["plugin", "list"]);
    assert!(list.contains("refused") && list.contains("not trusted"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_under_load_fails_no_request() {
    let dir = support::temp_dir();
    let data = dir.path().join("node");
    let server = Meshgate::spawn(&data);
    let developer = keygen(dir.path(), &data, "dev");
    cli(&data, &["plugin", "trust", &developer.did]);
    let v1 = constant_plugin(
        dir.path(),
        "v1.wat",
        "",
        r#"{"decision":"allow","claims":{"generation":"one"}}"#,
    );
    let v1 = build_and_sign(dir.path(), &data, &v1, &developer, "gen", "1", "on_token_request");
    let v2 = constant_plugin(
        dir.path(),
        "v2.wat",
        "",
        r#"{"decision":"allow","claims":{"generation":"two"}}"#,
    );
    let v2 = build_and_sign(dir.path(), &data, &v2, &developer, "gen", "2", "on_token_request");
    cli(&data, &["plugin", "install", v1.to_str().unwrap(), "--all-clients"]);
    let client = server.client_add("load", "read");
    let generation = |answer: &support::Answer| {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "a request failed during the swap: {}",
            answer.text
        );
        Jwt::parse(answer.json()["access_token"].as_str().unwrap()).payload["generation"].clone()
    };
    eventually("v1 runs", || async {
        generation(&token_answer(&server, &client, "read").await) == "one"
    })
    .await;

    // Four workers request tokens back to back while v2 replaces v1.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, client, stop) = (server.url("/token"), client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || seen.len() < 10 {
                    let answer = post_form(
                        &url,
                        Some(&basic(&client.client_id, &client.client_secret)),
                        form(&[("grant_type", "client_credentials"), ("scope", "read")]),
                    )
                    .await;
                    assert_eq!(
                        answer.status,
                        StatusCode::OK,
                        "a request failed during the swap: {}",
                        answer.text
                    );
                    seen.push(
                        Jwt::parse(answer.json()["access_token"].as_str().unwrap()).payload["generation"].clone(),
                    );
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cli(&data, &["plugin", "install", v2.to_str().unwrap()]);
    eventually("v2 runs", || async {
        generation(&token_answer(&server, &client, "read").await) == "two"
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let seen = worker.await.unwrap();
        assert!(seen.iter().all(|g| g == "one" || g == "two"), "{seen:?}");
        total += seen.len();
    }
    assert!(total >= 40, "only {total} requests");
}
