//! Token leakage in logs, for the browser flows: openid-client runs the authorization code flow
//! with PKCE (login and consent pages, code, ID token, refresh rotation and a refresh reuse)
//! against `meshgate serve` logging at debug level; no password, session cookie, authorization
//! code, access, ID or refresh token appears anywhere in its output.

use compat_tests::Meshgate;
use serde_json::Value;

use super::login::{REDIRECT, add_public_client, add_user};
use super::support::{self, node};

/// The value of the first `name=value` pair of a `Set-Cookie` header.
fn cookie_value(set_cookie: &str) -> &str {
    set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map_or("", |(_, value)| value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_flow_leaves_no_code_cookie_password_or_token_in_debug_logs() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn_with_env(
        dir.path(),
        &[("MESHGATE_LOG", "debug"), ("MESHGATE_BRIDGE__REFRESH_GRACE", "0s")],
    );
    let password = "leak-test horse battery staple";
    add_user(dir.path(), "leaky", password);
    let client_id = add_public_client(dir.path(), "openid profile email");
    let result = node(
        "code-flow",
        &serde_json::json!({
            "issuer": server.issuer(),
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "username": "leaky",
            "password": password,
            "scope": "openid profile email",
        }),
    );
    let callback = reqwest::Url::parse(result["callback"].as_str().expect("callback")).unwrap();
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code in the callback");
    let mut needles: Vec<(String, String)> = vec![
        ("password".into(), password.into()),
        ("authorization code".into(), code),
    ];
    for page in result["pages"].as_array().into_iter().flatten() {
        if let Some(cookie) = page["set_cookie"].as_str().map(cookie_value).filter(|v| v.len() >= 16) {
            needles.push(("session cookie".into(), cookie.to_owned()));
        }
    }
    for (label, answer) in [("tokens", &result["tokens"]), ("refreshed", &result["refreshed"])] {
        for field in ["access_token", "refresh_token", "id_token"] {
            if let Some(value) = answer[field].as_str() {
                needles.push((format!("{label} {field}"), value.to_owned()));
                // A JWT's signature alone is enough to find a leaked token.
                if let Some(signature) = value.rsplit('.').next().filter(|s| s.len() >= 32) {
                    needles.push((format!("{label} {field} signature"), signature.to_owned()));
                }
            }
        }
    }
    assert!(
        needles.iter().any(|(what, _)| what == "session cookie"),
        "the flow set no session cookie: {:#}",
        result["pages"]
    );
    assert!(needles.len() >= 8, "too few secrets to look for: {needles:?}");
    assert_eq!(
        result["reuse"]["body"],
        Value::from("invalid_grant"),
        "{:#}",
        result["reuse"]
    );
    let logs = server.output();
    assert!(
        logs.contains("DEBUG") || logs.contains("debug"),
        "debug logging is on:\n{logs}"
    );
    for (what, needle) in &needles {
        assert!(!logs.contains(needle.as_str()), "the {what} reached the logs");
    }
}
