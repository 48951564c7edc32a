//! `/token`, metadata and JWKS.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bridge::keys::Alg;
use bridge::node::AdminRequest;
use serde_json::Value;

use super::harness::*;

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&unb64(payload)).unwrap()
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(token.split('.').next().unwrap())).unwrap()
}

#[tokio::test]
async fn client_credentials_issues_an_rfc9068_token() {
    let h = Harness::new();
    let (id, secret) = h.client("read write", &[], None);
    let answer = h.token(&id, &secret, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(answer.json["token_type"], "Bearer");
    assert_eq!(answer.json["expires_in"], 600);
    assert_eq!(answer.json["scope"], "read write");
    let token = answer.json["access_token"].as_str().unwrap();
    let header = header_of(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    let c = claims(token);
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["sub"], id.as_str());
    assert_eq!(c["client_id"], id.as_str());
    assert_eq!(c["aud"], ISSUER);
    assert_eq!(c["iat"], START);
    assert_eq!(c["nbf"], START);
    assert_eq!(c["exp"], START + 600);
    assert!(c["jti"].as_str().unwrap().len() >= 16);
    assert!(c["node"].as_str().unwrap().starts_with("did:key:z6Mk"));
    assert_eq!(
        c["cap"],
        serde_json::json!([{"with": ISSUER, "can": "read"}, {"with": ISSUER, "can": "write"}])
    );
}

#[tokio::test]
async fn post_authentication_and_scope_narrowing() {
    let h = Harness::new();
    let (id, secret) = h.client("read write", &[], None);
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &id),
        ("client_secret", &secret),
        ("scope", "write"),
    ]);
    let answer = h.post_form("/token", None, &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["scope"], "write");
}

#[tokio::test]
async fn resource_and_audience_become_aud() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &["https://api.one/", "https://api.two/", "urn:three"], None);
    let answer = h.token(&id, &secret, "").await;
    let c = claims(answer.json["access_token"].as_str().unwrap());
    assert_eq!(
        c["aud"],
        serde_json::json!(["https://api.one/", "https://api.two/", "urn:three"])
    );
    let answer = h
        .token(&id, &secret, "&resource=https%3A%2F%2Fapi.two%2F&audience=urn%3Athree")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let c = claims(answer.json["access_token"].as_str().unwrap());
    assert_eq!(c["aud"], serde_json::json!(["https://api.two/", "urn:three"]));
    assert_eq!(c["cap"].as_array().unwrap().len(), 2);
    let answer = h.token(&id, &secret, "&resource=https%3A%2F%2Fevil.example%2F").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "invalid_target")
    );
    let answer = h.token(&id, &secret, "&resource=not-absolute").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "invalid_target")
    );
}

#[tokio::test]
async fn per_client_algorithms() {
    let h = Harness::new();
    for alg in [Alg::ES256, Alg::RS256] {
        let (id, secret) = h.client("read", &[], Some(alg));
        let answer = h.token(&id, &secret, "").await;
        let token = answer.json["access_token"].as_str().unwrap();
        assert_eq!(header_of(token)["alg"], alg.as_str());
        assert_eq!(h.introspect(&id, &secret, token).await["active"], true);
    }
}

