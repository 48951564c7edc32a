//! `/authorize`, login and consent pages, the authorization_code and refresh_token grants, ID
//! tokens, `/userinfo`, logout, and refresh-token reuse detection.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bridge::node::AdminRequest;
use bridge::users::UserRequest;
use serde_json::Value;
use sha2::Digest;

use super::harness::*;

const REDIRECT: &str = "http://127.0.0.1/callback";
const VERIFIER: &str = "dBjftJeZ4CK-P-0hXpq9k1M6RAxzW1T2XzY3kLmNoPq";

fn challenge(verifier: &str) -> String {
    b64(&sha2::Sha256::digest(verifier.as_bytes()))
}

fn claims(token: &str) -> Value {
    serde_json::from_slice(&unb64(token.split('.').nth(1).unwrap())).unwrap()
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(token.split('.').next().unwrap())).unwrap()
}

/// A harness with user `alice` (password `wonderland`) and a public code-flow client.
struct Setup {
    h: Harness,
    client_id: String,
}

fn user(h: &Harness, name: &str, password: &str) {
    h.admin(AdminRequest::User(UserRequest::Add {
        username: name.into(),
        password: password.into(),
        name: Some("Alice Liddell".into()),
        email: Some("alice@example.test".into()),
    }))
    .unwrap();
}

fn code_client(h: &Harness, public: bool, extra_redirects: &[&str]) -> (String, Option<String>) {
    let mut redirect_uris = vec![REDIRECT.to_owned()];
    redirect_uris.extend(extra_redirects.iter().map(|s| s.to_string()));
    let answer = h
        .admin(AdminRequest::User(UserRequest::AddCodeClient {
            name: "Test <App>".into(),
            redirect_uris,
            post_logout_redirect_uris: vec!["https://app.example/bye".into()],
            scopes: vec!["openid profile email read".into()],
            audiences: vec![],
            public,
            token_alg: None,
            id_token_alg: None,
        }))
        .unwrap();
    (
        answer["client_id"].as_str().unwrap().to_owned(),
        answer["client_secret"].as_str().map(str::to_owned),
    )
}

fn setup() -> Setup {
    let h = Harness::new();
    user(&h, "alice", "wonderland");
    let (client_id, _) = code_client(&h, true, &["https://app.example/cb?x=1"]);
    Setup { h, client_id }
}

/// A browser: remembers the session cookie.
#[derive(Default)]
struct Browser {
    cookie: Option<String>,
}

impl Browser {
    async fn get(&mut self, h: &Harness, path: &str) -> Answer {
        let mut request = Request::get(path);
        if let Some(c) = &self.cookie {
            request = request.header(header::COOKIE, c.as_str());
        }
        let answer = h.send(request.body(Body::empty()).unwrap()).await;
        self.remember(&answer);
        answer
    }

    async fn post(&mut self, h: &Harness, path: &str, body: &str) -> Answer {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = &self.cookie {
            request = request.header(header::COOKIE, c.as_str());
        }
        let answer = h.send(request.body(Body::from(body.to_owned())).unwrap()).await;
        self.remember(&answer);
        answer
    }

    fn remember(&mut self, answer: &Answer) {
        if let Some(set) = answer.headers.get(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"), "{set}");
            assert!(!set.contains("Secure"), "http issuer: {set}");
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
    }
}

/// The value of the hidden input `name` of a page.
fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

fn location(answer: &Answer) -> url::Url {
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.text);
    url::Url::parse(answer.headers[header::LOCATION].to_str().unwrap()).unwrap()
}

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn authorize_path(client_id: &str, extra: &[(&str, &str)]) -> String {
    let c = challenge(VERIFIER);
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile email read"),
        ("state", "st4te"),
        ("nonce", "n0nce"),
        ("code_challenge", &c),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        pairs.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            pairs.push((k, v));
        }
    }
    format!("/authorize?{}", form(&pairs))
}

/// Logs in and consents; returns the redirect with the code.
async fn login_and_consent(s: &Setup, browser: &mut Browser, path: &str) -> url::Url {
    let page = browser.get(&s.h, path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(
        page.text.contains("Test &lt;App&gt;"),
        "escaped client name: {}",
        page.text
    );
    let body = form(&[
        ("csrf_token", &field(&page.text, "csrf_token")),
        ("request", &field(&page.text, "request")),
        ("username", "alice"),
        ("password", "wonderland"),
    ]);
    let consent = browser.post(&s.h, "/login", &body).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.text);
    assert!(consent.text.contains("Allow access?"), "{}", consent.text);
    let body = form(&[
        ("csrf_token", &field(&consent.text, "csrf_token")),
        ("request", &field(&consent.text, "request")),
        ("decision", "allow"),
    ]);
    location(&browser.post(&s.h, "/consent", &body).await)
}

async fn redeem(s: &Setup, code: &str, verifier: &str) -> Answer {
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("client_id", &s.client_id),
        ("code_verifier", verifier),
    ]);
    s.h.post_form("/token", None, &body).await
}

