//! Dynamic client registration (RFC 7591/7592), Client ID Metadata Documents and CORS.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bridge::cimd::{ClientSource, Resolver, ResolverConfig, resolve_client};
use bridge::registration::RegistrationConfig;
use serde_json::{Value, json};

use super::harness::*;

const IAT: &str = "initial-access-token-0123456789abcdef";

async fn register(h: &Harness, bearer: Option<&str>, body: &Value) -> Answer {
    send_json(h, "POST", "/register", bearer, body).await
}

async fn send_json(h: &Harness, method: &str, path: &str, bearer: Option<&str>, body: &Value) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    h.send(request.body(Body::from(body.to_string())).unwrap()).await
}

async fn with_bearer(h: &Harness, method: &str, path: &str, token: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    h.send(request.body(Body::empty()).unwrap()).await
}

fn mcp_client() -> Value {
    json!({
        "client_name": "MCP Inspector",
        "redirect_uris": ["http://127.0.0.1:6274/oauth/callback", "http://localhost:6274/cb"],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "scope": "mcp:tools read",
        "client_uri": "https://inspector.example/",
        "software_id": "inspector",
        "unknown_field": "ignored",
    })
}

fn with_iat(open_public: bool) -> RegistrationConfig {
    RegistrationConfig {
        open_public,
        initial_access_tokens: vec![IAT.into()],
        ..Default::default()
    }
}

fn path_of(uri: &str) -> String {
    uri.strip_prefix(ISSUER).unwrap().to_owned()
}

#[tokio::test]
async fn metadata_advertises_registration() {
    let h = Harness::new();
    let answer = h.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(answer.json["registration_endpoint"], format!("{ISSUER}/register"));
    assert_eq!(answer.json["client_id_metadata_document_supported"], true);
}

#[tokio::test]
async fn a_public_loopback_client_registers_without_credentials() {
    let h = Harness::new();
    let answer = register(&h, None, &mcp_client()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let j = &answer.json;
    let id = j["client_id"].as_str().unwrap();
    assert!(id.len() >= 20);
    assert!(j.get("client_secret").is_none(), "{j}");
    assert_eq!(j["token_endpoint_auth_method"], "none");
    assert_eq!(j["redirect_uris"], mcp_client()["redirect_uris"]);
    assert_eq!(j["grant_types"], json!(["authorization_code", "refresh_token"]));
    assert_eq!(j["scope"], "mcp:tools read");
    assert_eq!(j["client_name"], "MCP Inspector");
    assert_eq!(j["client_uri"], "https://inspector.example/");
    assert_eq!(j["client_id_issued_at"], START);
    assert!(j.get("unknown_field").is_none());
    assert!(j["registration_access_token"].as_str().unwrap().len() >= 40);
    assert_eq!(j["registration_client_uri"], format!("{ISSUER}/register/{id}"));

    // A replicated client like any other, resolvable for /authorize.
    let client = resolve_client(&h.state, id).await.unwrap();
    assert!(client.public);
    assert_eq!(client.source, ClientSource::Registered);
    assert_eq!(client.redirect_uris.len(), 2);
    // The registration access token is stored hashed, never as is.
    let token = j["registration_access_token"].as_str().unwrap();
    let mut files = 0;
    for entry in std::fs::read_dir(h.dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{}",
                path.display()
            );
        }
    }
    assert!(files > 0);
    let record = serde_json::to_string(&h.state.view().clients[id].record).unwrap();
    assert!(!record.contains(token), "{record}");
    assert!(record.contains("registration_token_hash"), "{record}");
}

#[tokio::test]
async fn malicious_metadata_is_refused() {
    let h = Harness::new();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"redirect_uris": ["javascript:alert(1)"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["data:text/html,<script>alert(1)</script>"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["http://evil.example/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://app.example/cb#x"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://attacker@app.example/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1.evil.example/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": [], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": (0..11).map(|i| format!("http://127.0.0.1/cb{i}")).collect::<Vec<_>>(), "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": [format!("https://app.example/{}", "a".repeat(3000))], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": "http://127.0.0.1/cb", "token_endpoint_auth_method": "none"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "client_name": "x".repeat(201)}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "client_name": "a\u{0}b"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "grant_types": ["password"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "tls_client_auth"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "logo_uri": "javascript:alert(1)"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "scope": "a\"b"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "jwks_uri": "https://app.example/jwks"}),
            "invalid_client_metadata",
        ),
        (json!(["not", "an", "object"]), "invalid_client_metadata"),
    ];
    for (body, code) in cases {
        let answer = register(&h, None, &body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {}", answer.json);
        assert_eq!(answer.error(), code, "{body}: {}", answer.json);
    }
    // Not JSON, wrong content type, a huge body.
    let request = Request::post("/register")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    assert_eq!(h.send(request).await.error(), "invalid_client_metadata");
    let request = Request::post("/register")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("redirect_uris=x"))
        .unwrap();
    assert_eq!(h.send(request).await.error(), "invalid_request");
    let huge = json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "x": "y".repeat(100_000)});
    let answer = register(&h, None, &huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing was registered.
    assert!(h.state.view().clients.is_empty());
}

