//! Federated clients against an in-process upstream stub (discovery, JWKS and a token endpoint
//! on 127.0.0.1:0 whose answers the test chooses): forwarding, the recorded salted hash, local
//! authentication by policy while the upstream is down, `max_offline` with the injected clock,
//! passthrough mode, unknown clients, and bad upstream answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bridge::keys::{Alg, SigningKey, published_jwk};
use bridge::node::AdminRequest;
use serde_json::{Value, json};

use super::harness::*;

const AGENT: &str = "fed-agent";
const SECRET: &str = "their-secret-at-the-upstream";

/// What the stub's token endpoint answers.
#[derive(Clone)]
enum Mode {
    /// A signed JWT with these claims (over the defaults), when the credentials are right.
    Token(Value),
    /// An opaque token.
    Opaque,
    /// `200` with an HTML page.
    Html,
    /// `200` with a body that is not JSON.
    NotJson,
    /// A JWT with `alg: none`.
    Unsigned,
    /// `500`.
    ServerError,
    /// `401 invalid_client` whatever the credentials (the secret was revoked upstream).
    Refuse,
}

struct Stub {
    issuer: String,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<Mutex<u32>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Stub {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let key = Arc::new(key);
        let jwks = json!({"keys": [published_jwk(key.public_jwk(), key.kid(), "ES256")]});
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "token_endpoint": format!("{issuer}/token"),
        });
        let mode = Arc::new(Mutex::new(Mode::Token(json!({}))));
        let hits = Arc::new(Mutex::new(0));
        let token = {
            let (mode, hits, issuer) = (mode.clone(), hits.clone(), issuer.clone());
            move |headers: HeaderMap| {
                let mode = mode.lock().unwrap().clone();
                *hits.lock().unwrap() += 1;
                async move { answer(&mode, &headers, &key, &issuer) }
            }
        };
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route("/jwks", get(move || async move { axum::Json(jwks) }))
            .route("/token", post(token));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            issuer,
            mode,
            hits,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> u32 {
        *self.hits.lock().unwrap()
    }

    async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

fn answer(mode: &Mode, headers: &HeaderMap, key: &SigningKey, issuer: &str) -> Response {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let authorized = [AGENT, "strict"]
        .iter()
        .any(|id| presented == Some(basic_header(id, SECRET).as_str()));
    let claims = |extra: &Value| {
        let mut claims = json!({
            "iss": issuer, "sub": AGENT, "aud": "meshgate", "client_id": AGENT,
            "iat": START, "exp": START + 3600, "scope": "api.read api.write",
        });
        for (name, value) in extra.as_object().unwrap() {
            claims[name] = value.clone();
        }
        claims
    };
    match mode {
        Mode::Token(_) | Mode::Opaque | Mode::Unsigned if !authorized => {
            (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response()
        }
        Mode::Token(extra) => {
            let token = key.sign_jwt(&serde_json::to_vec(&claims(extra)).unwrap()).unwrap();
            axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "api.read api.write"}))
                .into_response()
        }
        Mode::Opaque => {
            axum::Json(json!({"access_token": "opaque-upstream-token", "token_type": "Bearer", "expires_in": 120}))
                .into_response()
        }
        Mode::Unsigned => {
            let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
            let payload = b64(&serde_json::to_vec(&claims(&json!({}))).unwrap());
            axum::Json(json!({"access_token": format!("{header}.{payload}."), "token_type": "Bearer"})).into_response()
        }
        Mode::Html => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Maintenance</body></html>",
        )
            .into_response(),
        Mode::NotJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"access_token\":",
        )
            .into_response(),
        Mode::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        Mode::Refuse => (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response(),
    }
}

fn upstreams(stub: &Stub, extra: &str) -> String {
    format!(
        "- name: corp\n  issuer: {}\n  audience: meshgate\n  algorithms: [ES256]\n  breaker: {{ failure_threshold: 1, open_for: 30s }}\n  scope_map: {{ api.read: [read], api.write: [write] }}\n{extra}",
        stub.issuer
    )
}

async fn harness(stub: &Stub, extra: &str, federation: &str) -> Harness {
    let h = Harness::federated(&upstreams(stub, extra), federation);
    h.state.federation().upstreams.refresh_all().await.unwrap();
    h
}

