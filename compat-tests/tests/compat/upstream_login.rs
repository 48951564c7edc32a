//! "Sign in with the upstream" through real processes: `meshgate serve` with node
//! `oidc-provider` (bench/oidc/upstream.mjs, development login pages that accept any login name)
//! configured as an upstream with `login:`. A browser without JavaScript — cookies kept, every
//! redirect followed by hand — starts at meshgate's `/authorize`, presses "Sign in with Corp
//! SSO", signs in and consents at the upstream's own pages, comes back to meshgate's callback,
//! consents there and the client redeems the code. Then the upstream is killed: the button leads
//! back to the login page with a 503 saying so, and a local account still signs in — except at a
//! client whose degradation policy is `fail_closed`.

use std::time::{Duration, Instant};

use base64::Engine;
use compat_tests::Meshgate;
use reqwest::StatusCode;
use serde_json::Value;

use super::login::{REDIRECT, add_public_client, add_user};
use super::support::{self, Jwt};
use super::upstream::{Browser, Upstream};

const LOGIN_CLIENT: &str = "meshgate-sso";
const LOGIN_SECRET: &str = "meshgate-sso-secret-7d3f0a9c51e2";
/// Registered at the upstream as a native client's loopback redirect: any port matches.
const CALLBACK: &str = "http://127.0.0.1/login/upstream/callback";
const VERIFIER: &str = "upstream-login-verifier-0123456789-0123456789";

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

fn param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn authorize_url(server: &Meshgate, client_id: &str) -> String {
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        VERIFIER.as_bytes(),
    ));
    let query = support::form(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile email"),
        ("state", "client-state"),
        ("nonce", "client-nonce"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    server.url(&format!("/authorize?{query}"))
}

/// Presses the "Sign in with Corp SSO" button of a login page; returns the answer.
async fn press_button(browser: &mut Browser, server: &Meshgate, page: &str) -> (StatusCode, Option<String>, String) {
    assert!(page.contains("Sign in with Corp SSO"), "no upstream button: {page}");
    let fields = [
        ("csrf_token", hidden(page, "csrf_token")),
        ("request", hidden(page, "request")),
        ("upstream", "corp".to_owned()),
    ];
    let request = browser.http.post(server.url("/login/upstream")).form(&fields);
    browser.send(request).await
}

async fn redeem(server: &Meshgate, client_id: &str, location: &str) -> Value {
    assert_eq!(param(location, "state").as_deref(), Some("client-state"), "{location}");
    let code = param(location, "code").unwrap_or_else(|| panic!("no code in {location}"));
    let body = support::form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("client_id", client_id),
        ("code_verifier", VERIFIER),
    ]);
    let answer = support::post_form(&server.url("/token"), None, body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()
}