#[tokio::test]
async fn confidential_clients_need_an_initial_access_token() {
    let h = Harness::new();
    assert!(h.state.set_registration(with_iat(true)));
    let body = json!({
        "client_name": "backend",
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "read",
    });
    let answer = register(&h, None, &body).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.json);
    assert_eq!(answer.error(), "invalid_token");
    let challenge = answer.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let answer = register(&h, Some("initial-access-token-wrong"), &body).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let answer = register(&h, Some(IAT), &body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(answer.json["client_secret_expires_at"], 0);
    let id = answer.json["client_id"].as_str().unwrap();
    let secret = answer.json["client_secret"].as_str().unwrap();
    // The registered client gets tokens like an operator-added one.
    let token = h.token(id, secret, "&scope=read").await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.json);
    let wrong = h.token(id, "not-the-secret", "").await;
    assert_eq!(wrong.error(), "invalid_client");
}

#[tokio::test]
async fn closed_registration_needs_a_token_even_for_public_clients() {
    let h = Harness::new();
    h.state.set_registration(with_iat(false));
    let answer = register(&h, None, &mcp_client()).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.json);
    assert_eq!(answer.error(), "invalid_token");
    let answer = register(&h, Some(IAT), &mcp_client()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
}

#[tokio::test]
async fn rfc7592_read_update_delete_with_the_registration_access_token() {
    let h = Harness::new();
    let created = register(&h, None, &mcp_client()).await.json;
    let id = created["client_id"].as_str().unwrap().to_owned();
    let rat = created["registration_access_token"].as_str().unwrap().to_owned();
    let path = path_of(created["registration_client_uri"].as_str().unwrap());

    let read = with_bearer(&h, "GET", &path, &rat).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.json);
    assert_eq!(read.json["client_id"], id.as_str());
    assert_eq!(read.json["redirect_uris"], created["redirect_uris"]);
    assert_eq!(read.json["registration_access_token"], rat.as_str());
    assert_eq!(read.json["registration_client_uri"], created["registration_client_uri"]);
    assert!(read.json.get("client_secret").is_none());

    for bad in ["wrong-token", &rat[..rat.len() - 1]] {
        let answer = with_bearer(&h, "GET", &path, bad).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.error(), "invalid_token");
    }
    // Another client's token does not open this one.
    let other = register(&h, None, &mcp_client()).await.json;
    let answer = with_bearer(&h, "GET", &path, other["registration_access_token"].as_str().unwrap()).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // No token at all.
    let answer = h.get(&path).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    // Update: new redirect URIs; a javascript: URI is refused; public stays public.
    let mut update = mcp_client();
    update["client_id"] = json!(id);
    update["redirect_uris"] = json!(["http://127.0.0.1:9999/new"]);
    let answer = send_json(&h, "PUT", &path, Some(&rat), &update).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["redirect_uris"], json!(["http://127.0.0.1:9999/new"]));
    update["redirect_uris"] = json!(["javascript:alert(1)"]);
    let answer = send_json(&h, "PUT", &path, Some(&rat), &update).await;
    assert_eq!(answer.error(), "invalid_redirect_uri");
    update["redirect_uris"] = json!(["http://127.0.0.1:9999/new"]);
    update["token_endpoint_auth_method"] = json!("client_secret_basic");
    let answer = send_json(&h, "PUT", &path, Some(&rat), &update).await;
    assert_eq!(answer.error(), "invalid_client_metadata");
    update["token_endpoint_auth_method"] = json!("none");
    update["client_id"] = json!("someone-else");
    let answer = send_json(&h, "PUT", &path, Some(&rat), &update).await;
    assert_eq!(answer.error(), "invalid_request");
    let client = resolve_client(&h.state, &id).await.unwrap();
    assert_eq!(client.redirect_uris, ["http://127.0.0.1:9999/new"]);

    // Delete: gone, and the token opens nothing any more.
    let answer = with_bearer(&h, "DELETE", &path, &rat).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(!h.state.view().clients.contains_key(&id));
    let answer = with_bearer(&h, "GET", &path, &rat).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resolve_client(&h.state, &id).await.unwrap_err().code(),
        "invalid_client"
    );
}

