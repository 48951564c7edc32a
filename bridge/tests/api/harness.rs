//! Builds a router over a fresh data directory with a manual clock, and sends it requests.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use bridge::http::{AppState, Settings, app};
use bridge::keys::Alg;
use bridge::metrics::Metrics;
use bridge::node::{AdminRequest, Node};
use http_body_util::BodyExt;
use mesh::clock::ManualClock;
use serde_json::Value;
use tower::ServiceExt;

pub const ISSUER: &str = "http://issuer.test";
pub const START: u64 = 1_800_000_000;

pub struct Harness {
    pub state: AppState,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: Value,
    /// The body as text (HTML pages).
    pub text: String,
}

impl Answer {
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with_issuer(ISSUER)
    }

    pub fn with_issuer(issuer: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START);
        let state = Self::state(dir.path(), &clock, issuer);
        Self { state, clock, dir }
    }

    /// A harness whose node federates `upstreams` (YAML of the `upstreams:` list) with the
    /// `federation:` section `federation` (YAML).
    pub fn federated(upstreams: &str, federation: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START);
        let configs: Vec<adapters::config::UpstreamConfig> = serde_yaml::from_str(upstreams).unwrap();
        let federation: bridge::federation::FederationConfig = serde_yaml::from_str(federation).unwrap();
        let data = dir.path().join("data");
        let node = Node::open(&data, Arc::new(clock.clone()), Alg::EdDSA, vec![]).unwrap();
        let upstreams = bridge::upstream::Upstreams::build(&configs, Some(&data), Arc::new(clock.clone())).unwrap();
        let state = AppState::with_federation(
            Self::settings(ISSUER),
            node,
            Arc::new(clock.clone()),
            Arc::new(Metrics::default()),
            bridge::http::Federation::new(upstreams, federation),
        );
        Self { state, clock, dir }
    }

    fn settings(issuer: &str) -> Settings {
        Settings {
            issuer: issuer.into(),
            resource: issuer.into(),
            token_ttl: 600,
            default_alg: Alg::EdDSA,
            max_body_bytes: 64 * 1024,
            verified_token_cache: 1024,
        }
    }

    fn state(dir: &std::path::Path, clock: &ManualClock, issuer: &str) -> AppState {
        let node = Node::open(&dir.join("data"), Arc::new(clock.clone()), Alg::EdDSA, vec![]).unwrap();
        let settings = Settings {
            issuer: issuer.into(),
            resource: issuer.into(),
            token_ttl: 600,
            default_alg: Alg::EdDSA,
            max_body_bytes: 64 * 1024,
            verified_token_cache: 1024,
        };
        AppState::new(settings, node, Arc::new(clock.clone()), Arc::new(Metrics::default()))
    }

    /// Drops this server and opens the same data directory again (a restart).
    pub fn restart(self) -> Self {
        let Harness { state, clock, dir } = self;
        drop(state);
        let state = Self::state(dir.path(), &clock, ISSUER);
        Self { state, clock, dir }
    }

    pub fn admin(&self, request: AdminRequest) -> Result<Value, bridge::error::Error> {
        self.state.with_node(|node| node.execute(request))
    }

    /// Registers a client_credentials client; returns (id, secret).
    pub fn client(&self, scopes: &str, audiences: &[&str], alg: Option<Alg>) -> (String, String) {
        let answer = self
            .admin(AdminRequest::ClientAdd {
                name: "test".into(),
                grants: vec!["client_credentials".into()],
                scopes: vec![scopes.into()],
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                token_alg: alg,
                jwks: None,
                secret: None,
                degradation: None,
            })
            .unwrap();
        (
            answer["client_id"].as_str().unwrap().into(),
            answer["client_secret"].as_str().unwrap().into(),
        )
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer {
            status,
            headers,
            json,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    pub async fn post_form(&self, path: &str, basic: Option<(&str, &str)>, body: &str) -> Answer {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            request = request.header(header::AUTHORIZATION, basic_header(id, secret));
        }
        self.send(request.body(Body::from(body.to_owned())).unwrap()).await
    }

    /// A token for (id, secret) with extra form parameters.
    pub async fn token(&self, id: &str, secret: &str, extra: &str) -> Answer {
        let body = format!("grant_type=client_credentials{extra}");
        self.post_form("/token", Some((id, secret)), &body).await
    }

    pub async fn introspect(&self, id: &str, secret: &str, token: &str) -> Value {
        let body = form(&[("token", token)]);
        let answer = self.post_form("/introspect", Some((id, secret)), &body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        answer.json
    }
}

pub fn basic_header(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).unwrap()
}