async fn refresh(s: &Setup, token: &str) -> Answer {
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", &s.client_id),
    ]);
    s.h.post_form("/token", None, &body).await
}

async fn tokens(s: &Setup) -> Value {
    let mut browser = Browser::default();
    let back = login_and_consent(s, &mut browser, &authorize_path(&s.client_id, &[])).await;
    let answer = redeem(s, &param(&back, "code").unwrap(), VERIFIER).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    answer.json
}

/// An introspecting confidential client.
fn introspector(h: &Harness) -> (String, String) {
    h.client("read", &[], None)
}

#[tokio::test]
async fn code_flow_with_pkce_issues_access_id_and_refresh_tokens() {
    let s = setup();
    let mut browser = Browser::default();
    let back = login_and_consent(
        &s,
        &mut browser,
        &authorize_path(&s.client_id, &[("acr_values", "urn:x")]),
    )
    .await;
    assert_eq!(back.origin().ascii_serialization(), "http://127.0.0.1");
    assert_eq!(back.path(), "/callback");
    assert_eq!(param(&back, "state").as_deref(), Some("st4te"));
    assert_eq!(param(&back, "iss").as_deref(), Some(ISSUER), "RFC 9207");
    let answer = redeem(&s, &param(&back, "code").unwrap(), VERIFIER).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let access = answer.json["access_token"].as_str().unwrap();
    let id_token = answer.json["id_token"].as_str().unwrap();
    assert!(answer.json["refresh_token"].is_string());
    assert_eq!(answer.json["scope"], "openid profile email read");
    let users = s.h.admin(AdminRequest::User(UserRequest::List)).unwrap();
    let sub = users[0]["sub"].as_str().unwrap();
    assert_eq!(claims(access)["sub"], sub);
    assert_eq!(claims(access)["client_id"], s.client_id.as_str());
    let header = header_of(id_token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    let id = claims(id_token);
    assert_eq!(id["iss"], ISSUER);
    assert_eq!(id["aud"], s.client_id.as_str());
    assert_eq!(id["sub"], sub);
    assert_eq!(id["nonce"], "n0nce");
    assert_eq!(id["auth_time"], START);
    assert_eq!(id["acr"], bridge::http::authorize::ACR_PASSWORD);
    assert_eq!(id["email"], "alice@example.test");
    assert_eq!(id["preferred_username"], "alice");
    let expected_at_hash = b64(&sha2::Sha256::digest(access.as_bytes())[..16]);
    assert_eq!(id["at_hash"], expected_at_hash);
    // The ID token verifies with the published RS256 key.
    let jwks = s.h.get("/jwks.json").await.json;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&s.client_id]);
    validation.set_issuer(&[ISSUER]);
    validation.validate_exp = false;
    jsonwebtoken::decode::<Value>(id_token, &key, &validation).unwrap();

    // userinfo with the access token.
    let request = Request::get("/userinfo")
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .body(Body::empty())
        .unwrap();
    let info = s.h.send(request).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text);
    assert_eq!(info.json["sub"], sub);
    assert_eq!(info.json["name"], "Alice Liddell");
    assert_eq!(info.json["email"], "alice@example.test");
    let bad =
        s.h.send(
            Request::get("/userinfo")
                .header(header::AUTHORIZATION, "Bearer nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(
        bad.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // A second authorization with the session and the remembered consent skips both pages.
    let again = browser.get(&s.h, &authorize_path(&s.client_id, &[])).await;
    let back = location(&again);
    assert!(param(&back, "code").is_some(), "{back}");
}

#[tokio::test]
async fn a_replayed_code_revokes_every_token_issued_from_it() {
    let s = setup();
    let mut browser = Browser::default();
    let back = login_and_consent(&s, &mut browser, &authorize_path(&s.client_id, &[])).await;
    let code = param(&back, "code").unwrap();
    let first = redeem(&s, &code, VERIFIER).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    let replay = redeem(&s, &code, VERIFIER).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.error(), "invalid_grant");
    let (id, secret) = introspector(&s.h);
    let access = first.json["access_token"].as_str().unwrap();
    assert_eq!(s.h.introspect(&id, &secret, access).await["active"], false);
    let refreshed = refresh(&s, first.json["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.error(), "invalid_grant", "{}", refreshed.json);
}

#[tokio::test]
async fn codes_expire_after_sixty_seconds() {
    let s = setup();
    let mut browser = Browser::default();
    let back = login_and_consent(&s, &mut browser, &authorize_path(&s.client_id, &[])).await;
    s.h.clock.advance(61);
    let answer = redeem(&s, &param(&back, "code").unwrap(), VERIFIER).await;
    assert_eq!(answer.error(), "invalid_grant");
}

#[tokio::test]
async fn pkce_is_required_s256_only_and_checked() {
    let s = setup();
    let mut browser = Browser::default();
    for extra in [
        vec![("code_challenge_method", "plain")],
        vec![("code_challenge_method", "")],
        vec![("code_challenge", ""), ("code_challenge_method", "")],
        vec![("code_challenge", "short")],
    ] {
        let answer = browser.get(&s.h, &authorize_path(&s.client_id, &extra)).await;
        let back = location(&answer);
        assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"), "{extra:?}");
        assert_eq!(param(&back, "state").as_deref(), Some("st4te"));
        assert_eq!(param(&back, "iss").as_deref(), Some(ISSUER));
    }
    let back = login_and_consent(&s, &mut browser, &authorize_path(&s.client_id, &[])).await;
    let code = param(&back, "code").unwrap();
    let wrong = redeem(&s, &code, "wrong-verifier-wrong-verifier-wrong-verifier-x").await;
    assert_eq!(wrong.error(), "invalid_grant");
    // The attempt spent the code.
    assert_eq!(redeem(&s, &code, VERIFIER).await.error(), "invalid_grant");
    // A missing verifier.
    let back = location(&browser.get(&s.h, &authorize_path(&s.client_id, &[])).await);
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &param(&back, "code").unwrap()),
        ("redirect_uri", REDIRECT),
        ("client_id", &s.client_id),
    ]);
    assert_eq!(s.h.post_form("/token", None, &body).await.error(), "invalid_request");
}