#[tokio::test]
async fn operator_clients_have_no_registration_endpoint() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let answer = with_bearer(&h, "GET", &format!("/register/{id}"), &secret).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = with_bearer(&h, "DELETE", &format!("/register/{id}"), &secret).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(h.state.view().clients.contains_key(&id));
}

#[tokio::test]
async fn unused_dynamic_clients_expire_and_used_ones_stay() {
    let h = Harness::new();
    h.state.set_registration(RegistrationConfig {
        initial_access_tokens: vec![IAT.into()],
        unused_client_expiry: Duration::from_secs(30 * 86_400),
        ..Default::default()
    });
    let (operator_id, _) = h.client("read", &[], None);
    let idle = register(&h, None, &mcp_client()).await.json["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let busy = register(
        &h,
        Some(IAT),
        &json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await
    .json;
    let (busy_id, busy_secret) = (
        busy["client_id"].as_str().unwrap().to_owned(),
        busy["client_secret"].as_str().unwrap().to_owned(),
    );
    let day = 86_400;
    // Day 20: the busy client gets a token; nothing expires yet, and the use is written back.
    h.clock.advance(20 * day);
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &busy_id),
        ("client_secret", &busy_secret),
    ]);
    assert_eq!(h.post_form("/token", None, &body).await.status, StatusCode::OK);
    let changed = bridge::registration::sweep_node(&h.state, h.state.now()).unwrap();
    assert_eq!(changed, 1, "the last use is written back to the replicated record");
    let record = h.state.view().clients[&busy_id].record.clone();
    assert_eq!(record.dynamic_registration.unwrap().last_used, START + 20 * day);
    // Day 30: the idle client expires; the busy one (used on day 20) and the operator's stay.
    h.clock.advance(10 * day);
    assert_eq!(bridge::registration::sweep_node(&h.state, h.state.now()).unwrap(), 1);
    let view = h.state.view();
    assert!(!view.clients.contains_key(&idle));
    assert!(view.clients.contains_key(&busy_id));
    assert!(view.clients.contains_key(&operator_id));
    drop(view);
    // Day 50: the busy client, unused for 30 days, expires too — also after a restart, which
    // forgets the in-memory last use (the replicated record kept it).
    let h = h.restart();
    h.clock.advance(19 * day);
    assert_eq!(bridge::registration::sweep_node(&h.state, h.state.now()).unwrap(), 0);
    h.clock.advance(day);
    assert_eq!(bridge::registration::sweep_node(&h.state, h.state.now()).unwrap(), 1);
    assert!(!h.state.view().clients.contains_key(&busy_id));
    assert!(h.state.view().clients.contains_key(&operator_id));
}

#[tokio::test]
async fn registration_is_bounded() {
    let h = Harness::new();
    h.state.set_registration(RegistrationConfig {
        max_dynamic_clients: 2,
        ..Default::default()
    });
    for _ in 0..2 {
        assert_eq!(register(&h, None, &mcp_client()).await.status, StatusCode::CREATED);
    }
    let answer = register(&h, None, &mcp_client()).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.json);
    assert_eq!(answer.error(), "temporarily_unavailable");
}

