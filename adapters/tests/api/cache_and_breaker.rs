//! The JWKS cache (refresh, rate limit, disk, staleness), bad upstream documents, the breaker.

use std::time::{Duration, Instant};

use adapters::Error;
use adapters::breaker::State;
use adapters::clock::{Clock, ManualClock};
use adapters::config::Issuer;
use serde_json::json;

use crate::support::{Canned, FakeIdp, TestKey, jwks};
use crate::{NOW, claims, config, now, upstream, with};

#[tokio::test]
async fn an_unknown_kid_refreshes_once_and_refreshes_are_rate_limited() {
    let old = TestKey::ed25519("k-old");
    let idp = FakeIdp::start(jwks(&[&old])).await;
    let clock = ManualClock::new(now());
    let upstream = upstream(&config(&idp), &clock, None);
    upstream.oidc().refresh().await.unwrap();
    assert_eq!(idp.hits("jwks"), 1);

    // Rotation: the upstream signs with a new key the cache does not know yet.
    let new = TestKey::es256("k-new");
    idp.set(|state| state.jwks = jwks(&[&old, &new]));
    let claims = claims(&idp);
    let verified = upstream.oidc().verify(&new.sign(&claims), now()).await.unwrap();
    assert_eq!(verified.key_id.as_deref(), Some("k-new"));
    assert_eq!(idp.hits("jwks"), 2);

    // Within 30 s, made-up and newly rotated kids alike cause no further upstream calls.
    let newer = TestKey::rs256("k-newer");
    idp.set(|state| state.jwks = jwks(&[&new, &newer]));
    clock.advance(Duration::from_secs(10));
    for kid in ["bogus-1", "bogus-2", "bogus-3"] {
        let error = upstream
            .oidc()
            .verify(&TestKey::ed25519(kid).sign(&claims), clock.now())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::UnknownKey { .. }), "{error:?}");
    }
    let error = upstream
        .oidc()
        .verify(&newer.sign(&claims), clock.now())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownKey { .. }), "{error:?}");
    assert_eq!(idp.hits("jwks"), 2);
    // Verification never refreshes at all with verify_offline.
    assert!(
        upstream
            .oidc()
            .verify_offline(&newer.sign(&claims), clock.now())
            .is_err()
    );

    clock.advance(Duration::from_secs(21));
    upstream.oidc().verify(&newer.sign(&claims), clock.now()).await.unwrap();
    assert_eq!(idp.hits("jwks"), 3);
    // The rotated-out key is gone after the refresh.
    let error = upstream
        .oidc()
        .verify_offline(&old.sign(&claims), clock.now())
        .unwrap_err();
    assert!(matches!(error, Error::UnknownKey { .. }), "{error:?}");
}

#[tokio::test]
async fn the_cache_outlives_the_upstream_in_memory_and_on_disk_until_max_stale() {
    let key = TestKey::ed25519("k1");
    let mut idp = FakeIdp::start(jwks(&[&key])).await;
    let directory = tempfile::tempdir().unwrap();
    let cache = directory.path().join("upstream-corp.jwks.json");
    let clock = ManualClock::new(now());
    let mut config = config(&idp);
    config.jwks.max_stale = Duration::from_secs(3_600);
    let token = key.sign(&with(claims(&idp), "exp", json!(NOW + 86_400)));

    let first = upstream(&config, &clock, Some(cache.clone()));
    first.oidc().refresh().await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(directory.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "a temporary file was left behind");

    idp.kill();
    clock.advance(Duration::from_secs(600));
    first.oidc().verify(&token, clock.now()).await.unwrap();
    let error = first.oidc().refresh().await.unwrap_err();
    assert!(error.is_upstream_failure(), "{error:?}");
    drop(first);

    // A restart while the upstream is dark: the disk cache answers, discovery included.
    let second = upstream(&config, &clock, Some(cache.clone()));
    assert!(second.oidc().metadata().is_some());
    let verified = second.oidc().verify(&token, clock.now()).await.unwrap();
    assert_eq!(verified.subject.as_deref(), Some("agent-7"));
    let status = second.status(clock.now());
    assert_eq!(
        (status.jwks_fetched_at, status.jwks_keys, status.jwks_fresh_enough),
        (Some(now()), 1, true)
    );

    // One hour after the last fetch, verification fails closed.
    clock.advance(Duration::from_secs(3_001));
    let error = second.oidc().verify(&token, clock.now()).await.unwrap_err();
    assert!(
        matches!(error, Error::JwksTooStale { max_stale, .. } if max_stale == Duration::from_secs(3_600)),
        "{error:?}"
    );
    assert!(!error.is_invalid_token());
    assert!(!second.status(clock.now()).jwks_fresh_enough);

    // The upstream returns: the next refresh makes it verifiable again.
    idp.restart().await;
    clock.advance(Duration::from_secs(31));
    second.oidc().verify(&token, clock.now()).await.unwrap();

    // A cache of another issuer is ignored.
    let mut other = config.clone();
    other.issuer = Issuer::new("https://other.example").unwrap();
    let third = upstream(&other, &clock, Some(cache));
    assert!(matches!(
        third.oidc().verify_offline(&token, clock.now()),
        Err(Error::JwksUnavailable)
    ));
}