#[tokio::test]
async fn redirect_uris_match_exactly_except_loopback_ports() {
    let s = setup();
    let mut browser = Browser::default();
    for bad in [
        "http://127.0.0.1/callback/",
        "http://127.0.0.1/callback?extra=1",
        "http://127.0.0.1:8080/callback/..",
        "https://app.example/cb",
        "https://app.example/cb?x=1&y=2",
        "https://app.example:8443/cb?x=1",
        "https://user@app.example/cb?x=1",
        "http://user:pw@127.0.0.1:9/callback",
        "http://127.0.0.1:1@evil.example/callback",
        "https://evil.example/?r=https://app.example/cb?x=1",
        "//evil.example/callback",
        "javascript:alert(1)",
    ] {
        let answer = browser
            .get(&s.h, &authorize_path(&s.client_id, &[("redirect_uri", bad)]))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: never redirected");
        assert!(answer.headers.get(header::LOCATION).is_none(), "{bad}");
        assert!(answer.text.contains("not registered"), "{bad}: {}", answer.text);
        assert_eq!(answer.headers["x-frame-options"], "DENY");
    }
    // Unknown client: an error page too, even with a valid-looking redirect.
    let answer = browser.get(&s.h, &authorize_path("nobody", &[])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // Any port on the registered loopback IP literal.
    let answer = browser
        .get(
            &s.h,
            &authorize_path(&s.client_id, &[("redirect_uri", "http://127.0.0.1:49152/callback")]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "login page: {}", answer.text);
    // The registered https URI with its query: errors go there, with the query kept.
    let answer = browser
        .get(
            &s.h,
            &authorize_path(
                &s.client_id,
                &[
                    ("redirect_uri", "https://app.example/cb?x=1"),
                    ("response_type", "token"),
                ],
            ),
        )
        .await;
    let back = location(&answer);
    assert_eq!(param(&back, "x").as_deref(), Some("1"));
    assert_eq!(param(&back, "error").as_deref(), Some("unsupported_response_type"));
    // A code issued for one redirect URI is not redeemed with another.
    let back = login_and_consent(
        &s,
        &mut Browser::default(),
        &authorize_path(&s.client_id, &[("redirect_uri", "http://127.0.0.1:5555/callback")]),
    )
    .await;
    let answer = redeem(&s, &param(&back, "code").unwrap(), VERIFIER).await;
    assert_eq!(answer.error(), "invalid_grant");
}

#[tokio::test]
async fn login_and_consent_forms_require_the_sessions_csrf_token() {
    let s = setup();
    let mut browser = Browser::default();
    let page = browser.get(&s.h, &authorize_path(&s.client_id, &[])).await;
    let request = field(&page.text, "request");
    let csrf = field(&page.text, "csrf_token");
    // Wrong token.
    let body = form(&[
        ("csrf_token", "forged"),
        ("request", &request),
        ("username", "alice"),
        ("password", "wonderland"),
    ]);
    assert_eq!(browser.post(&s.h, "/login", &body).await.status, StatusCode::FORBIDDEN);
    // Right token, but another browser (no cookie).
    let body = form(&[
        ("csrf_token", &csrf),
        ("request", &request),
        ("username", "alice"),
        ("password", "wonderland"),
    ]);
    assert_eq!(
        Browser::default().post(&s.h, "/login", &body).await.status,
        StatusCode::FORBIDDEN
    );
    // Wrong password: the form again, 401.
    let body = form(&[
        ("csrf_token", &csrf),
        ("request", &request),
        ("username", "alice"),
        ("password", "nope"),
    ]);
    let again = browser.post(&s.h, "/login", &body).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(again.text.contains("Wrong username or password"));
    let body = form(&[
        ("csrf_token", &field(&again.text, "csrf_token")),
        ("request", &field(&again.text, "request")),
        ("username", "alice"),
        ("password", "wonderland"),
    ]);
    let consent = browser.post(&s.h, "/login", &body).await;
    assert_eq!(consent.status, StatusCode::OK);
    // The login replaced the session: the old CSRF token no longer works.
    let old = form(&[
        ("csrf_token", &csrf),
        ("request", &field(&consent.text, "request")),
        ("decision", "allow"),
    ]);
    assert_eq!(browser.post(&s.h, "/consent", &old).await.status, StatusCode::FORBIDDEN);
    // Deny: access_denied to the client.
    let page = browser.get(&s.h, &authorize_path(&s.client_id, &[])).await;
    let body = form(&[
        ("csrf_token", &field(&page.text, "csrf_token")),
        ("request", &field(&page.text, "request")),
        ("decision", "deny"),
    ]);
    let back = location(&browser.post(&s.h, "/consent", &body).await);
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&back, "state").as_deref(), Some("st4te"));
}

