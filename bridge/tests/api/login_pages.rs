//! The login page under attack and the Form Post Response Mode: failed password logins throttled
//! per source address and per username (429 page with `Retry-After`, metric label), and
//! `response_mode=form_post` delivering codes and errors by an auto-submitting form.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use bridge::metrics::Metrics;
use bridge::node::AdminRequest;
use bridge::ratelimit::{Bucket, Hardening, RateLimitConfig, RateLimits, Scope};
use bridge::users::UserRequest;
use sha2::Digest;

use super::harness::*;

const REDIRECT: &str = "http://127.0.0.1/callback";
const VERIFIER: &str = "dBjftJeZ4CK-P-0hXpq9k1M6RAxzW1T2XzY3kLmNoPq";

fn setup() -> (Harness, String) {
    let h = Harness::new();
    h.admin(AdminRequest::User(UserRequest::Add {
        username: "alice".into(),
        password: "wonderland".into(),
        name: None,
        email: None,
    }))
    .unwrap();
    let answer = h
        .admin(AdminRequest::User(UserRequest::AddCodeClient {
            name: "Form App".into(),
            redirect_uris: vec![REDIRECT.to_owned()],
            post_logout_redirect_uris: vec![],
            scopes: vec!["openid".into()],
            audiences: vec![],
            public: true,
            token_alg: None,
            id_token_alg: None,
        }))
        .unwrap();
    (h, answer["client_id"].as_str().unwrap().to_owned())
}

/// A browser at one source address: remembers the session cookie.
struct Browser {
    cookie: Option<String>,
    source: SocketAddr,
}

impl Browser {
    fn at(ip: &str) -> Self {
        Self {
            cookie: None,
            source: SocketAddr::new(ip.parse().unwrap(), 40_000),
        }
    }

    async fn send(&mut self, h: &Harness, mut request: Request<Body>) -> Answer {
        request.extensions_mut().insert(ConnectInfo(self.source));
        if let Some(c) = &self.cookie {
            request.headers_mut().insert(header::COOKIE, c.parse().unwrap());
        }
        let answer = h.send(request).await;
        if let Some(set) = answer.headers.get(header::SET_COOKIE) {
            self.cookie = Some(set.to_str().unwrap().split(';').next().unwrap().to_owned());
        }
        answer
    }

