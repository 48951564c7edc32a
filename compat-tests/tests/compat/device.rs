//! The device authorization grant (RFC 8628) against `meshgate serve`: npm `openid-client` 6
//! starts it (`initiateDeviceAuthorization`) and polls (`pollDeviceAuthorizationGrant`) while the
//! user approves on the verification page over plain HTTP (session cookie and CSRF tokens), then
//! refreshes; a second device is denied.

use compat_tests::{Meshgate, cli};
use serde_json::Value;

use super::login::add_user;
use super::support::{self, node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_device_flow_approved_and_denied_on_the_verification_page() {
    let dir = support::temp_dir();
    // A 1 s polling interval keeps the test short.
    let server = Meshgate::spawn_with_env(dir.path(), &[("MESHGATE_BRIDGE__DEVICE_POLL_INTERVAL", "1s")]);
    add_user(dir.path(), "alice", "correct horse battery staple");
    let out = cli(
        dir.path(),
        &[
            "client",
            "add",
            "--name",
            "tv app",
            "--grant",
            "device_code",
            "--public",
            "--scope",
            "openid profile email",
            "--json",
        ],
    );
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["token_endpoint_auth_method"], "none", "{out}");
    let client_id = answer["client_id"].as_str().unwrap();

    let result = node(
        "device-flow",
        &serde_json::json!({
            "issuer": server.issuer(),
            "client_id": client_id,
            "username": "alice",
            "password": "correct horse battery staple",
            "scope": "openid profile",
        }),
    );

    assert_eq!(
        result["metadata"]["device_authorization_endpoint"],
        server.url("/device_authorization"),
        "{result:#}"
    );
    let started = &result["started"];
    assert_eq!(started["verification_uri"], server.url("/device"));
    assert_eq!(started["interval"], 1);
    let user_code = started["user_code"].as_str().unwrap();
    assert_eq!(
        result["prefilled"], user_code,
        "verification_uri_complete prefills the code"
    );
    assert!(
        result["confirm_page"].as_str().unwrap().contains("tv app"),
        "the confirmation names the client"
    );
    let claims = &result["claims"];
    assert_eq!(claims["iss"], server.issuer());
    assert_eq!(claims["aud"], client_id);
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(result["tokens"]["scope"], "openid profile");
    assert!(result["refreshed"]["access_token"].is_string(), "{result:#}");
    assert_ne!(result["refreshed"]["refresh_token"], result["tokens"]["refresh_token"]);
    assert_eq!(result["denied"]["ok"], false, "{:#}", result["denied"]);
    assert_eq!(result["denied"]["body"], "access_denied", "{:#}", result["denied"]);
    // No device code, token or password reached the logs.
    let logs = server.stderr();
    for secret in [
        started["device_code"].as_str().unwrap(),
        result["tokens"]["refresh_token"].as_str().unwrap(),
        result["tokens"]["access_token"].as_str().unwrap(),
        "correct horse battery staple",
    ] {
        assert!(!logs.contains(secret), "a secret in the logs:\n{logs}");
    }
}