#[tokio::test]
async fn prompt_and_max_age() {
    let s = setup();
    let mut browser = Browser::default();
    let none = location(
        &browser
            .get(&s.h, &authorize_path(&s.client_id, &[("prompt", "none")]))
            .await,
    );
    assert_eq!(param(&none, "error").as_deref(), Some("login_required"));
    // Log in but deny consent: then prompt=none is consent_required.
    let page = browser.get(&s.h, &authorize_path(&s.client_id, &[])).await;
    let body = form(&[
        ("csrf_token", &field(&page.text, "csrf_token")),
        ("request", &field(&page.text, "request")),
        ("username", "alice"),
        ("password", "wonderland"),
    ]);
    assert_eq!(browser.post(&s.h, "/login", &body).await.status, StatusCode::OK);
    let none = location(
        &browser
            .get(&s.h, &authorize_path(&s.client_id, &[("prompt", "none")]))
            .await,
    );
    assert_eq!(param(&none, "error").as_deref(), Some("consent_required"));
    let back = login_and_consent(&s, &mut Browser::default(), &authorize_path(&s.client_id, &[])).await;
    assert!(param(&back, "code").is_some());
    // Consent is remembered for the user: this browser's session now gets a code silently.
    let none = location(
        &browser
            .get(&s.h, &authorize_path(&s.client_id, &[("prompt", "none")]))
            .await,
    );
    assert!(param(&none, "code").is_some(), "{none}");
    // prompt=login and prompt=consent show the pages again.
    let page = browser
        .get(&s.h, &authorize_path(&s.client_id, &[("prompt", "login")]))
        .await;
    assert!(page.text.contains("name=\"password\""));
    let page = browser
        .get(&s.h, &authorize_path(&s.client_id, &[("prompt", "consent")]))
        .await;
    assert!(page.text.contains("Allow access?"));
    // max_age: a session older than it must log in again; auth_time is the new login.
    s.h.clock.advance(100);
    let page = browser
        .get(&s.h, &authorize_path(&s.client_id, &[("max_age", "50")]))
        .await;
    assert!(page.text.contains("name=\"password\""), "{}", page.text);
    let fresh = browser
        .get(&s.h, &authorize_path(&s.client_id, &[("max_age", "500")]))
        .await;
    let code = param(&location(&fresh), "code").unwrap();
    let answer = redeem(&s, &code, VERIFIER).await;
    assert_eq!(claims(answer.json["id_token"].as_str().unwrap())["auth_time"], START);
    // Consents are listed and revocable.
    let consents =
        s.h.admin(AdminRequest::User(UserRequest::Consents {
            username: "alice".into(),
        }))
        .unwrap();
    assert_eq!(consents[0]["client_id"], s.client_id.as_str());
    s.h.admin(AdminRequest::User(UserRequest::RevokeConsent {
        username: "alice".into(),
        client_id: s.client_id.clone(),
    }))
    .unwrap();
    let none = location(
        &browser
            .get(&s.h, &authorize_path(&s.client_id, &[("prompt", "none")]))
            .await,
    );
    assert_eq!(param(&none, "error").as_deref(), Some("consent_required"));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let s = setup();
    let first = tokens(&s).await;
    let r0 = first["refresh_token"].as_str().unwrap();
    let rotated = refresh(&s, r0).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.json);
    let r1 = rotated.json["refresh_token"].as_str().unwrap();
    assert_ne!(r0, r1);
    assert!(rotated.json["id_token"].is_string());
    // Within the grace window, the same token gets the same pair.
    s.h.clock.advance(2);
    let concurrent = refresh(&s, r0).await;
    assert_eq!(concurrent.status, StatusCode::OK);
    assert_eq!(concurrent.json, rotated.json);
    // After it, the spent token is a reuse: the family is revoked, access tokens too.
    s.h.clock.advance(2);
    let reuse = refresh(&s, r0).await;
    assert_eq!(reuse.error(), "invalid_grant");
    assert_eq!(refresh(&s, r1).await.error(), "invalid_grant");
    let (id, secret) = introspector(&s.h);
    for token in [&first["access_token"], &rotated.json["access_token"]] {
        assert_eq!(
            s.h.introspect(&id, &secret, token.as_str().unwrap()).await["active"],
            false
        );
    }
    // Garbage and other clients' tokens.
    assert_eq!(refresh(&s, "garbage").await.error(), "invalid_grant");
}

