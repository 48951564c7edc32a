//! The device authorization grant (RFC 8628): `/device_authorization`, the verification page and
//! every polling answer. The helpers here also serve `user_grants.rs`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bridge::node::AdminRequest;
use bridge::users::UserRequest;
use serde_json::Value;

use super::harness::*;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

pub(super) fn claims(token: &str) -> Value {
    serde_json::from_slice(&unb64(token.split('.').nth(1).unwrap())).unwrap()
}

pub(super) fn add_user(h: &Harness, name: &str, password: &str) {
    h.admin(AdminRequest::User(UserRequest::Add {
        username: name.into(),
        password: password.into(),
        name: None,
        email: None,
    }))
    .unwrap();
}

/// A device-flow client (public or confidential); returns (id, secret).
pub(super) fn device_client(h: &Harness, public: bool, redirect_uris: &[&str]) -> (String, Option<String>) {
    let answer = h
        .admin(AdminRequest::User(UserRequest::AddDeviceClient {
            name: "TV <App>".into(),
            redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
            post_logout_redirect_uris: vec![],
            scopes: vec!["openid profile read".into()],
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

pub(super) struct Setup {
    pub(super) h: Harness,
    pub(super) client_id: String,
}

pub(super) fn setup() -> Setup {
    let h = Harness::new();
    add_user(&h, "alice", "wonderland");
    let (client_id, _) = device_client(&h, true, &[]);
    Setup { h, client_id }
}

/// A browser: remembers the session cookie.
#[derive(Default)]
pub(super) struct Browser {
    cookie: Option<String>,
}

impl Browser {
    pub(super) async fn get(&mut self, h: &Harness, path: &str) -> Answer {
        let mut request = Request::get(path);
        if let Some(c) = &self.cookie {
            request = request.header(header::COOKIE, c.as_str());
        }
        let answer = h.send(request.body(Body::empty()).unwrap()).await;
        self.remember(&answer);
        answer
    }

    pub(super) async fn post(&mut self, h: &Harness, path: &str, pairs: &[(&str, &str)]) -> Answer {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = &self.cookie {
            request = request.header(header::COOKIE, c.as_str());
        }
        let answer = h.send(request.body(Body::from(form(pairs))).unwrap()).await;
        self.remember(&answer);
        answer
    }

    fn remember(&mut self, answer: &Answer) {
        if let Some(set) = answer.headers.get(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"), "{set}");
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
    }

    /// Opens the verification page and signs in as alice; returns the code-entry page.
    pub(super) async fn sign_in(&mut self, h: &Harness, path: &str) -> Answer {
        let login = self.get(h, path).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.text);
        assert!(login.text.contains("id=\"username\""), "{}", login.text);
        let page = self
            .post(
                h,
                "/device/login",
                &[
                    ("csrf_token", &field(&login.text, "csrf_token")),
                    ("user_code", &field(&login.text, "user_code")),
                    ("username", "alice"),
                    ("password", "wonderland"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert!(page.text.contains("id=\"user_code\""), "{}", page.text);
        page
    }

    /// Enters `user_code` on the code page `page`; returns the answer.
    pub(super) async fn enter(&mut self, h: &Harness, page: &Answer, user_code: &str) -> Answer {
        self.post(
            h,
            "/device",
            &[
                ("csrf_token", &field(&page.text, "csrf_token")),
                ("user_code", user_code),
            ],
        )
        .await
    }

    /// Answers the confirmation page `page` with `decision` (`approve` or `deny`).
    pub(super) async fn decide(&mut self, h: &Harness, page: &Answer, decision: &str) -> Answer {
        assert!(page.text.contains("id=\"approve\"") && page.text.contains("id=\"deny\""));
        self.post(
            h,
            "/device/confirm",
            &[
                ("csrf_token", &field(&page.text, "csrf_token")),
                ("user_code", &field(&page.text, "user_code")),
                ("decision", decision),
            ],
        )
        .await
    }
}

/// The value of the input `name` of a page.
pub(super) fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

pub(super) async fn authorize_device(s: &Setup, scope: &str) -> Value {
    let body = form(&[("client_id", &s.client_id), ("scope", scope)]);
    let answer = s.h.post_form("/device_authorization", None, &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    answer.json
}

pub(super) async fn poll(h: &Harness, client_id: &str, device_code: &str) -> Answer {
    let body = form(&[
        ("grant_type", DEVICE_GRANT),
        ("device_code", device_code),
        ("client_id", client_id),
    ]);
    h.post_form("/token", None, &body).await
}

pub(super) async fn refresh(h: &Harness, client_id: &str, token: &str) -> Answer {
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", client_id),
    ]);
    h.post_form("/token", None, &body).await
}

/// Runs the flow to approval through the pages; returns the device authorization response.
pub(super) async fn approved(s: &Setup) -> Value {
    let started = authorize_device(s, "openid read").await;
    let mut browser = Browser::default();
    let page = browser
        .sign_in(
            &s.h,
            started["verification_uri_complete"]
                .as_str()
                .unwrap()
                .strip_prefix(ISSUER)
                .unwrap(),
        )
        .await;
    let confirm = browser.enter(&s.h, &page, &field(&page.text, "user_code")).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    let done = browser.decide(&s.h, &confirm, "approve").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    started
}

#[tokio::test]
async fn the_device_flow_answers_every_poll_and_issues_tokens_once() {
    let s = setup();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let metadata = s.h.get(path).await.json;
        assert_eq!(
            metadata["device_authorization_endpoint"],
            format!("{ISSUER}/device_authorization")
        );
        assert!(
            metadata["grant_types_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == DEVICE_GRANT),
            "{metadata}"
        );
    }
    let started = authorize_device(&s, "openid read").await;
    let user_code = started["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert_eq!(&user_code[4..5], "-");
    assert!(
        user_code
            .chars()
            .filter(|c| *c != '-')
            .all(|c| "BCDFGHJKLMNPQRSTVWXZ".contains(c)),
        "{user_code}"
    );
    assert_eq!(started["verification_uri"], format!("{ISSUER}/device"));
    assert_eq!(
        started["verification_uri_complete"],
        format!("{ISSUER}/device?user_code={user_code}")
    );
    assert_eq!(started["expires_in"], 600);
    assert_eq!(started["interval"], 5);
    let device_code = started["device_code"].as_str().unwrap();

    // Before the user acts: pending; polling faster than the interval: slow_down, +5 s each time.
    let first = poll(&s.h, &s.client_id, device_code).await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST);
    assert_eq!(first.error(), "authorization_pending", "{}", first.json);
    assert_eq!(first.headers[header::CACHE_CONTROL], "no-store");
    s.h.clock.advance(4);
    assert_eq!(poll(&s.h, &s.client_id, device_code).await.error(), "slow_down");
    s.h.clock.advance(9);
    assert_eq!(
        poll(&s.h, &s.client_id, device_code).await.error(),
        "slow_down",
        "the interval grew to 10 s: still too fast"
    );
    s.h.clock.advance(15);
    assert_eq!(
        poll(&s.h, &s.client_id, device_code).await.error(),
        "authorization_pending"
    );

    // The user opens verification_uri_complete: signs in, the code is prefilled; entry is
    // case- and dash-insensitive; the confirmation names the client and the scopes.
    let mut browser = Browser::default();
    let lenient = user_code.replace('-', "").to_lowercase();
    let page = browser.sign_in(&s.h, &format!("/device?user_code={lenient}")).await;
    assert_eq!(
        field(&page.text, "user_code"),
        user_code,
        "prefilled as shown on the device"
    );
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let confirm = browser.enter(&s.h, &page, &format!(" {} ", lenient)).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    assert!(confirm.text.contains("TV &lt;App&gt;"), "{}", confirm.text);
    assert!(confirm.text.contains("<code>openid</code>") && confirm.text.contains("<code>read</code>"));
    assert!(confirm.text.contains(user_code), "the code to compare with the device");
    let done = browser.decide(&s.h, &confirm, "approve").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert!(done.text.contains("id=\"result\""));

    // The code is decided: entering it again is refused.
    let again = browser.enter(&s.h, &page, user_code).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.text);

    s.h.clock.advance(15);
    let tokens = poll(&s.h, &s.client_id, device_code).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.json);
    assert_eq!(tokens.headers[header::CACHE_CONTROL], "no-store");
    let access = tokens.json["access_token"].as_str().unwrap();
    assert_eq!(tokens.json["scope"], "openid read");
    assert!(tokens.json["refresh_token"].is_string());
    let users = s.h.admin(AdminRequest::User(UserRequest::List)).unwrap();
    let sub = users[0]["sub"].as_str().unwrap();
    assert_eq!(claims(access)["sub"], sub);
    assert_eq!(claims(access)["client_id"], s.client_id.as_str());
    let id_token = claims(tokens.json["id_token"].as_str().unwrap());
    assert_eq!(id_token["aud"], s.client_id.as_str());
    assert_eq!(id_token["sub"], sub);
    assert_eq!(id_token["auth_time"], START + 28);

    // Single use: a second redemption fails and revokes what the first one issued.
    s.h.clock.advance(15);
    let replay = poll(&s.h, &s.client_id, device_code).await;
    assert_eq!(replay.error(), "invalid_grant", "{}", replay.json);
    let (id, secret) = s.h.client("read", &[], None);
    assert_eq!(s.h.introspect(&id, &secret, access).await["active"], false);
    let refreshed = refresh(&s.h, &s.client_id, tokens.json["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.error(), "invalid_grant", "{}", refreshed.json);
}

#[tokio::test]
async fn denied_expired_foreign_and_unauthorized_device_codes() {
    let s = setup();
    // Denied.
    let started = authorize_device(&s, "read").await;
    let mut browser = Browser::default();
    let page = browser.sign_in(&s.h, "/device").await;
    assert_eq!(field(&page.text, "user_code"), "", "nothing to prefill");
    let confirm = browser.enter(&s.h, &page, started["user_code"].as_str().unwrap()).await;
    let denied = browser.decide(&s.h, &confirm, "deny").await;
    assert_eq!(denied.status, StatusCode::OK, "{}", denied.text);
    let device_code = started["device_code"].as_str().unwrap();
    let answer = poll(&s.h, &s.client_id, device_code).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error(), "access_denied", "{}", answer.json);

    // Another client presenting the code.
    let (other, _) = device_client(&s.h, true, &[]);
    let started = authorize_device(&s, "read").await;
    let device_code = started["device_code"].as_str().unwrap();
    assert_eq!(poll(&s.h, &other, device_code).await.error(), "invalid_grant");

    // Expired: the token endpoint says so, the page refuses the code.
    s.h.clock.advance(601);
    assert_eq!(poll(&s.h, &s.client_id, device_code).await.error(), "expired_token");
    let expired = browser.enter(&s.h, &page, started["user_code"].as_str().unwrap()).await;
    assert_eq!(expired.status, StatusCode::BAD_REQUEST);
    assert!(expired.text.contains("not valid or has expired"), "{}", expired.text);

    // Unknown codes, and a code issued by another node (device codes are node-local).
    let unknown = poll(&s.h, &s.client_id, "nonsense").await;
    assert_eq!(unknown.error(), "invalid_grant");
    assert!(
        unknown.json["error_description"].as_str().unwrap().contains("node"),
        "{}",
        unknown.json
    );
    let other_node = Harness::new();
    add_user(&other_node, "alice", "wonderland");
    let (theirs, _) = device_client(&other_node, true, &[]);
    let body = form(&[("client_id", theirs.as_str()), ("scope", "read")]);
    let started = other_node.post_form("/device_authorization", None, &body).await.json;
    let foreign = poll(&s.h, &s.client_id, started["device_code"].as_str().unwrap()).await;
    assert_eq!(foreign.error(), "invalid_grant");
    assert!(
        foreign.json["error_description"]
            .as_str()
            .unwrap()
            .contains("not issued by this node"),
        "{}",
        foreign.json
    );

    // A code-flow-only client may not start the device flow; scopes are the client's.
    let code_only =
        s.h.admin(AdminRequest::User(UserRequest::AddCodeClient {
            name: "web".into(),
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            post_logout_redirect_uris: vec![],
            scopes: vec!["read".into()],
            audiences: vec![],
            public: true,
            token_alg: None,
            id_token_alg: None,
        }))
        .unwrap();
    let body = form(&[("client_id", code_only["client_id"].as_str().unwrap())]);
    let refused = s.h.post_form("/device_authorization", None, &body).await;
    assert_eq!(refused.error(), "unauthorized_client", "{}", refused.json);
    let body = form(&[("client_id", &s.client_id), ("scope", "admin")]);
    assert_eq!(
        s.h.post_form("/device_authorization", None, &body).await.error(),
        "invalid_scope"
    );

    // A confidential device client authenticates at the device authorization endpoint too.
    let (id, secret) = device_client(&s.h, false, &["http://127.0.0.1/cb"]);
    let secret = secret.unwrap();
    let body = form(&[("scope", "read")]);
    let wrong =
        s.h.post_form("/device_authorization", Some((&id, "wrong")), &body)
            .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.error(), "invalid_client");
    let bare = form(&[("client_id", id.as_str()), ("scope", "read")]);
    assert_eq!(
        s.h.post_form("/device_authorization", None, &bare).await.error(),
        "invalid_client"
    );
    let ok =
        s.h.post_form("/device_authorization", Some((&id, &secret)), &body)
            .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    let pending = form(&[
        ("grant_type", DEVICE_GRANT),
        ("device_code", ok.json["device_code"].as_str().unwrap()),
    ]);
    let answer = s.h.post_form("/token", Some((&id, &secret)), &pending).await;
    assert_eq!(answer.error(), "authorization_pending", "{}", answer.json);
}

#[tokio::test]
async fn wrong_user_codes_are_throttled_per_user() {
    let s = setup();
    let started = authorize_device(&s, "read").await;
    let right = started["user_code"].as_str().unwrap();
    let mut browser = Browser::default();
    let page = browser.sign_in(&s.h, "/device").await;
    for attempt in 0..5 {
        let wrong = browser
            .enter(&s.h, &page, &format!("BCDF-GHJ{}", ["K", "L", "M", "N", "P"][attempt]))
            .await;
        let wrong_is_right = right == format!("BCDF-GHJ{}", ["K", "L", "M", "N", "P"][attempt]);
        if !wrong_is_right {
            assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.text);
        }
    }
    // Budget spent: even the right code is refused until the window passes.
    let throttled = browser.enter(&s.h, &page, right).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS, "{}", throttled.text);
    assert!(throttled.text.contains("Too many wrong codes"), "{}", throttled.text);
    // Another user is not affected.
    add_user(&s.h, "bob", "builder");
    let mut other = Browser::default();
    let login = other.get(&s.h, "/device").await;
    let bob_page = other
        .post(
            &s.h,
            "/device/login",
            &[
                ("csrf_token", &field(&login.text, "csrf_token")),
                ("user_code", ""),
                ("username", "bob"),
                ("password", "builder"),
            ],
        )
        .await;
    assert_eq!(
        other.enter(&s.h, &bob_page, "BCDF-BCDF").await.status,
        StatusCode::BAD_REQUEST
    );
    s.h.clock.advance(300);
    let confirm = browser.enter(&s.h, &page, right).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
}

#[tokio::test]
async fn device_page_forms_need_the_sessions_csrf_token() {
    let s = setup();
    let started = authorize_device(&s, "read").await;
    let user_code = started["user_code"].as_str().unwrap();
    let mut browser = Browser::default();
    let login = browser.get(&s.h, "/device").await;
    assert_eq!(login.headers["x-frame-options"], "DENY");
    assert_eq!(login.headers[header::CACHE_CONTROL], "no-store");
    // Login without the token, or with a foreign one.
    let mut attacker = Browser::default();
    let theirs = attacker.get(&s.h, "/device").await;
    for token in ["", &field(&theirs.text, "csrf_token")] {
        let answer = browser
            .post(
                &s.h,
                "/device/login",
                &[("csrf_token", token), ("username", "alice"), ("password", "wonderland")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text);
    }
    // Signed in, the code and confirmation forms check the token too.
    let page = browser.sign_in(&s.h, "/device").await;
    let no_token = browser.post(&s.h, "/device", &[("user_code", user_code)]).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let confirm = browser.enter(&s.h, &page, user_code).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    for token in ["", &field(&theirs.text, "csrf_token")] {
        let forged = browser
            .post(
                &s.h,
                "/device/confirm",
                &[("csrf_token", token), ("user_code", user_code), ("decision", "approve")],
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text);
    }
    // Without a session cookie at all.
    let cookieless =
        s.h.post_form(
            "/device/confirm",
            None,
            &form(&[("user_code", user_code), ("decision", "approve")]),
        )
        .await;
    assert_eq!(cookieless.status, StatusCode::FORBIDDEN);
    let device_code = started["device_code"].as_str().unwrap();
    assert_eq!(
        poll(&s.h, &s.client_id, device_code).await.error(),
        "authorization_pending",
        "no forged approval went through"
    );
}
