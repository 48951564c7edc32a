//! Three real `meshgate serve` nodes whose replicated document is bounded by a small
//! `node.sync.crdt_buffer_mb`: a churn of expiring revocations (issued and revoked over HTTP on
//! every node) grows the document past half the bound, a node starts a new epoch, the others move
//! to it, and afterwards the mesh works as before: tokens validate across nodes, a revocation on one
//! is enforced on all, and a client added on one gets tokens on another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use compat_tests::{ClientOptions, Meshgate, Registered, cli, client_add};
use reqwest::StatusCode;
use serde_json::Value;

use super::mesh::{Mesh, eventually};
use super::support::{self, basic, form, introspect, post_form};

/// How long the churn may run before the test gives up on seeing an epoch change.
const CHURN_LIMIT: Duration = Duration::from_secs(600);

async fn active(server: &Meshgate, client: &Registered, token: &str) -> bool {
    introspect(server, client, token).await["active"] == true
}

async fn revoke(server: &Meshgate, client: &Registered, token: &str) {
    let answer = post_form(
        &server.url("/revoke"),
        Some(&basic(&client.client_id, &client.client_secret)),
        form(&[("token", token)]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "POST /revoke: {}", answer.text);
}

fn heads(mesh: &Mesh, i: usize) -> Vec<String> {
    let status: Value = serde_json::from_str(&cli(&mesh.data(i), &["mesh", "status", "--json"])).unwrap();
    support::string_list(&status["heads"])
}

/// Whether node `i` has moved past the genesis epoch: a switch keeps the previous epoch's document
/// as `previous.automerge` in the data directory.
fn in_later_epoch(mesh: &Mesh, i: usize) -> bool {
    mesh.data(i).join("previous.automerge").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_converging_across_an_epoch_change_forced_by_churn() {
    let mesh = Mesh::new(3);
    for i in 1..=3 {
        // The smallest bound (1 MiB: a new epoch past 512 KiB) and tokens that expire in a minute,
        // so the churn's revocations are dropped by maintenance and the new epoch is small.
        let path = mesh.config_path(i);
        let config = std::fs::read_to_string(&path).unwrap();
        let config = config
            .replacen("  sync:\n", "  sync:\n    crdt_buffer_mb: 1\n", 1)
            .replacen("bridge:\n", "bridge:\n  access_token_ttl: 60s\n", 1);
        std::fs::write(&path, config).unwrap();
    }
    let nodes = Arc::new([mesh.start(1), mesh.start(2), mesh.start(3)]);
    let client = client_add(&mesh.data(1), "epoch-churn", "read", &ClientOptions::default());
    for node in nodes.iter() {
        eventually("the client reaches every node", || async {
            let body = form(&[("grant_type", "client_credentials")]);
            let auth = basic(&client.client_id, &client.client_secret);
            post_form(&node.url("/token"), Some(&auth), body).await.status == StatusCode::OK
        })
        .await;
    }
    assert!((1..=3).all(|i| !in_later_epoch(&mesh, i)));

    // The churn: on every node, workers issue a token and revoke it, until every node has moved to
    // a new epoch.
    let stop = Arc::new(AtomicBool::new(false));
    let revoked = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for k in 0..nodes.len() {
        for _ in 0..3 {
            let (nodes, client, stop, revoked) = (nodes.clone(), client.clone(), stop.clone(), revoked.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let token = support::access_token(&nodes[k], &client, &[]).await;
                    revoke(&nodes[k], &client, &token).await;
                    revoked.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let deadline = tokio::time::Instant::now() + CHURN_LIMIT;
    while !(1..=3).all(|i| in_later_epoch(&mesh, i)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no epoch change on every node after {} revocations in {CHURN_LIMIT:?}",
            revoked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let churned = revoked.load(Ordering::Relaxed);

    // Converged in the new epoch: the same heads everywhere.
    eventually("every node has the same heads after the epoch change", || async {
        let first = heads(&mesh, 1);
        !first.is_empty() && (2..=3).all(|i| heads(&mesh, i) == first)
    })
    .await;

    // Tokens minted on each node validate on the others; a revocation on one is enforced on all.
    for (k, node) in nodes.iter().enumerate() {
        let token = support::access_token(node, &client, &[]).await;
        for other in nodes.iter() {
            eventually(&format!("a token from node {} is active everywhere", k + 1), || async {
                active(other, &client, &token).await
            })
            .await;
        }
        let revoker = &nodes[(k + 1) % nodes.len()];
        revoke(revoker, &client, &token).await;
        for other in nodes.iter() {
            eventually(
                &format!("the revocation of node {}'s token reaches every node", k + 1),
                || async { !active(other, &client, &token).await },
            )
            .await;
        }
    }
    // A client added after the change reaches the other nodes.
    let later = client_add(&mesh.data(2), "after-the-epoch", "read", &ClientOptions::default());
    let token = support::access_token(&nodes[1], &later, &[]).await;
    for node in nodes.iter() {
        eventually("the client added after the epoch change works everywhere", || async {
            active(node, &later, &token).await
        })
        .await;
    }
    eprintln!("epoch change after {churned} churned revocations");
}
