//! Login federation against the fake upstream: the authorization URL (PKCE S256, state, nonce),
//! the code exchange and the ID token checks (signature, audience, nonce, azp).

use adapters::Error;
use adapters::clock::ManualClock;
use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use url::Url;

use super::support::{Canned, FakeIdp, TestKey, jwks};
use super::{NOW, config, now, upstream};

/// What a refused login's error must be.
type Expected = fn(&Error) -> bool;

const REDIRECT: &str = "https://meshgate.example/callback";

fn query(url: &Url) -> std::collections::HashMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn id_token(key: &TestKey, idp: &FakeIdp, nonce: &str, extra: Value) -> String {
    let mut claims = json!({
        "iss": idp.url(), "sub": "alice", "aud": "meshgate-edge", "exp": NOW + 300, "iat": NOW,
        "nonce": nonce, "email": "alice@corp.example",
    });
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    key.sign(&claims)
}

fn answer_with(idp: &FakeIdp, id_token: Option<String>) {
    let mut body = json!({"access_token": "upstream-user-at", "token_type": "Bearer", "expires_in": 300, "scope": "openid profile"});
    if let Some(id_token) = id_token {
        body["id_token"] = id_token.into();
    }
    idp.set(|state| state.token_answer = Some(Canned::json(200, body)));
}

#[tokio::test]
async fn a_login_round_trip_verifies_the_id_token() {
    let key = TestKey::es256("login-key");
    let idp = FakeIdp::start(jwks(&[&key])).await;
    let clock = ManualClock::new(now());
    let upstream = upstream(&config(&idp), &clock, None);
    upstream.oidc().refresh().await.unwrap();
    let redirect = Url::parse(REDIRECT).unwrap();

    let request = upstream.begin_login(&redirect, &["profile"]).unwrap();
    assert!(request.url.as_str().starts_with(&format!("{}/authorize?", idp.url())));
    let q = query(&request.url);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "meshgate-edge");
    assert_eq!(q["redirect_uri"], REDIRECT);
    assert_eq!(q["scope"], "openid profile");
    assert_eq!(q["state"], request.state.expose());
    assert_eq!(q["nonce"], request.nonce.expose());
    assert_eq!(q["code_challenge_method"], "S256");
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(
        &digest::SHA256,
        request.pkce_verifier.expose().as_bytes(),
    ));
    assert_eq!(q["code_challenge"], challenge);
    assert!(request.state_matches(request.state.expose()));
    assert!(!request.state_matches("forged"));
    assert!(!format!("{request:?}").contains(request.state.expose()));
    let other = upstream.begin_login(&redirect, &[]).unwrap();
    assert_ne!(other.state.expose(), request.state.expose());
    assert_ne!(other.nonce.expose(), request.nonce.expose());

    answer_with(&idp, Some(id_token(&key, &idp, request.nonce.expose(), json!({}))));
    let identity = upstream
        .finish_login(&request, "the-code", &redirect, now())
        .await
        .unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(
        identity.id_token_claims.claim("email"),
        Some(&json!("alice@corp.example"))
    );
    assert_eq!(identity.access_token.expose(), "upstream-user-at");
    let (authorization, body) = idp.state.lock().unwrap().token_requests.last().cloned().unwrap();
    assert!(authorization.starts_with("Basic "), "meshgate's own credentials");
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the-code");
    assert_eq!(form["redirect_uri"], REDIRECT);
    assert_eq!(form["code_verifier"], request.pkce_verifier.expose());

    // The ID token of another login (another nonce), for another client, or without azp among
    // several audiences, is refused; so is an answer without an ID token or a refused code.
    let cases: Vec<(Option<String>, Expected)> = vec![
        (Some(id_token(&key, &idp, other.nonce.expose(), json!({}))), |e| {
            matches!(e, Error::NonceMismatch)
        }),
        (
            Some(id_token(
                &key,
                &idp,
                request.nonce.expose(),
                json!({"aud": "someone-else"}),
            )),
            |e| matches!(e, Error::WrongAudience),
        ),
        (
            Some(id_token(
                &key,
                &idp,
                request.nonce.expose(),
                json!({"aud": ["meshgate-edge", "x"]}),
            )),
            |e| matches!(e, Error::WrongAudience),
        ),
        (
            Some(id_token(
                &key,
                &idp,
                request.nonce.expose(),
                json!({"iss": "https://evil.example"}),
            )),
            |e| matches!(e, Error::WrongIssuer),
        ),
        (
            Some(id_token(&key, &idp, request.nonce.expose(), json!({"exp": NOW - 1}))),
            |e| matches!(e, Error::Expired { .. }),
        ),
        (None, |e| matches!(e, Error::InvalidDocument { .. })),
    ];
    for (token, expected) in cases {
        answer_with(&idp, token);
        let error = upstream
            .finish_login(&request, "the-code", &redirect, now())
            .await
            .unwrap_err();
        assert!(expected(&error), "{error:?}");
    }
    let with_azp = id_token(
        &key,
        &idp,
        request.nonce.expose(),
        json!({"aud": ["meshgate-edge", "x"], "azp": "meshgate-edge"}),
    );
    answer_with(&idp, Some(with_azp));
    upstream
        .finish_login(&request, "the-code", &redirect, now())
        .await
        .unwrap();
    idp.set(|state| {
        state.token_answer = Some(Canned::json(400, json!({"error": "invalid_grant"})));
    });
    let error = upstream
        .finish_login(&request, "used-code", &redirect, now())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::TokenRejected { error } if error == "invalid_grant"),
        "{error:?}"
    );
    // An HTML error page is an upstream failure, not a login result.
    idp.set(|state| state.token_answer = Some(Canned::html(502)));
    let error = upstream
        .finish_login(&request, "the-code", &redirect, now())
        .await
        .unwrap_err();
    assert!(error.is_upstream_failure(), "{error:?}");
}