    async fn get(&mut self, h: &Harness, path: &str) -> Answer {
        self.send(h, Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn post(&mut self, h: &Harness, path: &str, body: &str) -> Answer {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap();
        self.send(h, request).await
    }
}

/// The value of the hidden input `name` of a page.
fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

fn authorize_path(client_id: &str, extra: &[(&str, &str)]) -> String {
    let challenge = b64(&sha2::Sha256::digest(VERIFIER.as_bytes()));
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", "st4te"),
        ("code_challenge", &challenge),
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

/// Posts the login form of `page` with `password`.
async fn log_in(h: &Harness, browser: &mut Browser, page: &Answer, password: &str) -> Answer {
    let body = form(&[
        ("csrf_token", &field(&page.text, "csrf_token")),
        ("request", &field(&page.text, "request")),
        ("username", "alice"),
        ("password", password),
    ]);
    browser.post(h, "/login", &body).await
}

/// Rate limits with small login budgets attached to `h`; returns the metrics they count into.
fn throttled(h: &Harness) -> Arc<Metrics> {
    let config = RateLimitConfig {
        login_failures_per_source: Bucket { rate: 0.01, burst: 3 },
        login_failures_per_user: Bucket { rate: 0.01, burst: 5 },
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    h.state.set_hardening(Hardening {
        limits: Some(RateLimits::new(&config, metrics.clone())),
        body_read_timeout: None,
    });
    metrics
}

fn assert_throttled(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{}", answer.text);
    let retry: u64 = answer.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert!(
        answer.text.contains("<html lang=\"en\">")
            && answer.text.contains("role=\"alert\"")
            && answer.text.contains("Too many failed sign-in attempts"),
        "{}",
        answer.text
    );
    // The page is the login form again, ready for when the wait is over.
    assert!(answer.text.contains("<label for=\"password\">"), "{}", answer.text);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_source_and_slowed_per_username() {
    let (h, client_id) = setup();
    let metrics = throttled(&h);
    let path = authorize_path(&client_id, &[]);

    // One address guesses: after its three failures it is refused before any password check,
    // even with the right password.
    let mut attacker = Browser::at("192.0.2.1");
    let mut page = attacker.get(&h, &path).await;
    for _ in 0..3 {
        page = log_in(&h, &mut attacker, &page, "guess").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.text);
        assert!(page.text.contains("Wrong username or password."));
    }
    page = log_in(&h, &mut attacker, &page, "wonderland").await;
    assert_throttled(&page);
    // The form it answers still works: the next try is throttled again, not an expired request.
    assert_throttled(&log_in(&h, &mut attacker, &page, "wonderland").await);

    // More addresses spend the username's budget (3 + 2 = 5 failures).
    let mut second = Browser::at("192.0.2.2");
    let mut page = second.get(&h, &path).await;
    for _ in 0..2 {
        page = log_in(&h, &mut second, &page, "guess").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.text);
    }
    // The username is throttled now: an address with failures of its own waits ...
    assert_throttled(&log_in(&h, &mut second, &page, "wonderland").await);
    // ... but a fresh address (the account holder) is checked, and signs in.
    let mut holder = Browser::at("198.51.100.7");
    let page = holder.get(&h, &path).await;
    let consent = log_in(&h, &mut holder, &page, "wonderland").await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.text);
    assert!(consent.text.contains("Allow access?"), "{}", consent.text);

    let counts = metrics.rate_limited_counts();
    assert_eq!(counts[Scope::LoginFailuresSource as usize], 2, "{counts:?}");
    assert_eq!(counts[Scope::LoginFailuresUser as usize], 1, "{counts:?}");
    assert_eq!(Scope::LoginFailuresUser.label(), "login_failures_user");
}

#[tokio::test]
async fn without_rate_limits_logins_are_not_throttled() {
    let (h, client_id) = setup();
    let mut browser = Browser::at("192.0.2.1");
    let mut page = browser.get(&h, &authorize_path(&client_id, &[])).await;
    for _ in 0..20 {
        page = log_in(&h, &mut browser, &page, "guess").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.text);
    }
}

/// The fields of a form_post page, after checking the page's shape.
fn posted(answer: &Answer) -> Vec<(String, String)> {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let html = &answer.text;
    assert!(
        html.contains(&format!("<form method=\"post\" action=\"{REDIRECT}\">")),
        "{html}"
    );
    assert!(
        html.contains("<noscript>") && html.contains("<button type=\"submit\">"),
        "{html}"
    );
    assert!(html.contains("<html lang=\"en\">"), "{html}");
    let policy = answer.headers["content-security-policy"].to_str().unwrap();
    let nonce = policy.split("'nonce-").nth(1).unwrap().split('\'').next().unwrap();
    assert!(html.contains(&format!("<script nonce=\"{nonce}\">")), "{html}");
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    ["code", "state", "iss", "error", "error_description"]
        .into_iter()
        .filter(|name| html.contains(&format!("name=\"{name}\"")))
        .map(|name| (name.to_owned(), field(html, name)))
        .collect()
}

fn value<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn form_post_delivers_codes_and_errors_by_a_self_submitting_form() {
    let (h, client_id) = setup();
    let metadata = h.get("/.well-known/openid-configuration").await.json;
    assert_eq!(
        metadata["response_modes_supported"],
        serde_json::json!(["query", "form_post"])
    );

    let mut browser = Browser::at("192.0.2.1");
    let path = authorize_path(&client_id, &[("response_mode", "form_post")]);
    let page = browser.get(&h, &path).await;
    let consent = log_in(&h, &mut browser, &page, "wonderland").await;
    let body = form(&[
        ("csrf_token", &field(&consent.text, "csrf_token")),
        ("request", &field(&consent.text, "request")),
        ("decision", "allow"),
    ]);
    let fields = posted(&browser.post(&h, "/consent", &body).await);
    assert_eq!(value(&fields, "state"), Some("st4te"));
    assert_eq!(value(&fields, "iss"), Some(ISSUER));
    let code = value(&fields, "code").unwrap();
    let redeem = form(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("client_id", &client_id),
        ("code_verifier", VERIFIER),
    ]);
    let tokens = h.post_form("/token", None, &redeem).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.text);

    // Consent remembered: the signed-in browser gets the form at once.
    let fields = posted(&browser.get(&h, &path).await);
    assert!(value(&fields, "code").is_some(), "{fields:?}");

    // Errors after the redirect URI is trusted travel the same way.
    let no_pkce = authorize_path(&client_id, &[("response_mode", "form_post"), ("code_challenge", "")]);
    let fields = posted(&browser.get(&h, &no_pkce).await);
    assert_eq!(value(&fields, "error"), Some("invalid_request"));
    assert_eq!(value(&fields, "state"), Some("st4te"));
    assert_eq!(value(&fields, "iss"), Some(ISSUER));
    assert!(value(&fields, "code").is_none());

    let mut stranger = Browser::at("192.0.2.2");
    let silent = authorize_path(&client_id, &[("response_mode", "form_post"), ("prompt", "none")]);
    let fields = posted(&stranger.get(&h, &silent).await);
    assert_eq!(value(&fields, "error"), Some("login_required"));

    // Deny.
    let page = stranger.get(&h, &path).await;
    let consent = log_in(&h, &mut stranger, &page, "wonderland").await;
    let again = authorize_path(&client_id, &[("response_mode", "form_post"), ("prompt", "consent")]);
    let consent = if consent.text.contains("Allow access?") {
        consent
    } else {
        stranger.get(&h, &again).await
    };
    let body = form(&[
        ("csrf_token", &field(&consent.text, "csrf_token")),
        ("request", &field(&consent.text, "request")),
        ("decision", "deny"),
    ]);
    let fields = posted(&stranger.post(&h, "/consent", &body).await);
    assert_eq!(value(&fields, "error"), Some("access_denied"));

    // An unsupported mode is an error in the default mode (the query).
    let fragment = browser
        .get(&h, &authorize_path(&client_id, &[("response_mode", "fragment")]))
        .await;
    assert_eq!(fragment.status, StatusCode::SEE_OTHER, "{}", fragment.text);
    let location = fragment.headers[header::LOCATION].to_str().unwrap();
    assert!(
        location.starts_with(REDIRECT) && location.contains("error=invalid_request"),
        "{location}"
    );

    // An untrusted redirect URI is never posted to: an error page.
    let bad = browser
        .get(
            &h,
            &authorize_path(
                &client_id,
                &[
                    ("response_mode", "form_post"),
                    ("redirect_uri", "https://evil.example/"),
                ],
            ),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert!(!bad.text.contains("<form"), "{}", bad.text);
}

