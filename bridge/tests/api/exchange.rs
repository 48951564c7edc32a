//! Token exchange (RFC 8693) against an in-process upstream stub (discovery + JWKS on
//! 127.0.0.1:0, keys generated here), delegation of meshgate tokens, and the degradation policy
//! with the upstream killed.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::routing::get;
use bridge::keys::{Alg, SigningKey, published_jwk};
use bridge::node::AdminRequest;
use serde_json::{Value, json};

use super::harness::*;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// An upstream OIDC provider: discovery and a JWKS with one ES256 and one EdDSA key.
struct Stub {
    issuer: String,
    es256: SigningKey,
    eddsa: SigningKey,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Stub {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let (es256, _) = SigningKey::generate(Alg::ES256).unwrap();
        let (eddsa, _) = SigningKey::generate(Alg::EdDSA).unwrap();
        let jwks = json!({"keys": [
            published_jwk(es256.public_jwk(), es256.kid(), "ES256"),
            published_jwk(eddsa.public_jwk(), eddsa.kid(), "EdDSA"),
        ]});
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "token_endpoint": format!("{issuer}/token"),
        });
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route("/jwks", get(move || async move { axum::Json(jwks) }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            issuer,
            es256,
            eddsa,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the stub: its port refuses connections afterwards.
    async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// An upstream access token (ES256) with `claims` over the defaults.
    fn token(&self, claims: Value) -> String {
        sign(&self.es256, self.claims(claims))
    }

    fn claims(&self, extra: Value) -> Value {
        let mut claims = json!({
            "iss": self.issuer,
            "sub": "alice",
            "aud": "meshgate",
            "iat": START,
            "exp": START + 36_000,
            "scope": "upstream-scope",
        });
        for (name, value) in extra.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }
}

fn sign(key: &SigningKey, claims: Value) -> String {
    key.sign_jwt(&serde_json::to_vec(&claims).unwrap()).unwrap()
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(token.split('.').nth(1).unwrap())).unwrap()
}

fn upstreams(stub: &Stub, extra: &str) -> String {
    format!(
        "- name: corp\n  issuer: {}\n  audience: meshgate\n  algorithms: [ES256]\n  breaker: {{ failure_threshold: 1, open_for: 30s }}\n{extra}",
        stub.issuer
    )
}

/// A harness federating `stub`, its JWKS fetched.
async fn federated(stub: &Stub, extra: &str, federation: &str) -> Harness {
    let h = Harness::federated(&upstreams(stub, extra), federation);
    h.state.federation().upstreams.refresh_all().await.unwrap();
    h
}

/// Registers a token-exchange client (by the short alias); returns (id, secret).
fn exchanger(h: &Harness, scopes: &str) -> (String, String) {
    let answer = h
        .admin(AdminRequest::ClientAdd {
            name: "exchanger".into(),
            grants: vec!["token-exchange".into(), "client_credentials".into()],
            scopes: vec![scopes.into()],
            audiences: vec![],
            token_alg: None,
            jwks: None,
            secret: None,
            degradation: None,
        })
        .unwrap();
    let id = answer["client_id"].as_str().unwrap().to_owned();
    let shown = h.admin(AdminRequest::ClientShow { client_id: id.clone() }).unwrap();
    assert_eq!(shown["grant_types"], json!([EXCHANGE, "client_credentials"]));
    (id, answer["client_secret"].as_str().unwrap().into())
}

async fn exchange(h: &Harness, client: &(String, String), subject: &str, extra: &[(&str, &str)]) -> Answer {
    let mut pairs = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
    ];
    pairs.extend_from_slice(extra);
    h.post_form("/token", Some((&client.0, &client.1)), &form(&pairs)).await
}

