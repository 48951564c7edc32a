//! `/introspect`, `/revoke`, key rotation and restarts.

use axum::http::StatusCode;
use bridge::node::AdminRequest;
use serde_json::{Value, json};

use super::harness::*;

async fn issue(h: &Harness, id: &str, secret: &str) -> String {
    let answer = h.token(id, secret, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    answer.json["access_token"].as_str().unwrap().to_owned()
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let header = serde_json::from_slice(&unb64(it.next().unwrap())).unwrap();
    let payload = serde_json::from_slice(&unb64(it.next().unwrap())).unwrap();
    (header, payload, it.next().unwrap().to_owned())
}

fn assemble(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_inactive() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let token = issue(&h, &id, &secret).await;
    let active = h.introspect(&id, &secret, &token).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], id.as_str());
    assert_eq!(active["scope"], "read");
    assert_eq!(active["token_type"], "Bearer");

    let (header, payload, signature) = parts(&token);
    let jwks = h.get("/jwks.json").await.json;
    let ed = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["alg"] == "EdDSA")
        .unwrap()
        .clone();

    let mut none_header = header.clone();
    none_header["alg"] = "none".into();
    let alg_none = format!(
        "{}.{}.",
        b64(none_header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );

    let hs = |key: &[u8]| {
        let mut hs_header = header.clone();
        hs_header["alg"] = "HS256".into();
        let mut jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jwt_header.kid = hs_header["kid"].as_str().map(str::to_owned);
        jwt_header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&jwt_header, &payload, &jsonwebtoken::EncodingKey::from_secret(key)).unwrap()
    };
    let hs_raw = hs(&unb64(ed["x"].as_str().unwrap()));
    let hs_jwk = hs(ed.to_string().as_bytes());

    let mut tampered_payload = payload.clone();
    tampered_payload["scope"] = "read admin".into();
    let tampered = assemble(&header, &tampered_payload, &signature);

    let mut unknown_header = header.clone();
    unknown_header["kid"] = "no-such-key".into();
    let unknown_kid = assemble(&unknown_header, &payload, &signature);

    let mut untyped_header = header.clone();
    untyped_header["typ"] = "JWT".into();
    let untyped = assemble(&untyped_header, &payload, &signature);

    let other = Harness::with_issuer("http://other.test");
    let (oid, osecret) = other.client("read", &[], None);
    let foreign = issue(&other, &oid, &osecret).await;

    for (name, candidate) in [
        ("alg none", alg_none.as_str()),
        ("HS256 keyed with the public key bytes", &hs_raw),
        ("HS256 keyed with the JWK text", &hs_jwk),
        ("tampered payload", &tampered),
        ("unknown kid", &unknown_kid),
        ("typ JWT", &untyped),
        ("other issuer", &foreign),
        ("garbage", "not.a.jwt"),
        ("empty segments", ".."),
        ("huge", &"a".repeat(20_000)),
    ] {
        let answer = h.introspect(&id, &secret, candidate).await;
        assert_eq!(answer, json!({"active": false}), "{name}");
    }
    assert_eq!(
        h.introspect(&id, &secret, &token).await["active"],
        true,
        "server still healthy"
    );
}

#[tokio::test]
async fn tokens_expire_by_the_injected_clock() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let token = issue(&h, &id, &secret).await;
    h.clock.advance(599);
    assert_eq!(h.introspect(&id, &secret, &token).await["active"], true);
    h.clock.advance(1);
    assert_eq!(h.introspect(&id, &secret, &token).await["active"], false);
}

#[tokio::test]
async fn introspection_requires_client_authentication() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let token = issue(&h, &id, &secret).await;
    let answer = h.post_form("/introspect", None, &form(&[("token", &token)])).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let answer = h
        .post_form("/introspect", Some((&id, "wrong")), &form(&[("token", &token)]))
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = h.post_form("/introspect", Some((&id, &secret)), "").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn revocation_is_per_client_and_persists() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let (other, other_secret) = h.client("read", &[], None);
    let token = issue(&h, &id, &secret).await;

    let answer = h
        .post_form("/revoke", Some((&other, &other_secret)), &form(&[("token", &token)]))
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "unauthorized_client")
    );
    assert_eq!(h.introspect(&id, &secret, &token).await["active"], true);

    for unknown in ["garbage", "a.b.c"] {
        let answer = h
            .post_form("/revoke", Some((&id, &secret)), &form(&[("token", unknown)]))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let answer = h
        .post_form(
            "/revoke",
            Some((&id, &secret)),
            &form(&[("token", &token), ("token_type_hint", "access_token")]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(h.introspect(&id, &secret, &token).await["active"], false);

    let h = h.restart();
    assert_eq!(
        h.introspect(&id, &secret, &token).await["active"],
        false,
        "revocation survives a restart"
    );
}

#[tokio::test]
async fn clients_keys_and_tokens_survive_a_restart() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let token = issue(&h, &id, &secret).await;
    let did = h.admin(AdminRequest::Status).unwrap()["did"].clone();
    let jwks = h.get("/jwks.json").await.json;
    let h = h.restart();
    assert_eq!(h.admin(AdminRequest::Status).unwrap()["did"], did);
    assert_eq!(h.get("/jwks.json").await.json, jwks);
    assert_eq!(h.introspect(&id, &secret, &token).await["active"], true);
    assert_eq!(h.token(&id, &secret, "").await.status, StatusCode::OK);
}

#[tokio::test]
async fn removed_clients_lose_their_tokens() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let (rs, rs_secret) = h.client("read", &[], None);
    let token = issue(&h, &id, &secret).await;
    h.admin(AdminRequest::ClientRemove { client_id: id.clone() }).unwrap();
    assert_eq!(h.introspect(&rs, &rs_secret, &token).await["active"], false);
    assert_eq!(h.token(&id, &secret, "").await.status, StatusCode::UNAUTHORIZED);
    assert!(h.admin(AdminRequest::ClientRemove { client_id: id }).is_err());
}