#[tokio::test]
async fn bad_requests_get_exact_errors() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    type Case<'a> = (Option<(&'a str, &'a str)>, String, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            Some((&id, "wrong")),
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            Some(("nobody", &secret)),
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            None,
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            Some((&id, &secret)),
            "grant_type=password&username=a&password=b".into(),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            Some((&id, &secret)),
            "grant_type=client_credentials&scope=admin".into(),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            Some((&id, &secret)),
            "scope=read".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some((&id, &secret)),
            "grant_type=client_credentials&scope=read&scope=read".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some((&id, &secret)),
            "grant_type=client_credentials&grant_type=client_credentials".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some((&id, &secret)),
            format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (basic, body, status, error) in cases {
        let answer = h.post_form("/token", basic, &body).await;
        assert_eq!(
            (answer.status, answer.error()),
            (status, error),
            "{body}: {}",
            answer.json
        );
        assert!(answer.json["error_description"].is_string());
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                answer.headers[header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic")
            );
        }
    }

    // A client registered without client_credentials (introspection only).
    let rs = h
        .admin(AdminRequest::ClientAdd {
            name: "resource server".into(),
            grants: vec![],
            scopes: vec![],
            audiences: vec![],
            token_alg: None,
            jwks: None,
            secret: None,
            degradation: None,
        })
        .unwrap();
    let answer = h
        .token(
            rs["client_id"].as_str().unwrap(),
            rs["client_secret"].as_str().unwrap(),
            "",
        )
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "unauthorized_client")
    );

    // JSON body.
    let request = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, basic_header(&id, &secret))
        .body(Body::from(r#"{"grant_type":"client_credentials"}"#))
        .unwrap();
    let answer = h.send(request).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    // 2 MiB body, with and without a Content-Length.
    let big = format!("grant_type=client_credentials&pad={}", "a".repeat(2 * 1024 * 1024));
    let answer = h.post_form("/token", Some((&id, &secret)), &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error(), "invalid_request");
    let stream = futures_stream(big.into_bytes());
    let request = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(stream)
        .unwrap();
    assert_eq!(h.send(request).await.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Unknown endpoint and wrong method answer in the OAuth error format too.
    let answer = h.get("/nope").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::NOT_FOUND, "invalid_request")
    );
    let answer = h.get("/token").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::METHOD_NOT_ALLOWED, "invalid_request")
    );

    // Still healthy.
    assert_eq!(h.token(&id, &secret, "").await.status, StatusCode::OK);
}

fn futures_stream(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(tokio_stream_iter(chunks))
}

fn tokio_stream_iter<T: Send + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send + 'static {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    impl<T> Unpin for Iter<T> {}
    Iter(items.into_iter())
}

#[tokio::test]
async fn metadata_follows_rfc8414() {
    let h = Harness::new();
    let answer = h.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(answer.status, StatusCode::OK);
    let m = &answer.json;
    assert_eq!(m["issuer"], ISSUER);
    assert_eq!(m["token_endpoint"], format!("{ISSUER}/token"));
    assert_eq!(m["jwks_uri"], format!("{ISSUER}/jwks.json"));
    assert_eq!(m["introspection_endpoint"], format!("{ISSUER}/introspect"));
    assert_eq!(m["revocation_endpoint"], format!("{ISSUER}/revoke"));
    assert!(m["response_types_supported"].is_array());
    assert_eq!(
        m["grant_types_supported"],
        serde_json::json!([
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ])
    );
    assert_eq!(m["authorization_endpoint"], format!("{ISSUER}/authorize"));
    // The OIDC discovery document is the same metadata.
    assert_eq!(h.get("/.well-known/openid-configuration").await.json, *m);
}

