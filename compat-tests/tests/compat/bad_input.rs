//! The error contract of `/token` and `/introspect` for bad and hostile input, over raw HTTP.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use compat_tests::{ClientOptions, Meshgate};
use serde_json::{Value, json};

use super::support::{self, Answer, Jwt, basic, form, post_form};

const API: &str = "https://api.example.test/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn(dir.path());
    let client = server.client_add_with(
        "bad-input",
        "read write",
        &ClientOptions {
            audiences: vec![API.to_string()],
            ..ClientOptions::default()
        },
    );
    let token_url = server.url("/token");
    let good = basic(&client.client_id, &client.client_secret);
    let cc = ("grant_type", "client_credentials");

    // The positive control: the registered audience is granted.
    let answer = post_form(&token_url, Some(&good), form(&[cc, ("resource", API)])).await;
    assert_eq!(answer.status, 200, "resource = registered audience: {:?}", answer.text);
    let jwt = Jwt::parse(answer.json()["access_token"].as_str().expect("access_token"));
    assert_eq!(support::string_list(&jwt.payload["aud"]), vec![API.to_string()]);

    let mut deviations = Vec::new();

    let wrong_secret = basic(&client.client_id, "not-the-secret");
    let answer = post_form(&token_url, Some(&wrong_secret), form(&[cc])).await;
    check(&mut deviations, "wrong secret (Basic)", &answer, 401, "invalid_client");
    if answer.header("www-authenticate").is_none() {
        deviations.push("wrong secret (Basic): no WWW-Authenticate header".into());
    }

    let unknown = basic("no-such-client", &client.client_secret);
    let answer = post_form(&token_url, Some(&unknown), form(&[cc])).await;
    check(
        &mut deviations,
        "unknown client (Basic)",
        &answer,
        401,
        "invalid_client",
    );
    if answer.header("www-authenticate").is_none() {
        deviations.push("unknown client (Basic): no WWW-Authenticate header".into());
    }

    let answer = post_form(
        &token_url,
        None,
        form(&[
            cc,
            ("client_id", &client.client_id),
            ("client_secret", "not-the-secret"),
        ]),
    )
    .await;
    check(&mut deviations, "wrong secret (post)", &answer, 401, "invalid_client");

    let device_code = "urn:ietf:params:oauth:grant-type:device_code";
    let answer = post_form(
        &token_url,
        Some(&good),
        form(&[("grant_type", device_code), ("device_code", "x")]),
    )
    .await;
    if answer.oauth_error_mismatch(400, "unsupported_grant_type").is_none() {
        eprintln!(
            "NOTE: grant_type={device_code} for a client_credentials-only client answers \
             unsupported_grant_type (accepted), not unauthorized_client"
        );
    } else {
        check(
            &mut deviations,
            "device_code grant for a client_credentials client",
            &answer,
            400,
            "unauthorized_client",
        );
    }

    // A grant the server supports but the client was not registered for: a client without any
    // grant (introspection/revocation only) asking for client_credentials.
    let printed = server.cli(&["client", "add", "--name", "no-grant", "--scope", "read", "--json"]);
    let no_grant: compat_tests::Registered = serde_json::from_str(printed.trim())
        .unwrap_or_else(|error| panic!("`client add` without --grant ({error}): {printed:?}"));
    let answer = post_form(
        &token_url,
        Some(&basic(&no_grant.client_id, &no_grant.client_secret)),
        form(&[cc]),
    )
    .await;
    check(
        &mut deviations,
        "client_credentials for a client without that grant",
        &answer,
        400,
        "unauthorized_client",
    );

    let answer = post_form(&token_url, Some(&good), form(&[("grant_type", "urn:example:nope")])).await;
    check(
        &mut deviations,
        "unknown grant_type",
        &answer,
        400,
        "unsupported_grant_type",
    );

    let answer = post_form(&token_url, Some(&good), form(&[cc, ("scope", "read admin")])).await;
    check(&mut deviations, "scope not registered", &answer, 400, "invalid_scope");

    let answer = post_form(
        &token_url,
        Some(&good),
        form(&[cc, ("resource", "https://evil.example.test/")]),
    )
    .await;
    check(&mut deviations, "resource not allowed", &answer, 400, "invalid_target");

    let answer = post_form(&token_url, Some(&good), form(&[("scope", "read")])).await;
    check(&mut deviations, "missing grant_type", &answer, 400, "invalid_request");

    let answer = post_form(
        &token_url,
        Some(&good),
        form(&[cc, ("scope", "read"), ("scope", "write")]),
    )
    .await;
    check(&mut deviations, "duplicated scope", &answer, 400, "invalid_request");

    let answer = post_form(
        &token_url,
        Some(&good),
        form(&[cc, ("grant_type", "client_credentials")]),
    )
    .await;
    check(
        &mut deviations,
        "duplicated grant_type",
        &answer,
        400,
        "invalid_request",
    );

    let answer = support::Answer::read(
        support::http()
            .post(&token_url)
            .header("Authorization", &good)
            .header("Content-Type", "application/json")
            .body(json!({"grant_type": "client_credentials", "scope": "read"}).to_string())
            .send()
            .await
            .expect("POST"),
    )
    .await;
    check(&mut deviations, "JSON body", &answer, 400, "invalid_request");

    let huge = format!("grant_type=client_credentials&scope={}", "a".repeat(2 * 1024 * 1024));
    match support::http()
        .post(&token_url)
        .header("Authorization", &good)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
    {
        Ok(response) if response.status() == 413 => {}
        Ok(response) => deviations.push(format!(
            "2 MiB body: status {} (want 413); body {:?}",
            response.status(),
            response.text().await.unwrap_or_default()
        )),
        Err(error) => deviations.push(format!("2 MiB body: no HTTP answer ({error})")),
    }
    // The same without a Content-Length (chunked): refused once the limit is passed, and the 413
    // must reach the client whole, not be lost to a reset of the connection it closes.
    match chunked_post(&server, "/token", &good, 2 * 1024 * 1024).await {
        Ok(head) if head.starts_with("HTTP/1.1 413") => {}
        Ok(head) => deviations.push(format!("2 MiB chunked body: want 413, got {head:?}")),
        Err(error) => deviations.push(format!("2 MiB chunked body: no HTTP answer ({error})")),
    }

    assert!(
        deviations.is_empty(),
        "the token endpoint deviates from the error contract:\n{}",
        deviations.join("\n")
    );

    // Still serving.
    support::token(&server, &client, &[("scope", "read")]).await;
    let health = support::get(&server.metrics_url("/healthz")).await;
    assert_eq!(health.status, 200, "/healthz after bad input: {:?}", health.text);
}