/// A loopback HTTP server answering every request with `body` after `delay`.
async fn document_server(body: String, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                tokio::time::sleep(delay).await;
                ([(header::CONTENT_TYPE, "application/json")], body)
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn dev_mode() -> RegistrationConfig {
    RegistrationConfig {
        danger_allow_http_loopback_metadata_documents: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn mismatched_or_http_documents_are_refused() {
    let document = json!({
        "client_id": "http://127.0.0.1:1/other.json",
        "redirect_uris": ["http://127.0.0.1:33418/callback"],
    });
    let base = document_server(document.to_string(), Duration::ZERO).await;
    let url = format!("{base}/client.json");
    let h = Harness::new();
    h.state.set_registration(dev_mode());
    // The document names another URL as its client_id.
    let error = resolve_client(&h.state, &url).await.unwrap_err();
    assert_eq!(error.code(), "invalid_client");

    // Without danger mode, an http loopback URL is not even fetched.
    let strict = Harness::new();
    let error = resolve_client(&strict.state, &url).await.unwrap_err();
    assert_eq!(error.code(), "invalid_client");
    // Neither are plain client ids that are no registered client.
    let error = resolve_client(&strict.state, "no-such-client").await.unwrap_err();
    assert_eq!(error.code(), "invalid_client");
}

#[tokio::test]
async fn a_matching_document_is_a_public_client_and_is_cached() {
    // A server whose document names its own URL: bind first, then serve.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp/client.json", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let document = json!({
        "client_id": url,
        "client_name": "Loopback MCP client",
        "redirect_uris": ["http://127.0.0.1:33418/callback"],
    })
    .to_string();
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/mcp/client.json",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let document = document.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], document) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let h = Harness::new();
    h.state.set_registration(dev_mode());
    let client = resolve_client(&h.state, &url).await.unwrap();
    assert_eq!(client.client_id, url);
    assert_eq!(client.source, ClientSource::MetadataDocument);
    assert!(client.public);
    assert_eq!(client.name, "Loopback MCP client");
    assert_eq!(client.redirect_uris, ["http://127.0.0.1:33418/callback"]);
    assert_eq!(client.grant_types, ["authorization_code"]);
    resolve_client(&h.state, &url).await.unwrap();
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "cached");
    h.clock.advance(bridge::cimd::CACHE_TTL_SECS);
    resolve_client(&h.state, &url).await.unwrap();
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "fetched again after the TTL"
    );
    // A metadata-document client cannot authenticate at the token endpoint with a secret.
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &url),
        ("client_secret", "x"),
    ]);
    assert_eq!(h.post_form("/token", None, &body).await.error(), "invalid_client");
}