/// Posts the device page's sign-in form of `page` as alice with `password`.
async fn device_log_in(h: &Harness, browser: &mut Browser, page: &Answer, password: &str) -> Answer {
    let body = form(&[
        ("csrf_token", &field(&page.text, "csrf_token")),
        ("user_code", &field(&page.text, "user_code")),
        ("username", "alice"),
        ("password", password),
    ]);
    browser.post(h, "/device/login", &body).await
}

#[tokio::test]
async fn the_device_pages_sign_in_shares_the_login_throttle() {
    let (h, client_id) = setup();
    let metrics = throttled(&h);
    let device = "/device?user_code=bcdfghjk";

    // One address guesses on both sign-in pages: their failures spend one budget (3).
    let mut attacker = Browser::at("192.0.2.1");
    let mut page = attacker.get(&h, device).await;
    for _ in 0..2 {
        page = device_log_in(&h, &mut attacker, &page, "guess").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.text);
        assert!(page.text.contains("Wrong username or password."), "{}", page.text);
        // The username stays, the focus moves to the password, both fields point at the alert.
        assert!(
            page.text.contains("value=\"alice\"")
                && page
                    .text
                    .contains("autocomplete=\"current-password\" required autofocus aria-describedby=\"problem\"")
                && page.text.contains("id=\"problem\""),
            "{}",
            page.text
        );
        assert_eq!(
            field(&page.text, "user_code"),
            "BCDF-GHJK",
            "the code survives the retry"
        );
    }
    let login = attacker.get(&h, &authorize_path(&client_id, &[])).await;
    let wrong = log_in(&h, &mut attacker, &login, "guess").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.text);
    // Budget spent: refused before the password check, even the right one, on the device page ...
    page = device_log_in(&h, &mut attacker, &page, "wonderland").await;
    assert_throttled(&page);
    assert_eq!(field(&page.text, "user_code"), "BCDF-GHJK");
    assert!(!page.text.contains("id=\"user_code\""), "not signed in: {}", page.text);
    // ... its answer is a working form (throttled again, not forbidden) ...
    assert_throttled(&device_log_in(&h, &mut attacker, &page, "wonderland").await);
    // ... and on the login page.
    assert_throttled(&log_in(&h, &mut attacker, &wrong, "wonderland").await);

    // A second address spends the username's budget (3 + 2 = 5) on the device page only.
    let mut second = Browser::at("192.0.2.2");
    let mut page = second.get(&h, "/device").await;
    for _ in 0..2 {
        page = device_log_in(&h, &mut second, &page, "guess").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.text);
    }
    assert_throttled(&device_log_in(&h, &mut second, &page, "wonderland").await);
    // The account holder, at an address without failures, still signs in there.
    let mut holder = Browser::at("198.51.100.7");
    let page = holder.get(&h, "/device").await;
    let signed_in = device_log_in(&h, &mut holder, &page, "wonderland").await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.text);
    assert!(signed_in.text.contains("id=\"user_code\""), "{}", signed_in.text);

    let counts = metrics.rate_limited_counts();
    assert_eq!(counts[Scope::LoginFailuresSource as usize], 3, "{counts:?}");
    assert_eq!(counts[Scope::LoginFailuresUser as usize], 1, "{counts:?}");
}