#[tokio::test]
async fn an_upstream_token_is_exchanged_for_a_local_token() {
    let stub = Stub::start().await;
    let h = federated(&stub, "", "{}").await;
    let client = exchanger(&h, "read write");
    let subject = stub.token(json!({"exp": START + 300}));
    let answer = exchange(&h, &client, &subject, &[("scope", "read")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(answer.json["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(answer.json["token_type"], "Bearer");
    assert_eq!(answer.json["scope"], "read");
    // Never longer than the subject token.
    assert_eq!(answer.json["expires_in"], 300);
    let token = answer.json["access_token"].as_str().unwrap();
    let claims = claims_of(token);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], client.0.as_str());
    assert_eq!(claims["act"], json!({"sub": client.0}));
    assert_eq!(claims["aud"], ISSUER);
    assert_eq!(claims["exp"], START + 300);
    assert!(claims.get("degraded").is_none(), "{claims}");
    // The token is a meshgate token like any other.
    let introspected = h.introspect(&client.0, &client.1, token).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected["sub"], "alice");
    assert_eq!(introspected["act"]["sub"], client.0.as_str());

    // Default scopes: the client's; `jwt` is accepted as subject type; audience narrows aud.
    let answer = h
        .post_form(
            "/token",
            Some((&client.0, &client.1)),
            &form(&[
                ("grant_type", EXCHANGE),
                ("subject_token", &subject),
                ("subject_token_type", JWT),
                ("requested_token_type", ACCESS_TOKEN),
                ("audience", ISSUER),
            ]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["scope"], "read write");

    // An existing act is nested; the grant is advertised and counted.
    let nested = stub.token(json!({"act": {"sub": "robot"}}));
    let answer = exchange(&h, &client, &nested, &[]).await;
    let claims = claims_of(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["act"], json!({"sub": client.0, "act": {"sub": "robot"}}));
    let metadata = h.get("/.well-known/oauth-authorization-server").await;
    assert!(
        metadata.json["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(EXCHANGE))
    );
    let text = h
        .state
        .metrics()
        .render(&[], 1, &Default::default(), &h.state.upstream_gauges());
    assert!(
        text.contains(&format!(r#"meshgate_tokens_issued_total{{grant_type="{EXCHANGE}"}} 3"#)),
        "{text}"
    );
    assert!(
        text.contains(r#"meshgate_upstream_breaker_state{upstream="corp"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn every_rejection_has_its_error() {
    let stub = Stub::start().await;
    let h = federated(&stub, "", "{}").await;
    let client = exchanger(&h, "read write");
    let good = stub.token(json!({}));
    let (other, _) = SigningKey::generate(Alg::ES256).unwrap();
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "expired",
            stub.token(json!({"exp": START - 1})),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "not yet valid",
            stub.token(json!({"nbf": START + 60})),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "wrong audience",
            stub.token(json!({"aud": "someone-else"})),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "no sub",
            stub.token(json!({"sub": null})),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "algorithm not allowed",
            sign(&stub.eddsa, stub.claims(json!({}))),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "foreign key",
            sign(&other, stub.claims(json!({}))),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "foreign issuer",
            sign(&other, stub.claims(json!({"iss": "https://elsewhere.example"}))),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "not a JWT",
            "opaque-token".into(),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "tampered",
            {
                let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
                parts[1] = b64(stub.claims(json!({"sub": "mallory"})).to_string().as_bytes());
                parts.join(".")
            },
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "unsupported subject type",
            good.clone(),
            vec![("subject_token_type", "urn:ietf:params:oauth:token-type:saml2")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unsupported requested type",
            good.clone(),
            vec![("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "actor token without type",
            good.clone(),
            vec![("actor_token", good.as_str())],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "scope beyond the client",
            good.clone(),
            vec![("scope", "admin")],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "audience beyond the client",
            good.clone(),
            vec![("audience", "https://other.example")],
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
    ];
    for (name, subject, overrides, status, error) in cases {
        let mut pairs = vec![("grant_type", EXCHANGE), ("subject_token", subject.as_str())];
        if !overrides.iter().any(|(k, _)| *k == "subject_token_type") {
            pairs.push(("subject_token_type", ACCESS_TOKEN));
        }
        pairs.extend(overrides);
        let answer = h.post_form("/token", Some((&client.0, &client.1)), &form(&pairs)).await;
        assert_eq!(
            (answer.status, answer.error()),
            (status, error),
            "{name}: {}",
            answer.json
        );
    }
    // Missing parameters.
    let answer = h
        .post_form(
            "/token",
            Some((&client.0, &client.1)),
            &form(&[("grant_type", EXCHANGE), ("subject_token_type", ACCESS_TOKEN)]),
        )
        .await;
    assert_eq!(answer.error(), "invalid_request");
    let answer = h
        .post_form(
            "/token",
            Some((&client.0, &client.1)),
            &form(&[("grant_type", EXCHANGE), ("subject_token", &good)]),
        )
        .await;
    assert_eq!(answer.error(), "invalid_request");
    // A client without the grant.
    let (plain, secret) = h.client("read", &[], None);
    let answer = exchange(&h, &(plain, secret), &good, &[]).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "unauthorized_client")
    );
}

#[tokio::test]
async fn delegation_of_a_meshgate_token_only_narrows() {
    let h = Harness::new();
    let (parent_id, parent_secret) = h.client("read write", &[], None);
    let parent = h.token(&parent_id, &parent_secret, "&scope=read").await;
    let parent_token = parent.json["access_token"].as_str().unwrap().to_owned();
    let delegate = exchanger(&h, "read write admin");

    let widen = exchange(&h, &delegate, &parent_token, &[("scope", "read write")]).await;
    assert_eq!(
        (widen.status, widen.error()),
        (StatusCode::BAD_REQUEST, "invalid_scope"),
        "{}",
        widen.json
    );

    h.clock.advance(100);
    let narrowed = exchange(&h, &delegate, &parent_token, &[]).await;
    assert_eq!(narrowed.status, StatusCode::OK, "{}", narrowed.json);
    assert_eq!(narrowed.json["scope"], "read");
    let child = narrowed.json["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&child);
    assert_eq!(claims["sub"], parent_id.as_str());
    assert_eq!(claims["act"], json!({"sub": delegate.0}));
    // exp never past the parent's.
    assert_eq!(claims["exp"], START + 600);
    assert_eq!(narrowed.json["expires_in"], 500);

    // Delegating the delegated token nests the actors.
    let third = exchanger(&h, "read");
    let answer = exchange(&h, &third, &child, &[("scope", "read")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let claims = claims_of(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["act"], json!({"sub": third.0, "act": {"sub": delegate.0}}));

    // A revoked parent is refused.
    let revoke = h
        .post_form(
            "/revoke",
            Some((&parent_id, &parent_secret)),
            &form(&[("token", &parent_token)]),
        )
        .await;
    assert_eq!(revoke.status, StatusCode::OK);
    let answer = exchange(&h, &delegate, &parent_token, &[]).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
}

#[tokio::test]
async fn may_act_names_who_may_exchange() {
    let stub = Stub::start().await;
    let h = federated(&stub, "", "{}").await;
    let client = exchanger(&h, "read");
    let refused = stub.token(json!({"may_act": {"sub": "someone-else"}}));
    let answer = exchange(&h, &client, &refused, &[]).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "invalid_grant"),
        "{}",
        answer.json
    );
    let allowed = stub.token(json!({"may_act": {"sub": client.0}}));
    let answer = exchange(&h, &client, &allowed, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
}

#[tokio::test]
async fn upstream_down_issue_local_degrades_and_fail_closed_refuses() {
    let mut stub = Stub::start().await;
    // Policies by client id, as the configuration names them.
    let federation =
        "default_policy: { degraded_ttl: 60s }\nclients:\n  closed-client: { on_upstream_unavailable: fail_closed }\n";
    let h = federated(&stub, "", federation).await;
    let local = register(&h, "local-client");
    let closed = register(&h, "closed-client");
    let subject = stub.token(json!({}));
    for client in [&local, &closed] {
        let answer = exchange(&h, client, &subject, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        assert_eq!(answer.json["expires_in"], 600);
    }

    stub.kill().await;
    assert!(h.state.federation().upstreams.refresh_all().await.is_err());
    let status = &h.state.upstream_status()[0];
    assert_eq!(status.breaker.state, "open");
    assert_eq!(status.breaker.consecutive_failures, 1);
    assert_eq!(status.breaker.opened_at, Some(START));
    assert!(status.last_refresh_error.is_some());
    assert!(!status.available);

    let answer = exchange(&h, &local, &subject, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["expires_in"], 60);
    let claims = claims_of(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["degraded"], true);
    assert_eq!(claims["sub"], "alice");
    // A bad token is still refused while degraded.
    let answer = exchange(&h, &local, &stub.token(json!({"exp": START - 1})), &[]).await;
    assert_eq!(answer.error(), "invalid_grant");

    let answer = exchange(&h, &closed, &subject, &[]).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        "{}",
        answer.json
    );
    let retry: u64 = answer.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=36).contains(&retry), "Retry-After {retry}");
    assert!(answer.json.get("access_token").is_none());

    let text = h
        .state
        .metrics()
        .render(&[], 1, &Default::default(), &h.state.upstream_gauges());
    assert!(text.contains("meshgate_tokens_degraded_total 1"), "{text}");
    assert!(
        text.contains(r#"meshgate_upstream_breaker_state{upstream="corp"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn past_max_offline_or_max_stale_even_issue_local_fails_closed() {
    let mut stub = Stub::start().await;
    let federation = "default_policy: { max_offline: 72h }\nclients:\n  short-client: { max_offline: 1h }\n";
    let h = federated(&stub, "  jwks: { max_stale: 3h }\n", federation).await;
    let short = register(&h, "short-client");
    let long = register(&h, "long-client");
    let subject = stub.token(json!({}));
    stub.kill().await;
    assert!(h.state.federation().upstreams.refresh_all().await.is_err());

    h.clock.advance(2 * 3600);
    let answer = exchange(&h, &short, &subject, &[]).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        "past max_offline: {}",
        answer.json
    );
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    let answer = exchange(&h, &long, &subject, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "within max_offline: {}", answer.json);
    assert_eq!(
        claims_of(answer.json["access_token"].as_str().unwrap())["degraded"],
        true
    );

    // Past the JWKS's max_stale nothing can be verified: 503 for every client.
    h.clock.advance(2 * 3600);
    let answer = exchange(&h, &long, &subject, &[]).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        "past max_stale: {}",
        answer.json
    );
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    let status = &h.state.upstream_status()[0];
    assert!(!status.jwks.usable);
}

/// Registers a token-exchange client with a chosen id (the configuration names policies by
/// client id); returns (id, secret).
fn register(h: &Harness, id: &str) -> (String, String) {
    use sha2::Digest;
    let secret = format!("{id}-secret-0123456789abcdef");
    let record = mesh::state::ClientRecord {
        client_id: id.into(),
        name: id.into(),
        secrets: vec![mesh::state::SecretRecord {
            hash: mesh::state::SecretHash::Sha256(b64(&sha2::Sha256::digest(secret.as_bytes()))),
            expires_at: None,
        }],
        grant_types: vec![EXCHANGE.into()],
        scopes: vec!["read".into()],
        audiences: vec![],
        token_alg: "EdDSA".into(),
        jwks: None,
        created_at: START,
        degradation: None,
        dynamic_registration: None,
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        token_endpoint_auth_method: None,
        id_token_signed_response_alg: None,
        federation: None,
    };
    h.state
        .with_node(|node| {
            let changes = vec![mesh::state::Change::PutClient(record)];
            node.apply(&changes)?;
            Ok(((), changes))
        })
        .unwrap();
    (id.into(), secret)
}

#[tokio::test]
async fn the_policy_replicated_on_the_client_record_wins() {
    let mut stub = Stub::start().await;
    // The configuration says issue_local for everyone; the record says fail_closed.
    let h = federated(&stub, "", "default_policy: { degraded_ttl: 60s }\n").await;
    let policy = |mode: &str, ttl: Option<u64>| mesh::state::ClientDegradation {
        on_upstream_unavailable: Some(mode.into()),
        max_offline_secs: None,
        degraded_ttl_secs: ttl,
    };
    let answer = h
        .admin(AdminRequest::ClientAdd {
            name: "strict".into(),
            grants: vec!["token-exchange".into()],
            scopes: vec!["read".into()],
            audiences: vec![],
            token_alg: None,
            jwks: None,
            secret: None,
            degradation: Some(policy("fail_closed", None)),
        })
        .unwrap();
    let client = (
        answer["client_id"].as_str().unwrap().to_owned(),
        answer["client_secret"].as_str().unwrap().to_owned(),
    );
    let shown = h
        .admin(AdminRequest::ClientShow {
            client_id: client.0.clone(),
        })
        .unwrap();
    assert_eq!(shown["degradation"]["on_upstream_unavailable"], "fail_closed");
    let subject = stub.token(json!({}));
    assert_eq!(exchange(&h, &client, &subject, &[]).await.status, StatusCode::OK);

    stub.kill().await;
    assert!(h.state.federation().upstreams.refresh_all().await.is_err());
    let answer = exchange(&h, &client, &subject, &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.json);

    // Changed on the record: issue_local with its own degraded lifetime.
    h.admin(AdminRequest::ClientSetPolicy {
        client_id: client.0.clone(),
        degradation: Some(policy("issue_local", Some(30))),
    })
    .unwrap();
    let answer = exchange(&h, &client, &subject, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["expires_in"], 30);
    assert_eq!(
        claims_of(answer.json["access_token"].as_str().unwrap())["degraded"],
        true
    );

    // Bad policies are refused with a clear message.
    let refused = h.admin(AdminRequest::ClientSetPolicy {
        client_id: client.0.clone(),
        degradation: Some(policy("maybe", None)),
    });
    assert!(refused.unwrap_err().to_string().contains("issue_local or fail_closed"));
}

#[tokio::test]
async fn a_scope_map_bounds_exchanged_scopes_and_never_widens() {
    let stub = Stub::start().await;
    let h = federated(
        &stub,
        "  scope_map: { upstream-scope: [read], upstream-admin: [read, write] }\n",
        "{}",
    )
    .await;
    let client = exchanger(&h, "read write");
    // `upstream-scope` maps to `read` only: the default grant is `read`, asking for `write` fails.
    let subject = stub.token(json!({}));
    let answer = exchange(&h, &client, &subject, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["scope"], "read");
    let answer = exchange(&h, &client, &subject, &[("scope", "write")]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.json);
    assert_eq!(answer.json["error"], "invalid_scope");
    // `upstream-admin` maps to both; the client's own scopes still bound the grant.
    let admin = stub.token(json!({"scope": "upstream-admin"}));
    let answer = exchange(&h, &client, &admin, &[]).await;
    assert_eq!(answer.json["scope"], "read write", "{}", answer.json);
    let narrow = exchanger(&h, "read");
    let answer = exchange(&h, &narrow, &admin, &[]).await;
    assert_eq!(answer.json["scope"], "read", "{}", answer.json);
    // An unmapped upstream scope grants nothing.
    let unmapped = stub.token(json!({"scope": "write"}));
    let answer = exchange(&h, &client, &unmapped, &[("scope", "write")]).await;
    assert_eq!(answer.json["error"], "invalid_scope", "{}", answer.json);
}
