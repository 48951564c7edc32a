//! Offline verification of upstream tokens: what is accepted, what is refused and why.

use std::time::{Duration, Instant};

use adapters::Error;
use adapters::clock::ManualClock;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::{CLIENT_ID, FakeIdp, TestKey, jwks, signing_input};
use crate::{AUDIENCE, NOW, claims, config, now, upstream, with};

#[tokio::test]
async fn valid_tokens_of_each_algorithm_verify_offline() {
    let (ed, ec, rsa) = (
        TestKey::ed25519("ed-1"),
        TestKey::es256("ec-1"),
        TestKey::rs256("rsa-1"),
    );
    let idp = FakeIdp::start(jwks(&[&ed, &ec, &rsa])).await;
    let clock = ManualClock::new(now());
    let upstream = upstream(&config(&idp), &clock, None);
    upstream.oidc().refresh().await.unwrap();
    let metadata = upstream.oidc().metadata().unwrap();
    assert_eq!(
        metadata.token_endpoint.as_ref().unwrap().as_str(),
        format!("{}/token", idp.url())
    );

    for key in [&ed, &ec, &rsa] {
        let token = key.sign(&claims(&idp));
        let verified = upstream.oidc().verify(&token, now()).await.unwrap();
        assert_eq!(verified.issuer, idp.url());
        assert_eq!(verified.subject.as_deref(), Some("agent-7"));
        assert_eq!(verified.audience, [AUDIENCE, "other"]);
        assert_eq!(verified.expires_at, NOW + 300);
        assert_eq!(verified.key_id.as_deref(), Some(key.kid.as_str()));
        assert_eq!(verified.algorithm.as_str(), key.alg);
        assert_eq!(verified.scopes(), ["read", "write"]);
        assert_eq!(verified.client_id(), Some(CLIENT_ID));
    }
    // `exp` one second ahead and `nbf` now are still valid; a single-string `aud` is fine.
    let edge = with(with(claims(&idp), "exp", json!(NOW + 1)), "nbf", json!(NOW));
    upstream
        .oidc()
        .verify(&ed.sign(&with(edge, "aud", json!(AUDIENCE))), now())
        .await
        .unwrap();
    assert_eq!(
        (idp.hits("discovery"), idp.hits("jwks")),
        (1, 1),
        "verification called the upstream"
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_clear_errors() {
    let (ed, rsa) = (TestKey::ed25519("ed-1"), TestKey::rs256("rsa-1"));
    let idp = FakeIdp::start(jwks(&[&ed, &rsa])).await;
    let clock = ManualClock::new(now());
    let upstream = upstream(&config(&idp), &clock, None);
    upstream.oidc().refresh().await.unwrap();
    let oidc = upstream.oidc();
    let good = claims(&idp);

    let cases: Vec<(&str, String, Expectation)> = vec![
        (
            "wrong issuer",
            ed.sign(&with(good.clone(), "iss", json!("https://evil.example"))),
            |e| matches!(e, Error::WrongIssuer),
        ),
        (
            "no issuer",
            ed.sign(&{
                let mut claims = good.clone();
                claims.as_object_mut().unwrap().remove("iss");
                claims
            }),
            |e| matches!(e, Error::MissingClaim("iss")),
        ),
        (
            "wrong audience",
            ed.sign(&with(good.clone(), "aud", json!(["someone-else"]))),
            |e| matches!(e, Error::WrongAudience),
        ),
        (
            "expired",
            ed.sign(&with(good.clone(), "exp", json!(NOW))),
            |e| matches!(e, Error::Expired { exp } if *exp == NOW),
        ),
        (
            "not yet valid",
            ed.sign(&with(good.clone(), "nbf", json!(NOW + 1))),
            |e| matches!(e, Error::NotYetValid { nbf } if *nbf == NOW + 1),
        ),
        (
            "no exp",
            ed.sign(&{
                let mut claims = good.clone();
                claims.as_object_mut().unwrap().remove("exp");
                claims
            }),
            |e| matches!(e, Error::MissingClaim("exp")),
        ),
        (
            "alg none",
            format!("{}.", signing_input(&json!({"alg": "none", "kid": "ed-1"}), &good)),
            |e| matches!(e, Error::AlgorithmNotAllowed(alg) if alg == "none"),
        ),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key(&rsa, &good),
            |e| matches!(e, Error::AlgorithmNotAllowed(alg) if alg == "HS256"),
        ),
        (
            "ES256 header on an Ed25519 key",
            ed.sign_with_header(&json!({"alg": "ES256", "kid": "ed-1"}), &good),
            |e| matches!(e, Error::KeyAlgorithmMismatch { kid, alg: "ES256" } if kid == "ed-1"),
        ),
        (
            "PS256 header on an RS256-only key",
            rsa.sign_with_header(&json!({"alg": "PS256", "kid": "rsa-1"}), &good),
            |e| matches!(e, Error::KeyAlgorithmMismatch { .. }),
        ),
        ("tampered claims", tamper(&ed.sign(&good)), |e| {
            matches!(e, Error::InvalidSignature)
        }),
        (
            "signed by another key with a known kid",
            TestKey::ed25519("ed-1").sign(&good),
            |e| matches!(e, Error::InvalidSignature),
        ),
        ("not a JWT", "not-a-jwt".into(), |e| {
            matches!(e, Error::MalformedToken(_))
        }),
        ("a JWE", "a.b.c.d.e".into(), |e| matches!(e, Error::MalformedToken(_))),
        (
            "critical header",
            ed.sign_with_header(&json!({"alg": "EdDSA", "kid": "ed-1", "crit": ["exp"]}), &good),
            |e| matches!(e, Error::MalformedToken(_)),
        ),
        (
            "unknown kid",
            TestKey::ed25519("nobody").sign(&good),
            |e| matches!(e, Error::UnknownKey { kid: Some(kid) } if kid == "nobody"),
        ),
    ];
    for (name, token, expected) in cases {
        let error = oidc.verify(&token, now()).await.unwrap_err();
        assert!(expected(&error), "{name}: got {error:?}");
        assert!(error.is_invalid_token(), "{name}: {error:?}");
        assert!(!error.is_upstream_failure(), "{name}: {error:?}");
        let message = error.to_string();
        assert!(!message.is_empty() && !message.contains(&token), "{name}: {message}");
    }
    // Only the unknown kid caused a (single) refresh.
    assert_eq!(idp.hits("jwks"), 2);
}

/// Whether an error is the one a case expects.
type Expectation = fn(&Error) -> bool;

/// A token whose header says HS256 and whose MAC is keyed with the RSA key's public JWK, the
/// classic algorithm-confusion attack.
fn hs256_with_public_key(key: &TestKey, claims: &Value) -> String {
    let input = signing_input(&json!({"alg": "HS256", "kid": key.kid}), claims);
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key.jwk.to_string().as_bytes()),
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
}

fn tamper(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["scope"] = json!("admin");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    parts.join(".")
}

#[tokio::test]
async fn verification_does_not_wait_on_a_frozen_upstream() {
    let key = TestKey::ed25519("k1");
    let idp = FakeIdp::start(jwks(&[&key])).await;
    let clock = ManualClock::new(now());
    let upstream = upstream(&config(&idp), &clock, None);
    upstream.oidc().refresh().await.unwrap();
    idp.set(|state| state.frozen = true);

    let claims = claims(&idp);
    let started = Instant::now();
    let error = upstream
        .oidc()
        .verify(&TestKey::ed25519("k2").sign(&claims), now())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownKey { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    // Known keys never touch the upstream.
    upstream.oidc().verify(&key.sign(&claims), now()).await.unwrap();
}
