//! The token endpoint: forwarding credentials, refusals, broken and frozen upstreams.

use std::time::{Duration, Instant};

use adapters::Error;
use adapters::breaker::State;
use adapters::clock::ManualClock;
use adapters::config::{Endpoints, Secret};

use crate::support::{ACCESS_TOKEN, CLIENT_ID, CLIENT_SECRET, Canned, FakeIdp, TestKey, jwks};
use crate::{config, now, upstream};

#[tokio::test]
async fn a_frozen_upstream_fails_within_the_token_deadline() {
    let idp = FakeIdp::start(jwks(&[])).await;
    idp.set(|state| state.frozen = true);
    let clock = ManualClock::new(now());
    let mut config = config(&idp);
    config.endpoints = Some(Endpoints::with_token(format!("{}/token", idp.url()).parse().unwrap()));
    let upstream = upstream(&config, &clock, None);
    let oauth2 = upstream.oauth2();
    assert_eq!(oauth2.token_deadline(), Duration::from_millis(300));

    for attempt in 0..5 {
        let started = Instant::now();
        let error = oauth2
            .forward_client_credentials(
                CLIENT_ID,
                &Secret::new(CLIENT_SECRET),
                Some("read"),
                oauth2.token_deadline(),
            )
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(error, Error::DeadlineExceeded(_)),
            "attempt {attempt}: {error:?}"
        );
        // Well under the 2 s total timeout: the deadline, not the HTTP client, ended it.
        assert!(elapsed < Duration::from_millis(1_500), "attempt {attempt}: {elapsed:?}");
    }
    assert_eq!(
        idp.hits("token"),
        5,
        "the connections were accepted and the requests read"
    );
    let started = Instant::now();
    let error = oauth2
        .forward_client_credentials(CLIENT_ID, &Secret::new(CLIENT_SECRET), None, oauth2.token_deadline())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::CircuitOpen { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(idp.hits("token"), 5);
}

#[tokio::test]
async fn forwarded_credentials_get_a_token_and_refusals_do_not_trip_the_breaker() {
    let idp = FakeIdp::start(jwks(&[&TestKey::ed25519("k1")])).await;
    let clock = ManualClock::new(now());
    let upstream = upstream(&config(&idp), &clock, None);
    let oauth2 = upstream.oauth2();
    let deadline = Duration::from_secs(2);

    // The token endpoint comes from discovery, fetched on first use.
    let token = oauth2
        .forward_client_credentials(CLIENT_ID, &Secret::new(CLIENT_SECRET), Some("read write"), deadline)
        .await
        .unwrap();
    assert_eq!(token.access_token.expose(), ACCESS_TOKEN);
    assert_eq!(token.expires_in, Some(Duration::from_secs(300)));
    assert_eq!(
        token.scopes.as_deref(),
        Some(&["read".to_owned(), "write".to_owned()][..])
    );
    assert!(!format!("{token:?}").contains(ACCESS_TOKEN));
    let (authorization, body) = idp.state.lock().unwrap().token_requests[0].clone();
    assert!(authorization.starts_with("Basic "), "{authorization}");
    assert!(
        body.contains("grant_type=client_credentials") && body.contains("scope=read"),
        "{body}"
    );

    for _ in 0..7 {
        let error = oauth2
            .forward_client_credentials(CLIENT_ID, &Secret::new("wrong-secret-Xy7"), None, deadline)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::TokenRejected { error } if error == "invalid_client"),
            "{error:?}"
        );
        assert!(!error.is_upstream_failure());
        let shown = format!("{error} {error:?}");
        assert!(
            !shown.contains("wrong-secret") && !shown.contains(CLIENT_SECRET),
            "{shown}"
        );
    }
    assert_eq!(upstream.circuit().snapshot().state, State::Closed);

    // meshgate's own credentials are unknown to this upstream.
    let error = oauth2.client_credentials(None, deadline).await.unwrap_err();
    assert!(matches!(error, Error::TokenRejected { .. }), "{error:?}");

    // A broken upstream (an HTML 500 page) is an upstream failure, and says so.
    idp.set(|state| state.token_answer = Some(Canned::html(500)));
    let error = oauth2
        .forward_client_credentials(CLIENT_ID, &Secret::new(CLIENT_SECRET), None, deadline)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UpstreamStatus { status: 500, .. }), "{error:?}");
    assert_eq!(upstream.circuit().snapshot().consecutive_failures, 1);
    // An HTML page with a 200 status is not a token either.
    idp.set(|state| state.token_answer = Some(Canned::html(200)));
    let error = oauth2
        .forward_client_credentials(CLIENT_ID, &Secret::new(CLIENT_SECRET), None, deadline)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidDocument {
                what: "token response",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_upstream_failure());
    assert!(!format!("{error:?}").contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_plain_oauth2_upstream_needs_no_discovery() {
    let idp = FakeIdp::start(jwks(&[])).await;
    let clock = ManualClock::new(now());
    let mut config = config(&idp);
    config.endpoints = Some(Endpoints::with_token(format!("{}/token", idp.url()).parse().unwrap()));
    let upstream = upstream(&config, &clock, None);
    let token = upstream
        .oauth2()
        .forward_client_credentials(CLIENT_ID, &Secret::new(CLIENT_SECRET), None, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(token.access_token.expose(), ACCESS_TOKEN);
    assert_eq!(idp.hits("discovery"), 0);
    // Without a JWKS endpoint, upstream tokens cannot be verified, and it says why.
    let error = upstream.oidc().refresh().await.unwrap_err();
    assert!(matches!(error, Error::MissingEndpoint("jwks")), "{error:?}");
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let idp = FakeIdp::start(jwks(&[])).await;
    let clock = ManualClock::new(now());
    let config = config(&idp);
    let shown = format!("{config:?} {:?}", upstream(&config, &clock, None));
    assert!(!shown.contains("meshgate-own-secret"), "{shown}");
    assert!(format!("{:?}", Secret::new(CLIENT_SECRET)) == "[redacted]");
}
