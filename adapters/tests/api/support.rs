//! A fake upstream identity provider on 127.0.0.1 (discovery, JWKS, token endpoint) and test
//! signing keys.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The client the fake upstream knows at its token endpoint.
pub const CLIENT_ID: &str = "agent-7";
/// Its secret.
pub const CLIENT_SECRET: &str = "agent-7-secret-Zq9";
/// The access token the fake upstream issues.
pub const ACCESS_TOKEN: &str = "upstream-at-Kx81";

/// A canned answer: status, content type, body.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Canned {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    pub fn html(status: u16) -> Self {
        Self {
            status,
            content_type: "text/html",
            body: "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
        }
    }
}

#[derive(Default)]
pub struct IdpState {
    /// The issuer discovery claims; the server's own URL unless set.
    pub issuer: Option<String>,
    pub jwks: Value,
    pub discovery_answer: Option<Canned>,
    pub jwks_answer: Option<Canned>,
    pub token_answer: Option<Canned>,
    /// Accept connections and requests, never answer.
    pub frozen: bool,
    pub hits: HashMap<&'static str, usize>,
    /// Raw `Authorization` header and body of every token request.
    pub token_requests: Vec<(String, String)>,
}

/// The fake upstream. Dropping or [`FakeIdp::kill`]ing it closes the listener and every
/// connection, like a SIGKILLed process.
pub struct FakeIdp {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<IdpState>>,
    task: Option<JoinHandle<()>>,
}

impl FakeIdp {
    pub async fn start(jwks: Value) -> Self {
        let state = IdpState {
            jwks,
            ..IdpState::default()
        };
        Self::serve("127.0.0.1:0".parse().unwrap(), Arc::new(Mutex::new(state))).await
    }

    /// Starts again on the same address with the same state, after [`FakeIdp::kill`].
    pub async fn restart(&mut self) {
        self.kill();
        let mut restarted = Self::serve(self.addr, self.state.clone()).await;
        self.task = restarted.task.take();
    }

    async fn serve(addr: SocketAddr, state: Arc<Mutex<IdpState>>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, url) = (shared.clone(), url.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let (state, url) = (state.clone(), url.clone());
                        async move { Ok::<_, Infallible>(handle(&state, &url, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub fn hits(&self, path: &'static str) -> usize {
        self.state.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }

    pub fn set<F: FnOnce(&mut IdpState)>(&self, change: F) {
        change(&mut self.state.lock().unwrap());
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn handle(state: &Mutex<IdpState>, url: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = match request.uri().path() {
        "/.well-known/openid-configuration" => "discovery",
        "/jwks" => "jwks",
        "/token" => "token",
        _ => "other",
    };
    let frozen = {
        let mut state = state.lock().unwrap();
        *state.hits.entry(path).or_default() += 1;
        state.frozen
    };
    if frozen {
        std::future::pending::<()>().await;
    }
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut state = state.lock().unwrap();
    let canned = match path {
        "discovery" => state.discovery_answer.clone().unwrap_or_else(|| {
            let issuer = state.issuer.clone().unwrap_or_else(|| url.to_owned());
            Canned::json(
                200,
                json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{url}/jwks"),
                    "token_endpoint": format!("{url}/token"),
                    "authorization_endpoint": format!("{url}/authorize"),
                    "response_types_supported": ["code"],
                }),
            )
        }),
        "jwks" => state
            .jwks_answer
            .clone()
            .unwrap_or_else(|| Canned::json(200, state.jwks.clone())),
        "token" => {
            state.token_requests.push((authorization.clone(), body.clone()));
            state
                .token_answer
                .clone()
                .unwrap_or_else(|| token_answer(&authorization, &body))
        }
        _ => Canned::json(404, json!({"error": "not_found"})),
    };
    Response::builder()
        .status(canned.status)
        .header("content-type", canned.content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(canned.body)))
        .unwrap()
}

fn token_answer(authorization: &str, body: &str) -> Canned {
    let expected = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    if authorization != expected || !body.contains("grant_type=client_credentials") {
        return Canned::json(
            401,
            json!({"error": "invalid_client", "error_description": "bad credentials"}),
        );
    }
    let scope = form_value(body, "scope").unwrap_or_default();
    Canned::json(
        200,
        json!({"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 300, "scope": scope}),
    )
}

fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.replace('+', " ").replace("%20", " "))
    })
}

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A signing key of the fake upstream.
pub struct TestKey {
    pub kid: String,
    pub alg: &'static str,
    /// The public JWK, with `kid`, `alg` and `use`.
    pub jwk: Value,
    signer: Signer,
}

impl TestKey {
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
        Self {
            kid: kid.into(),
            alg: "EdDSA",
            jwk,
            signer: Signer::Ed(pair),
        }
    }

    pub fn es256(kid: &str) -> Self {
        let algorithm = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(algorithm, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        // No `alg`: the key type alone must decide.
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid});
        Self {
            kid: kid.into(),
            alg: "ES256",
            jwk,
            signer: Signer::Ec(pair),
        }
    }

    pub fn rs256(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let jwk = json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS256", "use": "sig"});
        Self {
            kid: kid.into(),
            alg: "RS256",
            jwk,
            signer: Signer::Rsa(pair),
        }
    }

    /// Signs `claims` with header `{alg, kid, typ}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({"alg": self.alg, "kid": self.kid, "typ": "at+jwt"}), claims)
    }

    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Ec(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut signature)
                    .unwrap();
                signature
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A JWKS of `keys`' public JWKs.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>()})
}
