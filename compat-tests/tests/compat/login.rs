//! People logging in: openid-client 6 runs the authorization code flow with PKCE against
//! `meshgate serve` (OIDC discovery, the login and consent pages posted without a browser, ID
//! token validation, userinfo, refresh rotation and reuse), and the helpers the mesh scenario uses
//! to log in over raw HTTP.

use std::path::Path;

use base64::Engine;
use compat_tests::{Meshgate, cli, cli_with_stdin};
use serde_json::Value;

use super::support::{self, node};

pub const REDIRECT: &str = "http://127.0.0.1/callback";

/// `meshgate user add NAME --password-stdin` (through the admin socket when a server runs).
pub fn add_user(data: &Path, name: &str, password: &str) {
    let out = cli_with_stdin(
        data,
        &[
            "user",
            "add",
            name,
            "--email",
            "person@example.test",
            "--name",
            "A Person",
            "--password-stdin",
            "--json",
        ],
        &format!("{password}\n"),
    );
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["username"], name, "{out}");
}

/// `meshgate client add --redirect-uri ... --public`; returns the client id.
pub fn add_public_client(data: &Path, scope: &str) -> String {
    let out = cli(
        data,
        &[
            "client",
            "add",
            "--name",
            "cli app",
            "--redirect-uri",
            REDIRECT,
            "--public",
            "--scope",
            scope,
            "--json",
        ],
    );
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["token_endpoint_auth_method"], "none", "{out}");
    answer["client_id"].as_str().unwrap().to_owned()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

