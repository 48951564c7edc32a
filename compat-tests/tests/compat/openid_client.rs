//! openid-client 6 (RFC 8414 discovery, client_secret_basic and client_secret_post,
//! introspection, revocation) and jose's remote JWKS verification.

use compat_tests::Meshgate;
use serde_json::json;

use super::support::{self, Jwt, node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_flows() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let registered = server.client_add("openid-client", "read write");

    let result = node(
        "openid-client",
        &json!({
            "issuer": server.issuer(),
            "client_id": registered.client_id,
            "client_secret": registered.client_secret,
            "scope": "read",
        }),
    );

    assert_eq!(result["metadata"]["issuer"], server.issuer(), "{result:#}");
    for (name, token) in [("basic", &result["basic_token"]), ("post", &result["post_token"])] {
        assert_eq!(token["token_type"], "bearer", "{name}: {token}");
        assert!(token["access_token"].is_string(), "{name}: {token}");
        assert!(
            token["expires_in"].as_u64().is_some_and(|ttl| ttl > 0),
            "{name}: {token}"
        );
        let jwt = Jwt::parse(token["access_token"].as_str().unwrap());
        let problems = support::access_token_mismatches(
            &jwt,
            server.issuer(),
            &registered.client_id,
            "read",
            &[server.issuer()],
            &server.info().did,
        );
        assert!(problems.is_empty(), "{name} token: {problems:#?}");
    }

    // The two configurations really used the two authentication methods.
    let sent = result["sent"].as_array().expect("sent");
    let token_requests: Vec<_> = sent
        .iter()
        .filter(|request| request["url"] == server.url("/token"))
        .collect();
    assert_eq!(token_requests.len(), 2, "{sent:#?}");
    assert!(
        token_requests[0]["authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{:#}",
        token_requests[0]
    );
    assert!(
        token_requests[1]["body"]
            .as_str()
            .is_some_and(|body| body.contains("client_secret=")),
        "{:#}",
        token_requests[1]
    );
    assert_eq!(token_requests[1]["authorization"], json!(null));

    for name in ["introspected", "introspected_by_post"] {
        let introspected = &result[name];
        assert_eq!(introspected["active"], true, "{name}: {introspected:#}");
        assert_eq!(
            introspected["client_id"], registered.client_id,
            "{name}: {introspected:#}"
        );
        assert_eq!(introspected["scope"], "read", "{name}: {introspected:#}");
    }
    assert_eq!(
        result["after_revocation"],
        json!({"active": false}),
        "introspection after revocation"
    );

    let verified = &result["verified"];
    assert_eq!(verified["ok"], true, "jose: {verified:#}");
    assert_eq!(verified["header"]["typ"], "at+jwt");
    assert_eq!(verified["payload"]["iss"], server.issuer());
}