#[tokio::test]
async fn refresh_tokens_are_bound_to_their_client() {
    let s = setup();
    let first = tokens(&s).await;
    let (other, _) = code_client(&s.h, true, &[]);
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", first["refresh_token"].as_str().unwrap()),
        ("client_id", &other),
    ]);
    assert_eq!(s.h.post_form("/token", None, &body).await.error(), "invalid_grant");
    // The token still works for its client.
    assert_eq!(
        refresh(&s, first["refresh_token"].as_str().unwrap()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_reuse_on_another_node_is_detected_when_the_states_merge() {
    let s = setup();
    let first = tokens(&s).await;
    let r0 = first["refresh_token"].as_str().unwrap();
    let rotated = refresh(&s, r0).await;
    assert_eq!(rotated.status, StatusCode::OK);
    // What another node wrote while partitioned: the same parent rotated into another child.
    let parent = b64(&sha2::Sha256::digest(r0.as_bytes()));
    let (spent, record) = s.h.state.read_state(|state| {
        let record = state.refresh.tokens[&parent].clone();
        let spent = state.refresh.children(&parent)[0].clone();
        (spent, record)
    });
    let mut theirs = record.clone();
    theirs.id = "other-child".into();
    theirs.parent = Some(parent.clone());
    theirs.access_jti = "their-access-token".into();
    let mut their_spent = spent.clone();
    their_spent.child = "other-child".into();
    let now = START;
    s.h.state
        .with_node(|node| {
            let changes = vec![
                mesh::state::Change::Login(mesh::login::LoginChange::PutRefresh(theirs)),
                mesh::state::Change::Login(mesh::login::LoginChange::PutSpent(their_spent)),
            ];
            node.apply(&changes)?;
            let mut all = changes;
            all.extend(bridge::http::refresh::revoke_reused(node, now)?);
            Ok(((), all))
        })
        .unwrap();
    let r1 = rotated.json["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&s, r1).await.error(), "invalid_grant");
    let (id, secret) = introspector(&s.h);
    assert_eq!(
        s.h.introspect(&id, &secret, rotated.json["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    assert!(s.h.state.view().revoked.contains_key("their-access-token"));
}

#[tokio::test]
async fn confidential_clients_authenticate_and_public_ones_need_no_secret() {
    let h = Harness::new();
    user(&h, "alice", "wonderland");
    let (client_id, secret) = code_client(&h, false, &[]);
    let secret = secret.unwrap();
    let s = Setup { h, client_id };
    let mut browser = Browser::default();
    let back = login_and_consent(&s, &mut browser, &authorize_path(&s.client_id, &[])).await;
    let code = param(&back, "code").unwrap();
    let unauthenticated = redeem(&s, &code, VERIFIER).await;
    assert_eq!(unauthenticated.error(), "invalid_client");
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ]);
    // The code was not spent by the unauthenticated attempt (it never got past authentication).
    let answer = s.h.post_form("/token", Some((&s.client_id, &secret)), &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
}

#[tokio::test]
async fn openid_configuration_is_the_authorization_server_metadata() {
    let h = Harness::new();
    let oidc = h.get("/.well-known/openid-configuration").await.json;
    let oauth = h.get("/.well-known/oauth-authorization-server").await.json;
    assert_eq!(oidc, oauth);
    assert_eq!(oidc["issuer"], ISSUER);
    assert_eq!(oidc["authorization_endpoint"], format!("{ISSUER}/authorize"));
    assert_eq!(oidc["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(oidc["authorization_response_iss_parameter_supported"], true);
    assert!(
        oidc["grant_types_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "refresh_token")
    );
    assert!(
        oidc["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "none")
    );
    assert_eq!(oidc["id_token_signing_alg_values_supported"][0], "RS256");
}

#[tokio::test]
async fn logout_ends_the_session_and_returns_only_to_registered_uris() {
    let s = setup();
    let mut browser = Browser::default();
    login_and_consent(&s, &mut browser, &authorize_path(&s.client_id, &[])).await;
    let query = form(&[
        ("client_id", &s.client_id),
        ("post_logout_redirect_uri", "https://evil.example/bye"),
    ]);
    let bad = browser.get(&s.h, &format!("/logout?{query}")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let query = form(&[
        ("client_id", &s.client_id),
        ("post_logout_redirect_uri", "https://app.example/bye"),
        ("state", "s1"),
    ]);
    let confirm = browser.get(&s.h, &format!("/logout?{query}")).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    let csrf = field(&confirm.text, "csrf_token");
    let forged = form(&[("csrf_token", "x")]);
    assert_eq!(
        browser.post(&s.h, "/logout", &forged).await.status,
        StatusCode::FORBIDDEN
    );
    let body = form(&[
        ("csrf_token", &csrf),
        ("client_id", &s.client_id),
        ("post_logout_redirect_uri", "https://app.example/bye"),
        ("state", "s1"),
    ]);
    let back = location(&browser.post(&s.h, "/logout", &body).await);
    assert_eq!(back.as_str(), "https://app.example/bye?state=s1");
    // Signed out: prompt=none needs a login again.
    let none = location(
        &browser
            .get(&s.h, &authorize_path(&s.client_id, &[("prompt", "none")]))
            .await,
    );
    assert_eq!(param(&none, "error").as_deref(), Some("login_required"));
}

#[tokio::test]
async fn users_are_managed_by_admin_commands() {
    let h = Harness::new();
    user(&h, "bob", "pw1");
    assert!(
        h.admin(AdminRequest::User(UserRequest::Add {
            username: "bob".into(),
            password: "x".into(),
            name: None,
            email: None,
        }))
        .is_err()
    );
    assert!(
        h.admin(AdminRequest::User(UserRequest::Add {
            username: "bad name".into(),
            password: "x".into(),
            name: None,
            email: None,
        }))
        .is_err()
    );
    h.admin(AdminRequest::User(UserRequest::Passwd {
        username: "bob".into(),
        password: "pw2".into(),
    }))
    .unwrap();
    let list = h.admin(AdminRequest::User(UserRequest::List)).unwrap();
    assert_eq!(list[0]["username"], "bob");
    assert!(!list.to_string().contains("argon2"), "{list}");
    h.admin(AdminRequest::User(UserRequest::Remove { username: "bob".into() }))
        .unwrap();
    assert_eq!(
        h.admin(AdminRequest::User(UserRequest::List)).unwrap(),
        serde_json::json!([])
    );
    // Malicious redirect URIs are refused at registration.
    for bad in [
        "javascript:alert(1)",
        "http://app.example/cb",
        "https://a@b.example/",
        "data:text/html,x",
    ] {
        let result = h.admin(AdminRequest::User(UserRequest::AddCodeClient {
            name: "x".into(),
            redirect_uris: vec![bad.into()],
            post_logout_redirect_uris: vec![],
            scopes: vec![],
            audiences: vec![],
            public: true,
            token_alg: None,
            id_token_alg: None,
        }));
        assert!(result.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn resource_becomes_the_audience_and_the_client_chooses_the_id_token_algorithm() {
    let h = Harness::new();
    user(&h, "alice", "wonderland");
    let answer = h
        .admin(AdminRequest::User(UserRequest::AddCodeClient {
            name: "Test <App>".into(),
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: vec![],
            scopes: vec!["openid read".into()],
            audiences: vec!["https://api.a.example".into(), "https://api.b.example".into()],
            public: true,
            token_alg: None,
            id_token_alg: Some(bridge::keys::Alg::ES256),
        }))
        .unwrap();
    let client_id = answer["client_id"].as_str().unwrap().to_owned();
    let s = Setup { h, client_id };
    let mut browser = Browser::default();
    // A resource the client may not have: invalid_target back to the client.
    let bad = location(
        &browser
            .get(
                &s.h,
                &authorize_path(
                    &s.client_id,
                    &[("scope", "openid read"), ("resource", "https://evil.example")],
                ),
            )
            .await,
    );
    assert_eq!(param(&bad, "error").as_deref(), Some("invalid_target"));
    let path = format!(
        "{}&resource={}&resource={}",
        authorize_path(&s.client_id, &[("scope", "openid read")]),
        form_urlencoded::byte_serialize(b"https://api.a.example").collect::<String>(),
        form_urlencoded::byte_serialize(b"https://api.b.example").collect::<String>(),
    );
    let back = login_and_consent(&s, &mut browser, &path).await;
    // At the token endpoint: one of the authorized resources.
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &param(&back, "code").unwrap()),
        ("redirect_uri", REDIRECT),
        ("client_id", &s.client_id),
        ("code_verifier", VERIFIER),
        ("resource", "https://api.b.example"),
    ]);
    let answer = s.h.post_form("/token", None, &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(
        claims(answer.json["access_token"].as_str().unwrap())["aud"],
        "https://api.b.example"
    );
    assert_eq!(header_of(answer.json["id_token"].as_str().unwrap())["alg"], "ES256");
    // The refresh token keeps both audiences; a refresh may pick the other one, not a new one.
    let refresh_token = answer.json["refresh_token"].as_str().unwrap();
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", &s.client_id),
        ("resource", "https://evil.example"),
    ]);
    assert_eq!(s.h.post_form("/token", None, &body).await.error(), "invalid_target");
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", &s.client_id),
        ("resource", "https://api.a.example"),
    ]);
    let answer = s.h.post_form("/token", None, &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(
        claims(answer.json["access_token"].as_str().unwrap())["aud"],
        "https://api.a.example"
    );
    let answer = refresh(&s, answer.json["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        claims(answer.json["access_token"].as_str().unwrap())["aud"],
        serde_json::json!(["https://api.a.example", "https://api.b.example"])
    );
}

#[tokio::test]
async fn the_session_cookie_is_secure_under_an_https_issuer() {
    let h = Harness::with_issuer("https://issuer.test");
    let (client_id, _) = code_client(&h, true, &[]);
    let answer = h.get(&authorize_path(&client_id, &[])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let cookie = answer.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn users_consents_and_refresh_families_survive_a_restart() {
    let s = setup();
    let first = tokens(&s).await;
    let Setup { h, client_id } = s;
    let h = h.restart();
    let s = Setup { h, client_id };
    let users = s.h.admin(AdminRequest::User(UserRequest::List)).unwrap();
    assert_eq!(users[0]["username"], "alice");
    let consents =
        s.h.admin(AdminRequest::User(UserRequest::Consents {
            username: "alice".into(),
        }))
        .unwrap();
    assert_eq!(consents.as_array().unwrap().len(), 1);
    let answer = refresh(&s, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    // Families are dropped once expired (30 days by default).
    s.h.clock.advance(31 * 86_400);
    let now = START + 31 * 86_400;
    s.h.state
        .with_node(|node| node.expire(now, 600).map(|c| ((), c)))
        .unwrap();
    assert!(
        s.h.state
            .read_state(|state| state.refresh.tokens.is_empty() && state.refresh.spent.is_empty())
    );
    assert_eq!(
        refresh(&s, answer.json["refresh_token"].as_str().unwrap())
            .await
            .error(),
        "invalid_grant"
    );
}

/// Serves a Client ID Metadata Document for a code-flow client on loopback; its URL.
async fn metadata_document_client() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agent/client.json", listener.local_addr().unwrap());
    let document = serde_json::json!({
        "client_id": url,
        "client_name": "Test <App>",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "scope": "openid profile email read",
        "token_endpoint_auth_method": "none",
    })
    .to_string();
    let app = axum::Router::new().route(
        "/agent/client.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], document) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_metadata_document_client_id_runs_the_code_flow() {
    let url = metadata_document_client().await;
    // Without the danger_ flag an http (loopback) document URL is no client: an error page.
    let strict = Harness::new();
    let mut browser = Browser::default();
    let page = browser.get(&strict, &authorize_path(&url, &[])).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.text);
    assert!(page.text.contains("not registered"), "{}", page.text);

    let h = Harness::new();
    assert!(h.state.set_registration(bridge::registration::RegistrationConfig {
        danger_allow_http_loopback_metadata_documents: true,
        ..Default::default()
    }));
    user(&h, "alice", "wonderland");
    let s = Setup {
        h,
        client_id: url.clone(),
    };
    // The MCP case: the resource is the MCP server the client is about to call.
    let path = authorize_path(&url, &[("resource", "https://mcp.example/mcp")]);
    let page = browser.get(&s.h, &path).await;
    let body = form(&[
        ("csrf_token", &field(&page.text, "csrf_token")),
        ("request", &field(&page.text, "request")),
        ("username", "alice"),
        ("password", "wonderland"),
    ]);
    let consent = browser.post(&s.h, "/login", &body).await;
    assert!(
        consent.text.contains("<code>https://mcp.example/mcp</code>"),
        "the consent page names the resource: {}",
        consent.text
    );
    let back = login_and_consent(&s, &mut browser, &path).await;
    assert_eq!(param(&back, "iss").as_deref(), Some(ISSUER));
    let answer = redeem(&s, &param(&back, "code").unwrap(), VERIFIER).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let access = claims(answer.json["access_token"].as_str().unwrap());
    assert_eq!(access["client_id"], url.as_str());
    assert_eq!(access["aud"], "https://mcp.example/mcp");
    let users = s.h.admin(AdminRequest::User(UserRequest::List)).unwrap();
    assert_eq!(access["sub"], users[0]["sub"]);
    assert_eq!(claims(answer.json["id_token"].as_str().unwrap())["aud"], url.as_str());
    // The consent is remembered for the URL client; the refresh token rotates for it.
    let answer = refresh(&s, answer.json["refresh_token"].as_str().unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(
        claims(answer.json["access_token"].as_str().unwrap())["aud"],
        "https://mcp.example/mcp"
    );
    // A metadata-document client is not in the replicated registry.
    assert!(!s.h.state.view().clients.contains_key(&url));
    // A document that cannot be fetched: an error page saying why.
    let missing = format!("{url}.missing");
    let page = browser.get(&s.h, &authorize_path(&missing, &[])).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.text);
    assert!(
        page.text.contains("client metadata document cannot be used"),
        "{}",
        page.text
    );
    // Its redirect URIs are exact.
    let page = browser
        .get(
            &s.h,
            &authorize_path(&url, &[("redirect_uri", "http://127.0.0.1/other")]),
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.text);
}

#[tokio::test]
async fn an_imported_keycloak_hash_is_upgraded_to_argon2_at_login() {
    use base64::Engine;
    let h = Harness::new();
    // Keycloak's PBKDF2-SHA256 credential (27500 iterations) for `wonderland`, as a realm export
    // holds it.
    let salt = b"keycloak-salt-16";
    let mut key = [0u8; 64];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(27_500).unwrap(),
        salt,
        b"wonderland",
        &mut key,
    );
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let secret_data = serde_json::json!({"value": b64(&key), "salt": b64(salt), "additionalParameters": {}});
    let credential_data =
        serde_json::json!({"hashIterations": 27_500, "algorithm": "pbkdf2-sha256", "additionalParameters": {}});
    let imported =
        bridge::password::PasswordHash::from_keycloak(&secret_data.to_string(), &credential_data.to_string())
            .unwrap()
            .to_stored();
    assert!(imported.starts_with("$pbkdf2-sha256$i=27500$"), "{imported}");
    h.admin(AdminRequest::User(UserRequest::Import {
        users: vec![bridge::users::ImportUser {
            username: "alice".into(),
            password: imported.clone(),
            name: Some("Alice Liddell".into()),
            email: None,
        }],
        dry_run: false,
    }))
    .unwrap();
    let stored = |h: &Harness| h.state.read_state(|state| state.users["alice"].clone());
    let before = stored(&h);
    assert_eq!(before.password, imported);
    let (client_id, _) = code_client(&h, true, &[]);
    let s = Setup { h, client_id };

    // The first login verifies the PBKDF2 hash as it is, then stores an argon2 hash instead.
    let first = tokens(&s).await;
    assert!(first["access_token"].is_string(), "{first}");
    let after = stored(&s.h);
    assert!(after.password.starts_with("$argon2id$"), "{}", after.password);
    assert_eq!(after.sub, before.sub);
    assert_eq!(after.name, before.name);
    assert!(bridge::users::verify_password(&after.password, "wonderland"));

    // The password still works (now against argon2); a wrong one still does not.
    let mut browser = Browser::default();
    let page = browser.get(&s.h, &authorize_path(&s.client_id, &[])).await;
    let attempt = |password: &'static str, page: &Answer| {
        form(&[
            ("csrf_token", &field(&page.text, "csrf_token")),
            ("request", &field(&page.text, "request")),
            ("username", "alice"),
            ("password", password),
        ])
    };
    let wrong = browser.post(&s.h, "/login", &attempt("wonderlanD", &page)).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.text);
    let back = location(&browser.post(&s.h, "/login", &attempt("wonderland", &wrong)).await);
    let answer = redeem(&s, &param(&back, "code").unwrap(), VERIFIER).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(
        claims(answer.json["access_token"].as_str().unwrap())["sub"],
        before.sub.as_str()
    );
    // Nothing changes at later logins.
    assert_eq!(stored(&s.h).password, after.password);
}

#[tokio::test]
async fn an_upstream_identity_is_linked_to_a_password_less_user() {
    let s = setup();
    let link = |subject: &str| {
        s.h.admin(AdminRequest::User(UserRequest::Link {
            upstream: "corp".into(),
            subject: subject.into(),
            name: Some("Carol".into()),
            email: None,
        }))
    };
    let answer = link("carol-0001").unwrap();
    assert_eq!(answer["username"], "upstream:corp:carol-0001");
    assert_eq!(
        answer["sub"],
        bridge::http::upstream_login::subject("corp", "carol-0001").as_str()
    );
    assert!(link("carol-0001").is_err(), "linked twice");
    assert!(
        s.h.admin(AdminRequest::User(UserRequest::Link {
            upstream: "no such|name".into(),
            subject: "x".into(),
            name: None,
            email: None,
        }))
        .is_err()
    );
    // A subject that is not a plain name is hashed into the username.
    let odd = link("auth0|42").unwrap();
    assert!(
        odd["username"].as_str().unwrap().starts_with("upstream:corp:~"),
        "{odd}"
    );
    // The linked user has no password: the local form never signs it in.
    let mut browser = Browser::default();
    let mut page = browser.get(&s.h, &authorize_path(&s.client_id, &[])).await;
    // Without upstreams configured the login page shows no upstream button.
    assert!(!page.text.contains("Sign in with"), "{}", page.text);
    for password in ["", "anything"] {
        let body = form(&[
            ("csrf_token", &field(&page.text, "csrf_token")),
            ("request", &field(&page.text, "request")),
            ("username", "upstream:corp:carol-0001"),
            ("password", password),
        ]);
        let answer = browser.post(&s.h, "/login", &body).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text);
        page = answer;
    }
}
