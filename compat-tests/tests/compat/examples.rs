//! The runnable examples, run as a user would run them (`cargo run -p examples --example ...`).

use std::process::Command;

use compat_tests::{Meshgate, workspace_root};
use serde_json::Value;

use super::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_example_gets_a_token() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let registered = server.client_add("example", "read write");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "examples",
            "--example",
            "client_credentials",
            "--",
        ])
        .args([
            server.issuer(),
            &registered.client_id,
            &registered.client_secret,
            "read",
        ])
        .output()
        .expect("cargo run the example");
    assert!(
        output.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("the example prints JSON");
    assert_eq!(answer["scope"], "read");
    assert!(
        answer["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    let introspection = support::introspect(&server, &registered, answer["access_token"].as_str().unwrap()).await;
    assert_eq!(introspection["active"], true);
}

/// `examples/examples/legacy-agent`: an `oauth2`-crate agent configured for its old central
/// gateway is moved to meshgate by configuration alone — its Keycloak client imported with the
/// same id and secret, meshgate serving HTTPS with the CA from `tls init`, and only the agent's
/// token URL (and CA file) changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_agent_moves_to_meshgate_by_configuration_only() {
    let dir = support::temp_dir();
    let realm = workspace_root().join("compat-tests/fixtures/keycloak-realm-export.json");
    compat_tests::cli(dir.path(), &["import", "keycloak", realm.to_str().unwrap()]);
    let init: Value = serde_json::from_str(&compat_tests::cli(dir.path(), &["tls", "init", "--json"])).unwrap();
    let server = Meshgate::spawn_args(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--sync-listen",
            "127.0.0.1:0",
            "--tls",
        ],
        &[],
    );
    let config_dir = support::temp_dir();
    let config = config_dir.path().join("agent.env");
    // The agent's configuration as it was for the central gateway, with the token URL and CA
    // changed: the only edit a migration needs.
    std::fs::write(
        &config,
        format!(
            "# was: GATEWAY_TOKEN_URL=https://auth.corp/realms/agents/protocol/openid-connect/token\n\
             GATEWAY_TOKEN_URL={}/token\n\
             GATEWAY_CLIENT_ID=billing-agent\n\
             GATEWAY_CLIENT_SECRET=kc-billing-3f9a1c5e7b2d4f6a8c0e1b3d5f7a9c1e\n\
             GATEWAY_SCOPE=invoices:read\n\
             GATEWAY_CA_FILE={}\n",
            server.issuer(),
            init["ca_cert"].as_str().unwrap()
        ),
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "examples",
            "--example",
            "legacy-agent",
            "--",
            "--once",
        ])
        .env("AGENT_CONFIG", &config)
        .env_remove("GATEWAY_TOKEN_URL")
        .output()
        .expect("cargo run the example");
    assert!(
        output.status.success(),
        "legacy-agent failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: Value = serde_json::from_slice(&output.stdout).expect("the agent prints one JSON line");
    assert_eq!(line["token_type"], "bearer", "{line}");
    assert_eq!(line["scope"], "invoices:read", "{line}");
    assert!(line["expires_in"].as_u64().is_some_and(|s| s > 0), "{line}");
    let logs = server.stderr();
    assert!(!logs.contains("kc-billing-3f9a1c5e7b2d4f6a8c0e1b3d5f7a9c1e"));
}