/// Logs `username` in at `issuer` over raw HTTP (login page, consent page) and redeems the code;
/// returns the token response.
pub async fn log_in(issuer: &str, client_id: &str, username: &str, password: &str, scope: &str) -> Value {
    let http = support::http();
    let verifier = "compat-verifier-0123456789-0123456789-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let query = support::form(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "s"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let page = http.get(format!("{issuer}/authorize?{query}")).send().await.unwrap();
    assert_eq!(page.status(), 200, "login page: {:?}", page.headers().get("location"));
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let body = support::form(&[
        ("csrf_token", &hidden(&html, "csrf_token")),
        ("request", &hidden(&html, "request")),
        ("username", username),
        ("password", password),
    ]);
    let consent = http
        .post(format!("{issuer}/login"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    // A consent remembered (on any node: consents replicate) skips the consent page.
    let back = if consent.status() == 303 {
        consent
    } else {
        assert_eq!(consent.status(), 200, "consent page");
        let cookie = consent.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let html = consent.text().await.unwrap();
        let body = support::form(&[
            ("csrf_token", &hidden(&html, "csrf_token")),
            ("request", &hidden(&html, "request")),
            ("decision", "allow"),
        ]);
        http.post(format!("{issuer}/consent"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    };
    let location = reqwest::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap_or_else(|| panic!("no code in {location}"))
        .1
        .into_owned();
    let body = support::form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("client_id", client_id),
        ("code_verifier", verifier),
    ]);
    let answer = support::post_form(&format!("{issuer}/token"), None, body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()
}

/// A refresh at `issuer`; returns the raw answer.
pub async fn refresh(issuer: &str, client_id: &str, token: &str) -> support::Answer {
    let body = support::form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", client_id),
    ]);
    support::post_form(&format!("{issuer}/token"), None, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_code_flow_with_pkce_id_token_userinfo_and_refresh_rotation() {
    let dir = support::temp_dir();
    // No grace window: a rotated refresh token presented again is a reuse at once.
    let server = Meshgate::spawn_with_env(dir.path(), &[("MESHGATE_BRIDGE__REFRESH_GRACE", "0s")]);
    // Added while the server runs: through the admin socket.
    add_user(dir.path(), "alice", "correct horse battery staple");
    let client_id = add_public_client(dir.path(), "openid profile email");

    let result = node(
        "code-flow",
        &serde_json::json!({
            "issuer": server.issuer(),
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "username": "alice",
            "password": "correct horse battery staple",
            "scope": "openid profile email",
        }),
    );

    assert_eq!(result["metadata"]["issuer"], server.issuer(), "{result:#}");
    assert_eq!(result["metadata"]["authorization_endpoint"], server.url("/authorize"));
    // The session cookie is HttpOnly and SameSite=Lax (http issuer: not Secure).
    let cookie = result["pages"][0]["set_cookie"].as_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let callback = reqwest::Url::parse(result["callback"].as_str().unwrap()).unwrap();
    assert!(
        callback.query_pairs().any(|(k, v)| k == "iss" && v == server.issuer()),
        "RFC 9207 iss: {callback}"
    );
    let claims = &result["claims"];
    assert_eq!(claims["iss"], server.issuer());
    assert_eq!(claims["aud"], client_id.as_str());
    assert!(
        claims["auth_time"].is_u64() && claims["at_hash"].is_string(),
        "{claims}"
    );
    assert_eq!(claims["email"], "person@example.test");
    assert_eq!(result["id_token_header"]["alg"], "RS256");
    assert_eq!(result["userinfo"]["sub"], claims["sub"]);
    assert_eq!(result["userinfo"]["name"], "A Person");
    assert!(
        result["silent_location"].as_str().is_some_and(|l| l.contains("code=")),
        "prompt=none with the session and remembered consent: {result:#}"
    );
    let first = result["tokens"]["refresh_token"].as_str().unwrap();
    let second = result["refreshed"]["refresh_token"].as_str().unwrap();
    assert_ne!(first, second, "rotated");
    assert!(result["refreshed"]["id_token"].is_string());
    assert_eq!(result["reuse"]["ok"], false, "{:#}", result["reuse"]);
    assert_eq!(result["reuse"]["body"], "invalid_grant", "{:#}", result["reuse"]);
    // The reuse revoked the family: the newest token is dead too.
    assert_eq!(
        result["after_reuse"]["body"], "invalid_grant",
        "{:#}",
        result["after_reuse"]
    );
    // No token, code or password reached the logs.
    let logs = server.stderr();
    for secret in [first, second, "correct horse battery staple"] {
        assert!(!logs.contains(secret), "a secret in the logs:\n{logs}");
    }
}

/// Runs `compat-tests/python/authlib_compat.py` in the venv scripts/test.sh creates; panics (never
/// skips) when the venv is missing.
fn authlib(input: &Value) -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh (it creates the venv and installs authlib) before the compat tests",
        python.display()
    );
    let mut child = std::process::Command::new(&python)
        .arg(dir.join("authlib_compat.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "authlib_compat.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_validates_the_metadata_and_rotates_refresh_tokens() {
    let dir = support::temp_dir();
    // An https issuer, as RFC 8414 requires (the listener itself is plain http on 127.0.0.1).
    let issuer = "https://meshgate.test";
    let server = Meshgate::spawn_args(
        dir.path(),
        &[
            "--issuer",
            issuer,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--sync-listen",
            "127.0.0.1:0",
        ],
        &[("MESHGATE_BRIDGE__REFRESH_GRACE", "0s")],
    );
    add_user(dir.path(), "bob", "pw-bob");
    let client_id = add_public_client(dir.path(), "openid offline_access");
    let base = server.url("");
    let tokens = log_in(&base, &client_id, "bob", "pw-bob", "openid offline_access").await;
    let result = authlib(&serde_json::json!({
        "issuer": issuer,
        "rfc8414_url": server.url("/.well-known/oauth-authorization-server"),
        "oidc_url": server.url("/.well-known/openid-configuration"),
        "token_endpoint": server.url("/token"),
        "client_id": client_id,
        "refresh_token": tokens["refresh_token"],
    }));
    for kind in ["rfc8414", "oidc"] {
        assert_eq!(result[kind]["error"], Value::Null, "{kind}: {:#}", result[kind]);
        assert_eq!(result[kind]["issuer_matches"], true, "{kind}");
    }
    assert!(result["refreshed"]["access_token"].is_string(), "{result:#}");
    assert_ne!(result["refreshed"]["refresh_token"], tokens["refresh_token"]);
    assert_ne!(
        result["refreshed_again"]["refresh_token"],
        result["refreshed"]["refresh_token"]
    );
    assert_eq!(result["reuse"]["error"], "invalid_grant", "{result:#}");
    assert_eq!(result["after_reuse"]["error"], "invalid_grant", "{result:#}");
}
