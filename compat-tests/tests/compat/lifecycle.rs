//! Operating a node: restart on the same data directory, signing-key rotation.

use std::time::Duration;

use compat_tests::Meshgate;
use serde_json::{Value, json};

use super::support::{self, Jwt, node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_clients_keys_and_tokens() {
    let dir = support::temp_dir();
    let mut server = Meshgate::spawn(dir.path());
    let client = server.client_add("survivor", "read write");
    let token = support::access_token(&server, &client, &[("scope", "read")]).await;
    let first = server.info().clone();

    let status = server.stop();
    assert!(
        status.success(),
        "meshgate serve did not exit cleanly on SIGTERM: {status}\n{}",
        server.output()
    );
    drop(server);

    // Same listen address, so the issuer (derived from it) is the same.
    let server = Meshgate::spawn_listening(dir.path(), &first.listen, &[]);
    assert_eq!(server.issuer(), first.issuer);
    assert_eq!(
        server.info().did,
        first.did,
        "the node identity changed across a restart"
    );

    let introspected = support::introspect(&server, &client, &token).await;
    assert_eq!(
        introspected["active"], true,
        "a token issued before the restart: {introspected}"
    );
    assert_eq!(introspected["client_id"], client.client_id);
    let again = support::access_token(&server, &client, &[("scope", "write")]).await;
    assert_eq!(Jwt::parse(&again).payload["scope"], "write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_tokens_valid() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let client = server.client_add("rotator", "read");
    let before = support::access_token(&server, &client, &[]).await;
    let old_kid = Jwt::parse(&before).header["kid"].as_str().expect("kid").to_string();

    let printed = server.cli(&["keys", "rotate", "--json"]);
    let rotated: Value = serde_json::from_str(printed.trim())
        .unwrap_or_else(|error| panic!("`keys rotate --json` printed no JSON ({error}): {printed:?}"));

    // The rotation takes effect through the admin channel; allow it a bounded moment.
    let mut after = String::new();
    let mut new_kid = old_kid.clone();
    for _ in 0..40 {
        after = support::access_token(&server, &client, &[]).await;
        new_kid = Jwt::parse(&after).header["kid"].as_str().expect("kid").to_string();
        if new_kid != old_kid {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_ne!(
        new_kid, old_kid,
        "tokens still carry the old kid 10 s after `keys rotate` (which printed {rotated})"
    );

    let kids = support::kids(&support::jwks(&server).await);
    assert!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "JWKS kids {kids:?} lack the old {old_kid} or the new {new_kid}"
    );
    for (name, token) in [("before rotation", &before), ("after rotation", &after)] {
        let introspected = support::introspect(&server, &client, token).await;
        assert_eq!(introspected["active"], true, "token {name}: {introspected}");
        let verified = node(
            "verify",
            &json!({
                "token": token,
                "issuer": server.issuer(),
                "jwks_uri": server.url("/jwks.json"),
            }),
        );
        assert_eq!(verified["ok"], true, "jose, token {name}: {verified}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_client_loses_access_and_its_tokens() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let removed = server.client_add("removed", "read");
    let observer = server.client_add("observer", "read");
    let token = support::access_token(&server, &removed, &[]).await;
    assert_eq!(support::introspect(&server, &observer, &token).await["active"], true);

    server.cli(&["client", "remove", &removed.client_id]);

    let answer = support::post_form(
        &server.url("/token"),
        Some(&support::basic(&removed.client_id, &removed.client_secret)),
        support::form(&[("grant_type", "client_credentials")]),
    )
    .await;
    if let Some(problem) = answer.oauth_error_mismatch(401, "invalid_client") {
        panic!("token request of a removed client: {problem}");
    }
    let introspected = support::introspect(&server, &observer, &token).await;
    assert_eq!(
        introspected,
        json!({"active": false}),
        "a removed client's token at introspection"
    );
}

/// `meshgate serve` tunes glibc's allocator for a long run (docs/operations.md, "Memory"): its
/// `malloc-trim` thread, which hands freed memory back to the kernel, is running.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_serving_node_runs_the_malloc_trim_thread() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let pid = server.pid().expect("a spawned server has a pid");
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's /proc task list")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "malloc-trim"),
        "no malloc-trim thread in meshgate serve; threads: {names:?}"
    );
}