#[tokio::test]
async fn bad_upstream_answers_are_rejected_with_clear_errors() {
    let key = TestKey::ed25519("k1");
    let idp = FakeIdp::start(jwks(&[&key])).await;
    let clock = ManualClock::new(now());
    let mut config = config(&idp);
    config.breaker.failure_threshold = std::num::NonZeroU32::new(100).unwrap();
    let upstream = upstream(&config, &clock, None);

    idp.set(|state| state.issuer = Some(format!("{}/", idp.url())));
    let error = upstream.oidc().refresh().await.unwrap_err();
    assert!(
        matches!(&error, Error::IssuerMismatch { found, .. } if found.ends_with('/')),
        "{error:?}"
    );
    assert!(error.to_string().contains("expected exactly"), "{error}");

    idp.set(|state| {
        state.issuer = None;
        state.discovery_answer = Some(Canned::html(200));
    });
    let error = upstream.oidc().refresh().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidDocument {
                what: "discovery document",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("not JSON"), "{error}");

    idp.set(|state| state.discovery_answer = Some(Canned::html(502)));
    let error = upstream.oidc().refresh().await.unwrap_err();
    assert!(matches!(error, Error::UpstreamStatus { status: 502, .. }), "{error:?}");

    idp.set(|state| {
        state.discovery_answer = None;
        state.jwks_answer = Some(Canned::json(
            200,
            json!({"keys": [
                {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "sym"},
                {"kty": "OKP", "crv": "Ed25519", "x": key.jwk["x"], "alg": "none", "kid": "none-key"},
                {"kty": "OKP", "crv": "Ed25519", "x": key.jwk["x"], "use": "enc", "kid": "enc-key"},
                {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny-rsa"},
                {"kty": "weird"},
            ]}),
        ));
    });
    let error = upstream.oidc().refresh().await.unwrap_err();
    assert!(matches!(error, Error::NoUsableKeys), "{error:?}");

    idp.set(|state| state.jwks_answer = Some(Canned::json(200, json!({"not": "a jwks"}))));
    let error = upstream.oidc().refresh().await.unwrap_err();
    assert!(
        matches!(error, Error::InvalidDocument { what: "JWKS", .. }),
        "{error:?}"
    );

    // None of it replaced a good cache: nothing was cached, so tokens cannot be judged.
    let error = upstream
        .oidc()
        .verify_offline(&key.sign(&claims(&idp)), now())
        .unwrap_err();
    assert!(matches!(error, Error::JwksUnavailable), "{error:?}");

    idp.set(|state| state.jwks_answer = None);
    upstream.oidc().refresh().await.unwrap();
    upstream.oidc().verify_offline(&key.sign(&claims(&idp)), now()).unwrap();
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_half_opens_after_open_for() {
    let key = TestKey::ed25519("k1");
    let mut idp = FakeIdp::start(jwks(&[&key])).await;
    let clock = ManualClock::new(now());
    let upstream = upstream(&config(&idp), &clock, None);
    upstream.oidc().refresh().await.unwrap();
    let discoveries = idp.hits("discovery");

    idp.kill();
    for _ in 0..5 {
        // Refused, or reset on a pooled keep-alive connection.
        let error = upstream.oidc().refresh().await.unwrap_err();
        assert!(matches!(error, Error::Connect(_) | Error::Transport(_)), "{error:?}");
    }
    let snapshot = upstream.circuit().snapshot();
    assert_eq!(snapshot.state, State::Open);
    assert_eq!(snapshot.opened_at, Some(now()));
    assert_eq!(snapshot.consecutive_failures, 5);

    idp.restart().await;
    let error = upstream.oidc().refresh().await.unwrap_err();
    let Error::CircuitOpen { retry_after } = error else {
        panic!("{error:?}")
    };
    assert!(
        retry_after >= Duration::from_secs(4) && retry_after <= Duration::from_secs(6),
        "{retry_after:?}"
    );
    assert_eq!(
        idp.hits("discovery"),
        discoveries,
        "an open circuit called the upstream"
    );

    clock.advance(Duration::from_millis(6_001));
    upstream.oidc().refresh().await.unwrap();
    let snapshot = upstream.circuit().snapshot();
    assert_eq!(
        (snapshot.state, snapshot.opened_at, snapshot.trips),
        (State::Closed, None, 1)
    );
    assert_eq!(idp.hits("discovery"), discoveries + 1);
}

#[tokio::test]
async fn the_background_refresh_picks_up_a_rotation() {
    let old = TestKey::ed25519("k-old");
    let idp = FakeIdp::start(jwks(&[&old])).await;
    let clock = ManualClock::new(now());
    let mut config = config(&idp);
    config.jwks.refresh_interval = Duration::from_millis(50);
    let upstream = upstream(&config, &clock, None);
    let task = upstream.oidc().spawn_refresh();
    let new = TestKey::ed25519("k-new");
    idp.set(|state| state.jwks = jwks(&[&old, &new]));
    let token = new.sign(&claims(&idp));
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.oidc().verify_offline(&token, now()).is_err() {
        assert!(
            Instant::now() < deadline,
            "the background refresh never picked up the new key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}