fn upstream_available(server: &Meshgate) -> bool {
    let printed = server.cli(&["upstream", "status", "--json"]);
    let status: Value = serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("{printed:?}: {e}"));
    status["upstreams"][0]["available"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_the_upstream_and_local_accounts_through_an_outage() {
    let mut upstream = Upstream::start_with(&[
        ("UPSTREAM_LOGIN_CLIENT_ID", LOGIN_CLIENT),
        ("UPSTREAM_LOGIN_CLIENT_SECRET", LOGIN_SECRET),
        ("UPSTREAM_LOGIN_REDIRECT", CALLBACK),
        ("UPSTREAM_LOGIN_NATIVE", "1"),
    ]);
    let dir = support::temp_dir();
    let data = dir.path().join("data");
    add_user(&data, "bob", "local-password-bob");
    let client_id = add_public_client(&data, "openid profile email");
    // A client whose degradation policy is fail_closed: no sign-in at all while the upstream is out.
    let strict_id = add_public_client(&data, "openid profile email");
    let config = dir.path().join("meshgate.yaml");
    std::fs::write(
        &config,
        format!(
            "upstreams:\n  - name: corp\n    issuer: {issuer}\n    audience: meshgate\n    client_id: {LOGIN_CLIENT}\n    \
client_secret: {LOGIN_SECRET}\n    timeouts: {{ token_deadline: 2s }}\n    \
breaker: {{ failure_threshold: 1, open_for: 10m, max_open_for: 10m }}\n    login: {{ display_name: Corp SSO }}\n\
federation:\n  clients:\n    {strict_id}: {{ on_upstream_unavailable: fail_closed }}\n",
            issuer = upstream.issuer
        ),
    )
    .unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let server = Meshgate::spawn_args(
        &data,
        &[
            "--config",
            &config_arg,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--sync-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !upstream_available(&server) {
        assert!(Instant::now() < deadline, "the upstream never became available");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // meshgate's login page offers the upstream beside the local form.
    let mut browser = Browser {
        http: support::http(),
        cookies: Default::default(),
    };
    let (status, _, page) = browser.send(browser.http.get(authorize_url(&server, &client_id))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("name=\"password\""), "the local form: {page}");
    let (status, location, body) = press_button(&mut browser, &server, &page).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let to_upstream = location.expect("a redirect to the upstream");
    assert!(to_upstream.starts_with(&upstream.issuer), "{to_upstream}");
    for (name, expected) in [
        ("response_type", Some("code")),
        ("client_id", Some(LOGIN_CLIENT)),
        ("code_challenge_method", Some("S256")),
    ] {
        assert_eq!(param(&to_upstream, name).as_deref(), expected, "{to_upstream}");
    }
    assert!(param(&to_upstream, "state").is_some() && param(&to_upstream, "nonce").is_some());
    assert_eq!(
        param(&to_upstream, "redirect_uri"),
        Some(server.url("/login/upstream/callback"))
    );

    // The upstream's own pages: login (any name), then consent.
    let base = upstream.issuer.clone();
    let interaction = browser.redirected(&base, &to_upstream).await;
    let resume = browser
        .submit(
            &base,
            &interaction,
            &[("prompt", "login"), ("login", "alice"), ("password", "any")],
        )
        .await;
    let consent = browser.redirected(&base, &resume).await;
    let resume = browser.submit(&base, &consent, &[("prompt", "consent")]).await;
    let callback = browser.redirected(&base, &resume).await;
    assert!(
        callback.starts_with(&server.url("/login/upstream/callback")),
        "{callback}"
    );

    // Back at meshgate: signed in as the upstream identity, the original request resumes.
    let (status, _, consent_page) = browser.send(browser.http.get(&callback)).await;
    assert_eq!(status, StatusCode::OK, "{consent_page}");
    assert!(consent_page.contains("Allow access?"), "{consent_page}");
    assert!(consent_page.contains("upstream:corp:alice"), "{consent_page}");
    // The callback is single-use.
    let (status, _, replay) = browser.send(browser.http.get(&callback)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{replay}");
    let fields = [
        ("csrf_token", hidden(&consent_page, "csrf_token")),
        ("request", hidden(&consent_page, "request")),
        ("decision", "allow".to_owned()),
    ];
    let (status, location, body) = browser
        .send(browser.http.post(server.url("/consent")).form(&fields))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let tokens = redeem(&server, &client_id, &location.unwrap()).await;
    let id_token = Jwt::parse(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token.payload["iss"], server.issuer());
    assert_eq!(id_token.payload["nonce"], "client-nonce");
    assert_eq!(id_token.payload["preferred_username"], "upstream:corp:alice");
    assert_eq!(id_token.payload["name"], "User alice");
    assert_eq!(id_token.payload["email"], "alice@upstream.test");
    let access = Jwt::parse(tokens["access_token"].as_str().unwrap());
    assert_eq!(access.payload["sub"], id_token.payload["sub"]);
    // The user exists in meshgate's (replicated) user store, without a password.
    let users: Value = serde_json::from_str(server.cli(&["user", "list", "--json"]).trim()).unwrap();
    let alice = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "upstream:corp:alice")
        .unwrap_or_else(|| panic!("{users:#}"));
    assert_eq!(alice["sub"], id_token.payload["sub"]);
    // No password signs the upstream user in locally.
    let mut other = Browser {
        http: support::http(),
        cookies: Default::default(),
    };
    let (_, _, page) = other.send(other.http.get(authorize_url(&server, &client_id))).await;
    let fields = [
        ("csrf_token", hidden(&page, "csrf_token")),
        ("request", hidden(&page, "request")),
        ("username", "upstream:corp:alice".to_owned()),
        ("password", String::new()),
    ];
    let (status, _, _) = other.send(other.http.post(server.url("/login")).form(&fields)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The upstream goes away: the button says so, and a local account still signs in.
    upstream.kill();
    let mut browser = Browser {
        http: support::http(),
        cookies: Default::default(),
    };
    // meshgate probes the upstream when the button is pressed, unless it answered within the last
    // 2 s (a burst of presses shares one probe): press until the probe has seen the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    let down = loop {
        let (status, _, page) = browser.send(browser.http.get(authorize_url(&server, &client_id))).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let (status, location, down) = press_button(&mut browser, &server, &page).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break down;
        }
        assert_eq!(status, StatusCode::SEE_OTHER, "{location:?} {down}");
        assert!(
            Instant::now() < deadline,
            "the button kept sending browsers to the dead upstream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(down.contains("Corp SSO cannot be reached right now"), "{down}");
    // The failed probe opened the breaker: the upstream counts as unavailable.
    assert!(!upstream_available(&server));
    // A fail_closed client's page offers no local form, and its local sign-in is refused.
    let mut strict = Browser {
        http: support::http(),
        cookies: Default::default(),
    };
    let (status, _, page) = strict.send(strict.http.get(authorize_url(&server, &strict_id))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(!page.contains("name=\"password\""), "{page}");
    assert!(page.contains("does not allow signing in without it"), "{page}");
    let fields = [
        ("csrf_token", hidden(&page, "csrf_token")),
        ("request", hidden(&page, "request")),
        ("username", "bob".to_owned()),
        ("password", "local-password-bob".to_owned()),
    ];
    let (status, _, refused) = strict.send(strict.http.post(server.url("/login")).form(&fields)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    // The page offers the local form again, for the same request.
    let fields = [
        ("csrf_token", hidden(&down, "csrf_token")),
        ("request", hidden(&down, "request")),
        ("username", "bob".to_owned()),
        ("password", "local-password-bob".to_owned()),
    ];
    let (status, _, consent_page) = browser
        .send(browser.http.post(server.url("/login")).form(&fields))
        .await;
    assert_eq!(status, StatusCode::OK, "{consent_page}");
    let fields = [
        ("csrf_token", hidden(&consent_page, "csrf_token")),
        ("request", hidden(&consent_page, "request")),
        ("decision", "allow".to_owned()),
    ];
    let (status, location, body) = browser
        .send(browser.http.post(server.url("/consent")).form(&fields))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let tokens = redeem(&server, &client_id, &location.unwrap()).await;
    assert_eq!(
        Jwt::parse(tokens["id_token"].as_str().unwrap()).payload["preferred_username"],
        "bob"
    );
    // The helper the other scenarios use works too.
    let again = super::login::log_in(
        &server.url(""),
        &client_id,
        "bob",
        "local-password-bob",
        "openid profile email",
    )
    .await;
    assert!(again["access_token"].is_string());
    let logs = server.output();
    assert!(
        !logs.contains(LOGIN_SECRET),
        "the upstream client secret reached the logs"
    );
}
