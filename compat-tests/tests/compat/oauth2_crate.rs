//! The `oauth2` crate (client_credentials, HTTP Basic) over `adapters::http`; the token verified
//! by jose against the JWKS; and the discovery document.

use std::time::Duration;

use adapters::http::{HttpClient, HttpConfig};
use compat_tests::Meshgate;
use oauth2::basic::{BasicClient, BasicTokenType};
use oauth2::{ClientId, ClientSecret, IntrospectionUrl, Scope, TokenIntrospectionResponse, TokenResponse, TokenUrl};
use serde_json::{Value, json};

use super::support::{self, Jwt, node};

fn upstream_http() -> HttpClient {
    HttpClient::new(&HttpConfig {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    })
    .expect("adapters::http::HttpClient")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_crate_gets_a_token_that_jose_verifies() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let registered = server.client_add("oauth2-rs", "read write");
    let http = upstream_http();

    let client = BasicClient::new(ClientId::new(registered.client_id.clone()))
        .set_client_secret(ClientSecret::new(registered.client_secret.clone()))
        .set_token_uri(TokenUrl::new(server.url("/token")).unwrap())
        .set_introspection_url(IntrospectionUrl::new(server.url("/introspect")).unwrap());
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .request_async(&http)
        .await
        .unwrap_or_else(|error| panic!("oauth2 client_credentials failed: {error:?}"));
    assert_eq!(*token.token_type(), BasicTokenType::Bearer);
    assert!(
        token.expires_in().is_some_and(|ttl| ttl.as_secs() > 0),
        "expires_in {:?}",
        token.expires_in()
    );
    let access_token = token.access_token().secret().clone();

    let introspection = client
        .introspect(token.access_token())
        .request_async(&http)
        .await
        .unwrap_or_else(|error| panic!("oauth2 introspection failed: {error:?}"));
    assert!(introspection.active(), "introspection: {introspection:?}");
    assert_eq!(
        introspection.client_id().map(|id| id.as_str()),
        Some(registered.client_id.as_str())
    );

    let metadata = support::metadata(&server).await;
    let verified = node(
        "verify",
        &json!({
            "token": access_token,
            "issuer": server.issuer(),
            "jwks_uri": metadata["jwks_uri"],
        }),
    );
    assert_eq!(verified["ok"], true, "jose jwtVerify: {verified}");
    assert_eq!(verified["header"]["typ"], "at+jwt", "{verified}");
    assert_eq!(verified["header"]["alg"], "EdDSA", "{verified}");
    assert_eq!(verified["payload"], Jwt::parse(&access_token).payload);

    let problems = support::access_token_mismatches(
        &Jwt::parse(&access_token),
        server.issuer(),
        &registered.client_id,
        "read",
        &[server.issuer()],
        &server.info().did,
    );
    assert!(problems.is_empty(), "access token claims: {problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_document_follows_rfc_8414() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    assert!(
        server.info().did.starts_with("did:key:z6Mk"),
        "did {}",
        server.info().did
    );
    assert_eq!(server.issuer(), format!("http://{}", server.info().listen));

    let metadata = support::metadata(&server).await;
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    expect(
        metadata["issuer"] == server.issuer(),
        format!("issuer {}", metadata["issuer"]),
    );
    for (field, path) in [
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks.json"),
        ("introspection_endpoint", "/introspect"),
        ("revocation_endpoint", "/revoke"),
    ] {
        let want = format!("{}{path}", server.issuer());
        expect(
            metadata[field] == want.as_str(),
            format!("{field} {} (want {want})", metadata[field]),
        );
    }
    let list = |field: &str| support::string_list(&metadata[field]);
    expect(
        list("grant_types_supported").contains(&"client_credentials".to_string()),
        format!("grant_types_supported {}", metadata["grant_types_supported"]),
    );
    for method in ["client_secret_basic", "client_secret_post", "private_key_jwt"] {
        expect(
            list("token_endpoint_auth_methods_supported").contains(&method.to_string()),
            format!(
                "token_endpoint_auth_methods_supported {} lacks {method}",
                metadata["token_endpoint_auth_methods_supported"]
            ),
        );
    }
    assert!(problems.is_empty(), "metadata {metadata:#}: {problems:#?}");

    let jwks = support::jwks(&server).await;
    let keys = jwks["keys"].as_array().expect("keys");
    assert!(
        keys.iter()
            .any(|key| key["kty"] == "OKP" && key["crv"] == "Ed25519" && key["kid"].is_string()),
        "no Ed25519 key with a kid in {jwks:#}"
    );
    for key in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert_eq!(
                key[private],
                Value::Null,
                "JWKS publishes private member {private}: {key}"
            );
        }
    }

    let registered = server.client_add("metadata", "read");
    let answer = support::post_form(
        &server.url("/token"),
        Some(&support::basic(&registered.client_id, &registered.client_secret)),
        support::form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.text);
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{:?}", answer.headers);
    let body = answer.json();
    assert!(
        body["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_algorithm_verifies_with_jose() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    for alg in ["EdDSA", "ES256", "RS256"] {
        let registered = server.client_add_with(
            &format!("alg-{alg}"),
            "read",
            &compat_tests::ClientOptions {
                token_alg: Some(alg.to_string()),
                ..compat_tests::ClientOptions::default()
            },
        );
        let token = support::access_token(&server, &registered, &[]).await;
        let jwt = Jwt::parse(&token);
        assert_eq!(jwt.header["alg"], alg, "{}", jwt.header);
        let verified = node(
            "verify",
            &json!({
                "token": token,
                "issuer": server.issuer(),
                "jwks_uri": server.url("/jwks.json"),
                "audience": server.issuer(),
            }),
        );
        assert_eq!(verified["ok"], true, "jose, {alg}: {verified}");
        let introspected = support::introspect(&server, &registered, &token).await;
        assert_eq!(introspected["active"], true, "{alg}: {introspected}");
    }
}
