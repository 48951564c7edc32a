//! Helpers shared by the scenarios: raw HTTP calls, JWT pieces, error assertions.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use compat_tests::{Meshgate, Registered};
use reqwest::StatusCode;
use serde_json::Value;

pub use compat_tests::node;

/// A plain reqwest client for raw requests: no redirects, generous timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// A response read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        Self { status, headers, text }
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|error| {
            panic!(
                "expected a JSON body ({error}); status {}, body {:?}",
                self.status, self.text
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Checks an RFC 6749 §5.2 error answer; returns a description of every mismatch.
    pub fn oauth_error_mismatch(&self, status: u16, code: &str) -> Option<String> {
        let body: Option<Value> = serde_json::from_str(&self.text).ok();
        let error = body.as_ref().and_then(|b| b["error"].as_str());
        let description = body.as_ref().map(|b| &b["error_description"]);
        let mut problems = Vec::new();
        if self.status.as_u16() != status {
            problems.push(format!("status {} (want {status})", self.status.as_u16()));
        }
        if error != Some(code) {
            problems.push(format!("error {error:?} (want {code:?})"));
        }
        if body.is_some() && !description.is_some_and(Value::is_string) {
            problems.push("no error_description string".to_string());
        }
        (!problems.is_empty()).then(|| format!("{}; body {:?}", problems.join(", "), self.text))
    }
}

/// `Authorization: Basic` for a client (RFC 6749 §2.3.1: id and secret form-urlencoded first).
pub fn basic(client_id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(client_id), form_encode(secret));
    format!("Basic {}", STANDARD.encode(pair))
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    let mut encoded = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => encoded.push(byte as char),
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// A form body from pairs, repeated names allowed.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// POSTs a form body to `url` with an optional Authorization header.
pub async fn post_form(url: &str, authorization: Option<&str>, body: String) -> Answer {
    let mut request = http()
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    Answer::read(request.send().await.expect("POST")).await
}

/// GETs `url`.
pub async fn get(url: &str) -> Answer {
    Answer::read(http().get(url).send().await.expect("GET")).await
}

/// client_credentials with client_secret_basic; panics unless it succeeds. Returns the token
/// response.
pub async fn token(server: &Meshgate, client: &Registered, extra: &[(&str, &str)]) -> Value {
    let mut pairs = vec![("grant_type", "client_credentials")];
    pairs.extend_from_slice(extra);
    let answer = post_form(
        &server.url("/token"),
        Some(&basic(&client.client_id, &client.client_secret)),
        form(&pairs),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "POST /token {pairs:?} for {}: {:?}",
        client.client_id,
        answer.text
    );
    let body = answer.json();
    assert!(body["access_token"].is_string(), "no access_token in {body}");
    body
}

/// The access token string of a successful client_credentials request.
pub async fn access_token(server: &Meshgate, client: &Registered, extra: &[(&str, &str)]) -> String {
    token(server, client, extra).await["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Introspects `token` at `server`, authenticated as `client`; asserts a 200 JSON answer.
pub async fn introspect(server: &Meshgate, client: &Registered, token: &str) -> Value {
    let answer = post_form(
        &server.url("/introspect"),
        Some(&basic(&client.client_id, &client.client_secret)),
        form(&[("token", token)]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "POST /introspect: {:?}", answer.text);
    answer.json()
}

/// The server's RFC 8414 metadata.
pub async fn metadata(server: &Meshgate) -> Value {
    let answer = get(&server.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(answer.status, StatusCode::OK, "metadata: {:?}", answer.text);
    answer.json()
}

/// The server's JWKS.
pub async fn jwks(server: &Meshgate) -> Value {
    let answer = get(&server.url("/jwks.json")).await;
    assert_eq!(answer.status, StatusCode::OK, "jwks: {:?}", answer.text);
    answer.json()
}

/// The `kid`s of a JWKS.
pub fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("JWKS without keys: {jwks}"))
        .iter()
        .filter_map(|key| key["kid"].as_str().map(str::to_string))
        .collect()
}

/// The three parts of a compact JWS: decoded header, decoded payload, raw signature part.
pub struct Jwt {
    pub header: Value,
    pub payload: Value,
    pub header_part: String,
    pub payload_part: String,
    pub signature_part: String,
}

impl Jwt {
    pub fn parse(token: &str) -> Self {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
        let decode = |part: &str| -> Value {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .unwrap_or_else(|error| panic!("bad base64url in {token}: {error}"));
            serde_json::from_slice(&bytes).unwrap_or_else(|error| panic!("bad JSON in {token}: {error}"))
        };
        Self {
            header: decode(parts[0]),
            payload: decode(parts[1]),
            header_part: parts[0].to_string(),
            payload_part: parts[1].to_string(),
            signature_part: parts[2].to_string(),
        }
    }
}

/// base64url (no padding) of a JSON value's serialization.
pub fn encode_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A JWT claim that may be a string or a list, as a list.
pub fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks the RFC 9068 claims meshgate promises on a client_credentials token; returns every
/// mismatch.
pub fn access_token_mismatches(
    jwt: &Jwt,
    issuer: &str,
    client_id: &str,
    scope: &str,
    audiences: &[&str],
    did: &str,
) -> Vec<String> {
    let (header, claims) = (&jwt.header, &jwt.payload);
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    expect(
        header["typ"] == "at+jwt",
        format!("header typ {} (want at+jwt)", header["typ"]),
    );
    expect(header["kid"].is_string(), format!("header kid {}", header["kid"]));
    expect(
        claims["iss"] == issuer,
        format!("iss {} (want {issuer})", claims["iss"]),
    );
    expect(
        claims["sub"] == client_id,
        format!("sub {} (want {client_id})", claims["sub"]),
    );
    expect(
        claims["client_id"] == client_id,
        format!("client_id {} (want {client_id})", claims["client_id"]),
    );
    expect(
        claims["scope"] == scope,
        format!("scope {} (want {scope:?})", claims["scope"]),
    );
    let aud = string_list(&claims["aud"]);
    let mut want: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
    let mut got = aud.clone();
    want.sort();
    got.sort();
    expect(got == want, format!("aud {} (want {audiences:?})", claims["aud"]));
    for claim in ["iat", "nbf", "exp"] {
        expect(
            claims[claim].is_u64(),
            format!("{claim} {} (want a number)", claims[claim]),
        );
    }
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    expect(
        iat.zip(exp).is_some_and(|(iat, exp)| exp > iat),
        format!("exp {exp:?} not after iat {iat:?}"),
    );
    expect(
        claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()),
        format!("jti {}", claims["jti"]),
    );
    expect(claims["node"] == did, format!("node {} (want {did})", claims["node"]));
    // cap: a list of {"with": audience, "can": scope}; together they grant the scope to the
    // audiences and nothing more.
    let granted: Vec<&str> = scope.split_whitespace().collect();
    match claims["cap"].as_array() {
        Some(caps) if !caps.is_empty() => {
            let mut covered = Vec::new();
            for cap in caps {
                let with = cap["with"].as_str().unwrap_or_default();
                expect(
                    aud.iter().any(|a| a == with),
                    format!("cap.with {} not in aud", cap["with"]),
                );
                let can = cap["can"].as_str().unwrap_or_default();
                for action in can.split_whitespace() {
                    expect(granted.contains(&action), format!("cap.can {action:?} not granted"));
                    covered.push(action.to_string());
                }
            }
            for action in &granted {
                expect(
                    covered.iter().any(|c| c == action),
                    format!("scope {action:?} missing from cap {}", claims["cap"]),
                );
            }
        }
        _ => problems.push(format!("cap {} (want a non-empty list)", claims["cap"])),
    }
    problems
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("meshgate-compat-")
        .tempdir()
        .expect("temporary directory")
}

/// A value unique enough for a test run (jti, wrong secrets).
pub fn unique(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    format!(
        "{label}-{}-{}",
        COUNTER.fetch_add(1, Ordering::Relaxed),
        URL_SAFE_NO_PAD.encode(bytes)
    )
}