/// Records a deviation from the expected RFC 6749 §5.2 error answer.
fn check(deviations: &mut Vec<String>, case: &str, answer: &Answer, status: u16, code: &str) {
    if let Some(problem) = answer.oauth_error_mismatch(status, code) {
        deviations.push(format!("{case}: {problem}"));
    }
}

fn hs256(signing_input: &str, key: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), signing_input.as_bytes());
    URL_SAFE_NO_PAD.encode(tag.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_rejects_forged_tokens() {
    let (dir, other_dir) = (support::temp_dir(), support::temp_dir());
    let server = Meshgate::spawn(dir.path());
    let client = server.client_add("introspector", "read write");
    let token = support::access_token(&server, &client, &[("scope", "read")]).await;
    let jwt = Jwt::parse(&token);
    let active = support::introspect(&server, &client, &token).await;
    assert_eq!(active["active"], true, "a valid token must introspect active: {active}");

    let jwks_text = support::get(&server.url("/jwks.json")).await.text;
    let jwks: Value = serde_json::from_str(&jwks_text).expect("JWKS JSON");
    let ed25519 = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|key| key["crv"] == "Ed25519"))
        .unwrap_or_else(|| panic!("no Ed25519 key in {jwks}"))
        .clone();
    let x = ed25519["x"].as_str().expect("x");
    let public_key = URL_SAFE_NO_PAD.decode(x).expect("x is base64url");

    let mut forged: Vec<(String, String)> = Vec::new();

    let none_header = json!({"alg": "none", "typ": "at+jwt", "kid": jwt.header["kid"]});
    forged.push((
        "alg none".into(),
        format!("{}.{}.", support::encode_json(&none_header), jwt.payload_part),
    ));

    let hs_header = support::encode_json(&json!({
        "alg": "HS256", "typ": "at+jwt", "kid": jwt.header["kid"]
    }));
    let signing_input = format!("{hs_header}.{}", jwt.payload_part);
    let jwk_compact = ed25519.to_string();
    let jwk_in_document = jwks_text
        .find(&format!("\"{x}\""))
        .and_then(|at| {
            let start = jwks_text[..at].rfind('{')?;
            let end = at + jwks_text[at..].find('}')? + 1;
            Some(jwks_text[start..end].to_string())
        })
        .unwrap_or_else(|| jwk_compact.clone());
    for (name, key) in [
        ("HS256 keyed with the Ed25519 public key bytes", public_key.as_slice()),
        ("HS256 keyed with the base64url x text", x.as_bytes()),
        ("HS256 keyed with the JWK JSON (compact)", jwk_compact.as_bytes()),
        ("HS256 keyed with the JWK JSON (as served)", jwk_in_document.as_bytes()),
        ("HS256 keyed with the whole JWKS document", jwks_text.as_bytes()),
    ] {
        forged.push((name.into(), format!("{signing_input}.{}", hs256(&signing_input, key))));
    }

    let mut tampered = jwt.payload.clone();
    tampered["scope"] = json!("read write");
    forged.push((
        "payload tampered (scope widened), signature kept".into(),
        format!(
            "{}.{}.{}",
            jwt.header_part,
            support::encode_json(&tampered),
            jwt.signature_part
        ),
    ));
    let mut tampered = jwt.payload.clone();
    tampered["exp"] = json!(jwt.payload["exp"].as_u64().unwrap_or(0) + 86_400);
    forged.push((
        "payload tampered (exp extended), signature kept".into(),
        format!(
            "{}.{}.{}",
            jwt.header_part,
            support::encode_json(&tampered),
            jwt.signature_part
        ),
    ));

    let mut unknown_kid = jwt.header.clone();
    unknown_kid["kid"] = json!("unknown-kid-0123456789");
    forged.push((
        "unknown kid".into(),
        format!(
            "{}.{}.{}",
            support::encode_json(&unknown_kid),
            jwt.payload_part,
            jwt.signature_part
        ),
    ));
    forged.push(("garbage".into(), "not.a.jwt".into()));
    forged.push((
        "empty signature".into(),
        format!("{}.{}.", jwt.header_part, jwt.payload_part),
    ));

    let other = Meshgate::spawn(other_dir.path());
    let other_client = other.client_add("elsewhere", "read write");
    let foreign = support::access_token(&other, &other_client, &[("scope", "read")]).await;
    forged.push(("a token of another issuer".into(), foreign));

    let mut deviations = Vec::new();
    for (name, token) in &forged {
        let answer = post_form(
            &server.url("/introspect"),
            Some(&basic(&client.client_id, &client.client_secret)),
            form(&[("token", token)]),
        )
        .await;
        let body: Option<Value> = serde_json::from_str(&answer.text).ok();
        if answer.status != 200 || body != Some(json!({"active": false})) {
            deviations.push(format!(
                "{name}: status {} body {:?} (want 200 {{\"active\":false}})",
                answer.status, answer.text
            ));
        }
    }

    // Introspection requires client authentication.
    let answer = post_form(&server.url("/introspect"), None, form(&[("token", &token)])).await;
    if answer.status != 401 {
        deviations.push(format!(
            "introspection without client authentication: status {} body {:?} (want 401)",
            answer.status, answer.text
        ));
    }
    let answer = post_form(
        &server.url("/introspect"),
        Some(&basic(&client.client_id, "not-the-secret")),
        form(&[("token", &token)]),
    )
    .await;
    if let Some(problem) = answer.oauth_error_mismatch(401, "invalid_client") {
        deviations.push(format!("introspection with a wrong secret: {problem}"));
    }

    assert!(
        deviations.is_empty(),
        "introspection deviates:\n{}",
        deviations.join("\n")
    );

    // Still serving, and the genuine token is still active.
    let again = support::introspect(&server, &client, &token).await;
    assert_eq!(again["active"], true, "{again}");
    support::token(&server, &client, &[("scope", "read")]).await;
    let health = support::get(&server.metrics_url("/healthz")).await;
    assert_eq!(health.status, 200, "/healthz after forged tokens: {:?}", health.text);
}