#[tokio::test]
async fn oversized_and_slow_documents_are_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let big_url = format!("{base}/big.json");
    let slow_url = format!("{base}/slow.json");
    let big = json!({
        "client_id": big_url,
        "redirect_uris": ["http://127.0.0.1/cb"],
        "client_name": "x".repeat(100),
        "padding": "p".repeat(bridge::cimd::MAX_DOCUMENT_BYTES),
    })
    .to_string();
    let slow = json!({"client_id": slow_url, "redirect_uris": ["http://127.0.0.1/cb"]}).to_string();
    let app = axum::Router::new()
        .route("/big.json", axum::routing::get(move || std::future::ready(big.clone())))
        .route(
            "/slow.json",
            axum::routing::get(move || {
                let slow = slow.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    slow
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let h = Harness::new();
    h.state.set_registration(dev_mode());
    let error = resolve_client(&h.state, &big_url).await.unwrap_err();
    assert_eq!(error.code(), "invalid_client");

    let resolver = Resolver::new(ResolverConfig {
        danger_allow_http_loopback: true,
        timeout: Duration::from_millis(500),
        ..Default::default()
    });
    let error = resolver.resolve(&slow_url, START).await.unwrap_err();
    assert_eq!(error.code(), "invalid_client");
    // The failure is remembered briefly: no second fetch (it answers at once).
    let error = tokio::time::timeout(Duration::from_secs(20), resolver.resolve(&slow_url, START + 1))
        .await
        .expect("a remembered failure answers without fetching")
        .unwrap_err();
    assert_eq!(error.code(), "invalid_client");
}

#[tokio::test]
async fn cors_on_cookie_free_endpoints_only() {
    let h = Harness::new();
    // Preflight for a browser-based MCP client's token request.
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/token")
        .header(header::ORIGIN, "http://localhost:6274")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type, authorization")
        .body(Body::empty())
        .unwrap();
    let answer = h.send(preflight).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let methods = answer.headers[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed = answer.headers[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
    assert!(
        allowed.contains("Authorization") && allowed.contains("Content-Type"),
        "{allowed}"
    );
    assert!(answer.headers.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());

    for path in ["/.well-known/oauth-authorization-server", "/jwks.json"] {
        let request = Request::get(path)
            .header(header::ORIGIN, "http://localhost:6274")
            .body(Body::empty())
            .unwrap();
        let answer = h.send(request).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{path}");
    }
    // The actual registration from a browser.
    let request = Request::post("/register")
        .header(header::ORIGIN, "http://localhost:6274")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(mcp_client().to_string()))
        .unwrap();
    let answer = h.send(request).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    // An error answer carries CORS too, so the page can read the error.
    let request = Request::post("/token")
        .header(header::ORIGIN, "http://localhost:6274")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("grant_type=client_credentials"))
        .unwrap();
    let answer = h.send(request).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    // Browser pages (authorize, login, consent) and anything else: no CORS.
    for path in ["/authorize", "/login", "/consent"] {
        let request = Request::builder()
            .method("OPTIONS")
            .uri(path)
            .header(header::ORIGIN, "http://localhost:6274")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap();
        let answer = h.send(request).await;
        assert!(
            answer.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "{path}"
        );
        let request = Request::get(path)
            .header(header::ORIGIN, "http://localhost:6274")
            .body(Body::empty())
            .unwrap();
        let answer = h.send(request).await;
        assert!(
            answer.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_registered_device_client_completes_the_device_flow() {
    use super::device::{Setup, add_user, approved, claims, poll, refresh};
    const DEVICE: &str = "urn:ietf:params:oauth:grant-type:device_code";
    let h = Harness::new();
    h.state.set_registration(with_iat(true));
    add_user(&h, "alice", "wonderland");
    // A public device-only client: no redirect URIs, no response types, no credentials needed.
    let answer = register(
        &h,
        None,
        &json!({
            "client_name": "Headless agent",
            "token_endpoint_auth_method": "none",
            "grant_types": [DEVICE, "refresh_token"],
            "scope": "openid read",
        }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let j = &answer.json;
    assert_eq!(j["grant_types"], json!([DEVICE, "refresh_token"]));
    assert_eq!(j["redirect_uris"], json!([]));
    assert_eq!(j["response_types"], json!([]));
    assert_eq!(j["token_endpoint_auth_method"], "none");
    assert!(j.get("client_secret").is_none(), "{j}");
    let client_id = j["client_id"].as_str().unwrap().to_owned();
    let token = j["registration_access_token"].as_str().unwrap().to_owned();
    let read = with_bearer(&h, "GET", &format!("/register/{client_id}"), &token).await;
    assert_eq!(
        read.json["grant_types"],
        json!([DEVICE, "refresh_token"]),
        "{}",
        read.json
    );

    // The whole flow with it: device authorization, the verification page, polling, refresh.
    let s = Setup { h, client_id };
    let started = approved(&s).await;
    let tokens = poll(&s.h, &s.client_id, started["device_code"].as_str().unwrap()).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.json);
    assert_eq!(tokens.json["scope"], "openid read");
    assert_eq!(
        claims(tokens.json["access_token"].as_str().unwrap())["client_id"],
        s.client_id.as_str()
    );
    assert_eq!(
        claims(tokens.json["id_token"].as_str().unwrap())["aud"],
        s.client_id.as_str()
    );
    // Day 20: a refresh is a use of the public client; the sweep writes it back, so the client
    // does not expire 30 days after its registration while in use.
    let day = 86_400;
    s.h.clock.advance(20 * day);
    let refreshed = refresh(&s.h, &s.client_id, tokens.json["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.json);
    assert_eq!(
        bridge::registration::sweep_node(&s.h.state, s.h.state.now()).unwrap(),
        1
    );
    let record = s.h.state.view().clients[&s.client_id].record.clone();
    assert_eq!(record.dynamic_registration.unwrap().last_used, START + 20 * day);
    s.h.clock.advance(10 * day);
    assert_eq!(
        bridge::registration::sweep_node(&s.h.state, s.h.state.now()).unwrap(),
        0
    );
    assert!(s.h.state.view().clients.contains_key(&s.client_id));

    // A confidential device client (with an initial access token) authenticates with its secret.
    let answer = register(
        &s.h,
        Some(IAT),
        &json!({"token_endpoint_auth_method": "client_secret_basic", "grant_types": [DEVICE]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let (id, secret) = (
        answer.json["client_id"].as_str().unwrap(),
        answer.json["client_secret"].as_str().unwrap(),
    );
    let started = s.h.post_form("/device_authorization", Some((id, secret)), "").await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.json);
    let body = form(&[
        ("grant_type", DEVICE),
        ("device_code", started.json["device_code"].as_str().unwrap()),
    ]);
    let pending = s.h.post_form("/token", Some((id, secret)), &body).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);
    let anonymous =
        s.h.post_form("/device_authorization", None, &form(&[("client_id", id)]))
            .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.json);

    // Still refused: a public client asking for client_credentials next to the device grant.
    let answer = register(
        &s.h,
        None,
        &json!({"token_endpoint_auth_method": "none", "grant_types": [DEVICE, "client_credentials"]}),
    )
    .await;
    assert_eq!(answer.error(), "invalid_client_metadata", "{}", answer.json);
}