#[tokio::test]
async fn rotated_keys_stay_published_until_their_tokens_expire() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let before = issue(&h, &id, &secret).await;
    let old_kid = parts(&before).0["kid"].as_str().unwrap().to_owned();

    h.clock.advance(100);
    h.admin(AdminRequest::KeysRotate).unwrap();
    let after = issue(&h, &id, &secret).await;
    let new_kid = parts(&after).0["kid"].as_str().unwrap().to_owned();
    assert_ne!(old_kid, new_kid);
    let kids = |jwks: Value| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let published = kids(h.get("/jwks.json").await.json);
    assert_eq!(published.len(), 6);
    assert!(published.contains(&old_kid) && published.contains(&new_kid));
    assert_eq!(h.introspect(&id, &secret, &before).await["active"], true);

    // Every token of the old key expires 600 s after the rotation at the latest.
    h.clock.advance(600);
    let published = kids(h.get("/jwks.json").await.json);
    assert_eq!(published.len(), 3, "{published:?}");
    assert!(!published.contains(&old_kid));
    let now = START + 700;
    let changes = h
        .state
        .with_node(|node| node.expire(now, 600).map(|c| (c.clone(), c)))
        .unwrap();
    assert_eq!(changes.len(), 3);
    let files = std::fs::read_dir(h.dir.path().join("data/keys")).unwrap().count();
    assert_eq!(files, 5, "identity, next identity key + three active signing keys");
    let fresh = issue(&h, &id, &secret).await;
    assert_eq!(parts(&fresh).0["kid"], new_kid.as_str());
    assert_eq!(h.introspect(&id, &secret, &fresh).await["active"], true);
    assert_eq!(h.introspect(&id, &secret, &before).await["active"], false);
}

#[tokio::test]
async fn the_identity_key_rotates_without_changing_the_did_or_invalidating_tokens() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let before = issue(&h, &id, &secret).await;
    let did = h.admin(AdminRequest::Status).unwrap()["did"].clone();
    let rotated = h.admin(AdminRequest::IdRotate).unwrap();
    assert_eq!((&rotated["did"], &rotated["seq"]), (&did, &serde_json::json!(1)));
    // Keys attested before the rotation stay valid; keys attested after it verify too.
    assert_eq!(h.introspect(&id, &secret, &before).await["active"], true);
    h.clock.advance(10);
    h.admin(AdminRequest::KeysRotate).unwrap();
    let after = issue(&h, &id, &secret).await;
    assert_eq!(h.introspect(&id, &secret, &after).await["active"], true);
    assert_eq!(h.get("/jwks.json").await.json["keys"].as_array().unwrap().len(), 6);
    // After a restart the rotated key files load, agree with the published events, and rotate on.
    let h = h.restart();
    assert_eq!(h.admin(AdminRequest::Status).unwrap()["did"], did);
    assert_eq!(h.introspect(&id, &secret, &before).await["active"], true);
    assert_eq!(h.introspect(&id, &secret, &after).await["active"], true);
    let again = h.admin(AdminRequest::IdRotate).unwrap();
    assert_eq!((&again["did"], &again["seq"]), (&did, &serde_json::json!(2)));
    assert_ne!(again["key"], rotated["key"]);
    let keys = h
        .state
        .with_node(|node| Ok((node.state().key_events.len(), vec![])))
        .unwrap();
    assert_eq!(keys, 3, "inception and two rotations");
}

#[tokio::test]
async fn metrics_count_requests_with_bounded_labels() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    for _ in 0..3 {
        issue(&h, &id, &secret).await;
    }
    h.token(&id, "wrong", "").await;
    let text = h.state.metrics().render(&[], 1, &Default::default(), &[]);
    assert!(
        text.contains(r#"meshgate_http_requests_total{endpoint="token",status="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meshgate_http_requests_total{endpoint="token",status="401"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meshgate_tokens_issued_total{grant_type="client_credentials"} 3"#),
        "{text}"
    );
    assert!(!text.contains(&id), "no per-client labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_are_committed_together_and_all_persist() {
    let h = Harness::new();
    let (id, secret) = h.client("read", &[], None);
    let mut tokens = Vec::new();
    for _ in 0..40 {
        tokens.push(issue(&h, &id, &secret).await);
    }
    // Forty revocations at once, each on its own task: they queue behind each other's commits and
    // are applied in batches (see bridge::commit); every request still answers only once its
    // revocation is durable.
    let mut requests = tokio::task::JoinSet::new();
    for token in &tokens {
        let state = h.state.clone();
        let request = axum::http::Request::post("/revoke")
            .header(axum::http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(axum::http::header::AUTHORIZATION, basic_header(&id, &secret))
            .body(axum::body::Body::from(form(&[("token", token)])))
            .unwrap();
        requests.spawn(async move {
            use tower::ServiceExt;
            bridge::http::app(state).oneshot(request).await.unwrap().status()
        });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    for token in &tokens {
        assert_eq!(h.introspect(&id, &secret, token).await["active"], false);
    }
    assert_eq!(h.state.read_state(|s| s.revocations.len()), 40);
    let h = h.restart();
    assert_eq!(
        h.state.read_state(|s| s.revocations.len()),
        40,
        "every revocation survives a restart"
    );
    for token in &tokens {
        assert_eq!(h.introspect(&id, &secret, token).await["active"], false);
    }
}
