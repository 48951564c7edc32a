//! No secret, token, assertion or Authorization header ever reaches the logs, even at debug level.

use std::path::Path;

use compat_tests::Meshgate;
use serde_json::{Value, json};

use super::private_key_jwt::{assertion, register_key_client, token_with_assertion};
use super::support::{self, Jwt, basic, form, node, post_form};

/// Every credential a flow put on the wire, to be looked for in the logs.
#[derive(Default)]
struct Needles(Vec<(String, String)>);

impl Needles {
    fn add(&mut self, what: &str, value: &str) {
        if value.len() >= 8 {
            self.0.push((what.to_string(), value.to_string()));
        }
    }

    /// A JWT, whole and its signature alone.
    fn add_jwt(&mut self, what: &str, token: &str) {
        self.add(what, token);
        if let Some(signature) = token.rsplit('.').next() {
            self.add(&format!("{what} (signature part)"), signature);
        }
    }

    fn add_authorization(&mut self, value: &str) {
        self.add("Authorization header", value);
        if let Some(credentials) = value.strip_prefix("Basic ") {
            self.add("Basic credentials", credentials);
        }
    }

    /// What node's recording fetch saw: Authorization headers and credential form fields.
    fn add_sent(&mut self, sent: &Value) {
        for request in sent.as_array().expect("sent") {
            if let Some(authorization) = request["authorization"].as_str() {
                self.add_authorization(authorization);
            }
            for (name, value) in form_fields(request["body"].as_str().unwrap_or_default()) {
                match name.as_str() {
                    "client_secret" => self.add("client_secret form field", &value),
                    "client_assertion" => self.add_jwt("client assertion", &value),
                    "token" => self.add_jwt("token form field", &value),
                    _ => {}
                }
            }
        }
    }
}

fn form_fields(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
        .collect()
}

fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Log files the node may keep in its data directory (the "bounded local file buffer").
fn log_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            log_files(&path, found);
        } else if path.to_string_lossy().to_ascii_lowercase().contains("log") {
            found.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let (dir, keys_dir) = (support::temp_dir(), support::temp_dir());
    let mut server = Meshgate::spawn_with_env(dir.path(), &[("MESHGATE_LOG", "debug")]);
    let mut needles = Needles::default();

    let secret_client = server.client_add("logged-secret", "read write");
    needles.add("client secret", &secret_client.client_secret);
    let (key_client, private_jwk) = register_key_client(&server, keys_dir.path(), "logged-key", "ES256");
    needles.add("client secret (key client)", &key_client.client_secret);
    if let Some(d) = private_jwk["d"].as_str() {
        needles.add("client private key", d);
    }

    // openid-client: basic, post, introspection, revocation.
    let result = node(
        "openid-client",
        &json!({
            "issuer": server.issuer(),
            "client_id": secret_client.client_id,
            "client_secret": secret_client.client_secret,
            "scope": "read",
        }),
    );
    needles.add_sent(&result["sent"]);
    for name in ["basic_token", "post_token"] {
        needles.add_jwt("access token", result[name]["access_token"].as_str().expect("token"));
    }

    // openid-client with private_key_jwt.
    let result = node(
        "private-key-jwt",
        &json!({
            "issuer": server.issuer(),
            "client_id": key_client.client_id,
            "private_jwk": private_jwk,
            "scope": "read",
        }),
    );
    needles.add_sent(&result["sent"]);
    needles.add_jwt("access token", result["token"]["access_token"].as_str().expect("token"));

    // A hand-made assertion, used twice (the replay fails and must not be logged either).
    let signed = assertion(
        &private_jwk,
        &key_client.client_id,
        &server.url("/token"),
        &support::unique("jti"),
    );
    needles.add_jwt("client assertion", &signed);
    for _ in 0..2 {
        let answer = token_with_assertion(&server, &key_client.client_id, &signed).await;
        if answer.status == 200 {
            needles.add_jwt("access token", answer.json()["access_token"].as_str().expect("token"));
        }
    }

    // Raw Basic and post, introspection and revocation.
    let authorization = basic(&secret_client.client_id, &secret_client.client_secret);
    needles.add_authorization(&authorization);
    let token = support::access_token(&server, &secret_client, &[("scope", "write")]).await;
    needles.add_jwt("access token", &token);
    let introspected = support::introspect(&server, &secret_client, &token).await;
    assert_eq!(introspected["active"], true, "{introspected}");
    let revoked = post_form(
        &server.url("/revoke"),
        Some(&authorization),
        form(&[("token", &token), ("token_type_hint", "access_token")]),
    )
    .await;
    assert_eq!(revoked.status, 200, "revocation: {:?}", revoked.text);
    let answer = post_form(
        &server.url("/token"),
        None,
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &secret_client.client_id),
            ("client_secret", &secret_client.client_secret),
        ]),
    )
    .await;
    assert_eq!(answer.status, 200, "client_secret_post: {:?}", answer.text);
    needles.add_jwt("access token", answer.json()["access_token"].as_str().expect("token"));

    // Failed attempts: a wrong secret by Basic and by post, a forged bearer at introspection.
    let wrong = support::unique("wrong-secret");
    needles.add("wrong secret", &wrong);
    let wrong_basic = basic(&secret_client.client_id, &wrong);
    needles.add_authorization(&wrong_basic);
    let answer = post_form(
        &server.url("/token"),
        Some(&wrong_basic),
        form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(answer.status, 401, "wrong secret: {:?}", answer.text);
    let wrong_post = support::unique("wrong-post-secret");
    needles.add("wrong secret (post)", &wrong_post);
    let answer = post_form(
        &server.url("/token"),
        None,
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &secret_client.client_id),
            ("client_secret", &wrong_post),
        ]),
    )
    .await;
    assert_eq!(answer.status, 401, "wrong secret (post): {:?}", answer.text);
    let jwt = Jwt::parse(&token);
    let forged = format!("{}.{}.{}", jwt.header_part, jwt.payload_part, support::unique("forged"));
    needles.add_jwt("forged token", &forged);
    let introspected = support::introspect(&server, &secret_client, &forged).await;
    assert_eq!(introspected, json!({"active": false}));

    let status = server.stop();
    let stderr = server.stderr();
    let stdout = server.stdout();
    assert!(
        !stderr.trim().is_empty(),
        "MESHGATE_LOG=debug produced no logs on stderr (exit {status}); the test cannot see a leak"
    );

    assert!(
        stderr.lines().count() > 2,
        "MESHGATE_LOG=debug logged no more than the start and stop lines; the test cannot see a leak:\n{stderr}"
    );

    let mut places = vec![("stdout".to_string(), stdout), ("stderr".to_string(), stderr)];
    let mut files = Vec::new();
    log_files(dir.path(), &mut files);
    let log_file = dir.path().join("logs/meshgate.log");
    let logged = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        logged.lines().count() > 2,
        "the JSON log file {} holds no more than the start and stop lines; the test cannot see a leak \
         in it:\n{logged}",
        log_file.display()
    );
    for file in files {
        if let Ok(bytes) = std::fs::read(&file) {
            places.push((file.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    let mut leaks = Vec::new();
    for (place, text) in &places {
        for (what, value) in &needles.0 {
            if let Some(at) = text.find(value.as_str()) {
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                leaks.push(format!("{what} in {place}: {}", &text[line_start..line_end]));
            }
        }
    }
    assert!(
        needles.0.len() >= 10,
        "too few credentials collected: {}",
        needles.0.len()
    );
    assert!(leaks.is_empty(), "credentials in the logs:\n{}", leaks.join("\n"));
}