fn add(h: &Harness, client_id: &str, scopes: &str, mode: Option<&str>, policy: Option<&str>) -> Value {
    h.admin(AdminRequest::ClientAddFederated {
        name: "federated agent".into(),
        client_id: client_id.into(),
        upstream: "corp".into(),
        mode: mode.map(str::to_owned),
        grants: vec![],
        scopes: scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        audiences: vec![],
        token_alg: None,
        degradation: policy.map(|mode| mesh::state::ClientDegradation {
            on_upstream_unavailable: Some(mode.into()),
            max_offline_secs: Some(3600),
            degraded_ttl_secs: Some(45),
        }),
    })
    .unwrap()
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(token.split('.').nth(1).unwrap())).unwrap()
}

fn verified_secrets(h: &Harness, client_id: &str) -> Vec<mesh::state::VerifiedSecret> {
    h.state
        .view()
        .clients
        .get(client_id)
        .and_then(|c| c.record.federation.clone())
        .map(|f| f.verified_secrets)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_federated_client_is_forwarded_then_served_locally_by_policy() {
    let mut stub = Stub::start().await;
    let h = harness(&stub, "", "{}").await;
    let shown = add(&h, AGENT, "read", None, Some("issue_local"));
    assert!(shown.get("client_secret").is_none(), "{shown}");
    assert_eq!(shown["federation"]["upstream"], "corp");
    assert_eq!(shown["token_endpoint_auth_methods"], json!([]));

    // Up: forwarded; upstream scopes mapped (api.read → read, api.write → write) and narrowed to
    // the client's `read`; sub from the upstream token; never longer than it.
    let answer = h.token(AGENT, SECRET, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["scope"], "read");
    let claims = claims_of(answer.json["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["iss"].as_str(), claims["sub"].as_str()),
        (Some(ISSUER), Some(AGENT))
    );
    assert!(claims.get("degraded").is_none());
    assert_eq!(answer.json["expires_in"], 600);
    let recorded = verified_secrets(&h, AGENT);
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].hash.starts_with("$argon2"), "salted argon2 PHC");
    assert!(!recorded[0].hash.contains(SECRET));
    // Asking for a scope the client may not have here.
    let answer = h.token(AGENT, SECRET, "&scope=write").await;
    assert_eq!(answer.error(), "invalid_scope", "{}", answer.json);
    // A wrong secret: the upstream refuses, and so does meshgate.
    let answer = h.token(AGENT, "wrong", "").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    // A second success records nothing new.
    assert_eq!(h.token(AGENT, SECRET, "").await.status, StatusCode::OK);
    assert_eq!(verified_secrets(&h, AGENT), recorded);
    // Post credentials work the same.
    let answer = h
        .post_form(
            "/token",
            None,
            &form(&[
                ("grant_type", "client_credentials"),
                ("client_id", AGENT),
                ("client_secret", SECRET),
            ]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    // Only client_credentials.
    let answer = h
        .post_form(
            "/token",
            Some((AGENT, SECRET)),
            &form(&[("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")]),
        )
        .await;
    assert_eq!(answer.error(), "unauthorized_client", "{}", answer.json);

    // Down: the recorded hash authenticates; issue_local gives degraded tokens.
    stub.kill().await;
    let answer = h.token(AGENT, SECRET, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["expires_in"], 45);
    assert_eq!(answer.json["scope"], "read");
    let claims = claims_of(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["degraded"], true);
    assert_eq!(claims["sub"], AGENT);
    let answer = h.token(AGENT, "wrong", "").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let status = &h.state.upstream_status()[0];
    assert_eq!(status.breaker.state, "open");

    // Past max_offline (1 h) even issue_local fails closed.
    h.clock.advance(3601);
    let answer = h.token(AGENT, SECRET, "").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        "{}",
        answer.json
    );
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn fail_closed_passthrough_and_unknown_clients() {
    let mut stub = Stub::start().await;
    let h = harness(&stub, "  federate_unknown_clients: true\n", "{}").await;
    add(&h, "strict", "", None, Some("fail_closed"));

    // An unknown client id the upstream accepts is recorded as federated, with its mapped scopes.
    assert!(h.state.view().clients.get(AGENT).is_none());
    let answer = h.token(AGENT, SECRET, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["scope"], "read write");
    let shown = h
        .admin(AdminRequest::ClientShow {
            client_id: AGENT.into(),
        })
        .unwrap();
    assert_eq!(shown["federation"]["upstream"], "corp", "{shown}");
    assert_eq!(shown["scopes"], json!(["read", "write"]));
    // One the upstream refuses is not.
    let answer = h.token("stranger", "x", "").await;
    assert_eq!(answer.error(), "invalid_client");
    assert!(h.state.view().clients.get("stranger").is_none());

    // A fail_closed client, while the upstream is up: forwarded, its secret recorded.
    let answer = h.token("strict", SECRET, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(verified_secrets(&h, "strict").len(), 1);

    // Passthrough: the upstream's token itself.
    h.admin(AdminRequest::ClientRemove {
        client_id: AGENT.into(),
    })
    .unwrap();
    add(&h, AGENT, "", Some("passthrough"), None);
    stub.set(Mode::Opaque);
    let answer = h.token(AGENT, SECRET, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["access_token"], "opaque-upstream-token");
    assert_eq!(answer.json["expires_in"], 120);

    // Bad upstream answers: never a token taken on trust.
    for (mode, what) in [
        (Mode::Unsigned, "unsigned JWT"),
        (Mode::Token(json!({"iss": "https://elsewhere.example"})), "wrong issuer"),
        (Mode::Token(json!({"aud": "someone-else"})), "wrong audience"),
    ] {
        h.admin(AdminRequest::ClientRemove {
            client_id: AGENT.into(),
        })
        .unwrap();
        add(&h, AGENT, "", None, None);
        stub.set(mode);
        let answer = h.token(AGENT, SECRET, "").await;
        assert_eq!(
            (answer.status, answer.error()),
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            "{what}: {}",
            answer.json
        );
        assert!(answer.json.get("access_token").is_none());
        assert!(
            answer.json["error_description"]
                .as_str()
                .unwrap()
                .contains("does not verify")
        );
    }
    // HTML, broken JSON and 5xx count as the upstream being unavailable: the policy decides
    // (here: no secret was ever accepted for the client, so nothing can be checked locally).
    for (mode, what) in [
        (Mode::Html, "HTML page"),
        (Mode::NotJson, "invalid JSON"),
        (Mode::ServerError, "500"),
    ] {
        stub.set(mode);
        let hits = stub.hits();
        let answer = h.token(AGENT, SECRET, "").await;
        assert!(stub.hits() <= hits + 1);
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {}",
            answer.json
        );
        assert!(answer.json.get("access_token").is_none(), "{what}");
    }

    // fail_closed: a recorded secret does not help while the upstream is down (the breaker is
    // open after the failures above).
    let answer = h.token("strict", SECRET, "").await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        "{}",
        answer.json
    );
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    stub.kill().await;
    let answer = h.token("strict", SECRET, "").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.json);
    let answer = h.token("strict", "wrong", "").await;
    assert_eq!(answer.error(), "invalid_client", "{}", answer.json);
}

#[tokio::test]
async fn a_secret_the_upstream_revokes_stops_working_locally() {
    let mut stub = Stub::start().await;
    let h = harness(&stub, "", "{}").await;
    add(&h, AGENT, "read", None, Some("issue_local"));
    assert_eq!(h.token(AGENT, SECRET, "").await.status, StatusCode::OK);
    assert_eq!(verified_secrets(&h, AGENT).len(), 1);
    // The upstream now refuses the very secret it accepted: meshgate forgets its hash…
    stub.set(Mode::Refuse);
    let answer = h.token(AGENT, SECRET, "").await;
    assert_eq!(answer.error(), "invalid_client", "{}", answer.json);
    assert!(verified_secrets(&h, AGENT).is_empty());
    // …so it does not authenticate locally once the upstream is down.
    stub.kill().await;
    let answer = h.token(AGENT, SECRET, "").await;
    assert_ne!(answer.status, StatusCode::OK, "{}", answer.json);
    assert!(answer.json.get("access_token").is_none());
}
