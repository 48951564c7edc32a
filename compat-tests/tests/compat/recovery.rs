//! Recovery of a corrupt state from peers, with real processes: three nodes share a client and a
//! revocation; node 3 is stopped, its snapshot and its previous snapshot are both damaged, and it
//! is started again while its peers are down. It says in its log that it recovers from its peers,
//! answers 503 `temporarily_unavailable` on the OAuth endpoints and 503 on `/readyz` (its client
//! list and revocations are not authoritative), stays so across a restart, and once the peers are
//! back it holds the client and enforces the revocation, and is ready.

use reqwest::StatusCode;

use compat_tests::{ClientOptions, Meshgate, client_add};

use super::mesh::{Mesh, eventually};
use super::support::{self, basic, form, get, post_form};

async fn introspect_status(server: &Meshgate, id: &str, secret: &str, token: &str) -> (StatusCode, String) {
    let answer = post_form(
        &server.url("/introspect"),
        Some(&basic(id, secret)),
        form(&[("token", token)]),
    )
    .await;
    (answer.status, answer.text)
}

fn is_active(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v["active"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_snapshots_are_both_corrupt_recovers_clients_and_revocations_from_its_peers() {
    let mesh = Mesh::new(3);
    let mut a = mesh.start(1);
    let mut b = mesh.start(2);
    let mut c = mesh.start(3);
    let client = client_add(&mesh.data(1), "recovery-client", "read", &ClientOptions::default());
    let (id, secret) = (client.client_id.clone(), client.client_secret.clone());
    let revoked = support::access_token(&a, &client, &[]).await;
    let kept = support::access_token(&a, &client, &[]).await;
    let answer = post_form(
        &b.url("/revoke"),
        Some(&basic(&id, &secret)),
        form(&[("token", &revoked)]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    eventually("C knows the client and enforces the revocation", || async {
        let (status, text) = introspect_status(&c, &id, &secret, &revoked).await;
        status == StatusCode::OK && !is_active(&text)
    })
    .await;
    c.stop();

    // Damage both snapshots (a half-written copy and garbage), and stop the peers.
    let data = mesh.data(3);
    std::fs::write(data.join("state.automerge"), b"\x85\x6f\x4a\x83truncated").unwrap();
    std::fs::write(data.join("state.automerge.prev"), b"garbage").unwrap();
    a.stop();
    b.stop();

    let c = mesh.start(3);
    let log = c.stderr();
    assert!(
        log.contains("RECOVERING THE REPLICATED STATE FROM PEERS"),
        "no log line says the node recovers from peers:\n{log}"
    );
    assert!(data.join("recovering-from-peers").exists());
    assert!(data.join("corrupt-state").join("state.automerge").exists());
    assert!(data.join("corrupt-state").join("state.automerge.prev").exists());
    let ready = get(&c.metrics_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.text);
    assert!(ready.text.contains("recovering"), "{}", ready.text);
    let (status, text) = introspect_status(&c, &id, &secret, &revoked).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("temporarily_unavailable"), "{text}");
    let token = post_form(
        &c.url("/token"),
        Some(&basic(&id, &secret)),
        form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(token.status, StatusCode::SERVICE_UNAVAILABLE, "{}", token.text);
    assert!(token.header("retry-after").is_some());

    // A restart before any peer answered is still recovering.
    drop(c);
    let c = mesh.start(3);
    let ready = get(&c.metrics_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.text);

    // The peers come back: C recovers without a restart.
    let a = mesh.start(1);
    let b = mesh.start(2);
    eventually("C is ready again", || async {
        get(&c.metrics_url("/readyz")).await.status == StatusCode::OK
    })
    .await;
    assert!(
        c.stderr().contains("recovered the replicated state from a peer"),
        "{}",
        c.stderr()
    );
    assert!(!data.join("recovering-from-peers").exists());
    let (status, text) = introspect_status(&c, &id, &secret, &revoked).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!is_active(&text), "the revocation was not recovered: {text}");
    let (status, text) = introspect_status(&c, &id, &secret, &kept).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(is_active(&text), "{text}");
    let fresh = support::access_token(&c, &client, &[]).await;
    eventually("a token minted by the recovered node is active on A", || async {
        is_active(&introspect_status(&a, &id, &secret, &fresh).await.1)
    })
    .await;
    drop((a, b, c));
}
