//! private_key_jwt (RFC 7523 §2.2): openid-client with a key generated in node, and a replayed
//! assertion refused.

use std::path::Path;

use compat_tests::{ClientOptions, Meshgate, Registered};
use serde_json::{Value, json};

use super::support::{self, Answer, node};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Generates a key pair in node, writes its public JWKS into `dir` and registers a client with it.
/// Returns the client and its private JWK.
pub fn register_key_client(server: &Meshgate, dir: &Path, name: &str, alg: &str) -> (Registered, Value) {
    let keys = node("keygen", &json!({ "alg": alg }));
    let jwks_file = dir.join(format!("{name}.jwks.json"));
    std::fs::write(&jwks_file, keys["public_jwks"].to_string()).expect("write JWKS file");
    let registered = server.client_add_with(
        name,
        "read write",
        &ClientOptions {
            jwks_file: Some(jwks_file),
            ..ClientOptions::default()
        },
    );
    (registered, keys["private_jwk"].clone())
}

/// A client assertion signed in node with `private_jwk`.
pub fn assertion(private_jwk: &Value, client_id: &str, aud: &str, jti: &str) -> String {
    let signed = node(
        "assertion",
        &json!({ "private_jwk": private_jwk, "client_id": client_id, "aud": aud, "jti": jti }),
    );
    signed["assertion"].as_str().expect("assertion").to_string()
}

/// client_credentials authenticated by `assertion` alone.
pub async fn token_with_assertion(server: &Meshgate, client_id: &str, assertion: &str) -> Answer {
    support::post_form(
        &server.url("/token"),
        None,
        support::form(&[
            ("grant_type", "client_credentials"),
            ("scope", "read"),
            ("client_id", client_id),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ]),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_authenticates_with_private_key_jwt() {
    let (dir, keys_dir) = (support::temp_dir(), support::temp_dir());
    let server = Meshgate::spawn(dir.path());
    let (registered, private_jwk) = register_key_client(&server, keys_dir.path(), "pkjwt", "ES256");

    let result = node(
        "private-key-jwt",
        &json!({
            "issuer": server.issuer(),
            "client_id": registered.client_id,
            "private_jwk": private_jwk,
            "scope": "read",
        }),
    );
    assert!(result["token"]["access_token"].is_string(), "{result:#}");
    assert_eq!(result["introspected"]["active"], true, "{result:#}");
    assert_eq!(result["introspected"]["client_id"], registered.client_id);
    assert_eq!(result["after_revocation"], json!({"active": false}));
    for request in result["sent"].as_array().expect("sent") {
        if request["method"] == "POST" {
            assert_eq!(request["authorization"], json!(null), "{request:#}");
            let body = request["body"].as_str().unwrap_or_default();
            assert!(
                body.contains("client_assertion="),
                "openid-client did not send an assertion: {request:#}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_or_foreign_assertion_is_refused() {
    let (dir, keys_dir) = (support::temp_dir(), support::temp_dir());
    let server = Meshgate::spawn(dir.path());
    let (registered, private_jwk) = register_key_client(&server, keys_dir.path(), "replay", "ES256");
    let token_endpoint = server.url("/token");

    let once = assertion(
        &private_jwk,
        &registered.client_id,
        &token_endpoint,
        &support::unique("jti"),
    );
    let first = token_with_assertion(&server, &registered.client_id, &once).await;
    assert_eq!(first.status, 200, "first use of an assertion: {:?}", first.text);
    let second = token_with_assertion(&server, &registered.client_id, &once).await;
    if let Some(problem) = second.oauth_error_mismatch(401, "invalid_client") {
        panic!("replayed assertion (same jti): {problem}");
    }

    // The issuer as audience (what openid-client sends) works too.
    let by_issuer = assertion(
        &private_jwk,
        &registered.client_id,
        server.issuer(),
        &support::unique("jti"),
    );
    let answer = token_with_assertion(&server, &registered.client_id, &by_issuer).await;
    assert_eq!(answer.status, 200, "assertion with aud = issuer: {:?}", answer.text);

    // Signed by a key the client never registered, claiming the registered kid.
    let stranger = node("keygen", &json!({ "alg": "ES256" }));
    let mut foreign_jwk = stranger["private_jwk"].clone();
    foreign_jwk["kid"] = private_jwk["kid"].clone();
    let foreign = assertion(
        &foreign_jwk,
        &registered.client_id,
        &token_endpoint,
        &support::unique("jti"),
    );
    let answer = token_with_assertion(&server, &registered.client_id, &foreign).await;
    if let Some(problem) = answer.oauth_error_mismatch(401, "invalid_client") {
        panic!("assertion signed by an unregistered key: {problem}");
    }
}