#[tokio::test]
async fn issuer_with_a_path_serves_under_it() {
    let issuer = "https://auth.corp/tenant-a";
    let h = Harness::with_issuer(issuer);
    let answer = h.get("/.well-known/oauth-authorization-server/tenant-a").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["issuer"], issuer);
    assert_eq!(answer.json["token_endpoint"], format!("{issuer}/token"));
    let (id, secret) = h.client("read", &[], None);
    let body = "grant_type=client_credentials";
    assert_eq!(
        h.post_form("/tenant-a/token", Some((&id, &secret)), body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn jwks_lists_every_key_with_thumbprint_kids() {
    let h = Harness::new();
    let answer = h.get("/jwks.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let keys = answer.json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for key in keys {
        assert_eq!(key["kid"], bridge::keys::thumbprint(key).as_str());
        assert!(key.get("d").is_none(), "private member published: {key}");
        assert_eq!(key["use"], "sig");
    }
}

#[tokio::test]
async fn secret_rotation_keeps_the_old_secret_for_the_grace_period() {
    let h = Harness::new();
    let (id, old) = h.client("read", &[], None);
    let answer = h
        .admin(AdminRequest::ClientRotateSecret {
            client_id: id.clone(),
            grace_secs: 60,
        })
        .unwrap();
    let new = answer["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(h.token(&id, &old, "").await.status, StatusCode::OK);
    assert_eq!(h.token(&id, &new, "").await.status, StatusCode::OK);
    h.clock.advance(61);
    assert_eq!(h.token(&id, &old, "").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.token(&id, &new, "").await.status, StatusCode::OK);
}

#[tokio::test]
async fn imported_secrets_use_argon2() {
    let h = Harness::new();
    let answer = h
        .admin(AdminRequest::ClientAdd {
            name: "imported".into(),
            grants: vec!["client_credentials".into()],
            scopes: vec!["read".into()],
            audiences: vec![],
            token_alg: None,
            jwks: None,
            secret: Some("hunter2".into()),
            degradation: None,
        })
        .unwrap();
    let id = answer["client_id"].as_str().unwrap();
    let stored = h
        .state
        .with_node(|node| Ok((serde_json::to_string(&node.state().clients[id]).unwrap(), vec![])))
        .unwrap();
    assert!(stored.contains("$argon2id$"), "no argon2 hash stored: {stored}");
    assert!(!stored.contains("hunter2"), "the plaintext secret is stored");
    assert_eq!(h.token(id, "hunter2", "").await.status, StatusCode::OK);
    assert_eq!(
        h.token(id, "hunter2", "").await.status,
        StatusCode::OK,
        "cached verification"
    );
    assert_eq!(h.token(id, "hunter3", "").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn private_key_jwt_authenticates_once_per_assertion() {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let h = Harness::new();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()), "kid": "k1"}]});
    let answer = h
        .admin(AdminRequest::ClientAdd {
            name: "pkjwt".into(),
            grants: vec!["client_credentials".into()],
            scopes: vec!["read".into()],
            audiences: vec![],
            token_alg: None,
            jwks: Some(jwks),
            secret: None,
            degradation: None,
        })
        .unwrap();
    let id = answer["client_id"].as_str().unwrap().to_owned();
    let key = jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref());
    let sign = |claims: Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let hr = &h;
    let send = |assertion: String| {
        let body = form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
        ]);
        async move { hr.post_form("/token", None, &body).await }
    };
    let good =
        serde_json::json!({"iss": id, "sub": id, "aud": format!("{ISSUER}/token"), "exp": START + 60, "jti": "a1"});
    let assertion = sign(good.clone());
    assert_eq!(send(assertion.clone()).await.status, StatusCode::OK);
    let replay = send(assertion).await;
    assert_eq!(
        (replay.status, replay.error()),
        (StatusCode::UNAUTHORIZED, "invalid_client"),
        "replayed jti"
    );

    let mut issuer_aud = good.clone();
    issuer_aud["aud"] = ISSUER.into();
    issuer_aud["jti"] = "a2".into();
    assert_eq!(send(sign(issuer_aud)).await.status, StatusCode::OK);

    for (field, value) in [
        ("aud", Value::from("https://elsewhere/token")),
        ("exp", Value::from(START - 1)),
        ("exp", Value::Null),
        ("jti", Value::Null),
        ("sub", Value::from("someone-else")),
    ] {
        let mut claims = good.clone();
        claims["jti"] = format!("bad-{field}").into();
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(field);
        } else {
            claims[field] = value;
        }
        let answer = send(sign(claims)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{field}: {}", answer.json);
    }
    // HS256 keyed with the public key: refused.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"iss": id, "sub": id, "aud": ISSUER, "exp": START + 60, "jti": "hs"}),
        &jsonwebtoken::EncodingKey::from_secret(pair.public_key().as_ref()),
    )
    .unwrap();
    assert_eq!(send(hs).await.status, StatusCode::UNAUTHORIZED);
}
