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