/// Access tokens made short-lived through the configuration's environment override
/// (`bridge.access_token_ttl`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_inactive() {
    let dir = support::temp_dir();
    let server = Meshgate::spawn_with_env(dir.path(), &[("MESHGATE_BRIDGE__ACCESS_TOKEN_TTL", "4s")]);
    let client = server.client_add("short-lived", "read");
    let token = support::token(&server, &client, &[]).await;
    assert_eq!(token["expires_in"], 4, "MESHGATE_BRIDGE__ACCESS_TOKEN_TTL=4s: {token}");
    let access_token = token["access_token"].as_str().expect("access_token").to_string();
    let jwt = Jwt::parse(&access_token);
    assert_eq!(
        jwt.payload["exp"]
            .as_u64()
            .zip(jwt.payload["iat"].as_u64())
            .map(|(e, i)| e - i),
        Some(4),
        "{}",
        jwt.payload
    );
    let first = support::introspect(&server, &client, &access_token).await;
    assert_eq!(first["active"], true, "fresh 4 s token: {first}");

    // Expiry plus any leeway the server allows: poll, bounded.
    let mut last = first;
    for _ in 0..360 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = support::introspect(&server, &client, &access_token).await;
        if last == json!({"active": false}) {
            return;
        }
    }
    panic!("a 4 s token still introspects {last} after 90 s");
}

/// POSTs a chunked form body of `size` bytes to `path` over a raw connection (writing while the
/// server may already answer) and returns the head of the answer.
async fn chunked_post(server: &Meshgate, path: &str, authorization: &str, size: usize) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.info().listen.clone();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(head.as_bytes()).await?;
        write
            .write_all(b"24\r\ngrant_type=client_credentials&scope=\r\n")
            .await?;
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            // The server may stop reading once it has refused: later writes failing is fine.
            let frame = [
                format!("{:x}\r\n", chunk.len()).into_bytes(),
                chunk.clone(),
                b"\r\n".to_vec(),
            ]
            .concat();
            if write.write_all(&frame).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
        Ok::<(), std::io::Error>(())
    };
    let receive = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<String, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let (sent, answer) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(send, receive) })
        .await
        .map_err(|_| std::io::Error::other("no answer within 60 s"))?;
    sent?;
    answer
}
